"""Dataset families, each providing disjoint meta-train/val/test splits, and their registry."""

from __future__ import annotations

import inspect
from typing import Any

from lit_meta.data.datasets.base import (
    ClassIndexedDataset,
    ClassSubset,
    MetaDataset,
    RotatedClasses,
    TaskDistribution,
    TensorClassDataset,
)
from lit_meta.data.datasets.benchmark import DatasetReport, ImageBenchmark, SourceFiles, SplitSize
from lit_meta.data.datasets.cifar100 import CIFAR100Benchmark
from lit_meta.data.datasets.cifar_fs import CIFARFS
from lit_meta.data.datasets.cub import CUB
from lit_meta.data.datasets.fc100 import FC100
from lit_meta.data.datasets.features import FeaturesDataset
from lit_meta.data.datasets.glyphs import ProceduralGlyphs
from lit_meta.data.datasets.image_folder import ImageFolder
from lit_meta.data.datasets.miniimagenet import MiniImageNet
from lit_meta.data.datasets.omniglot import Omniglot
from lit_meta.data.datasets.sinusoid import Sinusoid, SinusoidTasks
from lit_meta.data.datasets.tieredimagenet import TieredImageNet
from lit_meta.data.transform_paths import resolve_transform
from lit_meta.errors import DatasetError

DATASETS: dict[str, type[MetaDataset]] = {
    "sinusoid": Sinusoid,
    "omniglot": Omniglot,
    "image_folder": ImageFolder,
    "miniimagenet": MiniImageNet,
    "glyphs": ProceduralGlyphs,
    "features": FeaturesDataset,
    "cub": CUB,
    "tieredimagenet": TieredImageNet,
    "cifar_fs": CIFARFS,
    "fc100": FC100,
}
"""Registered dataset families by name, as accepted by :func:`build_dataset`."""


def build_dataset(name: str, root: str | None = None, **kwargs: Any) -> MetaDataset:
    """Instantiate a registered dataset family by name.

    ``root`` is passed to families that read or download files (for ``"features"``,
    the ``.npz`` file itself); embedded ones (sinusoid) ignore it. A ``transform``
    given as an import path (as the datamodule's hyperparameters keep it,
    :mod:`lit_meta.data.transform_paths`) is resolved to its function.
    """
    key = name.lower().replace("-", "_")
    if key not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; known datasets: {', '.join(sorted(DATASETS))}")
    family = DATASETS[key]
    if root is not None and "root" in inspect.signature(family).parameters:
        kwargs["root"] = root
    if isinstance(kwargs.get("transform"), str):
        kwargs["transform"] = resolve_transform(kwargs["transform"])
    return family(**kwargs)


__all__ = [
    "CIFARFS",
    "CUB",
    "DATASETS",
    "FC100",
    "CIFAR100Benchmark",
    "ClassIndexedDataset",
    "ClassSubset",
    "DatasetReport",
    "FeaturesDataset",
    "ImageBenchmark",
    "ImageFolder",
    "MetaDataset",
    "MiniImageNet",
    "Omniglot",
    "ProceduralGlyphs",
    "RotatedClasses",
    "Sinusoid",
    "SinusoidTasks",
    "SourceFiles",
    "SplitSize",
    "TaskDistribution",
    "TensorClassDataset",
    "TieredImageNet",
    "build_dataset",
]
