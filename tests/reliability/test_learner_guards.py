"""Issue 17, cases 2, 10, 11, 13, 15 and 17: non-finite guards, undefined intervals, diverging
adaptation, autograd in a user's own test_step, written predictions, batch-size inference."""

from __future__ import annotations

import csv
import math
import shlex
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
import yaml
from lightning.pytorch.utilities.data import extract_batch_size
from torch import nn
from torch.utils.data import DataLoader

from lit_meta import EpisodicDataModule, cli
from lit_meta.backbones import SinusoidMLP
from lit_meta.data.episode import EpisodeBatch
from lit_meta.errors import NonFiniteGradientError, NonFiniteLossError
from lit_meta.functional import adapt, adaptable_parameters, enable_adaptation_grad, functional_forward, task_buffers
from lit_meta.learners import MAML, MatchingNet, ProtoNet
from lit_meta.metrics import EpisodeMeanCI, format_mean_ci
from lit_meta.predictions import EpisodePredictions

from ..conftest import two_spawned_cpu_processes

README = Path(__file__).resolve().parents[2] / "README.md"

WAYS, SHOTS, QUERIES, TASKS = 5, 1, 2, 2


def episode_batch(tasks: int = TASKS, seed: int = 0) -> EpisodeBatch:
    """Random 1x8x8 images, labelled class-major, as the datamodule serves them."""
    generator = torch.Generator().manual_seed(seed)
    return EpisodeBatch(
        support_x=torch.randn(tasks, WAYS * SHOTS, 1, 8, 8, generator=generator),
        support_y=torch.arange(WAYS).repeat_interleave(SHOTS).repeat(tasks, 1),
        query_x=torch.randn(tasks, WAYS * QUERIES, 1, 8, 8, generator=generator),
        query_y=torch.arange(WAYS).repeat_interleave(QUERIES).repeat(tasks, 1),
        classes=torch.stack([torch.randperm(20, generator=generator)[:WAYS] for _ in range(tasks)]),
    )


def loader(*batches: EpisodeBatch) -> DataLoader:
    """The batches as a loader (Lightning reads a plain list of batches as a list of loaders)."""
    return DataLoader(list(batches), batch_size=None, collate_fn=as_is)


def as_is(batch: EpisodeBatch) -> EpisodeBatch:
    return batch


def with_nan(batch: EpisodeBatch, task: int = 1) -> EpisodeBatch:
    batch.support_x[task, 0, 0, 0, 0] = float("nan")
    return batch


def embedding_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten())


def head_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, WAYS))


def trainer(**kwargs) -> L.Trainer:
    return L.Trainer(
        **{
            "max_steps": 1,
            "logger": False,
            "enable_checkpointing": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "num_sanity_val_steps": 0,
            **kwargs,
        }
    )


def weights_finite(model: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


# -- case 2: non-finite losses and meta-gradients stop every learner ----------------------------
@pytest.mark.parametrize("make", [lambda: ProtoNet(embedding_net()), lambda: MatchingNet(embedding_net())])
def test_case_02_nan_inputs_stop_metric_learners_at_that_step(make) -> None:
    model = make()
    batches = [episode_batch(seed=0), episode_batch(seed=1), with_nan(episode_batch(seed=2))]
    with pytest.raises(NonFiniteLossError) as error:
        trainer(max_steps=3).fit(model, train_dataloaders=loader(*batches))
    message = str(error.value)
    assert "meta-loss is nan at global step 2 (train" in message
    assert "input data contains NaN or inf (support_x of episode 1" in message
    assert "check the dataset and its transform" in message and "check_finite=False" in message
    assert weights_finite(model)  # stopped before the optimiser wrote NaN into the weights


def test_case_02_maml_divergence_is_caught_at_its_step_and_blames_inner_lr() -> None:
    model = MAML(head_net(), inner_lr=1e30, execution="loop")
    with pytest.raises(NonFiniteLossError) as error:
        trainer(max_steps=2).fit(model, train_dataloaders=loader(episode_batch(), episode_batch(seed=1)))
    message = str(error.value)
    assert "at global step 0 (train" in message  # the step it happens, not one later
    assert "inputs of this meta-batch are finite, so the optimisation diverged" in message
    assert "lower inner_lr (now 1e+30)" in message and "meta_lr (now 0.001)" in message
    assert "input data" not in message
    assert weights_finite(model)


def test_case_02_maml_inner_loop_nan_inputs_name_step_stage_and_data() -> None:
    model = MAML(head_net(), inner_lr=0.1, execution="loop")
    with pytest.raises(NonFiniteLossError) as error:
        trainer().fit(model, train_dataloaders=loader(with_nan(episode_batch())))
    message = str(error.value)
    assert message.startswith("train meta-loss at global step 0 (train")
    assert "input data contains NaN or inf (support_x of episode 1" in message


class NaNGradient(nn.Module):
    """A finite forward whose gradient is NaN: a divergence the loss does not show."""

    def __init__(self) -> None:
        super().__init__()
        self.net = embedding_net()
        self.net[0].weight.register_hook(lambda grad: grad * float("nan"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def test_case_02_maml_inner_loop_divergence_names_the_inner_step_and_inner_lr() -> None:
    model = MAML(head_net(), inner_lr=1e30, inner_steps=2, execution="loop")
    with pytest.raises(NonFiniteLossError) as error:
        trainer().fit(model, train_dataloaders=loader(episode_batch()))
    message = str(error.value)
    assert message.startswith("train meta-loss at global step 0 (train")
    assert "the inner-loop support loss is" in message and "at inner step 1" in message
    assert "inner learning rate (step size) is too high" in message


def test_case_02_nonfinite_meta_gradient_is_caught_before_the_step() -> None:
    model = ProtoNet(NaNGradient())
    with pytest.raises(NonFiniteGradientError) as error:
        trainer().fit(model, train_dataloaders=loader(episode_batch()))
    message = str(error.value)
    assert "meta-gradient of backbone.net.0.weight is not finite at global step 0 (train" in message
    assert "lower meta_lr (now 0.001) or clip the meta-gradient" in message
    assert weights_finite(model)


def test_case_02_nonfinite_validation_loss_is_reported() -> None:
    model = ProtoNet(embedding_net())
    with pytest.raises(NonFiniteLossError) as error:
        trainer(limit_val_batches=1).validate(model, dataloaders=loader(with_nan(episode_batch(), task=0)))
    message = str(error.value)
    assert "val query loss of episode 0 is nan" in message and "support_x of episode 0" in message


@pytest.mark.parametrize("stage", [pytest.param("fit", marks=pytest.mark.slow), "validate"])
def test_case_02_under_ddp_every_process_stops(stage: str) -> None:
    """NaN inputs on rank 1 only: both processes stop (none waits for the other in a collective) and
    the error shown names the cause. Two spawned CPU processes: 8 s to validate, 16 s to fit (slow)."""
    model = ProtoNet(embedding_net())
    batches = loader(episode_batch(), with_nan(episode_batch(seed=1)))  # one batch per rank
    ddp = trainer(limit_val_batches=1, **two_spawned_cpu_processes())
    run = ddp.fit if stage == "fit" else ddp.validate
    with pytest.raises(Exception, match="input data contains NaN or inf") as error:
        run(model, batches)
    assert ("at global step 0 (train" if stage == "fit" else "(val") in str(error.value)
    assert weights_finite(model)


def test_case_02_check_finite_false_turns_the_checks_off() -> None:
    model = ProtoNet(embedding_net(), check_finite=False)
    trainer().fit(model, train_dataloaders=loader(with_nan(episode_batch())))
    assert not weights_finite(model)  # what the check prevents


# -- case 10: a one-episode evaluation has no confidence interval --------------------------------
def test_case_10_one_episode_reports_the_interval_as_undefined() -> None:
    metric = EpisodeMeanCI()
    metric.update(torch.tensor([0.8]))
    values = metric.compute()
    assert math.isnan(float(values["ci95"])) and float(values["mean"]) == pytest.approx(0.8)
    assert format_mean_ci(0.8, float(values["ci95"]), 1) == "80.00 (95% CI n/a: 1 episode)"
    summary = cli.test_summary({"test/acc": 0.8, "test/acc_ci95": float("nan"), "test/episodes": 1.0})
    assert summary == "test/acc 80.00 (95% CI n/a: 1 episode)"
    metric.update(torch.tensor([0.6]))
    assert math.isfinite(float(metric.compute()["ci95"]))


# -- case 11: a step size that makes adaptation diverge is named once ----------------------------
def sinusoid_fit(inner_lr: float) -> list[warnings.WarningMessage]:
    torch.manual_seed(0)
    dm = EpisodicDataModule("sinusoid", shots=10, queries=10, meta_batch_size=5, train_episodes=40, val_episodes=5)
    model = MAML(SinusoidMLP(), inner_lr=inner_lr, execution="loop")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer(max_steps=8, limit_val_batches=0).fit(model, dm)
    return [w for w in caught if "adaptation makes the loss grow" in str(w.message)]


def test_case_11_growing_inner_loss_warns_once_naming_inner_lr() -> None:
    (warning,) = sinusoid_fit(inner_lr=0.4)  # MAML's Omniglot default on the sinusoid MLP: once, not per step
    assert "inner_lr=0.4 is most likely too high" in str(warning.message)
    assert not sinusoid_fit(inner_lr=0.01)  # the paper's value


def test_case_11_one_vote_per_training_step() -> None:
    """The timing trials of execution="auto" run the first batch several times: they count as one step."""
    model = MAML(SinusoidMLP(), inner_lr=0.4)
    support, grown = torch.ones(5, 1), torch.full((5,), 10.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(10):
            model.check_adaptation(support, grown)  # all at global step 0
    assert model._adaptation_growth_streak == 1


def test_case_11_readme_sinusoid_command_uses_the_papers_values(capsys: pytest.CaptureFixture[str]) -> None:
    (line,) = [
        line for line in README.read_text().splitlines() if line.startswith("lit-meta fit --model lit_meta.MAML")
    ]
    assert "SinusoidMLP" in line and "--data.dataset sinusoid" in line
    assert cli.main([*shlex.split(line, comments=True)[1:], "--print_config"]) == 0
    config = yaml.safe_load(capsys.readouterr().out)
    init = config["model"]["init_args"]
    assert (init["inner_lr"], init["inner_steps"], init["eval_inner_steps"], init["meta_lr"]) == (0.01, 1, 10, 0.001)
    data = config["data"].get("init_args", config["data"])
    assert (data["shots"], data["meta_batch_size"]) == (10, 25)


# -- case 13: an inner loop in a user's own test_step --------------------------------------------
class MyMetaLearner(L.LightningModule):
    """The README's example: a second-order MAML step of one's own, tested under Lightning's inference mode."""

    def __init__(self) -> None:
        super().__init__()
        self.net = head_net()

    def task_loss(self, episode) -> torch.Tensor:  # type: ignore[no-untyped-def]
        params, buffers = adaptable_parameters(self.net), task_buffers(self.net)

        def support_loss(p: dict[str, torch.Tensor]) -> torch.Tensor:
            return F.cross_entropy(functional_forward(self.net, p, buffers, episode.support_x), episode.support_y)

        fast = adapt(support_loss, params, steps=1, step_size=0.4).params
        return F.cross_entropy(functional_forward(self.net, fast, buffers, episode.query_x), episode.query_y)

    def training_step(self, batch: EpisodeBatch, batch_idx: int) -> torch.Tensor:
        return torch.stack([self.task_loss(episode) for episode in batch]).mean()

    @enable_adaptation_grad()
    def test_step(self, batch: EpisodeBatch, batch_idx: int) -> None:
        self.log("test/loss", torch.stack([self.task_loss(episode) for episode in batch]).mean().detach())

    def validation_step(self, batch: EpisodeBatch, batch_idx: int) -> None:
        with enable_adaptation_grad() as autograd_ready:
            batch = autograd_ready(batch)
            self.log("val/loss", torch.stack([self.task_loss(episode) for episode in batch]).mean().detach())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def test_case_13_own_test_step_adapts_under_inference_mode() -> None:
    model = MyMetaLearner()
    t = trainer()
    t.fit(model, train_dataloaders=loader(episode_batch()))
    (tested,) = t.test(model, dataloaders=loader(episode_batch(seed=3)))
    (validated,) = t.validate(model, dataloaders=loader(episode_batch(seed=3)))
    assert math.isfinite(tested["test/loss"]) and tested["test/loss"] == pytest.approx(validated["val/loss"])
    with torch.inference_mode(), pytest.raises(RuntimeError, match="enable_adaptation_grad"):
        model.training_step(episode_batch(), 0)  # without it: the error names the helper


# -- case 15: predictions with their class ids, written by lit-meta predict ----------------------
def test_case_15_predict_returns_labels_with_class_ids() -> None:
    model = ProtoNet(embedding_net())
    batch = episode_batch()
    (predictions,) = trainer().predict(model, dataloaders=loader(batch))
    assert isinstance(predictions, EpisodePredictions)
    assert predictions.labels.shape == (TASKS, WAYS * QUERIES) and predictions.probabilities is not None
    torch.testing.assert_close(predictions.class_ids, batch.classes.gather(1, predictions.labels))
    torch.testing.assert_close(predictions.probabilities.sum(-1), torch.ones(TASKS, WAYS * QUERIES))


def test_case_15_lit_meta_predict_writes_a_csv(tmp_path: Path) -> None:
    output = tmp_path / "out" / "predictions.csv"
    status = cli.main(
        [
            "predict", "--model", "lit_meta.ProtoNet", "--model.backbone", "lit_meta.backbones.Conv4",
            "--model.backbone.in_channels", "1", "--data.dataset", "glyphs", "--data.root", str(tmp_path / "glyphs"),
            "--data.dataset_kwargs", '{"num_classes": 60, "drawings_per_class": 6}', "--data.queries", "2",
            "--data.test_episodes", "3", "--data.eval_meta_batch_size", "2", "--trainer.logger", "false",
            "--trainer.enable_progress_bar", "false", "--predictions_path", str(output),
        ]
    )  # fmt: skip
    assert status == 0
    with output.open() as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 3 * 5 * 2  # episodes x ways x queries
    assert list(rows[0]) == ["episode", "query", "label", "class_id", "probability", "true_label", "true_class_id"]
    assert {row["episode"] for row in rows} == {"0", "1", "2"}
    assert all(0 <= int(row["label"]) < 5 and 0.0 <= float(row["probability"]) <= 1.0 for row in rows)


# -- case 17: Lightning infers the number of tasks as the batch size -----------------------------
def test_case_17_lightning_infers_the_task_count_as_batch_size() -> None:
    batch = episode_batch(tasks=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "ambiguous collection" warning either
        assert extract_batch_size(batch) == len(batch) == 4
    assert [episode.support_x.shape[0] for episode in batch] == [WAYS * SHOTS] * 4  # iteration still works
    with pytest.raises(IndexError):
        batch[4]
