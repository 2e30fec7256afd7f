"""Pre-computed feature vectors as a class-indexed dataset: the file ``lit-meta embed`` writes.

Learners that work on fixed embeddings rather than images (LEO, Rusu et al., 2019,
"Meta-Learning with Latent Embedding Optimization", ICLR, Section 4.2.1, trains on
the 640-d features of a pre-trained WRN-28-10) read them through this dataset, so
no backbone runs in the training loop. The file is an ``.npz`` archive of plain
arrays, read with ``np.load(allow_pickle=False)``:

=====================  ============  =====================================================
``features``           float32       ``[N, D]``, one vector per item
``labels``             int64         ``[N]``, class number ``0 .. C-1`` over all splits
``class_names``        unicode       ``[C]``
``class_ids``          int64         ``[C]``, the image dataset's class ids, so episodes
                                     carry the same :attr:`Episode.classes
                                     <lit_meta.data.episode.Episode.classes>`
``class_split``        unicode       ``[C]``, ``"train"``, ``"val"`` or ``"test"``
``lit_meta_features``  int64         ``[]``, the format version (:data:`FORMAT_VERSION`)
``metadata``           unicode       ``[]``, JSON: where the features come from
=====================  ============  =====================================================

Within a split, items keep the order of the image dataset's split, so an
:class:`~lit_meta.data.EpisodicDataModule` with the same seed and episode shape draws
the same classes and items from either.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lit_meta.data.atomic_file import atomic_file
from lit_meta.data.datasets.base import SPLIT_NAMES, MetaDataset, SplitName, TensorClassDataset
from lit_meta.errors import DatasetError

FORMAT_KEY = "lit_meta_features"
"""The entry that marks a file as written by lit-meta; its value is the format version."""
FORMAT_VERSION = 1
"""Version of the file layout above; bumped when it changes, so older readers refuse newer files."""

_MAKE_ONE = "write one with: lit-meta embed --ckpt_path CKPT --output FILE.npz"


@dataclass(frozen=True)
class FeatureArrays:
    """The arrays of a features file, checked.

    Args:
        features: ``float32 [N, D]``.
        labels: ``int64 [N]``, class numbers ``0 .. C-1``.
        class_names: ``[C]`` names.
        class_ids: ``int64 [C]``, the source dataset's class ids.
        class_split: ``[C]``, the split of every class (``"train"``, ``"val"``, ``"test"``).
        metadata: plain values (strings, numbers, lists, dicts) saved as JSON.

    Raises:
        DatasetError: an array of the wrong dtype or shape, a label out of range, or an unknown split.
    """

    features: np.ndarray
    labels: np.ndarray
    class_names: np.ndarray
    class_ids: np.ndarray
    class_split: np.ndarray
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        expected = {
            "features": (np.float32, "float32 [N, D]"),
            "labels": (np.int64, "int64 [N]"),
            "class_names": (np.str_, "unicode [C]"),
            "class_ids": (np.int64, "int64 [C]"),
            "class_split": (np.str_, "unicode [C]"),
        }
        for name, (dtype, layout) in expected.items():
            array = getattr(self, name)
            ndim = layout.count(",") + 1
            if not isinstance(array, np.ndarray) or array.dtype.type is not dtype or array.ndim != ndim:
                got = f"{array.dtype} of shape {array.shape}" if isinstance(array, np.ndarray) else type(array).__name__
                raise DatasetError(f"array {name!r} must be {layout}; got {got}")
        num_items, num_classes = len(self.features), len(self.class_names)
        if len(self.labels) != num_items:
            raise DatasetError(f"{num_items} feature vectors but {len(self.labels)} labels; one label per vector")
        if len(self.class_ids) != num_classes or len(self.class_split) != num_classes:
            raise DatasetError(
                f"{num_classes} class names, {len(self.class_ids)} class ids and {len(self.class_split)} class "
                "splits; give one of each per class"
            )
        if num_items and (self.labels.min() < 0 or self.labels.max() >= num_classes):
            raise DatasetError(
                f"labels must lie in 0..{num_classes - 1} (one per class name); "
                f"got {self.labels.min()}..{self.labels.max()}"
            )
        unknown = sorted(set(self.class_split.tolist()) - set(SPLIT_NAMES))
        if unknown:
            raise DatasetError(f"class_split holds {unknown}; every class is in 'train', 'val' or 'test'")

    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write the ``.npz`` file atomically (a temporary file, then a rename); returns the path.

        Raises:
            DatasetError: ``path`` exists and ``overwrite`` is false, or it cannot be written.
        """
        path = Path(path)
        if path.exists() and not overwrite:
            raise DatasetError(f"{path} exists; pass --overwrite (overwrite=True) to replace it, or another output")
        arrays = {
            "features": self.features,
            "labels": self.labels,
            "class_names": self.class_names,
            "class_ids": self.class_ids,
            "class_split": self.class_split,
            FORMAT_KEY: np.array(FORMAT_VERSION, dtype=np.int64),
            "metadata": np.array(json.dumps(dict(self.metadata), sort_keys=True)),
        }
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_file(path) as file:
                np.savez(file, **arrays)
        except OSError as error:
            raise DatasetError(f"cannot write {path}: {error}; choose another output") from error
        return path

    @classmethod
    def load(cls, path: str | Path) -> FeatureArrays:
        """Read and check a features file, without unpickling anything.

        Raises:
            DatasetError: the file is missing, not an ``.npz`` archive, holds pickled
                (object) arrays, was not written by lit-meta, is of a newer format, or
                holds arrays of the wrong dtype or shape.
        """
        path = Path(path)
        if not path.is_file():
            what = "is a folder, not a file" if path.is_dir() else "does not exist"
            raise DatasetError(f"features file {path} {what}; {_MAKE_ONE}")
        if not zipfile.is_zipfile(path):
            raise DatasetError(f"{path} is not an .npz archive; {_MAKE_ONE}")
        try:
            with np.load(path, allow_pickle=False) as archive:
                if FORMAT_KEY not in archive.files:
                    raise DatasetError(
                        f"{path} was not written by lit-meta (it has no {FORMAT_KEY!r} entry); {_MAKE_ONE}"
                    )
                arrays = {name: archive[name] for name in archive.files}
        except DatasetError:
            raise
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
            # numpy refuses an object array without allow_pickle (its message varies between versions)
            pickled = isinstance(error, ValueError) and "allow_pickle" in str(error)
            why = "it holds object arrays, which only unpickling could read, and lit-meta never unpickles"
            raise DatasetError(f"cannot read features file {path}: {why if pickled else error}; {_MAKE_ONE}") from error
        version = int(arrays.pop(FORMAT_KEY))
        if version > FORMAT_VERSION:
            raise DatasetError(
                f"{path} is a features file of format {version}, newer than this lit-meta reads ({FORMAT_VERSION}); "
                "upgrade lit-meta"
            )
        required = ("features", "labels", "class_names", "class_ids", "class_split")
        missing = [name for name in required if name not in arrays]
        if missing:
            raise DatasetError(f"features file {path} lacks the arrays {missing}; {_MAKE_ONE}")
        metadata = json.loads(str(arrays["metadata"])) if "metadata" in arrays else {}
        try:
            return cls(**{name: arrays[name] for name in required}, metadata=metadata)
        except DatasetError as error:
            raise DatasetError(f"features file {path}: {error}") from error


class FeaturesDataset(MetaDataset):
    """The feature vectors of a file written by ``lit-meta embed``, split by class as the source dataset was.

    Items are ``float32`` vectors, loaded as stored (no transform). Each split holds
    the classes the file assigns to it, with their original class ids and names, and
    its items in the order of the source dataset's split.

    Args:
        root: the ``.npz`` file (the datamodule's ``root``), see the module docstring.

    Raises:
        DatasetError: ``root`` is not given, or the file is missing or invalid.
    """

    def __init__(self, root: str | Path | None = None) -> None:
        if root is None:
            raise DatasetError(f"dataset 'features' needs root=<the .npz file lit-meta embed wrote>; {_MAKE_ONE}")
        self.path = Path(root)
        self.arrays = FeatureArrays.load(self.path)
        self._features = torch.from_numpy(self.arrays.features)

    @property
    def metadata(self) -> dict[str, Any]:
        """Where the features come from: checkpoint, learner, backbone, dataset, lit-meta version, time."""
        return dict(self.arrays.metadata)

    @property
    def feature_dim(self) -> int:
        return self.arrays.features.shape[1]

    def has_split(self, name: SplitName) -> bool:
        """Whether the file holds classes of split ``name``."""
        return bool((self.arrays.class_split == name).any())

    def split(self, name: SplitName) -> TensorClassDataset:
        """The items of the classes of split ``name``, relabelled ``0 .. classes-1`` in file order.

        Raises:
            DatasetError: an unknown split name, or a split without classes.
        """
        if name not in SPLIT_NAMES:
            raise DatasetError(f"unknown split {name!r}; expected 'train', 'val' or 'test'")
        classes = np.flatnonzero(self.arrays.class_split == name)
        if not len(classes):
            raise DatasetError(f"features file {self.path} holds no {name} classes; embed that split too")
        local = np.full(len(self.arrays.class_names), -1, dtype=np.int64)
        local[classes] = np.arange(len(classes))
        labels = local[self.arrays.labels]
        rows = np.flatnonzero(labels >= 0)
        return TensorClassDataset(
            self._features[torch.from_numpy(rows)],
            labels=labels[rows],
            class_names=self.arrays.class_names[classes].tolist(),
            class_ids=self.arrays.class_ids[classes],
        )

    def __repr__(self) -> str:
        counts = ", ".join(f"{s} {int((self.arrays.class_split == s).sum())}" for s in SPLIT_NAMES)
        return f"FeaturesDataset({self.path}: {len(self.arrays.features)} x {self.feature_dim}, classes {counts})"
