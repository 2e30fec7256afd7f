"""The batched fast path: adapt to every task of a meta-batch at once with ``torch.func.vmap``.

:func:`batched_adapt_and_score` vmaps the same inner loop, with the same inner
optimiser, as the per-task :func:`~lit_meta.functional.adapt_and_score.adapt_and_score`,
differentiating with ``torch.func.grad`` instead of ``torch.autograd.grad``, and is
tested to give the same losses and meta-gradients. Whether it is faster depends on
the device and the network (per-task weights turn convolutions into grouped
convolutions); the learners choose it by measurement.

Exactness. ``vmap``'s batching rules for the double-backward of the fused
normalisation kernels are wrong in torch 2.13: second-order gradients through
``F.batch_norm`` with batch statistics, ``F.instance_norm`` and ``F.layer_norm``
differ from the per-task loop by 1e-2 or more even in float64 (first-order
gradients are exact). BatchNorm with batch statistics, which every backbone of
lit-meta uses, is therefore computed by
:func:`~lit_meta.functional.batch_norm.task_batch_norm` (primitive operations,
exact under ``vmap``); the other two are refused on the second-order path.

The swap is done by a ``TorchFunctionMode`` that routes each
``F.batch_norm`` call made during the batched forward to ``task_batch_norm``,
rather than by a twin of the backbone with its BatchNorm layers replaced: the
user's module runs as it is (its forward, hooks, train/eval flags and later
edits included), nothing is copied or cached, and any network that calls
``F.batch_norm`` (every ``nn.BatchNorm*`` layer does) is covered.
"""

from __future__ import annotations

import inspect
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.overrides import TorchFunctionMode

from lit_meta.functional.adapt_and_score import Criterion, ScoredTask
from lit_meta.functional.batch_norm import task_batch_norm
from lit_meta.functional.deprecation import renamed_function, renamed_keyword
from lit_meta.functional.inner_loop import (
    adapted_names,
    check_finite_losses,
    func_gradients,
    inner_loop,
    inner_optimizer,
)
from lit_meta.functional.optimizers import InnerOptimizer, StepSize
from lit_meta.functional.params import functional_forward

_BATCH_NORM_SIGNATURE = inspect.signature(F.batch_norm)

_BATCH_NORM_FIX = (
    "pass buffers=task_buffers(module, 'task') for per-task batch statistics, put the module in eval mode, "
    "or use the per-task loop (adapt_and_score)"
)

_INEXACT_SECOND_ORDER = {
    F.layer_norm: "F.layer_norm (nn.LayerNorm)",
    torch.layer_norm: "torch.layer_norm",
    torch.native_layer_norm: "torch.native_layer_norm",
    F.instance_norm: "F.instance_norm (nn.InstanceNorm*)",
    torch.instance_norm: "torch.instance_norm",
    torch.batch_norm: "torch.batch_norm",
    torch.native_batch_norm: "torch.native_batch_norm",
}


class ExactNormalizationMode(TorchFunctionMode):
    """Routes batch-statistics ``F.batch_norm`` to :func:`task_batch_norm`, and, when second-order
    gradients are wanted, refuses the normalisations whose double-backward ``vmap`` gets wrong.

    Args:
        second_order: whether the inner gradients will be differentiated.
    """

    def __init__(self, second_order: bool) -> None:
        super().__init__()
        self.second_order = second_order

    def __torch_function__(self, func: Any, types: Any, args: Sequence[Any] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func is F.batch_norm:
            call = _BATCH_NORM_SIGNATURE.bind(*args, **kwargs)
            call.apply_defaults()
            arg = call.arguments
            if arg["training"]:
                if arg["running_mean"] is not None or arg["running_var"] is not None:
                    raise ValueError(
                        "F.batch_norm in training mode would update running statistics inside the batched "
                        f"(vmap) inner loop; {_BATCH_NORM_FIX}"
                    )
                return task_batch_norm(arg["input"], arg["weight"], arg["bias"], arg["eps"])
        elif self.second_order and func in _INEXACT_SECOND_ORDER:
            raise ValueError(
                f"{_INEXACT_SECOND_ORDER[func]} gets wrong second-order gradients under torch.func.vmap "
                f"(torch {torch.__version__}), so the batched inner loop refuses this backbone; use the "
                "per-task loop (adapt_and_score) or first_order=True"
            )
        return func(*args, **kwargs)


def refuse_running_statistics_updates(module: nn.Module, buffers: Mapping[str, Tensor | None]) -> None:
    """Raise if a BatchNorm layer would update its running statistics: an in-place write that ``vmap`` cannot batch."""
    for name, child in module.named_modules():
        if isinstance(child, _BatchNorm) and child.training and child.track_running_stats:
            key = f"{name}.running_mean" if name else "running_mean"
            if buffers.get(key, child.running_mean) is not None:
                raise ValueError(
                    f"BatchNorm layer {name!r} is in train mode and would update its running statistics "
                    f"inside the batched (vmap) inner loop; {_BATCH_NORM_FIX}"
                )


@renamed_keyword("adapt_names", "inner_params")
def batched_adapt_and_score(
    module: nn.Module,
    params: Mapping[str, Tensor],
    buffers: Mapping[str, Tensor | None],
    criterion: Criterion,
    support_x: Tensor,
    support_y: Tensor,
    query_x: Tensor,
    query_y: Tensor,
    *,
    steps: int,
    step_size: StepSize | Sequence[StepSize] | None = None,
    optimizer: InnerOptimizer | None = None,
    first_order: bool = False,
    inner_params: Collection[str] | None = None,
    check_finite: bool = True,
    chunk_size: int | None = None,
) -> ScoredTask:
    """:func:`~lit_meta.functional.adapt_and_score.adapt_and_score` for every task of a meta-batch at once.

    The arguments are those of ``adapt_and_score``, with a leading task dimension on
    ``support_x``, ``support_y``, ``query_x`` and ``query_y``; ``params``,
    ``buffers`` and the step sizes (the optimiser) are shared by all tasks, and
    each task runs the optimiser from its own fresh state. Each field of the
    result has a leading task dimension (``query_loss`` is ``[tasks]``).
    Non-finite support losses are checked once, after all tasks.

    Unlike :func:`~lit_meta.functional.inner_loop.adapt`, the inner gradients are
    taken whatever the grad mode, so evaluation may run under ``torch.no_grad()``.
    Random layers (dropout) draw independently per task.

    Args:
        chunk_size: tasks per vectorised chunk (``torch.func.vmap``'s
            ``chunk_size``); ``None`` for all at once. It bounds peak memory in
            evaluation; in training the graph of every chunk is kept for the
            backward pass, so it saves little there.

    Raises:
        ValueError: the backbone uses a normalisation that ``vmap`` cannot
            differentiate twice exactly (second order with grad mode on only), or a BatchNorm layer
            in train mode is given its running statistics (it would update them).
    """
    refuse_running_statistics_updates(module, buffers)
    names = adapted_names(params, inner_params)
    optimizer = inner_optimizer(steps, step_size, optimizer)
    start = dict(params)

    def one_task(sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> tuple[Tensor, Tensor, Tensor, dict[str, Tensor]]:
        def support_loss(p: dict[str, Tensor]) -> Tensor:
            return criterion(functional_forward(module, p, buffers, sx), sy)

        adapted = inner_loop(
            support_loss,
            start,
            names,
            optimizer,
            steps=steps,
            differentiate=func_gradients,
            create_graph=not first_order,
        )
        output = functional_forward(module, adapted.params, buffers, qx)
        return criterion(output, qy), output, adapted.support_losses, adapted.params

    with ExactNormalizationMode(second_order=not first_order and torch.is_grad_enabled()):
        query_loss, query_output, support_losses, adapted_params = torch.func.vmap(
            one_task, randomness="different", chunk_size=chunk_size
        )(support_x, support_y, query_x, query_y)
    if check_finite:
        check_finite_losses(support_losses)
    return ScoredTask(query_loss, query_output, support_losses, adapted_params)


batched_task_loss = renamed_function(batched_adapt_and_score, "batched_task_loss")
