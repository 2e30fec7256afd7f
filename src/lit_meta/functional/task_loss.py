"""One task of a meta-batch: adapt on the support set, then score the query set.

This per-task function is the reference path of every gradient-based learner;
:func:`lit_meta.functional.batched.batched_task_loss` computes the same for all
tasks at once and is tested against it.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

from torch import Tensor, nn

from lit_meta.functional.compiled import QueryForward, query_forward
from lit_meta.functional.inner_loop import StepSize, adapt
from lit_meta.functional.params import functional_forward

Criterion = Callable[[Tensor, Tensor], Tensor]
"""``(output, target) -> scalar loss``, e.g. ``torch.nn.functional.cross_entropy``."""


@dataclass(frozen=True)
class TaskLoss:
    """The outcome of adapting to a task and scoring its query set.

    On the batched path every field has a leading task dimension.

    Attributes:
        query_loss: the criterion on the query set with the adapted parameters
            (the meta-loss term of the task); a scalar.
        query_output: the network's output on the query set, e.g. logits ``[queries, ways]``.
        support_losses: ``[steps]``, detached: the support loss before each inner step.
        params: the adapted parameters.
    """

    query_loss: Tensor
    query_output: Tensor
    support_losses: Tensor
    params: dict[str, Tensor]


def task_loss(
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
    step_size: StepSize | Sequence[StepSize],
    first_order: bool = False,
    adapt_names: Collection[str] | None = None,
    check_finite: bool = True,
    query_pass: QueryForward | None = None,
) -> TaskLoss:
    """Adapt ``params`` on one task's support set with :func:`~lit_meta.functional.inner_loop.adapt`,
    then run the query set through ``module`` with the adapted parameters.

    Args:
        module: the backbone, run with :func:`~lit_meta.functional.params.functional_forward`.
        params: the parameters to start from, e.g. ``adaptable_parameters(module)``.
        buffers: e.g. ``task_buffers(module)`` for per-task BatchNorm statistics.
        criterion: the loss on the network's output and the targets.
        support_x: ``[ways * shots, *item_shape]``.
        support_y: ``[ways * shots]`` labels (or regression targets).
        query_x: ``[ways * queries, *item_shape]``.
        query_y: ``[ways * queries]``.
        steps: see :func:`~lit_meta.functional.inner_loop.adapt`.
        step_size: see :func:`~lit_meta.functional.inner_loop.adapt`.
        first_order: see :func:`~lit_meta.functional.inner_loop.adapt`.
        adapt_names: the ``adapt`` argument of :func:`~lit_meta.functional.inner_loop.adapt`.
        check_finite: see :func:`~lit_meta.functional.inner_loop.adapt`.
        query_pass: runs the query set instead of ``criterion(module(...))``, e.g. the
            compiled :func:`~lit_meta.functional.compiled.query_forward` of the same module
            and criterion; it must compute the same function.
    """

    def support_loss(p: dict[str, Tensor]) -> Tensor:
        return criterion(functional_forward(module, p, buffers, support_x), support_y)

    adapted = adapt(
        support_loss,
        params,
        steps=steps,
        step_size=step_size,
        first_order=first_order,
        adapt=adapt_names,
        check_finite=check_finite,
    )
    query_pass = query_pass or query_forward(module, criterion)
    output, loss = query_pass(adapted.params, buffers, query_x, query_y)
    return TaskLoss(loss, output, adapted.support_losses, adapted.params)
