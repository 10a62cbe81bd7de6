"""File helpers shared by every writer and loader: atomic writes, hashing, bounded reads inside a folder.

No function here changes process-wide state: the usual file mode comes from creating the temporary
file with mode 0o666 and letting the kernel apply the umask, never from setting the umask (which
would race with every other thread creating files).
"""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path

from .errors import DecoError

__all__ = ["atomic_write_bytes", "current_umask", "read_bytes_within", "sha256_bytes", "sha256_file"]


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves either the old file or the new one.

    The file gets the mode a plain ``open(path, "wb")`` would give it (0o666 minus the umask).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
            break
        except FileExistsError:  # a leftover of a crashed writer with the same random name: pick another
            continue
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def current_umask() -> int:
    """The process umask, read without changing it (Linux: ``/proc/self/status``).

    Elsewhere it falls back to setting and restoring it, which is only safe before threads start.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def read_bytes_within(
    path: str | os.PathLike[str], folder: str | os.PathLike[str], *, max_bytes: int, what: str,
    error: type[DecoError],
) -> bytes:
    """Read ``path`` whole, refusing it unless it is a regular file that resolves inside ``folder``.

    A symlink inside the folder that points elsewhere (``manifest.json -> /etc/passwd``) is refused, as
    is anything larger than ``max_bytes``. Every failure raises ``error`` with the path in its message.
    """
    path = Path(path)
    try:
        real_folder = Path(folder).resolve(strict=True)
        real = path.resolve(strict=True)
    except (OSError, RuntimeError) as failure:  # missing, a symlink loop, a name too long...
        raise error(f"Cannot open {what} {path}: {failure.strerror or failure}.") from failure
    if real_folder not in real.parents:
        raise error(
            f"{what} {path} resolves to {real}, outside its folder {real_folder}. A heads folder must hold its "
            "own files: replace the symlink with a copy of the file."
        )
    try:
        with open(real, "rb") as handle:
            stat = os.fstat(handle.fileno())
            if not _is_regular(stat.st_mode):
                raise error(f"{what} {path} is not a regular file.")
            if stat.st_size > max_bytes:
                raise error(f"{what} {path} is {stat.st_size} bytes, more than the {max_bytes} any such file needs.")
            data = handle.read(max_bytes + 1)
    except OSError as failure:
        raise error(f"Cannot read {what} {path}: {failure.strerror or failure}.") from failure
    if len(data) > max_bytes:  # it grew while we read it
        raise error(f"{what} {path} is more than {max_bytes} bytes.")
    return data


def _is_regular(mode: int) -> bool:
    import stat

    return stat.S_ISREG(mode)
