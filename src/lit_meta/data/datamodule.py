"""EpisodicDataModule: meta-train/val/test episode streams for the Lightning Trainer."""

from __future__ import annotations

import contextlib
import dataclasses
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader

from lit_meta.data.affine import AffineDistortion
from lit_meta.data.augmentation import EpisodeAugmentation
from lit_meta.data.datasets import MetaDataset, build_dataset
from lit_meta.data.datasets.base import SPLIT_NAMES, ClassIndexedDataset, SplitName, TaskDistribution
from lit_meta.data.episode import EpisodeDataset, collate_episodes
from lit_meta.data.preprocessing import Statistics, check_normalization
from lit_meta.data.sampler import EpisodeSampler, EpisodeShape, SupportOrder, check_support_order
from lit_meta.data.transform_paths import transform_path
from lit_meta.errors import AugmentationError, DatasetError, EpisodeConfigError


class EpisodicDataModule(L.LightningDataModule):
    """Streams of N-way K-shot episodes from the disjoint class splits of a dataset.

    Each split yields an :class:`~lit_meta.data.episode.EpisodeBatch` of
    ``meta_batch_size`` tasks per step. Training draws new episodes every epoch;
    validation and test draw the same fixed episodes every time, so their scores
    are comparable across epochs and runs. The literature reports test accuracy
    over 600 episodes, the default here.

    A dataset may have no classes for a split: Omniglot's ``"santoro"`` scheme
    (Santoro et al., 2016) holds out none for validation. A dataset says so with
    :meth:`~lit_meta.data.datasets.MetaDataset.has_split`. Such a split gets no
    sampler (it is listed in :attr:`empty_splits`) and asking for its episodes (:meth:`episode_loader`) raises
    :class:`~lit_meta.errors.DatasetError`. Without val classes validation is
    skipped: :meth:`setup` sets the attached Trainer's ``limit_val_batches`` to 0
    (restored in :meth:`teardown`), which turns validation and its sanity check
    off without a warning, and :meth:`val_dataloader` returns ``[]`` when called
    anyway. (Returning ``[]`` alone also skips validation, but Lightning 2 warns
    that the val loader's length is zero.) A callback that monitors a validation
    metric has nothing to monitor then.

    Example::

        dm = EpisodicDataModule("omniglot", root="data", ways=5, shots=1, queries=15, meta_batch_size=32)

    Args:
        dataset: a registered name (see :data:`lit_meta.data.datasets.DATASETS`)
            or a :class:`~lit_meta.data.datasets.MetaDataset` instance.
        root: where datasets that read files keep them; default: each
            dataset's own (``data`` for Omniglot, the user cache for the glyphs).
        dataset_kwargs: extra constructor arguments of a dataset given by name.
            ``"transform"`` (image datasets: ``glyphs``, ``omniglot``,
            ``image_folder``) is a function applied to every item, a float
            ``[C, H, W]`` tensor in ``[0, 1]``, returning one; it must be defined
            with ``def`` at the top level of a module, and is given as the function
            or as its import path (``"my_transforms.augment"``, the form a YAML
            config uses). The hyperparameters, and so checkpoints, keep the import
            path (:mod:`~lit_meta.data.transform_paths`), so checkpoints load with
            ``weights_only=True``; a lambda, a function defined inside another, or
            an object (a ``functools.partial``) is refused with
            :class:`~lit_meta.errors.TransformError` before any training.
        ways: classes per episode (all splits unless overridden). Regression
            datasets have no classes and ignore it.
        shots: labelled support examples per class.
        queries: query examples per class.
        train_ways: ways for meta-training only, e.g. 60-way training for 5-way
            testing (Snell et al., 2017). Likewise ``train_shots``,
            ``train_queries``, ``eval_ways``, ``eval_shots``, ``eval_queries``
            (``eval`` = validation and test).
        meta_batch_size: tasks per training step. An epoch must fill at least one step:
            ``meta_batch_size`` larger than ``train_episodes`` (or, under DDP, than the
            ``ceil(train_episodes / world_size)`` episodes of each rank) raises
            :class:`~lit_meta.errors.EpisodeConfigError`. When the episodes of an epoch are
            not a multiple of it, the epoch ends with a shorter step (every episode is
            used, none dropped) and a warning says so once.
        eval_meta_batch_size: tasks per validation/test step; default ``meta_batch_size``.
            The last validation/test step may hold fewer tasks (all of the episodes when
            they are fewer than a step); evaluation covers every episode either way.
        train_episodes: training episodes per epoch (over all ranks).
        val_episodes: validation episodes (fixed across epochs).
        test_episodes: test episodes (fixed; 600 as in the literature).
        num_workers: DataLoader worker processes.
        pin_memory: pin batches for faster host-to-GPU copies.
        seed: seeds every episode stream; episode ``i`` of epoch ``e`` of a split
            depends only on ``(seed, split, e, i)``.
        support_order: the order of each episode's support set, in every split.
            ``"by_class"`` (default): class-major, all shots of label 0, then label
            1, ... ``"random"``: the ``ways * shots`` support items in a random
            order drawn per episode (seeded like everything else, so still a
            function of ``(seed, split, e, i)``; the classes and items of an episode
            do not change). Sequence learners need it, as they read the support as
            an ordered sequence and a class-major order would give labels away by
            position (MANN, Santoro et al., 2016, predicts each support label before
            seeing it; SNAIL, Mishra et al., 2018). Learners that treat the support
            as a set are unaffected. Queries stay class-major; regression datasets
            ignore it (their support inputs are random already).
        augmentation: train-time augmentation of the meta-train episodes' images, support
            and query (:class:`~lit_meta.data.augmentation.EpisodeAugmentation`: random
            resized crop, horizontal flip, colour jitter); validation and test episodes
            are never augmented. Seeded per episode, so still a function of ``(seed,
            split, e, i)``, in any worker and after a resume. In YAML:
            ``augmentation: {horizontal_flip: 0.0}`` (unnamed fields keep their
            defaults); the hyperparameters keep its fields as a plain mapping, which
            this argument also accepts. Or
            :class:`~lit_meta.data.affine.AffineDistortion`, Koch et al.'s (2015) random
            affine distortions, in YAML ``augmentation: {class_path:
            lit_meta.data.AffineDistortion, init_args: {...}}`` (its hyperparameters keep
            that form). Default ``None``: no augmentation.
        normalize: normalise the items of every split per channel with the dataset's
            published statistics (:meth:`~lit_meta.data.datasets.MetaDataset.normalization`),
            after any augmentation; checkpoints then store them with the image
            preprocessing, so ``lit-meta adapt`` normalises new images the same way. A
            dataset without statistics raises :class:`~lit_meta.errors.DatasetError`.
    """

    def __init__(
        self,
        dataset: str | MetaDataset = "glyphs",
        root: str | None = None,
        dataset_kwargs: dict[str, Any] | None = None,
        ways: int = 5,
        shots: int = 1,
        queries: int = 15,
        train_ways: int | None = None,
        train_shots: int | None = None,
        train_queries: int | None = None,
        eval_ways: int | None = None,
        eval_shots: int | None = None,
        eval_queries: int | None = None,
        meta_batch_size: int = 32,
        eval_meta_batch_size: int | None = None,
        train_episodes: int = 32_000,
        val_episodes: int = 200,
        test_episodes: int = 600,
        num_workers: int = 0,
        pin_memory: bool = False,
        seed: int = 0,
        support_order: SupportOrder = "by_class",
        augmentation: EpisodeAugmentation | AffineDistortion | None = None,
        normalize: bool = False,
    ) -> None:
        super().__init__()
        if dataset_kwargs and dataset_kwargs.get("transform") is not None:
            # Kept as an import path: a function pickled into checkpoints breaks weights_only=True loading.
            dataset_kwargs = {**dataset_kwargs, "transform": transform_path(dataset_kwargs["transform"])}
        if isinstance(augmentation, Mapping):  # the form the hyperparameters keep
            augmentation = _augmentation_from_mapping(augmentation)
        self.augmentation = augmentation
        # Kept as plain values: a dataclass pickled into checkpoints breaks weights_only=True loading.
        augmentation = _augmentation_mapping(augmentation)  # type: ignore[assignment]
        self.save_hyperparameters(ignore=[] if isinstance(dataset, str) else ["dataset"])
        for option, size in (("meta_batch_size", meta_batch_size), ("eval_meta_batch_size", eval_meta_batch_size)):
            if size is not None and size < 1:
                raise EpisodeConfigError(f"{option}={size}: a step needs at least one task; set {option} >= 1")
        if 0 < train_episodes < meta_batch_size:
            raise EpisodeConfigError(_unfilled_step_message(meta_batch_size, train_episodes, train_episodes, 1))
        if num_workers < 0:
            raise EpisodeConfigError(f"num_workers={num_workers}: use 0 (load in the main process) or more")
        check_support_order(support_order)
        # Episode shapes are checked here so a bad config fails before any data is read. An explicit 0 is an
        # error of the shape, not a request for the default; an error names the option that set the value.
        defaults = {"ways": ways, "shots": shots, "queries": queries}
        stages = {"train": (train_ways, train_shots, train_queries), "eval": (eval_ways, eval_shots, eval_queries)}
        self._options: dict[SplitName, dict[str, str]] = {}  # split -> shape field -> the option that set it
        self.shapes: dict[SplitName, EpisodeShape] = {}
        for stage, given in stages.items():
            options = {
                field: field if value is None else f"{stage}_{field}"
                for field, value in zip(defaults, given, strict=True)
            }
            with _naming_options(options):
                shape = EpisodeShape(*map(_or_default, given, defaults.values()))
            for split in ("train",) if stage == "train" else ("val", "test"):
                self.shapes[split], self._options[split] = shape, options
        if isinstance(dataset, str):
            dataset = build_dataset(dataset, root=root, **(dataset_kwargs or {}))
        elif dataset_kwargs:
            raise EpisodeConfigError("dataset_kwargs only apply to a dataset given by name; got an instance")
        self.dataset = dataset
        self.statistics = self._statistics() if normalize else None
        self.num_episodes: dict[SplitName, int] = {"train": train_episodes, "val": val_episodes, "test": test_episodes}
        self.batch_sizes: dict[SplitName, int] = {
            "train": meta_batch_size,
            "val": eval_meta_batch_size or meta_batch_size,
            "test": eval_meta_batch_size or meta_batch_size,
        }
        self.splits: dict[SplitName, ClassIndexedDataset | TaskDistribution] = {}
        self.samplers: dict[SplitName, EpisodeSampler] = {}
        self.empty_splits: set[SplitName] = set()  # splits without classes (the dataset's has_split): no sampler
        self._pending_sampler_state: dict[str, Any] = {}
        self._limit_val_batches: int | float | None = None  # the Trainer's own, while validation is off
        self._said_short_step = False  # the warning about an epoch's shorter last training step

    def _statistics(self) -> Statistics:
        """The dataset's normalisation statistics, checked against its channels."""
        name = self.hparams.dataset if isinstance(self.hparams.get("dataset"), str) else repr(self.dataset)
        statistics = self.dataset.normalization()
        if statistics is None:
            raise DatasetError(
                f"normalize=True but dataset {name!r} publishes no normalisation statistics "
                f"({type(self.dataset).__name__}.normalization() returns None); set normalize=False, or use a "
                "dataset that has them (image_folder: give dataset_kwargs mean and std, one value per channel)"
            )
        preprocessing = self.dataset.image_preprocessing()
        return check_normalization(
            *statistics, preprocessing and preprocessing.channels, f"the normalization() of dataset {name!r}"
        )

    def prepare_data(self) -> None:
        """Download or generate what the dataset lacks (once per node)."""
        self.dataset.prepare()

    def setup(self, stage: str | None = None) -> None:
        """Build the splits and their samplers; checks every episode shape against its split."""
        wanted: tuple[SplitName, ...] = {
            "fit": ("train", "val"),
            "validate": ("val",),
            "test": ("test",),
            "predict": ("test",),
        }.get(stage or "", SPLIT_NAMES)
        for split in wanted:
            if split in self.samplers or split in self.empty_splits:
                continue
            if not self.dataset.has_split(split):
                self.empty_splits.add(split)
                continue
            if self.num_episodes[split] < 1:
                raise EpisodeConfigError(
                    f"{split}_episodes={self.num_episodes[split]}: the {split} split needs at least one episode; "
                    f"set {split}_episodes >= 1"
                )
            self.splits[split] = self.dataset.split(split)
            if split == "train" and self.augmentation is not None and isinstance(self.splits[split], TaskDistribution):
                raise AugmentationError(
                    f"augmentation is set but dataset {self.dataset!r} draws regression tasks, not images; "
                    "remove augmentation"
                )
            with _naming_options(self._options[split]):
                sampler = EpisodeSampler(
                    self.splits[split],
                    self.shapes[split],
                    num_episodes=self.num_episodes[split],
                    split=split,
                    seed=self.hparams.seed,
                    vary_with_epoch=split == "train",
                    support_order=self.hparams.support_order,
                )
            if split in self._pending_sampler_state:
                sampler.load_state_dict(self._pending_sampler_state.pop(split))
            self.samplers[split] = sampler
        trainer = self.trainer
        if "val" in self.empty_splits and stage in ("fit", "validate") and trainer is not None:
            # Lightning would skip the [] of val_dataloader() too, but with a warning about its zero length.
            if self._limit_val_batches is None:
                self._limit_val_batches = trainer.limit_val_batches
            trainer.limit_val_batches = 0

    def teardown(self, stage: str) -> None:
        """Give the Trainer back the ``limit_val_batches`` that :meth:`setup` set to 0, if it did."""
        if self._limit_val_batches is not None and self.trainer is not None:
            self.trainer.limit_val_batches = self._limit_val_batches
        self._limit_val_batches = None

    def episode_loader(self, split: SplitName) -> DataLoader:
        """A plain :class:`~torch.utils.data.DataLoader` of episode batches from ``split``.

        Raises:
            DatasetError: if the dataset has no classes for ``split`` (see :attr:`empty_splits`).
            EpisodeConfigError: for ``"train"``, if this rank's episodes per epoch cannot fill
                one step of ``meta_batch_size`` tasks.
        """
        if split not in self.samplers:
            self.setup()
        if split in self.empty_splits:
            skip = " (a Trainer given this datamodule skips validation by itself)"
            raise DatasetError(
                f"no {split} episodes: {self.dataset!r} holds no {split} classes. Use a dataset or split scheme "
                f"with {split} classes (Omniglot: split='vinyals' or 'lake'), or do not ask for {split} episodes"
                f"{skip if split == 'val' else ''}"
            )
        if split == "train":
            self._check_train_steps()
        workers = self.hparams.num_workers
        options: dict[str, Any] = {
            "batch_size": self.batch_sizes[split],
            "sampler": self.samplers[split],
            "collate_fn": collate_episodes,
            "num_workers": workers,
            "pin_memory": self.hparams.pin_memory,
            "persistent_workers": workers > 0,
        }
        dataset = EpisodeDataset(self.splits[split], self.augmentation if split == "train" else None, self.statistics)
        if split == "train":
            return _PositionKeptByDataModule(dataset, epoch_of=self._fitting_epoch, **options)
        return DataLoader(dataset, **options)

    def _fitting_epoch(self) -> int | None:
        """The Trainer's ``current_epoch`` while it fits: the epoch whose training episodes come next; else ``None``."""
        trainer = self.trainer
        return trainer.current_epoch if trainer is not None and trainer.state.fn == "fit" else None

    def _check_train_steps(self) -> None:
        """Every training step gets ``meta_batch_size`` tasks but perhaps the last of an epoch, which says so.

        Checked when the loader is built, as the world size (DDP) is known only then.
        """
        sampler, batch = self.samplers["train"], self.batch_sizes["train"]
        per_rank, ranks = len(sampler), sampler.num_replicas
        if batch > per_rank:
            raise EpisodeConfigError(_unfilled_step_message(batch, sampler.num_episodes, per_rank, ranks))
        if per_rank % batch and not self._said_short_step:
            self._said_short_step = True
            on_each = f" on each of {ranks} ranks" if ranks > 1 else ""
            rank_zero_warn(
                f"train_episodes={sampler.num_episodes} gives {per_rank} episodes per epoch{on_each}, not a multiple "
                f"of meta_batch_size={batch}: each epoch ends with a step of {per_rank % batch} tasks (every episode "
                f"is used). Set train_episodes to a multiple of {batch * ranks} for equal steps"
            )

    def train_dataloader(self) -> DataLoader:
        return self.episode_loader("train")

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        """Validation episodes, or ``[]`` (no validation) if the dataset has no val classes."""
        if "val" not in self.samplers:
            self.setup()
        return [] if "val" in self.empty_splits else self.episode_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self.episode_loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self.episode_loader("test")

    def state_dict(self) -> dict[str, Any]:
        """The training stream's position, saved in Lightning checkpoints.

        The position is the number of episodes the training steps have consumed,
        not the number drawn: DataLoader workers and Lightning's prefetching draw
        ahead, so the sampler's own count would skip episodes on resume. Resuming
        from any checkpoint, mid-epoch included, therefore replays exactly the
        episodes of an uninterrupted run. Validation and test draw their fixed
        episodes from the first every time they run, so their positions are not
        kept: a validation of the resumed run scores the episodes the
        uninterrupted run's does.
        """
        samplers: dict[str, Any] = {}
        if "train" in self.samplers:
            samplers["train"] = self.samplers["train"].state_dict()
            if (epoch := self._fitting_epoch()) is not None:
                consumed = self.trainer.fit_loop.epoch_loop.batch_progress.current.processed
                samplers["train"].update(epoch=epoch, position=consumed * self.batch_sizes["train"])
        state: dict[str, Any] = {"samplers": samplers}
        # Image decoding, so `lit-meta adapt` reads new images as training did (not restored on resume).
        if (preprocessing := self.dataset.image_preprocessing()) is not None:
            if self.statistics is not None:
                preprocessing = dataclasses.replace(preprocessing, mean=self.statistics[0], std=self.statistics[1])
            state["preprocessing"] = preprocessing.to_dict()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the training stream's position (applied when its sampler is built, if not yet).

        Older checkpoints also hold the positions of the validation and test streams, after
        their last full pass: those are ignored, so the next validation scores every episode."""
        state = state_dict.get("samplers", {}).get("train")
        if state is None:
            return
        if "train" in self.samplers:
            self.samplers["train"].load_state_dict(state)
        else:
            self._pending_sampler_state["train"] = state


class _PositionKeptByDataModule(DataLoader):
    """The training loader. Its position is kept by :meth:`EpisodicDataModule.state_dict` (episodes
    consumed, so resuming mid-epoch replays the uninterrupted run); having ``state_dict`` /
    ``load_state_dict`` of its own, with nothing more to keep, tells Lightning it resumes, so
    Lightning does not warn at every mid-epoch resume that the loader is not resumable.

    Before each pass it gives its sampler the epoch that ``epoch_of`` returns (the Trainer's
    ``current_epoch`` while fitting). Lightning calls ``set_epoch`` with its count of processed
    epochs, which equals ``current_epoch`` in an uninterrupted run but runs one ahead for the rest
    of a run resumed from a checkpoint saved at an epoch's end after its validation, as
    ``ModelCheckpoint(monitor=...)`` and its ``last.ckpt`` are: that run would draw epoch e + 1's
    episodes where the uninterrupted run draws epoch e's.
    """

    def __init__(self, *args: Any, epoch_of: Callable[[], int | None] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.epoch_of = epoch_of

    def __iter__(self) -> Iterator[Any]:
        epoch = self.epoch_of() if self.epoch_of is not None else None
        if epoch is not None:
            self.sampler.set_epoch(epoch)  # type: ignore[attr-defined]
        return super().__iter__()

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Nothing to restore: the datamodule restores the sampler's position."""


@contextlib.contextmanager
def _naming_options(options: dict[str, str]) -> Iterator[None]:
    """Re-raises an :class:`~lit_meta.errors.EpisodeConfigError` about ``ways``, ``shots`` or ``queries``
    with the datamodule options that set them (``options``: field -> option, e.g. ``"ways"`` ->
    ``"train_ways"``), so the message names the key to change."""
    try:
        yield
    except EpisodeConfigError as error:
        renamed = {field: option for field, option in options.items() if option != field}
        if not renamed:
            raise
        pattern = re.compile(rf"\b({'|'.join(renamed)})\b")
        raise EpisodeConfigError(pattern.sub(lambda match: renamed[match[1]], str(error))) from None


def _or_default(value: int | None, default: int) -> int:
    """``value``, or ``default`` when it is None."""
    return default if value is None else value


def _unfilled_step_message(meta_batch_size: int, train_episodes: int, per_rank: int, ranks: int) -> str:
    """Why ``meta_batch_size`` tasks per step do not fit in an epoch, and the fix."""
    if ranks > 1:
        drawn = f"each of the {ranks} ranks draws only {per_rank} of the train_episodes={train_episodes} of an epoch"
        needed = f"{meta_batch_size * ranks} (meta_batch_size x {ranks} ranks)"
    else:
        drawn, needed = f"train_episodes={train_episodes} per epoch", str(meta_batch_size)
    return (
        f"meta_batch_size={meta_batch_size} but {drawn}: every training step would hold {per_rank} tasks, not "
        f"{meta_batch_size}. Raise train_episodes to at least {needed}, or lower meta_batch_size to at most {per_rank}"
    )


def _augmentation_mapping(augmentation: EpisodeAugmentation | AffineDistortion | None) -> dict[str, Any] | None:
    """The plain values the hyperparameters keep: an :class:`EpisodeAugmentation`'s fields (the
    older form), any other augmentation as ``{"class_path", "init_args"}``."""
    if augmentation is None or isinstance(augmentation, EpisodeAugmentation):
        return None if augmentation is None else dataclasses.asdict(augmentation)
    cls = type(augmentation)
    return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": dataclasses.asdict(augmentation)}


def _augmentation_from_mapping(values: Mapping[str, Any]) -> EpisodeAugmentation | AffineDistortion:
    """The augmentation a mapping of :func:`_augmentation_mapping` describes (only lit-meta's classes)."""
    if "class_path" not in values:
        return EpisodeAugmentation(**values)
    classes = {f"{cls.__module__}.{cls.__qualname__}": cls for cls in (EpisodeAugmentation, AffineDistortion)}
    classes |= {f"lit_meta.data.{cls.__name__}": cls for cls in classes.values()}
    cls = classes.get(str(values["class_path"]))
    if cls is None:
        raise AugmentationError(
            f"augmentation class_path {values['class_path']!r}: use lit_meta.data.EpisodeAugmentation or "
            "lit_meta.data.AffineDistortion"
        )
    return cls(**(values.get("init_args") or {}))
