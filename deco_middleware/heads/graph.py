"""Build the ONNX graph of the decoding heads from plain weight arrays.

The graph is written node by node rather than traced, so it is identical whatever torch version
(or none) produced the weights, and its opset and IO names are ours to pin.

Inputs ``hidden_states`` float32 [batch, hidden] and ``logits`` float32 [batch, vocab];
outputs ``temperature`` and ``top_p``, float32 [batch]. The top-p head reads the "enhanced
features" of the reference: ``concat[h, T, max_prob, entropy, prob_var, top5_sum]`` of
``softmax(logits / (T + 1e-8))`` over the whole vocabulary (METHOD.md). With
``temperature_features="hidden+logit-stats"`` the temperature head reads ``concat[h, max_prob, entropy]``
of ``softmax(logits)`` at T = 1, computed in the graph from the same ``logits`` input.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .._deps import require
from ..manifest import DEFAULT_TEMPERATURE_FEATURES, TEMPERATURE_EXTRA_FEATURES, TEMPERATURE_FEATURES, IONames

OPSET = 18
# Names of the weight arrays, matching the reference checkpoint layout (METHOD.md).
WEIGHT_NAMES = (
    "temp_head.mlp.0.weight",
    "temp_head.mlp.0.bias",
    "temp_head.mlp.2.weight",
    "temp_head.mlp.2.bias",
    "top_p_head.mlp.0.weight",
    "top_p_head.mlp.0.bias",
    "top_p_head.mlp.2.weight",
    "top_p_head.mlp.2.bias",
)
STATISTICS_EPS = 1e-8


def _max_prob_and_entropy_nodes(make_node, probs: str, prefix: str) -> tuple[list, str, str]:
    """Nodes computing ``max p`` and ``-sum p * log(p + eps)`` over the last axis of ``probs`` (the graph's
    one copy of these statistics; names prefixed by ``prefix``). Returns ``(nodes, max_prob, entropy)``."""
    n = make_node
    nodes = [
        n("ReduceMax", [probs, "axis_last"], [f"{prefix}max_prob"], keepdims=1),
        n("Add", [probs, "eps"], [f"{prefix}probs_eps"]),
        n("Log", [f"{prefix}probs_eps"], [f"{prefix}log_probs"]),
        n("Mul", [probs, f"{prefix}log_probs"], [f"{prefix}plogp"]),
        n("ReduceSum", [f"{prefix}plogp", "axis_last"], [f"{prefix}neg_entropy"], keepdims=1),
        n("Mul", [f"{prefix}neg_entropy", "neg_one"], [f"{prefix}entropy"]),
    ]
    return nodes, f"{prefix}max_prob", f"{prefix}entropy"


def build_heads_graph(
    weights: Mapping[str, np.ndarray],
    *,
    hidden_size: int,
    vocab_size: int,
    max_temperature: float = 2.0,
    enhanced_features: bool = True,
    temperature_features: str = DEFAULT_TEMPERATURE_FEATURES,
    io: IONames | None = None,
):  # -> onnx.ModelProto (onnx is an optional dependency, so it is not named in the signature)
    """Return a checked ``onnx.ModelProto`` computing both heads from ``weights``.

    ``enhanced_features=False`` is the reference's other top-p variant: the head reads only
    ``concat[h, T]`` (its first layer has ``hidden + 1`` inputs) and no softmax statistics.
    ``temperature_features="hidden+logit-stats"``: the temperature head reads ``concat[h, max_prob, entropy]``
    of ``softmax(logits)`` (its first layer has ``hidden + 2`` inputs).
    """
    onnx = require("onnx", purpose="Exporting decoding heads to ONNX")
    from onnx import TensorProto, helper, numpy_helper

    io = io or IONames()
    if temperature_features not in TEMPERATURE_FEATURES:
        raise ValueError(f"`temperature_features` must be one of {', '.join(TEMPERATURE_FEATURES)}, got {temperature_features!r}.")
    logit_stats = temperature_features == "hidden+logit-stats"
    missing = [name for name in WEIGHT_NAMES if name not in weights]
    if missing:
        raise ValueError(f"Missing head weights {missing}; expected exactly {list(WEIGHT_NAMES)}.")
    expected_shapes = {
        "temp_head.mlp.0.weight": (None, hidden_size + TEMPERATURE_EXTRA_FEATURES[temperature_features]),
        "top_p_head.mlp.0.weight": (None, hidden_size + (5 if enhanced_features else 1)),
    }
    for name, (_, cols) in expected_shapes.items():
        if np.asarray(weights[name]).shape[1] != cols:
            raise ValueError(
                f"`{name}` has shape {np.asarray(weights[name]).shape}, expected [*, {cols}] for hidden size {hidden_size}."
            )

    initializers = []

    def const(name: str, array: np.ndarray) -> str:
        initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name=name))
        return name

    # Linear layers are stored transposed so that the graph is a plain MatMul.
    for prefix in ("temp_head", "top_p_head"):
        for layer in ("0", "2"):
            const(f"{prefix}.{layer}.wT", np.asarray(weights[f"{prefix}.mlp.{layer}.weight"], np.float32).T)
            const(f"{prefix}.{layer}.b", np.asarray(weights[f"{prefix}.mlp.{layer}.bias"], np.float32))
    const("max_temperature", np.array(max_temperature, np.float32))
    # Only the enhanced top-p head reads the statistics' constants (order kept: same bytes as before).
    if enhanced_features:
        const("eps", np.array(STATISTICS_EPS, np.float32))
        const("neg_one", np.array(-1.0, np.float32))
        const("vocab_minus_one", np.array(vocab_size - 1, np.float32))
        const("axis_last", np.array([-1], np.int64))
    const("axis_one", np.array([1], np.int64))
    if enhanced_features:
        const("k5", np.array([5], np.int64))
    if logit_stats and not enhanced_features:
        const("eps", np.array(STATISTICS_EPS, np.float32))
        const("neg_one", np.array(-1.0, np.float32))
        const("axis_last", np.array([-1], np.int64))

    n = helper.make_node
    nodes = []
    temperature_input = io.hidden_states
    if logit_stats:
        # The temperature head's extra features: statistics of softmax(raw logits) at T = 1.
        nodes.append(n("Softmax", [io.logits], ["t_probs"], axis=-1))
        stat_nodes, t_max_prob, t_entropy = _max_prob_and_entropy_nodes(n, "t_probs", "t_")
        nodes += stat_nodes
        nodes.append(n("Concat", [io.hidden_states, t_max_prob, t_entropy], ["t_features"], axis=1))
        temperature_input = "t_features"
    nodes += [
        # Temperature head: Linear -> ReLU -> Linear -> Sigmoid, times max_temperature.
        n("MatMul", [temperature_input, "temp_head.0.wT"], ["t_mm0"]),
        n("Add", ["t_mm0", "temp_head.0.b"], ["t_lin0"]),
        n("Relu", ["t_lin0"], ["t_act"]),
        n("MatMul", ["t_act", "temp_head.2.wT"], ["t_mm1"]),
        n("Add", ["t_mm1", "temp_head.2.b"], ["t_lin1"]),
        n("Sigmoid", ["t_lin1"], ["t_sig"]),
        n("Mul", ["t_sig", "max_temperature"], ["t_col"]),  # [batch, 1]
    ]
    if enhanced_features:
        nodes += [
            # Statistics of softmax(logits / (T + eps)) over the whole vocabulary.
            n("Add", ["t_col", "eps"], ["t_safe"]),
            n("Div", [io.logits, "t_safe"], ["scaled"]),
            n("Softmax", ["scaled"], ["probs"], axis=-1),
        ]
        stat_nodes, max_prob, entropy = _max_prob_and_entropy_nodes(n, "probs", "")
        nodes += stat_nodes
        nodes += [
            n("ReduceMean", ["probs", "axis_last"], ["mean_prob"], keepdims=1),
            n("Sub", ["probs", "mean_prob"], ["centered"]),
            n("Mul", ["centered", "centered"], ["squared"]),
            n("ReduceSum", ["squared", "axis_last"], ["sum_squared"], keepdims=1),
            n("Div", ["sum_squared", "vocab_minus_one"], ["prob_var"]),  # unbiased, as torch.var
            n("TopK", ["probs", "k5"], ["top5_values", "top5_indices"], axis=-1, largest=1, sorted=1),
            n("ReduceSum", ["top5_values", "axis_last"], ["top5_sum"], keepdims=1),
            n("Concat", [io.hidden_states, "t_col", max_prob, entropy, "prob_var", "top5_sum"], ["features"], axis=1),
        ]
    else:
        nodes.append(n("Concat", [io.hidden_states, "t_col"], ["features"], axis=1))
    nodes += [
        # Top-p head: Linear -> ReLU -> Linear -> Sigmoid.
        n("MatMul", ["features", "top_p_head.0.wT"], ["p_mm0"]),
        n("Add", ["p_mm0", "top_p_head.0.b"], ["p_lin0"]),
        n("Relu", ["p_lin0"], ["p_act"]),
        n("MatMul", ["p_act", "top_p_head.2.wT"], ["p_mm1"]),
        n("Add", ["p_mm1", "top_p_head.2.b"], ["p_lin1"]),
        n("Sigmoid", ["p_lin1"], ["p_col"]),
        n("Squeeze", ["t_col", "axis_one"], [io.temperature]),
        n("Squeeze", ["p_col", "axis_one"], [io.top_p]),
    ]
    graph = helper.make_graph(
        nodes,
        "autodeco_heads",
        inputs=[
            helper.make_tensor_value_info(io.hidden_states, TensorProto.FLOAT, ["batch", hidden_size]),
            helper.make_tensor_value_info(io.logits, TensorProto.FLOAT, ["batch", vocab_size]),
        ],
        outputs=[
            helper.make_tensor_value_info(io.temperature, TensorProto.FLOAT, ["batch"]),
            helper.make_tensor_value_info(io.top_p, TensorProto.FLOAT, ["batch"]),
        ],
        initializer=initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="deco-middleware",
    )
    # ONNX Runtime 1.x reads IR version 10; newer onnx packages default to a higher one.
    model.ir_version = min(model.ir_version, 10)
    onnx.checker.check_model(model, full_check=True)
    return model
