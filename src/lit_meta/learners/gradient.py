"""The gradient-based family: learners that adapt the backbone's weights by gradient steps.

:class:`GradientMetaLearner` is the base of MAML (and FOMAML, ANIL, Meta-SGD, MAML++)
and Reptile. It holds what they share:

* which parameters the inner loop updates (``inner_params``) and with which inner
  optimiser (:meth:`~GradientMetaLearner.configure_inner_optimizer`, a pure
  ``init``/``update`` pair from :mod:`lit_meta.functional.optimizers`);
* adaptation to a new task (:meth:`~GradientMetaLearner.adapt`), returning an
  :class:`AdaptedNetwork`;
* the per-task meta-gradient loop that takes a backward per task, so memory stays that
  of one task (:meth:`~GradientMetaLearner.per_task_meta_gradient`), and the surrogate
  loss that hands a meta-gradient computed that way to the Trainer
  (:func:`loss_with_gradients`);
* the execution paths of a meta-training step (loop, compiled, vmap) and the choice
  between them by measurement (:mod:`lit_meta.learners.execution`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn

from lit_meta import glibc_malloc
from lit_meta.data.episode import Episode, EpisodeBatch, collate_episodes
from lit_meta.functional import (
    BatchNormBehaviour,
    InnerOptimizer,
    QueryForward,
    StepSize,
    adam,
    adapt_and_score,
    adaptable_parameters,
    batched_adapt_and_score,
    check_finite_losses,
    compiled_forward,
    functional_forward,
    head_parameter_names,
    query_forward,
    sgd,
    support_gradients,
    task_buffers,
)
from lit_meta.functional import adapt as adapt_parameters
from lit_meta.functional.compiled import Forward, SupportGradients
from lit_meta.learners.base import ClassScores, MetaLearner, TaskModel, init_arguments
from lit_meta.learners.execution import (
    COMPILED_EVALUATION_EPISODES,
    EvaluationExecution,
    EvaluationPath,
    Execution,
    ExecutionPath,
    ExecutionPlanner,
    planned_evaluation_episodes,
    saved_tensor_bytes,
    vmap_memory_budget_bytes,
)

InnerParams = Literal["all", "head"] | list[str]
"""Which parameters the inner loop updates: all, the head (the last ``nn.Linear``), or names / module prefixes."""
InnerOptimizerName = Literal["sgd", "adam"]

EXECUTION_PATH_KEY = "lit_meta_maml_execution_path"
"""Checkpoint entry holding the measured execution path, so a resumed run takes the same one."""
MAML_PLUS_PLUS_OPTIONS = {"learn_inner_lr": False, "multi_step_loss_steps": 0, "first_order_steps": 0}
"""MAML's MAML++ options and their "off" values, which older ANIL and Meta-SGD checkpoints also hold."""
ADAPTATION_GROWTH = 2.0
""":meth:`GradientMetaLearner.check_adaptation` warns when the mean loss after adaptation exceeds the mean
support loss before it by this factor: a wide margin, as the two are measured on different examples ..."""
ADAPTATION_GROWTH_STEPS = 5
"""... in this many consecutive training steps: at initialisation a good step size may overshoot for a step
or two, while one too high for the network overshoots at every step (the ratios measured for Conv4 on the
glyphs and for the sinusoid MLP are in ``benchmarks/notes/guards.md``, "The adaptation-growth warning")."""
ADAM_BETAS = (0.0, 0.999)
"""The inner Adam's betas: Reptile's reference code sets ``beta1=0`` (Nichol et al., 2018)."""


def loss_with_gradients(value: Tensor, params: Sequence[Tensor], grads: Sequence[Tensor | None]) -> Tensor:
    """A scalar equal to ``value`` whose gradient with respect to ``params[i]`` is ``grads[i]``.

    Learners that compute their meta-gradient themselves (a backward per task
    to bound memory, Reptile's update) return this from ``training_step``. The
    Trainer's single backward then fills ``.grad`` with exactly ``grads``, so
    DDP's gradient all-reduce, gradient clipping, accumulation and precision
    plugins work as with any other loss.
    """
    surrogate = sum(
        ((p * g.detach()).sum() for p, g in zip(params, grads, strict=True) if g is not None),
        torch.zeros((), device=value.device),
    )
    return value.detach() + surrogate - surrogate.detach()


class AdaptedNetwork:
    """A backbone bound to task-specific parameters: ``model(x)`` runs it functionally.

    ``batch_norm`` is the BatchNorm behaviour of its forward pass
    (:func:`~lit_meta.functional.functional_forward`); ``forward``, when given, runs the pass
    instead (a compiled one, :func:`~lit_meta.functional.compiled_forward`, with ``"module"``).
    """

    def __init__(
        self,
        backbone: nn.Module,
        params: dict[str, Tensor],
        buffers: dict[str, Tensor | None],
        batch_norm: BatchNormBehaviour = "module",
        forward: Forward | None = None,
    ) -> None:
        if forward is not None and batch_norm != "module":
            raise ValueError(f"a given forward pass runs BatchNorm as the module's mode says, not {batch_norm!r}")
        self.backbone = backbone
        self.params = params
        self.buffers = buffers
        self.batch_norm = batch_norm
        self.forward = forward

    def __call__(self, x: Tensor) -> Tensor:
        if self.forward is not None:
            return self.forward(self.params, self.buffers, x)
        return functional_forward(self.backbone, self.params, self.buffers, x, batch_norm=self.batch_norm)


@dataclass(frozen=True)
class AdaptationBatchNorm:
    """How BatchNorm runs in :meth:`GradientMetaLearner.adapt`: while it learns a task, and in the
    model it returns (``batch_norm`` and ``batch_norm_momentum`` of
    :func:`~lit_meta.functional.functional_forward`).

    Attributes:
        buffers: the buffers of the support passes and of the returned model.
        support: the BatchNorm behaviour of the support passes.
        support_momentum: the running averages' momentum of the support passes (with ``"train"``).
        query: the BatchNorm behaviour of the returned model.
    """

    buffers: dict[str, Tensor | None]
    support: BatchNormBehaviour = "module"
    support_momentum: float | None = None
    query: BatchNormBehaviour = "module"


class GradientMetaLearner(MetaLearner):
    """Base of the learners that adapt to a task by gradient steps on the backbone's weights.

    By default the meta-training objective is MAML's (:meth:`meta_loss_on_path`); a
    subclass may replace it (:meth:`meta_loss`, as Reptile does) and override
    :meth:`step_sizes` and :meth:`configure_inner_optimizer`. Adaptation fine-tunes a copy of the weights, so
    evaluation needs autograd (the base leaves Lightning's inference mode for it), and
    the class scores are the outputs of the backbone's last ``nn.Linear``, whose size
    must equal the ways. BatchNorm uses each task's batch statistics; running
    statistics are never used nor updated (a subclass may change that at adaptation,
    :meth:`batch_norm_for_adaptation`, as :class:`~lit_meta.learners.MetaLSTM` does).

    Args:
        backbone: the network; its output size must equal the episodes' ways.
        inner_lr: the inner step size (the initial value when learned), or Adam's rate.
        inner_steps: inner steps during meta-training.
        eval_inner_steps: inner steps at validation, test, predict and :meth:`adapt`
            (default ``inner_steps``).
        inner_params: which parameters the inner loop updates: ``"all"``, ``"head"``
            (the last ``nn.Linear``; ANIL) or a list of parameter names / module prefixes.
        inner_optimizer: ``"sgd"``, or ``"adam"`` (betas :data:`ADAM_BETAS`, fresh
            moments for every task).
        first_order: drop the second-order terms of the meta-gradient (FOMAML,
            Finn et al., 2017, Section 5.2).
        execution: the path a meta-training step runs on: ``"loop"``, ``"compiled"``,
            ``"vmap"`` or ``"auto"`` (see :class:`~lit_meta.learners.MAML`).
        vmap_memory_budget_mb: the memory ``execution="auto"`` may spend on the vmap
            path's activations; ``None``: the device default
            (:func:`~lit_meta.learners.execution.vmap_memory_budget_bytes`).
        eval_execution: how adaptation runs at validation, test, predict and :meth:`adapt`:
            ``"loop"`` (eager), ``"compiled"`` (each task's support gradients and the
            adapted network's pass under :func:`torch.compile`: tens of seconds to compile
            once, then faster; the same outputs to float rounding) or ``"auto"``: compiled
            for Trainer runs that evaluate at least
            :data:`~lit_meta.learners.execution.COMPILED_EVALUATION_EPISODES` episodes,
            eager otherwise (and outside a Trainer). BatchNorm other than on each task's
            batch statistics (:meth:`batch_norm_for_adaptation`) always runs eager.
        **kwargs: the outer-loop options of :class:`~lit_meta.learners.base.MetaLearner`.
    """

    family_base: ClassVar[bool] = True
    evaluation_needs_autograd: ClassVar[bool] = True
    class_scores: ClassVar[ClassScores] = "backbone_head"

    def __init__(
        self,
        backbone: nn.Module,
        inner_lr: float = 0.4,
        inner_steps: int = 1,
        eval_inner_steps: int | None = None,
        inner_params: InnerParams = "all",
        inner_optimizer: InnerOptimizerName = "sgd",
        first_order: bool = False,
        execution: Execution = "auto",
        vmap_memory_budget_mb: float | None = None,
        eval_execution: EvaluationExecution = "auto",
        **kwargs: Any,
    ) -> None:
        super().__init__(backbone, **kwargs)
        if eval_execution not in ("auto", "loop", "compiled"):
            raise ValueError(f"eval_execution={eval_execution!r}: use 'auto', 'loop' or 'compiled'")
        if inner_steps < 1 or (eval_inner_steps is not None and eval_inner_steps < 1):
            raise ValueError(f"inner_steps={inner_steps}, eval_inner_steps={eval_inner_steps}: take at least one step")
        if inner_lr <= 0:
            raise ValueError(f"inner_lr={inner_lr}: the inner step size must be positive")
        if inner_optimizer not in ("sgd", "adam"):
            raise ValueError(f"inner_optimizer={inner_optimizer!r}: use 'sgd' or 'adam'")
        self.inner_param_names = self._select_inner_params(inner_params)
        self._measured_path: ExecutionPath | None = None
        self._warned_adaptation_growth = False
        self._adaptation_growth_streak = 0
        self._adaptation_growth_step = -1
        self._compiled_query: QueryForward | None = None
        self._compiled_evaluation: tuple[SupportGradients, Forward] | None = None
        self._evaluation_tasks = 1

    @classmethod
    def upgrade_checkpoint(cls, checkpoint: dict[str, Any]) -> None:
        """Format 1 (before the family bases): ``adapt`` is now ``inner_params``; ANIL and Meta-SGD,
        no longer subclasses of MAML, drop MAML++'s options when they were off."""
        super().upgrade_checkpoint(checkpoint)
        hparams = checkpoint["hyper_parameters"]
        if "adapt" in hparams:
            hparams["inner_params"] = hparams.pop("adapt")
        accepted = init_arguments(cls)
        for name, off in MAML_PLUS_PLUS_OPTIONS.items():
            if name not in hparams or name in accepted:
                continue
            if hparams[name] != off:
                raise ValueError(
                    f"this {cls.__name__} checkpoint (an older lit-meta's) uses {name}={hparams[name]}, a MAML++ "
                    f"option that {cls.__name__} no longer takes; load it as a MAML, which takes it: "
                    "MAML.load_from_checkpoint(path) keeps its inner_params and weights"
                )
            del hparams[name]

    def _select_inner_params(self, inner_params: InnerParams) -> list[str]:
        if inner_params == "all":
            return list(adaptable_parameters(self.backbone))
        if inner_params == "head":
            return head_parameter_names(self.backbone)
        return list(adaptable_parameters(self.backbone, inner_params))

    # -- the inner loop ----------------------------------------------------------------------
    def step_sizes(self, steps: int) -> StepSize | Sequence[StepSize]:
        """The inner SGD step sizes for ``steps`` steps, as :func:`lit_meta.functional.sgd` takes them."""
        return self.hparams.inner_lr

    def configure_inner_optimizer(self, steps: int, step_sizes: StepSize | Sequence[StepSize]) -> InnerOptimizer:
        """The inner optimiser of a ``steps``-step inner loop: SGD with ``step_sizes``, or Adam.

        Override to plug in another :class:`~lit_meta.functional.InnerOptimizer`.

        Args:
            steps: the inner steps it will take.
            step_sizes: :meth:`step_sizes`, cut from the meta-graph when adapting at deployment.
        """
        if self.hparams.inner_optimizer == "adam":
            return adam(lr=self.hparams.inner_lr, betas=ADAM_BETAS)
        return sgd(step_sizes)

    @property
    def training_first_order(self) -> bool:
        """Whether meta-training drops the second-order terms now."""
        return self.hparams.get("first_order", False)

    def buffers_for_adaptation(self) -> dict[str, Tensor | None]:
        """The buffers the backbone runs with while adapting: BatchNorm on each task's batch statistics."""
        return task_buffers(self.backbone)

    def batch_norm_for_adaptation(self) -> AdaptationBatchNorm:
        """BatchNorm in :meth:`adapt`: :meth:`buffers_for_adaptation` for the support and query passes alike.

        Called once per adaptation, so buffers it creates are the task's own.
        """
        return AdaptationBatchNorm(self.buffers_for_adaptation())

    def adaptation_steps(self) -> int:
        return self.hparams.eval_inner_steps or self.hparams.inner_steps

    def adapt(self, support_x: Tensor, support_y: Tensor, steps: int | None = None) -> TaskModel:
        """Fine-tune a copy of the parameters on a support set; returns the adapted model.

        The learner's own weights are untouched. ``steps`` defaults to :meth:`adaptation_steps`.
        On the compiled evaluation path (:meth:`evaluation_path`) the support gradients and the
        returned model's pass are compiled (:meth:`compiled_evaluation`).
        """
        steps = steps or self.adaptation_steps()
        params = {name: p.detach() for name, p in adaptable_parameters(self.backbone).items()}
        batch_norm = self.batch_norm_for_adaptation()
        optimizer = self.configure_inner_optimizer(steps, _detached(self.step_sizes(steps)))
        as_module = (batch_norm.support, batch_norm.query, batch_norm.support_momentum) == ("module", "module", None)
        compiled = self.evaluation_path() == "compiled" and as_module  # compiled passes run BatchNorm as modules say
        gradients, forward = self.compiled_evaluation() if compiled else (None, None)

        def support_loss(p: dict[str, Tensor]) -> Tensor:
            outputs = functional_forward(
                self.backbone, p, batch_norm.buffers, support_x,
                batch_norm=batch_norm.support, batch_norm_momentum=batch_norm.support_momentum,
            )  # fmt: skip
            return self.task_loss(outputs, support_y)

        adapted = adapt_parameters(
            support_loss, params, steps=steps, optimizer=optimizer, inner_params=self.inner_param_names,
            check_finite=self.checks_finite,
            gradients=gradients and (lambda p: gradients(p, batch_norm.buffers, support_x, support_y)),
        )  # fmt: skip
        return AdaptedNetwork(self.backbone, adapted.params, batch_norm.buffers, batch_norm.query, forward=forward)

    # -- meta-training -----------------------------------------------------------------------
    def meta_loss(self, batch: EpisodeBatch) -> Tensor:
        """The meta-loss of ``batch`` on the execution path :meth:`execution_path` chooses."""
        return self.meta_loss_on_path(batch, self.execution_path(batch))

    def meta_loss_on_path(self, batch: EpisodeBatch, path: ExecutionPath) -> Tensor:
        """The mean query loss after adaptation over the tasks of ``batch``, computed on ``path``.

        The objective of MAML (Finn et al., 2017, Eq. 1): adapt to each task's support set
        with the inner optimiser, score its query set with :meth:`~MetaLearner.task_loss`,
        average over tasks. Every path gives the same value and meta-gradient (tested).
        On the loop and compiled paths each task's meta-gradient is taken right after its
        forward pass (:meth:`per_task_meta_gradient`).
        """
        params = adaptable_parameters(self.backbone)
        buffers = self.buffers_for_adaptation()
        steps = self.hparams.inner_steps
        common = dict(
            steps=steps,
            optimizer=self.configure_inner_optimizer(steps, self.step_sizes(steps)),
            first_order=self.training_first_order,
            inner_params=self.inner_param_names,
        )
        if path == "vmap":
            result = batched_adapt_and_score(
                self.backbone, params, buffers, self.task_loss,
                batch.support_x, batch.support_y, batch.query_x, batch.query_y,
                check_finite=False, **common,
            )  # fmt: skip
            self.check_adaptation(result.support_losses, result.query_loss.detach())
            return result.query_loss.mean()
        query_pass = self.compiled_query_pass() if path == "compiled" else None

        def task_losses(episode) -> tuple[Tensor, Tensor]:  # type: ignore[no-untyped-def]
            result = adapt_and_score(
                self.backbone, params, buffers, self.task_loss,
                episode.support_x, episode.support_y, episode.query_x, episode.query_y,
                check_finite=False, query_pass=query_pass, **common,
            )  # fmt: skip
            return result.query_loss, result.support_losses

        return self.per_task_meta_gradient(batch, task_losses)

    def per_task_meta_gradient(
        self, batch: EpisodeBatch, task_losses: Callable[[Episode], tuple[Tensor, Tensor]]
    ) -> Tensor:
        """The mean over tasks of ``task_losses(episode)[0]``, with a backward per task.

        Each task's meta-gradient is taken right after its forward pass and its graph
        freed, so memory stays that of one task. The returned scalar carries the summed
        gradient for the Trainer's backward (:func:`loss_with_gradients`); without grad
        mode it is just the mean loss.

        Args:
            batch: the meta-batch.
            task_losses: one task's query loss and its detached inner (support) losses
                ``[steps]``, checked once, after all tasks (:meth:`check_adaptation`).
        """
        trainable = [p for p in self.parameters() if p.requires_grad]
        want_grads = torch.is_grad_enabled() and bool(trainable)
        total = torch.zeros((), device=batch.support_x.device)
        grads: list[Tensor | None] = [None] * len(trainable)
        support_losses, query_losses = [], []
        for episode in batch:
            query_loss, inner_losses = task_losses(episode)
            support_losses.append(inner_losses)
            query_losses.append(query_loss.detach())
            loss = query_loss / len(batch)
            if want_grads:
                task_grads = torch.autograd.grad(loss, trainable, allow_unused=True)
                grads = [_sum(acc, g) for acc, g in zip(grads, task_grads, strict=True)]
            total = total + loss.detach()
        self.check_adaptation(torch.stack(support_losses), torch.stack(query_losses))
        if not want_grads:
            return total
        return loss_with_gradients(total, trainable, grads)

    def check_adaptation(self, support_losses: Tensor, adapted_losses: Tensor) -> None:
        """Checks the inner loops of a meta-training batch: no NaN or inf (unless ``check_finite=False``), and
        a warning, once per learner, when adaptation makes the loss grow.

        The inner loss before the first step is compared with the loss after the last step
        that meta-training computes anyway, the query loss of the adapted network: when its
        mean over the tasks exceeds :data:`ADAPTATION_GROWTH` times the mean support loss
        before adaptation in :data:`ADAPTATION_GROWTH_STEPS` consecutive steps, the inner steps
        most likely overshoot (a step size too high for the network, as MAML's Omniglot
        ``inner_lr=0.4`` is for the sinusoid MLP). No extra
        forward pass; one host synchronisation per step until it has warned.

        Args:
            support_losses: ``[tasks, steps]``, detached: the support loss before each inner step.
            adapted_losses: ``[tasks]``, detached: each task's loss after adaptation.
        """
        if self.checks_finite:
            check_finite_losses(support_losses)
        if self._warned_adaptation_growth or support_losses.numel() == 0 or not self.training:
            return
        if self.global_step == self._adaptation_growth_step:
            return  # one vote per training step: execution="auto" times several passes on the first batch
        self._adaptation_growth_step = self.global_step
        before, after = support_losses[:, 0].mean(), adapted_losses.mean()
        grew = bool(after > ADAPTATION_GROWTH * before)
        self._adaptation_growth_streak = self._adaptation_growth_streak + 1 if grew else 0
        if self._adaptation_growth_streak >= ADAPTATION_GROWTH_STEPS:
            self._warned_adaptation_growth = True
            rank_zero_warn(
                f"{type(self).__name__}: adaptation makes the loss grow in {ADAPTATION_GROWTH_STEPS} training "
                f"steps in a row: at global step {self.global_step} the mean loss after {self.hparams.inner_steps} "
                f"inner step(s) is {float(after):.4g}, the support loss before them {float(before):.4g}; "
                f"inner_lr={self.hparams.inner_lr:g} is most likely too high for this network: lower it (e.g. by "
                "10x; the MAML paper uses 0.01 for the sinusoid MLP, 0.4 for Conv4 on Omniglot). Said once per run."
            )

    def divergence_fix(self) -> str:
        return f"lower inner_lr (now {self.hparams.inner_lr:g}) first, then " + super().divergence_fix()

    # -- execution paths ---------------------------------------------------------------------
    def execution_path(self, batch: EpisodeBatch) -> ExecutionPath:
        """The path meta-training takes: the configured ``execution`` (the loop for learners that
        take none), or for ``"auto"`` the one measured fastest on the first training batch (kept
        for the run, and in checkpoints)."""
        execution = self.hparams.get("execution", "loop")
        if execution != "auto":
            return execution
        if self._measured_path is None:
            self._measured_path = self.plan_execution(batch)
        return self._measured_path

    def plan_execution(self, batch: EpisodeBatch) -> ExecutionPath:
        """Times the paths on ``batch`` with an :class:`~lit_meta.learners.execution.ExecutionPlanner`
        and returns the fastest; under DDP rank 0's choice is used everywhere."""
        device = batch.support_x.device
        planner = ExecutionPlanner(release_memory=lambda: _release_trial_memory(device))
        trainable = [p for p in self.parameters() if p.requires_grad]

        def step(path: ExecutionPath) -> None:
            torch.autograd.grad(self.meta_loss_on_path(batch, path), trainable, allow_unused=True)
            if device.type == "cuda":
                torch.cuda.synchronize(device)

        task_bytes = saved_tensor_bytes(lambda: self.meta_loss_on_path(collate_episodes([batch[0]]), "loop"))
        _release_trial_memory(device)
        plan = planner.plan(
            step,
            vmap_bytes=len(batch) * task_bytes,
            memory_budget_bytes=vmap_memory_budget_bytes(self.hparams.get("vmap_memory_budget_mb"), device),
            remaining_steps=self._remaining_training_steps(),
        )
        path = plan.path
        if self._trainer is not None:
            path = self.trainer.strategy.broadcast(path)
        rank_zero_info(plan.report(type(self).__name__))
        return path

    def _remaining_training_steps(self) -> int:
        """Training steps the Trainer still plans (0 outside ``Trainer.fit``: the run length is unknown)."""
        if self._trainer is None or not self.trainer.training:
            return 0
        return max(int(self.trainer.estimated_stepping_batches) - self.global_step, 0)

    def evaluation_path(self) -> EvaluationPath:
        """The path adaptation takes at evaluation: the configured ``eval_execution``, or for
        ``"auto"`` the compiled one when the running Trainer stage evaluates at least
        :data:`~lit_meta.learners.execution.COMPILED_EVALUATION_EPISODES` episodes."""
        execution = self.hparams.get("eval_execution", "loop")
        if execution != "auto":
            return execution
        episodes = planned_evaluation_episodes(self._trainer, self._evaluation_tasks)
        return "compiled" if episodes >= COMPILED_EVALUATION_EPISODES else "loop"

    def evaluate_outputs(self, batch: EpisodeBatch) -> Tensor:
        self._evaluation_tasks = len(batch)  # for evaluation_path's count of the episodes to come
        return super().evaluate_outputs(batch)

    def compiled_evaluation(self) -> tuple[SupportGradients, Forward]:
        """The compiled support gradients (of :meth:`task_loss`, for the inner parameters) and the
        compiled forward pass that evaluation adapts and predicts with, built once."""
        if self._compiled_evaluation is None:
            self._compiled_evaluation = (
                support_gradients(self.backbone, self.task_loss, self.inner_param_names),
                compiled_forward(self.backbone),
            )
        return self._compiled_evaluation

    def compiled_query_pass(self) -> QueryForward:
        """This learner's query pass (backbone, then :meth:`task_loss`) under ``torch.compile``, built once."""
        if self._compiled_query is None:
            self._compiled_query = query_forward(self.backbone, self.task_loss, compile=True)
        return self._compiled_query

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        return {**state, "_compiled_query": None, "_compiled_evaluation": None}  # compiled code does not pickle

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        # Kept so a resumed run takes the same path: the paths agree to rounding, not bitwise.
        checkpoint[EXECUTION_PATH_KEY] = self._measured_path

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self._measured_path = checkpoint.get(EXECUTION_PATH_KEY, self._measured_path)


def _release_trial_memory(device: torch.device) -> None:
    """Give back the memory a timing trial freed, so it does not stay resident under the next trial
    and the run: ``empty_cache`` on CUDA; on CPU ``malloc_trim``, only while freed memory is being
    retained (:mod:`lit_meta.glibc_malloc`): otherwise glibc trims by itself, and malloc is left alone."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif glibc_malloc.retaining():
        glibc_malloc.return_free_pages()


def _detached(step_size: StepSize | Sequence[StepSize]) -> StepSize | Sequence[StepSize]:
    """Step sizes cut from the meta-graph: adaptation at deployment needs no outer gradient."""
    if isinstance(step_size, Tensor):
        return step_size.detach()
    if isinstance(step_size, dict):
        return {name: size.detach() for name, size in step_size.items()}
    if isinstance(step_size, list):
        return [_detached(size) for size in step_size]  # type: ignore[misc]
    return step_size


def _sum(a: Tensor | None, b: Tensor | None) -> Tensor | None:
    """``a + b`` where ``None`` (a parameter the loss did not use) counts as zero."""
    if a is None:
        return b
    return a if b is None else a + b
