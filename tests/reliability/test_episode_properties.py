"""Issue 17, property-based: any episode shapes, dataset sizes, meta-batch sizes and episode counts given
to :class:`~lit_meta.EpisodicDataModule` give either a valid episode stream or one
:class:`~lit_meta.errors.EpisodeConfigError`, never another exception."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from lit_meta import EpisodicDataModule
from lit_meta.data.datasets import MetaDataset
from lit_meta.data.datasets.base import SPLIT_NAMES, SplitName, TensorClassDataset
from lit_meta.data.episode import EpisodeBatch
from lit_meta.errors import EpisodeConfigError


class IndexedItems(MetaDataset):
    """Classes of the given sizes, split in order into train, val and test; each item is a ``[1, 1, 2]``
    uint8 image holding its own index (``index // 256``, ``index % 256``), so an episode tells which items
    it holds.

    Args:
        class_sizes: per split, the number of items of each of its classes (at least one class each).
    """

    def __init__(self, class_sizes: dict[SplitName, list[int]]) -> None:
        sizes = [size for split in SPLIT_NAMES for size in class_sizes[split]]
        labels = np.repeat(np.arange(len(sizes)), sizes)
        index = torch.arange(len(labels))
        data = torch.stack([index // 256, index % 256], dim=1).to(torch.uint8).reshape(-1, 1, 1, 2)
        self.family = TensorClassDataset(data, labels, [f"class{c}" for c in range(len(sizes))])
        bounds = np.cumsum([0, *(len(class_sizes[split]) for split in SPLIT_NAMES)])
        self.classes = {split: np.arange(bounds[i], bounds[i + 1]) for i, split in enumerate(SPLIT_NAMES)}

    def split(self, name: SplitName) -> TensorClassDataset:
        return self.family.subset(self.classes[name])


def _item_indices(x: torch.Tensor) -> list[int]:
    """The item indices of loaded items ``[n, 1, 1, 2]`` (floats in [0, 1])."""
    pixels = torch.round(x.reshape(-1, 2) * 255).long()
    return (pixels[:, 0] * 256 + pixels[:, 1]).tolist()


# Mostly workable values, so that about half the examples give a stream to check; the faults below and the
# ranges' edges (more ways than classes, more shots and queries than items, meta-batches larger than one
# rank's epoch) give the rest.
small = st.integers(min_value=1, max_value=4)
options = {
    "ways": st.integers(2, 4),
    "shots": small,
    "queries": small,
    "train_ways": st.none() | st.integers(2, 5),
    "eval_shots": st.none() | small,
    "train_queries": st.none() | small,
    "meta_batch_size": st.integers(1, 4),
    "eval_meta_batch_size": st.none() | st.integers(1, 6),
    "train_episodes": st.integers(3, 12),
    "val_episodes": st.integers(1, 6),
    "test_episodes": st.integers(1, 6),
    "support_order": st.sampled_from(["by_class", "random"]),
}
configs = st.fixed_dictionaries(options)
# Zero, negative or oversized values of any option; a class with too few items (maybe none) in a split.
faults = st.lists(
    st.tuples(st.sampled_from(sorted(set(options) - {"support_order"})), st.sampled_from([-1, 0, 40])), max_size=2
)
small_class = st.none() | st.none() | st.tuples(st.sampled_from(SPLIT_NAMES), st.integers(0, 3))
class_sizes = st.fixed_dictionaries(
    {split: st.lists(st.integers(8, 10), min_size=4, max_size=7) for split in SPLIT_NAMES}
)


def _check_stream(dm: EpisodicDataModule, dataset: IndexedItems, split: SplitName, batches: list[EpisodeBatch]) -> None:
    """Asserts that ``batches`` are the valid episode stream of ``split``."""
    shape, batch_size, sampler = dm.shapes[split], dm.batch_sizes[split], dm.samplers[split]
    ways, shots, queries = shape.ways, shape.shots, shape.queries
    sizes = [len(batch) for batch in batches]
    assert sum(sizes) == len(sampler) and all(size == batch_size for size in sizes[:-1])
    assert 0 < sizes[-1] <= batch_size
    if split == "train":
        assert sizes[0] == batch_size  # no training step holds fewer tasks than asked, but an epoch's last
    split_ids = set(dataset.family.class_ids[dataset.classes[split]].tolist())
    for batch in batches:
        tasks = len(batch)
        assert batch.support_x.shape == (tasks, ways * shots, 1, 1, 2)
        assert batch.query_x.shape == (tasks, ways * queries, 1, 1, 2)
        assert batch.classes.shape == (tasks, ways)
        for episode in batch:
            classes = episode.classes.tolist()
            assert len(set(classes)) == ways and set(classes) <= split_ids
            support, query = _item_indices(episode.support_x), _item_indices(episode.query_x)
            assert len(set(support + query)) == ways * (shots + queries)  # all distinct: support and query disjoint
            assert sorted(episode.support_y.tolist()) == sorted(list(range(ways)) * shots)
            assert episode.query_y.tolist() == [label for label in range(ways) for _ in range(queries)]
            for items, labels in ((support, episode.support_y), (query, episode.query_y)):
                assert [int(dataset.family.labels[i]) for i in items] == [classes[y] for y in labels.tolist()]


@settings(
    max_examples=100,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    config=configs,
    faults=faults,
    sizes=class_sizes,
    small=small_class,
    world_size=st.integers(1, 3),
    data=st.data(),
)
def test_episode_stream_is_valid_or_one_episode_config_error(
    config: dict[str, Any],
    faults: list[tuple[str, int]],
    sizes: dict[SplitName, list[int]],
    small: tuple[SplitName, int] | None,
    world_size: int,
    data: st.DataObject,
) -> None:
    config = {**config, **dict(faults)}
    if small is not None:
        sizes = {**sizes, small[0]: [*sizes[small[0]], small[1]]}
    dataset = IndexedItems(sizes)
    rank = data.draw(st.integers(0, world_size - 1), label="rank")
    error = None
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "train_episodes=.* not a multiple of meta_batch_size")
            dm = EpisodicDataModule(dataset, **config)
            dm.setup()
            for sampler in dm.samplers.values():  # as on one rank of a DDP run
                sampler.num_replicas, sampler.rank = world_size, rank
            streams = {split: list(dm.episode_loader(split)) for split in SPLIT_NAMES}
    except EpisodeConfigError as raised:
        error = str(raised)
    event("EpisodeConfigError" if error else "valid stream")
    if error is not None:
        assert "=" in error  # it names the offending value
        return
    for split, batches in streams.items():
        _check_stream(dm, dataset, split, batches)


@pytest.mark.parametrize(("option", "value"), [("train_ways", 0), ("eval_shots", 0), ("train_queries", -1)])
def test_an_explicit_zero_override_is_an_error_not_the_default(option: str, value: int) -> None:
    """``train_ways=0`` used to fall back to ``ways`` (``0 or ways``): a value given is a value checked, and the
    error names the option that set it."""
    dataset = IndexedItems({"train": [4] * 4, "val": [4] * 4, "test": [4] * 4})
    with pytest.raises(EpisodeConfigError, match=rf"^{option}={value}: .*; set {option} >= "):
        EpisodicDataModule(dataset, ways=2, shots=1, queries=1, **{option: value})


def test_errors_from_a_split_name_the_option_that_set_the_value() -> None:
    dataset = IndexedItems({"train": [4] * 4, "val": [4] * 3, "test": [4] * 3})
    dm = EpisodicDataModule(dataset, ways=3, train_ways=5, shots=1, queries=1, meta_batch_size=1)
    with pytest.raises(
        EpisodeConfigError, match=r"^train_ways=5 but the train split has only 4 classes; lower train_ways "
    ):
        dm.setup("fit")
    dm = EpisodicDataModule(dataset, ways=2, shots=1, queries=1, eval_queries=4, meta_batch_size=1)
    with pytest.raises(
        EpisodeConfigError, match=r"^shots \+ eval_queries = 1 \+ 4 = 5 but .* lower shots or eval_queries"
    ):
        dm.setup("validate")
