"""CIFAR-FS: 100 CIFAR-100 classes split 64 / 16 / 20 (Bertinetto et al., 2019)."""

from __future__ import annotations

from typing import ClassVar

from lit_meta.data.datasets.base import SplitName
from lit_meta.data.datasets.benchmark import SplitSize
from lit_meta.data.datasets.cifar100 import CIFAR100Benchmark

CIFAR_FS_SPLIT: dict[SplitName, tuple[str, ...]] = {
    "train": (
        "apple", "aquarium_fish", "bear", "bee", "bottle", "bowl", "boy", "bridge", "bus", "can", "castle",
        "caterpillar", "chair", "clock", "cloud", "cockroach", "couch", "cup", "dinosaur", "dolphin", "elephant",
        "forest", "girl", "hamster", "house", "kangaroo", "keyboard", "lawn_mower", "lion", "lizard", "lobster",
        "mountain", "mouse", "mushroom", "oak_tree", "orange", "orchid", "palm_tree", "pear", "pine_tree", "plate",
        "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "seal", "shrew", "skunk", "skyscraper", "snake",
        "spider", "squirrel", "streetcar", "sunflower", "tank", "tiger", "train", "trout", "tulip", "turtle",
        "willow_tree", "wolf",
    ),
    "val": (
        "beaver", "beetle", "butterfly", "camel", "cattle", "crab", "crocodile", "flatfish", "lamp", "maple_tree",
        "motorcycle", "otter", "sea", "shark", "television", "tractor",
    ),
    "test": (
        "baby", "bed", "bicycle", "chimpanzee", "fox", "leopard", "man", "pickup_truck", "plain", "poppy", "rocket",
        "rose", "snail", "sweet_pepper", "table", "telephone", "wardrobe", "whale", "woman", "worm",
    ),
}  # fmt: skip
"""The published CIFAR-FS split, in alphabetical order within each split.

Bertinetto et al. distribute it as ``cifar100/splits/bertinetto/{train,val,test}.txt`` inside
their CIFAR-FS archive (linked from the README of bertinetto/r2d2, MIT; the repository itself
holds no lists). The names here are those lists as transcribed, with each class's CIFAR-100
super-class, in tristandeleu/pytorch-meta (MIT), ``torchmeta/datasets/assets/cifar100/
cifar-fs/{train,val,test}.json`` at commit d55d89ebd47f340180267106bde3e4b723f23762."""


class CIFARFS(CIFAR100Benchmark):
    """CIFAR-FS (Bertinetto, Henriques, Torr & Vedaldi, 2019, "Meta-learning with
    differentiable closed-form solvers", ICLR, Section 4): CIFAR-100's 100 classes randomly
    split into 64 meta-training, 16 meta-validation and 20 meta-test classes, 600 32x32
    images each (both batches of the archive).

    The split is :data:`CIFAR_FS_SPLIT`, the published class lists. The images come from
    CIFAR-100's official python archive, shared with FC100 in ``root/cifar100/``; see
    :class:`~lit_meta.data.datasets.cifar100.CIFAR100Benchmark` for the files read, the
    download, the checksum verified before any pickle is loaded, the cache and the
    arguments.

    Deviations: none in the data. Bertinetto et al.'s own archive stores the images as PNG
    files; lit-meta reads the same pixels from CIFAR-100's python release instead.
    """

    NAME: ClassVar[str] = "CIFAR-FS"
    FOLDER: ClassVar[str] = "cifar_fs"
    SPLIT_SIZES: ClassVar[dict[SplitName, SplitSize]] = {
        "train": SplitSize(64, 64 * 600),
        "val": SplitSize(16, 16 * 600),
        "test": SplitSize(20, 20 * 600),
    }

    def split_table(self) -> dict[SplitName, list[str]]:
        """:data:`CIFAR_FS_SPLIT`."""
        return {split: list(names) for split, names in CIFAR_FS_SPLIT.items()}
