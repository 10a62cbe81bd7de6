"""Find ONNX tensors stored outside the file, by reading the protobuf wire format directly.

The core install has onnxruntime but not the ``onnx`` package, and ONNX Runtime has no API to say
where a tensor's bytes live. The sha256 in a manifest pins one file, so a tensor whose data sits in
another file (``data_location: EXTERNAL``) would escape the pin: such files are refused before ONNX
Runtime sees them. This reader walks every place a tensor can hide (initializers, sparse
initializers, node attributes, subgraphs, functions, training info) without recursion, and treats
anything it cannot parse as a malformed file.
"""

from __future__ import annotations

__all__ = ["MalformedOnnxError", "external_tensor_names", "initializer_dims"]

# Field numbers from onnx.proto: which sub-messages to visit inside each message kind.
_CHILDREN: dict[str, dict[int, str]] = {
    "model": {7: "graph", 20: "training", 25: "function"},
    "training": {1: "graph", 2: "graph"},
    "graph": {1: "node", 5: "tensor", 15: "sparse"},
    "node": {5: "attribute"},
    "function": {7: "node", 11: "attribute"},
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"},
    "sparse": {1: "tensor", 2: "tensor"},
    "tensor": {},
}
_TENSOR_DIMS, _TENSOR_NAME, _TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION = 1, 8, 13, 14
_MODEL_GRAPH, _GRAPH_INITIALIZER = 7, 5
_EXTERNAL = 1
# Subgraphs nest (If/Loop bodies); no real heads graph goes this deep, and a bound keeps hostile input cheap.
MAX_NESTING = 32


class MalformedOnnxError(ValueError):
    """The bytes are not a well-formed protobuf message (internal; callers wrap it)."""


def _varint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise MalformedOnnxError(f"truncated or overlong varint at byte {pos}")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(data: bytes, start: int, end: int):
    """Yield ``(field number, wire type, value)``; for length-delimited fields the value is (start, end)."""
    pos = start
    while pos < end:
        key, pos = _varint(data, pos, end)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise MalformedOnnxError(f"field number 0 at byte {pos}")
        if wire == 0:
            value, pos = _varint(data, pos, end)
            yield field, wire, value
        elif wire == 1 or wire == 5:
            pos += 8 if wire == 1 else 4
            if pos > end:
                raise MalformedOnnxError("truncated fixed-width field")
        elif wire == 2:
            length, pos = _varint(data, pos, end)
            if pos + length > end:
                raise MalformedOnnxError(f"a field of {length} bytes runs past the end of its message")
            yield field, wire, (pos, pos + length)
            pos += length
        else:
            raise MalformedOnnxError(f"unsupported wire type {wire} at byte {pos}")


def external_tensor_names(data: bytes) -> list[str]:
    """Names of every tensor in the serialized ``ModelProto`` whose data is stored externally."""
    found: list[str] = []
    stack = [("model", 0, len(data), 0)]
    while stack:
        kind, start, end, depth = stack.pop()
        if depth > MAX_NESTING:
            raise MalformedOnnxError(f"messages nested deeper than {MAX_NESTING} levels")
        name, external = "", False
        for field, wire, value in _fields(data, start, end):
            if kind == "tensor":
                if field == _TENSOR_NAME and wire == 2:
                    name = bytes(data[value[0]:value[1]]).decode("utf-8", "replace")
                elif field == _TENSOR_EXTERNAL_DATA:
                    external = True
                elif field == _TENSOR_DATA_LOCATION and wire == 0 and value == _EXTERNAL:
                    external = True
                continue
            child = _CHILDREN[kind].get(field)
            if child is not None and wire == 2:
                stack.append((child, value[0], value[1], depth + 1))
        if external:
            found.append(name or "<unnamed>")
    return found


def initializer_dims(data: bytes, names: set[str]) -> dict[str, list[int]]:
    """Shapes of the main graph's initializers called one of ``names`` (absent names are left out)."""
    found: dict[str, list[int]] = {}
    for field, wire, value in _fields(data, 0, len(data)):
        if field != _MODEL_GRAPH or wire != 2:
            continue
        for g_field, g_wire, g_value in _fields(data, *value):
            if g_field != _GRAPH_INITIALIZER or g_wire != 2:
                continue
            name, dims = "", []
            for t_field, t_wire, t_value in _fields(data, *g_value):
                if t_field == _TENSOR_NAME and t_wire == 2:
                    name = bytes(data[t_value[0]:t_value[1]]).decode("utf-8", "replace")
                elif t_field == _TENSOR_DIMS and t_wire == 0:
                    dims.append(t_value)
                elif t_field == _TENSOR_DIMS and t_wire == 2:  # packed
                    pos, end = t_value
                    while pos < end:
                        dim, pos = _varint(data, pos, end)
                        dims.append(dim)
            if name in names:
                found[name] = dims
    return found
