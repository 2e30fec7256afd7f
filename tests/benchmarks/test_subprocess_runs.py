"""How the benchmarks read a ``lit-meta`` command they ran, to continue its run, and the allocator they run it under."""

from __future__ import annotations

import os
from types import ModuleType

import pytest

from ..conftest import import_benchmark


@pytest.fixture(scope="module")
def runs() -> ModuleType:
    return import_benchmark("subprocess_runs")


def test_options_are_read_in_both_spellings_and_the_last_of_a_repeated_one_counts(runs) -> None:
    command = ["lit-meta", "fit", "--config", "c.yaml", "--data.ways=5", "--data.ways", "20", "--model.x", "a=b"]
    assert runs.command_options(command) == {"--config": "c.yaml", "--data.ways": "20", "--model.x": "a=b"}
    with pytest.raises(ValueError, match="expected an option"):
        runs.command_options(["lit-meta", "fit", "--config", "c.yaml", "stray"])


def test_a_continued_run_may_change_only_its_budget_and_checkpoint(runs) -> None:
    earlier = ["lit-meta", "fit", "--config", "/a/configs/snail/x.yaml", "--trainer.max_time", "00:00:10:00"]
    later = ["lit-meta", "fit", "--config=/b/configs/snail/x.yaml", "--trainer.max_time", "00:01:00:00",
             "--ckpt_path", "last.ckpt", "--trainer.max_steps", "9"]  # fmt: skip
    assert runs.resume_differences(later, earlier) == []
    assert runs.resume_differences([*later, "--data.ways", "20"], earlier) == [("--data.ways", "20")]


def test_a_run_is_booked_to_the_gpu_only_where_there_is_one_and_the_command_did_not_ask_for_the_cpu(
    runs, monkeypatch
) -> None:
    results_log = import_benchmark("results_log")
    fit = ["lit-meta", "fit", "--config", "c.yaml"]
    monkeypatch.setattr(results_log, "gpu_name", lambda: None)
    assert runs.device_budget(fit) == {}
    monkeypatch.setattr(results_log, "gpu_name", lambda: "NVIDIA H200")
    assert runs.device_budget(fit) == {"device": "NVIDIA H200"}
    assert runs.device_budget([*fit, "--trainer.accelerator", "cpu"]) == {}


def test_an_allocator_whose_library_is_missing_stops_the_benchmark(runs, monkeypatch, tmp_path) -> None:
    missing = str(tmp_path / "libjemalloc.so.2")
    monkeypatch.setitem(runs.ALLOCATOR_ENVIRONMENTS, "jemalloc", {"LD_PRELOAD": missing, "MALLOC_CONF": "x"})
    with pytest.raises(SystemExit, match=r"libjemalloc\.so\.2 is not there"):
        runs.allocator_environment("jemalloc")
    (tmp_path / "libjemalloc.so.2").touch()
    assert runs.allocator_environment("jemalloc")["LD_PRELOAD"] == missing
    assert runs.allocator_environment("glibc") == dict(os.environ)
