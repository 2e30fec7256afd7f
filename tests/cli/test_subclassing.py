"""Subclassing a learner: overriding one hook changes the behaviour the README documents."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lit_meta.backbones import MLP
from lit_meta.cli import main
from lit_meta.data.datamodule import EpisodicDataModule
from lit_meta.learners import MAML

from ..conftest import TinyImages


class ScaledLossMAML(MAML):
    """The README's example: ``task_loss`` is used by the inner loop and the outer loop alike."""

    def task_loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return 2.0 * F.cross_entropy(outputs, targets)


def mlp() -> MLP:
    torch.manual_seed(0)
    return MLP(in_features=64, hidden=[16], out_features=3)


def test_task_loss_hook_reaches_the_inner_and_the_outer_loop():
    batch = next(
        iter(EpisodicDataModule(TinyImages(), ways=3, shots=2, queries=2, meta_batch_size=3).train_dataloader())
    )
    scaled = ScaledLossMAML(mlp(), inner_lr=0.1, inner_steps=2, execution="loop")
    plain = MAML(mlp(), inner_lr=0.2, inner_steps=2, execution="loop")
    # Doubling the loss doubles the inner gradient (same as doubling the step size) and the outer loss.
    torch.testing.assert_close(scaled.meta_loss(batch), 2.0 * plain.meta_loss(batch))
    episode = batch[0]
    torch.testing.assert_close(
        scaled.adapt(episode.support_x, episode.support_y)(episode.query_x),
        plain.adapt(episode.support_x, episode.support_y)(episode.query_x),
    )


def test_subclass_runs_through_the_cli(tmp_path):
    assert main([
        "fit",
        "--model", f"{__name__}.ScaledLossMAML",
        "--model.backbone", "lit_meta.backbones.OmniglotMLP",
        "--model.backbone.out_features", "3",
        "--model.inner_lr", "0.1",
        "--data.dataset", "glyphs",
        "--data.root", str(tmp_path / "glyphs"),
        "--data.dataset_kwargs", "{num_classes: 30, drawings_per_class: 4}",
        "--data.ways", "3",
        "--data.queries", "2",
        "--data.meta_batch_size", "2",
        "--data.train_episodes", "4",
        "--data.val_episodes", "2",
        "--trainer.max_steps", "2",
        "--trainer.logger.init_args.save_dir", str(tmp_path),
    ]) == 0  # fmt: skip
    (checkpoint,) = (tmp_path / "lightning_logs" / "version_0" / "checkpoints").iterdir()
    assert torch.load(checkpoint, weights_only=True)["lit_meta_learner"] == f"{__name__}.ScaledLossMAML"
