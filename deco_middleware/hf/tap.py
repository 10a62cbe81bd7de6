"""Capture the LM head's input (the last hidden state, after the final norm) and output (raw logits).

A forward hook on ``model.get_output_embeddings()`` sees exactly the tensor the LM head multiplies,
on transformers 4.57 and 5.x alike, without touching the model's code or weights. Captures are kept
per thread, so two ``generate()`` calls on one model in two threads never see each other's state:
a processor runs in the same thread as the forward pass that produced its scores.
"""

from __future__ import annotations

import threading
from typing import Any

from .._deps import require
from ..errors import HiddenStateUnavailableError

torch = require("torch", purpose="The Hugging Face integration")


class HiddenStateTap:
    """Context manager recording the last position's LM-head input and output, per thread.

    >>> with HiddenStateTap(model) as tap:  # doctest: +SKIP
    ...     model(**inputs)
    ...     hidden_states, logits = tap.pop()
    """

    def __init__(self, model: Any) -> None:
        lm_head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        if lm_head is None:
            raise TypeError(
                f"{type(model).__name__} has no output embeddings (LM head) to read the hidden state from; "
                "learned decoding needs a causal LM such as `AutoModelForCausalLM`."
            )
        self.lm_head = lm_head
        self._captured: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._handle: Any = None

    def _hook(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        hidden = args[0] if args else next(iter(kwargs.values()))
        logits = output[0] if isinstance(output, tuple) else output
        if hidden.dim() == 3:
            hidden, logits = hidden[:, -1, :], logits[:, -1, :]
        self._captured[threading.get_ident()] = (hidden.detach(), logits.detach())

    def __enter__(self) -> HiddenStateTap:
        if self._handle is not None:
            raise RuntimeError("This HiddenStateTap is already attached; create one tap per generation.")
        self._captured.clear()
        self._handle = self.lm_head.register_forward_hook(self._hook, with_kwargs=True)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        self._captured.clear()

    @property
    def attached(self) -> bool:
        return self._handle is not None

    def pop(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Hidden state [batch, hidden] and raw logits [batch, vocab] of this thread's last forward.

        Each capture is handed out once: a second read before the next forward pass means the
        processor is being called several times per forward (assisted decoding) or on another model.
        """
        try:
            return self._captured.pop(threading.get_ident())
        except KeyError:
            state = "attached" if self.attached else "not attached (use it inside `with ...attach(model)`)"
            raise HiddenStateUnavailableError(
                "No fresh hidden state from the model in this thread: the tap is "
                f"{state}. Either the processors are used with a different model than the one they were "
                "attached to, or the generation mode calls processors several times per forward pass "
                "(assisted/speculative decoding, which learned decoding does not support)."
            ) from None
