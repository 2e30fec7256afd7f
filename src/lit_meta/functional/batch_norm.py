"""Batch normalisation with batch statistics, written with primitive operations.

``F.batch_norm`` and this function compute the same thing, but under
:func:`torch.func.vmap` the fused kernel's double-backward is wrong: second-order
gradients through ``vmap`` over ``nn.BatchNorm2d`` with batch statistics differ
from the per-task loop by 1e-2 or more even in float64 (torch 2.13;
``torch.func.replace_all_batch_norm_modules_`` does not help). ``var_mean`` and
``rsqrt`` have exact batching rules, so the batched fast path
(:mod:`lit_meta.functional.batched`) normalises with this function instead.
"""

from __future__ import annotations

import torch
from torch import Tensor


def task_batch_norm(x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float = 1e-5) -> Tensor:
    """Normalise ``x`` (``[batch, channels, *spatial]``) per channel with its own mean and biased variance.

    Equal to ``F.batch_norm(x, None, None, weight, bias, training=True, eps=eps)``,
    which is what ``nn.BatchNorm1d/2d/3d`` compute when their running statistics are ``None``.

    Args:
        x: a batch of feature maps or feature vectors, channels on dimension 1.
        weight: per-channel scale ``[channels]``, or ``None``.
        bias: per-channel shift ``[channels]``, or ``None``.
        eps: added to the variance before the square root.
    """
    # half-precision input (autocast) gets float32 statistics, as the fused kernels accumulate in float32
    x_float = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    var, mean = torch.var_mean(x_float, dim=[0, *range(2, x.dim())], correction=0, keepdim=True)
    scale = torch.rsqrt(var + eps)
    channel_shape = [1, -1] + [1] * (x.dim() - 2)
    if weight is not None:
        scale = scale * weight.reshape(channel_shape)
    # folding the weight into the per-channel scale first leaves two passes over x instead of four (~15% faster)
    if bias is None:
        out = (x_float - mean) * scale
    else:
        out = torch.addcmul(bias.reshape(channel_shape), x_float - mean, scale)
    return out.to(x.dtype)
