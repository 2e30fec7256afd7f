"""CUB-200-2011 from miniatures of its official archive and of the folder it extracts to.

The miniatures hold six real species folders with three small JPEGs each, in the release's
layout: ``CUB_200_2011/images/<NNN.Class_name>/<Class_name>_<NNNN>_<id>.jpg`` with
``images.txt``, ``classes.txt``, ``image_class_labels.txt``, ``bounding_boxes.txt``,
``train_test_split.txt`` and ``README`` beside ``images/``.

``cu_birds_dataset_spec.json`` beside this file is Meta-Dataset's record of the release's
class sizes (google-research/meta-dataset, commit b95f66e42739b80b58cc22f0fffa0c97a34d7890,
``meta_dataset/dataset_conversion/dataset_specs/cu_birds_dataset_spec.json``; Copyright The
Meta-Dataset Authors, Apache License 2.0), copied unchanged: the split image totals are
checked against it.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from lit_meta.data import download
from lit_meta.data.datamodule import EpisodicDataModule
from lit_meta.data.datasets import CUB, build_dataset
from lit_meta.data.datasets import cub as cub_module
from lit_meta.data.datasets.base import SPLIT_NAMES
from lit_meta.data.datasets.cub import CUB_SPLITS, chen_split, meta_dataset_split
from lit_meta.errors import ChecksumError, DatasetError, DownloadedPageError
from tests.data.loopback import serve

# Chen et al.'s split (by the folders' sorted order): 001 and 003 train, 002 and 006 val, 004 and 008 test.
# Meta-Dataset's: 001-006 train, 008 test, none val.
SPECIES = (
    "001.Black_footed_Albatross",
    "002.Laysan_Albatross",
    "003.Sooty_Albatross",
    "004.Groove_billed_Ani",
    "006.Least_Auklet",
    "008.Rhinoceros_Auklet",
)
PER_CLASS = 3
WIDTH, HEIGHT = 48, 32
BOX = (16, 8, 16, 16)  # x, y, width, height: the red square of every photograph (aligned to JPEG blocks)


def _photo(seed: int) -> bytes:
    """A small JPEG: a red square at BOX on a blue ground whose shade depends on ``seed``."""
    image = Image.new("RGB", (WIDTH, HEIGHT), (0, 40 + 7 * seed % 100, 255))
    x, y, w, h = BOX
    image.paste((255, 0, 0), (x, y, x + w, y + h))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def release_members(species: Sequence[str] = SPECIES) -> dict[str, bytes]:
    """The release's files, ``CUB_200_2011/...`` -> bytes, for ``species`` (numbered as in the real list)."""
    images, labels, boxes, split, classes = [], [], [], [], []
    members = {}
    image_id = 0
    for name in species:
        number = int(name[:3])
        classes.append(f"{number} {name}")
        for k in range(PER_CLASS):
            image_id += 1
            relative = f"{name}/{name[4:]}_{k + 1:04d}_{1000 + image_id}.jpg"
            members[f"CUB_200_2011/images/{relative}"] = _photo(image_id)
            images.append(f"{image_id} {relative}")
            labels.append(f"{image_id} {number}")
            boxes.append(f"{image_id} " + " ".join(f"{v:.1f}" for v in BOX))
            split.append(f"{image_id} {k % 2}")
    for filename, lines in (
        ("images.txt", images),
        ("image_class_labels.txt", labels),
        ("bounding_boxes.txt", boxes),
        ("train_test_split.txt", split),
        ("classes.txt", classes),
    ):
        members[f"CUB_200_2011/{filename}"] = ("\n".join(lines) + "\n").encode()
    members["CUB_200_2011/README"] = b"The Caltech-UCSD Birds-200-2011 Dataset (miniature)\n"
    return members


def release_archive(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def write_release(folder: Path, members: dict[str, bytes]) -> None:
    for name, data in members.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    write_release(tmp_path / "cub", release_members())
    return tmp_path


ARCHIVE = release_archive(release_members())


@pytest.fixture
def official(monkeypatch: pytest.MonkeyPatch) -> None:
    """The miniature archive's md5 stands for the official one."""
    monkeypatch.setattr(CUB, "MD5", f"md5:{hashlib.md5(ARCHIVE).hexdigest()}")
    monkeypatch.setattr(download, "_RETRY_DELAY_S", 0.0)


# -- the published splits ---------------------------------------------------------------------------
def test_split_tables_have_the_papers_class_counts_and_the_releases_image_totals() -> None:
    # Chen et al. (2019), Section 4.1: 100 / 50 / 50 species. Triantafillou et al. (2020): 140 / 30 / 30.
    assert [len(chen_split()[s]) for s in SPLIT_NAMES] == [100, 50, 50]
    assert [len(meta_dataset_split()[s]) for s in SPLIT_NAMES] == [140, 30, 30]
    spec = json.loads((Path(__file__).parent / "cu_birds_dataset_spec.json").read_text())
    sizes = {spec["class_names"][i]: n for i, n in spec["images_per_class"].items()}
    assert sum(sizes.values()) == 11_788  # Wah et al. (2011)
    for split, expected in (("chen", CUB.SPLIT_SIZES), ("meta_dataset", CUB.META_DATASET_SPLIT_SIZES)):
        table = CUB(split=split).split_table()
        assert {s: (len(table[s]), sum(sizes[n] for n in table[s])) for s in SPLIT_NAMES} == {
            s: (size.classes, size.images) for s, size in expected.items()
        }
    assert [CUB.SPLIT_SIZES[s].images for s in SPLIT_NAMES] == [5885, 2950, 2953]
    assert [CUB.META_DATASET_SPLIT_SIZES[s].images for s in SPLIT_NAMES] == [8239, 1779, 1770]
    # Meta-Dataset's lists, in the file's order, and Chen et al.'s rule over the sorted folders.
    assert meta_dataset_split()["train"][:2] == ("190.Red_cockaded_Woodpecker", "144.Common_Tern")
    assert chen_split()["train"][:2] == ("001.Black_footed_Albatross", "003.Sooty_Albatross")
    assert chen_split()["val"][:2] == ("002.Laysan_Albatross", "006.Least_Auklet")
    assert chen_split()["test"][-1] == "200.Common_Yellowthroat"


@given(st.sampled_from(CUB_SPLITS))
def test_splits_never_share_a_species_and_cover_all_200(split: str) -> None:
    table = CUB(split=split).split_table()  # type: ignore[arg-type]
    names = [name for s in SPLIT_NAMES for name in table[s]]
    assert len(names) == len(set(names)) == 200
    assert sorted(int(name[:3]) for name in names) == list(range(1, 201))


def test_unknown_split_is_refused() -> None:
    with pytest.raises(DatasetError, match=r"unknown CUB split 'hilliard'.*'chen'.*'meta_dataset'"):
        CUB(split="hilliard")  # type: ignore[arg-type]


# -- the release folder -------------------------------------------------------------------------------
def test_episodes_through_the_datamodule_by_name(root: Path) -> None:
    dm = EpisodicDataModule(
        "cub",
        root=str(root),
        dataset_kwargs={"image_size": 8, "download": False, "allow_partial": True},
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
    assert batch.support_x.shape == (3, 2, 3, 8, 8) and batch.query_x.shape == (3, 4, 3, 8, 8)
    dataset = build_dataset("cub", root=str(root), image_size=8, allow_partial=True)
    assert isinstance(dataset, CUB) and dataset.normalization() == (CUB.MEAN, CUB.STD)
    assert [dataset.split(s).class_names for s in SPLIT_NAMES] == [
        ["001.Black_footed_Albatross", "003.Sooty_Albatross"],
        ["002.Laysan_Albatross", "006.Least_Auklet"],
        ["004.Groove_billed_Ani", "008.Rhinoceros_Auklet"],
    ]
    md = CUB(root, split="meta_dataset", image_size=8, allow_partial=True)
    assert sorted(md.split("train").class_names) == list(SPECIES[:5]) and md.split("test").class_names == [SPECIES[5]]
    with pytest.raises(DatasetError, match="holds none of the val classes"):
        md.split("val")


def test_second_load_reads_the_cache(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = CUB(root, image_size=8, allow_partial=True).split("train")
    assert len(first) == 2 * PER_CLASS
    assert (root / "cub" / "lit-meta-cache" / "cub_8px" / "images.npy").is_file()

    def no_decoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("decoded again instead of reading the cache")

    monkeypatch.setattr(cub_module, "load_image", no_decoding)
    again = CUB(root, image_size=8, allow_partial=True).split("train")
    assert (again.load(np.arange(6)) == first.load(np.arange(6))).all()


def test_bounding_box_crops_give_the_box_and_have_their_own_cache(root: Path) -> None:
    whole = CUB(root, image_size=8, allow_partial=True).split("test").load(np.arange(6))
    cropped_set = CUB(root, image_size=8, crop_to_bbox=True, allow_partial=True)
    cropped = cropped_set.split("test").load(np.arange(6))
    # The box holds only the red square (its rim blurred by JPEG's colour subsampling); the whole photograph
    # is mostly blue.
    assert float(cropped[:, 0, 2:6, 2:6].min()) > 0.95 and float(cropped[:, 2, 2:6, 2:6].max()) < 0.05
    assert float(cropped[:, 0].mean()) > 0.9 and float(cropped[:, 2].mean()) < 0.15
    assert float(whole[:, 2].mean()) > 0.5
    assert cropped_set.cache_folder.name == "cub_8px_bbox" and cropped_set.cache_folder.is_dir()
    assert CUB(root, image_size=8, allow_partial=True).cache_folder.name == "cub_8px"
    assert CUB(root, split="meta_dataset", crop_to_bbox=True).cache_folder.name == "cub_84px_meta_dataset_bbox"


def test_check_reports_a_missing_species_and_a_missing_image(tmp_path: Path) -> None:
    members = release_members([name for name in SPECIES if name != "006.Least_Auklet"])
    del members[next(name for name in members if name.startswith("CUB_200_2011/images/004."))]
    write_release(tmp_path / "cub", members)
    report = CUB(tmp_path).check()
    train, val, test = report.splits
    assert not report.ok
    assert (train.classes, train.images) == (2, 6) and train.expected.classes == 100
    assert (val.classes, val.images) == (1, 3) and "006.Least_Auklet" in val.missing
    assert (test.classes, test.images) == (2, 5) and test.expected.images == 2953
    assert "val: 49 classes missing: 006.Least_Auklet" in report.format()
    md = CUB(tmp_path, split="meta_dataset").check().splits
    assert [(r.expected.classes, r.expected.images, r.classes) for r in md] == [
        (140, 8239, 4),
        (30, 1779, 0),
        (30, 1770, 1),
    ]
    with pytest.raises(DatasetError, match=r"lacks 195 of the 200 classes .*allow_partial=True"):
        CUB(tmp_path).split("train")


def test_the_release_folder_may_lie_in_root_itself(tmp_path: Path) -> None:
    write_release(tmp_path, release_members())
    dataset = CUB(tmp_path, image_size=8, download=False, allow_partial=True)
    assert dataset.locate().paths[0] == tmp_path / "CUB_200_2011" / "images.txt"
    assert len(dataset.split("val")) == 2 * PER_CLASS


def test_an_incomplete_release_folder_is_named(tmp_path: Path) -> None:
    members = release_members()
    del members["CUB_200_2011/bounding_boxes.txt"]
    write_release(tmp_path / "cub", members)
    CUB(tmp_path, image_size=8, allow_partial=True).split("train")  # boxes are needed only for crops
    with pytest.raises(DatasetError, match=r"CUB_200_2011 lacks bounding_boxes.txt; it is not a complete extraction"):
        CUB(tmp_path, crop_to_bbox=True, allow_partial=True).split("train")


# -- the archive ----------------------------------------------------------------------------------------
def test_absent_files_name_the_archive_its_checksum_and_where_to_put_it(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as info:
        CUB(tmp_path, download=False).split("train")
    message = str(info.value)
    assert f"{tmp_path / 'cub' / 'CUB_200_2011.tgz'} (md5 97eceeb196236b17998738112f37df78" in message
    assert "https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz" in message
    assert f"{tmp_path / 'cub' / 'CUB_200_2011'}/ (holding images.txt and images/)" in message


def test_download_verifies_extracts_and_is_not_repeated(tmp_path: Path, official: None) -> None:
    with serve({"CUB_200_2011.tgz": ARCHIVE}) as site:
        dataset = CUB(tmp_path, image_size=8, mirror=site.url(""), allow_partial=True)
        dataset.prepare()
        assert site.statuses == [200]
        assert (tmp_path / "cub" / "CUB_200_2011.tgz").read_bytes() == ARCHIVE
        assert (tmp_path / "cub" / "CUB_200_2011" / "images.txt").is_file()
        assert CUB(tmp_path, image_size=8, mirror=site.url(""), allow_partial=True).split("val").class_names == [
            "002.Laysan_Albatross",
            "006.Least_Auklet",
        ]
        assert site.statuses == [200]  # found extracted: no second request


def test_download_resumes_after_a_dropped_connection(tmp_path: Path, official: None) -> None:
    with serve({"CUB_200_2011.tgz": ARCHIVE}) as site:
        site.drops, site.drop_after = 1, len(ARCHIVE) // 2
        CUB(tmp_path, mirror=site.url("")).download()
    assert site.requests == [None, f"bytes={len(ARCHIVE) // 2}-"]
    assert (tmp_path / "cub" / "CUB_200_2011" / "bounding_boxes.txt").is_file()


def test_a_corrupted_download_is_refused_and_nothing_extracted(tmp_path: Path, official: None) -> None:
    with serve({"CUB_200_2011.tgz": ARCHIVE}) as site:
        site.corrupt = True
        with pytest.raises(ChecksumError, match=r"CUB_200_2011\.tgz"):
            CUB(tmp_path, mirror=site.url("")).prepare()
    assert not (tmp_path / "cub" / "CUB_200_2011").exists() and not (tmp_path / "cub" / "CUB_200_2011.tgz").exists()


def test_a_web_page_instead_of_the_archive_is_named(tmp_path: Path, official: None) -> None:
    page = b"<!DOCTYPE html><html><head><title>Download quota exceeded</title></head><body>later</body></html>"
    with serve({"CUB_200_2011.tgz": page}) as site, pytest.raises(DownloadedPageError, match="Download quota exceeded"):
        CUB(tmp_path, mirror=site.url("")).prepare()
    assert not (tmp_path / "cub" / "CUB_200_2011.tgz").exists()


def test_a_file_mirror_and_an_archive_put_there_by_the_user(tmp_path: Path, official: None) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "CUB_200_2011.tgz").write_bytes(ARCHIVE)
    CUB(tmp_path / "a", mirror=mirror.as_uri()).download()
    assert (tmp_path / "a" / "cub" / "CUB_200_2011" / "images.txt").is_file()
    # An archive already in place is checked and extracted without any download.
    (tmp_path / "b" / "cub").mkdir(parents=True)
    (tmp_path / "b" / "cub" / "CUB_200_2011.tgz").write_bytes(ARCHIVE)
    assert len(CUB(tmp_path / "b", download=False, image_size=8, allow_partial=True).split("test")) == 6


def test_a_wrong_or_corrupt_archive_in_place_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = tmp_path / "cub" / "CUB_200_2011.tgz"
    archive.parent.mkdir()
    archive.write_bytes(ARCHIVE)
    with pytest.raises(ChecksumError, match=r"CUB_200_2011.tgz.*97eceeb196236b17998738112f37df78"):
        CUB(tmp_path, download=False).prepare()
    truncated = ARCHIVE[: len(ARCHIVE) // 2]
    archive.write_bytes(truncated)
    monkeypatch.setattr(CUB, "MD5", f"md5:{hashlib.md5(truncated).hexdigest()}")
    with pytest.raises(DatasetError, match=r"CUB_200_2011.tgz is corrupt or incomplete"):
        CUB(tmp_path, download=False).prepare()
    assert not (tmp_path / "cub" / "CUB_200_2011").exists()
