"""CUB-200-2011: 11,788 photographs of 200 bird species (Wah et al., 2011), split by species."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Sequence
from importlib.resources import files as package_files
from pathlib import Path
from typing import ClassVar, Literal, get_args

import numpy as np

from lit_meta.data.datasets.base import SPLIT_NAMES, SplitName, Transform
from lit_meta.data.datasets.benchmark import DecodedImages, ImageBenchmark, SourceFiles, SplitSize
from lit_meta.data.download import download_and_extract, extract_archive, verify_checksum
from lit_meta.data.transforms import CropBox, load_image
from lit_meta.errors import DatasetError

CubSplit = Literal["chen", "meta_dataset"]
CUB_SPLITS: tuple[CubSplit, ...] = get_args(CubSplit)

ARCHIVE_NAME = "CUB_200_2011.tgz"
RELEASE_FOLDER = "CUB_200_2011"
"""The folder the archive extracts to; it holds ``images/``, ``images.txt``, ``bounding_boxes.txt``, ..."""

_META_DATASET_LISTS: dict[str, SplitName] = {"train": "train", "valid": "val", "test": "test"}
"""Meta-Dataset's list names -> lit-meta's split names."""
_CLASS_FOLDER = re.compile(r"\d{3}\.\S+")


@functools.cache
def meta_dataset_split() -> dict[SplitName, tuple[str, ...]]:
    """Meta-Dataset's CU-Birds split (Triantafillou et al., 2020, ICLR): 140 / 30 / 30 class folders.

    Read from the list shipped with the package, ``lit_meta/data/splits/cub_meta_dataset/
    cu_birds_splits.json`` (google-research/meta-dataset, Apache-2.0; see ``SOURCE.md`` there),
    in the file's order.

    Raises:
        DatasetError: the shipped list is missing or malformed (a damaged installation).
    """
    path = package_files("lit_meta.data").joinpath("splits", "cub_meta_dataset", "cu_birds_splits.json")
    try:
        lists = json.loads(path.read_text(encoding="utf-8"))
        table = {split: tuple(lists[name]) for name, split in _META_DATASET_LISTS.items()}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DatasetError(
            f"the Meta-Dataset CUB split list cu_birds_splits.json of the lit-meta installation is missing or "
            f"malformed ({exc}); reinstall lit-meta"
        ) from exc
    names = [name for split in SPLIT_NAMES for name in table[split]]
    if len(set(names)) != len(names) or not all(isinstance(n, str) and _CLASS_FOLDER.fullmatch(n) for n in names):
        raise DatasetError(
            "the Meta-Dataset CUB split list cu_birds_splits.json of the lit-meta installation names a class twice "
            "or a name that is no CUB class folder (NNN.Class_name); reinstall lit-meta"
        )
    return table


@functools.cache
def chen_split() -> dict[SplitName, tuple[str, ...]]:
    """The 100 / 50 / 50 split of Hilliard et al. (2018) as defined by Chen et al. (2019).

    Chen et al., "A Closer Look at Few-shot Classification" (ICLR 2019), Section 4.1, follow
    Hilliard et al. (2018), "Few-Shot Learning with Metric-Agnostic Conditional Embeddings"
    (arXiv:1802.04376). Their ``filelists/CUB/write_CUB_filelist.py``
    (wyharveychen/CloserLookFewShot) sorts the 200 class folders of ``CUB_200_2011/images``
    by name and, numbering them from 0, puts folder ``i`` in meta-train when ``i % 2 == 0``,
    in meta-val when ``i % 4 == 1`` and in meta-test when ``i % 4 == 3``. As the folders are
    named ``NNN.Class_name`` with ``NNN`` = 001 ... 200, meta-train holds the odd class
    numbers, meta-val 002, 006, 010, ... and meta-test 004, 008, 012, ...

    The 200 folder names are those of the release, as every one is named once in
    :func:`meta_dataset_split`'s list.
    """
    folders = sorted(name for names in meta_dataset_split().values() for name in names)
    return {
        "train": tuple(name for i, name in enumerate(folders) if i % 2 == 0),
        "val": tuple(name for i, name in enumerate(folders) if i % 4 == 1),
        "test": tuple(name for i, name in enumerate(folders) if i % 4 == 3),
    }


class CUB(ImageBenchmark):
    """CUB-200-2011 (Wah, Branson, Welinder, Perona & Belongie, 2011, "The Caltech-UCSD
    Birds-200-2011 Dataset", Technical Report CNS-TR-2011-001, Caltech): 11,788 photographs
    of 200 North American bird species (41 to 60 per species), each with a bounding box.

    **Splits**, by species and disjoint (class names are the release's folder names,
    ``NNN.Class_name``):

    * ``"chen"`` (default): 100 / 50 / 50 species, 5,885 / 2,950 / 2,953 images; the split
      of Hilliard et al. (2018) as written by Chen et al. (2019), "A Closer Look at Few-shot
      Classification" (ICLR), Section 4.1, and used by most few-shot papers that report CUB
      (see :func:`chen_split` for the rule).
    * ``"meta_dataset"``: 140 / 30 / 30 species, 8,239 / 1,779 / 1,770 images; the CU-Birds
      source of Meta-Dataset (Triantafillou et al., 2020, ICLR, Section 3), its published
      class lists shipped with lit-meta (see :func:`meta_dataset_split`).

    The image totals are the release's class sizes summed over each split's species (the
    class sizes as Meta-Dataset's ``cu_birds_dataset_spec.json`` counts them, which total
    the report's 11,788); ``lit-meta data check cub`` compares a root with them.

    **Files.** The official archive ``CUB_200_2011.tgz`` (1.1 GB, md5
    ``97eceeb196236b17998738112f37df78``, from CaltechDATA, https://data.caltech.edu/records/65de6-vp158,
    DOI 10.22002/D1.20098) extracts to ``CUB_200_2011/``, of which lit-meta reads
    ``images.txt`` (``<image id> <NNN.Class_name>/<file>.jpg``, the release's list of its
    images), the JPEGs under ``images/`` and, for ``crop_to_bbox``, ``bounding_boxes.txt``
    (``<image id> <x> <y> <width> <height>`` in pixels). The extracted folder is looked for
    as ``root/cub/CUB_200_2011/`` (or ``root/CUB_200_2011/``). When it is absent, the archive
    ``root/cub/CUB_200_2011.tgz`` is checked against its md5 and extracted into
    ``root/cub/`` (marker-based: an interrupted extraction is redone, nothing the user put
    there is overwritten), and with ``download=True`` (the default) an absent archive is
    first downloaded there, resumably, from the official host or ``mirror``. The archive is
    kept; it may be deleted once extracted. Extracting once costs 1.2 GB of disk but lets
    every later load list the images without decompressing the archive (a gzip tar can
    only be read from its start, and the split check counts the images on every load).

    **Items.** Every listed image is decoded once, converted to RGB, optionally cropped to
    its bounding box (``crop_to_bbox``), and resized to ``image_size`` x ``image_size``
    (Lanczos, default 84). Deviation: the photographs are not square and are resized to
    the square as a whole (the bird is never cut off), where Chen et al.'s pipeline
    resizes the shorter side and centre-crops.

    **Cache.** As :class:`~lit_meta.data.datasets.benchmark.ImageBenchmark`:
    ``root/cub/lit-meta-cache/cub_<size>px[_meta_dataset][_bbox]/``, plain ``.npy``
    arrays (about 250 MB at 84 px), keyed by the sizes and modification times of
    ``images.txt``, of every image (and of ``bounding_boxes.txt`` with crops), the image
    size, the split and the crop choice.

    Normalisation statistics are ImageNet's (:attr:`MEAN`, :attr:`STD`), as in Chen et
    al.'s CUB pipeline (``data/datamgr.py``, ``TransformLoader``).

    Args:
        root: folder holding (or receiving) the ``cub/`` folder.
        split: ``"chen"`` or ``"meta_dataset"``, see above.
        image_size: side of the square images, in pixels (default 84).
        crop_to_bbox: crop every photograph to its bounding box before resizing.
        transform: optional callable applied to each item, a float ``[3, S, S]`` tensor.
        download: fetch the archive when neither the extracted folder nor the archive is
            there; when ``False`` that raises :class:`~lit_meta.errors.DatasetError` naming the
            file to obtain and where to put it.
        mirror: base URL to download the archive from instead of the official host, e.g.
            ``"https://example.org/cub"``, or a ``file://`` URL of a local folder holding
            ``CUB_200_2011.tgz`` (``"file:///shared/mirrors/cub"``, for machines without
            internet); ``/CUB_200_2011.tgz`` is appended. The md5 is checked either way.
        cache_dir: folder of the decoded cache (see above).
        cache: read and write the decoded cache.
        allow_partial: split a release that lacks some of the listed species (a partial
            copy, a miniature for tests) with the species it has; by default such a
            release raises :class:`~lit_meta.errors.DatasetError`.
    """

    NAME = "CUB-200-2011"
    FOLDER = "cub"
    URL: ClassVar[str] = "https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz?download=1"
    """The official archive on CaltechDATA (record 65de6-vp158, DOI 10.22002/D1.20098)."""
    MD5: ClassVar[str] = "md5:97eceeb196236b17998738112f37df78"
    SPLIT_SIZES: ClassVar[dict[SplitName, SplitSize]] = {
        "train": SplitSize(100, 5885),
        "val": SplitSize(50, 2950),
        "test": SplitSize(50, 2953),
    }
    """The ``"chen"`` split (Chen et al., 2019): species per split; images summed from the release's class sizes."""
    META_DATASET_SPLIT_SIZES: ClassVar[dict[SplitName, SplitSize]] = {
        "train": SplitSize(140, 8239),
        "val": SplitSize(30, 1779),
        "test": SplitSize(30, 1770),
    }
    """The ``"meta_dataset"`` split (Triantafillou et al., 2020), likewise."""
    IMAGES_PER_CLASS = None
    MEAN = (0.485, 0.456, 0.406)
    STD = (0.229, 0.224, 0.225)
    DEFAULT_IMAGE_SIZE = 84

    def __init__(
        self,
        root: str | Path = "data",
        split: CubSplit = "chen",
        image_size: int | None = None,
        crop_to_bbox: bool = False,
        transform: Transform | None = None,
        download: bool = True,
        mirror: str | None = None,
        cache_dir: str | Path | None = None,
        cache: bool = True,
        allow_partial: bool = False,
    ) -> None:
        if split not in CUB_SPLITS:
            raise DatasetError(
                f"unknown CUB split {split!r}; use 'chen' (100 / 50 / 50 species, Chen et al. 2019) or "
                "'meta_dataset' (140 / 30 / 30, Triantafillou et al. 2020)"
            )
        super().__init__(root, image_size, transform, cache_dir, cache, allow_partial)
        self.split_scheme: CubSplit = split
        self.crop_to_bbox = crop_to_bbox
        self.allow_download = download
        self.mirror = mirror

    # -- the published split ------------------------------------------------------------------
    def split_table(self) -> dict[SplitName, list[str]]:
        table = chen_split() if self.split_scheme == "chen" else meta_dataset_split()
        return {split: list(names) for split, names in table.items()}

    def split_sizes(self) -> dict[SplitName, SplitSize]:
        return self.SPLIT_SIZES if self.split_scheme == "chen" else self.META_DATASET_SPLIT_SIZES

    def cache_variant(self) -> str:
        """``"meta_dataset"`` (class order differs), ``"bbox"`` for crops, both joined, or ``""``."""
        parts = [
            *(["meta_dataset"] if self.split_scheme == "meta_dataset" else []),
            *(["bbox"] if self.crop_to_bbox else []),
        ]
        return "_".join(parts)

    # -- files ----------------------------------------------------------------------------------
    @property
    def archive(self) -> Path:
        """Where the official archive is looked for and downloaded to: ``root/cub/CUB_200_2011.tgz``."""
        return self.folder / ARCHIVE_NAME

    def _needed(self) -> tuple[str, ...]:
        return ("images.txt", "images", *(["bounding_boxes.txt"] if self.crop_to_bbox else []))

    def locate(self) -> SourceFiles:
        """The extracted release: ``root/cub/CUB_200_2011/`` or ``root/CUB_200_2011/``.

        Raises:
            DatasetError: neither is there; or one is there but lacks ``images.txt`` or
                ``images/`` (or ``bounding_boxes.txt``, with ``crop_to_bbox``).
        """
        release = self._release()
        if release is None:
            raise DatasetError(self._missing_message())
        return SourceFiles("release folder", tuple(release / name for name in self._needed()), {"release": release})

    def _release(self) -> Path | None:
        """The extracted release folder, None when there is none; an incomplete one raises DatasetError."""
        for base in (self.folder, self.root):
            release = base / RELEASE_FOLDER
            if not release.is_dir():
                continue
            absent = [name for name in self._needed() if not (release / name).exists()]
            if absent:
                raise DatasetError(
                    f"the CUB-200-2011 folder {release} lacks {', '.join(absent)}; it is not a complete extraction "
                    f"of {ARCHIVE_NAME}. Move it away and let lit-meta extract the archive into {self.folder}, or "
                    "extract the archive there yourself"
                )
            return release
        return None

    def _missing_message(self) -> str:
        return (
            f"CUB-200-2011 not found: expected the extracted release {self.folder / RELEASE_FOLDER}/ (holding "
            f"images.txt and images/) or the archive {self.archive} (md5 {self.MD5.removeprefix('md5:')}, 1.1 GB) "
            f"from {self.URL}. Pass download=True (the default) to fetch and extract it, or put the archive "
            "(or its extracted folder) there"
        )

    def download(self) -> None:
        """Extract ``root/cub/CUB_200_2011.tgz`` into ``root/cub/``, downloading it first if absent.

        Does nothing when the extracted release is there already.

        Raises:
            DatasetError: the archive is absent and ``download=False``; an incomplete release
                folder is in the way (see :meth:`locate`).
            ChecksumError: the archive (present or downloaded) is not the official one.
            DownloadedPageError: the server sent a web page instead of the archive.
        """
        if self._release() is not None:
            return
        if not self.allow_download:
            if not self.archive.is_file():
                raise DatasetError(self._missing_message())
            verify_checksum(self.archive, self.MD5)
            extract_archive(self.archive, self.folder)
            return
        url = self.URL if self.mirror is None else f"{self.mirror.rstrip('/')}/{ARCHIVE_NAME}"
        download_and_extract(url, self.folder, self.MD5, filename=ARCHIVE_NAME, progress=True)

    def _listing(self, source: SourceFiles) -> dict[str, list[tuple[str, Path]]]:
        """Class folder -> (image id, path) of its images listed in ``images.txt`` and present, in list order."""
        release: Path = source.details["release"]
        listing: dict[str, list[tuple[str, Path]]] = {}
        for number, (image_id, relative) in enumerate(_records(release / "images.txt", 2), start=1):
            class_name, slash, _ = relative.partition("/")
            if not slash or not _CLASS_FOLDER.fullmatch(class_name):
                raise DatasetError(
                    f"{release / 'images.txt'} line {number}: {relative!r} is not <NNN.Class_name>/<file>; the file "
                    f"is damaged. Extract {ARCHIVE_NAME} again"
                )
            path = release / "images" / relative
            if path.is_file():
                listing.setdefault(class_name, []).append((image_id, path))
        return listing

    def _boxes(self, source: SourceFiles) -> dict[str, CropBox]:
        """Image id -> (left, top, right, bottom) from ``bounding_boxes.txt``."""
        path = source.details["release"] / "bounding_boxes.txt"
        boxes = {}
        for number, (image_id, *values) in enumerate(_records(path, 5), start=1):
            try:
                x, y, width, height = (float(v) for v in values)
            except ValueError:
                raise DatasetError(
                    f"{path} line {number}: expected <image id> <x> <y> <width> <height> in numbers, got "
                    f"{' '.join(values)!r}; extract {ARCHIVE_NAME} again"
                ) from None
            boxes[image_id] = (x, y, x + width, y + height)
        return boxes

    def inventory(self, source: SourceFiles) -> dict[str, int]:
        """Images per class folder: those ``images.txt`` lists that are on disk."""
        return {name: len(images) for name, images in self._listing(source).items()}

    def decode(self, source: SourceFiles, classes: Sequence[str]) -> DecodedImages:
        listing = self._listing(source)
        boxes = self._boxes(source) if self.crop_to_bbox else {}
        counts = [len(listing[name]) for name in classes]
        images = np.empty((sum(counts), 3, self.image_size, self.image_size), dtype=np.uint8)
        row = 0
        for name in classes:
            for image_id, path in listing[name]:
                box = None
                if self.crop_to_bbox:
                    if image_id not in boxes:
                        raise DatasetError(
                            f"{source.details['release'] / 'bounding_boxes.txt'} has no box for image {image_id} "
                            f"({path}); extract {ARCHIVE_NAME} again, or pass crop_to_bbox=False"
                        )
                    box = boxes[image_id]
                images[row] = load_image(path, "RGB", self.image_size, box=box).numpy()
                row += 1
        labels = np.repeat(np.arange(len(classes)), counts)
        return DecodedImages(images, labels, list(classes))

    def __repr__(self) -> str:
        options = "" if self.split_scheme == "chen" else f", split={self.split_scheme!r}"
        options += ", crop_to_bbox=True" if self.crop_to_bbox else ""
        return super().__repr__().removesuffix(")") + options + ")"


def _records(path: Path, fields: int) -> list[list[str]]:
    """The whitespace-separated records of one of the release's text files, each of ``fields`` fields.

    Raises:
        DatasetError: the file cannot be read, or a line has another number of fields.
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read {path} ({exc}); extract {ARCHIVE_NAME} again") from exc
    records = [line.split() for line in lines if line.strip()]
    for number, record in enumerate(records, start=1):
        if len(record) != fields:
            raise DatasetError(
                f"{path}: record {number} has {len(record)} fields, expected {fields}; the file is damaged. "
                f"Extract {ARCHIVE_NAME} again"
            )
    return records
