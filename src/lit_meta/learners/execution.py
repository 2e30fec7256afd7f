"""Execution planning: time the ways a meta-training step can run and keep the fastest.

A gradient-based meta-training step can run on several paths that compute the same
losses and meta-gradients (tested to agree): ``"loop"`` (one task after another, a
backward per task; the reference), ``"compiled"`` (the loop with each task's query pass
under :func:`torch.compile`) and ``"vmap"`` (all tasks at once). Which is fastest depends
on the network and the device (``benchmarks/RESULTS.md``), so :class:`ExecutionPlanner`
measures: given a function that runs one step on a path, a memory budget and a clock, it
returns an :class:`ExecutionPlan` naming the path to take and why.

The planner knows nothing of learners or Lightning; the learner supplies the step
function, the memory estimate of the vmap path and the training time still planned.

Evaluation adapts without a meta-gradient and has two paths: ``"loop"`` (eager) and
``"compiled"`` (each task's support gradients and query pass under :func:`torch.compile`).
Compiling costs tens of seconds once, so ``"auto"`` compiles only for Trainer runs that
evaluate at least :data:`COMPILED_EVALUATION_EPISODES` episodes
(:func:`planned_evaluation_episodes`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

ExecutionPath = Literal["loop", "vmap", "compiled"]
Execution = Literal["auto", "loop", "vmap", "compiled"]
EvaluationPath = Literal["loop", "compiled"]
EvaluationExecution = Literal["auto", "loop", "compiled"]

COMPILE_WORTH_S = 600.0
"""Compilation is tried only for runs planned to take at least this long (seconds)."""
TIMED_TRIAL_STEPS = 3
"""Each path is timed over this many steps after a warm-up one, and scored by its fastest."""
CPU_VMAP_BUDGET_MB = 256.0
"""Default memory budget of the vmap path's activations on a CPU (MB)."""
COMPILED_EVALUATION_EPISODES = 2000
"""``eval_execution="auto"`` compiles evaluation for Trainer runs that evaluate at least this many episodes:
several times the episodes whose eager adaptation takes as long as compiling
(``benchmarks/notes/evaluation_speed.md``)."""


@dataclass(frozen=True)
class ExecutionPlan:
    """The path to take and what the planner measured.

    Attributes:
        path: the fastest path that was tried.
        seconds_per_step: each tried path's fastest timed step (``inf``: it failed or ran out of memory).
        notes: why a path was not tried or failed, and how long compiling took.
    """

    path: ExecutionPath
    seconds_per_step: dict[str, float]
    notes: tuple[str, ...] = field(default=())

    def report(self, learner: str) -> str:
        """One line for the log: ``"MAML: meta-training on the loop path (measured per step: ...)"``."""
        measured = ", ".join(f"{path} {seconds:.3f} s" for path, seconds in self.seconds_per_step.items())
        notes = "".join(f"; {note}" for note in self.notes)
        return f"{learner}: meta-training on the {self.path} path (measured per step: {measured}{notes})"


@dataclass
class ExecutionPlanner:
    """Chooses a path by timing each candidate on the first training batch.

    ``"loop"`` is always timed. ``"vmap"`` is tried only when its estimated activations
    fit ``memory_budget_bytes`` (measured vmap peaks ran up to ~2x the estimate), and
    ``"compiled"`` only when the training still planned at the loop's speed is at
    least ``compile_worth_s`` (compiling takes seconds to a minute). A path that raises
    ``torch.OutOfMemoryError`` or fails to compile loses (``inf``).

    Args:
        timed_steps: steps timed per path after a warm-up step (which compiles, on the
            compiled path); the fastest counts, since one step's time on a shared or
            virtual machine varies by 10% and more.
        compile_worth_s: see above.
        clock: seconds, monotonic; :func:`time.perf_counter` by default.
        release_memory: called after each path's trial, so that memory the trial freed
            is not kept under the next trial and the run (e.g. ``torch.cuda.empty_cache``).
    """

    timed_steps: int = TIMED_TRIAL_STEPS
    compile_worth_s: float = COMPILE_WORTH_S
    clock: Callable[[], float] = time.perf_counter
    release_memory: Callable[[], Any] = lambda: None

    def plan(
        self,
        step: Callable[[ExecutionPath], Any],
        *,
        vmap_bytes: float,
        memory_budget_bytes: float,
        remaining_steps: int,
    ) -> ExecutionPlan:
        """Time the candidate paths and return the fastest.

        Args:
            step: runs one meta-training step (loss and meta-gradient) on a path, and
                waits for the device to finish it.
            vmap_bytes: estimated activations of the vmap path (all tasks at once).
            memory_budget_bytes: what the vmap path may spend on them.
            remaining_steps: training steps still planned (0 when unknown: no compilation).
        """
        timings: dict[str, float] = {"loop": self.time_path(step, "loop")}
        notes = []
        if vmap_bytes <= memory_budget_bytes:
            timings["vmap"] = self.time_path(step, "vmap")
        else:
            notes.append(
                f"vmap not tried: ~{vmap_bytes / 2**20:,.0f} MB of activations estimated for all tasks at once, "
                f"over the {memory_budget_bytes / 2**20:,.0f} MB budget (vmap_memory_budget_mb)"
            )
        planned = remaining_steps * timings["loop"]
        if planned < self.compile_worth_s:
            notes.append(
                f"compiled not tried: ~{planned:.0f} s of training planned, under {self.compile_worth_s:.0f} s"
            )
        else:
            start = self.clock()
            try:
                timings["compiled"] = self.time_path(step, "compiled")
                compiling = self.clock() - start - (1 + self.timed_steps) * timings["compiled"]
                notes.append(f"compiling took ~{compiling:.0f} s")
            except Exception as error:  # any compiler failure means: not this path
                timings["compiled"] = math.inf
                notes.append(f"compiled not available: {type(error).__name__}: {str(error)[:200]}")
        path: ExecutionPath = min(timings, key=timings.__getitem__)  # type: ignore[assignment]
        return ExecutionPlan(path, timings, tuple(notes))

    def time_path(self, step: Callable[[ExecutionPath], Any], path: ExecutionPath) -> float:
        """Seconds of the fastest of ``timed_steps`` steps on ``path`` after a warm-up step; ``inf`` on OOM."""
        seconds = []
        try:
            for _ in range(1 + self.timed_steps):
                start = self.clock()
                step(path)
                seconds.append(self.clock() - start)
        except torch.OutOfMemoryError:
            return math.inf
        finally:
            self.release_memory()
        return min(seconds[1:])


def saved_tensor_bytes(fn: Callable[[], Any]) -> int:
    """Bytes of the tensors autograd saves for backward while ``fn()`` runs.

    Counted by storage address and size, so a tensor saved by several nodes counts
    once. Storages are not held (that would keep each one alive until the count
    ends): one freed and reallocated at the same address with the same size counts once.
    """
    saved: set[tuple[int, int]] = set()

    def pack(tensor: Tensor) -> Tensor:
        storage = tensor.untyped_storage()
        saved.add((storage.data_ptr(), storage.nbytes()))
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        fn()
    return sum(nbytes for _, nbytes in saved)


def vmap_memory_budget_bytes(configured_mb: float | None, device: torch.device) -> float:
    """``configured_mb`` in bytes, or the device default: :data:`CPU_VMAP_BUDGET_MB` on a CPU,
    half the free memory of a CUDA device."""
    if configured_mb is not None:
        return configured_mb * 2**20
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0] / 2
    return CPU_VMAP_BUDGET_MB * 2**20


def planned_evaluation_episodes(trainer: Any, tasks_per_batch: int) -> float:
    """The episodes the running stage of ``trainer`` (a Lightning Trainer) will evaluate, all runs
    together: a test or predict run's batches, or every validation run of a fit (``inf`` for a fit
    bounded by time only); 0 for the sanity check and without a Trainer."""
    if trainer is None or trainer.sanity_checking:
        return 0.0
    if trainer.testing:
        return sum(trainer.num_test_batches) * tasks_per_batch
    if trainer.predicting:
        return sum(trainer.num_predict_batches) * tasks_per_batch
    per_run = sum(trainer.num_val_batches) * tasks_per_batch
    if not trainer.training and trainer.state.fn != "fit":  # Trainer.validate: one run
        return per_run
    steps_between = trainer.val_check_batch * (trainer.check_val_every_n_epoch or 1)
    runs = trainer.estimated_stepping_batches / max(steps_between, 1)
    return per_run * (runs if runs >= 1 else 1.0)  # at least one run (also when both are infinite)
