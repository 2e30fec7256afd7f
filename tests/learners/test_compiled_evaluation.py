"""Compiled evaluation (``eval_execution``): the same predictions as eager adaptation, chosen when it pays."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch import nn

from lit_meta.data.datamodule import EpisodicDataModule
from lit_meta.functional import adapt, support_gradients, task_buffers
from lit_meta.learners import ANIL, MAML, MetaSGD
from lit_meta.learners.execution import COMPILED_EVALUATION_EPISODES, planned_evaluation_episodes
from lit_meta.learners.gradient import AdaptedNetwork

from ..conftest import TinyImages


def small_net(ways: int = 3) -> nn.Module:
    """Conv + BatchNorm on a one-channel image (the shifted-sum convolution of the compiled pass) + linear head."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64, ways),
    )  # fmt: skip


def an_episode(ways: int = 3, shots: int = 2, queries: int = 4) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(1)
    support_x = torch.randn(ways * shots, 1, 8, 8, generator=generator)
    query_x = torch.randn(ways * queries, 1, 8, 8, generator=generator)
    return support_x, torch.arange(ways).repeat_interleave(shots), query_x


LEARNERS = {
    "MAML, 3 steps": lambda mode: MAML(small_net(), inner_lr=0.4, eval_inner_steps=3, eval_execution=mode),
    "MAML++ per-step rates": lambda mode: MAML(
        small_net(), inner_lr=0.1, inner_steps=2, learn_inner_lr=True, eval_execution=mode
    ),
    "MAML, inner Adam": lambda mode: MAML(small_net(), inner_lr=0.01, inner_optimizer="adam", eval_execution=mode),
    "Meta-SGD": lambda mode: MetaSGD(small_net(), inner_lr=0.1, inner_steps=2, eval_execution=mode),
    "ANIL": lambda mode: ANIL(small_net(), inner_lr=0.4, inner_steps=2, eval_execution=mode),
}


@pytest.mark.parametrize("name", list(LEARNERS))
def test_compiled_adaptation_predicts_what_eager_adaptation_predicts(name):
    support_x, support_y, query_x = an_episode()
    eager = LEARNERS[name]("loop").adapt(support_x, support_y)(query_x)
    compiled_learner = LEARNERS[name]("compiled")
    compiled_model = compiled_learner.adapt(support_x, support_y)
    assert isinstance(compiled_model, AdaptedNetwork) and compiled_model.forward is not None
    torch.testing.assert_close(compiled_model(query_x), eager, rtol=1e-4, atol=1e-4)


def test_support_gradients_equal_autograd_in_eager_mode():
    net = small_net()
    support_x, support_y, _ = an_episode()
    params = dict(net.named_parameters())
    names = ["5.weight", "5.bias"]
    grads, loss = support_gradients(net, nn.functional.cross_entropy, names, compile=False)(
        params, task_buffers(net), support_x, support_y
    )
    expected_loss = nn.functional.cross_entropy(net(support_x), support_y)
    expected = torch.autograd.grad(expected_loss, [params[n] for n in names])
    assert list(grads) == names
    torch.testing.assert_close(loss, expected_loss.detach())
    for name, grad in zip(names, expected, strict=True):
        torch.testing.assert_close(grads[name], grad)
        assert not grads[name].requires_grad


def test_given_gradients_are_refused_where_an_outer_gradient_is_wanted():
    net = small_net()
    support_x, support_y, _ = an_episode()
    gradients = support_gradients(net, nn.functional.cross_entropy, ["5.weight", "5.bias"], compile=False)
    with pytest.raises(ValueError, match="no outer gradient can flow"):
        adapt(
            lambda p: torch.zeros(()), dict(net.named_parameters()), steps=1, step_size=0.1,
            inner_params=["5.weight", "5.bias"],
            gradients=lambda p: gradients(p, task_buffers(net), support_x, support_y),
        )  # fmt: skip


def test_a_given_forward_pass_runs_batch_norm_as_the_module_says():
    with pytest.raises(ValueError, match="as the module's mode says"):
        AdaptedNetwork(small_net(), {}, {}, batch_norm="train", forward=lambda p, b, x: x)


def test_an_unknown_eval_execution_is_refused():
    with pytest.raises(ValueError, match="eval_execution='jit'"):
        MAML(small_net(), eval_execution="jit")


class RecordsEvaluationPaths(L.Callback):
    def __init__(self) -> None:
        self.paths: dict[str, str] = {}

    def on_validation_batch_start(self, trainer, module, batch, batch_idx, dataloader_idx=0) -> None:
        module._evaluation_tasks = len(batch)
        self.paths["sanity" if trainer.sanity_checking else "val"] = module.evaluation_path()
        self.paths["planned_val"] = planned_evaluation_episodes(trainer, len(batch))

    def on_test_batch_start(self, trainer, module, batch, batch_idx, dataloader_idx=0) -> None:
        module._evaluation_tasks = len(batch)
        self.paths["test"] = module.evaluation_path()
        self.paths["planned_test"] = planned_evaluation_episodes(trainer, len(batch))


def test_auto_counts_the_episodes_a_run_evaluates_and_stays_eager_below_the_threshold(tmp_path):
    """10 training steps, validation every 5 (2 runs of 2 batches of 4 episodes), a test of 8 episodes."""
    dm = EpisodicDataModule(
        TinyImages(), ways=3, shots=2, queries=2, meta_batch_size=4, train_episodes=40, val_episodes=8,
        test_episodes=8,
    )  # fmt: skip
    learner = MAML(small_net(), inner_lr=0.4)
    assert learner.hparams.eval_execution == "auto" and learner.evaluation_path() == "loop"  # no Trainer
    record = RecordsEvaluationPaths()
    trainer = L.Trainer(
        max_steps=10, val_check_interval=5, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[record], num_sanity_val_steps=1,
    )  # fmt: skip
    trainer.fit(learner, dm)
    trainer.test(learner, dm, verbose=False)
    assert record.paths["planned_val"] == 2 * 2 * 4
    assert record.paths["planned_test"] == 2 * 4
    assert record.paths["sanity"] == record.paths["val"] == record.paths["test"] == "loop"
    assert COMPILED_EVALUATION_EPISODES > 16


def test_auto_compiles_a_run_that_evaluates_enough_episodes(monkeypatch):
    monkeypatch.setattr("lit_meta.learners.gradient.COMPILED_EVALUATION_EPISODES", 16)
    learner = MAML(small_net(), inner_lr=0.4)
    monkeypatch.setattr("lit_meta.learners.gradient.planned_evaluation_episodes", lambda trainer, tasks: 16.0)
    assert learner.evaluation_path() == "compiled"
    monkeypatch.setattr("lit_meta.learners.gradient.planned_evaluation_episodes", lambda trainer, tasks: 15.0)
    assert learner.evaluation_path() == "loop"
