"""Issue 17, cases 1, 8 and 12: checkpoints that do not fit, cannot be read, or hold code.

(Case 3, resuming at every position of an epoch, is ``tests/cli/test_resume.py``.)
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest

from lit_meta.backbones import MLP
from lit_meta.data.datamodule import EpisodicDataModule
from lit_meta.errors import CheckpointError
from lit_meta.learners import MAML, MetaLearner, ProtoNet

from ..conftest import TinyImages


def tiny_mlp(out_features: int | None) -> MLP:
    return MLP(in_features=64, hidden=[16], out_features=out_features)


def fit_and_save(model: MetaLearner, path: Path) -> Path:
    dm = EpisodicDataModule(TinyImages(), ways=3, shots=1, queries=2, meta_batch_size=2, train_episodes=4)
    trainer = L.Trainer(
        max_steps=1, limit_val_batches=0, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(model, dm)
    trainer.save_checkpoint(path)
    return path


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
