"""Class-indexed datasets, regression task distributions and their splits.

A dataset here knows its items, their integer labels and which items belong to
which class. It does not know that episodes exist: the
:class:`~lit_meta.data.sampler.EpisodeSampler` draws classes and items from it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from torch import Tensor

from lit_meta.errors import DatasetError

if TYPE_CHECKING:
    from lit_meta.data.preprocessing import ImagePreprocessing, Statistics

SplitName = Literal["train", "val", "test"]
SPLIT_NAMES: tuple[SplitName, ...] = ("train", "val", "test")

Transform = Callable[[Tensor], Tensor]


class ClassIndexedDataset(torch.utils.data.Dataset[tuple[Tensor, int]], ABC):
    """Items with integer labels, indexed by class.

    Subclasses set ``labels`` (one integer per item, values ``0 .. num_classes-1``)
    and ``class_names``, and implement :meth:`load_items`, which returns a stacked
    batch of items. Episode construction calls :meth:`load` with a whole episode's
    indices at once, so in-memory datasets gather with one tensor index.

    Args:
        labels: class of every item, shape ``[num_items]``.
        class_names: one name per class.
        class_ids: identifier of every class, kept in episodes as the "original"
            class id. Splits of one dataset family share one id space, so ids
            from different splits never coincide. Defaults to ``0 .. C-1``.
        transform: optional callable applied to each loaded item (a ``[C, H, W]``
            float tensor in ``[0, 1]`` for images).
    """

    def __init__(
        self,
        labels: np.ndarray,
        class_names: Sequence[str],
        class_ids: np.ndarray | None = None,
        transform: Transform | None = None,
    ) -> None:
        labels = np.asarray(labels, dtype=np.int64)
        if labels.ndim != 1:
            raise DatasetError(f"labels must be one-dimensional, got shape {labels.shape}")
        if len(class_names) == 0:
            raise DatasetError("a dataset needs at least one class; got none")
        if labels.size and (labels.min() < 0 or labels.max() >= len(class_names)):
            raise DatasetError(
                f"labels must lie in 0..{len(class_names) - 1} (one per class name); "
                f"got values in {labels.min()}..{labels.max()}"
            )
        self.labels = labels
        self.class_names = list(class_names)
        self.class_ids = (
            np.arange(len(class_names), dtype=np.int64) if class_ids is None else np.asarray(class_ids, dtype=np.int64)
        )
        self.transform = transform

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @cached_property
    def class_indices(self) -> list[np.ndarray]:
        """Item indices of every class, in item order."""
        order = np.argsort(self.labels, kind="stable")
        bounds = np.searchsorted(self.labels[order], np.arange(self.num_classes + 1))
        return [order[bounds[c] : bounds[c + 1]] for c in range(self.num_classes)]

    @cached_property
    def class_sizes(self) -> np.ndarray:
        return np.array([len(idx) for idx in self.class_indices], dtype=np.int64)

    @abstractmethod
    def load_items(self, indices: np.ndarray) -> Tensor:
        """Return the items at ``indices`` as stored (``uint8`` images stay ``uint8``), stacked."""

    def load(self, indices: np.ndarray) -> Tensor:
        """Items at ``indices``, stacked, as float (``uint8`` scaled to ``[0, 1]``), transformed."""
        items = self.load_items(np.asarray(indices, dtype=np.int64))
        if items.dtype == torch.uint8:
            # Converting once, after gathering and rotating, moves 4x fewer bytes; an in-place
            # division of the converted copy is faster than torch.div(uint8, 255.0), with the same
            # values (benchmarks/RESULTS.md, issue 18).
            items = items.to(torch.float32).div_(255.0)
        if self.transform is None:
            return items
        return torch.stack([self.transform(item) for item in items])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.load(np.array([index]))[0], int(self.labels[index])

    def subset(self, classes: Sequence[int] | np.ndarray) -> ClassSubset:
        """A view holding only the given classes (local class numbers)."""
        return ClassSubset(self, np.asarray(classes, dtype=np.int64))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(classes={self.num_classes}, items={len(self)})"


class TensorClassDataset(ClassIndexedDataset):
    """A class-indexed dataset held in memory as one tensor.

    Images are stored as ``uint8`` ``[N, C, H, W]`` and loaded as float in
    ``[0, 1]``; float data is loaded as stored.
    """

    def __init__(
        self,
        data: Tensor,
        labels: np.ndarray,
        class_names: Sequence[str],
        class_ids: np.ndarray | None = None,
        transform: Transform | None = None,
    ) -> None:
        super().__init__(labels, class_names, class_ids, transform)
        if len(data) != len(self.labels):
            raise DatasetError(f"{len(data)} items but {len(self.labels)} labels")
        self.data = data

    def load_items(self, indices: np.ndarray) -> Tensor:
        # index_select is ~20x faster than advanced indexing for a few rows of uint8.
        return self.data.index_select(0, torch.from_numpy(indices))


class ClassSubset(ClassIndexedDataset):
    """The classes ``classes`` of ``parent``, relabelled ``0 .. len(classes)-1``.

    Used to build meta-train/val/test splits: each split is a subset of disjoint
    classes of one family, and keeps the family's class ids and transform.
    """

    def __init__(self, parent: ClassIndexedDataset, classes: np.ndarray) -> None:
        if len(np.unique(classes)) != len(classes):
            raise DatasetError("a class subset lists a class twice")
        if len(classes) and (classes.min() < 0 or classes.max() >= parent.num_classes):
            raise DatasetError(
                f"class numbers must lie in 0..{parent.num_classes - 1}; got {classes.min()}..{classes.max()}"
            )
        self.parent = parent
        item_index = (
            np.concatenate([parent.class_indices[c] for c in classes]) if len(classes) else np.zeros(0, np.int64)
        )
        local = np.repeat(np.arange(len(classes)), [len(parent.class_indices[c]) for c in classes])
        self.parent_indices = item_index
        super().__init__(
            labels=local,
            class_names=[parent.class_names[c] for c in classes],
            class_ids=parent.class_ids[classes],
            transform=parent.transform,
        )

    def load_items(self, indices: np.ndarray) -> Tensor:
        return self.parent.load_items(self.parent_indices[indices])


class RotatedClasses(ClassIndexedDataset):
    """Each class of ``base`` rotated by each angle in ``rotations`` becomes a new class.

    The augmentation of Santoro et al. (2016), Vinyals et al. (2016) and Finn et al.
    (2017) for Omniglot. Class ``c * R + r`` is class ``c`` rotated by
    ``rotations[r]`` degrees counter-clockwise; item ``i * R + r`` likewise. Rotate
    after splitting, so all rotations of a character stay in one split. The
    base's transform applies after the rotation.
    """

    def __init__(self, base: ClassIndexedDataset, rotations: Sequence[int]) -> None:
        rotations = tuple(int(r) for r in rotations)
        bad = [r for r in rotations if r % 90 != 0 or not 0 <= r < 360]
        if bad or not rotations or len(set(rotations)) != len(rotations):
            raise DatasetError(
                f"rotations must be distinct multiples of 90 in [0, 360), e.g. (0, 90, 180, 270); got {rotations}"
            )
        self.base = base
        self.rotations = rotations
        n_rot = len(rotations)
        super().__init__(
            labels=(base.labels[:, None] * n_rot + np.arange(n_rot)).reshape(-1),
            class_names=[f"{name}/rot{r}" if r else name for name in base.class_names for r in rotations],
            class_ids=(base.class_ids[:, None] * 4 + np.array([r // 90 for r in rotations])).reshape(-1),
            transform=base.transform,
        )
        self._quarter_turns = np.array([r // 90 for r in rotations])

    def load_items(self, indices: np.ndarray) -> Tensor:
        n_rot = len(self.rotations)
        base_indices, turns = np.divmod(indices, n_rot)
        groups = [np.flatnonzero(turns == r) for r in range(n_rot)]
        items: Tensor | None = None
        for r, positions in enumerate(groups):
            if len(positions) == 0:
                continue
            part = self.base.load_items(base_indices[positions])
            if self._quarter_turns[r]:
                part = torch.rot90(part, int(self._quarter_turns[r]), dims=(-2, -1))
            if len(positions) == len(indices):
                return part.contiguous()
            if items is None:
                items = part.new_empty((len(indices), *part.shape[1:]))
            items.index_copy_(0, torch.from_numpy(positions), part)
        assert items is not None
        return items


class TaskDistribution(ABC):
    """A distribution over regression tasks (functions), e.g. sinusoids.

    Unlimited tasks: a task is a parameter vector drawn by :meth:`sample_task`;
    inputs come from :meth:`sample_inputs` and targets from :meth:`evaluate`.
    Splits differ only in the random stream they are drawn from.
    """

    @abstractmethod
    def sample_task(self, rng: np.random.Generator) -> np.ndarray:
        """Draw one task's parameters."""

    @abstractmethod
    def sample_inputs(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """Draw ``n`` inputs, shape ``[n, input_dim]``."""

    @abstractmethod
    def evaluate(self, task: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Targets of ``task`` at inputs ``x``, shape ``[n, output_dim]``."""


class MetaDataset(ABC):
    """A dataset family that provides disjoint meta-train/val/test splits.

    :meth:`prepare` fetches what is missing (called once per node, from
    ``LightningDataModule.prepare_data``); :meth:`split` builds one split.
    """

    def prepare(self) -> None:  # noqa: B027 - embedded datasets have nothing to fetch
        """Download or generate files that are absent. Default: nothing to do."""

    @abstractmethod
    def split(self, name: SplitName) -> ClassIndexedDataset | TaskDistribution:
        """The meta-train (``"train"``), meta-val (``"val"``) or meta-test (``"test"``) split."""

    def has_split(self, name: SplitName) -> bool:
        """Whether the family has classes for split ``name``; default ``True``.

        A scheme without validation classes (Omniglot's ``"santoro"``) says ``False`` for
        ``"val"``: :class:`~lit_meta.data.datamodule.EpisodicDataModule` then skips validation.
        """
        return True

    def image_preprocessing(self) -> ImagePreprocessing | None:
        """How an image file becomes one of this family's items, or ``None`` if items are not images.

        Checkpoints store it, so ``lit-meta adapt`` decodes new images as training
        did. Default ``None`` (regression tasks, or a family that does not say).
        """
        return None

    def normalization(self) -> Statistics | None:
        """Per-channel ``(mean, std)`` of the family's images in ``[0, 1]``, as its papers publish them.

        ``EpisodicDataModule(normalize=True)`` normalises every split's items with them
        (``(x - mean) / std``, after any augmentation) and stores them in checkpoints with
        the :meth:`image_preprocessing`. Default ``None``: the family publishes none.
        """
        return None


def split_classes_by_fraction(num_classes: int, fractions: Sequence[float], seed: int) -> tuple[np.ndarray, ...]:
    """Partition ``0 .. num_classes-1`` into disjoint groups of the given fractions.

    A seeded permutation; the last group takes the rounding remainder.
    """
    if any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise DatasetError(f"split fractions must be non-negative and sum to 1; got {tuple(fractions)}")
    order = np.random.default_rng(seed).permutation(num_classes)
    sizes = [round(f * num_classes) for f in fractions[:-1]]
    bounds = np.cumsum([0, *sizes])
    if bounds[-1] > num_classes:
        raise DatasetError(f"split fractions {tuple(fractions)} ask for more than {num_classes} classes")
    groups = [np.sort(order[bounds[i] : bounds[i + 1]]) for i in range(len(sizes))]
    groups.append(np.sort(order[bounds[-1] :]))
    return tuple(groups)
