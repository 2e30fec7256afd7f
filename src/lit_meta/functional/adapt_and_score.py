"""One task of a meta-batch: adapt on the support set, then score the query set.

This per-task function is the reference path of every gradient-based learner;
:func:`lit_meta.functional.batched.batched_adapt_and_score` computes the same for
all tasks at once and is tested against it.

It was called ``task_loss`` (returning ``TaskLoss``); it was renamed because
``MetaLearner.task_loss`` is the per-task criterion ``(outputs, targets) -> loss``,
and one name should have one meaning. The old names work for one release.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

from torch import Tensor, nn

from lit_meta.functional.compiled import QueryForward, query_forward
from lit_meta.functional.deprecation import renamed_function, renamed_keyword
from lit_meta.functional.inner_loop import adapt
from lit_meta.functional.optimizers import InnerOptimizer, StepSize
from lit_meta.functional.params import functional_forward

Criterion = Callable[[Tensor, Tensor], Tensor]
"""``(output, target) -> scalar loss``, e.g. ``torch.nn.functional.cross_entropy``."""


@dataclass(frozen=True)
class ScoredTask:
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


@renamed_keyword("adapt_names", "inner_params")
def adapt_and_score(
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
    query_pass: QueryForward | None = None,
) -> ScoredTask:
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
        optimizer: see :func:`~lit_meta.functional.inner_loop.adapt`; give it or ``step_size``.
        first_order: see :func:`~lit_meta.functional.inner_loop.adapt`.
        inner_params: see :func:`~lit_meta.functional.inner_loop.adapt`. Formerly
            ``adapt_names=``, which still works for one release with a ``DeprecationWarning``.
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
        optimizer=optimizer,
        first_order=first_order,
        inner_params=inner_params,
        check_finite=check_finite,
    )
    query_pass = query_pass or query_forward(module, criterion)
    output, loss = query_pass(adapted.params, buffers, query_x, query_y)
    return ScoredTask(loss, output, adapted.support_losses, adapted.params)


task_loss = renamed_function(adapt_and_score, "task_loss")
TaskLoss = ScoredTask
"""Deprecated name of :class:`ScoredTask`."""
