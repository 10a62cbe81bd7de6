"""Torch modules of the decoding heads (reference architecture, METHOD.md), used for training
and as the numerical reference of the exported ONNX graph."""

from __future__ import annotations

from .._deps import require
from ..manifest import DEFAULT_TEMPERATURE_FEATURES, TEMPERATURE_EXTRA_FEATURES, TEMPERATURE_FEATURES

torch = require("torch", purpose="The torch decoding heads")
nn = torch.nn

STATISTICS_EPS = 1e-8


def _max_prob_and_entropy(probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``max p`` and ``-sum p * log(p + 1e-8)`` over the last axis (float32 ``probs``).

    (One temporary and a dot product: at [64, 49152] on this project's CPU, ~5x faster than
    ``-(p * log(p + eps)).sum(-1)``, the same value; the vLLM plugin runs this every step.)
    """
    log_probs = probs + STATISTICS_EPS
    log_probs.log_()
    return probs.max(dim=-1).values, -torch.linalg.vecdot(probs, log_probs)


def _unbiased_variance(probs: torch.Tensor) -> torch.Tensor:
    """``probs.var(dim=-1)`` (unbiased) as ``(sum p^2 - V mean^2) / (V - 1)``: the same value to ~1e-7
    relative, ~10x faster on CPU than torch's Welford ``var`` over a vocabulary."""
    size = probs.shape[-1]
    mean = probs.sum(dim=-1) / size
    return (torch.linalg.vecdot(probs, probs) - size * mean * mean) / (size - 1)


def probability_statistics(logits: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """``[max_prob, entropy, prob_var, top5_sum]`` of ``softmax(logits / (T + 1e-8))``, shape [..., 4].

    ``temperature`` has shape ``logits.shape[:-1]``. Computed in float32 over the whole vocabulary.
    """
    probs = torch.softmax(logits.float() / (temperature.float().unsqueeze(-1) + STATISTICS_EPS), dim=-1)
    max_prob, entropy = _max_prob_and_entropy(probs)
    prob_var = _unbiased_variance(probs)  # unbiased, as in the reference
    top5_sum = probs.topk(5, dim=-1).values.sum(dim=-1)
    return torch.stack([max_prob, entropy, prob_var, top5_sum], dim=-1)


def logit_statistics(logits: torch.Tensor) -> torch.Tensor:
    """``[max_prob, entropy]`` of ``softmax(logits)`` at T = 1, shape [..., 2]: the temperature head's extra
    features under ``temperature_features="hidden+logit-stats"``. Float32, over the whole vocabulary."""
    return torch.stack(_max_prob_and_entropy(torch.softmax(logits.float(), dim=-1)), dim=-1)


def _check_temperature_features(features: str) -> str:
    if features not in TEMPERATURE_FEATURES:
        raise ValueError(f"`temperature_features` must be one of {', '.join(TEMPERATURE_FEATURES)}, got {features!r}.")
    return features


class TemperatureHead(nn.Module):
    """``Linear(H, 256) -> ReLU -> Linear(256, 1) -> Sigmoid``, times ``max_temperature``: T in (0, 2).

    With ``features="hidden+logit-stats"`` the input is ``concat[h, max_prob, entropy]`` of the raw logits
    (:func:`logit_statistics`) and the first layer is ``Linear(H + 2, 256)``; ``forward`` then needs ``logits``.
    """

    def __init__(self, hidden_size: int, inner_size: int = 256, max_temperature: float = 2.0,
                 features: str = DEFAULT_TEMPERATURE_FEATURES) -> None:
        super().__init__()
        self.max_temperature = max_temperature
        self.features = _check_temperature_features(features)
        width = hidden_size + TEMPERATURE_EXTRA_FEATURES[features]
        self.mlp = nn.Sequential(nn.Linear(width, inner_size), nn.ReLU(), nn.Linear(inner_size, 1))

    def forward(self, hidden_states: torch.Tensor, logits: torch.Tensor | None = None) -> torch.Tensor:
        features = hidden_states.float()
        if self.features == "hidden+logit-stats":
            if logits is None:
                raise ValueError("This temperature head reads statistics of the raw logits: pass `logits`.")
            features = torch.cat([features, logit_statistics(logits)], dim=-1)
        return torch.sigmoid(self.mlp(features)).squeeze(-1) * self.max_temperature


class TopPHead(nn.Module):
    """Top-p head on the enhanced features ``concat[h, T, max_prob, entropy, prob_var, top5_sum]``."""

    def __init__(self, hidden_size: int, inner_size: int = 256) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(hidden_size + 5, inner_size), nn.ReLU(), nn.Linear(inner_size, 1))

    def forward(self, hidden_states: torch.Tensor, logits: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
        stats = probability_statistics(logits, temperature)
        features = torch.cat([hidden_states.float(), temperature.float().unsqueeze(-1), stats], dim=-1)
        return torch.sigmoid(self.mlp(features)).squeeze(-1)


class AutoDecoHeads(nn.Module):
    """Both heads. ``forward(hidden_states [..., H], logits [..., V]) -> (temperature, top_p)``.

    ``temperature_features`` is the manifest's ``heads.temperature_features``: ``"hidden"`` (reference) or
    ``"hidden+logit-stats"``. Call the temperature head as ``temp_head(hidden, logits)``.
    """

    def __init__(self, hidden_size: int, inner_size: int = 256, max_temperature: float = 2.0,
                 temperature_features: str = DEFAULT_TEMPERATURE_FEATURES) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.inner_size = inner_size
        self.temperature_features = _check_temperature_features(temperature_features)
        self.temp_head = TemperatureHead(hidden_size, inner_size, max_temperature, temperature_features)
        self.top_p_head = TopPHead(hidden_size, inner_size)

    def forward(self, hidden_states: torch.Tensor, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        temperature = self.temp_head(hidden_states, logits)
        top_p = self.top_p_head(hidden_states, logits, temperature)
        return temperature, top_p

    def numpy_weights(self) -> dict[str, "object"]:
        """Weights as float32 numpy arrays under the reference checkpoint names."""
        return {name: tensor.detach().float().cpu().numpy() for name, tensor in self.state_dict().items()}
