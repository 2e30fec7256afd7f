"""A task's passes compiled with :func:`torch.compile`: the query pass of meta-training, and the
forward pass and support-set gradients of evaluation.

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

Evaluation adapts without an outer gradient, so there both the support steps and the
query pass compile: :func:`support_gradients` takes the inner gradients with
``torch.func.grad_and_value`` inside one compiled graph (forward and backward), and
:func:`compiled_forward` is the adapted network's pass. Their outputs equal the eager
ones to float rounding, not bitwise.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lit_meta.functional.inner_loop import func_gradients
from lit_meta.functional.params import functional_forward
from lit_meta.functional.shifted_conv import ShiftedSingleChannelConv

QueryForward = Callable[[Mapping[str, Tensor], Mapping[str, Tensor | None], Tensor, Tensor], tuple[Tensor, Tensor]]
"""``(params, buffers, query_x, query_y) -> (output, loss)``: a task's query pass with given parameters."""

Forward = Callable[[Mapping[str, Tensor], Mapping[str, Tensor | None], Tensor], Tensor]
"""``(params, buffers, x) -> output``: the network's pass with given parameters."""

SupportGradients = Callable[
    [Mapping[str, Tensor], Mapping[str, Tensor | None], Tensor, Tensor], tuple[dict[str, Tensor], Tensor]
]
"""``(params, buffers, support_x, support_y) -> (gradients of the adapted parameters, loss)``."""


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

    return _compile_fusable(forward, compile_kwargs)


def compiled_forward(module: nn.Module, **compile_kwargs: Any) -> Forward:
    """``functional_forward(module, params, buffers, x)`` under :func:`torch.compile`, for evaluation.

    Runs without autograd (the adapted parameters of evaluation need no outer
    gradient), with one-input-channel convolutions as shifted sums, as :func:`query_forward`.
    """

    def run(params: Mapping[str, Tensor], buffers: Mapping[str, Tensor | None], x: Tensor) -> Tensor:
        return functional_forward(module, params, buffers, x)

    compiled = _compile_fusable(run, compile_kwargs)

    def forward(params: Mapping[str, Tensor], buffers: Mapping[str, Tensor | None], x: Tensor) -> Tensor:
        with torch.no_grad():
            return compiled(params, buffers, x)

    return forward


def support_gradients(
    module: nn.Module,
    criterion: Callable[[Tensor, Tensor], Tensor],
    names: Sequence[str],
    compile: bool = True,
    **compile_kwargs: Any,
) -> SupportGradients:
    """The gradients of ``criterion(functional_forward(module, params, buffers, x), y)`` with
    respect to the ``names`` parameters, and the loss, by ``torch.func.grad_and_value``.

    For adaptation that no outer gradient flows through (evaluation): the parameters are
    detached and the gradients come back detached. Compiled (the default), the forward and
    backward passes are one Inductor graph, built on the first call and again for new
    shapes or dtypes; ``compile=False`` gives the same function in eager mode.

    Args:
        module: the backbone.
        criterion: the support loss on the module's output and the targets.
        names: the parameters to differentiate (the inner loop's); the others are constants.
        compile: wrap the function in :func:`torch.compile` (static shapes unless
            ``compile_kwargs`` say otherwise).
    """
    adapted_names = tuple(names)

    def gradients(params: Mapping[str, Tensor], buffers: Mapping[str, Tensor | None], x: Tensor, y: Tensor):
        def loss(p: dict[str, Tensor]) -> Tensor:
            return criterion(functional_forward(module, p, buffers, x), y)

        return func_gradients(loss, dict(params), adapted_names, create_graph=False)

    if compile:
        gradients = torch.compile(gradients, **{"dynamic": False, **compile_kwargs})

    def detached_gradients(
        params: Mapping[str, Tensor], buffers: Mapping[str, Tensor | None], x: Tensor, y: Tensor
    ) -> tuple[dict[str, Tensor], Tensor]:
        with torch.no_grad():
            return gradients({n: p.detach() for n, p in params.items()}, buffers, x, y)

    return detached_gradients


def _compile_fusable(function: Callable[..., Any], compile_kwargs: Mapping[str, Any]) -> Callable[..., Any]:
    """``function`` under :func:`torch.compile` (static shapes by default), with one-input-channel
    convolutions written as shifted sums for Inductor to fuse."""

    def fusable(*args: Any) -> Any:
        with ShiftedSingleChannelConv():
            return function(*args)

    return torch.compile(fusable, **{"dynamic": False, **compile_kwargs})
