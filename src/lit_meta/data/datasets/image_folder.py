"""Users' own images, one folder per class: ``root/<class>/<image files>``."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from lit_meta.data.datasets.base import (
    SPLIT_NAMES,
    ClassIndexedDataset,
    MetaDataset,
    SplitName,
    TensorClassDataset,
    Transform,
    split_classes_by_fraction,
)
from lit_meta.data.preprocessing import ImagePreprocessing, Statistics, check_normalization, describe_transform
from lit_meta.data.transforms import IMAGE_EXTENSIONS, ImageMode, load_image
from lit_meta.errors import DatasetError


def class_folders(root: Path) -> list[Path]:
    """The sub-folders of ``root``, sorted by name; names starting with ``.`` are skipped."""
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def image_files(folder: Path) -> list[Path]:
    """The image files directly inside ``folder`` (not in its sub-folders), sorted by name.

    Images end in one of :data:`~lit_meta.data.transforms.IMAGE_EXTENSIONS` (any
    case); other files, and names starting with ``.``, are skipped.
    """
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
    )


class ImageFileDataset(ClassIndexedDataset):
    """A class-indexed dataset that reads its image files on every load.

    Items are ``uint8`` ``[C, H, W]`` resized to ``size`` (loaded as float in
    ``[0, 1]``), the same values an in-memory
    :class:`~lit_meta.data.datasets.base.TensorClassDataset` of the same files holds.

    Args:
        files: one image file per item.
        labels, class_names, class_ids, transform: as for
            :class:`~lit_meta.data.datasets.base.ClassIndexedDataset`.
        mode: ``"RGB"`` or ``"L"``.
        size: ``(height, width)`` every image is resized to.
    """

    def __init__(
        self,
        files: Sequence[Path],
        labels: np.ndarray,
        class_names: Sequence[str],
        class_ids: np.ndarray | None = None,
        transform: Transform | None = None,
        mode: ImageMode = "RGB",
        size: tuple[int, int] = (84, 84),
    ) -> None:
        super().__init__(labels, class_names, class_ids, transform)
        if len(files) != len(self.labels):
            raise DatasetError(f"{len(files)} files but {len(self.labels)} labels")
        self.files = list(files)
        self.mode: ImageMode = mode
        self.size = size

    def load_items(self, indices: np.ndarray) -> Tensor:
        return torch.stack([load_image(self.files[i], self.mode, self.size) for i in indices.tolist()])


class ImageFolder(MetaDataset):
    """Images in one folder per class, ``root/<class>/<image files>``, split by class.

    Image files end in ``.png``, ``.jpg``, ``.jpeg``, ``.bmp``, ``.gif`` or ``.webp``
    (any case); other files, and names starting with ``.``, are ignored. Every image
    is resized to ``image_size`` (Lanczos, aspect ratio not kept) and converted to
    ``mode``. Classes are the folder names in sorted order; class ids are their
    positions in that order, shared by all splits.

    The classes are split either by explicit lists (``train_classes``, ``val_classes``
    and ``test_classes``, all three, disjoint) or, when no list is given, by a seeded
    random partition in the proportions ``fractions``. Nothing is cached on disk.

    Args:
        root: the folder holding one sub-folder per class.
        image_size: ``(height, width)``, or one int for square images.
        mode: ``"RGB"`` or ``"L"`` (grey scale).
        train_classes: class folder names of the meta-train split.
        val_classes: class folder names of the meta-val split.
        test_classes: class folder names of the meta-test split.
        fractions: meta-train / meta-val / meta-test share of the classes, used when
            no explicit lists are given.
        split_seed: seed of the random partition by ``fractions``.
        transform: optional callable applied to each item, a float ``[C, H, W]`` tensor.
        in_memory: decode a split's images once, when the split is built; ``False``
            reads the files at every episode (for data larger than memory), so an
            unreadable file only shows up when it is drawn.
        mean: per-channel mean of the images in ``[0, 1]`` (one value per channel of
            ``mode``), with ``std``: the statistics :meth:`normalization` gives
            ``EpisodicDataModule(normalize=True)``. Default: none.
        std: per-channel standard deviation, with ``mean``.
    """

    def __init__(
        self,
        root: str | Path,
        image_size: int | tuple[int, int] = 84,
        mode: ImageMode = "RGB",
        train_classes: list[str] | None = None,
        val_classes: list[str] | None = None,
        test_classes: list[str] | None = None,
        fractions: tuple[float, float, float] = (0.64, 0.16, 0.20),
        split_seed: int = 0,
        transform: Transform | None = None,
        in_memory: bool = True,
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
    ) -> None:
        if mode not in ("RGB", "L"):
            raise DatasetError(f"mode must be 'RGB' or 'L', got {mode!r}")
        self.statistics = check_normalization(mean, std, 1 if mode == "L" else 3, f"image_folder ({mode} images)")
        height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
        if height < 1 or width < 1:
            raise DatasetError(f"image_size must be positive, got {image_size!r}")
        explicit = {"train": train_classes, "val": val_classes, "test": test_classes}
        given = [name for name, classes in explicit.items() if classes is not None]
        if given and len(given) != 3:
            absent = [f"{name}_classes" for name in explicit if name not in given]
            raise DatasetError(
                f"explicit class lists need all three splits; {', '.join(absent)} missing. "
                "Give every list, or none to split by fractions"
            )
        self.root = Path(root)
        self.image_size = (int(height), int(width))
        self.mode: ImageMode = mode
        self.explicit_classes = {name: list(classes) for name, classes in explicit.items() if classes is not None}
        self.fractions = tuple(fractions)
        self.split_seed = split_seed
        self.transform = transform
        self.in_memory = in_memory

    @cached_property
    def class_files(self) -> dict[str, list[Path]]:
        """Image files of every class folder, by class name (sorted)."""
        if not self.root.is_dir():
            raise DatasetError(f"image folder {self.root} does not exist; expected {self.root}/<class>/<image files>")
        folders = class_folders(self.root)
        if not folders:
            raise DatasetError(f"no class folders in {self.root}; expected {self.root}/<class>/<image files>")
        files = {}
        for folder in folders:
            images = image_files(folder)
            if not images:
                raise DatasetError(
                    f"class folder {folder} holds no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}); "
                    "add images or remove the folder"
                )
            empty = [p for p in images if p.stat().st_size == 0]
            if empty:
                raise DatasetError(f"image file {empty[0]} is empty (0 bytes); replace or delete it")
            files[folder.name] = images
        return files

    def split_classes(self) -> dict[SplitName, list[str]]:
        """Class names of meta-train, meta-val and meta-test."""
        names = list(self.class_files)
        if not self.explicit_classes:
            groups = split_classes_by_fraction(len(names), self.fractions, self.split_seed)
            return {split: [names[c] for c in group] for split, group in zip(SPLIT_NAMES, groups, strict=True)}
        known = set(names)
        seen: dict[str, str] = {}
        for split, classes in self.explicit_classes.items():
            unknown = [c for c in classes if c not in known]
            if unknown:
                raise DatasetError(
                    f"{split}_classes names unknown classes {unknown}; the class folders of {self.root} are "
                    f"{names[:20]}{' ...' if len(names) > 20 else ''}"
                )
            for c in classes:
                if c in seen:
                    where = "twice" if seen[c] == split else f"in both {seen[c]}_classes and {split}_classes"
                    raise DatasetError(f"class {c!r} is listed {where}; the splits must be disjoint")
                seen[c] = split
        return {split: list(self.explicit_classes[split]) for split in SPLIT_NAMES}

    def split(self, name: SplitName) -> ClassIndexedDataset:
        """Meta-train (``"train"``), meta-val (``"val"``) or meta-test (``"test"``) classes."""
        if name not in SPLIT_NAMES:
            raise DatasetError(f"unknown split {name!r}; use 'train', 'val' or 'test'")
        classes = self.split_classes()[name]
        if not classes:
            raise DatasetError(f"the {name} split of {self.root} holds no classes; change fractions or the class lists")
        class_number = {c: i for i, c in enumerate(self.class_files)}
        files = [path for c in classes for path in self.class_files[c]]
        labels = np.repeat(np.arange(len(classes)), [len(self.class_files[c]) for c in classes])
        class_ids = np.array([class_number[c] for c in classes], dtype=np.int64)
        if not self.in_memory:
            return ImageFileDataset(files, labels, classes, class_ids, self.transform, self.mode, self.image_size)
        data = torch.stack([load_image(path, self.mode, self.image_size) for path in files])
        return TensorClassDataset(data, labels, classes, class_ids, self.transform)

    def image_preprocessing(self) -> ImagePreprocessing:
        """``mode`` at ``image_size``, not inverted: new images are read as the class folders were.

        A custom ``transform`` is not stored in checkpoints (only its name, so
        ``lit-meta adapt`` can warn that it is not applied).
        """
        return ImagePreprocessing(
            self.mode, self.image_size, invert=False, custom_transform=describe_transform(self.transform)
        )

    def normalization(self) -> Statistics | None:
        """The ``mean`` and ``std`` given to the constructor, if any."""
        return self.statistics

    def __repr__(self) -> str:
        return f"ImageFolder(root={str(self.root)!r}, image_size={self.image_size}, mode={self.mode!r})"
