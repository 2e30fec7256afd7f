"""EpisodeSampler: a seeded, resumable, rank-sharded stream of N-way K-shot tasks."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, get_args

import numpy as np
import torch.distributed as dist
from torch.utils.data import DistributedSampler

from lit_meta.data.datasets.base import SPLIT_NAMES, ClassIndexedDataset, SplitName, TaskDistribution
from lit_meta.errors import EpisodeConfigError

SupportOrder = Literal["by_class", "random"]
SUPPORT_ORDERS: tuple[SupportOrder, ...] = get_args(SupportOrder)


def check_support_order(support_order: str) -> None:
    """Raises :class:`~lit_meta.errors.EpisodeConfigError` unless ``support_order`` is one of :data:`SUPPORT_ORDERS`."""
    if support_order not in SUPPORT_ORDERS:
        raise EpisodeConfigError(
            f"support_order={support_order!r}: expected one of {SUPPORT_ORDERS} "
            "('random' for learners that read the support as a sequence)"
        )


@dataclass(frozen=True)
class EpisodeShape:
    """How many classes (``ways``), labelled examples per class (``shots``) and
    held-out examples per class (``queries``) an episode has.

    For regression task distributions ``ways`` is not used: an episode is one
    function with ``shots`` support points and ``queries`` query points.
    """

    ways: int
    shots: int
    queries: int

    def __post_init__(self) -> None:
        if self.ways < 2:
            raise EpisodeConfigError(
                f"ways={self.ways}: an episode must discriminate at least 2 classes; set ways >= 2"
            )
        if self.shots < 1:
            raise EpisodeConfigError(
                f"shots={self.shots}: each class needs at least one support example; set shots >= 1"
            )
        if self.queries < 1:
            raise EpisodeConfigError(
                f"queries={self.queries}: each class needs at least one query example; set queries >= 1"
            )


class EpisodePlan(NamedTuple):
    """What one episode is made of, before any data is loaded.

    Classification: ``task`` holds the ``[ways]`` class numbers of the split (in
    label order), ``support`` and ``query`` the ``[ways, shots]`` and ``[ways,
    queries]`` item indices. Regression: ``task`` holds the function's
    parameters, ``support`` and ``query`` the ``[n, input_dim]`` inputs.

    ``order`` is the order in which the support is presented: a permutation of
    the ``ways * shots`` positions of the class-major flattened support
    (``support.reshape(-1)[order]``), or ``None`` for class-major order. Only
    ``support_order="random"`` classification samplers set it.

    ``augmentation_seed`` seeds the train-time augmentation of the episode's images
    (:class:`~lit_meta.data.augmentation.EpisodeAugmentation`), so an episode's augmented
    pixels are a function of its coordinates too. Classification plans draw it from the
    episode's random stream after everything else, so it changes none of the above;
    regression plans keep the default 0.
    """

    task: np.ndarray
    support: np.ndarray
    query: np.ndarray
    order: np.ndarray | None = None
    augmentation_seed: int = 0


def episode_rng(seed: int, split: SplitName, epoch: int, index: int) -> np.random.Generator:
    """The random stream of one episode: a pure function of its coordinates."""
    return np.random.default_rng([seed, SPLIT_NAMES.index(split), epoch, index])


class EpisodeSampler(DistributedSampler):  # type: ignore[type-arg]
    """Draws N-way K-shot Q-query episode plans from one split.

    Episode ``i`` of epoch ``e`` depends only on ``(seed, split, e, i)``: the
    stream is reproducible, resumable from :meth:`state_dict` mid-epoch, and
    shardable. Under DDP, rank ``r`` of ``W`` takes episodes ``r, r + W, r + 2W, ...``,
    so ranks never share an episode and their union does not depend on ``W``.
    When ``num_episodes`` is not a multiple of ``W``, each rank draws
    ``ceil(num_episodes / W)`` so all ranks take the same number of steps; the
    extra episodes are fresh ones (indices ``>= num_episodes``), never repeats.

    Within an episode the ``ways`` classes are distinct and the support and query
    items of a class are distinct. The split itself holds only its own classes,
    so meta-train, meta-val and meta-test never share one.

    With ``support_order="random"`` each classification plan also carries a
    random order of its support items (:attr:`EpisodePlan.order`), for sequence
    learners that read the support as an ordered sequence, such as MANN (Santoro
    et al., 2016, "Meta-Learning with Memory-Augmented Neural Networks", ICML) and
    SNAIL (Mishra et al., 2018, "A Simple Neural Attentive Meta-Learner", ICLR):
    in class-major order a label could be read off an item's position. The order
    is drawn after everything else an episode draws, so the classes and items of
    episode ``i`` are the same under either option.

    The sampler subclasses :class:`~torch.utils.data.DistributedSampler` only to
    tell Lightning that it shards itself: Lightning then leaves it in place
    instead of wrapping it, and calls :meth:`set_epoch` every epoch. It does not
    use the parent's constructor.

    Args:
        source: the split to draw from.
        shape: ways, shots and queries.
        num_episodes: episodes per epoch, over all ranks.
        split: which split this is; part of the seed, so the train, val and test
            streams differ even for the same seed.
        seed: base seed.
        vary_with_epoch: draw new episodes each epoch (training). ``False`` repeats
            the same episodes every epoch, so validation scores stay comparable.
        num_replicas: number of ranks; default: the process group's world size, or 1.
        rank: this process's rank; default: the process group's rank, or 0.
        support_order: the order of an episode's support items. ``"by_class"``
            (default): class-major, all shots of label 0, then label 1, ... (no
            :attr:`EpisodePlan.order`). ``"random"``: a permutation of the
            ``ways * shots`` items drawn per episode from the episode's own random
            stream. Regression task distributions ignore it: their support inputs
            are drawn at random already.
    """

    def __init__(
        self,
        source: ClassIndexedDataset | TaskDistribution,
        shape: EpisodeShape,
        num_episodes: int,
        split: SplitName = "train",
        seed: int = 0,
        vary_with_epoch: bool = True,
        num_replicas: int | None = None,
        rank: int | None = None,
        support_order: SupportOrder = "by_class",
    ) -> None:
        check_support_order(support_order)
        if num_episodes < 1:
            raise EpisodeConfigError(f"num_episodes={num_episodes}: a split needs at least one episode per epoch")
        if split not in SPLIT_NAMES:
            raise EpisodeConfigError(f"split={split!r}: expected one of {SPLIT_NAMES}")
        self.source = source
        self.shape = shape
        self.num_episodes = num_episodes
        self.split: SplitName = split
        self.seed = seed
        self.vary_with_epoch = vary_with_epoch
        self.support_order: SupportOrder = support_order
        self._num_replicas = num_replicas
        self._rank = rank
        self.epoch = 0
        self._start = 0  # position to resume from, consumed by the next __iter__
        self._position = 0  # episodes yielded so far in the current epoch
        self._uniform: np.ndarray | None = None
        if isinstance(source, ClassIndexedDataset):
            self._check_classes(source, shape)
            self._class_indices = source.class_indices
            if len(set(source.class_sizes.tolist())) == 1:
                # Equal-size classes (Omniglot, glyphs) sample items with one vectorised draw.
                self._uniform = np.stack(self._class_indices)

    def _check_classes(self, source: ClassIndexedDataset, shape: EpisodeShape) -> None:
        if shape.ways > source.num_classes:
            raise EpisodeConfigError(
                f"ways={shape.ways} but the {self.split} split has only {source.num_classes} classes; "
                f"lower ways to at most {source.num_classes} or use a dataset with more classes"
            )
        needed = shape.shots + shape.queries
        small = np.flatnonzero(source.class_sizes < needed)
        if len(small):
            c = small[np.argmin(source.class_sizes[small])]
            fewest = int(source.class_sizes[c])
            others = f"{len(small)} classes have" if len(small) > 1 else "the only class with"
            if fewest >= 2:
                fix = f"lower shots or queries to fit {fewest} examples, or remove the small classes"
            else:  # a class needs one support and one query example at least: no shape fits fewer
                sizes = source.class_sizes[small]
                fix = "remove the classes with fewer than 2 examples (one support and one query example)"
                if (sizes >= 2).any():
                    fix += f", and lower shots or queries to fit {int(sizes[sizes >= 2].min())} examples"
            raise EpisodeConfigError(
                f"shots + queries = {shape.shots} + {shape.queries} = {needed} but class "
                f"{source.class_names[c]!r} of the {self.split} split has only {fewest} examples "
                f"({others} fewer than {needed}); {fix}"
            )

    # -- sharding ---------------------------------------------------------------------------
    @property
    def num_replicas(self) -> int:  # type: ignore[override]
        if self._num_replicas is not None:
            return self._num_replicas
        return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1

    @num_replicas.setter
    def num_replicas(self, value: int) -> None:
        self._num_replicas = value

    @property
    def rank(self) -> int:  # type: ignore[override]
        if self._rank is not None:
            return self._rank
        return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0

    @rank.setter
    def rank(self, value: int) -> None:
        self._rank = value

    def __len__(self) -> int:
        return math.ceil(self.num_episodes / self.num_replicas)

    # -- the stream ---------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at the start of every epoch."""
        if epoch != self.epoch:
            self._start = 0
        self.epoch = epoch

    def episode_indices(self) -> range:
        """Global indices of the episodes this rank draws in the current epoch."""
        return range(self.rank, len(self) * self.num_replicas, self.num_replicas)

    def __iter__(self) -> Iterator[EpisodePlan]:
        indices = self.episode_indices()
        start, self._start = self._start, 0
        for position in range(start, len(indices)):
            self._position = position + 1
            yield self.plan(indices[position])

    def plan(self, index: int, epoch: int | None = None) -> EpisodePlan:
        """The plan of global episode ``index`` (of the current epoch by default)."""
        epoch = self.epoch if epoch is None else epoch
        rng = episode_rng(self.seed, self.split, epoch if self.vary_with_epoch else 0, index)
        ways, shots, queries = self.shape.ways, self.shape.shots, self.shape.queries
        if isinstance(self.source, TaskDistribution):
            task = self.source.sample_task(rng)
            return EpisodePlan(task, self.source.sample_inputs(rng, shots), self.source.sample_inputs(rng, queries))
        classes = rng.choice(self.source.num_classes, size=ways, replace=False)
        if self._uniform is not None:
            pool = self._uniform[classes]
            picks = np.argsort(rng.random(pool.shape), axis=1)[:, : shots + queries]
            items = np.take_along_axis(pool, picks, axis=1)
        else:
            items = np.stack([rng.choice(self._class_indices[c], size=shots + queries, replace=False) for c in classes])
        # Drawn last, so the classes and items above do not depend on the option, nor on the augmentation seed.
        order = rng.permutation(ways * shots) if self.support_order == "random" else None
        augmentation_seed = int(rng.integers(2**63))
        return EpisodePlan(classes, items[:, :shots], items[:, shots:], order, augmentation_seed)

    # -- resuming -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Where the stream stands: the epoch and the episodes yielded in it on this rank."""
        return {"epoch": self.epoch, "position": self._position, "seed": self.seed, "split": self.split}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume: the next iteration starts after the ``position`` episodes already drawn."""
        if state.get("seed", self.seed) != self.seed or state.get("split", self.split) != self.split:
            raise EpisodeConfigError(
                f"sampler state is for seed={state.get('seed')} split={state.get('split')!r} "
                f"but this sampler has seed={self.seed} split={self.split!r}"
            )
        self.epoch = int(state["epoch"])
        self._start = self._position = int(state["position"])
