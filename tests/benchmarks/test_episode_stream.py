"""The episode stream ``benchmarks/side_by_side.py`` writes for lit-meta and a peer library to read alike."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lit_meta.data import EpisodicDataModule

from ..conftest import REPO_ROOT, TinyImages

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
from episode_stream import EpisodeStream, accuracy_with_ci
from side_by_side import write_datamodule_stream


@pytest.fixture
def written(tmp_path: Path) -> tuple[EpisodicDataModule, EpisodeStream]:
    dm = EpisodicDataModule(
        TinyImages(), ways=3, shots=2, queries=2, meta_batch_size=2, train_episodes=6, val_episodes=4, seed=3
    )
    write_datamodule_stream(tmp_path / "stream", dm)
    return dm, EpisodeStream(tmp_path / "stream")


@pytest.mark.parametrize("split", ["train", "val"])
def test_the_loaders_episodes_come_back_in_order(written, split):
    dm, stream = written
    loader = dm.train_dataloader() if split == "train" else dm.val_dataloader()
    for step, batch in enumerate(loader):
        read = stream.episodes(split, step * 2, 2)
        for field in ("support_x", "support_y", "query_x", "query_y", "classes"):
            assert torch.equal(torch.from_numpy(read[field]), getattr(batch, field)), (split, step, field)
    assert stream.count(split) == (6 if split == "train" else 4)
    assert stream.info["ways"] == 3 and stream.info["meta_batch_size"] == 2


def test_the_splits_share_no_class(written):
    _, stream = written
    train, val = (set(stream.episodes(s, 0, stream.count(s))["classes"].ravel().tolist()) for s in ("train", "val"))
    assert train and val and not train & val


def test_accuracy_interval_is_196_standard_errors():
    mean, ci = accuracy_with_ci(np.array([0.0, 1.0, 1.0, 0.0]))
    assert mean == 50.0 and ci == pytest.approx(100 * 1.96 * 0.5 / 2)
