"""CIFAR-FS and FC100 from a miniature CIFAR-100 python archive written by the test in the
release's layout: ``cifar-100-python/{train,test,meta}`` pickles in a ``.tar.gz``."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest

from lit_meta.data import EpisodicDataModule, download
from lit_meta.data.datasets import CIFARFS, DATASETS, FC100
from lit_meta.data.datasets import cifar100 as cifar100_module
from lit_meta.data.datasets.base import SplitName
from lit_meta.data.datasets.cifar100 import CIFAR100_SUPERCLASSES
from lit_meta.data.datasets.fc100 import FC100_SUPERCLASSES
from lit_meta.errors import ChecksumError, DatasetError, DownloadedPageError
from tests.data.loopback import serve

FINE_NAMES = sorted(name for names in CIFAR100_SUPERCLASSES.values() for name in names)
COARSE_NAMES = sorted(CIFAR100_SUPERCLASSES)
SUPERCLASS = {fine: coarse for coarse, fines in CIFAR100_SUPERCLASSES.items() for fine in fines}
# CIFAR-FS: apple, bear, lion train; beaver, crab val; baby, bed test.
# FC100: apple, bed train; bear, lion, crab val; beaver, baby test.
CLASSES = ("apple", "baby", "bear", "beaver", "bed", "crab", "lion")
PER_BATCH = {"train": 5, "test": 1}  # the release's 500 + 100 images per class, scaled down


def _pixels(fine: int, index: int) -> np.ndarray:
    """One image's 3072 bytes: the red plane holds v, the green v + 1, the blue v + 2."""
    value = (3 * fine + 17 * index) % 250
    return np.repeat(np.array([value, value + 1, value + 2], dtype=np.uint8), 32 * 32)


def _pickle(content: dict[str, object]) -> bytes:
    # Protocol 2 with numpy's pre-2.0 module name, as the release (written by Python 2) names it.
    return pickle.dumps(content, protocol=2).replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")


def cifar100_members(classes: tuple[str, ...] = CLASSES, superclass: dict[str, str] = SUPERCLASS) -> dict[str, bytes]:
    members = {
        "meta": _pickle({"fine_label_names": FINE_NAMES, "coarse_label_names": COARSE_NAMES}),
    }
    for batch, per_class in PER_BATCH.items():
        fine = [FINE_NAMES.index(name) for name in classes for _ in range(per_class)]
        members[batch] = _pickle(
            {
                "filenames": [f"{FINE_NAMES[f]}_s_{i:06d}.png" for i, f in enumerate(fine)],
                "batch_label": f"{batch}ing batch 1 of 1",
                "fine_labels": fine,
                "coarse_labels": [COARSE_NAMES.index(superclass[FINE_NAMES[f]]) for f in fine],
                "data": np.stack([_pixels(f, i + (batch == "test") * 1000) for i, f in enumerate(fine)]),
            }
        )
    return members


def cifar100_archive(members: dict[str, bytes] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in (members or cifar100_members()).items():
            info = tarfile.TarInfo(f"cifar-100-python/{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


ARCHIVE = cifar100_archive()


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


@pytest.fixture
def miniature(monkeypatch: pytest.MonkeyPatch) -> bytes:
    """The miniature's md5 stands in for the release's (the files would otherwise be refused)."""
    monkeypatch.setattr(cifar100_module, "CIFAR100_ARCHIVE_MD5", _md5(ARCHIVE))
    members = cifar100_members()
    monkeypatch.setattr(cifar100_module, "CIFAR100_MEMBER_MD5", {name: _md5(members[name]) for name in members})
    monkeypatch.setattr(download, "_RETRY_DELAY_S", 0.0)
    return ARCHIVE


def _put_archive(root: Path, data: bytes = ARCHIVE) -> Path:
    path = root / "cifar100" / "cifar-100-python.tar.gz"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# -- published splits -------------------------------------------------------------------------
def test_split_tables_have_the_papers_counts() -> None:
    # Bertinetto et al. (2019): 64 / 16 / 20 classes of 600 images.
    assert {s: len(n) for s, n in CIFARFS().split_table().items()} == {"train": 64, "val": 16, "test": 20}
    assert {s: (z.classes, z.images) for s, z in CIFARFS.SPLIT_SIZES.items()} == {
        "train": (64, 38400),
        "val": (16, 9600),
        "test": (20, 12000),
    }
    # Oreshkin et al. (2018): 60 / 20 / 20 classes from 12 / 4 / 4 super-classes.
    assert {s: len(n) for s, n in FC100().split_table().items()} == {"train": 60, "val": 20, "test": 20}
    assert {s: len(n) for s, n in FC100_SUPERCLASSES.items()} == {"train": 12, "val": 4, "test": 4}
    assert {s: (z.classes, z.images) for s, z in FC100.SPLIT_SIZES.items()} == {
        "train": (60, 36000),
        "val": (20, 12000),
        "test": (20, 12000),
    }
    fc100 = FC100()
    for split, names in fc100.split_table().items():
        assert {fc100.superclass(name) for name in names} == set(FC100_SUPERCLASSES[split])
    assert fc100.superclass("willow_tree") == "trees"


@pytest.mark.parametrize(("name", "family"), [("cifar_fs", CIFARFS), ("fc100", FC100)])
def test_splits_cover_cifar100_without_overlap(name: str, family: type[CIFARFS | FC100]) -> None:
    assert DATASETS[name] is family
    listed = [name for names in family().split_table().values() for name in names]
    assert len(listed) == len(set(listed)) == 100
    assert set(listed) == set(FINE_NAMES)


# -- reading the archive ----------------------------------------------------------------------
EXPECTED: dict[type, dict[SplitName, list[str]]] = {
    CIFARFS: {"train": ["apple", "bear", "lion"], "val": ["beaver", "crab"], "test": ["baby", "bed"]},
    FC100: {"train": ["apple", "bed"], "val": ["bear", "lion", "crab"], "test": ["beaver", "baby"]},
}


@pytest.mark.parametrize("family", [CIFARFS, FC100])
def test_miniature_archive_splits_by_the_published_lists(
    family: type[CIFARFS | FC100], miniature: bytes, tmp_path: Path
) -> None:
    _put_archive(tmp_path)
    dataset = family(tmp_path, allow_partial=True, download=False)
    for split, names in EXPECTED[family].items():
        part = dataset.split(split)
        assert part.class_names == names
        assert np.bincount(part.labels).tolist() == [6] * len(names)
    train = dataset.split("train")
    first = train.load(np.array([0]))[0]
    assert first.shape == (3, 32, 32)
    value = 3 * FINE_NAMES.index("apple")  # the train batch's first apple image
    assert (first * 255).round()[:, 0, 0].tolist() == [value, value + 1, value + 2]
    assert dataset.check().splits[0].short == tuple((name, 6) for name in EXPECTED[family]["train"])
    assert dataset.normalization()[0][0] == pytest.approx(129.37731888 / 255)


def test_both_families_share_one_archive_and_later_loads_unpickle_nothing(
    miniature: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _put_archive(tmp_path)
    reads: list[Path] = []
    read = cifar100_module.read_cifar100
    monkeypatch.setattr(cifar100_module, "read_cifar100", lambda source: reads.append(source.paths[0]) or read(source))
    CIFARFS(tmp_path, allow_partial=True, download=False).split("train")
    FC100(tmp_path, allow_partial=True, download=False).split("train")
    assert len(reads) == 2  # once per family: FC100 found the archive's labels cached by CIFAR-FS
    caches = sorted(p.name for p in (tmp_path / "cifar100" / "lit-meta-cache").iterdir())
    assert caches == ["cifar100_labels", "cifar_fs_32px", "fc100_32px"]

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("unpickled although the caches hold everything")

    monkeypatch.setattr(cifar100_module, "load_array_pickle", refuse)
    monkeypatch.setattr(cifar100_module, "read_cifar100", refuse)
    assert CIFARFS(tmp_path, allow_partial=True).split("val").class_names == ["beaver", "crab"]
    assert len(FC100(tmp_path, allow_partial=True).split("val")) == 18


def test_extracted_folder_is_read_after_verifying_each_pickle(miniature: bytes, tmp_path: Path) -> None:
    folder = tmp_path / "cifar100" / "cifar-100-python"
    folder.mkdir(parents=True)
    for name, data in cifar100_members().items():
        (folder / name).write_bytes(data)
    dataset = CIFARFS(tmp_path, allow_partial=True, download=False, image_size=16)
    assert dataset.check().source.form == "extracted CIFAR-100 python folder"
    assert dataset.split("test").load(np.arange(3)).shape == (3, 3, 16, 16)
    (folder / "test").write_bytes(cifar100_members(classes=("apple",))["test"])
    with pytest.raises(ChecksumError, match=r"cifar-100-python/test: expected md5"):
        CIFARFS(tmp_path, allow_partial=True, download=False, cache=False).split("test")


class _RunsCode:
    def __reduce__(self) -> tuple[object, tuple[()]]:
        return (os.getcwd, ())


def test_a_pickle_naming_other_globals_is_refused_even_with_a_matching_checksum(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    members = cifar100_members()
    members["meta"] = pickle.dumps({"fine_label_names": _RunsCode()}, protocol=2)
    archive = cifar100_archive(members)
    monkeypatch.setattr(cifar100_module, "CIFAR100_ARCHIVE_MD5", _md5(archive))
    _put_archive(tmp_path, archive)
    with pytest.raises(DatasetError, match=r"cifar-100-python/meta .*refused to load the global posix\.getcwd"):
        CIFARFS(tmp_path, allow_partial=True, download=False).split("train")


def test_a_local_archive_with_another_checksum_is_refused_before_unpickling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _put_archive(tmp_path)  # the miniature, whose md5 is not the release's

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("unpickled an unverified archive")

    monkeypatch.setattr(cifar100_module, "load_array_pickle", refuse)
    with pytest.raises(ChecksumError, match=rf"{path}: expected md5 eb9058c3a382ffc7106e4002c42a8d85, got"):
        CIFARFS(tmp_path, allow_partial=True).split("train")


def test_an_archive_with_other_superclasses_is_not_cifar100(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = cifar100_archive(cifar100_members(superclass={**SUPERCLASS, "crab": "insects"}))
    monkeypatch.setattr(cifar100_module, "CIFAR100_ARCHIVE_MD5", _md5(archive))
    _put_archive(tmp_path, archive)
    with pytest.raises(DatasetError, match=r"class 'crab' .* 'insects', but CIFAR-100 puts it in 'non-insect"):
        FC100(tmp_path, allow_partial=True, download=False).split("val")


def test_absent_files_name_the_archive_its_checksum_and_where_to_put_it(tmp_path: Path) -> None:
    expected = tmp_path / "cifar100" / "cifar-100-python.tar.gz"
    with pytest.raises(DatasetError) as error:
        FC100(tmp_path, download=False).split("train")
    message = str(error.value)
    assert str(expected) in message and "md5 eb9058c3a382ffc7106e4002c42a8d85" in message
    assert "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz" in message
    assert "cifar100/cifar-100-python/ with train, test and meta" in message


class _OneMissing(CIFARFS):
    def split_table(self) -> dict[SplitName, list[str]]:
        return {"train": ["apple", "bear", "lion"], "val": ["beaver", "crab", "otter"], "test": ["baby", "bed"]}


def test_check_reports_a_missing_class(miniature: bytes, tmp_path: Path) -> None:
    _put_archive(tmp_path)
    report = _OneMissing(tmp_path, download=False).check()
    assert not report.ok
    assert report.splits[1].missing == ("otter",)
    assert "val: 1 classes missing: otter" in report.format()


# -- download ---------------------------------------------------------------------------------
def test_download_verifies_and_resumes_into_the_shared_folder(miniature: bytes, tmp_path: Path) -> None:
    with serve({"cifar-100-python.tar.gz": ARCHIVE}) as site:
        site.drops, site.drop_after = 1, len(ARCHIVE) // 2
        dataset = CIFARFS(tmp_path, allow_partial=True, mirror=site.url(""))
        assert dataset.split("train").class_names == ["apple", "bear", "lion"]
        assert site.requests == [None, f"bytes={len(ARCHIVE) // 2}-"]
        # FC100 finds the same download: no further request.
        assert FC100(tmp_path, allow_partial=True, mirror=site.url("")).split("test").class_names == ["beaver", "baby"]
        assert len(site.requests) == 2
    assert (tmp_path / "cifar100" / "cifar-100-python.tar.gz").read_bytes() == ARCHIVE


def test_download_from_a_file_mirror(miniature: bytes, tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "cifar-100-python.tar.gz").write_bytes(ARCHIVE)
    dataset = FC100(tmp_path / "data", allow_partial=True, mirror=mirror.as_uri())
    assert dataset.split("val").class_names == ["bear", "lion", "crab"]


def test_a_corrupt_download_is_deleted_and_named(miniature: bytes, tmp_path: Path) -> None:
    with serve({"cifar-100-python.tar.gz": ARCHIVE}) as site:
        site.corrupt = True
        with pytest.raises(ChecksumError, match=r"cifar-100-python.tar.gz: expected md5 .*deleted"):
            CIFARFS(tmp_path, allow_partial=True, mirror=site.url("")).split("train")
    assert not list((tmp_path / "cifar100").iterdir())


def test_a_web_page_instead_of_the_archive_is_recognised(miniature: bytes, tmp_path: Path) -> None:
    page = b"<!DOCTYPE html><html><head><title>Quota exceeded</title></head><body>Try later</body></html>"
    with (
        serve({"cifar-100-python.tar.gz": page}) as site,
        pytest.raises(DownloadedPageError, match=r"web page \(title: 'Quota exceeded'\)"),
    ):
        FC100(tmp_path, allow_partial=True, mirror=site.url("")).split("train")
    assert not (tmp_path / "cifar100" / "cifar-100-python.tar.gz").exists()


# -- episodes ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["cifar_fs", "fc100"])
def test_episodes_through_the_datamodule(name: str, miniature: bytes, tmp_path: Path) -> None:
    _put_archive(tmp_path)
    dm = EpisodicDataModule(
        dataset=name,
        root=str(tmp_path),
        dataset_kwargs={"allow_partial": True, "download": False},
        ways=2,
        shots=1,
        queries=2,
        meta_batch_size=3,
        train_episodes=6,
        val_episodes=3,
        test_episodes=3,
    )
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch.support_x.shape == (3, 2, 3, 32, 32)
    assert batch.query_x.shape == (3, 4, 3, 32, 32)
