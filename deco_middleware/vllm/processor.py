"""The V1 logits processor: per-request settings in, the one decoding step, a one-token distribution out."""

from __future__ import annotations

import secrets
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from .._deps import require

require("vllm", purpose="The vLLM plugin", extra="vllm")  # a clean MissingDependencyError, not ModuleNotFoundError

from vllm import SamplingParams  # noqa: E402
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor  # noqa: E402
from vllm.v1.sample.logits_processor.builtin import process_dict_updates  # noqa: E402

try:  # Model Runner V2 (upstream's default on GPU) loads the same entry point and wants its own interface
    from vllm.v1.worker.gpu.sample.logits_processor.interface import LogitsProcessor as _V2LogitsProcessor
except ImportError:  # a vLLM without Model Runner V2
    _INTERFACES: tuple[type, ...] = (LogitsProcessor,)
else:
    _INTERFACES = (LogitsProcessor, _V2LogitsProcessor)

from ..errors import IgnoredSamplingWarning
from ..sampling import DecodingSettings, LearnedPredictor, RowRandom, decode_step, draw
from . import trace as trace_file
from .runtime import STEP, CapturedRows, logger
from .settings import EXTRA_ARGS_KEY, check_penalties, ignored_vllm_sampling, request_decoding


@dataclass
class _Row:
    settings: DecodingSettings
    trace_id: str | None
    random: RowRandom
    output_token_ids: list[int] | None  # V1: vLLM's live list, its length is the step's position
    decoded: int = 0  # tokens this processor chose for the request (the step's position under V2)

    @property
    def position(self) -> int:
        return len(self.output_token_ids) if self.output_token_ids is not None else self.decoded


class _PrecomputedHeads:
    """The head outputs computed in ``compute_logits``, in the shape LearnedPredictor asks heads for."""

    def __init__(self, temperature: np.ndarray, top_p: np.ndarray) -> None:
        self.temperature, self.top_p = temperature, top_p

    def run(self, hidden: np.ndarray, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.temperature, self.top_p


def _settings_for_heads(settings: DecodingSettings) -> DecodingSettings:
    # As on every backend: a head the artifact did not train is switched off.
    return settings.for_trained_heads(STEP.heads.trained_heads if STEP.heads is not None else ())


class DecoLogitsProcessor(*_INTERFACES):  # type: ignore[misc]
    """Applies the learned temperature and nucleus to the requests with ``extra_args["deco"]``.

    For those rows it runs :func:`deco_middleware.sampling.decode_step` on vLLM's scores (after
    allowed-token, bad-word, logit-bias and min-token masks), draws the token with the request's own
    seeded stream (:class:`RowRandom`, seeded with ``SamplingParams.seed``) and hands vLLM a
    one-token distribution. vLLM's own temperature, top-p, top-k and min-p therefore cannot act on
    these rows (they stay at 1 / off in effect); every other row is returned untouched.

    One class serves both model runners, because both load the one ``vllm.logits_processors`` entry
    point and each refuses a class without its own interface: the V1 interface
    (``__init__(vllm_config, device, is_pin_memory)``, ``update_state``, ``apply(logits)``; rows are
    persistent-batch rows) and, where vLLM has it, Model Runner V2's
    (``__init__(vllm_config, req_states)``, ``add_request``, ``apply_staged_writes``,
    ``apply(logits, ctx)``; rows map to request slots through ``ctx.expanded_idx_mapping``). The V2
    side is tested against vLLM's V2 interface and loader without an engine (V2 needs Triton, which
    this CPU build cannot run); it has not run inside a V2 engine.
    """

    def __init__(self, vllm_config: Any, *runner_args: Any) -> None:
        from . import check_architecture

        # V1 passes (device, is_pin_memory); V2 passes (req_states,).
        self.runner = "v2" if len(runner_args) == 1 else "v1"
        self.rows: dict[int, _Row] = {}  # V1: persistent-batch row -> state; V2: request slot -> state
        self.batch_size = 0
        self.wrapped = check_architecture(str(getattr(vllm_config.model_config, "architecture", "") or ""))
        self.trace = trace_file.TraceWriter.from_env()

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        decoding = request_decoding(sampling_params.extra_args)
        if decoding is None:
            return
        check_penalties(sampling_params)
        ignored = ignored_vllm_sampling(sampling_params)
        if ignored:
            listed = ", ".join(f"{k}={v}" for k, v in ignored.items())
            message = (
                f"{listed} would stack on the learned temperature and top-p of a request with "
                f"extra_args['{EXTRA_ARGS_KEY}']; the plugin does not apply them (vLLM samples from the learned pair's "
                "one-token distribution). Leave them at their defaults; use temperature_scale / top_p_scale / top_k / "
                f"min_p inside extra_args['{EXTRA_ARGS_KEY}'] (temperature_scale=0 is greedy)."
            )
            logger.warning(message)
            warnings.warn(message, IgnoredSamplingWarning, stacklevel=2)

    def is_argmax_invariant(self) -> bool:
        return False  # it chooses the token, greedy rows included

    def _new_row(self, params: SamplingParams, prompt_ids: list[int] | None, output_ids: list[int]) -> _Row | None:
        try:
            decoding = request_decoding(params.extra_args)
        except ValueError as error:  # validate_params ran in the frontend; never crash the engine
            logger.error("deco_middleware.vllm: %s; the request is decoded without the heads.", error)
            return None
        if decoding is None:
            return None
        if not STEP.available or not self.wrapped:
            reason = STEP.unavailable_reason if self.wrapped else "the architecture is not wrapped"
            logger.error("deco_middleware.vllm: a request asked for learned decoding, but %s; decoded without heads.", reason)
            return None
        seed = params.seed if params.seed is not None else secrets.randbits(63)
        return _Row(_settings_for_heads(decoding.settings), decoding.trace_id, RowRandom([seed]), output_ids)

    # -- V1 model runner ------------------------------------------------------------------------------

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is not None:
            self.batch_size = batch_update.batch_size
        process_dict_updates(self.rows, batch_update, self._new_row)
        STEP.expect(self.batch_size, tuple(sorted(self.rows)))

    # -- Model Runner V2 --------------------------------------------------------------------------------

    def add_request(self, req_idx: int, sampling_params: SamplingParams) -> bool:
        """A request enters slot ``req_idx`` (slots are recycled: the old occupant's state goes)."""
        row = self._new_row(sampling_params, None, None)  # type: ignore[arg-type]
        if row is None:
            self.rows.pop(req_idx, None)
            return False
        self.rows[req_idx] = row
        return True

    def apply_staged_writes(self) -> None:
        STEP.expect_all(bool(self.rows))  # once per step, before the forward pass

    # -- both -------------------------------------------------------------------------------------------

    def apply(self, logits: torch.Tensor, ctx: Any = None) -> torch.Tensor:
        if not self.rows:
            return logits
        if ctx is None:  # V1: batch row i is logits row i; the heads ran on exactly the opted-in rows
            rows = tuple(sorted(self.rows))
            states = [self.rows[row] for row in rows]
            captured = STEP.take()
            aligned = captured is not None and captured.rows == rows and logits.shape[0] == self.batch_size
        else:  # V2: logits row -> request slot; the heads ran on every row
            # One row per request (the supported case): the host-side batch -> slot map, no device sync.
            one_row_each = logits.shape[0] == len(ctx.idx_mapping_np)
            slots = ctx.idx_mapping_np if one_row_each else ctx.expanded_idx_mapping.cpu().numpy()
            positions = [r for r, slot in enumerate(slots.tolist()) if slot in self.rows]
            if not positions:
                return logits
            rows, states = tuple(positions), [self.rows[int(slots[r])] for r in positions]
            captured = STEP.take()
            # Speculative decoding (several logits rows per request) is not supported.
            aligned = one_row_each and captured is not None and captured.rows == tuple(range(logits.shape[0]))
            if aligned:
                at = torch.as_tensor(positions, device=captured.hidden.device)
                captured = CapturedRows(rows, captured.hidden.index_select(0, at),
                                        captured.temperature.index_select(0, at), captured.top_p.index_select(0, at))
        if not aligned:
            logger.error(
                "deco_middleware.vllm: no head outputs for this step's %d learned row(s) (logits %s); they are "
                "decoded without heads this step.", len(rows), list(logits.shape)
            )
            STEP.missed_rows += len(rows)
            return logits
        chosen, records = self._decode(logits, captured, states)
        STEP.decoded_rows += len(rows)
        index = torch.as_tensor(rows, device=logits.device)
        if (chosen < 0).any():  # a row with no finite score: keep vLLM's argmax rather than invent a token
            argmax = logits.index_select(0, index).argmax(dim=-1).cpu().numpy()
            chosen = np.where(chosen < 0, argmax, chosen)
        # A new tensor (vLLM's scores are not edited): the learned rows become one-token distributions.
        forced = logits.index_fill(0, index, float("-inf"))
        forced[index, torch.as_tensor(chosen, device=logits.device)] = 0.0
        if records and self.trace is not None:
            self.trace.write(records)
        return forced

    def _decode(self, logits: torch.Tensor, captured: CapturedRows, states: list[_Row]
                ) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """Each group of rows with the same settings through one ``decode_step``, then one draw per row.

        ``captured.rows`` are logits rows; ``captured``'s tensors and ``states`` are aligned with them.
        """
        rows = captured.rows
        chosen = np.zeros(len(rows), dtype=np.int64)
        groups: dict[DecodingSettings, list[int]] = {}
        for position, state in enumerate(states):
            groups.setdefault(state.settings, []).append(position)
        temperature_pred = captured.temperature.detach().cpu().numpy()
        top_p_pred = captured.top_p.detach().cpu().numpy()
        hidden = captured.hidden.detach().cpu()
        records: list[dict[str, Any]] = []
        for settings, positions in groups.items():
            at = np.asarray(positions)
            predictor = LearnedPredictor(_PrecomputedHeads(temperature_pred[at], top_p_pred[at]), settings)
            batch_rows = torch.as_tensor([rows[p] for p in positions], device=logits.device)
            step = decode_step(predictor, logits.index_select(0, batch_rows), hidden=hidden[torch.from_numpy(at)])
            uniforms = np.array([states[p].random.next()[0] for p in positions])
            tokens = draw(step.scores, uniforms)
            chosen[at] = tokens
            for k, p in enumerate(positions):
                state = states[p]
                if state.trace_id is not None:
                    records.append(
                        {
                            "trace_id": state.trace_id,
                            "step": state.position,
                            "token": int(tokens[k]),
                            "temperature": float(step.temperature[k]),
                            "top_p": float(step.top_p[k]),
                            "fallback": bool(step.fallback[k]),
                            "nucleus_size": int(step.nucleus_size[k]),
                        }
                    )
                state.decoded += 1
        return chosen, records


__all__ = ["DecoLogitsProcessor", "IgnoredSamplingWarning"]
