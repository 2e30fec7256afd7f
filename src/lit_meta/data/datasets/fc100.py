"""FC100 (Fewshot-CIFAR100): CIFAR-100 split by super-class, 60 / 20 / 20 classes (Oreshkin et al., 2018)."""

from __future__ import annotations

from typing import ClassVar

from lit_meta.data.datasets.base import SplitName
from lit_meta.data.datasets.benchmark import SplitSize
from lit_meta.data.datasets.cifar100 import CIFAR100_SUPERCLASSES, CIFAR100Benchmark

FC100_SUPERCLASSES: dict[SplitName, tuple[str, ...]] = {
    "train": (
        "fish",
        "flowers",
        "food_containers",
        "fruit_and_vegetables",
        "household_electrical_devices",
        "household_furniture",
        "large_man-made_outdoor_things",
        "large_natural_outdoor_scenes",
        "reptiles",
        "trees",
        "vehicles_1",
        "vehicles_2",
    ),
    "val": ("large_carnivores", "large_omnivores_and_herbivores", "non-insect_invertebrates", "small_mammals"),
    "test": ("aquatic_mammals", "insects", "medium_mammals", "people"),
}
"""The published FC100 split by CIFAR-100 super-class: 12 / 4 / 4 super-classes.

From Oreshkin et al.'s code, ElementAI/TADAM (Apache-2.0), ``datasets/create_dataset_cifar100.py``
(``class_split``: super-class labels {1, 2, 3, 4, 5, 6, 9, 10, 15, 17, 18, 19} / {8, 11, 13, 16} /
{0, 7, 12, 14}) at commit 476b024e08977143a01ed6b2fe7e479efa587197, and the paper's Appendix
("Few-shot CIFAR100 details", ``paper/main.tex`` there), which names them as here."""


class FC100(CIFAR100Benchmark):
    """FC100, Fewshot-CIFAR100 (Oreshkin, Rodríguez López & Lacoste, 2018, "TADAM: Task
    dependent adaptive metric for improved few-shot learning", NeurIPS, Section 4.1 and the
    Appendix "Few-shot CIFAR100 details"): CIFAR-100 split by super-class so that the splits
    share little, 12 / 4 / 4 super-classes of 5 classes, hence 60 meta-training, 20
    meta-validation and 20 meta-test classes, 600 32x32 images each (both batches of the
    archive).

    The split is :data:`FC100_SUPERCLASSES`, each super-class contributing its five classes
    (:data:`~lit_meta.data.datasets.cifar100.CIFAR100_SUPERCLASSES`, checked against the
    archive's own coarse labels when it is read); :meth:`superclass` names a class's. The
    images come from CIFAR-100's official python archive, shared with CIFAR-FS in
    ``root/cifar100/``; see :class:`~lit_meta.data.datasets.cifar100.CIFAR100Benchmark` for
    the files read, the download, the checksum verified before any pickle is loaded, the
    cache and the arguments.

    Deviations: none in the classes. The paper's text says the validation and test splits
    hold "5 superclasses each"; its appendix and code list 4 each (20 classes), which is what
    is used here.
    """

    NAME: ClassVar[str] = "FC100"
    FOLDER: ClassVar[str] = "fc100"
    SPLIT_SIZES: ClassVar[dict[SplitName, SplitSize]] = {
        "train": SplitSize(60, 60 * 600),
        "val": SplitSize(20, 20 * 600),
        "test": SplitSize(20, 20 * 600),
    }

    def split_table(self) -> dict[SplitName, list[str]]:
        """The classes of each split's super-classes, super-class by super-class."""
        return {
            split: [name for coarse in superclasses for name in CIFAR100_SUPERCLASSES[coarse]]
            for split, superclasses in FC100_SUPERCLASSES.items()
        }
