"""The execution planner: which path a meta-training step takes, measured through its public interface."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytest
import torch

from lit_meta.backbones import Conv4
from lit_meta.data.episode import EpisodeBatch
from lit_meta.learners import MAML
from lit_meta.learners.execution import (
    COMPILE_WORTH_S,
    CPU_VMAP_BUDGET_MB,
    TIMED_TRIAL_STEPS,
    ExecutionPlan,
    ExecutionPlanner,
    saved_tensor_bytes,
    vmap_memory_budget_bytes,
)

MB = 2**20
ROOMY = 1e6 * MB
"""A memory budget every fake vmap estimate fits."""
STEPS = 1 + TIMED_TRIAL_STEPS
"""Steps per trial: the warm-up and the timed ones."""


class FakeClock:
    """Seconds, advanced only by the fake step."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeStep:
    """A meta-training step that records the paths it ran in ``events`` and advances ``clock``.

    Args:
        seconds: per path, the seconds every step takes, or one entry per step in order.
        errors: per path, an exception every step on it raises.
    """

    def __init__(
        self,
        clock: FakeClock,
        seconds: dict[str, float | Sequence[float]],
        errors: dict[str, Exception] | None = None,
        events: list[str] | None = None,
    ) -> None:
        self.clock = clock
        self.seconds = seconds
        self.errors = errors or {}
        self.events = [] if events is None else events
        self.calls: dict[str, int] = {}

    def __call__(self, path: str) -> None:
        self.events.append(path)
        call = self.calls.get(path, 0)
        self.calls[path] = call + 1
        if path in self.errors:
            raise self.errors[path]
        seconds = self.seconds[path]
        self.clock.now += seconds if isinstance(seconds, float | int) else seconds[call]

    @property
    def paths(self) -> list[str]:
        """The paths run, each once, in order."""
        return list(dict.fromkeys(self.events))


def plan(
    seconds: dict[str, float | Sequence[float]],
    *,
    vmap_bytes: float = 1024,
    memory_budget_bytes: float = ROOMY,
    remaining_steps: int = 0,
    errors: dict[str, Exception] | None = None,
) -> tuple[ExecutionPlan, FakeStep]:
    """The plan for a step taking ``seconds`` per path, and the fake step (what it ran)."""
    clock = FakeClock()
    step = FakeStep(clock, seconds, errors)
    result = ExecutionPlanner(clock=clock).plan(
        step, vmap_bytes=vmap_bytes, memory_budget_bytes=memory_budget_bytes, remaining_steps=remaining_steps
    )
    return result, step


def test_a_path_is_timed_by_its_fastest_step_after_the_warm_up():
    """One step's time varies on a shared machine: a path scores its fastest timed step, and the
    warm-up step (which compiles on the compiled path) never counts, however fast it was."""
    assert TIMED_TRIAL_STEPS == 3
    clock = FakeClock()
    planner = ExecutionPlanner(clock=clock)
    assert planner.time_path(FakeStep(clock, {"loop": [1.0, 2.5, 2.0, 2.2]}), "loop") == 2.0
    step = FakeStep(clock, {"loop": [0.5, 2.5, 2.0, 2.2]})
    assert planner.time_path(step, "loop") == 2.0
    assert step.events == ["loop"] * STEPS


def test_memory_is_given_back_after_every_paths_trial():
    """Freed memory of one trial must not stay resident under the next (it set a Conv4 run's
    peak): ``release_memory`` runs after each path's steps, before the next path's first."""
    events: list[str] = []
    clock = FakeClock()
    step = FakeStep(clock, {"loop": 3.0, "vmap": 1.0, "compiled": 2.0}, events=events)
    planner = ExecutionPlanner(clock=clock, release_memory=lambda: events.append("release"))
    planner.plan(step, vmap_bytes=1024, memory_budget_bytes=ROOMY, remaining_steps=1000)
    assert events == [
        *["loop"] * STEPS, "release", *["vmap"] * STEPS, "release", *["compiled"] * STEPS, "release",
    ]  # fmt: skip


def test_memory_is_given_back_after_a_trial_that_ran_out_of_memory():
    """An out-of-memory trial leaves the most memory behind: it is given back too."""
    events: list[str] = []
    clock = FakeClock()
    step = FakeStep(clock, {"loop": 3.0}, errors={"vmap": torch.OutOfMemoryError("vmap")}, events=events)
    planner = ExecutionPlanner(clock=clock, release_memory=lambda: events.append("release"))
    planner.plan(step, vmap_bytes=1024, memory_budget_bytes=ROOMY, remaining_steps=0)
    assert events == [*["loop"] * STEPS, "release", "vmap", "release"]


def test_compiled_is_tried_only_when_the_run_pays_for_it():
    """Compiling takes seconds to a minute: it is tried only when the steps still planned take at
    least ``compile_worth_s`` at the loop's speed; when tried and faster, it wins."""
    assert COMPILE_WORTH_S == 600.0
    seconds = {"loop": 3.0, "vmap": 9.0, "compiled": 2.0}
    short, step = plan(seconds, remaining_steps=199)  # 597 s of training
    assert short.path == "loop" and "compiled" not in step.paths and "compiled" not in short.seconds_per_step
    assert "compiled not tried: ~597 s of training planned, under 600 s" in short.notes
    for remaining_steps in (200, 1200):  # 600 s and an hour
        long, step = plan(seconds, remaining_steps=remaining_steps)
        assert long.path == "compiled" and step.paths == ["loop", "vmap", "compiled"]
        assert long.seconds_per_step == seconds
    unknown, step = plan(seconds, remaining_steps=0)  # outside a Trainer the run length is unknown
    assert unknown.path == "loop" and "compiled" not in step.paths


def test_compiled_reports_how_long_compiling_took():
    """The compile time is what the compiled trial took beyond its steps at the measured speed."""
    result, _ = plan({"loop": 3.0, "vmap": 9.0, "compiled": [30.0, 2.0, 2.0, 2.0]}, remaining_steps=1200)
    assert result.path == "compiled" and "compiling took ~28 s" in result.notes


def test_a_compile_error_makes_compiled_lose_and_the_loop_win():
    """A machine without a working compiler still trains, on the fastest path that runs."""
    result, step = plan(
        {"loop": 3.0, "vmap": 9.0},
        remaining_steps=1200,
        errors={"compiled": RuntimeError("no C++ compiler")},
    )
    assert step.paths == ["loop", "vmap", "compiled"]
    assert result.path == "loop" and result.seconds_per_step["compiled"] == math.inf
    assert "compiled not available: RuntimeError: no C++ compiler" in result.notes


def test_vmap_is_tried_only_within_its_memory_budget():
    """All tasks at once may not fit: vmap is timed only when its estimated activations fit the
    budget (an estimate equal to the budget fits), and a note says why it was not."""
    seconds = {"loop": 3.0, "vmap": 1.0}
    for budget in (ROOMY, 1024):
        roomy, step = plan(seconds, vmap_bytes=1024, memory_budget_bytes=budget)
        assert roomy.path == "vmap" and step.paths == ["loop", "vmap"]
    tight, step = plan(seconds, vmap_bytes=10 * 1024, memory_budget_bytes=0.001 * MB)
    assert tight.path == "loop" and step.paths == ["loop"] and "vmap" not in tight.seconds_per_step
    (note,) = [note for note in tight.notes if note.startswith("vmap")]
    assert note.startswith("vmap not tried") and "over the 0 MB budget" in note


@pytest.mark.parametrize("path", ["vmap", "compiled"])
def test_a_path_that_runs_out_of_memory_loses(path):
    """An estimate is not a guarantee: a path that raises ``torch.OutOfMemoryError`` scores
    ``inf`` and loses to the next fastest (the loop, when it is the only other)."""
    result, step = plan(
        {"loop": 3.0, "vmap": 1.0, "compiled": 2.0},
        remaining_steps=1200,
        errors={path: torch.OutOfMemoryError("CUDA out of memory")},
    )
    assert step.calls[path] == 1  # the first out-of-memory step ends the trial
    assert result.seconds_per_step[path] == math.inf
    assert result.path == ("compiled" if path == "vmap" else "vmap")
    loop_only, _ = plan({"loop": 3.0}, errors={"vmap": torch.OutOfMemoryError("CUDA out of memory")})
    assert loop_only.path == "loop"


def test_the_report_names_the_chosen_path_and_each_measured_time():
    """The log line says which path training takes, what each path measured and why others were not run."""
    result, _ = plan({"loop": 3.0, "vmap": 1.25}, remaining_steps=20)
    report = result.report("MAML")
    assert report.startswith("MAML: meta-training on the vmap path (measured per step: ")
    assert "loop 3.000 s" in report and "vmap 1.250 s" in report
    assert "compiled not tried: ~60 s of training planned, under 600 s" in report
    failed = ExecutionPlan("loop", {"loop": 3.0, "compiled": math.inf}, ("compiled not available: X",))
    assert failed.report("ANIL") == (
        "ANIL: meta-training on the loop path (measured per step: loop 3.000 s, compiled inf s; "
        "compiled not available: X)"
    )


def test_saved_tensor_bytes_counts_a_storage_saved_twice_once():
    """``x * x`` saves ``x`` as both factors: one storage, counted once; nothing is saved without grad."""
    x = torch.randn(1000, requires_grad=True)
    assert saved_tensor_bytes(lambda: (x * x).sum()) == 1000 * 4
    with torch.no_grad():
        assert saved_tensor_bytes(lambda: (x * x).sum()) == 0


@pytest.mark.parametrize("first_order", [True, False])
def test_vmap_memory_estimate_counts_a_conv4_tasks_activations(first_order):
    """Omniglot 5-way 1-shot 15-query: the eager pass keeps at least the 64x28x28 conv output
    and the BatchNorm output of the first block for 75 images (14.4 MB each)."""
    batch_of_one_task = EpisodeBatch(
        support_x=torch.rand(1, 5, 1, 28, 28),
        support_y=torch.arange(5)[None],
        query_x=torch.rand(1, 75, 1, 28, 28),
        query_y=torch.arange(5).repeat_interleave(15)[None],
        classes=torch.zeros(1, 5, dtype=torch.long),
    )
    learner = MAML(Conv4(in_channels=1, out_features=5), first_order=first_order)
    first_block_output = 75 * 64 * 28 * 28 * 4
    task_bytes = saved_tensor_bytes(lambda: learner.meta_loss_on_path(batch_of_one_task, "loop"))
    assert 2 * first_block_output < task_bytes < 5 * first_block_output


def test_vmap_memory_budget_defaults_to_256_mb_on_a_cpu():
    """A CPU reports no free memory to go by: the default is a fixed 256 MB."""
    assert CPU_VMAP_BUDGET_MB == 256.0
    assert vmap_memory_budget_bytes(None, torch.device("cpu")) == 256 * MB


def test_vmap_memory_budget_defaults_to_half_the_free_gpu_memory(monkeypatch):
    """On CUDA the default leaves half the free memory (measured vmap peaks ran to ~2x the estimate)."""
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (10 * 2**30, 80 * 2**30))
    assert vmap_memory_budget_bytes(None, torch.device("cuda", 0)) == 5 * 2**30


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_a_configured_vmap_memory_budget_wins(monkeypatch, device):
    """``vmap_memory_budget_mb`` overrides the device default on every device."""
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (10 * 2**30, 80 * 2**30))
    assert vmap_memory_budget_bytes(64, torch.device(device)) == 64 * MB
