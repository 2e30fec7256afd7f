"""``backbone_checkpoint``: meta-training starts from the backbone of another lit-meta checkpoint."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from lit_meta.backbones import Conv4
from lit_meta.data.datamodule import EpisodicDataModule
from lit_meta.learners.baseline import Baseline
from lit_meta.learners.maml import MAML
from lit_meta.learners.protonet import ProtoNet


def trainer(**kwargs) -> L.Trainer:
    settings = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    return L.Trainer(**{**settings, **kwargs})


def glyphs(root: Path) -> EpisodicDataModule:
    return EpisodicDataModule(
        "glyphs", root=str(root), dataset_kwargs={"image_size": 16, "num_classes": 60}, ways=5, queries=2,
        meta_batch_size=1, train_episodes=4, val_episodes=1, test_episodes=1,
    )  # fmt: skip


def conv4(out_features: int | None = None, hidden_channels: int = 8) -> Conv4:
    return Conv4(1, out_features, hidden_channels=hidden_channels, image_size=16)


def backbone_state(learner: L.LightningModule) -> dict[str, torch.Tensor]:
    return {name: value.clone() for name, value in learner.backbone.state_dict().items()}


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, torch.Tensor]]:
    """A Baseline checkpoint after two pre-training steps, and its backbone's tensors."""
    root = tmp_path_factory.mktemp("pretrained")
    torch.manual_seed(0)
    baseline = Baseline(conv4(), embedding_dim=8)
    fit = trainer(max_steps=2, limit_val_batches=0)
    fit.fit(baseline, glyphs(root))
    path = root / "baseline.ckpt"
    fit.save_checkpoint(path)
    return str(path), backbone_state(baseline)


def test_a_baseline_backbone_starts_a_protonet(pretrained) -> None:
    path, weights = pretrained
    protonet = ProtoNet(conv4(), backbone_checkpoint=path)
    assert not torch.equal(protonet.backbone.state_dict()["features.0.0.weight"], weights["features.0.0.weight"])
    protonet.setup("fit")
    assert all(torch.equal(value, weights[name]) for name, value in protonet.backbone.state_dict().items())


def test_a_maml_keeps_its_own_head_and_logs_it(pretrained, caplog: pytest.LogCaptureFixture) -> None:
    path, weights = pretrained
    maml = MAML(conv4(out_features=5))
    head = {name: value.clone() for name, value in maml.backbone.head.state_dict().items()}
    with caplog.at_level(logging.INFO):
        maml.load_backbone_weights(path)
    state = maml.backbone.state_dict()
    assert all(torch.equal(state[name], value) for name, value in weights.items())
    assert all(torch.equal(maml.backbone.head.state_dict()[name], value) for name, value in head.items())
    message = next(r.getMessage() for r in caplog.records if "tensors from" in r.getMessage())
    assert f"loaded {len(weights)} of the backbone's {len(state)} tensors" in message
    assert message.endswith("left as initialised: head.bias, head.weight"), message


def test_backbones_that_do_not_fit_are_refused(pretrained, tmp_path: Path) -> None:
    path, _ = pretrained
    with pytest.raises(ValueError, match=r"other shapes .*features\.0\.0\.weight \(8, 1, 3, 3\) vs \(16, 1, 3, 3\)"):
        ProtoNet(conv4(hidden_channels=16)).load_backbone_weights(path)
    with pytest.raises(ValueError, match=r"no tensor under backbone\. .* has a name this Sequential has"):
        ProtoNet(nn.Sequential(nn.Flatten(), nn.Linear(256, 8))).load_backbone_weights(path)
    torch.save({"weights": torch.zeros(1)}, tmp_path / "plain.pt")
    with pytest.raises(ValueError, match="holds no state_dict"):
        ProtoNet(conv4()).load_backbone_weights(str(tmp_path / "plain.pt"))


def test_it_is_read_at_the_first_fit_only(pretrained, tmp_path: Path) -> None:
    """Not at test, not by a learner loaded from its own checkpoint, and a resumed run keeps its own weights."""
    path, weights = pretrained
    protonet = ProtoNet(conv4(), backbone_checkpoint=path)
    initial = backbone_state(protonet)
    protonet.setup("test")
    assert all(torch.equal(value, initial[name]) for name, value in protonet.backbone.state_dict().items())

    # A run started from the pre-trained backbone, checkpointed after 2 steps.
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    trainer(max_steps=2, enable_checkpointing=True, callbacks=[checkpoint]).fit(protonet, glyphs(tmp_path))
    trained = backbone_state(protonet)
    assert not all(torch.equal(value, weights[name]) for name, value in trained.items())

    # Resumed: the restored weights win over the backbone checkpoint read at setup.
    resumed = ProtoNet(conv4(), backbone_checkpoint=path)
    trainer(max_steps=2).fit(resumed, glyphs(tmp_path), ckpt_path=str(tmp_path / "last.ckpt"))
    assert all(torch.equal(value, trained[name]) for name, value in resumed.backbone.state_dict().items())

    # Loaded from its own checkpoint, it meta-trains on without the (now missing) pre-trained file.
    moved = tmp_path / "moved.ckpt"
    (tmp_path / "last.ckpt").rename(moved)
    loaded = ProtoNet.load_from_checkpoint(moved, weights_only=True)
    assert loaded.hparams.backbone_checkpoint == path
    loaded.hparams.backbone_checkpoint = str(tmp_path / "gone.ckpt")
    loaded.setup("fit")
    assert all(torch.equal(value, trained[name]) for name, value in loaded.backbone.state_dict().items())
