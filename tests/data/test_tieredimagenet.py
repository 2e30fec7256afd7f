"""tieredImageNet (Ren et al., 2018): the published split and its categories, Ren et al.'s PNG
pickles and the npz arrays written by the test in their exact layouts, the cache, the errors."""

from __future__ import annotations

import io
import pickle
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lit_meta.data.datamodule import EpisodicDataModule
from lit_meta.data.datasets import DATASETS, build_dataset
from lit_meta.data.datasets import benchmark as benchmark_module
from lit_meta.data.datasets import tieredimagenet as tiered_module
from lit_meta.data.datasets.base import SplitName
from lit_meta.data.datasets.tieredimagenet import TieredImageNet, ren_split
from lit_meta.errors import DatasetError

# Ren et al. (2018), Section 4: 608 classes, 779,165 images in 34 categories;
# meta-train 20 categories / 351 classes / 448,695 images, meta-val 6 / 97 / 124,261,
# meta-test 8 / 160 / 206,209.
PAPER = {"train": (20, 351, 448_695), "val": (6, 97, 124_261), "test": (8, 160, 206_209)}

# Real classes of each published split. ILSVRC names two classes "crane": n02012849 (the
# bird, in meta-train) and n03126707 (the machine, in no split); the published list tells.
MINI: dict[SplitName, list[str]] = {
    "train": ["n01530575", "n02012849"],
    "val": ["n02099267", "n02099429"],
    "test": ["n03314780", "n07565083"],
}
WORDS = {
    "n01530575": "brambling, Fringilla montifringilla",
    "n02012849": "crane",
    "n02099267": "flat-coated retriever",
    "n02099429": "curly-coated retriever",
    "n03314780": "face powder",
    "n07565083": "menu",
}
IMAGES = 3


def colour(label: int, image: int) -> tuple[int, int, int]:
    return (10 + 30 * label, 100 + image, 200)


def rgb(label: int, image: int) -> np.ndarray:
    return np.broadcast_to(np.array(colour(label, image), np.uint8), (84, 84, 3)).copy()


def labels_pickle(names: Sequence[str], images: int = IMAGES) -> bytes:
    """A ``{split}_labels.pkl`` as Ren et al.'s code writes it (Python 2, protocol 2)."""
    per_image = np.repeat(np.arange(len(names), dtype=np.int32), images)
    data = {
        "label_specific": per_image,
        "label_general": np.zeros_like(per_image),
        "label_specific_str": list(names),
        "label_general_str": ["category"],
    }
    return pickle.dumps(data, protocol=2)


def write_ren(root: Path, table: Mapping[str, Sequence[str]] = MINI, by_words: bool = True) -> Path:
    """Ren et al.'s tar extracted into ``root/tieredimagenet``: PNG pickles, labels, synsets.txt, class_names.txt."""
    folder = root / "tieredimagenet" / "tiered-imagenet"
    folder.mkdir(parents=True, exist_ok=True)
    for split, classes in table.items():
        encoded = []
        for label in range(len(classes)):
            for image in range(IMAGES):
                buffer = io.BytesIO()
                Image.fromarray(rgb(label, image)).save(buffer, format="PNG")
                # cv2.imencode's result: a uint8 array [bytes, 1]
                encoded.append(np.frombuffer(buffer.getvalue(), np.uint8).reshape(-1, 1))
        (folder / f"{split}_images_png.pkl").write_bytes(pickle.dumps(encoded, protocol=2))
        names = [WORDS.get(c, c) for c in classes] if by_words else list(classes)
        (folder / f"{split}_labels.pkl").write_bytes(labels_pickle(names))
    synsets = ["n03126707", *WORDS, "n09999999"]
    words = ["crane", *WORDS.values(), "unlisted thing"]
    (folder / "synsets.txt").write_text("\n".join(synsets) + "\n")
    (folder / "class_names.txt").write_text("\n".join(words) + "\n")
    return folder


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def write_npz(root: Path, table: Mapping[str, Sequence[str]] = MINI) -> Path:
    """``{split}_images.npz`` (BGR, as Ren et al.'s code decodes with OpenCV) with labels naming WordNet ids."""
    folder = root / "tieredimagenet"
    folder.mkdir(parents=True, exist_ok=True)
    for split, classes in table.items():
        images = np.stack([rgb(label, image)[..., ::-1] for label in range(len(classes)) for image in range(IMAGES)])
        (folder / f"{split}_images.npz").write_bytes(npz_bytes({"images": images}))
        (folder / f"{split}_labels.pkl").write_bytes(labels_pickle(classes))
    return folder


def assert_colours(family: TieredImageNet) -> None:
    for split, classes in MINI.items():
        data = family.split(split)
        assert data.class_names == classes
        for local, indices in enumerate(data.class_indices):
            pixels = sorted(tuple(int(v) for v in data.load_items(np.array([i]))[0, :, 0, 0]) for i in indices)
            assert pixels == [colour(local, image) for image in range(IMAGES)]


@pytest.fixture
def mini_table(monkeypatch: pytest.MonkeyPatch) -> None:
    """The split table cut down to MINI, so a fixture is a complete root."""
    monkeypatch.setattr(TieredImageNet, "split_table", lambda self: {s: list(c) for s, c in MINI.items()})
    sizes = {s: benchmark_module.SplitSize(len(c), len(c) * IMAGES) for s, c in MINI.items()}
    monkeypatch.setattr(TieredImageNet, "SPLIT_SIZES", sizes)


def test_the_shipped_split_has_the_papers_classes_and_categories() -> None:
    split = ren_split()
    family = TieredImageNet("unused")
    for name, (categories, classes, images) in PAPER.items():
        listed = family.split_table()[name]
        assert len(listed) == len(set(listed)) == classes == family.SPLIT_SIZES[name].classes
        assert len(set(family.class_categories(name).values())) == categories
        assert family.SPLIT_SIZES[name].images == images
    assert sum(s.images for s in family.SPLIT_SIZES.values()) == 779_165
    assert len(family.class_categories()) == 608 and len(family.category_names()) == 34
    assert family.category_names()["n02087551"] == "hound, hound dog"
    assert family.class_categories("val")["n02099267"] == "n02098550"  # a retriever: a sporting dog
    assert split.category_of.keys() >= set(family.class_categories())


def test_splits_share_no_class_and_no_category() -> None:
    family = TieredImageNet("unused")
    classes = {s: set(family.split_table()[s]) for s in PAPER}
    categories = {s: set(family.class_categories(s).values()) for s in PAPER}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not classes[a] & classes[b]
        assert not categories[a] & categories[b]


def test_absent_files_name_each_forms_files_the_tar_checksum_and_the_folder(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as caught:
        TieredImageNet(tmp_path).split("train")
    message = str(caught.value)
    for name in ("train_images_png.pkl", "val_labels.pkl", "test_images.npz", "synsets.txt", "class_names.txt"):
        assert name in message
    assert "tiered-imagenet.tar (md5 e07e811b9f29362d159a9edd0d838c62" in message
    assert str(tmp_path / "tieredimagenet") in message


def test_png_pickles_load_by_name_in_rgb_with_words_mapped_to_wordnet_ids(tmp_path: Path) -> None:
    write_ren(tmp_path)
    family = build_dataset("tieredimagenet", root=str(tmp_path), allow_partial=True)
    assert isinstance(family, TieredImageNet) and DATASETS["tieredimagenet"] is TieredImageNet
    assert family.check().source.form == "Ren et al. PNG pickles"
    assert_colours(family)
    assert family.split("test").class_ids.tolist() == [351 + 97, 351 + 97 + 1]


def test_npz_arrays_are_read_as_bgr_and_resized(tmp_path: Path) -> None:
    write_npz(tmp_path)
    assert_colours(TieredImageNet(tmp_path, allow_partial=True))
    small = TieredImageNet(tmp_path, image_size=20, allow_partial=True, npz_channels="RGB")
    item = small.split("train").load_items(np.array([0]))
    assert item.shape == (1, 3, 20, 20) and int(item[0, 2, 5, 5]) == 10  # RGB as stored: blue is the BGR red


def test_the_second_load_reads_the_caches_without_unpickling(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_ren(tmp_path)
    staged = []
    write = benchmark_module.write_array_cache
    monkeypatch.setattr(
        benchmark_module,
        "write_array_cache",
        lambda folder, key, arrays, meta: (
            staged.append(isinstance(arrays.get("images"), np.memmap)) or write(folder, key, arrays, meta)
        ),
    )
    first = TieredImageNet(tmp_path, allow_partial=True).split("val").load_items(np.arange(6))
    assert staged == [False, True]  # the inventory, then images decoded straight into the memory-mapped cache file

    def no_unpickling(path: Path) -> None:
        raise AssertionError(f"unpickled {path}")

    monkeypatch.setattr(tiered_module, "_load_pickle", no_unpickling)
    again = TieredImageNet(tmp_path, allow_partial=True)
    assert (again.split("val").load_items(np.arange(6)) == first).all()
    cache = tmp_path / "tieredimagenet" / "lit-meta-cache"
    assert (cache / "tieredimagenet_84px" / "images.npy").is_file()
    assert not list(cache.rglob("*.staged.npy"))


def test_check_reports_a_missing_class(tmp_path: Path, mini_table: None) -> None:
    write_ren(tmp_path)
    assert TieredImageNet(tmp_path).check().ok
    write_ren(tmp_path, {**MINI, "val": ["n02099267"]})
    report = TieredImageNet(tmp_path).check()
    assert not report.ok
    assert "val: 1 classes missing: n02099429" in report.format()
    with pytest.raises(DatasetError, match=r"lacks 1 of the 6 classes.*n02099429.*allow_partial=True"):
        TieredImageNet(tmp_path).split("train")


def test_a_full_miniature_yields_episodes_through_the_datamodule(tmp_path: Path, mini_table: None) -> None:
    write_npz(tmp_path)
    dm = EpisodicDataModule(
        "tieredimagenet",
        root=str(tmp_path),
        dataset_kwargs={"image_size": 16},
        ways=2,
        shots=1,
        queries=2,
        meta_batch_size=2,
        train_episodes=4,
        val_episodes=2,
        test_episodes=2,
    )
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert tuple(batch.support_x.shape) == (2, 2, 3, 16, 16)
    assert tuple(batch.query_x.shape) == (2, 4, 3, 16, 16)


def test_labels_without_class_names_are_refused_by_name(tmp_path: Path) -> None:
    folder = write_npz(tmp_path)
    (folder / "val_labels.pkl").write_bytes(pickle.dumps({"labels": [0, 0, 0, 1, 1, 1]}, protocol=2))
    with pytest.raises(DatasetError, match=r"val_labels\.pkl has keys \['labels'\].*MetaOptNet.*published split"):
        TieredImageNet(tmp_path, allow_partial=True).split("val")


def test_words_without_the_name_files_ask_for_them(tmp_path: Path) -> None:
    folder = write_ren(tmp_path)
    (folder / "synsets.txt").unlink()
    with pytest.raises(DatasetError, match=r"names classes by words.*synsets\.txt and class_names\.txt"):
        TieredImageNet(tmp_path, allow_partial=True).check()


def test_an_ambiguous_name_among_published_classes_is_refused(tmp_path: Path) -> None:
    folder = write_ren(tmp_path)
    (folder / "synsets.txt").write_text("n01530575\nn02012849\n")
    (folder / "class_names.txt").write_text("finch\nfinch\n")
    (folder / "train_labels.pkl").write_bytes(labels_pickle(["finch", "finch"]))
    with pytest.raises(DatasetError, match=r"'finch' is the name of n01530575, n02012849"):
        TieredImageNet(tmp_path, allow_partial=True).check()


def test_corrupt_files_are_named(tmp_path: Path) -> None:
    folder = write_ren(tmp_path)
    images = pickle.loads((folder / "test_images_png.pkl").read_bytes())
    images[4] = np.frombuffer(b"not a png", np.uint8)
    (folder / "test_images_png.pkl").write_bytes(pickle.dumps(images, protocol=2))
    with pytest.raises(DatasetError, match=r"cannot decode image .*test_images_png\.pkl\[4\]"):
        TieredImageNet(tmp_path, allow_partial=True).split("test")
    (folder / "test_images_png.pkl").write_bytes(pickle.dumps(images[:-1], protocol=2))
    with pytest.raises(DatasetError, match=r"test_images_png\.pkl holds 5 images but its labels file labels 6"):
        TieredImageNet(tmp_path, allow_partial=True).split("test")
    (folder / "test_labels.pkl").write_bytes(b"<html>quota exceeded</html>")
    with pytest.raises(DatasetError, match=r"cannot read .*test_labels\.pkl"):
        TieredImageNet(tmp_path, allow_partial=True).split("test")


def test_corrupt_npz_files_are_named(tmp_path: Path) -> None:
    folder = write_npz(tmp_path)
    (folder / "val_images.npz").write_bytes(npz_bytes({"images": np.zeros((6, 84, 84), np.uint8)}))
    with pytest.raises(DatasetError, match=r"val_images\.npz: 'images' is uint8 \[6, 84, 84\]"):
        TieredImageNet(tmp_path, allow_partial=True).split("val")
    whole = npz_bytes({"images": np.zeros((6, 84, 84, 3), np.uint8)})
    with zipfile.ZipFile(io.BytesIO(whole)) as archive:
        member = archive.read("images.npy")
    with zipfile.ZipFile(folder / "val_images.npz", "w") as archive:
        archive.writestr("images.npy", member[: len(member) // 2])
    with pytest.raises(DatasetError, match=r"val_images\.npz ends after 0 images of 6"):
        TieredImageNet(tmp_path, allow_partial=True).split("val")
    (folder / "val_images.npz").write_bytes(b"<!DOCTYPE html><title>Google Drive</title>")
    with pytest.raises(DatasetError, match=r"cannot read the images of .*val_images\.npz"):
        TieredImageNet(tmp_path, allow_partial=True).split("val")
