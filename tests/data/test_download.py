"""Downloads from a loopback HTTP server and extractions of generated Omniglot-layout archives."""

from __future__ import annotations

import hashlib
import io
import random
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from lit_meta.data import download
from lit_meta.data.download import (
    download_and_extract,
    download_url,
    extract_archive,
    file_hash,
    html_page_title,
    verify_checksum,
)
from lit_meta.errors import ChecksumError, DatasetError, DownloadedPageError, UnsafeArchiveError
from tests.data.loopback import Site, serve

ALPHABETS = ("Alphabet_of_the_Magi", "Braille")
CHARACTERS = 2
DRAWERS = 3


def _glyph_png(seed: int) -> bytes:
    """A 105x105 1-bit PNG like Omniglot's: black strokes on white, different for every seed."""
    rng = random.Random(seed)
    image = Image.new("1", (105, 105), color=1)
    points = [(rng.randrange(105), rng.randrange(105)) for _ in range(40)]
    ImageDraw.Draw(image).line(points, fill=0, width=2)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _omniglot_members() -> dict[str, bytes]:
    """``images_background/<alphabet>/characterNN/<image id>_<drawer>.png`` -> PNG bytes."""
    members = {}
    image_id = 0
    for alphabet in ALPHABETS:
        for character in range(1, CHARACTERS + 1):
            image_id += 1
            for drawer in range(1, DRAWERS + 1):
                name = f"images_background/{alphabet}/character{character:02d}/{image_id:04d}_{drawer:02d}.png"
                members[name] = _glyph_png(image_id * DRAWERS + drawer)
    return members


MEMBERS = _omniglot_members()


def _zip_bytes(members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _tar_bytes(members: dict[str, bytes], mode: str = "w:gz") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


ZIP = _zip_bytes(MEMBERS)
# Large enough that halves and drops fall well inside the body, and that a chunk size of 4 KiB means many reads.
assert len(ZIP) > 8192


@pytest.fixture
def site(monkeypatch: pytest.MonkeyPatch) -> Iterator[Site]:
    monkeypatch.setattr(download, "_RETRY_DELAY_S", 0.0)
    with serve({"images_background.zip": ZIP}) as served:
        yield served


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- hashing -------------------------------------------------------------------------------------------------------


def test_file_hash_matches_hashlib(tmp_path: Path) -> None:
    path = tmp_path / "a.bin"
    path.write_bytes(ZIP)
    assert file_hash(path) == _sha256(ZIP)
    assert file_hash(path, "md5", chunk_size=1000) == hashlib.md5(ZIP).hexdigest()


@pytest.mark.parametrize(
    "checksum",
    [
        f"sha256:{_sha256(ZIP)}",
        f"md5:{hashlib.md5(ZIP).hexdigest()}",
        f"SHA256:{_sha256(ZIP).upper()}",
        _sha256(ZIP),
        hashlib.md5(ZIP).hexdigest(),
    ],
)
def test_verify_checksum_accepts_matching_forms(tmp_path: Path, checksum: str) -> None:
    path = tmp_path / "a.bin"
    path.write_bytes(ZIP)
    verify_checksum(path, checksum)


def test_verify_checksum_mismatch_names_file_hashes_and_fix(tmp_path: Path) -> None:
    path = tmp_path / "a.bin"
    path.write_bytes(b"not the file")
    with pytest.raises(ChecksumError) as raised:
        verify_checksum(path, f"sha256:{_sha256(ZIP)}")
    message = str(raised.value)
    assert str(path) in message
    assert _sha256(ZIP) in message
    assert _sha256(b"not the file") in message
    assert "delete" in message


@pytest.mark.parametrize("checksum", ["sha256:abc", "crc32:" + "0" * 64, "z" * 64, "0" * 40])
def test_verify_checksum_rejects_malformed_checksums(tmp_path: Path, checksum: str) -> None:
    path = tmp_path / "a.bin"
    path.write_bytes(ZIP)
    with pytest.raises(DatasetError, match="checksum"):
        verify_checksum(path, checksum)


# --- downloading ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["sha256", "md5"])
def test_download_verifies_checksum(site: Site, tmp_path: Path, algorithm: str) -> None:
    checksum = f"{algorithm}:{hashlib.new(algorithm, ZIP).hexdigest()}"
    path = download_url(site.url("images_background.zip"), tmp_path / "sub" / "images_background.zip", checksum)
    assert path == tmp_path / "sub" / "images_background.zip"
    assert path.read_bytes() == ZIP
    assert site.requests == [None]
    assert sorted(p.name for p in path.parent.iterdir()) == ["images_background.zip"]


def test_existing_file_is_returned_without_a_request(site: Site, tmp_path: Path) -> None:
    url = site.url("images_background.zip")
    path = download_url(url, tmp_path / "images_background.zip", f"sha256:{_sha256(ZIP)}")
    assert download_url(url, path, f"sha256:{_sha256(ZIP)}") == path
    assert download_url(url, path) == path
    assert len(site.requests) == 1


def test_existing_file_failing_checksum_is_downloaded_again(site: Site, tmp_path: Path) -> None:
    path = tmp_path / "images_background.zip"
    path.write_bytes(b"stale")
    download_url(site.url("images_background.zip"), path, f"sha256:{_sha256(ZIP)}")
    assert path.read_bytes() == ZIP
    assert len(site.requests) == 1


def test_resume_requests_the_rest_of_a_part_file(site: Site, tmp_path: Path) -> None:
    path = tmp_path / "images_background.zip"
    half = len(ZIP) // 2
    path.with_name(path.name + ".part").write_bytes(ZIP[:half])
    download_url(site.url("images_background.zip"), path, f"sha256:{_sha256(ZIP)}")
    assert site.requests == [f"bytes={half}-"]
    assert site.statuses == [206]
    assert path.read_bytes() == ZIP
    assert not path.with_name(path.name + ".part").exists()


def test_resume_from_a_server_that_ignores_ranges_starts_over(site: Site, tmp_path: Path) -> None:
    site.ignore_range = True
    path = tmp_path / "images_background.zip"
    path.with_name(path.name + ".part").write_bytes(ZIP[: len(ZIP) // 2])
    download_url(site.url("images_background.zip"), path, f"sha256:{_sha256(ZIP)}")
    assert site.requests == [f"bytes={len(ZIP) // 2}-"]
    assert site.statuses == [200]
    assert path.read_bytes() == ZIP


def test_complete_part_file_is_kept_after_416(site: Site, tmp_path: Path) -> None:
    path = tmp_path / "images_background.zip"
    path.with_name(path.name + ".part").write_bytes(ZIP)
    download_url(site.url("images_background.zip"), path, f"sha256:{_sha256(ZIP)}")
    assert site.statuses == [416]
    assert path.read_bytes() == ZIP


def test_part_file_longer_than_the_file_is_replaced(site: Site, tmp_path: Path) -> None:
    path = tmp_path / "images_background.zip"
    path.with_name(path.name + ".part").write_bytes(ZIP + b"trailing garbage")
    download_url(site.url("images_background.zip"), path, f"sha256:{_sha256(ZIP)}")
    assert site.requests == [f"bytes={len(ZIP) + 16}-", None]
    assert site.statuses == [416, 200]
    assert path.read_bytes() == ZIP


@pytest.mark.parametrize("reset", [False, True], ids=["close", "reset"])
def test_interrupted_transfer_is_retried_and_resumed(site: Site, tmp_path: Path, reset: bool) -> None:
    site.drops, site.drop_after, site.drop_with_reset = 1, 5000, reset
    path = download_url(
        site.url("images_background.zip"), tmp_path / "images_background.zip", _sha256(ZIP), chunk_size=4096
    )
    assert path.read_bytes() == ZIP
    assert len(site.requests) == 2
    if not reset:  # after a reset the client may lose bytes the kernel had buffered, so the offset varies
        assert site.requests[1] == "bytes=5000-"


def test_transfer_failing_every_attempt_raises_and_keeps_the_part(site: Site, tmp_path: Path) -> None:
    site.drops, site.drop_after = 100, 1000
    url = site.url("images_background.zip")
    path = tmp_path / "images_background.zip"
    with pytest.raises(DatasetError, match="after 3 attempts") as raised:
        download_url(url, path, retries=2)
    assert url in str(raised.value)
    assert "closed after 1000 of the" in str(raised.value)
    assert site.requests == [None, "bytes=1000-", "bytes=2000-"]
    assert path.with_name(path.name + ".part").read_bytes() == ZIP[:3000]
    assert not path.exists()


def test_malformed_checksum_raises_before_any_request(site: Site, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="checksum"):
        download_url(site.url("images_background.zip"), tmp_path / "images_background.zip", "sha256:abc")
    assert site.requests == []


def test_missing_file_raises_without_retrying(site: Site, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="404"):
        download_url(site.url("missing.zip"), tmp_path / "missing.zip")
    assert site.requests == [None]
    assert list(tmp_path.iterdir()) == []


def test_corrupt_download_raises_and_leaves_no_file(site: Site, tmp_path: Path) -> None:
    site.corrupt = True
    corrupted = ZIP[:100] + bytes([ZIP[100] ^ 0xFF]) + ZIP[101:]
    path = tmp_path / "images_background.zip"
    with pytest.raises(ChecksumError) as raised:
        download_url(site.url("images_background.zip"), path, f"sha256:{_sha256(ZIP)}")
    message = str(raised.value)
    assert "images_background.zip" in message
    assert _sha256(ZIP) in message
    assert _sha256(corrupted) in message
    assert list(tmp_path.iterdir()) == []


def test_progress_is_reported_on_stderr(site: Site, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    download_url(site.url("images_background.zip"), tmp_path / "a.zip", chunk_size=1024, progress=True)
    lines = capsys.readouterr().err.splitlines()
    assert lines[-1].startswith("a.zip: 100%")
    assert 10 <= len(lines) <= 25


# --- extracting ----------------------------------------------------------------------------------------------------


def _extracted_files(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` but extract_archive's own records of what it extracted."""
    return {
        path.relative_to(root).as_posix(): path.read_bytes()
        for path in root.rglob("*")
        if path.is_file() and not path.name.startswith(".lit-meta-extracted-")
    }


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("images_background.zip", ZIP),
        ("images_background.tar.gz", _tar_bytes(MEMBERS)),
        ("images_background.tar.xz", _tar_bytes(MEMBERS, "w:xz")),
        ("images_background.tar", _tar_bytes({f"./{k}": v for k, v in MEMBERS.items()}, "w")),
    ],
)
def test_extract_gives_the_archive_members(tmp_path: Path, name: str, data: bytes) -> None:
    archive = tmp_path / name
    archive.write_bytes(data)
    dest = tmp_path / "dest"
    assert extract_archive(archive, dest) == [dest / "images_background"]
    assert _extracted_files(dest) == MEMBERS
    with Image.open(dest / next(iter(MEMBERS))) as image:
        assert (image.mode, image.size) == ("1", (105, 105))


def test_extract_replaces_its_own_earlier_extraction(tmp_path: Path) -> None:
    archive = tmp_path / "images_background.zip"
    archive.write_bytes(_zip_bytes({"images_background/old.png": b"old"}))
    (tmp_path / "unrelated.txt").write_text("kept")
    assert extract_archive(archive, tmp_path) == [tmp_path / "images_background"]
    archive.write_bytes(ZIP)  # a new version of the archive replaces what the old one extracted
    assert extract_archive(archive, tmp_path) == [tmp_path / "images_background"]
    assert not (tmp_path / "images_background" / "old.png").exists()
    assert _extracted_files(tmp_path / "images_background") == {
        name.removeprefix("images_background/"): data for name, data in MEMBERS.items()
    }
    assert (tmp_path / "unrelated.txt").read_text() == "kept"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".lit-meta-extracted-images_background.zip.json",
        "images_background",
        "images_background.zip",
        "unrelated.txt",
    ]


def _crc_broken_zip() -> bytes:
    """A zip whose last member's stored bytes are damaged, so extraction fails only after earlier members."""
    payload = b"the last member's payload " * 20
    data = _zip_bytes({**MEMBERS, "images_background/last.bin": payload}, zipfile.ZIP_STORED)
    at = data.index(payload) + 10
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("truncated.zip", ZIP[: len(ZIP) // 2]),
        ("crc.zip", _crc_broken_zip()),
        ("truncated.tar.gz", _tar_bytes(MEMBERS)[:-200]),
        ("truncated.tar.bz2", _tar_bytes(MEMBERS, "w:bz2")[:-200]),
        ("garbage.tar.gz", b"\x1f\x8b" + bytes(range(256)) * 4),
    ],
)
def test_corrupt_archive_raises_and_writes_nothing(tmp_path: Path, name: str, data: bytes) -> None:
    archive = tmp_path / name
    archive.write_bytes(data)
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(DatasetError, match="corrupt or incomplete") as raised:
        extract_archive(archive, dest)
    assert name in str(raised.value)
    assert "download it again" in str(raised.value)
    assert list(dest.iterdir()) == []


def test_unknown_archive_type_raises(tmp_path: Path) -> None:
    archive = tmp_path / "images_background.rar"
    archive.write_bytes(ZIP)
    with pytest.raises(DatasetError, match="unknown archive type"):
        extract_archive(archive, tmp_path / "dest")


def _zip_with(member: zipfile.ZipInfo | str, data: bytes = b"evil") -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("images_background/ok.txt", b"fine")
        archive.writestr(member, data)
    return buffer.getvalue()


def _zip_symlink() -> bytes:
    info = zipfile.ZipInfo("images_background/evil.txt")
    info.create_system = 3  # Unix, so external_attr holds st_mode
    info.external_attr = 0o120777 << 16
    return _zip_with(info, b"../../evil.txt")


def _tar_with(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        ok = tarfile.TarInfo("images_background/ok.txt")
        ok.size = 4
        archive.addfile(ok, io.BytesIO(b"fine"))
        info = tarfile.TarInfo(name)
        info.type = kind
        info.linkname = linkname
        info.size = 4 if kind == tarfile.REGTYPE else 0
        archive.addfile(info, io.BytesIO(b"evil") if kind == tarfile.REGTYPE else None)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("name", "data", "member"),
    [
        ("parent.zip", _zip_with("../evil.txt"), "../evil.txt"),
        ("nested_parent.zip", _zip_with("images_background/../../evil.txt"), "images_background/../../evil.txt"),
        ("backslash.zip", _zip_with("..\\evil.txt"), "..\\\\evil.txt"),
        ("absolute.zip", _zip_with("/abs/evil.txt"), "/abs/evil.txt"),
        ("drive.zip", _zip_with("C:evil.txt"), "C:evil.txt"),
        ("symlink.zip", _zip_symlink(), "images_background/evil.txt"),
        ("parent.tar.gz", _tar_with("../evil.txt"), "../evil.txt"),
        ("absolute.tar.gz", _tar_with("/abs/evil.txt"), "/abs/evil.txt"),
        ("symlink.tar.gz", _tar_with("evil.txt", tarfile.SYMTYPE, "../../evil.txt"), "evil.txt"),
        ("hardlink.tar.gz", _tar_with("evil.txt", tarfile.LNKTYPE, "images_background/ok.txt"), "evil.txt"),
        ("device.tar.gz", _tar_with("evil.txt", tarfile.CHRTYPE), "evil.txt"),
    ],
)
def test_unsafe_archive_raises_and_writes_nothing(tmp_path: Path, name: str, data: bytes, member: str) -> None:
    archive = tmp_path / "downloads" / name
    archive.parent.mkdir()
    archive.write_bytes(data)
    dest = tmp_path / "root" / "dest"
    with pytest.raises(UnsafeArchiveError) as raised:
        extract_archive(archive, dest)
    assert name in str(raised.value)
    assert member in str(raised.value)
    assert not dest.exists()
    assert [p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")] == ["downloads", f"downloads/{name}"]


# --- end to end ----------------------------------------------------------------------------------------------------


def test_download_and_extract_from_the_server(site: Site, tmp_path: Path) -> None:
    root = tmp_path / "omniglot"
    url = site.url("images_background.zip")
    assert download_and_extract(url, root, f"sha256:{_sha256(ZIP)}", timeout=5.0) == [root / "images_background"]
    assert _extracted_files(root / "images_background") == {
        name.removeprefix("images_background/"): data for name, data in MEMBERS.items()
    }
    assert (root / "images_background.zip").read_bytes() == ZIP
    assert sorted(p.name for p in root.iterdir()) == [
        ".lit-meta-extracted-images_background.zip.json",
        "images_background",
        "images_background.zip",
    ]
    download_and_extract(url, root, f"sha256:{_sha256(ZIP)}", filename="images_background.zip")
    assert len(site.requests) == 1


# --- a web page where the file was expected (issue 18, point 6) -----------------------------------------------------
QUOTA_PAGE = (
    b"<!DOCTYPE html><html><head><meta charset='utf-8'><title>Google Drive - Quota exceeded</title></head>"
    b"<body>Too many users have viewed or downloaded this file recently.</body></html>"
)


@pytest.mark.parametrize("checksum", [None, "sha256"], ids=["no checksum", "checksum"])
def test_an_html_page_instead_of_the_archive_is_named_and_deleted(
    site: Site, tmp_path: Path, checksum: str | None
) -> None:
    site.files["images_background.zip"] = QUOTA_PAGE
    target = tmp_path / "images_background.zip"
    expected = f"sha256:{_sha256(ZIP)}" if checksum else None
    with pytest.raises(DownloadedPageError) as raised:
        download_url(site.url("images_background.zip"), target, expected)
    message = str(raised.value)
    assert "sent a web page (title: 'Google Drive - Quota exceeded')" in message
    assert f"put it at {target}" in message
    assert not target.exists() and list(tmp_path.iterdir()) == []  # no file, no .part


def test_a_local_html_page_is_refused_too(tmp_path: Path) -> None:
    page = tmp_path / "mirror" / "images_background.zip"
    page.parent.mkdir()
    page.write_bytes(b"\n  <!-- saved --><HTML><body>virus scan warning</body></HTML>")
    with pytest.raises(DownloadedPageError, match=r"sent a web page \(no title\)"):
        download_url(page.as_uri(), tmp_path / "data" / "images_background.zip")


@pytest.mark.parametrize(
    "data", [ZIP, b"<not html at all", b"\x89PNG\r\n", b"   "], ids=["zip", "text", "png", "blank"]
)
def test_files_that_are_not_pages_are_not_taken_for_pages(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "file.bin"
    path.write_bytes(data)
    assert html_page_title(path) is None
