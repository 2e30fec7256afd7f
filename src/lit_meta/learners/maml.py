"""MAML and first-order MAML, with the options of MAML++."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any, Literal

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from lit_meta.data.episode import EpisodeBatch, collate_episodes
from lit_meta.functional import (
    StepSize,
    adaptable_parameters,
    batched_task_loss,
    check_finite_losses,
    functional_forward,
    head_parameter_names,
    query_forward,
    task_buffers,
    task_loss,
)
from lit_meta.functional import (
    adapt as adapt_parameters,
)
from lit_meta.glibc_malloc import return_free_pages
from lit_meta.learners.base import MetaLearner, TaskModel, loss_with_gradients

Execution = Literal["auto", "loop", "vmap", "compiled"]
ExecutionPath = Literal["loop", "vmap", "compiled"]
EXECUTION_PATH_KEY = "lit_meta_maml_execution_path"
COMPILE_WORTH_S = 600.0
"""``execution="auto"`` tries ``torch.compile`` only for runs planned to take at least this long (seconds)."""
TIMED_TRIAL_STEPS = 3
"""``execution="auto"`` times each path over this many meta-gradients after a warm-up one, and keeps its fastest."""
CPU_VMAP_BUDGET_MB = 256.0
"""``execution="auto"`` on a CPU tries vmap only when its activations are estimated at most this (MB)."""


class MAML(MetaLearner):
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
    nor updated.

    Args:
        backbone: the network; its output size must equal the episodes' ways.
        inner_lr: inner-loop SGD step size (the initial value when learned).
        inner_steps: inner steps during meta-training.
        eval_inner_steps: inner steps at validation, test and predict (default ``inner_steps``).
        first_order: first-order approximation (FOMAML).
        adapt: which parameters the inner loop updates: ``"all"``, ``"head"`` (the
            last ``nn.Linear``; ANIL) or a list of parameter names / module prefixes.
        learn_inner_lr: learn a step size per parameter tensor and step (MAML++ LSLR).
        multi_step_loss_steps: training steps over which MAML++'s multi-step loss
            anneals to the last step's loss; 0 disables it.
        first_order_steps: training steps taken first-order before switching to
            second order (MAML++ derivative-order annealing).
        execution: how meta-training runs a meta-batch (evaluation always adapts
            one task after another):

            * ``"loop"`` adapts one task after another with a backward per task
              (the reference; not the lowest in memory on a CPU: its larger
              activations fragment glibc's retained heap, ~610 MB against ~540 MB
              for a second-order Conv4 Trainer run, ``benchmarks/RESULTS.md``);
            * ``"compiled"`` is the loop with each task's query pass compiled by
              :func:`torch.compile` (:mod:`lit_meta.functional.compiled`): exact for
              first and second order (the same meta-gradient up to float rounding),
              1.15-1.3x faster for Conv4 on a 2-core CPU (with ``retain_cpu_memory``), and
              the first step compiles (seconds to a minute);
            * ``"vmap"`` adapts all tasks of a meta-batch at once with ``torch.func.vmap``;
            * ``"auto"`` times the paths on the first training batch and keeps the
              fastest (``benchmarks/maml_step.py``). It tries ``"compiled"`` only when
              the Trainer plans enough steps for the compilation to pay off (at least
              ``COMPILE_WORTH_S`` seconds of training at the loop's speed), and
              skips it when compilation fails (e.g. no C++ compiler). It tries
              ``"vmap"`` only when the activations of all tasks at once, estimated
              from one task's, fit ``vmap_memory_budget_mb``. MAML++'s multi-step
              loss always runs the loop.
        vmap_memory_budget_mb: the memory ``execution="auto"`` may spend on the
            activations of the vmap path, estimated as the meta-batch size times
            what autograd saves for one task. ``None``: ``CPU_VMAP_BUDGET_MB``
            (256) on a CPU, half the free memory on a CUDA device. Without it
            auto's trial of vmap raised the peak memory of a Conv4 Omniglot
            training run from ~590 MB to 1.1-1.5 GB (``benchmarks/maml_step.py``).
        **kwargs: the outer-loop options of :class:`MetaLearner` (``meta_lr``,
            ``meta_optimizer``, ``weight_decay``, ``lr_schedule``, ...).
    """

    adapts_with_gradients = True

    def __init__(
        self,
        backbone: nn.Module,
        inner_lr: float = 0.4,
        inner_steps: int = 1,
        eval_inner_steps: int | None = None,
        first_order: bool = False,
        adapt: Literal["all", "head"] | list[str] = "all",
        learn_inner_lr: bool = False,
        multi_step_loss_steps: int = 0,
        first_order_steps: int = 0,
        execution: Execution = "auto",
        vmap_memory_budget_mb: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(backbone, **kwargs)
        if inner_steps < 1 or (eval_inner_steps is not None and eval_inner_steps < 1):
            raise ValueError(f"inner_steps={inner_steps}, eval_inner_steps={eval_inner_steps}: take at least one step")
        if inner_lr <= 0:
            raise ValueError(f"inner_lr={inner_lr}: the inner step size must be positive")
        self.adapt_names = self._select_adapted(adapt)
        self._measured_path: ExecutionPath | None = None
        self._compiled_query: Any = None
        self.inner_lrs = self._make_inner_lrs()

    # -- configuration ------------------------------------------------------------------------
    def _select_adapted(self, adapt: Literal["all", "head"] | list[str]) -> list[str]:
        if adapt == "all":
            return list(adaptable_parameters(self.backbone))
        if adapt == "head":
            return head_parameter_names(self.backbone)
        return list(adaptable_parameters(self.backbone, adapt))

    def _make_inner_lrs(self) -> nn.ParameterList | None:
        """Learned step sizes (LSLR): one scalar per adapted tensor per step, or ``None``."""
        if not self.hparams.learn_inner_lr:
            return None
        steps = max(self.hparams.inner_steps, self.hparams.eval_inner_steps or 0)
        return nn.ParameterList(
            [nn.Parameter(torch.full((len(self.adapt_names),), float(self.hparams.inner_lr))) for _ in range(steps)]
        )

    def step_sizes(self, steps: int) -> StepSize | Sequence[StepSize]:
        """The inner step sizes for ``steps`` steps, as :func:`lit_meta.functional.adapt` takes them."""
        if self.inner_lrs is None:
            return self.hparams.inner_lr
        # Learned rates beyond the trained steps reuse the last one.
        rates = [self.inner_lrs[min(s, len(self.inner_lrs) - 1)] for s in range(steps)]
        return [dict(zip(self.adapt_names, r.unbind(), strict=True)) for r in rates]

    def learned_step_sizes(self) -> dict[str, Tensor]:
        """LSLR's rate of every adapted tensor at every inner step, as ``step{s}/{name}``."""
        if self.inner_lrs is None:
            return {}
        return {
            f"step{s}/{name}": rate.detach()
            for s, rates in enumerate(self.inner_lrs)
            for name, rate in zip(self.adapt_names, rates, strict=True)
        }

    def buffers_for_adaptation(self) -> dict[str, Tensor | None]:
        return task_buffers(self.backbone)

    @property
    def training_first_order(self) -> bool:
        return self.hparams.first_order or self.global_step < self.hparams.first_order_steps

    def execution_path(self, batch: EpisodeBatch) -> ExecutionPath:
        """The path meta-training takes: the configured one, or for ``"auto"`` the one
        measured faster on the first training batch (and kept for the run)."""
        if self.hparams.execution != "auto":
            return self.hparams.execution
        if self._measured_path is None:
            self._measured_path = self._measure_paths(batch)
        return self._measured_path

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        # Kept so a resumed run takes the same path: the paths agree to rounding, not bitwise.
        checkpoint[EXECUTION_PATH_KEY] = self._measured_path

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self._measured_path = checkpoint.get(EXECUTION_PATH_KEY, self._measured_path)

    def _measure_paths(self, batch: EpisodeBatch) -> ExecutionPath:
        """Times each path (:meth:`_time_path`) and returns the fastest.

        Which path wins depends on the network and the device: on a 2-core CPU
        vmap is ~3x slower for Conv4 (per-task weights make convolutions
        grouped) but ~8x faster for the sinusoid MLP, and the compiled query pass
        is 1.15-1.3x faster than the loop for Conv4 (``benchmarks/maml_step.py``).
        vmap is tried only within ``vmap_memory_budget_mb`` (one task's saved
        activations times the tasks; measured vmap peaks run up to ~2x that
        estimate). A path that runs out of memory, or fails to compile, loses.
        Under DDP rank 0's choice is used everywhere.
        """
        timings = {"loop": self._time_path(batch, "loop")}
        notes = []
        vmap_bytes = len(batch) * self._task_activation_bytes(batch)
        budget = self._vmap_memory_budget(batch.support_x.device)
        if vmap_bytes <= budget:
            timings["vmap"] = self._time_path(batch, "vmap")
        else:
            notes.append(
                f"vmap not tried: ~{vmap_bytes / 2**20:,.0f} MB of activations estimated for {len(batch)} tasks "
                f"at once, over the {budget / 2**20:,.0f} MB budget (vmap_memory_budget_mb)"
            )
        planned = self._planned_training_seconds(timings["loop"])
        if planned < COMPILE_WORTH_S:
            notes.append(f"compiled not tried: ~{planned:.0f} s of training planned, under {COMPILE_WORTH_S:.0f} s")
        else:
            start = time.perf_counter()
            try:
                timings["compiled"] = self._time_path(batch, "compiled")
                compiling = time.perf_counter() - start - (1 + TIMED_TRIAL_STEPS) * timings["compiled"]
                notes.append(f"compiling took ~{compiling:.0f} s")
            except Exception as error:  # any compiler failure means: not this path
                timings["compiled"] = math.inf
                notes.append(f"compiled not available: {type(error).__name__}: {str(error)[:200]}")
        choice: ExecutionPath = min(timings, key=timings.__getitem__)  # type: ignore[assignment]
        if self._trainer is not None:
            choice = self.trainer.strategy.broadcast(choice)
        measured = ", ".join(f"{path} {seconds:.3f} s" for path, seconds in timings.items())
        rank_zero_info(
            f"{type(self).__name__}: meta-training on the {choice} path (measured per step: {measured}"
            + "".join(f"; {note}" for note in notes)
            + ")"
        )
        return choice

    def _time_path(self, batch: EpisodeBatch, path: ExecutionPath) -> float:
        """Seconds of the fastest of ``TIMED_TRIAL_STEPS`` meta-gradients on ``path``, after
        one that warms up (or compiles). The fastest of several, because one step's time on
        a shared or virtual machine varies by 10% and more: timing one step, or the faster
        of two, made auto pick the loop over the ~15% faster compiled path in one of three
        second-order Conv4 runs (``benchmarks/maml_step.py``).

        Afterwards the memory the trial freed goes back to the system
        (:func:`_return_freed_memory`), so the next path's trial and the run do not
        stack on its layout (kept freed memory would otherwise stay resident).
        """
        trainable = [p for p in self.parameters() if p.requires_grad]
        seconds = []
        try:
            for _ in range(1 + TIMED_TRIAL_STEPS):
                start = time.perf_counter()
                loss = self._meta_loss(batch, path)
                torch.autograd.grad(loss, trainable, allow_unused=True)
                if batch.support_x.is_cuda:
                    torch.cuda.synchronize(batch.support_x.device)
                seconds.append(time.perf_counter() - start)
        except torch.OutOfMemoryError:
            return math.inf
        finally:
            _return_freed_memory(batch.support_x.device)
        return min(seconds[1:])

    def _task_activation_bytes(self, batch: EpisodeBatch) -> int:
        """Bytes autograd saves for one task's meta-gradient on the loop path: its
        activations and, in second order, the graph of its inner gradients."""
        # By address, so a tensor saved by several nodes counts once. Storages are not held
        # (that would keep every one alive until the count ends): one freed within the task
        # and reallocated at the same address with the same size counts once.
        saved: set[tuple[int, int]] = set()

        def pack(tensor: Tensor) -> Tensor:
            storage = tensor.untyped_storage()
            saved.add((storage.data_ptr(), storage.nbytes()))
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            self._meta_loss(collate_episodes([batch[0]]), "loop")
        _return_freed_memory(batch.support_x.device)
        return sum(nbytes for _, nbytes in saved)

    def _vmap_memory_budget(self, device: torch.device) -> float:
        """``vmap_memory_budget_mb`` in bytes, or its device default."""
        if self.hparams.vmap_memory_budget_mb is not None:
            return self.hparams.vmap_memory_budget_mb * 2**20
        if device.type == "cuda":
            return torch.cuda.mem_get_info(device)[0] / 2
        return CPU_VMAP_BUDGET_MB * 2**20

    def _planned_training_seconds(self, step_seconds: float) -> float:
        """The training still planned by the Trainer at ``step_seconds`` per step (0 outside ``Trainer.fit``)."""
        if self._trainer is None or not self.trainer.training:
            return 0.0
        remaining = self.trainer.estimated_stepping_batches - self.global_step
        return remaining * step_seconds

    def compiled_query_pass(self):
        """This learner's query pass (backbone, then :meth:`task_loss`) under ``torch.compile``, built once."""
        if self._compiled_query is None:
            self._compiled_query = query_forward(self.backbone, self.task_loss, compile=True)
        return self._compiled_query

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        return {**state, "_compiled_query": None}  # compiled code does not pickle; rebuilt on use

    # -- the learner's hooks ------------------------------------------------------------------
    def meta_loss(self, batch: EpisodeBatch) -> Tensor:
        """Mean query loss after adaptation over the tasks of ``batch``.

        On the loop path the meta-gradient of each task is taken right after its
        forward pass and the task's graph freed, so memory stays that of one
        task; the returned tensor carries the summed gradient for the Trainer's
        backward (see :func:`~lit_meta.learners.base.loss_with_gradients`).
        """
        if self.hparams.multi_step_loss_steps > 0:
            return self._multi_step_meta_loss(batch)
        return self._meta_loss(batch, self.execution_path(batch))

    def _meta_loss(self, batch: EpisodeBatch, path: ExecutionPath) -> Tensor:
        params = adaptable_parameters(self.backbone)
        buffers = self.buffers_for_adaptation()
        steps = self.hparams.inner_steps
        common = dict(
            steps=steps,
            step_size=self.step_sizes(steps),
            first_order=self.training_first_order,
            adapt_names=self.adapt_names,
        )
        if path == "vmap":
            result = batched_task_loss(
                self.backbone, params, buffers, self.task_loss,
                batch.support_x, batch.support_y, batch.query_x, batch.query_y, **common,
            )  # fmt: skip
            return result.query_loss.mean()
        query_pass = self.compiled_query_pass() if path == "compiled" else None
        trainable = [p for p in self.parameters() if p.requires_grad]
        want_grads = torch.is_grad_enabled() and bool(trainable)
        total = torch.zeros((), device=batch.support_x.device)
        grads: list[Tensor | None] = [None] * len(trainable)
        support_losses = []
        for episode in batch:
            result = task_loss(
                self.backbone, params, buffers, self.task_loss,
                episode.support_x, episode.support_y, episode.query_x, episode.query_y,
                check_finite=False, query_pass=query_pass, **common,
            )  # fmt: skip
            support_losses.append(result.support_losses)
            loss = result.query_loss / len(batch)
            if want_grads:
                task_grads = torch.autograd.grad(loss, trainable, allow_unused=True)
                grads = [_sum(acc, g) for acc, g in zip(grads, task_grads, strict=True)]
            total = total + loss.detach()
        check_finite_losses(torch.stack(support_losses))
        if not want_grads:
            return total
        return loss_with_gradients(total, trainable, grads)

    def _multi_step_meta_loss(self, batch: EpisodeBatch) -> Tensor:
        """MAML++'s multi-step loss: a weighted sum of the query losses after every inner step."""
        steps = self.hparams.inner_steps
        weights = self.multi_step_weights(steps).to(batch.support_x.device)
        sizes = self.step_sizes(steps)
        sizes = sizes if isinstance(sizes, list) else [sizes] * steps
        params = adaptable_parameters(self.backbone)
        buffers = self.buffers_for_adaptation()
        losses = []
        for episode in batch:
            current, task_losses = params, []
            for s in range(steps):
                result = task_loss(
                    self.backbone, current, buffers, self.task_loss,
                    episode.support_x, episode.support_y, episode.query_x, episode.query_y,
                    steps=1, step_size=sizes[s], first_order=self.training_first_order,
                    adapt_names=self.adapt_names,
                )  # fmt: skip
                current = result.params
                task_losses.append(result.query_loss)
            losses.append((torch.stack(task_losses) * weights).sum())
        return torch.stack(losses).mean()

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

    def adapt(self, support_x: Tensor, support_y: Tensor, steps: int | None = None) -> TaskModel:
        """Fine-tune a copy of the parameters on a support set; returns the adapted model.

        The learner's own weights are untouched. ``steps`` defaults to ``eval_inner_steps``.
        """
        steps = steps or self.hparams.eval_inner_steps or self.hparams.inner_steps
        params = {name: p.detach() for name, p in adaptable_parameters(self.backbone).items()}
        buffers = self.buffers_for_adaptation()
        step_size = _detached(self.step_sizes(steps))

        def support_loss(p: dict[str, Tensor]) -> Tensor:
            return self.task_loss(functional_forward(self.backbone, p, buffers, support_x), support_y)

        adapted = adapt_parameters(support_loss, params, steps=steps, step_size=step_size, adapt=self.adapt_names)
        return AdaptedNetwork(self.backbone, adapted.params, buffers)


class AdaptedNetwork:
    """A backbone bound to task-specific parameters: ``model(x)`` runs it functionally."""

    def __init__(self, backbone: nn.Module, params: dict[str, Tensor], buffers: dict[str, Tensor | None]) -> None:
        self.backbone = backbone
        self.params = params
        self.buffers = buffers

    def __call__(self, x: Tensor) -> Tensor:
        return functional_forward(self.backbone, self.params, self.buffers, x)


def _return_freed_memory(device: torch.device) -> None:
    """Give the memory a trial freed back: ``empty_cache`` on CUDA, ``malloc_trim`` on CPU (glibc),
    so the memory it kept for reuse does not stay resident under the next trial and the run."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
    else:
        return_free_pages()


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
