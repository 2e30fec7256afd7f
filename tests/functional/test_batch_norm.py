"""Batch normalisation by primitive operations equals the fused kernel."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lit_meta.functional import task_batch_norm


@pytest.mark.parametrize("shape", [(5, 3), (4, 3, 2), (4, 3, 5, 5), (2, 3, 2, 3, 4)])
@pytest.mark.parametrize("affine", [False, True])
def test_task_batch_norm_equals_f_batch_norm_with_batch_statistics(shape, affine):
    x = torch.randn(shape, dtype=torch.float64)
    weight, bias = (
        (torch.randn(3, dtype=torch.float64), torch.randn(3, dtype=torch.float64)) if affine else (None, None)
    )
    expected = F.batch_norm(x, None, None, weight, bias, training=True, eps=1e-3)
    torch.testing.assert_close(task_batch_norm(x, weight, bias, eps=1e-3), expected, rtol=1e-12, atol=1e-12)


def test_half_precision_input_is_normalised_in_float32():
    """Like the fused kernels: float32 arithmetic, output in the input's dtype (one rounding)."""
    x = (torch.randn(8, 3, 4, 4) * 2 + 5).bfloat16()
    weight, bias = torch.rand(3) + 0.5, torch.randn(3)
    out = task_batch_norm(x, weight, bias)
    assert out.dtype == torch.bfloat16
    expected = F.batch_norm(x.float(), None, None, weight, bias, training=True).bfloat16()
    torch.testing.assert_close(out, expected)
