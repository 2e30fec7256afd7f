"""Inner-loop maths on parameter dictionaries (``torch.func``): pure functions, no module is mutated.

- :mod:`~lit_meta.functional.params`: which parameters adapt, which buffers BatchNorm
  sees, and the functional forward pass (BatchNorm as the module's mode says, or forced).
- :mod:`~lit_meta.functional.optimizers`: inner optimisers as pure ``(init, update)``
  pairs: SGD (fixed, learned or per-step rates) and Adam.
- :mod:`~lit_meta.functional.meta_lstm`: the Meta-learner LSTM (Ravi & Larochelle, 2017),
  a learned inner optimiser whose cell state is the learner's parameters.
- :mod:`~lit_meta.functional.inner_loop`: the inner loop, first or second order.
- :mod:`~lit_meta.functional.adapt_and_score`: adapt on one task's support set, score its
  query set (the reference path).
- :mod:`~lit_meta.functional.compiled`: a task's query pass, optionally ``torch.compile``-d, and the
  compiled support gradients and forward pass of evaluation.
- :mod:`~lit_meta.functional.shifted_conv`: one-input-channel convolutions as shifted
  sums, which the compiled query pass fuses with the BatchNorm after them.
- :mod:`~lit_meta.functional.batched`: the same for all tasks of a meta-batch at once (``vmap``).
- :mod:`~lit_meta.functional.batch_norm`: batch normalisation that is exact under ``vmap``.
- :mod:`~lit_meta.functional.grad_mode`: autograd for an inner loop inside Lightning's inference mode
  (a ``test_step`` of your own): :class:`enable_adaptation_grad`.
- :mod:`~lit_meta.functional.deprecation`: old names that work for one more release, with a warning.

Deprecated: ``task_loss``, ``batched_task_loss`` and ``TaskLoss`` are now
:func:`adapt_and_score`, :func:`batched_adapt_and_score` and :class:`ScoredTask`.
"""

from lit_meta.functional.adapt_and_score import Criterion, ScoredTask, TaskLoss, adapt_and_score, task_loss
from lit_meta.functional.batch_norm import task_batch_norm
from lit_meta.functional.batched import batched_adapt_and_score, batched_task_loss
from lit_meta.functional.compiled import QueryForward, compiled_forward, query_forward, support_gradients
from lit_meta.functional.grad_mode import clone_inference_tensors, enable_adaptation_grad
from lit_meta.functional.inner_loop import AdaptResult, adapt, check_finite_losses
from lit_meta.functional.meta_lstm import MetaLSTMOptimizer, MetaLSTMState
from lit_meta.functional.optimizers import InnerOptimizer, StepSize, adam, apply_updates, sgd, sgd_step
from lit_meta.functional.params import (
    BatchNormBehaviour,
    BatchNormStatistics,
    adaptable_parameters,
    functional_forward,
    head_parameter_names,
    task_buffers,
)

__all__ = [
    "AdaptResult",
    "BatchNormBehaviour",
    "BatchNormStatistics",
    "Criterion",
    "InnerOptimizer",
    "MetaLSTMOptimizer",
    "MetaLSTMState",
    "QueryForward",
    "ScoredTask",
    "StepSize",
    "TaskLoss",
    "adam",
    "adapt",
    "adapt_and_score",
    "adaptable_parameters",
    "apply_updates",
    "batched_adapt_and_score",
    "batched_task_loss",
    "check_finite_losses",
    "clone_inference_tensors",
    "compiled_forward",
    "enable_adaptation_grad",
    "functional_forward",
    "head_parameter_names",
    "query_forward",
    "sgd",
    "sgd_step",
    "support_gradients",
    "task_batch_norm",
    "task_buffers",
    "task_loss",
]
