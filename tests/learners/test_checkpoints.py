"""Checkpoints: any learner loads from the base class; lit-meta backbones are stored as configs."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch import nn

from lit_meta.backbones import MLP
from lit_meta.backbones.config import build_from_config
from lit_meta.data.datamodule import EpisodicDataModule
from lit_meta.errors import CheckpointGlobalsError
from lit_meta.learners import (
    ANIL,
    MAML,
    MatchingNet,
    MetaLearner,
    ProtoNet,
    RelationNet,
)

from ..conftest import TinyImages


def fit_and_save(model: MetaLearner, path, steps: int = 2) -> L.Trainer:
    dm = EpisodicDataModule(TinyImages(), ways=3, shots=1, queries=2, meta_batch_size=2, train_episodes=4)
    trainer = L.Trainer(
        max_steps=steps, limit_val_batches=0, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(model, dm)
    trainer.save_checkpoint(path)
    return trainer


def tiny_mlp(out_features: int | None) -> MLP:
    return MLP(in_features=64, hidden=[16], out_features=out_features, batch_norm=True)


@pytest.mark.parametrize(
    "make",
    [
        lambda: MAML(tiny_mlp(3), inner_lr=0.3, learn_inner_lr=True),  # a learner with learned step sizes
        lambda: MatchingNet(tiny_mlp(None), fce=True),  # a learner with sub-networks of its own
    ],
    ids=["MAML", "MatchingNet"],
)
def test_a_python_built_learner_with_a_lit_meta_backbone_loads_with_weights_only(tmp_path, make):
    """Built in Python, not by the CLI: the backbone records its own config. (Every learner, as the
    command line builds it, is loaded this way by the registry's contract test, tests/test_contract.py.)"""
    model = make()
    fit_and_save(model, tmp_path / "model.ckpt")
    checkpoint = torch.load(tmp_path / "model.ckpt", weights_only=True)  # no pickled module inside
    assert checkpoint["hyper_parameters"]["backbone"]["class_path"] == "lit_meta.backbones.mlp.MLP"
    restored = MetaLearner.load_from_checkpoint(tmp_path / "model.ckpt", weights_only=True)
    assert type(restored) is type(model)
    for (name, a), (_, b) in zip(model.state_dict().items(), restored.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_plain_trainer_resumes_a_python_api_checkpoint(tmp_path):
    """No weights_only=False needed: the backbone is a config, not a pickle."""
    fit_and_save(ProtoNet(tiny_mlp(None)), tmp_path / "model.ckpt", steps=2)
    resumed = ProtoNet(tiny_mlp(None))
    dm = EpisodicDataModule(TinyImages(), ways=3, shots=1, queries=2, meta_batch_size=2, train_episodes=4)
    trainer = L.Trainer(max_steps=3, limit_val_batches=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.fit(resumed, dm, ckpt_path=tmp_path / "model.ckpt")
    assert trainer.global_step == 3


def test_custom_backbone_is_pickled_and_still_restores(tmp_path):
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    fit_and_save(MAML(net, inner_lr=0.3), tmp_path / "model.ckpt")
    restored = MetaLearner.load_from_checkpoint(tmp_path / "model.ckpt")  # weights_only=False by default
    assert isinstance(restored.backbone, nn.Sequential)
    with pytest.raises(CheckpointGlobalsError, match=r"model.ckpt refers to .*torch.nn.modules.container.Sequential"):
        MetaLearner.load_from_checkpoint(tmp_path / "model.ckpt", weights_only=True)


def test_checkpoint_of_an_unknown_learner_is_refused(tmp_path):
    fit_and_save(ProtoNet(tiny_mlp(None)), tmp_path / "model.ckpt")
    checkpoint = torch.load(tmp_path / "model.ckpt", weights_only=True)
    checkpoint["lit_meta_learner"] = "os.system"
    torch.save(checkpoint, tmp_path / "forged.ckpt")
    with pytest.raises(ValueError, match=r"os.system is not a registered lit-meta learner.*entry-point group"):
        MetaLearner.load_from_checkpoint(tmp_path / "forged.ckpt", weights_only=True)


def test_backbone_config_builds_only_recording_backbones():
    assert isinstance(build_from_config(tiny_mlp(5).init_config), MLP)
    with pytest.raises(ValueError, match="not a backbone that records its config"):
        build_from_config({"class_path": "torch.nn.Linear", "init_args": {"in_features": 1, "out_features": 1}})
    assert tiny_mlp(5).init_config["init_args"]["out_features"] == 5
    assert nn.Sequential().__dict__.get("init_config") is None


def test_every_module_argument_with_a_config_is_stored_as_one(tmp_path):
    """Not only the backbone: a relation module (or an encoder, a memory controller) that records
    its config is stored as class path + init args, and rebuilt from it on loading."""
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.Unflatten(1, (16, 1, 1)))  # no config: pickled
    relation = MLP(in_features=2 * 16, hidden=[8], out_features=1)
    model = RelationNet(backbone, relation_module=relation)
    fit_and_save(model, tmp_path / "model.ckpt", steps=1)
    hparams = torch.load(tmp_path / "model.ckpt", weights_only=False)["hyper_parameters"]
    assert hparams["relation_module"] == relation.init_config
    assert isinstance(hparams["backbone"], nn.Sequential)
    restored = MetaLearner.load_from_checkpoint(tmp_path / "model.ckpt")
    assert isinstance(restored.relation_module, MLP)
    for (name, a), (_, b) in zip(model.state_dict().items(), restored.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def format_1(path, **hparams) -> None:
    """Rewrite a checkpoint as lit-meta wrote it before the family bases (no format entry)."""
    checkpoint = torch.load(path, weights_only=True)
    del checkpoint["lit_meta_format"]
    checkpoint["hyper_parameters"].update(retain_cpu_memory=True, **hparams)
    checkpoint["hyper_parameters"]["adapt"] = checkpoint["hyper_parameters"].pop("inner_params")
    torch.save(checkpoint, path)


def test_checkpoints_of_the_previous_format_still_load(tmp_path):
    """Format 1: ``adapt`` (now ``inner_params``), ANIL's inherited MAML++ options, retain_cpu_memory=True."""
    model = ANIL(tiny_mlp(3), inner_lr=0.3)
    fit_and_save(model, tmp_path / "anil.ckpt", steps=1)
    format_1(tmp_path / "anil.ckpt", learn_inner_lr=False, multi_step_loss_steps=0, first_order_steps=0)
    restored = MetaLearner.load_from_checkpoint(tmp_path / "anil.ckpt", weights_only=True)
    assert type(restored) is ANIL and restored.inner_param_names == ["head.weight", "head.bias"]
    assert restored.hparams.retain_cpu_memory is None  # the old default no longer changes malloc unasked
    for (name, a), (_, b) in zip(model.state_dict().items(), restored.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_a_previous_format_checkpoint_that_cannot_be_mapped_says_how_to_load_it(tmp_path):
    fit_and_save(ANIL(tiny_mlp(3), inner_lr=0.3), tmp_path / "anil.ckpt", steps=1)
    format_1(tmp_path / "anil.ckpt", learn_inner_lr=True)
    with pytest.raises(ValueError, match=r"learn_inner_lr=True.*MAML.load_from_checkpoint"):
        MetaLearner.load_from_checkpoint(tmp_path / "anil.ckpt", weights_only=True)
