"""The shared machinery of the published benchmarks (ImageBenchmark), on a family whose
"files" are one .npz per class written by the test."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from lit_meta.data.datasets.base import SplitName
from lit_meta.data.datasets.benchmark import DecodedImages, ImageBenchmark, SourceFiles, SplitSize
from lit_meta.errors import DatasetError

TABLE: dict[SplitName, list[str]] = {"train": ["a", "b", "c"], "val": ["d", "e"], "test": ["f", "g"]}


class Tiny(ImageBenchmark):
    NAME = "Tiny"
    FOLDER = "tiny"
    SPLIT_SIZES: ClassVar[dict[SplitName, SplitSize]] = {
        "train": SplitSize(3, 12),
        "val": SplitSize(2, 8),
        "test": SplitSize(2, 8),
    }
    IMAGES_PER_CLASS = 4
    MEAN = (0.5, 0.5, 0.5)
    STD = (0.25, 0.25, 0.25)
    DEFAULT_IMAGE_SIZE = 6
    decodes = 0

    def split_table(self) -> dict[SplitName, list[str]]:
        return TABLE

    def locate(self) -> SourceFiles:
        if not self.folder.is_dir():
            raise DatasetError(f"put the tiny files in {self.folder}")
        return SourceFiles("npz per class", (self.folder,))

    def inventory(self, source: SourceFiles) -> dict[str, int]:
        return {path.stem: len(np.load(path)["x"]) for path in sorted(self.folder.glob("*.npz"))}

    def decode(self, source: SourceFiles, classes: Sequence[str]) -> DecodedImages:
        type(self).decodes += 1
        parts = [np.load(self.folder / f"{name}.npz")["x"] for name in classes]
        labels = np.repeat(np.arange(len(classes)), [len(p) for p in parts])
        return DecodedImages(np.concatenate(parts), labels, list(classes))


def write_tiny(root: Path, classes: Sequence[str] = tuple("abcdefg"), images: int = 4, extra: str = "") -> None:
    folder = root / "tiny"
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate([*classes, *([extra] if extra else [])]):
        np.savez(folder / f"{name}.npz", x=np.full((images, 3, 6, 6), i, dtype=np.uint8))


def test_splits_follow_the_table_with_class_ids_shared_by_all_splits(tmp_path: Path) -> None:
    write_tiny(tmp_path)
    family = Tiny(tmp_path)
    splits = {name: family.split(name) for name in ("train", "val", "test")}
    assert [s.class_names for s in splits.values()] == list(TABLE.values())
    assert splits["val"].class_ids.tolist() == [3, 4]
    item = splits["test"].load(np.array([0]))
    assert item.shape == (1, 3, 6, 6) and float(item.max()) == pytest.approx(5 / 255)


def test_second_load_reads_the_cache_and_a_changed_source_rebuilds_it(tmp_path: Path) -> None:
    write_tiny(tmp_path)
    Tiny.decodes = 0
    first = Tiny(tmp_path).split("train").load(np.arange(12))
    again = Tiny(tmp_path).split("train").load(np.arange(12))
    assert Tiny.decodes == 1 and (first == again).all()
    assert (tmp_path / "tiny" / "lit-meta-cache" / "tiny_6px" / "images.npy").is_file()
    assert Tiny(tmp_path).cache_bytes() > 7 * 4 * 3 * 6 * 6
    write_tiny(tmp_path, images=5)
    assert len(Tiny(tmp_path).split("train")) == 15 and Tiny.decodes == 2


def test_a_root_missing_a_listed_class_is_refused_unless_partial(tmp_path: Path) -> None:
    write_tiny(tmp_path, classes="abcdef")
    with pytest.raises(DatasetError, match=r"lacks 1 of the 7 classes.*\bg\b.*allow_partial=True"):
        Tiny(tmp_path).split("train")
    partial = Tiny(tmp_path, allow_partial=True)
    assert partial.split("test").class_names == ["f"]


def test_check_reports_counts_missing_short_and_unlisted_classes(tmp_path: Path) -> None:
    write_tiny(tmp_path, classes="abcdfg", extra="z")
    (tmp_path / "tiny" / "b.npz").unlink()
    np.savez(tmp_path / "tiny" / "b.npz", x=np.zeros((2, 3, 6, 6), np.uint8))
    report = Tiny(tmp_path).check()
    assert not report.ok
    text = report.format()
    assert "val: 1 classes missing: e" in text
    assert "train: 1 classes with too few images: b (2)" in text
    assert "in no split and are ignored: z" in text
    assert [(r.classes, r.images) for r in report.splits] == [(3, 10), (1, 4), (2, 8)]
    write_tiny(tmp_path)
    assert Tiny(tmp_path).check().ok


def test_absent_files_raise_the_familys_message(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="put the tiny files in"):
        Tiny(tmp_path).split("train")
