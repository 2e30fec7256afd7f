"""ImageFolder over generated class folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lit_meta.data.datasets import DATASETS, ImageFolder, TensorClassDataset
from lit_meta.data.datasets.image_folder import ImageFileDataset
from lit_meta.data.transforms import decode_image, invert, load_image
from lit_meta.errors import DatasetError

CLASSES = [f"class{c:02d}" for c in range(10)]
PER_CLASS = 3
FORMATS = ["png", "JPG", "jpeg", "bmp", "gif", "webp"]


def _image(path: Path, seed: int, size: tuple[int, int] = (12, 10)) -> None:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)).save(path)


def make_folders(root: Path, classes: list[str] = CLASSES) -> Path:
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(PER_CLASS):
            extension = FORMATS[(c + i) % len(FORMATS)]
            _image(root / name / f"img{i}.{extension}", seed=c * 100 + i)
        (root / name / "notes.txt").write_text("not an image")
        (root / name / ".hidden.png").write_bytes(b"")  # hidden: ignored even though it is empty
    (root / ".cache").mkdir()
    (root / "README.md").write_text("a file next to the class folders")
    return root


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return make_folders(tmp_path / "images")


def test_registered() -> None:
    assert DATASETS["image_folder"] is ImageFolder


def test_classes_and_files(root: Path) -> None:
    folder = ImageFolder(root)
    assert list(folder.class_files) == CLASSES
    assert all(len(files) == PER_CLASS for files in folder.class_files.values())


def test_fraction_split_is_disjoint_and_seeded(root: Path) -> None:
    folder = ImageFolder(root, image_size=8, split_seed=3)
    splits = {name: folder.split(name) for name in ("train", "val", "test")}
    assert [splits[n].num_classes for n in ("train", "val", "test")] == [6, 2, 2]
    names = [set(split.class_names) for split in splits.values()]
    assert not (names[0] & names[1]) and not (names[0] & names[2]) and not (names[1] & names[2])
    assert set.union(*names) == set(CLASSES)
    ids = np.concatenate([split.class_ids for split in splits.values()])
    assert sorted(ids.tolist()) == list(range(len(CLASSES)))
    assert ImageFolder(root, split_seed=3).split_classes() == folder.split_classes()
    assert ImageFolder(root, split_seed=4).split_classes() != folder.split_classes()
    train = splits["train"]
    assert isinstance(train, TensorClassDataset)
    assert train.load(np.arange(len(train))).shape == (len(train), 3, 8, 8)
    assert train.class_sizes.tolist() == [PER_CLASS] * 6


def test_explicit_lists(root: Path) -> None:
    folder = ImageFolder(
        root, image_size=(6, 9), mode="L", train_classes=CLASSES[:5], val_classes=CLASSES[5:7], test_classes=["class09"]
    )
    test = folder.split("test")
    assert test.class_names == ["class09"]
    assert test.class_ids.tolist() == [9]
    assert test.load(np.arange(PER_CLASS)).shape == (PER_CLASS, 1, 6, 9)
    assert folder.split("val").class_names == ["class05", "class06"]


def test_lazy_and_in_memory_give_the_same_items(root: Path) -> None:
    eager = ImageFolder(root, image_size=7, transform=lambda x: x * 2).split("train")
    lazy = ImageFolder(root, image_size=7, transform=lambda x: x * 2, in_memory=False).split("train")
    assert isinstance(lazy, ImageFileDataset)
    indices = np.arange(len(eager))
    torch.testing.assert_close(lazy.load(indices), eager.load(indices), rtol=0, atol=0)
    np.testing.assert_array_equal(lazy.labels, eager.labels)
    np.testing.assert_array_equal(lazy.class_ids, eager.class_ids)
    assert float(eager.load(indices).max()) > 1.0  # the transform ran


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        ImageFolder(tmp_path / "nowhere").split("train")


def test_no_class_folders(tmp_path: Path) -> None:
    (tmp_path / "loose.png").write_bytes(b"")
    with pytest.raises(DatasetError, match="no class folders"):
        ImageFolder(tmp_path).split("train")


def test_empty_class_folder_is_named(root: Path) -> None:
    (root / "class99").mkdir()
    (root / "class99" / "readme.txt").write_text("no images here")
    with pytest.raises(DatasetError, match="class99"):
        ImageFolder(root).split("train")


def test_zero_byte_image_is_named(root: Path) -> None:
    (root / "class03" / "blank.png").write_bytes(b"")
    with pytest.raises(DatasetError, match=r"blank\.png.*empty"):
        ImageFolder(root).split("train")


@pytest.mark.parametrize("in_memory", [True, False])
def test_garbage_image_is_named(root: Path, in_memory: bool) -> None:
    (root / "class04" / "broken.jpg").write_bytes(b"\xff\xd8 this is not really a jpeg")
    folder = ImageFolder(root, in_memory=in_memory, train_classes=CLASSES[:8], val_classes=["class08"], test_classes=[])
    if in_memory:
        with pytest.raises(DatasetError, match=r"broken\.jpg"):
            folder.split("train")
    else:
        split = folder.split("train")  # files are only read when loaded
        with pytest.raises(DatasetError, match=r"broken\.jpg"):
            split.load(np.arange(len(split)))


def test_truncated_image_is_named(root: Path) -> None:
    path = root / "class01" / "img0.bmp"
    _image(path, seed=1, size=(40, 40))
    path.write_bytes(path.read_bytes()[:200])
    folder = ImageFolder(root, train_classes=["class01"], val_classes=["class02"], test_classes=["class03"])
    with pytest.raises(DatasetError, match=r"img0\.bmp"):
        folder.split("train")


def test_unknown_and_overlapping_classes(root: Path) -> None:
    with pytest.raises(DatasetError, match="nonesuch"):
        ImageFolder(root, train_classes=["class00", "nonesuch"], val_classes=[], test_classes=[]).split("train")
    with pytest.raises(DatasetError, match=r"class01.*both train_classes and test_classes"):
        ImageFolder(root, train_classes=["class01"], val_classes=["class02"], test_classes=["class01"]).split("val")
    with pytest.raises(DatasetError, match="twice"):
        ImageFolder(root, train_classes=["class01", "class01"], val_classes=[], test_classes=[]).split("train")
    with pytest.raises(DatasetError, match="val_classes, test_classes missing"):
        ImageFolder(root, train_classes=["class01"])


def test_empty_split_and_bad_arguments(root: Path) -> None:
    folder = ImageFolder(root, train_classes=CLASSES, val_classes=[], test_classes=[])
    with pytest.raises(DatasetError, match=r"val split .* holds no classes"):
        folder.split("val")
    with pytest.raises(DatasetError, match="mode"):
        ImageFolder(root, mode="CMYK")  # type: ignore[arg-type]
    with pytest.raises(DatasetError, match="sum to 1"):
        ImageFolder(root, fractions=(0.5, 0.5, 0.5)).split("train")


# -- transforms ------------------------------------------------------------------------------
def test_load_image_modes_sizes_and_invert(tmp_path: Path) -> None:
    path = tmp_path / "x.png"
    _image(path, seed=0, size=(12, 10))
    rgb = load_image(path)
    assert rgb.dtype == torch.uint8 and rgb.shape == (3, 12, 10)
    assert load_image(path, "L", 5).shape == (1, 5, 5)
    assert load_image(path, "RGB", (4, 6)).shape == (3, 4, 6)
    torch.testing.assert_close(decode_image(path.read_bytes(), "RGB"), rgb)
    assert torch.equal(invert(invert(rgb)), rgb)
    assert int(invert(torch.zeros(1, dtype=torch.uint8))) == 255


def test_load_image_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"missing\.png"):
        load_image(tmp_path / "missing.png")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(DatasetError, match=r"empty\.png is empty"):
        load_image(tmp_path / "empty.png")
    with pytest.raises(DatasetError, match=r"archive\.zip::member\.png"):
        decode_image(b"garbage", name="archive.zip::member.png")
