"""MAML and first-order MAML, with the options of MAML++."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lit_meta.data.episode import EpisodeBatch
from lit_meta.functional import StepSize, adapt_and_score, adaptable_parameters
from lit_meta.learners.execution import Execution
from lit_meta.learners.gradient import GradientMetaLearner, InnerOptimizerName, InnerParams


class MAML(GradientMetaLearner):
    """Model-Agnostic Meta-Learning (Finn, Abbeel & Levine, 2017, ICML, arXiv:1703.03400).

    Learns an initialisation from which ``inner_steps`` steps of SGD with rate
    ``inner_lr`` on a task's support set fit its query set. The meta-gradient
    flows through the inner updates (second order); ``first_order=True`` drops
    the second-order terms (FOMAML, same paper, Section 5.2).

    Paper setups (Finn et al., 2017, Section 5 and Appendix A.1):

    * Omniglot 5-way 1-shot: Conv4 (64 filters), ``inner_lr=0.4``, ``inner_steps=1``,
      meta-batch 32, Adam ``meta_lr=1e-3``, 60,000 iterations, 3 test steps.
    * miniImageNet 5-way 1-shot: Conv4 (32 filters), ``inner_lr=0.01``, 5 steps
      (10 at test), meta-batch 4, 60,000 iterations.
    * Sinusoid: MLP 40-40, ``inner_lr=0.01``, 1 step, meta-batch 25, K=10.

    MAML++ options (Antoniou, Edwards & Storkey, 2019, "How to train your MAML",
    ICLR): ``learn_inner_lr`` learns one rate per parameter tensor and inner
    step (LSLR); ``multi_step_loss_steps`` > 0 scores the query set after every
    inner step, with weights annealed towards the last step over that many
    training steps (MSL); ``first_order_steps`` trains first-order for that many
    steps, then second-order (derivative-order annealing); ``lr_schedule="cosine"``
    anneals the outer rate.

    BatchNorm uses each task's batch statistics in the inner and outer loop and
    at evaluation (the paper's setting); running statistics are never used
    nor updated. The inner loop, adaptation, the per-task meta-gradient and the
    execution paths are those of :class:`~lit_meta.learners.gradient.GradientMetaLearner`.

    Args:
        backbone: the network; its output size must equal the episodes' ways.
        inner_lr: inner-loop SGD step size (the initial value when learned).
        inner_steps: inner steps during meta-training.
        eval_inner_steps: inner steps at validation, test and predict (default ``inner_steps``).
        first_order: first-order approximation (FOMAML).
        inner_params: which parameters the inner loop updates: ``"all"``, ``"head"`` (the
            last ``nn.Linear``; ANIL) or a list of parameter names / module prefixes.
        inner_optimizer: ``"sgd"`` (the paper's) or ``"adam"``; Adam takes no learned rates.
        learn_inner_lr: learn a step size per parameter tensor and step (MAML++ LSLR).
        multi_step_loss_steps: training steps over which MAML++'s multi-step loss
            anneals to the last step's loss, which alone is computed from then on; 0
            disables it.
        first_order_steps: training steps taken first-order before switching to
            second order (MAML++ derivative-order annealing).
        execution: how meta-training runs a meta-batch (evaluation always adapts
            one task after another):

            * ``"loop"`` adapts one task after another with a backward per task
              (the reference);
            * ``"compiled"`` is the loop with each task's query pass compiled by
              :func:`torch.compile` (:mod:`lit_meta.functional.compiled`): the same
              meta-gradient up to float rounding, in first and second order; the
              first step compiles (seconds to a minute);
            * ``"vmap"`` adapts all tasks of a meta-batch at once with ``torch.func.vmap``;
            * ``"auto"`` times the paths on the first training batch and keeps the
              fastest (:class:`~lit_meta.learners.execution.ExecutionPlanner`). It tries
              ``"compiled"`` only when the Trainer plans enough training for the
              compilation to pay off, and ``"vmap"`` only when the activations of all
              tasks at once, estimated from one task's, fit ``vmap_memory_budget_mb``.
              MAML++'s multi-step loss runs the loop while it weighs the earlier
              steps (the first ``multi_step_loss_steps`` training steps); the paths
              are timed when it ends. Measured speeds and
              memory of each path: ``benchmarks/RESULTS.md``.
        vmap_memory_budget_mb: the memory ``execution="auto"`` may spend on the
            activations of the vmap path, estimated as the meta-batch size times
            what autograd saves for one task. ``None``: 256 MB on a CPU
            (:data:`~lit_meta.learners.execution.CPU_VMAP_BUDGET_MB`), half the free
            memory on a CUDA device.
        adapt: deprecated name of ``inner_params``.
        **kwargs: the outer-loop options of :class:`~lit_meta.learners.base.MetaLearner`
            (``meta_lr``, ``meta_optimizer``, ``weight_decay``, ``lr_schedule``, ...).
    """

    def __init__(
        self,
        backbone: nn.Module,
        inner_lr: float = 0.4,
        inner_steps: int = 1,
        eval_inner_steps: int | None = None,
        first_order: bool = False,
        inner_params: InnerParams = "all",
        inner_optimizer: InnerOptimizerName = "sgd",
        learn_inner_lr: bool = False,
        multi_step_loss_steps: int = 0,
        first_order_steps: int = 0,
        execution: Execution = "auto",
        vmap_memory_budget_mb: float | None = None,
        adapt: InnerParams | None = None,
        **kwargs: Any,
    ) -> None:
        if adapt is not None:
            warnings.warn(
                f"{type(self).__name__}(adapt=...) is deprecated and will be removed in the next release; it is "
                "now inner_params=... (adapt is the method that returns a task model)",
                DeprecationWarning,
                stacklevel=2,
            )
            inner_params = adapt
        if inner_optimizer != "sgd" and (learn_inner_lr or multi_step_loss_steps > 0):
            raise ValueError(
                f"inner_optimizer={inner_optimizer!r}: MAML++'s learned step sizes and multi-step loss are "
                "defined for SGD; use inner_optimizer='sgd'"
            )
        super().__init__(
            backbone,
            inner_lr=inner_lr,
            inner_steps=inner_steps,
            eval_inner_steps=eval_inner_steps,
            inner_params=inner_params,
            inner_optimizer=inner_optimizer,
            first_order=first_order,
            execution=execution,
            vmap_memory_budget_mb=vmap_memory_budget_mb,
            **kwargs,
        )
        # Checkpoints record the new name only.
        self.hparams.pop("adapt", None)
        self._hparams_initial.pop("adapt", None)
        self.hparams["inner_params"] = inner_params
        self.inner_lrs = self._make_inner_lrs()

    def _make_inner_lrs(self) -> nn.ParameterList | None:
        """Learned step sizes (LSLR): one scalar per adapted tensor per step, or ``None``."""
        if not self.hparams.learn_inner_lr:
            return None
        steps = max(self.hparams.inner_steps, self.hparams.eval_inner_steps or 0)
        return nn.ParameterList(
            [
                nn.Parameter(torch.full((len(self.inner_param_names),), float(self.hparams.inner_lr)))
                for _ in range(steps)
            ]
        )

    def step_sizes(self, steps: int) -> StepSize | Sequence[StepSize]:
        """The inner step sizes for ``steps`` steps: ``inner_lr``, or LSLR's learned rates per step."""
        if self.inner_lrs is None:
            return self.hparams.inner_lr
        # Learned rates beyond the trained steps reuse the last one.
        rates = [self.inner_lrs[min(s, len(self.inner_lrs) - 1)] for s in range(steps)]
        return [dict(zip(self.inner_param_names, r.unbind(), strict=True)) for r in rates]

    def learned_step_sizes(self) -> dict[str, Tensor]:
        """LSLR's rate of every adapted tensor at every inner step, as ``step{s}/{name}``."""
        if self.inner_lrs is None:
            return {}
        return {
            f"step{s}/{name}": rate.detach()
            for s, rates in enumerate(self.inner_lrs)
            for name, rate in zip(self.inner_param_names, rates, strict=True)
        }

    @property
    def training_first_order(self) -> bool:
        """First order while ``first_order`` or within the first ``first_order_steps`` steps (MAML++)."""
        return self.hparams.first_order or self.global_step < self.hparams.first_order_steps

    # -- the learner's hooks ------------------------------------------------------------------
    def meta_loss(self, batch: EpisodeBatch) -> Tensor:
        """Mean query loss after adaptation over the tasks of ``batch``.

        On the loop and compiled paths the meta-gradient of each task is taken right
        after its forward pass and the task's graph freed, so memory stays that of
        one task (:meth:`~lit_meta.learners.gradient.GradientMetaLearner.per_task_meta_gradient`).
        """
        if self.multi_step_loss_active:
            return self._multi_step_meta_loss(batch)
        return super().meta_loss(batch)

    @property
    def multi_step_loss_active(self) -> bool:
        """Whether the multi-step loss still weighs the earlier inner steps' query losses: during the first
        ``multi_step_loss_steps`` training steps. After them only the last step's loss counts
        (:meth:`multi_step_weights`), which the plain meta-loss computes on any execution path
        without scoring the query set after every step (as the authors' code switches to the final
        step's loss once the annealing ends)."""
        return self.global_step < self.hparams.multi_step_loss_steps

    def _multi_step_meta_loss(self, batch: EpisodeBatch) -> Tensor:
        """MAML++'s multi-step loss: a weighted sum of the query losses after every inner step, with
        a backward per task (:meth:`~lit_meta.learners.gradient.GradientMetaLearner.per_task_meta_gradient`)."""
        steps = self.hparams.inner_steps
        weights = self.multi_step_weights(steps).to(batch.support_x.device)
        sizes = self.step_sizes(steps)
        sizes = sizes if isinstance(sizes, list) else [sizes] * steps
        params = adaptable_parameters(self.backbone)
        buffers = self.buffers_for_adaptation()

        def task_losses(episode) -> tuple[Tensor, Tensor]:  # type: ignore[no-untyped-def]
            current, query_losses, support_losses = params, [], []
            for s in range(steps):
                result = adapt_and_score(
                    self.backbone, current, buffers, self.task_loss,
                    episode.support_x, episode.support_y, episode.query_x, episode.query_y,
                    steps=1, optimizer=self.configure_inner_optimizer(1, sizes[s]),
                    first_order=self.training_first_order, inner_params=self.inner_param_names,
                    check_finite=False,
                )  # fmt: skip
                current = result.params
                query_losses.append(result.query_loss)
                support_losses.append(result.support_losses)
            return (torch.stack(query_losses) * weights).sum(), torch.cat(support_losses)

        return self.per_task_meta_gradient(batch, task_losses)

    def multi_step_weights(self, steps: int) -> Tensor:
        """Importance of each step's query loss (Antoniou et al., 2019, Section 4, MSL).

        Uniform at the start; the weight of the earlier steps decays linearly to
        zero over ``multi_step_loss_steps`` training steps (the paper anneals
        over epochs; here over optimiser steps), leaving the last step's loss.
        """
        progress = min(self.global_step / max(self.hparams.multi_step_loss_steps, 1), 1.0)
        weights = torch.full((steps,), (1.0 - progress) / steps)
        weights[-1] += progress
        return weights
