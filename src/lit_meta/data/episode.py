"""Episodes: the support and query sets of one few-shot task, and batches of them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from lit_meta.data.affine import AffineDistortion
from lit_meta.data.augmentation import EpisodeAugmentation
from lit_meta.data.datasets.base import ClassIndexedDataset, TaskDistribution
from lit_meta.data.preprocessing import Statistics, normalize

if TYPE_CHECKING:
    from lit_meta.data.sampler import EpisodePlan


@dataclass
class _EpisodeTensors:
    """Shared tensor plumbing: device moves, pinning, field access."""

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor
    classes: Tensor

    def _map(self, fn: Any) -> Any:
        return type(self)(**{f.name: fn(getattr(self, f.name)) for f in fields(self)})

    def to(self, *args: Any, **kwargs: Any) -> Any:
        """Move every tensor, like :meth:`torch.Tensor.to`.

        Lightning's batch transfer calls this, so an episode reaches the
        learner's device without a custom ``transfer_batch_to_device``.
        Only floating-point tensors change dtype; labels and class ids stay integer.
        """

        def move(t: Tensor) -> Tensor:
            moved = t.to(*args, **kwargs)
            if moved.dtype == t.dtype or t.is_floating_point():
                return moved
            return t.to(moved.device, non_blocking=kwargs.get("non_blocking", False))

        return self._map(move)

    def pin_memory(self) -> Any:
        """Pinned copy, used by ``DataLoader(pin_memory=True)``."""
        return self._map(Tensor.pin_memory)

    @property
    def is_classification(self) -> bool:
        return not self.support_y.is_floating_point()


@dataclass
class Episode(_EpisodeTensors):
    """One N-way K-shot task.

    Attributes:
        support_x: ``[ways * shots, *item_shape]``, class-major (all shots of label
            0, then label 1, ...) unless the datamodule's ``support_order="random"``:
            then in a random order drawn per episode, for sequence learners.
        support_y: ``[ways * shots]`` labels ``0 .. ways-1`` of the support items,
            in their order (sorted only when class-major), or ``[shots, output_dim]``
            float targets (regression).
        query_x: ``[ways * queries, *item_shape]``, always class-major.
        query_y: ``[ways * queries]`` labels, or ``[queries, output_dim]`` targets.
        classes: ``[ways]`` original class ids: ``classes[label]`` is the dataset's
            class id behind episode label ``label``. Empty for regression.
    """

    @property
    def ways(self) -> int:
        return len(self.classes) if self.is_classification else 1


@dataclass
class EpisodeBatch(_EpisodeTensors):
    """A meta-batch: the fields of :class:`Episode` with a leading task dimension.

    ``support_x`` is ``[tasks, ways * shots, *item_shape]`` and so on. Index it to
    get one :class:`Episode`, iterate over it for each in turn; ``len`` is the number of tasks.

    Lightning infers the batch size of ``self.log`` from it as the number of tasks: it reads
    a dataclass's fields, whose leading dimension is the task. Iteration therefore goes
    through ``__getitem__`` (Python's sequence protocol) and the class defines no
    ``__iter__``: Lightning would take an iterable for a collection of samples and read the
    size of the first episode's support set (``ways * shots``) instead.
    """

    def __len__(self) -> int:
        return self.support_x.shape[0]

    def __getitem__(self, task: int) -> Episode:
        if not -len(self) <= task < len(self):
            raise IndexError(f"task {task} of a meta-batch of {len(self)}")  # also ends iteration
        return Episode(**{f.name: getattr(self, f.name)[task] for f in fields(self)})

    @property
    def ways(self) -> int:
        return self.classes.shape[1] if self.is_classification else 1


def collate_episodes(episodes: Sequence[Episode]) -> EpisodeBatch:
    """Stack episodes of equal shape into an :class:`EpisodeBatch` (a DataLoader ``collate_fn``).

    A single episode's tensors are not copied: the batch holds views of them.
    """
    if not episodes:
        raise ValueError("cannot collate an empty list of episodes")
    if len(episodes) == 1:  # views, not a copy of every image
        return EpisodeBatch(**{f.name: getattr(episodes[0], f.name).unsqueeze(0) for f in fields(Episode)})
    return EpisodeBatch(**{f.name: torch.stack([getattr(e, f.name) for e in episodes]) for f in fields(Episode)})


class EpisodeDataset(torch.utils.data.Dataset[Episode]):
    """Turns the :class:`~lit_meta.data.sampler.EpisodePlan` s of an
    :class:`~lit_meta.data.sampler.EpisodeSampler` into :class:`Episode` s.

    Used as a ``DataLoader`` dataset with the sampler as its ``sampler``: the
    loader passes each plan to ``__getitem__``. Labels are the positions of the
    classes in the plan, which the sampler drew in random order, so the label of
    a class differs from episode to episode. A plan's support ``order``, if any,
    reorders the support items and their labels together; queries stay
    class-major.

    Args:
        source: the split the plans were drawn from.
        augmentation: applied to all of an episode's items (support and query) at once,
            with a ``torch.Generator`` seeded by the plan's
            :attr:`~lit_meta.data.sampler.EpisodePlan.augmentation_seed`: the same
            plan gives the same pixels, in any worker process and after a resume.
            Classification splits of images only.
        normalization: per-channel ``(mean, std)`` the items are normalised with, after
            the augmentation (:func:`~lit_meta.data.preprocessing.normalize`).
    """

    def __init__(
        self,
        source: ClassIndexedDataset | TaskDistribution,
        augmentation: EpisodeAugmentation | AffineDistortion | None = None,
        normalization: Statistics | None = None,
    ) -> None:
        self.source = source
        self.augmentation = augmentation
        self.normalization = normalization

    def __getitem__(self, plan: EpisodePlan) -> Episode:  # type: ignore[override]
        source = self.source
        if isinstance(source, TaskDistribution):
            return Episode(
                support_x=torch.from_numpy(plan.support).float(),
                support_y=torch.from_numpy(source.evaluate(plan.task, plan.support)).float(),
                query_x=torch.from_numpy(plan.query).float(),
                query_y=torch.from_numpy(source.evaluate(plan.task, plan.query)).float(),
                classes=torch.zeros(0, dtype=torch.long),
            )
        ways, shots = plan.support.shape
        queries = plan.query.shape[1]
        support = plan.support.reshape(-1)
        support_y = torch.arange(ways).repeat_interleave(shots)
        if plan.order is not None:
            # Reorder the indices before loading: the items follow at no cost, each with its label.
            support = support[plan.order]
            support_y = support_y[torch.from_numpy(plan.order)]
        items = source.load(np.concatenate([support, plan.query.reshape(-1)]))
        if self.augmentation is not None:
            items = self.augmentation(items, torch.Generator().manual_seed(plan.augmentation_seed))
        if self.normalization is not None:
            items = normalize(items, *self.normalization)
        labels = torch.arange(ways)
        return Episode(
            support_x=items[: ways * shots],
            support_y=support_y,
            query_x=items[ways * shots :],
            query_y=labels.repeat_interleave(queries),
            classes=torch.from_numpy(source.class_ids[plan.task]),
        )

    def __len__(self) -> int:
        raise TypeError("an EpisodeDataset is indexed by episode plans; its length is the sampler's")
