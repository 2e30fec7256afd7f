"""Inner-loop maths on parameter dictionaries (``torch.func``): pure functions, no module is mutated.

- :mod:`~lit_meta.functional.params`: which parameters adapt, which buffers BatchNorm
  sees, and the functional forward pass.
- :mod:`~lit_meta.functional.inner_loop`: SGD steps and the inner loop, first or second order.
- :mod:`~lit_meta.functional.task_loss`: adapt on one task's support set, score its query
  set (the reference path).
- :mod:`~lit_meta.functional.compiled`: a task's query pass, optionally ``torch.compile``-d.
- :mod:`~lit_meta.functional.shifted_conv`: one-input-channel convolutions as shifted
  sums, which the compiled query pass fuses with the BatchNorm after them.
- :mod:`~lit_meta.functional.batched`: the same for all tasks of a meta-batch at once (``vmap``).
- :mod:`~lit_meta.functional.batch_norm`: batch normalisation that is exact under ``vmap``.
"""

from lit_meta.functional.batch_norm import task_batch_norm
from lit_meta.functional.batched import batched_task_loss
from lit_meta.functional.compiled import QueryForward, query_forward
from lit_meta.functional.inner_loop import AdaptResult, StepSize, adapt, check_finite_losses, sgd_step
from lit_meta.functional.params import (
    BatchNormStatistics,
    adaptable_parameters,
    functional_forward,
    head_parameter_names,
    task_buffers,
)
from lit_meta.functional.task_loss import Criterion, TaskLoss, task_loss

__all__ = [
    "AdaptResult",
    "BatchNormStatistics",
    "Criterion",
    "QueryForward",
    "StepSize",
    "TaskLoss",
    "adapt",
    "adaptable_parameters",
    "batched_task_loss",
    "check_finite_losses",
    "functional_forward",
    "head_parameter_names",
    "query_forward",
    "sgd_step",
    "task_batch_norm",
    "task_buffers",
    "task_loss",
]
