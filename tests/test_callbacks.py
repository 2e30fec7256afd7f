"""RetainFreedCPUMemory: the lit-meta command line keeps freed CPU memory while its Trainer runs; a learner
used from Python leaves malloc alone unless asked (retain_cpu_memory=True)."""

from __future__ import annotations

import lightning as L
import pytest

from lit_meta import glibc_malloc
from lit_meta.callbacks import RetainFreedCPUMemory
from lit_meta.cli import main
from lit_meta.learners import MAML, ProtoNet

from .learners.test_gradient_learners import datamodule, small_net, trainer


@pytest.fixture
def malloc_calls(monkeypatch) -> list[str]:
    """Records the malloc settings the callback asks for, without changing this test process's malloc."""
    calls: list[str] = []
    monkeypatch.setattr(glibc_malloc, "retain_freed_memory", lambda: calls.append("retain") or True)
    monkeypatch.setattr(glibc_malloc, "release_freed_memory", lambda: calls.append("release") or True)
    return calls


class RecordWhileTraining(L.Callback):
    def __init__(self, calls: list[str]) -> None:
        self.calls = calls

    def on_train_batch_start(self, *args) -> None:
        self.calls.append("step")


@pytest.mark.parametrize("learner_cls", [MAML, ProtoNet])
def test_learners_asked_to_retain_freed_memory_do_so_for_each_trainer_stage_and_release_it_after(
    learner_cls, malloc_calls
):
    learner = learner_cls(small_net(), retain_cpu_memory=True)
    t = trainer(fast_dev_run=1, callbacks=[RecordWhileTraining(malloc_calls)])
    t.fit(learner, datamodule())
    assert any(isinstance(c, RetainFreedCPUMemory) for c in t.callbacks)
    assert malloc_calls == ["retain", "step", "release"]
    t.test(learner, datamodule())
    assert malloc_calls[3:] == ["retain", "release"]


@pytest.mark.parametrize("retain_cpu_memory", [None, False])
def test_a_learner_used_from_python_leaves_malloc_alone_by_default(retain_cpu_memory, malloc_calls, monkeypatch):
    trims: list[str] = []
    monkeypatch.setattr(glibc_malloc, "return_free_pages", lambda: trims.append("trim") or True)
    learner = MAML(small_net(), retain_cpu_memory=retain_cpu_memory, execution="auto")  # auto's trials too
    t = trainer(max_steps=1, limit_val_batches=0)
    t.fit(learner, datamodule())
    assert not any(isinstance(c, RetainFreedCPUMemory) for c in t.callbacks)
    assert malloc_calls == [] and trims == []
    assert learner.hparams.retain_cpu_memory is retain_cpu_memory


@pytest.mark.parametrize(
    ("setting", "expected"), [([], ["retain", "release"]), (["--model.init_args.retain_cpu_memory=false"], [])]
)
def test_the_command_line_owns_its_process_and_retains_unless_the_learner_says_no(
    setting, expected, malloc_calls, tmp_path
):
    args = [
        "fit",
        "--model=lit_meta.MAML",
        "--model.init_args.execution=loop",
        "--model.init_args.backbone=lit_meta.backbones.SinusoidMLP",
        "--data.dataset=sinusoid",
        "--trainer.fast_dev_run=1",
        "--trainer.logger=false",
        f"--trainer.default_root_dir={tmp_path}",
        *setting,
    ]
    assert main(args) == 0
    assert malloc_calls == expected
