"""EpisodicDataModule under a real Lightning Trainer."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch
from lightning.pytorch.utilities import move_data_to_device
from torch.utils.data import DataLoader

from lit_meta.data.datamodule import EpisodicDataModule
from lit_meta.data.episode import EpisodeBatch
from lit_meta.data.sampler import EpisodeSampler
from lit_meta.errors import DatasetError, EpisodeConfigError

from ..conftest import TinyImages, two_spawned_cpu_processes


class EpisodeRecorder(L.LightningModule):
    """Nearest-prototype classifier on a linear embedding; records every episode it sees."""

    def __init__(self, log_path: str | None = None) -> None:
        super().__init__()
        self.embed = torch.nn.Linear(64, 8)
        self.seen: dict[str, list[list[int]]] = {"train": [], "val": [], "test": []}
        self.log_path = log_path

    def _loss(self, batch: EpisodeBatch, stage: str) -> torch.Tensor:
        assert isinstance(batch, EpisodeBatch)
        self.seen[stage].extend(batch.classes.tolist())
        tasks, ways = len(batch), batch.ways
        support = self.embed(batch.support_x.flatten(2)).reshape(tasks, ways, -1, 8).mean(2)
        query = self.embed(batch.query_x.flatten(2))
        logits = -torch.cdist(query, support)
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch.query_y.flatten())

    def training_step(self, batch, batch_idx):
        return self._loss(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._loss(batch, "val")

    def test_step(self, batch, batch_idx):
        self._loss(batch, "test")

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def on_fit_end(self) -> None:
        if self.log_path:
            with open(f"{self.log_path}.rank{self.global_rank}", "w") as f:
                json.dump(self.seen, f)


def tiny_datamodule(**kwargs) -> EpisodicDataModule:
    defaults = dict(ways=3, shots=1, queries=2, meta_batch_size=2, train_episodes=8, val_episodes=4, test_episodes=4)
    return EpisodicDataModule(TinyImages(), **{**defaults, **kwargs})


def test_dataloaders_are_plain_torch_dataloaders_yielding_episode_batches():
    dm = tiny_datamodule()
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert isinstance(loader, DataLoader) and isinstance(loader.sampler, EpisodeSampler)
    batch = next(iter(loader))
    assert isinstance(batch, EpisodeBatch) and len(batch) == 2
    assert batch.support_x.shape == (2, 3, 1, 8, 8) and batch.query_x.shape == (2, 6, 1, 8, 8)
    assert batch.support_y.tolist() == [[0, 1, 2]] * 2
    assert batch.support_x.dtype == torch.float32 and batch.support_x.min() >= 0 and batch.support_x.max() <= 1
    moved = move_data_to_device(batch, torch.device("cpu"))
    assert isinstance(moved, EpisodeBatch)
    assert moved.to(torch.float64).support_x.dtype == torch.float64
    assert moved.to(torch.float64).support_y.dtype == torch.long  # labels stay integer
    episode = batch[1]
    assert episode.support_x.shape == (3, 1, 8, 8) and episode.ways == 3


def test_fit_and_test_under_a_default_trainer_with_disjoint_class_splits():
    dm = tiny_datamodule(train_ways=4, train_queries=1)
    model = EpisodeRecorder()
    trainer = L.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.fit(model, dm)
    trainer.test(model, dm)
    assert len(model.seen["train"]) == 16  # 8 episodes x 2 epochs
    assert all(len(c) == 4 for c in model.seen["train"]) and all(len(c) == 3 for c in model.seen["test"])
    seen = {stage: {c for episode in eps for c in episode} for stage, eps in model.seen.items()}
    assert seen["train"] <= set(range(6)) and seen["val"] <= {6, 7, 8} and seen["test"] <= {9, 10, 11}
    # Lightning calls set_epoch: the two training epochs draw different episodes.
    assert model.seen["train"][:8] != model.seen["train"][8:]
    # Validation repeats the same fixed episodes each time it runs (sanity check + 2 epochs).
    val = model.seen["val"]
    assert val[-4:] == val[-8:-4]


def test_fast_dev_run_and_num_workers():
    dm = tiny_datamodule(num_workers=1)
    trainer = L.Trainer(fast_dev_run=2, logger=False, enable_progress_bar=False)
    trainer.fit(EpisodeRecorder(), dm)


def test_sinusoid_by_name():
    dm = EpisodicDataModule("sinusoid", shots=10, queries=10, meta_batch_size=25)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch.support_x.shape == (25, 10, 1) and batch.support_y.dtype == torch.float32
    assert not batch.is_classification


def test_state_dict_resumes_the_training_stream():
    dm = tiny_datamodule()
    dm.setup("fit")
    it = iter(dm.train_dataloader())
    next(it)
    state = dm.state_dict()
    rest = [b.classes.tolist() for b in it]
    resumed = tiny_datamodule()
    resumed.load_state_dict(state)
    resumed.setup("fit")
    assert [b.classes.tolist() for b in resumed.train_dataloader()] == rest


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (dict(dataset="no_such_set"), DatasetError, "unknown dataset 'no_such_set'; known datasets: .*sinusoid"),
        (dict(ways=1), EpisodeConfigError, "ways=1"),
        (dict(shots=0), EpisodeConfigError, "shots=0"),
        (dict(meta_batch_size=0), EpisodeConfigError, "meta_batch_size=0"),
        (dict(support_order="sorted"), EpisodeConfigError, "support_order='sorted': expected one of"),
    ],
)
def test_bad_configuration_fails_at_construction(kwargs, error, message):
    with pytest.raises(error, match=message):
        EpisodicDataModule(**kwargs)


def test_impossible_split_fails_in_setup_before_training():
    dm = tiny_datamodule(eval_ways=5)  # val and test have 3 classes
    with pytest.raises(EpisodeConfigError, match="ways=5 but the val split has only 3 classes"):
        L.Trainer(fast_dev_run=1, logger=False, enable_progress_bar=False).fit(EpisodeRecorder(), dm)


def test_ddp_ranks_draw_disjoint_episodes(tmp_path):
    """Two CPU processes (gloo): the sampler shards itself and Lightning leaves it unwrapped."""
    log = str(tmp_path / "seen")
    dm = tiny_datamodule(train_episodes=8, meta_batch_size=1)
    trainer = L.Trainer(
        **two_spawned_cpu_processes(),
        max_epochs=1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
    )
    trainer.fit(EpisodeRecorder(log_path=log), dm)
    ranks = []
    for r in (0, 1):
        with open(f"{log}.rank{r}") as f:
            ranks.append(json.load(f)["train"])
    assert [len(r) for r in ranks] == [4, 4]
    single = tiny_datamodule(train_episodes=8, meta_batch_size=1)
    single.setup("fit")
    reference = [b.classes[0].tolist() for b in single.train_dataloader()]
    assert ranks[0] == reference[0::2] and ranks[1] == reference[1::2]


def test_support_order_reaches_every_split():
    shuffled, plain = tiny_datamodule(shots=2, support_order="random"), tiny_datamodule(shots=2)
    for dm in (shuffled, plain):
        dm.setup()
    assert {s.support_order for s in shuffled.samplers.values()} == {"random"}
    assert {s.support_order for s in plain.samplers.values()} == {"by_class"}
    unsorted = 0
    for split in ("train", "val", "test"):
        for a, b in zip(shuffled.episode_loader(split), plain.episode_loader(split), strict=True):
            assert torch.equal(a.classes, b.classes) and torch.equal(a.query_x, b.query_x)
            assert b.support_y.tolist() == [[0, 0, 1, 1, 2, 2]] * len(b)
            for task in range(len(a)):  # the same items and labels, reordered together
                order = torch.argsort(a.support_y[task], stable=True)
                assert torch.equal(a.support_y[task][order], b.support_y[task])
                assert {x.tobytes() for x in a.support_x[task].numpy()} == {
                    x.tobytes() for x in b.support_x[task].numpy()
                }
                unsorted += a.support_y[task].tolist() != b.support_y[task].tolist()
    assert unsorted > 0


class NoValImages(TinyImages):
    """TinyImages without validation classes, like Omniglot's "santoro" split."""

    def has_split(self, name: str) -> bool:
        return name != "val"


@pytest.mark.filterwarnings("error::UserWarning", "ignore:.*does not have many workers.*")
def test_a_split_without_classes_gets_no_episodes_and_validation_is_skipped():
    dm = EpisodicDataModule(
        NoValImages(), ways=3, shots=1, queries=2, meta_batch_size=2, train_episodes=8, test_episodes=4
    )
    model = EpisodeRecorder()
    trainer = L.Trainer(
        max_steps=2, limit_val_batches=3, logger=False, enable_checkpointing=False, enable_progress_bar=False
    )
    trainer.fit(model, dm)  # no warning either: an empty val loader would get one
    assert trainer.global_step == 2 and len(model.seen["train"]) == 4
    assert model.seen["val"] == []
    assert trainer.limit_val_batches == 3  # given back after the run
    assert trainer.validate(model, dm) == []
    trainer.test(model, dm)
    assert len(model.seen["test"]) == 4
    assert dm.empty_splits == {"val"} and "val" not in dm.samplers
    assert dm.val_dataloader() == []
    with pytest.raises(DatasetError, match=r"no val episodes: .*NoValImages.* holds no val classes"):
        dm.episode_loader("val")
