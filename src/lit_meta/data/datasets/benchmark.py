"""ImageBenchmark: the shared machinery of the published few-shot image benchmarks.

miniImageNet, tieredImageNet, CIFAR-FS, FC100 and CUB differ in where their files come
from and how they are laid out; everything after that is shared and lives here:

* the published class split (:meth:`ImageBenchmark.split_table`) and its sizes
  (:attr:`ImageBenchmark.SPLIT_SIZES`), checked against what a root holds
  (:meth:`ImageBenchmark.check`, behind ``lit-meta data check``);
* decoding once into a plain-array cache (:mod:`lit_meta.data.array_cache`) that later
  loads memory-map without unpickling anything (:meth:`ImageBenchmark.prepare`, behind
  ``lit-meta data prepare``);
* the splits as in-memory :class:`~lit_meta.data.datasets.base.TensorClassDataset` s,
  and the image preprocessing and normalisation statistics that checkpoints store.

A family implements four hooks: :meth:`~ImageBenchmark.split_table`,
:meth:`~ImageBenchmark.locate` (find the files in one of the forms it reads, or say
which files to obtain and where to put them), :meth:`~ImageBenchmark.inventory` (images
per class, without decoding) and :meth:`~ImageBenchmark.decode`; a downloadable one
also overrides :meth:`~ImageBenchmark.download`.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from lit_meta.data.array_cache import cache_size, open_staged_array, read_array_cache, write_array_cache
from lit_meta.data.datasets.base import (
    SPLIT_NAMES,
    ClassIndexedDataset,
    MetaDataset,
    SplitName,
    TensorClassDataset,
    Transform,
)
from lit_meta.data.preprocessing import ImagePreprocessing, describe_transform
from lit_meta.errors import DatasetError

CACHE_FOLDER = "lit-meta-cache"
"""Name of the folder, inside a family's :attr:`ImageBenchmark.folder`, that holds its default cache."""


@dataclass(frozen=True)
class SplitSize:
    """Published size of one split: its classes and images (all classes together)."""

    classes: int
    images: int


@dataclass(frozen=True)
class SourceFiles:
    """Where a family found its data, and in which distributed form.

    Args:
        form: the form's name as users know it, e.g. ``"image folder"`` or
            ``"learn2learn pickles"``.
        paths: the files or folders read. Their sizes and modification times key the
            cache, so replacing a file rebuilds it.
        details: anything the family's :meth:`ImageBenchmark.decode` needs besides.
    """

    form: str
    paths: tuple[Path, ...]
    details: dict[str, Any] = field(default_factory=dict)

    def key(self) -> dict[str, Any]:
        """The paths' identities: sizes and modification times (of every file, for a folder).

        Inside a folder, hidden files and the cache folder (:data:`CACHE_FOLDER`) are left out.
        """
        stamps = []
        for path in self.paths:
            files = [path]
            if path.is_dir():
                files = sorted(
                    p
                    for p in path.rglob("*")
                    if p.is_file()
                    and not any(part.startswith(".") or part == CACHE_FOLDER for part in p.relative_to(path).parts)
                )
            stats = [f.stat() for f in files]
            stamps.append(
                [
                    str(path),
                    len(files),
                    sum(s.st_size for s in stats),
                    max((s.st_mtime_ns for s in stats), default=0),
                ]
            )
        return {"form": self.form, "paths": stamps}


@dataclass
class DecodedImages:
    """What :meth:`ImageBenchmark.decode` returns.

    Args:
        images: ``uint8`` ``[N, C, H, W]`` at the family's ``image_size``; for data larger
            than memory, the array of :meth:`ImageBenchmark.allocate_images`, filled in place.
        labels: ``[N]`` positions in ``class_names``.
        class_names: the classes decoded, as named in :meth:`ImageBenchmark.split_table`.
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]


@dataclass(frozen=True)
class SplitReport:
    """One split of :class:`DatasetReport`: published counts against those found."""

    split: SplitName
    expected: SplitSize
    classes: int
    images: int
    missing: tuple[str, ...]
    short: tuple[tuple[str, int], ...]
    """Classes holding fewer images than published (name, images found); only for
    families whose classes all have one published size."""

    @property
    def ok(self) -> bool:
        return self.classes == self.expected.classes and self.images == self.expected.images


@dataclass(frozen=True)
class DatasetReport:
    """What :meth:`ImageBenchmark.check` found in a root, printed by ``lit-meta data check``."""

    name: str
    source: SourceFiles
    splits: tuple[SplitReport, ...]
    unlisted: tuple[str, ...]
    """Classes present in the files that the split table does not name (ignored)."""

    @property
    def ok(self) -> bool:
        return all(report.ok for report in self.splits)

    def format(self) -> str:
        """A table of classes and images per split, found against published, and what is wrong."""
        lines = [
            f"{self.name}: {self.source.form} at {', '.join(str(p) for p in self.source.paths)}",
            f"{'split':<6} {'classes':>15} {'images':>19}",
        ]
        for report in self.splits:
            mark = "ok" if report.ok else "MISMATCH"
            lines.append(
                f"{report.split:<6} {report.classes:>6} / {report.expected.classes:<6} "
                f"{report.images:>8} / {report.expected.images:<8} {mark}"
            )
        for report in self.splits:
            if report.missing:
                shown = ", ".join(report.missing[:10]) + (" ..." if len(report.missing) > 10 else "")
                lines.append(f"{report.split}: {len(report.missing)} classes missing: {shown}")
            if report.short:
                shown = ", ".join(f"{name} ({n})" for name, n in report.short[:10])
                lines.append(f"{report.split}: {len(report.short)} classes with too few images: {shown}")
        if self.unlisted:
            shown = ", ".join(self.unlisted[:10]) + (" ..." if len(self.unlisted) > 10 else "")
            lines.append(f"{len(self.unlisted)} classes in the files are in no split and are ignored: {shown}")
        lines.append("matches the published split" if self.ok else "does NOT match the published split")
        return "\n".join(lines)


class ImageBenchmark(MetaDataset):
    """A published few-shot image benchmark: fixed class lists, decoded once into a cache.

    Items are ``uint8`` images resized to ``image_size`` (loaded as float ``[C, H, W]``
    in ``[0, 1]``). Classes are numbered in split-table order (meta-train's, then
    meta-val's, then meta-test's), and these numbers are the class ids of every split.

    **Cache.** The first load (or :meth:`prepare`) decodes every listed class into
    ``cache_dir`` (default ``<root>/<FOLDER>/lit-meta-cache/<FOLDER>_<image_size>px``) as plain
    ``.npy`` arrays keyed by the sources' sizes and modification times, the image size
    and :attr:`CACHE_FORMAT`; later loads memory-map them, with no unpickling. The images
    per class (:meth:`inventory`) are recorded there too, so later loads read no source
    file but the ones whose sizes and modification times key the cache. A cache folder
    that cannot be written costs a warning.

    Args:
        root: the folder holding (or receiving) the family's :attr:`FOLDER`; the family's
            files may also lie in ``root`` itself.
        image_size: side of the square images, in pixels; default :attr:`DEFAULT_IMAGE_SIZE`
            (the size the family's papers use).
        transform: optional callable applied to each item, a float ``[C, S, S]`` tensor.
        cache_dir: folder of the decoded cache (see above).
        cache: read and write the decoded cache.
        allow_partial: split a root that lacks some of the listed classes (a partial
            copy, a miniature for tests) with the classes it has; by default such a root
            raises :class:`~lit_meta.errors.DatasetError`, as its splits are not the benchmark's.
    """

    NAME: ClassVar[str]
    """The family's name in messages, e.g. ``"miniImageNet"``."""
    FOLDER: ClassVar[str]
    """The folder under ``root`` that holds the family's files, e.g. ``"miniimagenet"``."""
    SPLIT_SIZES: ClassVar[dict[SplitName, SplitSize]]
    """Published classes and images of meta-train, meta-val and meta-test."""
    IMAGES_PER_CLASS: ClassVar[int | None] = None
    """Images in every class, for families whose classes are all one size (miniImageNet: 600)."""
    MEAN: ClassVar[tuple[float, ...]]
    """Per-channel mean of the images in ``[0, 1]``, as published with the family's usual pipeline."""
    STD: ClassVar[tuple[float, ...]]
    """Per-channel standard deviation, likewise."""
    DEFAULT_IMAGE_SIZE: ClassVar[int] = 84
    CACHE_FORMAT: ClassVar[int] = 1

    def __init__(
        self,
        root: str | Path = "data",
        image_size: int | None = None,
        transform: Transform | None = None,
        cache_dir: str | Path | None = None,
        cache: bool = True,
        allow_partial: bool = False,
    ) -> None:
        image_size = self.DEFAULT_IMAGE_SIZE if image_size is None else int(image_size)
        if image_size < 1:
            raise DatasetError(f"image_size must be positive, got {image_size}")
        self.root = Path(root)
        self.image_size = image_size
        self.transform = transform
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self.cache = cache
        self.allow_partial = allow_partial

    # -- hooks --------------------------------------------------------------------------------
    @abstractmethod
    def split_table(self) -> dict[SplitName, list[str]]:
        """The published class names of meta-train, meta-val and meta-test, in order."""

    @abstractmethod
    def locate(self) -> SourceFiles:
        """The family's files under :attr:`folder` (or ``root``), in the first form found.

        Raises:
            DatasetError: nothing readable is there; the message says which files to
                obtain (with checksums where known) and where to put them.
        """

    @abstractmethod
    def inventory(self, source: SourceFiles) -> dict[str, int]:
        """Images per class name in ``source``, without decoding images where the form allows."""

    @abstractmethod
    def decode(self, source: SourceFiles, classes: Sequence[str]) -> DecodedImages:
        """Decode the images of ``classes`` (all present in ``source``) at :attr:`image_size`."""

    def download(self) -> None:
        """Fetch the family's files into :attr:`folder`; by default there is nothing to fetch.

        Families without a stable official host keep this default: :meth:`locate`'s
        error then tells the user what to obtain.
        """
        self.locate()

    def allocate_images(self, count: int, channels: int = 3) -> np.ndarray:
        """An unfilled ``uint8`` ``[count, channels, image_size, image_size]`` array for :meth:`decode` to fill.

        With the cache on, it is a ``.npy`` file in the cache folder, memory-mapped, that
        becomes the cache's image array without a copy (so decoding never holds all the
        images in memory); without the cache, or where the cache folder cannot be
        written, it is an ordinary array in memory.
        """
        shape = (count, channels, self.image_size, self.image_size)
        if self.cache:
            try:
                return open_staged_array(self.cache_folder, "images", shape, np.uint8)
            except OSError:
                pass  # write_array_cache reports the unwritable folder
        return np.empty(shape, dtype=np.uint8)

    # -- files --------------------------------------------------------------------------------
    @property
    def folder(self) -> Path:
        """``root/FOLDER``: where the family's files are looked for first."""
        return self.root / self.FOLDER

    @property
    def cache_folder(self) -> Path:
        """Where the decoded cache is (or will be) written."""
        base = self.cache_dir if self.cache_dir is not None else self.folder / CACHE_FOLDER
        variant = self.cache_variant()
        return base / f"{self.FOLDER}_{self.image_size}px{'_' + variant if variant else ''}"

    def cache_variant(self) -> str:
        """What besides the image size makes this instance's decoded images differ, e.g. ``"bbox"``
        for crops; ``""`` (the default) for nothing. A non-empty variant ends the cache folder's
        name (``<FOLDER>_<size>px_<variant>``) and is part of the cache key, so variants never
        overwrite each other's cache."""
        return ""

    def split_sizes(self) -> dict[SplitName, SplitSize]:
        """Published classes and images of each split; :attr:`SPLIT_SIZES` unless the family
        offers several published splits."""
        return self.SPLIT_SIZES

    def _source(self) -> SourceFiles:
        try:
            return self.locate()
        except DatasetError:
            self.download()
            return self.locate()

    def _listed(self) -> list[str]:
        table = self.split_table()
        return [name for split in SPLIT_NAMES for name in table[split]]

    def _registered_name(self) -> str:
        """The family's name in :data:`~lit_meta.data.datasets.DATASETS` (its folder name if unregistered)."""
        from lit_meta.data.datasets import DATASETS  # the registry imports this module

        return next((name for name, family in DATASETS.items() if family is type(self)), self.FOLDER)

    def _inventory(self, source: SourceFiles) -> dict[str, int]:
        """:meth:`inventory`, kept beside the cache (``<cache_folder>/inventory``) keyed by the
        sources' identity, so a form whose inventory must unpickle or open every file reads it once.
        """
        if not self.cache:
            return self.inventory(source)
        folder = self.cache_folder / "inventory"
        key = {"format": self.CACHE_FORMAT, "family": type(self).__name__, "source": source.key()}
        cached = read_array_cache(folder, key)
        if cached is not None:
            return {str(name): int(count) for name, count in cached.meta["counts"].items()}
        found = self.inventory(source)
        write_array_cache(folder, key, {}, {"counts": found})
        return found

    def _cache_key(self, source: SourceFiles, classes: Sequence[str]) -> dict[str, Any]:
        key = {
            "format": self.CACHE_FORMAT,
            "family": type(self).__name__,
            "image_size": self.image_size,
            "source": source.key(),
            "classes": list(classes),
        }
        if variant := self.cache_variant():
            key["variant"] = variant
        return key

    # -- checking and preparing ---------------------------------------------------------------
    def check(self) -> DatasetReport:
        """Compare the classes and images found with the published split.

        Reads only what :meth:`inventory` reads (no decoding), or its record from an
        earlier run of the same files; the report says which
        listed classes are missing, which hold too few images, and which present
        classes no split names.

        Raises:
            DatasetError: the files are not there at all (see :meth:`locate`).
        """
        source = self.locate()
        found = self._inventory(source)
        table = self.split_table()
        reports = []
        for split in SPLIT_NAMES:
            present = [name for name in table[split] if found.get(name, 0) > 0]
            short: tuple[tuple[str, int], ...] = ()
            if self.IMAGES_PER_CLASS is not None:
                short = tuple((name, found[name]) for name in present if found[name] < self.IMAGES_PER_CLASS)
            reports.append(
                SplitReport(
                    split=split,
                    expected=self.split_sizes()[split],
                    classes=len(present),
                    images=sum(found[name] for name in present),
                    missing=tuple(name for name in table[split] if found.get(name, 0) == 0),
                    short=short,
                )
            )
        listed = set(self._listed())
        unlisted = tuple(sorted(name for name in found if name not in listed))
        return DatasetReport(self.NAME, source, tuple(reports), unlisted)

    def prepare(self) -> None:
        """Fetch what is missing (where the family can) and build the decoded cache."""
        _ = self.images

    def cache_bytes(self) -> int:
        """Size on disk of the decoded cache (0 when there is none)."""
        return cache_size(self.cache_folder)

    # -- data -----------------------------------------------------------------------------------
    @cached_property
    def images(self) -> TensorClassDataset:
        """Every listed class present, one dataset (no split, no transform), from the cache if it matches."""
        source = self._source()
        found = self._inventory(source)
        listed = self._listed()
        missing = [name for name in listed if found.get(name, 0) == 0]
        if missing and not self.allow_partial:
            raise DatasetError(
                f"{self.NAME} at {self.folder} ({source.form}) lacks {len(missing)} of the {len(listed)} classes "
                f"of the published split (e.g. {', '.join(missing[:5])}); its splits would not be the "
                f"benchmark's. Complete the copy (`lit-meta data check {self._registered_name()} --root {self.root}` "
                "lists what is missing), or pass allow_partial=True to split what is there"
            )
        classes = [name for name in listed if found.get(name, 0) > 0]
        key = self._cache_key(source, classes)
        cached = read_array_cache(self.cache_folder, key) if self.cache else None
        if cached is not None:
            images, labels = cached.arrays["images"], cached.arrays["labels"]
            names = list(cached.meta["class_names"])
        else:
            decoded = self.decode(source, classes)
            images, labels, names = decoded.images, np.asarray(decoded.labels, dtype=np.int64), decoded.class_names
            if self.cache:
                write_array_cache(self.cache_folder, key, {"images": images, "labels": labels}, {"class_names": names})
        position = {name: i for i, name in enumerate(listed)}
        return TensorClassDataset(
            torch.from_numpy(images),
            labels,
            names,
            class_ids=np.array([position[name] for name in names], dtype=np.int64),
        )

    def split(self, name: SplitName) -> ClassIndexedDataset:
        """Meta-train (``"train"``), meta-val (``"val"``) or meta-test (``"test"``) classes.

        Raises:
            DatasetError: for an unknown ``name``, or a split a partial root leaves empty.
        """
        if name not in SPLIT_NAMES:
            raise DatasetError(f"unknown split {name!r}; use 'train', 'val' or 'test'")
        everything = self.images
        wanted = set(self.split_table()[name])
        classes = [i for i, class_name in enumerate(everything.class_names) if class_name in wanted]
        if not classes:
            raise DatasetError(f"{self.NAME} at {self.folder} holds none of the {name} classes")
        subset = everything.subset(classes)
        subset.transform = self.transform
        return subset

    def image_preprocessing(self) -> ImagePreprocessing:
        """RGB ``image_size`` squares; a custom ``transform`` is recorded by name only."""
        return ImagePreprocessing(
            "RGB", (self.image_size, self.image_size), custom_transform=describe_transform(self.transform)
        )

    def normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """The family's per-channel mean and standard deviation (:attr:`MEAN`, :attr:`STD`)."""
        return self.MEAN, self.STD

    def __repr__(self) -> str:
        partial = ", allow_partial=True" if self.allow_partial else ""
        return f"{type(self).__name__}(root={str(self.root)!r}, image_size={self.image_size}{partial})"
