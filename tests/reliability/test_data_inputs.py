"""Issue 17, cases 4, 5 and 9: extraction that deletes nothing it did not create, a meta-batch that an
epoch cannot fill, and downloads from ``file://`` mirrors and unsupported schemes."""

from __future__ import annotations

import hashlib
import re
import warnings
from pathlib import Path

import pytest

from lit_meta import EpisodicDataModule
from lit_meta.data import download
from lit_meta.data.datasets import Omniglot
from lit_meta.data.download import download_and_extract, download_url, extract_archive
from lit_meta.errors import ChecksumError, DatasetError, EpisodeConfigError
from tests.conftest import TinyImages
from tests.data import test_download as loopback
from tests.data.test_omniglot import _resources, make_release

site = loopback.site  # the loopback HTTP server fixture of the download tests
ZIP = loopback.ZIP  # images_background/<alphabet>/characterNN/<id>_<drawer>.png
MARKER = ".lit-meta-extracted-images_background.zip.json"


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --- case 4: extraction never deletes what lit-meta did not create -------------------------------------------------


def test_case_04_extract_refuses_a_folder_of_the_user(tmp_path: Path) -> None:
    archive = tmp_path / "images_background.zip"
    archive.write_bytes(ZIP)
    mine = tmp_path / "images_background"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    before = _tree(tmp_path)
    with pytest.raises(DatasetError) as raised:
        extract_archive(archive, tmp_path)
    message = str(raised.value)
    assert f"{mine} already exists and was not extracted there by lit-meta" in message
    assert f"Move {mine} away" in message and "point the dataset's root at another folder" in message
    assert _tree(tmp_path) == before  # the user's file kept, no marker, no staging folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images_background", "images_background.zip"]


def test_case_04_download_and_extract_refuses_a_file_of_the_user(tmp_path: Path) -> None:
    served = tmp_path / "mirror" / "images_background.zip"
    served.parent.mkdir()
    served.write_bytes(ZIP)
    root = tmp_path / "root"
    root.mkdir()
    (root / "images_background").write_text("a file of the user's, named like the archive's folder")
    with pytest.raises(DatasetError, match=r"images_background already exists and was not extracted"):
        download_and_extract(served.as_uri(), root, _sha256(ZIP))
    assert (root / "images_background").read_text().startswith("a file of the user's")


def test_case_04_files_added_to_an_extraction_are_not_deleted(tmp_path: Path) -> None:
    archive = tmp_path / "images_background.zip"
    archive.write_bytes(loopback._zip_bytes({"images_background/a.png": b"old"}))
    extract_archive(archive, tmp_path)
    added = tmp_path / "images_background" / "added.txt"
    added.write_text("the user's")
    archive.write_bytes(ZIP)  # a new version would replace the old extraction, but for the added file
    with pytest.raises(DatasetError, match=r"holds .*added\.txt, which lit-meta did not extract") as raised:
        extract_archive(archive, tmp_path)
    assert str(added) in str(raised.value)
    assert added.read_text() == "the user's" and (tmp_path / "images_background" / "a.png").read_bytes() == b"old"


def test_case_04_extracting_again_is_idempotent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = tmp_path / "images_background.zip"
    archive.write_bytes(ZIP)
    first = extract_archive(archive, tmp_path)
    assert (tmp_path / MARKER).is_file()

    def no_writes(*args: object) -> None:
        raise AssertionError("an unchanged archive is not extracted again")

    monkeypatch.setattr(download, "_write_member", no_writes)
    assert extract_archive(archive, tmp_path) == first


def test_case_04_an_extraction_cut_short_is_replaced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = tmp_path / "two.tar.gz"
    archive.write_bytes(loopback._tar_bytes({"a/1.txt": b"1", "b/2.txt": b"2"}))
    real_replace, calls = download.os.replace, []

    def crash_on_the_second_entry(src: str | Path, dst: str | Path) -> None:
        calls.append(dst)
        if len(calls) == 3:  # the marker (incomplete), entry a, then entry b
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(download.os, "replace", crash_on_the_second_entry)
    with pytest.raises(KeyboardInterrupt):
        extract_archive(archive, tmp_path)
    monkeypatch.setattr(download.os, "replace", real_replace)
    assert (tmp_path / "a").is_dir() and not (tmp_path / "b").exists()
    assert extract_archive(archive, tmp_path) == [tmp_path / "a", tmp_path / "b"]
    assert _tree(tmp_path / "a") == {"1.txt": b"1"} and _tree(tmp_path / "b") == {"2.txt": b"2"}


# --- case 5: a meta-batch that an epoch cannot fill -----------------------------------------------------------------


def _datamodule(**kwargs: int) -> EpisodicDataModule:
    shape = dict(ways=3, shots=1, queries=2, val_episodes=4, test_episodes=4)
    return EpisodicDataModule(TinyImages(), **{**shape, **kwargs})


def test_case_05_meta_batch_larger_than_epoch() -> None:
    with pytest.raises(EpisodeConfigError) as raised:
        _datamodule(meta_batch_size=64, train_episodes=10)
    assert str(raised.value) == (
        "meta_batch_size=64 but train_episodes=10 per epoch: every training step would hold 10 tasks, not 64. "
        "Raise train_episodes to at least 64, or lower meta_batch_size to at most 10"
    )


def test_case_05_meta_batch_larger_than_each_ranks_share() -> None:
    dm = _datamodule(meta_batch_size=6, train_episodes=8)  # fits one process, not two
    dm.setup("fit")
    dm.samplers["train"].num_replicas = 2  # as under DDP with 2 ranks, each drawing 4 episodes
    with pytest.raises(EpisodeConfigError) as raised:
        dm.train_dataloader()
    message = str(raised.value)
    assert "meta_batch_size=6 but each of the 2 ranks draws only 4 of the train_episodes=8" in message
    assert "Raise train_episodes to at least 12 (meta_batch_size x 2 ranks), or lower meta_batch_size to at most 4" in (
        message
    )


def test_case_05_a_shorter_last_step_is_said_once() -> None:
    dm = _datamodule(meta_batch_size=4, train_episodes=10)
    dm.setup("fit")
    with pytest.warns(
        UserWarning,
        match=r"train_episodes=10 .* not a multiple of meta_batch_size=4: each epoch ends "
        r"with a step of 2 tasks \(every episode is used\)",
    ):
        loader = dm.train_dataloader()
    assert [len(batch) for batch in loader] == [4, 4, 2]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dm.train_dataloader()  # said once


def test_case_05_evaluation_batches_may_be_partial_but_cover_every_episode() -> None:
    dm = _datamodule(meta_batch_size=2, train_episodes=8, eval_meta_batch_size=10, val_episodes=3, test_episodes=13)
    dm.setup()
    assert [len(batch) for batch in dm.val_dataloader()] == [3]
    assert [len(batch) for batch in dm.test_dataloader()] == [10, 3]


# --- case 9: file:// mirrors, unsupported schemes, no leftover .part -----------------------------------------------


def test_case_09_file_url_is_copied_and_verified(tmp_path: Path) -> None:
    source = tmp_path / "mirror" / "images_background.zip"
    source.parent.mkdir()
    source.write_bytes(ZIP)
    dest = tmp_path / "data" / "images_background.zip"
    assert download_url(source.as_uri(), dest, _sha256(ZIP)) == dest
    assert dest.read_bytes() == ZIP and sorted(p.name for p in dest.parent.iterdir()) == [dest.name]
    other = tmp_path / "data" / "other.zip"
    with pytest.raises(ChecksumError, match=r"copied to .*other\.zip: expected sha256") as raised:
        download_url(source.as_uri(), other, _sha256(b"something else"))
    assert f"replace {source} with a good copy" in str(raised.value)
    assert sorted(p.name for p in dest.parent.iterdir()) == [dest.name]  # no .part, no other.zip


def test_case_09_missing_local_file_fails_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr(download.time, "sleep", slept.append)
    missing = tmp_path / "mirror" / "images_background.zip"
    dest = tmp_path / "data" / "images_background.zip"
    with pytest.raises(DatasetError, match=f"{missing} does not exist; check the mirror's path"):
        download_url(missing.as_uri(), dest)
    assert slept == []  # no retries
    assert list(dest.parent.iterdir()) == []


@pytest.mark.parametrize("url", ["ftp://example.org/images_background.zip", "mirror/images_background.zip"])
def test_case_09_unsupported_scheme_is_refused_at_once(tmp_path: Path, url: str) -> None:
    problem = "unsupported URL scheme ftp://" if url.startswith("ftp") else "not a URL (no scheme)"
    with pytest.raises(DatasetError, match=rf"{re.escape(problem)}; .* file:// ones") as raised:
        download_url(url, tmp_path / "data" / "images_background.zip")
    assert url in str(raised.value) and "file:///" in str(raised.value)
    assert list(tmp_path.iterdir()) == []


def test_case_09_failure_without_bytes_leaves_no_part(site: loopback.Site, tmp_path: Path) -> None:
    site.drops, site.drop_after = 100, 0  # every connection closes before the first byte of the body
    dest = tmp_path / "images_background.zip"
    with pytest.raises(DatasetError, match="failed after 2 attempts") as raised:
        download_url(site.url("images_background.zip"), dest, retries=1)
    assert "keeps" not in str(raised.value)
    assert list(tmp_path.iterdir()) == []


def test_case_09_omniglot_downloads_from_a_file_mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mirror = make_release(tmp_path / "mirror")
    monkeypatch.setattr(Omniglot, "resources", _resources(mirror))
    Omniglot(tmp_path / "data", mirror=mirror.as_uri()).prepare()
    for name in ("images_background.zip", "images_evaluation.zip"):
        assert (tmp_path / "data" / "omniglot" / name).read_bytes() == (mirror / name).read_bytes()
