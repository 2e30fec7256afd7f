"""The ``features`` dataset: a file of feature vectors served as class-indexed splits, loaded without pickle."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lit_meta.data.datamodule import EpisodicDataModule
from lit_meta.data.datasets import DATASETS, build_dataset
from lit_meta.data.datasets.features import FORMAT_KEY, FORMAT_VERSION, FeatureArrays, FeaturesDataset
from lit_meta.errors import DatasetError

SPLIT_OF_CLASS = ["train"] * 6 + ["val"] * 3 + ["test"] * 3
ITEMS_PER_CLASS = 4
DIM = 5


def arrays(split_of_class: list[str] = SPLIT_OF_CLASS) -> FeatureArrays:
    """Items of a class lie near its class id times 10, in class order; class ids start at 100."""
    classes = len(split_of_class)
    labels = np.repeat(np.arange(classes), ITEMS_PER_CLASS)
    rng = np.random.default_rng(0)
    features = (labels[:, None] * 10 + rng.normal(size=(len(labels), DIM))).astype(np.float32)
    return FeatureArrays(
        features=features,
        labels=labels.astype(np.int64),
        class_names=np.array([f"class{c}" for c in range(classes)]),
        class_ids=np.arange(100, 100 + classes, dtype=np.int64),
        class_split=np.array(split_of_class),
        metadata={"learner": "test"},
    )


def raw_arrays(source: FeatureArrays) -> dict[str, np.ndarray]:
    return {
        "features": source.features,
        "labels": source.labels,
        "class_names": source.class_names,
        "class_ids": source.class_ids,
        "class_split": source.class_split,
        FORMAT_KEY: np.array(FORMAT_VERSION),
        "metadata": np.array(json.dumps({"learner": "test"})),
    }


@pytest.fixture
def features_file(tmp_path: Path) -> Path:
    return arrays().save(tmp_path / "features.npz")


def test_registered_as_features(features_file: Path) -> None:
    assert DATASETS["features"] is FeaturesDataset
    assert isinstance(build_dataset("features", root=str(features_file)), FeaturesDataset)


def test_splits_hold_their_classes_ids_names_and_items_as_stored(features_file: Path) -> None:
    dataset = FeaturesDataset(features_file)
    source = arrays()
    assert dataset.metadata["learner"] == "test"
    assert dataset.feature_dim == DIM
    seen: set[int] = set()
    for name in ("train", "val", "test"):
        split = dataset.split(name)
        global_classes = np.flatnonzero(source.class_split == name)
        assert split.class_ids.tolist() == source.class_ids[global_classes].tolist()
        assert split.class_names == [f"class{c}" for c in global_classes]
        assert split.class_sizes.tolist() == [ITEMS_PER_CLASS] * len(global_classes)
        rows = np.flatnonzero(np.isin(source.labels, global_classes))
        items = split.load(np.arange(len(split)))
        assert items.dtype == torch.float32
        assert torch.equal(items, torch.from_numpy(source.features[rows]))
        assert split.labels.tolist() == (source.labels[rows] - global_classes[0]).tolist()
        assert not seen & set(split.class_ids.tolist())
        seen |= set(split.class_ids.tolist())


def test_a_split_without_classes_is_absent_and_skipped_by_the_datamodule(tmp_path: Path) -> None:
    path = arrays(["train"] * 6 + ["test"] * 3).save(tmp_path / "no_val.npz")
    dataset = FeaturesDataset(path)
    assert dataset.has_split("train") and dataset.has_split("test") and not dataset.has_split("val")
    with pytest.raises(DatasetError, match="no val classes"):
        dataset.split("val")
    datamodule = EpisodicDataModule("features", root=str(path), ways=3, shots=1, queries=2, meta_batch_size=2)
    datamodule.setup("fit")
    assert datamodule.empty_splits == {"val"}
    batch = next(iter(datamodule.train_dataloader()))
    assert batch.support_x.shape == (2, 3, DIM)
    # Items of class c lie near 10 c: each support item belongs to the class its episode label names.
    nearest = (batch.support_x.mean(-1) / 10).round().long() + 100
    assert torch.equal(nearest, batch.classes.gather(1, batch.support_y))


def test_save_refuses_to_overwrite(features_file: Path) -> None:
    before = features_file.read_bytes()
    with pytest.raises(DatasetError, match="exists; pass --overwrite"):
        arrays(["train"] * 12).save(features_file)
    assert features_file.read_bytes() == before
    arrays(["train"] * 12).save(features_file, overwrite=True)
    assert not FeaturesDataset(features_file).has_split("test")
    assert [p.name for p in features_file.parent.iterdir()] == [features_file.name]  # no temporary file left


def test_an_object_array_is_refused_without_unpickling(tmp_path: Path) -> None:
    path = tmp_path / "pickled.npz"
    np.savez(path, **{**raw_arrays(arrays()), "class_names": np.array([object()] * 12, dtype=object)})
    with pytest.raises(DatasetError, match=r"object arrays.*never unpickles"):
        FeaturesDataset(path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({FORMAT_KEY: None}, "not written by lit-meta"),
        ({"labels": None}, r"lacks the arrays \['labels'\]"),
        ({"features": np.zeros((48, DIM), dtype=np.float64)}, "'features' must be float32"),
        ({"labels": np.full(48, 12, dtype=np.int64)}, r"labels must lie in 0\.\.11"),
        ({"class_split": np.array(["train"] * 11 + ["holdout"])}, "holdout"),
        ({"class_ids": np.arange(11, dtype=np.int64)}, "12 class names, 11 class ids"),
        ({FORMAT_KEY: np.array(FORMAT_VERSION + 1)}, "newer than this lit-meta reads"),
    ],
    ids=["foreign", "missing", "dtype", "labels", "split", "ids", "version"],
)
def test_invalid_files_are_refused_with_the_reason(tmp_path: Path, change: dict, message: str) -> None:
    path = tmp_path / "bad.npz"
    contents = {**raw_arrays(arrays()), **change}
    np.savez(path, **{name: value for name, value in contents.items() if value is not None})
    with pytest.raises(DatasetError, match=message):
        FeaturesDataset(path)


def test_missing_root_or_file_or_not_an_archive(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="needs root="):
        FeaturesDataset()
    with pytest.raises(DatasetError, match="does not exist; write one with: lit-meta embed"):
        FeaturesDataset(tmp_path / "absent.npz")
    text = tmp_path / "notes.npz"
    text.write_text("not an archive")
    with pytest.raises(DatasetError, match=r"not an \.npz archive"):
        FeaturesDataset(text)
    single = tmp_path / "single.npy"
    np.save(single, np.zeros(3))
    with pytest.raises(DatasetError, match=r"not an \.npz archive"):
        FeaturesDataset(single)
