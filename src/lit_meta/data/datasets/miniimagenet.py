"""miniImageNet: 100 ImageNet classes of 600 images, in the split of Ravi & Larochelle (2017)."""

from __future__ import annotations

import csv
import functools
import io
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from importlib.resources import files as package_files
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar

import numpy as np

from lit_meta.data.array_pickle import load_array_pickle
from lit_meta.data.datasets.base import SPLIT_NAMES, SplitName
from lit_meta.data.datasets.benchmark import DecodedImages, ImageBenchmark, SourceFiles, SplitSize
from lit_meta.data.download import html_page_title
from lit_meta.data.transforms import IMAGE_EXTENSIONS, load_image, resize_array
from lit_meta.errors import DatasetError

ImageList = tuple[tuple[str, str], ...]
"""Rows of a split CSV: ``(file name, WordNet id)``."""

SPLIT_LISTS = "miniimagenet_ravi"
"""The folder of the shipped split CSVs, ``lit_meta/data/splits/miniimagenet_ravi/{train,val,test}.csv``."""

PICKLE_FILES: dict[SplitName, tuple[str, ...]] = {
    "train": ("mini-imagenet-cache-train.pkl",),
    "val": ("mini-imagenet-cache-validation.pkl", "mini-imagenet-cache-val.pkl"),
    "test": ("mini-imagenet-cache-test.pkl",),
}
"""learn2learn's pickle of each split, by the names it is found under (learn2learn writes
``-validation``, other copies of the same files use ``-val``)."""

PICKLE_FORM = "learn2learn pickles"
LIBFEWSHOT_FORM = "LibFewShot folder"
IMAGE_FOLDER_FORM = "image folder"
CLASS_FOLDERS_FORM = "class folders"


def read_split_csv(text: str, name: str) -> list[tuple[str, str]]:
    """The rows ``(file name, WordNet id)`` of a split CSV in Ravi & Larochelle's form: a header
    line ``filename,label``, then one line per image.

    Raises:
        DatasetError: ``text`` is not of that form; the message names ``name`` and the line.
    """
    rows = list(csv.reader(io.StringIO(text)))
    header = [cell.strip() for cell in rows[0]] if rows else []
    if header != ["filename", "label"]:
        raise DatasetError(
            f"{name} is not a miniImageNet split CSV: its first line should be 'filename,label', "
            f"found {','.join(header)!r}"
        )
    images = []
    for number, row in enumerate(rows[1:], start=2):
        cells = [cell.strip() for cell in row]
        if not any(cells):
            continue
        if len(cells) != 2 or not all(cells):
            raise DatasetError(f"line {number} of {name} is not '<file name>,<WordNet id>': {','.join(row)!r}")
        images.append((cells[0], cells[1]))
    return images


@functools.cache
def ravi_split() -> MappingProxyType[SplitName, ImageList]:
    """The miniImageNet split of Ravi & Larochelle (2017): the images of meta-train, meta-val
    and meta-test as ``(file name, WordNet id)`` rows, 38,400 / 9,600 / 12,000 images of 64 / 16
    / 20 classes.

    Read from the CSVs shipped with the package (``lit_meta/data/splits/miniimagenet_ravi/``,
    MIT, Copyright (c) 2017 Jake Snell, from jakesnell/prototypical-networks; see
    ``SOURCE.md`` there).

    Raises:
        DatasetError: a shipped CSV is missing or malformed (a damaged installation).
    """
    folder = package_files("lit_meta.data").joinpath("splits", SPLIT_LISTS)
    split: dict[SplitName, ImageList] = {}
    for name in SPLIT_NAMES:
        try:
            text = folder.joinpath(f"{name}.csv").read_text(encoding="utf-8")
            split[name] = tuple(read_split_csv(text, f"{name}.csv"))
        except (OSError, DatasetError) as exc:
            raise DatasetError(
                f"the published miniImageNet split list {name}.csv of the lit-meta installation is unreadable "
                f"({exc}); reinstall lit-meta"
            ) from exc
    return MappingProxyType(split)


def _classes_in_order(rows: ImageList) -> list[str]:
    return list(dict.fromkeys(wnid for _, wnid in rows))


class MiniImageNet(ImageBenchmark):
    """miniImageNet (Vinyals et al., 2016, "Matching Networks for One Shot Learning",
    NeurIPS, Section 4.1.2) in the split of Ravi & Larochelle (2017, "Optimization as a Model
    for Few-Shot Learning", ICLR, Section 5): 100 classes of ILSVRC-2012, 600 images each,
    64 / 16 / 20 classes (38,400 / 9,600 / 12,000 images) for meta-training, meta-validation
    and meta-testing, RGB at 84x84 pixels.

    **Split.** The CSVs of Ravi & Larochelle as distributed with Snell et al.'s code,
    shipped with lit-meta (:func:`ravi_split`; MIT, see ``SOURCE.md`` beside them). Classes
    are the WordNet ids (``n01532829``), numbered in order of first appearance in
    ``train.csv``, then ``val.csv``, then ``test.csv``.

    **Files.** There is no official host and nothing is downloaded: obtain one of the forms
    below and put it in ``root/miniimagenet/`` (or in ``root`` itself). :meth:`locate`
    looks in ``root/miniimagenet/``, then in ``root``, and in each for these forms, in
    this order (the first found is read; the error when none is found lists them with
    their exact paths):

    1. *LibFewShot's folder* (its ``miniImageNet--ravi``): ``images/`` with ``train.csv``,
       ``val.csv`` and ``test.csv`` beside it, read as LibFewShot reads them (the CSVs name
       the files in ``images/``). A CSV that puts a class in another split than Ravi &
       Larochelle's is refused: the folder then holds another split.
    2. *An image folder*: ``images/n0153282900000005.jpg`` ..., the files named in the
       shipped CSVs, made from the ILSVRC-2012 training images; any size.
    3. *Class folders*: one folder per WordNet id holding its images, as
       ``<wnid>/``, ``images/<wnid>/`` or ``{train,val,test}/<wnid>/`` (the layout of
       Finn et al.'s MAML script ``data/miniImagenet/proc_images.py``); any file names
       and sizes.
    4. *learn2learn's pickles*: ``mini-imagenet-cache-train.pkl``,
       ``mini-imagenet-cache-validation.pkl`` (also read as ``-val.pkl``) and
       ``mini-imagenet-cache-test.pkl``, each a dict with ``image_data`` (``uint8``
       ``[N, 84, 84, 3]``) and ``class_dict`` (WordNet id -> indices into ``image_data``).
       **Unpickling can run code the file names**: these are read only from the ``root`` you
       pass, so put there only files you trust, and through
       :func:`~lit_meta.data.array_pickle.load_array_pickle`, which refuses any global but
       numpy's array ones. They are unpickled on the first load only
       (to count and to decode them); later loads read the plain-array cache.

    Images are decoded with Pillow, converted to RGB and resized to ``image_size`` with
    Lanczos filtering; no published checksums exist for any of these forms, so the files
    are not checked against any. A web page saved under a pickle's name (a download that
    received a host's quota or virus-scan page) and a damaged pickle or image are named in
    a :class:`~lit_meta.errors.DatasetError`.

    **Cache.** As :class:`~lit_meta.data.datasets.benchmark.ImageBenchmark`: decoded once
    into ``root/miniimagenet/lit-meta-cache/miniimagenet_<size>px/`` (plain ``.npy``
    arrays, 60,000 x 3 x 84 x 84 bytes = 1.27 GB at 84 px), memory-mapped by later loads.

    **Normalisation.** :attr:`MEAN` and :attr:`STD` are the per-channel statistics used for
    miniImageNet by Lee et al. (2019, "Meta-Learning with Differentiable Convex
    Optimization", CVPR; kjunelee/MetaOptNet, ``data/mini_imagenet.py``, taken from Gidaris &
    Komodakis, 2018): mean (120.40, 115.59, 104.54) / 255, std (70.68, 68.28, 72.55) / 255.

    **Deviations.** None in the images or the split. Class ids follow the CSVs' order for
    every form, where learn2learn numbers each pickle's classes in ``class_dict`` order; the
    ``train.pth`` caches LibFewShot writes beside its CSVs (pickles too) are not read.

    Args: those of :class:`~lit_meta.data.datasets.benchmark.ImageBenchmark`
    (``root``, ``image_size`` default 84, ``transform``, ``cache_dir``, ``cache``,
    ``allow_partial``).
    """

    NAME: ClassVar[str] = "miniImageNet"
    FOLDER: ClassVar[str] = "miniimagenet"
    SPLIT_SIZES: ClassVar[dict[SplitName, SplitSize]] = {
        "train": SplitSize(64, 38_400),
        "val": SplitSize(16, 9_600),
        "test": SplitSize(20, 12_000),
    }
    IMAGES_PER_CLASS: ClassVar[int | None] = 600
    MEAN: ClassVar[tuple[float, ...]] = (120.39586422 / 255, 115.59361427 / 255, 104.54012653 / 255)
    STD: ClassVar[tuple[float, ...]] = (70.68188272 / 255, 68.27635443 / 255, 72.54505529 / 255)
    DEFAULT_IMAGE_SIZE: ClassVar[int] = 84
    DECODE_THREADS: ClassVar[int] = 8
    """Image files decoded at once when building the cache (Pillow decodes outside the GIL)."""

    def split_table(self) -> dict[SplitName, list[str]]:
        """The WordNet ids of each split, in order of first appearance in its CSV."""
        return {name: _classes_in_order(rows) for name, rows in ravi_split().items()}

    # -- finding the files ----------------------------------------------------------------------
    def _bases(self) -> list[Path]:
        return list(dict.fromkeys([self.folder, self.root]))

    def locate(self) -> SourceFiles:
        """The first form found (see the class docstring for the order).

        Raises:
            DatasetError: no form is there (naming each form's exact paths), or a LibFewShot
                folder whose CSVs hold another split.
        """
        for base in self._bases():
            for find in (self._libfewshot, self._image_folder, self._class_folders, self._pickles):
                source = find(base)
                if source is not None:
                    return source
        raise DatasetError(self._missing_message())

    def _missing_message(self) -> str:
        f = self.folder
        return (
            f"miniImageNet files not found in {f} (nor in {self.root}). There is no official download; obtain one "
            "of these forms and put it there (no published checksums exist for any of them):\n"
            f"  1. LibFewShot's miniImageNet--ravi folder: {f / 'images'}/<file>.jpg with {f / 'train.csv'}, "
            f"{f / 'val.csv'} and {f / 'test.csv'};\n"
            f"  2. an image folder: {f / 'images'}/n0153282900000005.jpg ..., the 60,000 files named in Ravi & "
            "Larochelle's split CSVs (made from the ILSVRC-2012 training images; any size);\n"
            f"  3. class folders: {f}/<WordNet id>/<images>, {f / 'images'}/<WordNet id>/<images> or "
            f"{f}/train|val|test/<WordNet id>/<images> (MAML's proc_images.py layout);\n"
            f"  4. learn2learn's pickles: {f / PICKLE_FILES['train'][0]}, {f / PICKLE_FILES['val'][0]} (or "
            f"{PICKLE_FILES['val'][1]}) and {f / PICKLE_FILES['test'][0]}; unpickling runs code, so use only "
            "files you trust.\n"
            f"`lit-meta data check {self.FOLDER} --root {self.root}` then compares what is there with the split"
        )

    def _libfewshot(self, base: Path) -> SourceFiles | None:
        images = base / "images"
        tables = [base / f"{name}.csv" for name in SPLIT_NAMES]
        if not images.is_dir() or not all(table.is_file() for table in tables):
            return None
        published = {wnid: name for name, classes in self.split_table().items() for wnid in classes}
        rows: list[tuple[str, str]] = []
        for name, table in zip(SPLIT_NAMES, tables, strict=True):
            listed = read_split_csv(table.read_text(encoding="utf-8"), str(table))
            for wnid in _classes_in_order(tuple(listed)):
                if published.get(wnid, name) != name:
                    raise DatasetError(
                        f"{table} lists class {wnid}, which Ravi & Larochelle's split puts in {published[wnid]}.csv: "
                        f"the CSVs in {base} hold another split, and lit-meta's miniImageNet is the published "
                        f"split. Move {base}/train.csv, val.csv and test.csv away to read {images} by the "
                        "published split"
                    )
            rows += listed
        return SourceFiles(LIBFEWSHOT_FORM, (images, *tables), {"images": images, "rows": tuple(rows)})

    def _image_folder(self, base: Path) -> SourceFiles | None:
        images = base / "images"
        if not images.is_dir():
            return None
        rows = tuple(row for split in ravi_split().values() for row in split)
        if not _present_files(images).intersection(name for name, _ in rows):
            return None
        return SourceFiles(IMAGE_FOLDER_FORM, (images,), {"images": images, "rows": rows})

    def _class_folders(self, base: Path) -> SourceFiles | None:
        listed = set(self._listed())
        found: dict[str, Path] = {}
        for parent in (base, base / "images", *(base / name for name in SPLIT_NAMES)):
            if not parent.is_dir():
                continue
            for folder in sorted(parent.iterdir()):
                if folder.name not in listed or not folder.is_dir():
                    continue
                if folder.name in found:
                    raise DatasetError(
                        f"miniImageNet class {folder.name} has two folders, {found[folder.name]} and {folder}; keep one"
                    )
                found[folder.name] = folder
        if not found:
            return None
        return SourceFiles(CLASS_FOLDERS_FORM, tuple(found.values()), {"class_folders": found})

    def _pickles(self, base: Path) -> SourceFiles | None:
        paths = []
        for names in PICKLE_FILES.values():
            path = next((base / name for name in names if (base / name).is_file()), None)
            if path is not None:
                paths.append(path)
        return SourceFiles(PICKLE_FORM, tuple(paths)) if paths else None

    # -- reading them ---------------------------------------------------------------------------
    def _image_files(self, source: SourceFiles) -> dict[str, list[Path]]:
        """The image files of each class present, in a fixed order (the CSVs', or by name)."""
        files: dict[str, list[Path]] = {}
        if source.form == CLASS_FOLDERS_FORM:
            for wnid, folder in source.details["class_folders"].items():
                files[wnid] = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
            return files
        images: Path = source.details["images"]
        present = _present_files(images)
        for name, wnid in source.details["rows"]:
            if name in present:
                files.setdefault(wnid, []).append(images / name)
        return files

    def inventory(self, source: SourceFiles) -> dict[str, int]:
        """Images per WordNet id: the files present (for the pickles, the lengths of their ``class_dict``)."""
        if source.form == PICKLE_FORM:
            counts: dict[str, int] = {}
            for path in source.paths:
                for wnid, indices in _read_pickle(path)[1].items():
                    counts[wnid] = counts.get(wnid, 0) + len(indices)
            return counts
        return {wnid: len(paths) for wnid, paths in self._image_files(source).items()}

    def decode(self, source: SourceFiles, classes: Sequence[str]) -> DecodedImages:
        """Decode ``classes`` into one ``uint8`` ``[N, 3, S, S]`` array, class by class."""
        counts = self._inventory(source)
        sizes = [counts[wnid] for wnid in classes]
        size = self.image_size
        images = np.empty((sum(sizes), 3, size, size), dtype=np.uint8)
        start = dict(zip(classes, np.cumsum([0, *sizes[:-1]]).tolist(), strict=True))
        if source.form == PICKLE_FORM:
            filled = dict.fromkeys(classes, 0)
            for path in source.paths:
                data, class_dict = _read_pickle(path)
                for wnid, indices in class_dict.items():
                    if wnid not in start or len(indices) == 0:
                        continue
                    if data.shape[1:3] == (size, size):
                        block = data[indices]
                    else:
                        block = np.stack([resize_array(data[index], size) for index in indices])
                    at = start[wnid] + filled[wnid]
                    images[at : at + len(indices)] = block.transpose(0, 3, 1, 2)
                    filled[wnid] += len(indices)
                del data, class_dict
        else:
            files = self._image_files(source)
            paths = [path for wnid in classes for path in files[wnid]]

            def decode_one(position: int) -> None:
                images[position] = load_image(paths[position], "RGB", size).numpy()

            with ThreadPoolExecutor(max_workers=min(self.DECODE_THREADS, os.cpu_count() or 1)) as pool:
                list(pool.map(decode_one, range(len(paths))))
        labels = np.repeat(np.arange(len(classes), dtype=np.int64), sizes)
        return DecodedImages(images, labels, list(classes))


def _present_files(folder: Path) -> set[str]:
    """Names of the files directly in ``folder`` (one directory listing, no per-file stat)."""
    with os.scandir(folder) as entries:
        return {entry.name for entry in entries if entry.is_file()}


def _read_pickle(path: Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``image_data`` (``uint8`` ``[N, H, W, 3]``) and ``class_dict`` of one of learn2learn's pickles.

    Unpickling runs whatever code the file names: call this only on files in the user's own root.

    Raises:
        DatasetError: naming ``path``, for a web page saved under its name, a file that does not
            unpickle, or one of another layout.
    """
    title = html_page_title(path)
    if title is not None:
        raise DatasetError(
            f"{path} is a web page ({title}), not learn2learn's miniImageNet pickle: a download that received a "
            "host's quota, sign-in or virus-scan page. Delete it and obtain the file again"
        )
    try:
        with open(path, "rb") as file:
            # The user's own file (see the docstring); latin1 also reads the arrays of Python 2 pickles.
            data: Any = load_array_pickle(file)
    except MemoryError:
        raise
    except Exception as exc:  # unpickling a damaged file raises nearly any exception type
        raise DatasetError(
            f"cannot unpickle {path} ({type(exc).__name__}: {exc}): the file is damaged or truncated; obtain it again"
        ) from exc
    expected = "a dict with 'image_data' (uint8 [N, 84, 84, 3]) and 'class_dict' ({WordNet id: [indices]})"
    if not isinstance(data, dict) or "image_data" not in data or "class_dict" not in data:
        found = f"a dict with keys {sorted(map(str, data))}" if isinstance(data, dict) else type(data).__name__
        raise DatasetError(f"{path} is not learn2learn's miniImageNet pickle: expected {expected}, found {found}")
    images, class_dict = data["image_data"], data["class_dict"]
    if not (isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.ndim == 4 and images.shape[3] == 3):
        what = f"{images.dtype} {list(images.shape)}" if isinstance(images, np.ndarray) else type(images).__name__
        raise DatasetError(f"{path}: 'image_data' should be uint8 [N, 84, 84, 3] (expected {expected}), found {what}")
    if not isinstance(class_dict, dict):
        raise DatasetError(
            f"{path}: 'class_dict' should be {{WordNet id: [indices]}}, found {type(class_dict).__name__}"
        )
    indices = {}
    for wnid, listed in class_dict.items():
        array = np.asarray(listed)
        if array.ndim != 1 or (
            array.size > 0
            and (not np.issubdtype(array.dtype, np.integer) or array.min() < 0 or array.max() >= len(images))
        ):
            raise DatasetError(
                f"{path}: 'class_dict' entry {wnid!r} should list indices into the {len(images)} images of 'image_data'"
            )
        indices[str(wnid)] = array
    return images, indices
