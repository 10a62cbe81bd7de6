"""The torch-free parts of the ONNX Runtime backend on synthetic arrays (run in every env)."""

from __future__ import annotations

import numpy as np
import pytest

import deco_middleware.ort as ort
from deco_middleware._deps import is_available
from deco_middleware.errors import MissingDependencyError
from deco_middleware.ort.loop import left_pad
from deco_middleware.ort.runtime import position_ids_for


def test_public_names_are_sorted_and_resolvable():
    assert ort.__all__ == sorted(ort.__all__)
    eager = [name for name in ort.__all__ if name not in ort._LAZY]
    assert all(hasattr(ort, name) for name in eager)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        ort.nope  # noqa: B018


@pytest.mark.skipif(is_available("optimum"), reason="optimum is installed here")
def test_export_without_optimum_names_the_extra():
    with pytest.raises(MissingDependencyError, match=r"deco-middleware\[ort\]"):
        ort.export_lm("somewhere", "elsewhere")


def test_left_pad_right_aligns_prompts():
    input_ids, mask = left_pad([[5, 6, 7], [9]], pad_token_id=0)
    assert input_ids.tolist() == [[5, 6, 7], [0, 0, 9]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    with pytest.raises(ValueError, match="at least one token"):
        left_pad([[1], []], pad_token_id=0)


def test_position_ids_count_real_tokens_only():
    mask = np.array([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    # padding positions get 1, as transformers' generate() does, so both backends feed the same ids
    assert position_ids_for(mask).tolist() == [[1, 1, 0, 1, 2], [0, 1, 2, 3, 4]]
