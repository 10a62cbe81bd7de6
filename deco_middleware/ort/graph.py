"""Reading and editing an exported causal-LM ONNX graph: the hidden-state output and the LM head.

Torch-free (``onnx`` and numpy only), so an app that ships an exported LM can check it without
torch. The hidden state the heads need is, by definition, the input of the LM-head ``MatMul``
that produces ``logits`` (METHOD.md: "exactly the vector the LM head multiplies"). Instead of
re-implementing each architecture's export, we find that ``MatMul`` in Optimum's graph and expose
its input as an extra output; this works for every decoder Optimum exports whose logits come
from one matrix product (optionally followed by element-wise ops such as soft-capping).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._deps import require
from ..errors import MissingHiddenStateOutputError, UnsupportedGraphError

HIDDEN_STATE_OUTPUT = "last_hidden_state"
LOGITS_OUTPUT = "logits"
ONNX_MODEL_NAME = "model.onnx"
ONNX_DATA_NAME = "model.onnx_data"
EXPORT_INFO_NAME = "deco_export.json"
# Element-wise ops allowed between the LM-head MatMul and `logits` (scaling, soft-capping, casts).
_ELEMENTWISE = {"Cast", "Mul", "Div", "Tanh", "Add", "Identity"}




def missing_hidden_state_message(where: str | os.PathLike[str], outputs: list[str]) -> str:
    return (
        f"The ONNX model at {str(where)!r} has no `{HIDDEN_STATE_OUTPUT}` output (outputs: {', '.join(outputs)}), "
        "so the decoding heads cannot read the LM's hidden state. Export it with `deco export-lm MODEL OUT` "
        "(or `deco_middleware.ort.export_lm(model, out)`), which adds that output to Optimum's export."
    )


def _onnx() -> Any:
    return require("onnx", purpose="Reading or editing an exported ONNX LM")


@dataclass(frozen=True)
class LMHeadLocation:
    matmul: Any  # the NodeProto
    hidden_input: str  # name of the tensor the LM head multiplies
    weight_initializer: str  # initializer that holds the LM-head weight
    weight_transposed: bool  # True when the initializer is stored as [vocab, hidden] and transposed in-graph


def locate_lm_head(model: Any) -> LMHeadLocation:
    """The LM-head ``MatMul`` that produces ``logits``, its hidden input and its weight initializer."""
    graph = model.graph
    producers = {out: node for node in graph.node for out in node.output}
    initializers = {init.name for init in graph.initializer}
    name = LOGITS_OUTPUT
    node = producers.get(name)
    while node is not None and node.op_type in _ELEMENTWISE:
        # follow the non-constant operand back towards the matrix product
        dynamic = [i for i in node.input if i in producers and producers[i].op_type != "Constant"]
        node = producers.get(dynamic[0]) if len(dynamic) == 1 else None
    if node is None or node.op_type not in ("MatMul", "Gemm"):
        raise UnsupportedGraphError(
            f"Cannot find the LM-head MatMul that produces `{LOGITS_OUTPUT}` in this graph "
            f"(found {node.op_type if node is not None else 'nothing'}). Only decoders whose logits come from "
            "one matrix product are supported."
        )
    hidden, weight = node.input[0], node.input[1]
    if weight in initializers:
        return LMHeadLocation(node, hidden, weight, weight_transposed=False)
    transpose = producers.get(weight)
    if transpose is not None and transpose.op_type == "Transpose" and transpose.input[0] in initializers:
        return LMHeadLocation(node, hidden, transpose.input[0], weight_transposed=True)
    raise UnsupportedGraphError(
        f"The LM-head MatMul `{node.name}` multiplies by `{weight}`, which is neither an initializer nor a "
        "transposed initializer; cannot read the LM-head weight for the compatibility fingerprint."
    )


def add_hidden_state_output(model: Any) -> LMHeadLocation:
    """Add ``last_hidden_state`` [batch, sequence, hidden] (the LM-head input) as a graph output, in place."""
    onnx = _onnx()
    graph = model.graph
    outputs = [o.name for o in graph.output]
    if HIDDEN_STATE_OUTPUT in outputs:
        raise ValueError(f"The graph already has a `{HIDDEN_STATE_OUTPUT}` output.")
    location = locate_lm_head(model)
    logits = next(o for o in graph.output if o.name == LOGITS_OUTPUT)
    logits_dims = logits.type.tensor_type.shape.dim
    hidden_size = _initializer_shape(model, location.weight_initializer)
    hidden_size = hidden_size[1] if location.weight_transposed else hidden_size[0]
    dims: list[Any] = [d.dim_param or d.dim_value for d in logits_dims[:2]] + [hidden_size]
    # The hidden tensor's dtype is the MatMul's: the same element type as logits.
    elem_type = logits.type.tensor_type.elem_type
    graph.node.append(onnx.helper.make_node("Identity", [location.hidden_input], [HIDDEN_STATE_OUTPUT],
                                            name="deco_last_hidden_state"))
    graph.output.append(onnx.helper.make_tensor_value_info(HIDDEN_STATE_OUTPUT, elem_type, dims))
    return location


def _initializer_shape(model: Any, name: str) -> list[int]:
    for init in model.graph.initializer:
        if init.name == name:
            return list(init.dims)
    raise UnsupportedGraphError(f"No initializer `{name}` in the graph.")


def lm_head_weight(onnx_path: str | os.PathLike[str]) -> np.ndarray:
    """The exported LM-head weight as a ``[vocab, hidden]`` array, without loading the rest of the model.

    Weights in an external-data file are memory-mapped copy-on-write: nothing is read until rows are
    indexed (the fingerprint reads the matrix in chunks of rows), and the array is writable so torch can wrap it
    without a warning, while the file itself is never modified.
    """
    onnx = _onnx()
    onnx_path = Path(onnx_path)
    model = onnx.load(str(onnx_path), load_external_data=False)
    location = locate_lm_head(model)
    init = next(i for i in model.graph.initializer if i.name == location.weight_initializer)
    dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(init.data_type))
    shape = tuple(int(d) for d in init.dims)
    if init.data_location == onnx.TensorProto.EXTERNAL:
        info = {entry.key: entry.value for entry in init.external_data}
        base = onnx_path.parent.resolve()
        path = (base / info["location"]).resolve()
        if base not in path.parents:
            raise UnsupportedGraphError(f"External data of `{init.name}` points outside {base}: {info['location']!r}.")
        matrix = np.memmap(path, dtype=dtype, mode="c", offset=int(info.get("offset", 0)), shape=shape)
    else:
        matrix = onnx.numpy_helper.to_array(init).copy()
    # A transposed-in-graph initializer is stored [vocab, hidden]; a plain one [hidden, vocab].
    return matrix if location.weight_transposed else matrix.T


def graph_outputs(onnx_path: str | os.PathLike[str]) -> list[str]:
    onnx = _onnx()
    return [o.name for o in onnx.load(str(onnx_path), load_external_data=False).graph.output]
