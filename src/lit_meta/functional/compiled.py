"""The query pass of a task, compiled with :func:`torch.compile`.

In a MAML meta-training step the query set dominates the work (75 images per task in
Omniglot 5-way 1-shot against 5 support images), and its pass is differentiated only
once: the meta-gradient flows through it back to the adapted parameters, and from there
through the support steps, whose double backward stays in eager mode (``torch.compile``
does not support double backward). Compiling the query pass alone therefore approximates
nothing, in first or second order, and lets Inductor fuse what eager mode runs as separate
passes over the activations (BatchNorm with batch statistics, max-pool and ReLU, forward and
backward), which makes a Conv4 meta-training step faster on a CPU (measured with
``benchmarks/maml_step.py``, with and without ``retain_cpu_memory``:
``benchmarks/RESULTS.md``); the first call compiles, which takes seconds to a minute.

Compiled, convolutions with one input channel (an Omniglot network's first) run as sums
of shifted products (:mod:`lit_meta.functional.shifted_conv`), which Inductor fuses with
the BatchNorm after them, so their 28x28 output is never stored.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from lit_meta.functional.params import functional_forward
from lit_meta.functional.shifted_conv import ShiftedSingleChannelConv

QueryForward = Callable[[Mapping[str, Tensor], Mapping[str, Tensor | None], Tensor, Tensor], tuple[Tensor, Tensor]]
"""``(params, buffers, query_x, query_y) -> (output, loss)``: a task's query pass with given parameters."""


def query_forward(
    module: nn.Module, criterion: Callable[[Tensor, Tensor], Tensor], compile: bool = False, **compile_kwargs: Any
) -> QueryForward:
    """The query pass ``criterion(functional_forward(module, params, buffers, x), y)`` as one function.

    Args:
        module: the backbone.
        criterion: the loss on the module's output and the targets.
        compile: wrap the function in :func:`torch.compile` (static shapes unless
            ``compile_kwargs`` say otherwise), with one-input-channel convolutions
            written as shifted sums for Inductor to fuse. Compilation happens on the
            first call and again for new input shapes or dtypes.
        **compile_kwargs: passed to :func:`torch.compile`, e.g. ``mode="max-autotune"``.
    """

    def forward(params: Mapping[str, Tensor], buffers: Mapping[str, Tensor | None], x: Tensor, y: Tensor):
        output = functional_forward(module, params, buffers, x)
        return output, criterion(output, y)

    if not compile:
        return forward

    def fusable_forward(params: Mapping[str, Tensor], buffers: Mapping[str, Tensor | None], x: Tensor, y: Tensor):
        with ShiftedSingleChannelConv():
            return forward(params, buffers, x, y)

    return torch.compile(fusable_forward, **{"dynamic": False, **compile_kwargs})
