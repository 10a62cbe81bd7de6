"""Torch modules of the decoding heads (reference architecture, METHOD.md), used for training
and as the numerical reference of the exported ONNX graph."""

from __future__ import annotations

from .._deps import require

torch = require("torch", purpose="The torch decoding heads")
nn = torch.nn

STATISTICS_EPS = 1e-8


def probability_statistics(logits: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """``[max_prob, entropy, prob_var, top5_sum]`` of ``softmax(logits / (T + 1e-8))``, shape [..., 4].

    ``temperature`` has shape ``logits.shape[:-1]``. Computed in float32 over the whole vocabulary.
    """
    probs = torch.softmax(logits.float() / (temperature.float().unsqueeze(-1) + STATISTICS_EPS), dim=-1)
    max_prob = probs.max(dim=-1).values
    entropy = -(probs * torch.log(probs + STATISTICS_EPS)).sum(dim=-1)
    prob_var = probs.var(dim=-1)  # unbiased, as in the reference
    top5_sum = probs.topk(5, dim=-1).values.sum(dim=-1)
    return torch.stack([max_prob, entropy, prob_var, top5_sum], dim=-1)


class TemperatureHead(nn.Module):
    """``Linear(H, 256) -> ReLU -> Linear(256, 1) -> Sigmoid``, times ``max_temperature``: T in (0, 2)."""

    def __init__(self, hidden_size: int, inner_size: int = 256, max_temperature: float = 2.0) -> None:
        super().__init__()
        self.max_temperature = max_temperature
        self.mlp = nn.Sequential(nn.Linear(hidden_size, inner_size), nn.ReLU(), nn.Linear(inner_size, 1))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.mlp(hidden_states.float())).squeeze(-1) * self.max_temperature


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
    """Both heads. ``forward(hidden_states [..., H], logits [..., V]) -> (temperature, top_p)``."""

    def __init__(self, hidden_size: int, inner_size: int = 256, max_temperature: float = 2.0) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.inner_size = inner_size
        self.temp_head = TemperatureHead(hidden_size, inner_size, max_temperature)
        self.top_p_head = TopPHead(hidden_size, inner_size)

    def forward(self, hidden_states: torch.Tensor, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        temperature = self.temp_head(hidden_states)
        top_p = self.top_p_head(hidden_states, logits, temperature)
        return temperature, top_p

    def numpy_weights(self) -> dict[str, "object"]:
        """Weights as float32 numpy arrays under the reference checkpoint names."""
        return {name: tensor.detach().float().cpu().numpy() for name, tensor in self.state_dict().items()}
