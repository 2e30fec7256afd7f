"""Issue 17, cases 1, 8 and 12: checkpoints that do not fit, cannot be read, or hold code.

(Case 3, resuming at every position of an epoch, is ``tests/cli/test_resume.py``.)
"""

from __future__ import annotations

import copy
import sys
import types
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch

from lit_meta.adaptation import load_learner
from lit_meta.backbones import MLP
from lit_meta.cli import MetaLearningCLI, main
from lit_meta.data.datamodule import EpisodicDataModule
from lit_meta.errors import CheckpointError, CheckpointGlobalsError, TransformError
from lit_meta.learners import MAML, MatchingNet, MetaLearner, ProtoNet

from ..cli.test_resume import LEARNERS, write_config
from ..conftest import REPO_ROOT, TinyImages


def tiny_mlp(out_features: int | None) -> MLP:
    return MLP(in_features=64, hidden=[16], out_features=out_features)


def tiny_trainer(max_steps: int = 1) -> L.Trainer:
    return L.Trainer(
        max_steps=max_steps, limit_val_batches=0, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip


def tiny_data() -> EpisodicDataModule:
    return EpisodicDataModule(TinyImages(), ways=3, shots=1, queries=2, meta_batch_size=2, train_episodes=4)


def fit_and_save(model: MetaLearner, path: Path) -> Path:
    trainer = tiny_trainer()
    trainer.fit(model, tiny_data())
    trainer.save_checkpoint(path)
    return path


def cli(*args: str) -> MetaLearningCLI:
    """``lit-meta ARGS`` in this process, the CLI object kept (its model and trainer)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
        return MetaLearningCLI(args=list(args))


MAML_FIXED_LR = copy.deepcopy(LEARNERS["maml"])
MAML_FIXED_LR["init_args"]["learn_inner_lr"] = False  # eval_inner_steps then leaves the weights unchanged


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """``name -> (config, checkpoint after 2 steps)`` of a tiny lit-meta fit of ProtoNet and of MAML."""
    runs = {}
    for name, learner in (("protonet", LEARNERS["protonet"]), ("maml", MAML_FIXED_LR)):
        root = tmp_path_factory.mktemp(name)
        config = write_config(root, learner, 0, every_n_train_steps=2)
        fit_run = cli("fit", "--config", str(config), "--trainer.max_steps", "2",
                      "--trainer.logger.init_args.save_dir", str(root))  # fmt: skip
        runs[name] = (config, Path(fit_run.trainer.checkpoint_callback.dirpath) / "step=2.ckpt")
    return runs


def resume(config: Path, checkpoint: Path, tmp_path: Path, *extra: str, subcommand: str = "fit") -> MetaLearningCLI:
    return cli(subcommand, "--config", str(config), "--trainer.logger.init_args.save_dir", str(tmp_path),
               "--trainer.max_steps", "3", "--ckpt_path", str(checkpoint), *extra)  # fmt: skip


def test_case_01_resuming_a_checkpoint_of_another_learner_is_refused(cli_runs, tmp_path):
    """It trained the checkpoint's ProtoNet, silently, under a MAML config."""
    maml_config, _ = cli_runs["maml"]
    _, protonet_checkpoint = cli_runs["protonet"]
    with pytest.raises(
        CheckpointError,
        match=r"step=2.ckpt holds a ProtoNet \(lit_meta.learners.protonet.ProtoNet\), not a MAML: resume or evaluate "
        r"it with a learner of its class \(lit-meta: model.class_path: lit_meta.learners.protonet.ProtoNet\)",
    ):
        resume(maml_config, protonet_checkpoint, tmp_path)


def test_case_01_a_python_trainer_refuses_another_learner_with_the_same_weights(tmp_path):
    """A MatchingNet without FCE has a ProtoNet's weights: only the recorded class tells them apart."""
    checkpoint = fit_and_save(ProtoNet(tiny_mlp(None)), tmp_path / "protonet.ckpt")
    with pytest.raises(CheckpointError, match=r"protonet.ckpt holds a ProtoNet .*, not a MatchingNet"):
        tiny_trainer(max_steps=2).fit(MatchingNet(tiny_mlp(None)), tiny_data(), ckpt_path=checkpoint)


def test_case_01_command_line_values_win_and_one_warning_lists_them(cli_runs, tmp_path):
    config, checkpoint = cli_runs["protonet"]
    with pytest.warns(UserWarning, match=r"differ from the checkpoint's.*are used: meta_lr: 0.001 -> 0.01 "):
        run = resume(config, checkpoint, tmp_path, "--model.init_args.meta_lr", "0.01")
    assert run.model.hparams.meta_lr == 0.01
    assert run.trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.01)  # not the checkpoint's state
    assert run.trainer.global_step == 3


def test_case_01_a_value_that_changes_the_network_cannot_differ(cli_runs, tmp_path):
    config, checkpoint = cli_runs["protonet"]
    with pytest.raises(
        CheckpointError,
        match=r"does not fit this ProtoNet \(weights: backbone.*\(8, 1, 3, 3\) vs \(4, 1, 3, 3\).*"
        r"backbone.init_args.hidden_channels: 8 -> 4.*Use the checkpoint's values",
    ):
        resume(config, checkpoint, tmp_path, "--model.init_args.backbone.init_args.hidden_channels", "4")


def test_case_01_test_with_ckpt_path_uses_the_command_line_eval_inner_steps(cli_runs, tmp_path):
    config, checkpoint = cli_runs["maml"]
    with pytest.warns(UserWarning, match=r"eval_inner_steps: None -> 3"):
        run = resume(config, checkpoint, tmp_path, "--model.init_args.eval_inner_steps", "3", subcommand="test")
    assert run.model.adaptation_steps() == 3
    assert "test/acc" in run.trainer.callback_metrics


@pytest.fixture(scope="module")
def protonet_checkpoint(tmp_path_factory) -> Path:
    return fit_and_save(ProtoNet(tiny_mlp(None)), tmp_path_factory.mktemp("protonet") / "protonet.ckpt")


def test_case_08_a_truncated_checkpoint_names_the_file(protonet_checkpoint, tmp_path):
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(protonet_checkpoint.read_bytes()[:2000])
    with pytest.raises(CheckpointError, match=r"truncated.ckpt is not a readable PyTorch checkpoint \(2000 bytes\)"):
        MetaLearner.load_from_checkpoint(truncated)
    with pytest.raises(CheckpointError, match=r"truncated.ckpt .*use another checkpoint"):
        ProtoNet.load_from_checkpoint(truncated, weights_only=True)


def test_case_08_a_checkpoint_of_another_learner_names_both_classes(protonet_checkpoint):
    with pytest.raises(
        CheckpointError,
        match=r"protonet.ckpt holds a ProtoNet \(lit_meta.learners.protonet.ProtoNet\), not a MAML: "
        r"load it with ProtoNet.load_from_checkpoint, or with MetaLearner.load_from_checkpoint",
    ):
        MAML.load_from_checkpoint(protonet_checkpoint)
    assert type(ProtoNet.load_from_checkpoint(protonet_checkpoint)) is ProtoNet


def test_case_08_a_missing_ckpt_path_is_one_line_before_anything_is_built(tmp_path, capsys):
    missing = tmp_path / "no_such.ckpt"
    args = ["test", f"--config={REPO_ROOT / 'configs' / 'quickstart.yaml'}", f"--ckpt_path={missing}"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"lit-meta: error: ckpt_path={missing}: no such file; give a checkpoint a run wrote" in err
    with pytest.raises(CheckpointError, match="no such file"):
        MetaLearningCLI(args=args)


# -- case 12: a dataset transform in the datamodule's hyperparameters ---------------------------------
def darken(image: torch.Tensor) -> torch.Tensor:
    """A user transform defined at a module's top level."""
    return image * 0.5


GLYPHS = {"dataset": "glyphs", "dataset_kwargs": {"num_classes": 60, "drawings_per_class": 6}, "ways": 3, "shots": 1,
          "queries": 2, "meta_batch_size": 2, "train_episodes": 4, "val_episodes": 2}  # fmt: skip


def glyphs(tmp_path: Path, transform: object) -> EpisodicDataModule:
    kwargs = {**GLYPHS["dataset_kwargs"], "transform": transform}
    return EpisodicDataModule(**{**GLYPHS, "dataset_kwargs": kwargs}, root=str(tmp_path / "glyphs"))


def local_function():
    def transform(image: torch.Tensor) -> torch.Tensor:
        return image

    return transform


@pytest.mark.parametrize(
    ("transform", "why"),
    [
        (lambda image: image, "a lambda, which has no name"),
        (local_function(), "the function local_function.<locals>.transform, defined inside another function"),
        (types.SimpleNamespace(), "a SimpleNamespace object, not a function"),
    ],
    ids=["lambda", "local-function", "object"],
)
def test_case_12_a_transform_a_checkpoint_cannot_name_is_refused_before_training(tmp_path, transform, why):
    """A lambda crashed at the first checkpoint save, after training; a local function made the checkpoint
    unloadable by any other process."""
    with pytest.raises(TransformError, match=rf"dataset_kwargs\['transform'\] is {why}.*define the transform with"):
        glyphs(tmp_path, transform)


def test_case_12_a_module_level_transform_is_kept_as_its_import_path(tmp_path):
    dm = glyphs(tmp_path, darken)
    path = f"{__name__}.darken"
    assert dm.hparams.dataset_kwargs["transform"] == path
    assert dm.dataset.transform is darken  # applied to the items
    assert glyphs(tmp_path, path).dataset.transform is darken  # a YAML config gives the path
    trainer = tiny_trainer()
    trainer.fit(ProtoNet(MLP(in_features=28 * 28, hidden=[16], out_features=None)), dm)
    trainer.save_checkpoint(tmp_path / "darkened.ckpt")
    checkpoint = torch.load(tmp_path / "darkened.ckpt", weights_only=True)  # no pickled function inside
    assert checkpoint["datamodule_hyper_parameters"]["dataset_kwargs"]["transform"] == path
    learner, _ = load_learner(tmp_path / "darkened.ckpt")  # lit-meta adapt's loading
    assert type(learner) is ProtoNet
    with pytest.raises(TransformError, match=r"'no_such_module.darken' names no importable function"):
        glyphs(tmp_path, "no_such_module.darken")


def test_case_12_adapt_names_the_code_an_older_checkpoint_cannot_load(protonet_checkpoint, tmp_path, monkeypatch):
    """A checkpoint of an older lit-meta, with a transform pickled from a module that is gone."""
    module = types.ModuleType("gone_transforms")
    exec("def flip(image):\n    return image.flip(-1)", module.__dict__)
    monkeypatch.setitem(sys.modules, "gone_transforms", module)
    checkpoint = torch.load(protonet_checkpoint, weights_only=True)
    checkpoint["datamodule_hyper_parameters"] = {"dataset": "glyphs", "dataset_kwargs": {"transform": module.flip}}
    torch.save(checkpoint, tmp_path / "old.ckpt")
    monkeypatch.delitem(sys.modules, "gone_transforms")
    with pytest.raises(CheckpointGlobalsError, match=r"old.ckpt refers to gone_transforms.flip, which cannot be imp"):
        load_learner(tmp_path / "old.ckpt")
    with pytest.raises(CheckpointGlobalsError, match=r"old.ckpt refers to .*weights_only=True does not load: gone_tr"):
        MetaLearner.load_from_checkpoint(tmp_path / "old.ckpt", weights_only=True)
