"""Torch decoding heads built from a shipped ONNX artifact's initializers.

One artifact serves both runtimes: an engine that runs torch next to the LM (vLLM's
``compute_logits``) builds :class:`~deco_middleware.heads.modules.AutoDecoHeads` from the weights
stored in ``heads.onnx`` instead of shipping a second copy of them. The ONNX graph stores each
linear layer transposed (``{prefix}.{layer}.wT``, see :mod:`deco_middleware.heads.graph`).
"""

from __future__ import annotations

from .._deps import require
from ..errors import IntegrityError
from .artifact import DecodingHeads
from .modules import AutoDecoHeads

torch = require("torch", purpose="Torch decoding heads from an ONNX artifact")

_LAYERS = {
    "temp_head.mlp.0": "temp_head.0",
    "temp_head.mlp.2": "temp_head.2",
    "top_p_head.mlp.0": "top_p_head.0",
    "top_p_head.mlp.2": "top_p_head.2",
}


def onnx_head_weights(heads: DecodingHeads) -> dict[str, "object"]:
    """The heads' weights under the reference checkpoint names, as float32 numpy arrays, read from
    the verified ONNX file's initializers (``heads`` checked its sha256 when it was loaded)."""
    onnx = require("onnx", purpose="Reading head weights from an ONNX artifact")
    from onnx import numpy_helper

    model = onnx.load(str(heads.onnx_path), load_external_data=False)
    initializers = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    weights: dict[str, object] = {}
    for checkpoint_name, graph_name in _LAYERS.items():
        try:
            weights[f"{checkpoint_name}.weight"] = initializers[f"{graph_name}.wT"].T.copy()
            weights[f"{checkpoint_name}.bias"] = initializers[f"{graph_name}.b"].copy()
        except KeyError as missing:
            raise IntegrityError(
                f"{heads.onnx_path} has no initializer {missing}: it was not written by `export_heads` "
                f"(initializers: {sorted(initializers)}). Re-export the heads."
            ) from None
    if "max_temperature" in initializers:
        weights["max_temperature"] = initializers["max_temperature"]
    return weights


def _parameters_to_buffers(module: "torch.nn.Module") -> None:
    """Turn every parameter into a non-persistent buffer of the same name.

    Why: an engine that loads a checkpoint into the model (vLLM) checks that every
    ``nn.Parameter`` came from the checkpoint; the heads' weights come from the ONNX artifact
    instead. ``nn.Linear.forward`` reads ``self.weight`` either way.
    """
    for submodule in module.modules():
        for name, parameter in list(submodule._parameters.items()):
            if parameter is None:
                continue
            del submodule._parameters[name]
            submodule.register_buffer(name, parameter.detach(), persistent=False)


def torch_heads_from_artifact(heads: DecodingHeads, *, device: "torch.device | str" = "cpu",
                              trainable: bool = False) -> AutoDecoHeads:
    """:class:`AutoDecoHeads` (float32, eval mode, weights held as buffers) equal to ``heads``.

    ``trainable=True`` keeps the weights as parameters, for training on from the artifact
    (``deco train top-p``).

    >>> heads = DecodingHeads.from_pretrained("smollm2-135m-instruct")  # doctest: +SKIP
    >>> module = torch_heads_from_artifact(heads)                        # doctest: +SKIP
    >>> temperature, top_p = module(hidden_states, logits)              # doctest: +SKIP
    """
    weights = onnx_head_weights(heads)
    inner_size = int(weights["temp_head.mlp.0.weight"].shape[0])  # type: ignore[attr-defined]
    stored = weights.pop("max_temperature", None)
    max_temperature = heads.manifest.heads.max_temperature if stored is None else float(stored.reshape(-1)[0])  # type: ignore[attr-defined]
    module = AutoDecoHeads(heads.hidden_size, inner_size=inner_size, max_temperature=max_temperature,
                           temperature_features=heads.manifest.heads.temperature_features)
    state = {name: torch.from_numpy(value) for name, value in weights.items()}  # type: ignore[arg-type]
    module.load_state_dict(state, strict=True)
    module = module.to(device=device, dtype=torch.float32).eval()
    if not trainable:
        _parameters_to_buffers(module)
    return module


__all__ = ["onnx_head_weights", "torch_heads_from_artifact"]
