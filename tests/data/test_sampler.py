"""Properties of the episode stream: the guarantees every reported accuracy rests on."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lit_meta.data.datasets import Sinusoid, TensorClassDataset
from lit_meta.data.episode import EpisodeDataset, collate_episodes
from lit_meta.data.sampler import EpisodeSampler, EpisodeShape
from lit_meta.errors import EpisodeConfigError


def make_dataset(class_sizes: list[int]) -> TensorClassDataset:
    labels = np.repeat(np.arange(len(class_sizes)), class_sizes)
    # Item i holds the value i, so a loaded tensor names the item it came from.
    data = torch.arange(len(labels), dtype=torch.float32).reshape(-1, 1)
    return TensorClassDataset(
        data, labels, [f"c{i}" for i in range(len(class_sizes))], class_ids=np.arange(len(class_sizes)) + 100
    )


@st.composite
def episode_settings(draw: st.DrawFn) -> tuple[TensorClassDataset, EpisodeShape, int]:
    ways = draw(st.integers(2, 6))
    shots = draw(st.integers(1, 4))
    queries = draw(st.integers(1, 4))
    extra_classes = draw(st.integers(0, 5))
    sizes = draw(
        st.lists(
            st.integers(shots + queries, shots + queries + 4),
            min_size=ways + extra_classes,
            max_size=ways + extra_classes,
        )
    )
    seed = draw(st.integers(0, 2**31 - 1))
    return make_dataset(sizes), EpisodeShape(ways, shots, queries), seed


@settings(max_examples=60, deadline=None)
@given(episode_settings(), st.integers(0, 3))
def test_episodes_are_well_formed(setting, epoch):
    dataset, shape, seed = setting
    sampler = EpisodeSampler(dataset, shape, num_episodes=8, seed=seed)
    sampler.set_epoch(epoch)
    builder = EpisodeDataset(dataset)
    for plan in sampler:
        assert len(set(plan.task.tolist())) == shape.ways  # distinct classes
        support, query = plan.support.reshape(-1), plan.query.reshape(-1)
        assert not set(support.tolist()) & set(query.tolist())  # disjoint support and query
        assert len(set(support.tolist())) == support.size and len(set(query.tolist())) == query.size
        for label, cls in enumerate(plan.task):  # every item belongs to its class
            assert (dataset.labels[plan.support[label]] == cls).all()
            assert (dataset.labels[plan.query[label]] == cls).all()
        episode = builder[plan]
        assert episode.support_y.tolist() == [lab for lab in range(shape.ways) for _ in range(shape.shots)]
        assert episode.query_y.tolist() == [lab for lab in range(shape.ways) for _ in range(shape.queries)]
        assert episode.classes.tolist() == (dataset.class_ids[plan.task]).tolist()
        # Each loaded item is the one planned, and its label maps back to its original class.
        items = episode.support_x.reshape(-1).long().numpy()
        assert (dataset.class_ids[dataset.labels[items]] == episode.classes[episode.support_y].numpy()).all()


@settings(max_examples=30, deadline=None)
@given(episode_settings(), st.integers(0, 3))
def test_stream_is_a_function_of_seed_epoch_and_index(setting, epoch):
    dataset, shape, seed = setting
    first, second = (EpisodeSampler(dataset, shape, num_episodes=6, seed=seed) for _ in range(2))
    for s in (first, second):
        s.set_epoch(epoch)
    for a, b in zip(first, second, strict=True):
        assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


@settings(max_examples=30, deadline=None)
@given(episode_settings(), st.integers(0, 11), st.integers(0, 2))
def test_resume_equals_uninterrupted(setting, stop_after, epoch):
    dataset, shape, seed = setting
    uninterrupted = EpisodeSampler(dataset, shape, num_episodes=12, seed=seed)
    uninterrupted.set_epoch(epoch)
    expected = list(uninterrupted)

    interrupted = EpisodeSampler(dataset, shape, num_episodes=12, seed=seed)
    interrupted.set_epoch(epoch)
    head = list(itertools.islice(iter(interrupted), stop_after))
    state = interrupted.state_dict()

    resumed = EpisodeSampler(dataset, shape, num_episodes=12, seed=seed)
    resumed.load_state_dict(state)
    tail = list(resumed)
    assert len(head) + len(tail) == len(expected)
    for a, b in zip(head + tail, expected, strict=True):
        assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    # The following epoch starts from its beginning again.
    resumed.set_epoch(epoch + 1)
    assert len(list(resumed)) == len(expected)


@settings(max_examples=30, deadline=None)
@given(episode_settings(), st.integers(1, 4), st.integers(1, 20))
def test_ranks_are_disjoint_and_their_union_is_fixed_by_the_seed(setting, world_size, num_episodes):
    dataset, shape, seed = setting
    single = EpisodeSampler(dataset, shape, num_episodes=num_episodes * world_size, seed=seed, num_replicas=1, rank=0)
    reference = list(single)
    ranks = [
        EpisodeSampler(
            dataset, shape, num_episodes=num_episodes * world_size, seed=seed, num_replicas=world_size, rank=r
        )
        for r in range(world_size)
    ]
    indices = [set(s.episode_indices()) for s in ranks]
    assert sum(len(i) for i in indices) == len(set().union(*indices))  # disjoint
    assert set().union(*indices) == set(range(num_episodes * world_size))
    for r, sampler in enumerate(ranks):
        assert len(sampler) == num_episodes  # equal steps on every rank
        for k, plan in enumerate(sampler):
            expected = reference[r + k * world_size]
            assert all(np.array_equal(x, y) for x, y in zip(plan, expected, strict=True))


def test_uneven_episode_counts_pad_with_fresh_episodes():
    dataset = make_dataset([6] * 8)
    ranks = [EpisodeSampler(dataset, EpisodeShape(3, 1, 2), num_episodes=5, num_replicas=2, rank=r) for r in (0, 1)]
    assert [len(s) for s in ranks] == [3, 3]
    assert sorted(i for s in ranks for i in s.episode_indices()) == list(range(6))


def test_validation_stream_repeats_across_epochs_and_training_stream_does_not():
    dataset = make_dataset([10] * 20)
    shape = EpisodeShape(5, 1, 3)
    for vary, same in ((False, True), (True, False)):
        sampler = EpisodeSampler(dataset, shape, num_episodes=4, vary_with_epoch=vary)
        epoch0 = [p.task.tolist() for p in sampler]
        sampler.set_epoch(1)
        epoch1 = [p.task.tolist() for p in sampler]
        assert (epoch0 == epoch1) is same


def test_splits_and_seeds_give_different_streams():
    dataset = make_dataset([10] * 30)
    shape = EpisodeShape(5, 1, 3)
    streams = [
        [p.task.tolist() for p in EpisodeSampler(dataset, shape, num_episodes=5, split=split, seed=seed)]
        for split, seed in (("train", 0), ("val", 0), ("train", 1))
    ]
    assert streams[0] != streams[1] and streams[0] != streams[2]


def test_labels_are_a_fresh_permutation_per_episode():
    dataset = make_dataset([4] * 5)
    sampler = EpisodeSampler(dataset, EpisodeShape(5, 1, 1), num_episodes=50)
    orders = {tuple(p.task.tolist()) for p in sampler}
    assert len(orders) > 10  # the class behind label 0 varies


@pytest.mark.parametrize(
    ("shape_args", "sizes", "message"),
    [
        ((6, 1, 1), [5] * 5, "ways=6 but the train split has only 5 classes"),
        ((2, 3, 3), [10, 10, 5], "class 'c2' of the train split has only 5 examples"),
        ((1, 1, 1), [5] * 5, "ways=1"),
        ((2, 0, 1), [5] * 5, "shots=0"),
        ((2, 1, 0), [5] * 5, "queries=0"),
    ],
)
def test_impossible_episodes_fail_with_the_value_and_the_fix(shape_args, sizes, message):
    with pytest.raises(EpisodeConfigError, match=message):
        EpisodeSampler(make_dataset(sizes), EpisodeShape(*shape_args), num_episodes=1)


def test_sinusoid_episodes_follow_the_maml_distribution():
    tasks = Sinusoid().split("train")
    sampler = EpisodeSampler(tasks, EpisodeShape(5, 10, 7), num_episodes=200, seed=3)
    batch = collate_episodes([EpisodeDataset(tasks)[p] for p in sampler])
    assert batch.support_x.shape == (200, 10, 1) and batch.query_y.shape == (200, 7, 1)
    assert batch.support_x.abs().max() <= 5
    amplitudes = torch.cat([batch.support_y, batch.query_y], 1).abs().amax(1)
    assert amplitudes.max() <= 5 and amplitudes.min() >= 0
    params = np.stack([p.task for p in sampler])
    assert params[:, 0].min() >= 0.1 and params[:, 0].max() <= 5
    assert params[:, 1].min() >= 0 and params[:, 1].max() <= np.pi
    torch.testing.assert_close(
        batch.support_y[0],
        torch.from_numpy(params[0, 0] * np.sin(batch.support_x[0].double().numpy() - params[0, 1])).float(),
    )


# -- support order ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("sizes", "task", "support", "query"),
    [  # plan 3 of epoch 1, seed 7, drawn by the sampler before support_order existed
        ([5] * 6, [4, 0, 3], [[23, 24], [0, 3], [17, 19]], [[20], [4], [16]]),
        ([5, 6, 7, 5, 8, 6], [4, 0, 3], [[30, 25], [2, 4], [18, 22]], [[29], [0], [21]]),
    ],
)
@pytest.mark.parametrize("support_order", ["by_class", "random"])
def test_support_order_leaves_the_classes_and_items_of_every_episode_unchanged(
    sizes, task, support, query, support_order
):
    sampler = EpisodeSampler(
        make_dataset(sizes), EpisodeShape(3, 2, 1), num_episodes=4, seed=7, support_order=support_order
    )
    sampler.set_epoch(1)
    plan = sampler.plan(3)
    assert plan.task.tolist() == task and plan.support.tolist() == support and plan.query.tolist() == query
    assert (plan.order is None) == (support_order == "by_class")


@settings(max_examples=30, deadline=None)
@given(episode_settings(), st.integers(0, 3))
def test_random_support_order_only_reorders_the_by_class_episode(setting, epoch):
    dataset, shape, seed = setting
    by_class, shuffled = (
        EpisodeSampler(dataset, shape, num_episodes=6, seed=seed, support_order=order)
        for order in ("by_class", "random")
    )
    builder = EpisodeDataset(dataset)
    for sampler in (by_class, shuffled):
        sampler.set_epoch(epoch)
    for plain_plan, plan in zip(by_class, shuffled, strict=True):
        assert all(np.array_equal(x, y) for x, y in zip(plain_plan[:3], plan[:3], strict=True))
        assert plain_plan.order is None
        assert sorted(plan.order.tolist()) == list(range(shape.ways * shape.shots))
        plain, episode = builder[plain_plan], builder[plan]
        # The same support items and labels, moved together; queries and classes untouched.
        assert torch.equal(episode.support_x, plain.support_x[torch.from_numpy(plan.order)])
        assert torch.equal(episode.support_y, plain.support_y[torch.from_numpy(plan.order)])
        for name in ("query_x", "query_y", "classes"):
            assert torch.equal(getattr(episode, name), getattr(plain, name))
        # Every support item still carries its own class's label (item i holds the value i).
        items = episode.support_x.reshape(-1).long().numpy()
        assert (dataset.class_ids[dataset.labels[items]] == episode.classes[episode.support_y].numpy()).all()


def test_random_support_order_varies_by_episode_and_repeats_for_the_same_seed():
    dataset = make_dataset([6] * 10)
    shape = EpisodeShape(5, 2, 1)
    first, second = (EpisodeSampler(dataset, shape, num_episodes=20, seed=3, support_order="random") for _ in range(2))
    orders = [p.order.tolist() for p in first]
    assert orders == [p.order.tolist() for p in second]
    assert len({tuple(o) for o in orders}) > 15
    labels = [EpisodeDataset(dataset)[p].support_y.tolist() for p in first]
    assert sum(y != sorted(y) for y in labels) > 15  # support labels are no longer sorted
    other_seed = EpisodeSampler(dataset, shape, num_episodes=20, seed=4, support_order="random")
    assert [p.order.tolist() for p in other_seed] != orders


def test_regression_tasks_ignore_support_order():
    tasks = Sinusoid().split("train")
    plain = list(EpisodeSampler(tasks, EpisodeShape(5, 10, 7), num_episodes=4, seed=3))
    shuffled = list(EpisodeSampler(tasks, EpisodeShape(5, 10, 7), num_episodes=4, seed=3, support_order="random"))
    for a, b in zip(plain, shuffled, strict=True):
        assert b.order is None
        assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_unknown_support_order_names_the_choices():
    with pytest.raises(EpisodeConfigError, match=r"support_order='shuffled': expected one of \('by_class', 'random'\)"):
        EpisodeSampler(make_dataset([5] * 5), EpisodeShape(2, 1, 1), num_episodes=1, support_order="shuffled")  # type: ignore[arg-type]
