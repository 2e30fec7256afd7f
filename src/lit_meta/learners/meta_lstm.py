"""Meta-learner LSTM: a learned update rule and a learned initialisation for the inner loop."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from lit_meta.functional import InnerOptimizer, MetaLSTMOptimizer, StepSize, task_buffers
from lit_meta.learners.base import TaskModel
from lit_meta.learners.execution import Execution
from lit_meta.learners.gradient import AdaptationBatchNorm, GradientMetaLearner, InnerParams


class MetaLSTM(GradientMetaLearner):
    """Meta-learner LSTM (Ravi & Larochelle, 2017, "Optimization as a Model for Few-Shot
    Learning", ICLR; Algorithm 1, Section 3, Figure 2).

    Each task is learned by ``inner_steps`` updates of the backbone (the *learner*) that a
    two-layer coordinate-wise LSTM (the *meta-learner*,
    :class:`~lit_meta.functional.MetaLSTMOptimizer`) computes from the support-loss
    gradients and the support loss: ``theta_t = f_t * theta_{t-1} - i_t * grad_t`` with
    learned gates (Eq. 2-4). The meta-learner's weights and the learner's initial
    parameters (its initial cell state ``c_0``: the backbone's own parameters) are
    meta-learned together on the query loss after the last update, by the outer optimiser
    (Adam, ``meta_lr=1e-3`` in the paper).

    Second order. The meta-gradient ignores second derivatives through the learner's
    gradients (Section 3.2, the dashed lines of Figure 2): the gradients and the loss the
    LSTM reads are detached, so the meta-gradient flows only through the updates
    ``f_t * theta_{t-1} - i_t * grad_t`` and the gates. This learner therefore always runs
    its inner loop first order (``first_order`` is fixed).

    BatchNorm. The paper (Section 3.4) and its code (``train-lstm.lua``,
    ``meta-learner-lstm.lua``) reset the learner's running statistics for every episode
    (``learner.reset()``) so no statistics leak across tasks; the support set is always
    normalised with its batch statistics, and the running averages are accumulated over the
    T support passes of the inner loop; during meta-training the query set is normalised
    with its own batch statistics; during meta-validation and meta-test with the running
    averages of that episode's support passes, so no query example's statistics reach
    another. Here likewise (``eval_batch_norm="support_running"``, the default):
    meta-training (:meth:`meta_loss_on_path`) normalises both sets with their own batch
    statistics, and :meth:`adapt` (validation, test, predict, ``lit-meta adapt``) gives every
    BatchNorm layer new running statistics (mean 0, variance 1) for the episode, updates
    them on each support pass with ``batch_norm_momentum`` (the weight of the newest batch:
    0.9 for 1-shot, 0.95 for 5-shot in the authors' configs; Torch7's momentum is PyTorch's)
    and normalises the query set with them. The backbone's own buffers and mode are not
    used nor changed. ``eval_batch_norm="query_batch"`` normalises the query set with its
    own batch statistics at evaluation too (a deviation; lit-meta's other learners do so).

    Inner loop. The paper's learner trains on minibatches of the support set for several
    epochs; the authors' miniImageNet configs use minibatches of the whole support set
    (5 examples for 1-shot, 25 for 5-shot) and T = 12 (1-shot) or 8 (5-shot) updates, at
    meta-training and evaluation alike. Here every update uses the whole support set,
    which equals those settings; smaller minibatches are not offered. The authors' code
    divides the (already averaged) gradient once more by the batch size before the LSTM
    reads it; here it reads the gradient of the mean support loss.

    Args:
        backbone: the learner; its output size must equal the episodes' ways. Its
            parameters are the meta-learned initial cell state.
        inner_steps: learner updates T per task during meta-training.
        eval_inner_steps: updates at validation, test, predict and :meth:`adapt`
            (default ``inner_steps``, as in the authors' code).
        hidden_size: hidden units of the meta-learner's first LSTM layer (20 in the authors' code).
        input_bias_init: the range the input-gate bias is drawn from (authors' code: U(-5, -4),
            an initial step size of about 0.01).
        forget_bias_init: the range the forget-gate bias is drawn from (authors' code: U(4, 5),
            an initial forget gate of about 0.99).
        inner_params: which parameters the meta-learner updates (the others stay at their
            learned values): ``"all"`` (the paper), ``"head"`` or names / module prefixes.
        first_order: always ``True`` (see "Second order" above); stated so that a
            configuration cannot set the base's ``first_order=False``.
        eval_batch_norm: how :meth:`adapt` normalises the query set: ``"support_running"``
            (the paper) or ``"query_batch"`` (see "BatchNorm" above).
        batch_norm_momentum: with ``"support_running"``, the weight of the newest support
            batch in the episode's running averages, in ``(0, 1]``.
        execution: see :class:`~lit_meta.learners.gradient.GradientMetaLearner`. The vmap
            path is tested to give the loop's losses and meta-gradients; the compiled path
            compiles only the query pass.
        **kwargs: the outer-loop options of :class:`~lit_meta.learners.base.MetaLearner`
            (``meta_lr``, ...). ``inner_lr`` and ``inner_optimizer`` are refused unless
            left at the base's defaults: the LSTM is the optimiser.

    Raises:
        ValueError: an option above is out of range or not a choice, ``first_order`` is not
            ``True``, or ``inner_lr`` or ``inner_optimizer`` is set.
    """

    def __init__(
        self,
        backbone: nn.Module,
        inner_steps: int = 12,
        eval_inner_steps: int | None = None,
        hidden_size: int = 20,
        input_bias_init: tuple[float, float] = (-5.0, -4.0),
        forget_bias_init: tuple[float, float] = (4.0, 5.0),
        inner_params: InnerParams = "all",
        first_order: Literal[True] = True,
        eval_batch_norm: Literal["support_running", "query_batch"] = "support_running",
        batch_norm_momentum: float = 0.9,
        execution: Execution = "auto",
        **kwargs: Any,
    ) -> None:
        if eval_batch_norm not in ("support_running", "query_batch"):
            raise ValueError(f"eval_batch_norm={eval_batch_norm!r}: use 'support_running' or 'query_batch'")
        if not 0 < batch_norm_momentum <= 1:
            raise ValueError(
                f"batch_norm_momentum={batch_norm_momentum}: use a value in (0, 1], the weight of the newest "
                "support batch in the running averages (the paper: 0.9 for 1-shot, 0.95 for 5-shot)"
            )
        if first_order is not True:
            raise ValueError(
                f"MetaLSTM takes only first_order=True, got {first_order!r}: it always ignores second derivatives "
                "through the learner's gradients (Ravi & Larochelle, 2017, Section 3.2); remove it"
            )
        _refuse_fixed_options(kwargs)
        super().__init__(
            backbone,
            inner_steps=inner_steps,
            eval_inner_steps=eval_inner_steps,
            inner_params=inner_params,
            first_order=True,
            execution=execution,
            **kwargs,
        )
        self.meta_learner = MetaLSTMOptimizer(hidden_size, tuple(input_bias_init), tuple(forget_bias_init))

    def configure_inner_optimizer(self, steps: int, step_sizes: StepSize | Sequence[StepSize]) -> InnerOptimizer:
        """The meta-learner LSTM; ``step_sizes`` do not apply (the input gate is the step size)."""
        return self.meta_learner.inner_optimizer()

    def batch_norm_for_adaptation(self) -> AdaptationBatchNorm:
        """With ``eval_batch_norm="support_running"``: new running statistics for the episode,
        accumulated over the support passes (batch statistics) and used for the query set."""
        if self.hparams.eval_batch_norm == "query_batch":
            return super().batch_norm_for_adaptation()
        return AdaptationBatchNorm(
            task_buffers(self.backbone, "fresh"),
            support="train",
            support_momentum=self.hparams.batch_norm_momentum,
            query="eval",
        )

    def adapt(self, support_x: Tensor, support_y: Tensor, steps: int | None = None) -> TaskModel:
        """Learn a new task with the meta-learner; its weights and the learner's stay untouched.

        Runs without an outer graph (the inner gradients are still taken): memory stays
        that of one update.
        """
        with torch.no_grad():
            return super().adapt(support_x, support_y, steps)


def _refuse_fixed_options(kwargs: dict[str, Any]) -> None:
    """Raise if an option of the base that this learner fixes is set to another value."""
    defaults = inspect.signature(GradientMetaLearner.__init__).parameters
    for name in ("inner_lr", "inner_optimizer"):
        if name in kwargs and kwargs[name] != defaults[name].default:
            raise ValueError(
                f"MetaLSTM takes no {name} (got {kwargs[name]!r}): the meta-learner LSTM is the inner "
                "optimiser and its input gate the step size; remove it (see input_bias_init)"
            )
