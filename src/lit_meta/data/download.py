"""Downloading dataset files with resume, retries and checksums, and extracting archives safely.

Everything here uses only the standard library. A download streams into
``<path>.part`` and appears at ``path`` only once it is complete and verified;
an extraction appears in its folder only once every member is written. So an
interrupted or corrupt transfer never leaves a file or folder that looks usable.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.client
import json
import lzma
import os
import re
import shutil
import stat
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Iterator
from http import HTTPStatus
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import IO, Any, NamedTuple

from lit_meta.data.atomic_file import atomic_file
from lit_meta.errors import ChecksumError, DatasetError, DownloadedPageError, UnsafeArchiveError

# Some hosts refuse urllib's default User-Agent. The version is left out because lit_meta/__init__ imports
# this module before it defines __version__.
USER_AGENT = "lit-meta (+https://pypi.org/project/lit-meta/) Python-urllib"

# URL schemes download_url reads: HTTP(S) with resume and retries, file:// as a local copy.
_SCHEMES = ("http", "https", "file")

_HEX_DIGITS = {"md5": 32, "sha256": 64}
_HEX = re.compile(r"[0-9a-f]+")
_CONTENT_RANGE = re.compile(r"bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)")

# Statuses that mean "try again later"; any other HTTP error will not change on a retry.
_TRANSIENT_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
# Seconds before the first retry; doubled before each further one.
_RETRY_DELAY_S = 1.0

# When the server does not say how large the file is, report progress every this many bytes.
_PROGRESS_STEP_UNKNOWN_SIZE = 16 << 20

_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
# What a truncated or damaged archive raises while it is read. Decompressors (gzip, bz2) report bad data
# with a bare OSError, which, unlike an OS failure such as a full disk, carries no errno.
_CORRUPT_ARCHIVE_ERRORS = (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, lzma.LZMAError)


def file_hash(path: str | Path, algorithm: str = "sha256", chunk_size: int = 1 << 20) -> str:
    """Hex digest of a file, read in chunks so large files need little memory.

    Args:
        path: the file.
        algorithm: any name :func:`hashlib.new` accepts, such as ``"sha256"`` or ``"md5"``.
        chunk_size: bytes read at a time.

    Returns:
        The lowercase hex digest.
    """
    # md5 only identifies files here; usedforsecurity=False keeps it available on FIPS-restricted systems.
    digest = hashlib.new(algorithm, usedforsecurity=False)
    with open(path, "rb") as file:
        while chunk := file.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def verify_checksum(path: str | Path, checksum: str) -> None:
    """Checks that a file has the expected hash.

    Args:
        path: the file.
        checksum: ``"md5:<hex>"`` or ``"sha256:<hex>"``; bare hex digits also work and mean md5 when there
            are 32 of them, sha256 when there are 64.

    Raises:
        ChecksumError: the file's hash differs; the message names the file, both hashes and the fix.
        DatasetError: ``checksum`` is not in one of the forms above.
    """
    mismatch = _checksum_mismatch(path, checksum)
    if mismatch is not None:
        raise ChecksumError(f"{path}: {mismatch}. The file is corrupt or incomplete: delete it and download it again.")


def download_url(
    url: str,
    path: str | Path,
    checksum: str | None = None,
    *,
    timeout: float = 60.0,
    chunk_size: int = 1 << 20,
    retries: int = 3,
    progress: bool = False,
) -> Path:
    """Downloads ``url`` to ``path``, resuming and retrying as needed, and verifies it.

    ``url`` is an ``http://`` or ``https://`` address, or a ``file://`` URL of a local file (a mirror on a
    shared file system, for machines without internet: ``Path("/shared/x.zip").as_uri()`` gives
    ``file:///shared/x.zip``). Any other scheme is refused before anything is read or written.

    A file already at ``path`` is returned without any request, provided it matches ``checksum`` when one
    is given; one that does not match is downloaded again and replaced once the new copy verifies.

    An HTTP transfer streams into ``<path>.part``. When that file exists from an interrupted transfer, the
    download resumes with an HTTP ``Range`` request; a server that ignores ranges sends the whole file
    again, which then replaces the part. Dropped connections, timeouts and incomplete bodies are retried
    up to ``retries`` times (after 1 s, 2 s, 4 s, ...), each time resuming from the bytes received so far.
    A ``file://`` source is copied in one go into a temporary file beside ``path`` (no resuming, no
    retries: a missing file fails at once), which is deleted if the copy fails. Either way only a complete,
    verified file is moved to ``path``, atomically, and a failure leaves a ``.part`` file only when it
    holds received bytes that a later call resumes from (the error message then says so).

    Args:
        url: what to download: an ``http``, ``https`` or ``file`` URL.
        path: where the file goes; missing parent folders are created.
        checksum: the expected hash, in a form :func:`verify_checksum` accepts; None skips verification.
        timeout: seconds to wait for the connection and for each read (HTTP).
        chunk_size: bytes read and written at a time.
        retries: how many times a transient HTTP failure is retried before giving up.
        progress: report the share received so far on stderr (HTTP).

    Returns:
        ``path``, as a :class:`~pathlib.Path`.

    Raises:
        ChecksumError: the downloaded file has another hash; the partial file is deleted, nothing is
            written to ``path``.
        DownloadedPageError: the server sent an HTML page (a quota, sign-in or virus-scan page) where
            the file was expected (:func:`html_page_title`), checksum or not; it is deleted, nothing is
            written to ``path``.
        DatasetError: the URL's scheme is not supported, a ``file://`` source does not exist or cannot be
            read, the server answered with an error, or the transfer still failed after ``retries`` retries
            (the partial file is kept, so calling again resumes it).
    """
    if retries < 0:
        raise ValueError(f"retries={retries}: the number of retries cannot be negative; use retries >= 0")
    if checksum is not None:
        _parse_checksum(checksum)  # a malformed checksum fails now, not after a long download
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in _SCHEMES:
        problem = f"unsupported URL scheme {scheme}://" if scheme else "not a URL (no scheme)"
        raise DatasetError(
            f"{url}: {problem}; lit-meta downloads http:// and https:// URLs and copies file:// ones. "
            "For a local copy pass its file:// URL, "
            f"e.g. {Path('/shared/mirror/file.zip').as_uri()}"
        )
    path = Path(path)
    if path.exists() and (checksum is None or _checksum_mismatch(path, checksum) is None):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    if scheme == "file":
        _copy_local(url, path, checksum, chunk_size=chunk_size)
    else:
        _download_http(url, path, checksum, timeout=timeout, chunk_size=chunk_size, retries=retries, progress=progress)
    return path


def _download_http(
    url: str, path: Path, checksum: str | None, *, timeout: float, chunk_size: int, retries: int, progress: bool
) -> None:
    """The HTTP(S) transfer of :func:`download_url`, through ``<path>.part``."""
    part = path.with_name(path.name + ".part")
    try:
        for attempt in range(retries + 1):
            try:
                _fetch(url, part, timeout=timeout, chunk_size=chunk_size, progress=progress)
                break
            except (OSError, http.client.HTTPException) as err:
                if not _is_transient(err):
                    if isinstance(err, urllib.error.URLError):
                        raise DatasetError(
                            f"downloading {url} failed: {err}; check that the URL is right{_kept_bytes(part)}"
                        ) from err
                    raise
                if attempt == retries:
                    raise DatasetError(
                        f"downloading {url} failed after {retries + 1} attempts ({type(err).__name__}: {err})"
                        f"{_kept_bytes(part)}"
                    ) from err
                time.sleep(_RETRY_DELAY_S * 2**attempt)
    except BaseException:
        # An empty part holds nothing to resume from; one with bytes is kept, as the message says.
        if part.exists() and part.stat().st_size == 0:
            part.unlink()
        raise
    _install(part, path, checksum, f"{url} downloaded to {path}", "call again to download it afresh")


def _kept_bytes(part: Path) -> str:
    """What a failed transfer leaves for the next call to resume, as the end of an error message."""
    received = part.stat().st_size if part.exists() else 0
    if not received:
        return ""
    return f". {part} keeps the {received} bytes received; call again to resume from there."


def _copy_local(url: str, path: Path, checksum: str | None, *, chunk_size: int) -> None:
    """The ``file://`` copy of :func:`download_url`: into a temporary file beside ``path``, then moved."""
    parts = urllib.parse.urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise DatasetError(
            f"{url}: file:// URLs on another host ({parts.netloc}) are not supported; mount the file system "
            "and pass file:///<absolute path> (three slashes)"
        )
    source = Path(urllib.request.url2pathname(parts.path))
    if not source.is_file():
        problem = "is not a file" if source.exists() else "does not exist"
        raise DatasetError(
            f"{url}: {source} {problem}; check the mirror's path (a file:// URL holds an absolute path, "
            f"e.g. {Path('/shared/mirror/file.zip').as_uri()})"
        )
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    copy = Path(name)
    try:
        try:
            with os.fdopen(handle, "wb") as out, source.open("rb") as src:
                shutil.copyfileobj(src, out, chunk_size)
        except OSError as err:
            raise DatasetError(f"copying {source} to {path} failed: {err}") from err
        _install(copy, path, checksum, f"{url} copied to {path}", f"replace {source} with a good copy")
    finally:
        copy.unlink(missing_ok=True)


def _install(part: Path, path: Path, checksum: str | None, what: str, fix: str) -> None:
    """Moves a complete transfer ``part`` to ``path`` once it matches ``checksum``; deletes it if not.

    Args:
        part: the transferred file.
        path: its final place.
        checksum: the expected hash, or None.
        what: the transfer, for the error message ("<url> downloaded to <path>").
        fix: what to do about a mismatch, for the error message.
    """
    if (page := html_page_title(part)) is not None and path.suffix.lower() not in (".html", ".htm"):
        part.unlink()
        raise DownloadedPageError(
            f"{what}: the server sent a web page ({page}) instead of the file: a download-quota, sign-in or "
            "virus-scan page, as file hosts such as Google Drive send. It was deleted and nothing was written to "
            f"{path}; open the URL in a browser, download the file itself and put it at {path}, or use a mirror"
        )
    if checksum is not None:
        mismatch = _checksum_mismatch(part, checksum)
        if mismatch is not None:
            part.unlink()
            raise ChecksumError(
                f"{what}: {mismatch}. The transferred file was deleted and nothing was written to {path}; "
                f"{fix}. If the hashes differ again, the source file or the expected checksum has changed."
            )
    os.replace(part, path)


_HTML_START = re.compile(rb"^\s*(<!--.*?-->\s*)*<(!doctype\s+html|html|head|body)[\s>]", re.IGNORECASE | re.DOTALL)
_HTML_TITLE = re.compile(rb"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)


def html_page_title(path: str | Path, sniff_bytes: int = 4096) -> str | None:
    """``"title: 'Google Drive - Virus scan warning'"`` (or ``"no title"``) when the file at ``path``
    is an HTML page, judged by its first ``sniff_bytes`` bytes; ``None`` for anything else.

    Archives, arrays and images never start with an HTML tag, so a page in their place is a host's
    answer (a quota, sign-in or virus-scan page) saved under the file's name.
    """
    with open(path, "rb") as file:
        head = file.read(sniff_bytes).removeprefix(b"\xef\xbb\xbf")
    if not _HTML_START.match(head):
        return None
    title = _HTML_TITLE.search(head)
    if title is None:
        return "no title"
    text = " ".join(title.group(1).decode("utf-8", "replace").split())[:120]
    return f"title: {text!r}"


def extract_archive(archive: str | Path, dest_dir: str | Path) -> list[Path]:
    """Extracts a ``.zip``, ``.tar``, ``.tar.gz``/``.tgz``, ``.tar.bz2`` or ``.tar.xz`` archive, safely and atomically.

    Every member is checked before anything is written: an absolute path, a drive letter, a ``..``
    component, a symbolic or hard link, or a device or other special file rejects the whole archive.
    Both ``/`` and ``\\`` count as separators in member names. The members are written into a temporary
    folder inside ``dest_dir`` and its top-level entries are moved into ``dest_dir`` only once all of
    them are written, so a failure leaves ``dest_dir`` as it was.

    Nothing lit-meta did not create is deleted or merged into. Each extraction records what it wrote in
    a marker file, ``dest_dir/.lit-meta-extracted-<archive name>.json``, written before the entries are
    moved into place and marked complete after. So:

    * extracting the same, unchanged archive again returns at once (the marker is complete and names the
      archive's size and modification time, and every entry is there);
    * an entry from an earlier extraction of this archive (complete, or cut short by a crash) is
      replaced, provided it holds only files that extraction wrote;
    * any other existing entry of the same name (the user's folder or file, or one holding files the
      user added) stops the extraction with :class:`~lit_meta.errors.DatasetError` naming it, before
      anything is written.

    Files are written with default permissions; the archive's modes, owners and times are not restored.

    Args:
        archive: the archive; its type is told by its name's suffix.
        dest_dir: the folder to extract into; created if missing.

    Returns:
        The top-level paths of the archive's content in ``dest_dir``, sorted.

    Raises:
        UnsafeArchiveError: a member could write outside ``dest_dir`` or is not a plain file or folder;
            nothing is written.
        DatasetError: the archive is missing, of an unknown type, truncated or corrupt, or one of its
            top-level entries exists in ``dest_dir`` and was not extracted there by lit-meta; nothing is
            written.
    """
    archive = Path(archive)
    dest_dir = Path(dest_dir)
    if not archive.is_file():
        raise DatasetError(f"{archive}: no such archive; download it first")
    marker = _ExtractionMarker(archive, dest_dir)
    done = marker.completed_entries()
    if done is not None:
        return done
    try:
        with _archive_members(archive) as members:
            for member in members:
                _check_member(archive, member)
            files = sorted({"/".join(parts) for m in members if m.kind == "file" and (parts := _member_parts(m.name))})
            top_level = sorted({parts[0] for m in members if (parts := _member_parts(m.name))})
            marker.check_replaceable(top_level)
            dest_dir.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest_dir))
            try:
                for member in members:
                    _write_member(staging, member)
                marker.write(top_level, files, complete=False)
                created = _move_top_level_entries(staging, dest_dir)
                marker.write(top_level, files, complete=True)
                return created
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    except _CORRUPT_ARCHIVE_ERRORS as err:
        raise _corrupt_archive_error(archive, err) from err
    except OSError as err:
        if err.errno is not None:
            raise
        raise _corrupt_archive_error(archive, err) from err


class _ExtractionMarker:
    """The record of what :func:`extract_archive` wrote from ``archive`` into ``dest_dir``.

    A JSON file ``dest_dir/.lit-meta-extracted-<archive name>.json`` holding the archive's size and
    modification time, the top-level entries, the member files (relative paths) and whether the
    extraction completed.
    """

    FORMAT = 1

    def __init__(self, archive: Path, dest_dir: Path) -> None:
        self.archive = archive
        self.dest_dir = dest_dir
        self.path = dest_dir / f".lit-meta-extracted-{archive.name}.json"

    def _archive_stamp(self) -> dict[str, int]:
        info = self.archive.stat()
        return {"size": info.st_size, "mtime_ns": info.st_mtime_ns, "inode": info.st_ino}

    def _read(self) -> dict[str, Any] | None:
        try:
            record = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(record, dict) or record.get("format") != self.FORMAT:
            return None
        return record

    def completed_entries(self) -> list[Path] | None:
        """The entries of a completed extraction of this very archive that are all still there, else None."""
        record = self._read()
        if record is None or not record.get("complete") or record.get("archive") != self._archive_stamp():
            return None
        entries = [self.dest_dir / name for name in record["entries"]]
        return entries if all(entry.exists() for entry in entries) else None

    def check_replaceable(self, top_level: list[str]) -> None:
        """Raises DatasetError unless every existing entry named in ``top_level`` is lit-meta's own."""
        record = self._read() or {}
        ours = set(record.get("entries", []))
        files = set(record.get("files", []))
        for name in top_level:
            target = self.dest_dir / name
            if not (target.exists() or target.is_symlink()):
                continue
            if name not in ours:
                problem = "was not extracted there by lit-meta"
            elif (stranger := _file_not_in(target, name, files)) is not None:
                problem = f"holds {stranger}, which lit-meta did not extract"
            else:
                continue
            raise DatasetError(
                f"cannot extract {self.archive} into {self.dest_dir}: {target} already exists and {problem}, and "
                f"lit-meta deletes nothing it did not create; nothing was extracted. Move {target} away (or delete "
                f"it), or extract somewhere else (point the dataset's root at another folder)"
            )

    def write(self, top_level: list[str], files: list[str], *, complete: bool) -> None:
        record = {
            "format": self.FORMAT,
            "archive": self._archive_stamp(),
            "entries": top_level,
            "files": files,
            "complete": complete,
        }
        with atomic_file(self.path) as out:
            out.write(json.dumps(record).encode("utf-8"))


def _file_not_in(target: Path, name: str, files: set[str]) -> Path | None:
    """A file or link under ``target`` (the top-level entry ``name``) that is not among ``files``, or None."""
    if target.is_symlink() or not target.is_dir():
        return None if name in files and not target.is_symlink() else target
    for folder, subfolders, names in os.walk(target):
        for entry in [*names, *(d for d in subfolders if Path(folder, d).is_symlink())]:
            path = Path(folder, entry)
            if path.relative_to(target.parent).as_posix() not in files:
                return path
    return None


def download_and_extract(
    url: str,
    root: str | Path,
    checksum: str | None = None,
    filename: str | None = None,
    **download_kwargs: Any,
) -> list[Path]:
    """Downloads an archive into ``root`` and extracts it there.

    Args:
        url: the archive's address.
        root: the folder that receives both the archive and its content.
        checksum: the archive's expected hash (see :func:`verify_checksum`); None skips verification.
        filename: the archive's file name in ``root``; defaults to the last component of the URL's path.
        **download_kwargs: passed on to :func:`download_url` (``timeout``, ``chunk_size``, ``retries``,
            ``progress``).

    Returns:
        The top-level paths extracted into ``root`` (see :func:`extract_archive`).

    Raises:
        DatasetError: as :func:`download_url` and :func:`extract_archive` do; among others when an entry
            of the archive already exists in ``root`` and was not extracted there by lit-meta (it is kept).
    """
    if filename is None:
        filename = urllib.parse.unquote(PurePosixPath(urllib.parse.urlsplit(url).path).name)
        if not filename:
            raise DatasetError(f"{url}: the URL's path names no file; pass filename=")
    archive = download_url(url, Path(root) / filename, checksum, **download_kwargs)
    return extract_archive(archive, root)


def _parse_checksum(checksum: str) -> tuple[str, str]:
    """(algorithm, expected lowercase hex digest) of a checksum string."""
    algorithm, _, expected = checksum.strip().lower().rpartition(":")
    if not algorithm:
        algorithm = next((name for name, digits in _HEX_DIGITS.items() if digits == len(expected)), "")
    if _HEX_DIGITS.get(algorithm) != len(expected) or not _HEX.fullmatch(expected):
        raise DatasetError(
            f"checksum {checksum!r}: expected 'md5:' followed by 32 hex digits, 'sha256:' followed by 64, "
            "or the bare hex digits of either"
        )
    return algorithm, expected


def _checksum_mismatch(path: str | Path, checksum: str) -> str | None:
    """How a file's hash differs from ``checksum``, or None when it matches."""
    algorithm, expected = _parse_checksum(checksum)
    actual = file_hash(path, algorithm)
    return None if actual == expected else f"expected {algorithm} {expected}, got {actual}"


def _is_transient(err: OSError | http.client.HTTPException) -> bool:
    """Whether a failed transfer may succeed when tried again."""
    if isinstance(err, urllib.error.HTTPError):
        return err.code in _TRANSIENT_STATUSES
    if isinstance(err, urllib.error.URLError):
        # urlopen wraps connection failures (refused, reset, name lookup) in URLError with the OSError as
        # its reason; a string reason means a malformed URL, which no retry fixes.
        return isinstance(err.reason, OSError)
    # OSErrors besides these (a full disk, a permission denied) come from this machine, not the network.
    return isinstance(err, (ConnectionError, TimeoutError, http.client.HTTPException))


def _request(url: str, offset: int, timeout: float) -> http.client.HTTPResponse:
    """Opens ``url``, asking for the bytes from ``offset`` on when it is positive."""
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """(first byte, complete length) of a ``Content-Range`` header; None for what it does not state."""
    match = _CONTENT_RANGE.fullmatch(value.strip()) if value else None
    if match is None:
        return None, None
    start, total = match.groups()
    return (int(start) if start else None), (int(total) if total.isdigit() else None)


def _resume(url: str, part: Path, timeout: float) -> tuple[http.client.HTTPResponse, int] | None:
    """Opens ``url`` where ``part`` ends.

    Returns:
        The response and the offset in the file where its body starts (0 when the file comes again from
        the start), or None when ``part`` already holds the whole file.
    """
    offset = part.stat().st_size if part.exists() else 0
    if offset == 0:
        return _request(url, 0, timeout), 0
    try:
        response = _request(url, offset, timeout)
    except urllib.error.HTTPError as err:
        if err.code != HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE:
            raise
        _, total = _content_range(err.headers.get("Content-Range"))
        err.close()
        # 416: the part reaches the end of the file or goes past it. Having exactly the file's length, the
        # part is complete (the checksum, if any, still decides); longer, or of unknown fit, it is no prefix
        # of this file, so start over.
        if total == offset:
            return None
        return _request(url, 0, timeout), 0
    if response.status != HTTPStatus.PARTIAL_CONTENT:
        return response, 0  # the server ignores ranges and sends the whole file
    start, _ = _content_range(response.headers.get("Content-Range"))
    if start != offset:
        response.close()
        return _request(url, 0, timeout), 0
    return response, offset


def _fetch(url: str, part: Path, *, timeout: float, chunk_size: int, progress: bool) -> None:
    """Brings ``part`` to the whole content of ``url``, keeping what it already holds where the server allows.

    Raises:
        ConnectionError: the connection ended before the announced length; ``part`` keeps every byte
            received.
    """
    opened = _resume(url, part, timeout)
    if opened is None:
        return
    response, offset = opened
    with response, part.open("ab" if offset else "wb") as out:
        # HTTPResponse.read(n) returns b"" when the connection ends early instead of raising, so the
        # announced length is checked below.
        length = response.length
        report = _ProgressReport(part.name.removesuffix(".part"), offset, length) if progress else None
        received = 0
        while chunk := response.read(chunk_size):
            out.write(chunk)
            received += len(chunk)
            if report is not None:
                report.update(len(chunk))
    if length is not None and received < length:
        raise ConnectionError(f"the connection closed after {received} of the {length} bytes sent from byte {offset}")


class _ProgressReport:
    """Prints how much of a download has arrived to stderr, about every 5% (every 16 MiB if the size is unknown).

    Args:
        name: what is downloaded, printed on each line.
        done: bytes already there (from an earlier, interrupted transfer).
        remaining: bytes this transfer will bring, if the server said.
    """

    def __init__(self, name: str, done: int, remaining: int | None) -> None:
        self._name = name
        self._done = done
        self._total = None if remaining is None else done + remaining
        self._step = max(self._total // 20, 1) if self._total else _PROGRESS_STEP_UNKNOWN_SIZE
        self._next = (done // self._step + 1) * self._step

    def update(self, received: int) -> None:
        """Counts ``received`` more bytes and prints a line when another step is complete."""
        self._done += received
        if self._done < self._next and self._done != self._total:
            return
        self._next = (self._done // self._step + 1) * self._step
        mib = self._done / (1 << 20)
        if self._total:
            line = (
                f"{self._name}: {100 * self._done // self._total:3d}% ({mib:.1f} of {self._total / (1 << 20):.1f} MiB)"
            )
        else:
            line = f"{self._name}: {mib:.1f} MiB"
        print(line, file=sys.stderr, flush=True)


class _Member(NamedTuple):
    """An archive member: its name, its kind (``"file"``, ``"folder"`` or what else it is) and how to read it."""

    name: str
    kind: str
    open: Callable[[], IO[bytes]]


@contextlib.contextmanager
def _archive_members(archive: Path) -> Iterator[list[_Member]]:
    """The members of a zip or tar archive, readable while the context is open."""
    name = archive.name.lower()
    if name.endswith(".zip"):
        with zipfile.ZipFile(archive) as zip_file:
            yield [
                _Member(info.filename, _zip_kind(info), functools.partial(zip_file.open, info))
                for info in zip_file.infolist()
            ]
    elif name.endswith(_TAR_SUFFIXES):
        # "r:*" detects the compression from the content, whatever the suffix claims.
        with tarfile.open(archive, "r:*") as tar_file:
            yield [
                _Member(info.name, _tar_kind(info), functools.partial(_tar_open, tar_file, info))
                for info in tar_file.getmembers()
            ]
    else:
        raise DatasetError(
            f"{archive}: unknown archive type; expected a name ending in .zip or {', '.join(_TAR_SUFFIXES)}"
        )


def _zip_kind(info: zipfile.ZipInfo) -> str:
    # Zips made on Unix keep the file's st_mode in the high 16 bits of external_attr; others leave them 0.
    file_type = stat.S_IFMT(info.external_attr >> 16)
    if file_type == stat.S_IFLNK:
        return "symbolic link"
    if file_type not in (0, stat.S_IFREG, stat.S_IFDIR):
        return "special file"
    return "folder" if info.is_dir() else "file"


def _tar_kind(info: tarfile.TarInfo) -> str:
    if info.isfile():
        return "file"
    if info.isdir():
        return "folder"
    if info.issym():
        return "symbolic link"
    if info.islnk():
        return "hard link"
    return "device file" if info.isdev() else "special file"


def _tar_open(tar_file: tarfile.TarFile, info: tarfile.TarInfo) -> IO[bytes]:
    source = tar_file.extractfile(info)
    assert source is not None, "extractfile returns None only for members that are not files"
    return source


def _member_parts(name: str) -> list[str]:
    """The path components of a member name, splitting on both separators and dropping empty and ``.`` ones."""
    return [part for part in re.split(r"[\\/]", name) if part not in ("", ".")]


def _check_member(archive: Path, member: _Member) -> None:
    """Raises UnsafeArchiveError unless ``member`` is a plain file or folder that stays inside the extraction."""
    name = member.name
    windows_path = PureWindowsPath(name)
    if member.kind not in ("file", "folder"):
        problem = f"is a {member.kind}"
    elif name.startswith(("/", "\\")) or windows_path.root:
        problem = "has an absolute path"
    elif windows_path.drive:
        problem = "has a drive letter"
    elif ".." in _member_parts(name):
        problem = "has a '..' component"
    else:
        return
    raise UnsafeArchiveError(
        f"{archive}: member {name!r} {problem}, which could write outside the extraction folder; nothing was "
        "extracted. Delete the archive and download it again from a trusted source."
    )


def _write_member(staging: Path, member: _Member) -> None:
    parts = _member_parts(member.name)
    if not parts:  # the archive's own root, such as "./" in a tar made with `tar -C folder .`
        return
    target = staging.joinpath(*parts)
    if member.kind == "folder":
        target.mkdir(parents=True, exist_ok=True)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    with member.open() as source, target.open("wb") as out:
        shutil.copyfileobj(source, out)


def _move_top_level_entries(staging: Path, dest_dir: Path) -> list[Path]:
    """Moves the staged entries into ``dest_dir``, replacing earlier ones that :class:`_ExtractionMarker` owns."""
    created = []
    for entry in sorted(staging.iterdir()):
        target = dest_dir / entry.name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()
        os.replace(entry, target)
        created.append(target)
    return created


def _corrupt_archive_error(archive: Path, err: BaseException) -> DatasetError:
    return DatasetError(
        f"{archive} is corrupt or incomplete ({type(err).__name__}: {err}); nothing was extracted. "
        "Delete it and download it again."
    )
