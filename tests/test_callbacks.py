"""RetainFreedCPUMemory: every learner keeps freed CPU memory while a Trainer runs it, unless told not to."""

from __future__ import annotations

import lightning as L
import pytest

from lit_meta import glibc_malloc
from lit_meta.callbacks import RetainFreedCPUMemory
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
def test_learners_retain_freed_memory_for_each_trainer_stage_and_release_it_after(learner_cls, malloc_calls):
    learner = learner_cls(small_net())
    t = trainer(fast_dev_run=1, callbacks=[RecordWhileTraining(malloc_calls)])
    t.fit(learner, datamodule())
    assert any(isinstance(c, RetainFreedCPUMemory) for c in t.callbacks)
    assert malloc_calls == ["retain", "step", "release"]
    t.test(learner, datamodule())
    assert malloc_calls[3:] == ["retain", "release"]


def test_retain_cpu_memory_false_leaves_malloc_alone(malloc_calls):
    learner = MAML(small_net(), retain_cpu_memory=False)
    t = trainer(fast_dev_run=1)
    t.fit(learner, datamodule())
    assert not any(isinstance(c, RetainFreedCPUMemory) for c in t.callbacks)
    assert malloc_calls == []
    assert learner.hparams.retain_cpu_memory is False
