"""miniImageNet (Vinyals et al. 2016) in Ravi & Larochelle's (2017) split, from miniatures of each
distributed form: LibFewShot's folder, an image folder named as in the CSVs, class folders (MAML's
layout) and learn2learn's pickles, written by the tests with a few of the real WordNet ids and file
names."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import lit_meta.data.datasets.miniimagenet as miniimagenet_module
from lit_meta.data.datamodule import EpisodicDataModule
from lit_meta.data.datasets import DATASETS, MiniImageNet
from lit_meta.data.datasets.base import SPLIT_NAMES
from lit_meta.data.datasets.miniimagenet import PICKLE_FILES, ravi_split
from lit_meta.errors import DatasetError

SIZE = 8  # image_size of the miniatures
PER_CLASS = 3
# Real classes of each split, in the order of the published CSVs (the first of each, and more).
CLASSES = {
    "train": ["n01532829", "n01558993", "n01704323"],
    "val": ["n01855672", "n02091244"],
    "test": ["n01930112", "n01981276"],
}
CLASS_IDS = {"train": [0, 1, 2], "val": [64, 65], "test": [80, 81]}  # positions in the published table
FORMS = ("libfewshot", "image_folder", "class_folders", "pickles")


def colour(class_number: int, image: int) -> np.ndarray:
    """A flat colour per image: JPEG and Lanczos resizing keep it (up to rounding)."""
    return np.array([20 + 30 * class_number, 40 + 50 * image, 200 - 20 * class_number], dtype=np.uint8)


def fixture_rows(classes: dict[str, list[str]] = CLASSES) -> dict[str, list[tuple[str, str]]]:
    """The first PER_CLASS rows of each chosen class in the published CSVs: real file names."""
    rows = {}
    for split, wnids in classes.items():
        rows[split] = [row for wnid in wnids for row in [r for r in ravi_split()[split] if r[1] == wnid][:PER_CLASS]]
    return rows


def expected_pixels(split: str) -> np.ndarray:
    """The items of ``split`` as ``[N, 3, SIZE, SIZE]`` uint8, class-major."""
    numbers = {wnid: i for i, wnid in enumerate(w for s in SPLIT_NAMES for w in CLASSES[s])}
    blocks = [
        np.broadcast_to(colour(numbers[wnid], i)[:, None, None], (3, SIZE, SIZE))
        for wnid in CLASSES[split]
        for i in range(PER_CLASS)
    ]
    return np.stack(blocks)


def write_form(root: Path, form: str, classes: dict[str, list[str]] = CLASSES) -> Path:
    """Write the miniature in ``form`` under ``root/miniimagenet``; returns that folder."""
    folder = root / "miniimagenet"
    folder.mkdir(parents=True, exist_ok=True)
    numbers = {wnid: i for i, wnid in enumerate(w for s in SPLIT_NAMES for w in CLASSES[s])}
    rows = fixture_rows(classes)
    if form == "pickles":
        for split, split_rows in rows.items():
            data = np.stack(
                [
                    np.broadcast_to(colour(numbers[w], i % PER_CLASS), (SIZE, SIZE, 3))
                    for i, (_, w) in enumerate(split_rows)
                ]
            )
            class_dict = {wnid: [i for i, (_, w) in enumerate(split_rows) if w == wnid] for wnid in classes[split]}
            with open(folder / PICKLE_FILES[split][0], "wb") as file:
                pickle.dump({"image_data": data, "class_dict": class_dict}, file)
        return folder
    for split, split_rows in rows.items():
        for i, (name, wnid) in enumerate(split_rows):
            target = folder / split / wnid / name if form == "class_folders" else folder / "images" / name
            target.parent.mkdir(parents=True, exist_ok=True)
            # Any size: 16x12 files, resized to SIZE by the dataset.
            pixels = np.broadcast_to(colour(numbers[wnid], i % PER_CLASS), (12, 16, 3))
            Image.fromarray(np.ascontiguousarray(pixels)).save(target, format="JPEG", quality=95)
        if form == "libfewshot":
            lines = ["filename,label", *(f"{name},{wnid}" for name, wnid in split_rows)]
            (folder / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return folder


def load(root: Path, **kwargs: object) -> MiniImageNet:
    return MiniImageNet(root, image_size=SIZE, allow_partial=True, **kwargs)  # type: ignore[arg-type]


# -- the published split ------------------------------------------------------------------------
def test_shipped_split_has_the_papers_counts_and_disjoint_classes() -> None:
    # Ravi & Larochelle (2017), Section 5: 64 / 16 / 20 classes of 600 images each.
    split = ravi_split()
    table = MiniImageNet().split_table()
    assert {name: len(classes) for name, classes in table.items()} == {"train": 64, "val": 16, "test": 20}
    assert {name: len(rows) for name, rows in split.items()} == {"train": 38_400, "val": 9_600, "test": 12_000}
    for name, rows in split.items():
        sizes = {wnid: sum(1 for _, w in rows if w == wnid) for wnid in table[name]}
        assert set(sizes.values()) == {600}
        assert MiniImageNet.SPLIT_SIZES[name].classes == len(table[name])
        assert MiniImageNet.SPLIT_SIZES[name].images == len(rows)
    assert len({wnid for classes in table.values() for wnid in classes}) == 100
    all_files = [name for rows in split.values() for name, _ in rows]
    assert len(set(all_files)) == 60_000 and all(name.endswith(".jpg") for name in all_files)
    assert table["train"][0] == "n01532829" and table["val"][0] == "n01855672" and table["test"][0] == "n01930112"
    assert DATASETS["miniimagenet"] is MiniImageNet


# -- the forms ------------------------------------------------------------------------------------
@pytest.mark.parametrize("form", FORMS)
def test_every_form_gives_the_same_items_classes_and_ids(tmp_path: Path, form: str) -> None:
    write_form(tmp_path, form)
    family = load(tmp_path)
    assert (
        family.check().source.form
        == {
            "libfewshot": "LibFewShot folder",
            "image_folder": "image folder",
            "class_folders": "class folders",
            "pickles": "learn2learn pickles",
        }[form]
    )
    for split in SPLIT_NAMES:
        data = family.split(split)
        assert data.class_names == CLASSES[split] and data.class_ids.tolist() == CLASS_IDS[split]
        items = (data.load(np.arange(len(data))) * 255).round().numpy()
        tolerance = 0 if form == "pickles" else 3  # JPEG rounding of a flat colour
        np.testing.assert_allclose(items, expected_pixels(split), atol=tolerance)


def test_files_in_root_itself_are_found_and_the_folder_is_searched_first(tmp_path: Path) -> None:
    folder = write_form(tmp_path, "pickles")
    for path in folder.iterdir():
        path.rename(tmp_path / path.name)
    assert load(tmp_path).split("val").class_names == CLASSES["val"]
    write_form(tmp_path, "image_folder")
    assert load(tmp_path).check().source.form == "image folder"


def test_pickles_resize_to_another_image_size(tmp_path: Path) -> None:
    write_form(tmp_path, "pickles")
    items = MiniImageNet(tmp_path, image_size=5, allow_partial=True).split("test").load(np.arange(2))
    assert items.shape == (2, 3, 5, 5)
    np.testing.assert_allclose((items * 255).round().numpy(), expected_pixels("test")[:2, :, :5, :5], atol=1)


@pytest.mark.parametrize("form", ["pickles", "image_folder"])
def test_second_load_reads_the_cache_without_unpickling_or_decoding(
    tmp_path: Path, form: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_form(tmp_path, form)
    first = load(tmp_path).split("train").load(np.arange(9))
    assert (tmp_path / "miniimagenet" / "lit-meta-cache" / f"miniimagenet_{SIZE}px" / "images.npy").is_file()

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the source was read again")

    monkeypatch.setattr(miniimagenet_module, "load_array_pickle", refuse)
    monkeypatch.setattr(miniimagenet_module, "load_image", refuse)
    again = load(tmp_path).split("train").load(np.arange(9))
    assert (first == again).all()
    assert load(tmp_path).check().ok is False  # check() too reads the recorded inventory


def test_a_partial_root_is_refused_unless_allowed(tmp_path: Path) -> None:
    write_form(tmp_path, "pickles")
    with pytest.raises(DatasetError, match=r"miniImageNet at .* lacks 93 of the 100 classes.*allow_partial=True"):
        MiniImageNet(tmp_path, image_size=SIZE).split("train")


# -- check ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("form", FORMS)
def test_check_reports_a_missing_class(tmp_path: Path, form: str) -> None:
    write_form(tmp_path, form, classes={**CLASSES, "val": ["n01855672"]})
    report = load(tmp_path).check()
    text = report.format()
    assert not report.ok
    assert [(r.classes, r.images) for r in report.splits] == [(3, 9), (1, 3), (2, 6)]
    assert "val: 15 classes missing: n02091244, " in text  # the fixture's other val class, then the 14 never written
    assert "train: 3 classes with too few images: n01532829 (3)" in text
    assert "does NOT match the published split" in text


# -- errors ----------------------------------------------------------------------------------------
def test_absent_files_name_every_form_with_its_paths(tmp_path: Path) -> None:
    (tmp_path / "miniimagenet").mkdir()
    with pytest.raises(DatasetError) as error:
        load(tmp_path).split("train")
    message = str(error.value)
    folder = tmp_path / "miniimagenet"
    for expected in (
        f"miniImageNet files not found in {folder} (nor in {tmp_path})",
        "There is no official download",
        f"LibFewShot's miniImageNet--ravi folder: {folder / 'images'}/<file>.jpg with {folder / 'train.csv'}",
        f"{folder / 'images'}/n0153282900000005.jpg",
        f"{folder}/train|val|test/<WordNet id>/<images>",
        f"{folder / 'mini-imagenet-cache-train.pkl'}, {folder / 'mini-imagenet-cache-validation.pkl'} (or "
        "mini-imagenet-cache-val.pkl)",
        "use only files you trust",
    ):
        assert expected in message


def _html_page(path: Path) -> None:
    path.write_bytes(b"<!DOCTYPE html><html><head><title>Google Drive - Quota exceeded</title></head></html>")


def _truncated(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:50])


def _other_dict(path: Path) -> None:
    path.write_bytes(pickle.dumps({"data": np.zeros((1, SIZE, SIZE, 3), np.uint8), "labels": [0]}))


def _bad_indices(path: Path) -> None:
    image_data = np.zeros((2, SIZE, SIZE, 3), np.uint8)
    path.write_bytes(pickle.dumps({"image_data": image_data, "class_dict": {"n01930112": [0, 5]}}))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (_html_page, r"is a web page \(title: 'Google Drive - Quota exceeded'\), not learn2learn's .*obtain the file"),
        (_truncated, r"cannot unpickle .*damaged or truncated; obtain it again"),
        (_other_dict, r"is not learn2learn's miniImageNet pickle: .*found a dict with keys \['data', 'labels'\]"),
        (_bad_indices, r"'class_dict' entry 'n01930112' should list indices into the 2 images"),
    ],
)
def test_a_bad_pickle_is_named(tmp_path: Path, damage: Callable[[Path], None], message: str) -> None:
    folder = write_form(tmp_path, "pickles")
    path = folder / "mini-imagenet-cache-test.pkl"
    damage(path)
    with pytest.raises(DatasetError, match=message) as error:
        load(tmp_path).split("train")
    assert str(path) in str(error.value)


def test_a_corrupt_image_is_named(tmp_path: Path) -> None:
    folder = write_form(tmp_path, "image_folder")
    name = fixture_rows()["val"][1][0]
    (folder / "images" / name).write_bytes(b"\xff\xd8 not a jpeg")
    with pytest.raises(DatasetError, match=rf"cannot decode image .*{name}"):
        load(tmp_path).split("train")


def test_libfewshot_csvs_of_another_split_are_refused(tmp_path: Path) -> None:
    folder = write_form(tmp_path, "libfewshot")
    test_csv = (folder / "test.csv").read_text()
    (folder / "test.csv").write_text(test_csv + "n0185567200000003.jpg,n01855672\n")
    with pytest.raises(
        DatasetError, match=r"test.csv lists class n01855672, which Ravi & Larochelle's split puts in val"
    ):
        load(tmp_path).check()
    (folder / "test.csv").write_text("file,class\n")
    with pytest.raises(DatasetError, match=r"test.csv is not a miniImageNet split CSV: .*'filename,label'"):
        load(tmp_path).check()


# -- through the datamodule -----------------------------------------------------------------------
def test_episodes_through_the_datamodule_by_name(tmp_path: Path) -> None:
    write_form(tmp_path, "pickles")
    dm = EpisodicDataModule(
        dataset="miniimagenet",
        root=str(tmp_path),
        dataset_kwargs={"image_size": SIZE, "allow_partial": True},
        ways=2,
        shots=1,
        queries=2,
        meta_batch_size=3,
        train_episodes=3,
        val_episodes=1,
        test_episodes=1,
    )
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch.support_x.shape == (3, 2, 3, SIZE, SIZE) and batch.query_x.shape == (3, 4, 3, SIZE, SIZE)
    assert dm.dataset.normalization() == (MiniImageNet.MEAN, MiniImageNet.STD)
