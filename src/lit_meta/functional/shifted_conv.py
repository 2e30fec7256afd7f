"""Convolutions with one input channel, written as sums of shifted products for Inductor.

The first convolution of an Omniglot network sees one input channel, and its output is
the largest tensor of the network (75 query images x 64 channels x 28 x 28 in a 5-way
15-query episode), in Conv4 the input of the BatchNorm that follows. Called as
``F.conv2d`` it is an external kernel to ``torch.compile``, so that output is written to
memory, kept for backward, and its gradient (as large) is written too. With one input channel a
``k x k`` convolution is ``k * k`` shifted copies of the image, each scaled per output
channel, summed: elementwise work that Inductor fuses with the BatchNorm statistics and
normalisation, recomputing the sum where it is needed instead of storing it.

This lowers what a Conv4 query pass saves for backward and its peak memory. The forward
still writes the sum once (a temporary, not kept), and the backward still writes 28x28
gradients (max-pool's, through Inductor's scatter, and BatchNorm's), but no longer runs
the layer's ``convolution_backward`` on a stored output. In eager mode the shifted form
is slower than ``F.conv2d``, so only the compiled query pass uses it
(:mod:`lit_meta.functional.compiled`). Measured memory and speed, in a query pass and in
MAML processes: ``benchmarks/RESULTS.md`` (``benchmarks/maml_step.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode

MAX_KERNEL_ELEMENTS = 25
"""Kernels larger than this (5x5) stay ``F.conv2d``: each element is one more pass of the sum."""

_CONV2D_ARGUMENTS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
_CONV2D_DEFAULTS: dict[str, Any] = {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1}


def shifted_conv2d(x: Tensor, weight: Tensor, bias: Tensor | None, padding: tuple[int, int]) -> Tensor:
    """``F.conv2d(x, weight, bias, stride=1, padding=padding)`` for ``x`` of one channel.

    Args:
        x: ``[batch, 1, height, width]``.
        weight: ``[out_channels, 1, kh, kw]``.
        bias: ``[out_channels]`` or ``None``.
        padding: zero padding of height and width.
    """
    kh, kw = weight.shape[-2:]
    height = x.shape[-2] + 2 * padding[0] - kh + 1
    width = x.shape[-1] + 2 * padding[1] - kw + 1
    padded = F.pad(x, (padding[1], padding[1], padding[0], padding[0]))
    out = None if bias is None else bias.reshape(1, -1, 1, 1)
    for i in range(kh):
        for j in range(kw):
            term = padded[:, :, i : i + height, j : j + width] * weight[:, :, i, j].reshape(1, -1, 1, 1)
            out = term if out is None else out + term
    return out


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def _shiftable_padding(arguments: dict[str, Any]) -> tuple[int, int] | None:
    """The padding when a ``conv2d`` call can be computed by :func:`shifted_conv2d`, else ``None``."""
    x, weight, padding = arguments["input"], arguments["weight"], arguments["padding"]
    if not (isinstance(x, Tensor) and isinstance(weight, Tensor)) or x.dim() != 4 or weight.dim() != 4:
        return None
    if x.shape[1] != 1 or weight.shape[1] != 1 or arguments["groups"] != 1 or x.dtype != weight.dtype:
        return None  # (what conv2d rejects, it still rejects)
    if weight.shape[-2:].numel() > MAX_KERNEL_ELEMENTS:
        return None
    if _pair(arguments["stride"]) != (1, 1) or _pair(arguments["dilation"]) != (1, 1) or isinstance(padding, str):
        return None
    if torch.is_autocast_enabled(x.device.type):  # keep autocast's reduced-precision convolution
        return None
    return _pair(padding)


class ShiftedSingleChannelConv(TorchFunctionMode):
    """Within this mode, ``F.conv2d`` calls with one input channel (stride 1, no dilation,
    kernel up to 5x5, zero padding given as numbers, outside autocast) run as
    :func:`shifted_conv2d`; every other call runs as it is."""

    def __torch_function__(self, func: Callable, types: Any, args: Sequence[Any] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func is F.conv2d:
            arguments = {**_CONV2D_DEFAULTS, **dict(zip(_CONV2D_ARGUMENTS, args, strict=False)), **kwargs}
            padding = _shiftable_padding(arguments)
            if padding is not None:
                return shifted_conv2d(arguments["input"], arguments["weight"], arguments["bias"], padding)
        return func(*args, **kwargs)
