"""tieredImageNet: 608 ILSVRC-2012 classes in 34 high-level categories (Ren et al., 2018).

Ren, Triantafillou, Ravi, Snell, Swersky, Tenenbaum, Larochelle and Zemel, "Meta-Learning
for Semi-Supervised Few-Shot Classification", ICLR 2018, Section 4 (datasets): 779,165
images of 608 classes, grouped by 34 nodes of the ImageNet hierarchy ("categories"); 20
categories (351 classes, 448,695 images) are meta-train, 6 (97 classes, 124,261 images)
meta-val and 8 (160 classes, 206,209 images) meta-test, so no category reaches across
splits. (The per-split image counts as learn2learn's ``TieredImagenet`` quotes the paper;
they sum to its 779,165. The class and category counts are those of the shipped lists.)

**Split.** The published lists of Ren et al.'s code (``fewshot/data/tiered_imagenet_split/
{train,val,test}.csv`` of renmengye/few-shot-ssl-public, MIT; shipped in
``lit_meta/data/splits/tieredimagenet_ren/`` with ``SOURCE.md``): one class WordNet id and
its category's WordNet id per line. Classes are named by WordNet id (``"n01530575"``);
:meth:`TieredImageNet.class_categories` gives each class's category,
:meth:`TieredImageNet.category_names` the categories' words.

**Files read** (no download: there is no stable official host; the files come from the
Google Drive link in Ren et al.'s README, ``tiered-imagenet.tar``, 12.9 GB). They are
looked for in ``<root>/tieredimagenet/``, then ``<root>/tieredimagenet/tiered-imagenet/``
(where the tar extracts), then ``<root>``; in each, per split ``{split}`` (``train``,
``val``, ``test``), in this order of preference:

* Ren et al.'s release: ``{split}_images_png.pkl`` (a pickled list of PNG-encoded 84x84
  images) and ``{split}_labels.pkl`` (a pickled dict: ``label_specific``, the class
  number of every image; ``label_specific_str``, the class names; ``label_general`` and
  ``label_general_str``, the categories, not read: the published lists give them). The
  tar's ``synsets.txt`` and ``class_names.txt`` (the 1000 ILSVRC WordNet ids and their
  names, line by line) map the names to WordNet ids; names that already are WordNet ids
  need neither.
* The decoded arrays Ren et al.'s code writes next to them (and several later
  repositories read): ``{split}_images.npz`` (key ``images``, ``uint8 [N, 84, 84, 3]``)
  with the same ``{split}_labels.pkl``. Ren et al.'s code decodes with OpenCV, so these
  arrays are **BGR**; ``npz_channels="RGB"`` reads arrays stored RGB. The array is
  read in chunks from the archive, never whole.

Labels pickles holding only integer ``labels`` (the files MetaOptNet and RFS distribute)
name no classes, so their classes cannot be matched with the published split; they are
refused with a message saying so.

**Pickle.** Unpickling can run code the file names: lit-meta unpickles only files in the
user's own ``root``, through :func:`~lit_meta.data.array_pickle.load_array_pickle` (which
refuses any global but numpy's array ones), and only when building the cache; later loads read the plain-array
cache and a small JSON inventory of the labels (``<cache>/inventory``),
with no unpickling.

**Cache and memory.** Decoding writes straight into the memory-mapped cache file
(:meth:`~lit_meta.data.datasets.benchmark.ImageBenchmark.allocate_images`; the
training split alone is 9.5 GB at 84 px), not into memory; the PNG form's pickled list of
encoded images (about the size of the ``.pkl``) is held in memory while its split is
decoded, as unpickling it requires.

**Deviations.** Images of a size other than the stored 84 px are resized from the stored
84x84 images with Lanczos; the categories come from the published lists, not from the
files' ``label_general``.
"""

from __future__ import annotations

import csv
import functools
import io
import pickle
import re
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib.resources import files as package_files
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar, Literal

import numpy as np

from lit_meta.data.array_pickle import load_array_pickle
from lit_meta.data.datasets.base import SPLIT_NAMES, SplitName, Transform
from lit_meta.data.datasets.benchmark import DecodedImages, ImageBenchmark, SourceFiles, SplitSize
from lit_meta.data.transforms import decode_image, resize_array
from lit_meta.errors import DatasetError

ChannelOrder = Literal["BGR", "RGB"]

SPLIT_LIST_FOLDER = "tieredimagenet_ren"
"""``lit_meta/data/splits/<this>/``: the published lists and ``categories.csv``."""
TAR_NAME = "tiered-imagenet.tar"
TAR_MD5 = "e07e811b9f29362d159a9edd0d838c62"
"""MD5 of Ren et al.'s ``tiered-imagenet.tar`` as torchmeta checks it (tristandeleu/pytorch-meta,
``torchmeta/datasets/tieredimagenet.py``, ``tar_md5``)."""
STORED_SIZE = 84
_WNID = re.compile(r"n\d{8}")
_CHUNK_IMAGES = 1024


@dataclass(frozen=True)
class TieredSplit:
    """The published split of Ren et al.: classes per split, each class's category, the categories' words."""

    classes: MappingProxyType[SplitName, tuple[str, ...]]
    category_of: MappingProxyType[str, str]
    category_words: MappingProxyType[str, str]


@functools.cache
def ren_split() -> TieredSplit:
    """The published tieredImageNet split, read from the lists shipped with lit-meta.

    Raises:
        DatasetError: a shipped list is missing or malformed (a damaged installation).
    """
    folder = package_files("lit_meta.data").joinpath("splits", SPLIT_LIST_FOLDER)

    def rows(name: str) -> list[list[str]]:
        try:
            text = folder.joinpath(name).read_text(encoding="utf-8")
        except OSError as exc:
            raise DatasetError(
                f"the tieredImageNet split list {name} is missing from the lit-meta installation ({exc}); "
                "reinstall lit-meta"
            ) from exc
        found = [row for row in csv.reader(io.StringIO(text)) if row]
        if any(len(row) != 2 for row in found):
            raise DatasetError(f"the tieredImageNet split list {name} is malformed; reinstall lit-meta")
        return found

    classes: dict[SplitName, tuple[str, ...]] = {}
    category_of: dict[str, str] = {}
    for split in SPLIT_NAMES:
        listed = rows(f"{split}.csv")
        classes[split] = tuple(wnid for wnid, _ in listed)
        category_of.update(listed)
    words = dict(rows("categories.csv"))
    return TieredSplit(MappingProxyType(classes), MappingProxyType(category_of), MappingProxyType(words))


def _load_pickle(path: Path) -> Any:
    """Unpickle a file of the user's root (see the module docstring); Python 2 pickles included."""
    try:
        with path.open("rb") as file:
            # the user's own files, unpickled once to build the caches
            return load_array_pickle(file)
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError) as exc:
        raise DatasetError(
            f"cannot read {path}: {exc}; the file is damaged or not Ren et al.'s tieredImageNet file. "
            "Replace it with the one from tiered-imagenet.tar"
        ) from exc


def _text(value: Any) -> str:
    return value.decode("latin1") if isinstance(value, bytes) else str(value)


def _png_bytes(item: Any) -> bytes:
    """One image of a PNG pickle: bytes, or the ``uint8`` array ``cv2.imencode`` returns."""
    return bytes(item) if isinstance(item, bytes | bytearray) else np.asarray(item, dtype=np.uint8).tobytes()


@dataclass(frozen=True)
class _Labels:
    """One ``{split}_labels.pkl``: the class number of each image and the classes' names."""

    path: Path
    per_image: np.ndarray
    names: list[str]


def _read_labels(path: Path) -> _Labels:
    data = _load_pickle(path)
    if not isinstance(data, dict):
        raise DatasetError(f"{path} holds a {type(data).__name__}, not the dict of Ren et al.'s labels files")
    data = {_text(key): value for key, value in data.items()}
    if "label_specific" not in data or "label_specific_str" not in data:
        only_ints = " (integer labels without class names, as in the files MetaOptNet and RFS distribute)"
        raise DatasetError(
            f"{path} has keys {sorted(data)}{only_ints if 'labels' in data else ''}, not 'label_specific' and "
            "'label_specific_str': without class names its classes cannot be matched with the published split. "
            f"Use the {path.name} of Ren et al.'s {TAR_NAME}"
        )
    per_image = np.asarray(data["label_specific"]).astype(np.int64).reshape(-1)
    names = [_text(name).strip() for name in data["label_specific_str"]]
    if per_image.size and (per_image.min() < 0 or per_image.max() >= len(names)):
        raise DatasetError(
            f"{path}: label_specific runs {per_image.min()}..{per_image.max()} but label_specific_str names "
            f"{len(names)} classes; the file is damaged, replace it"
        )
    return _Labels(path, per_image, names)


@dataclass(frozen=True)
class _SplitFiles:
    images: Path
    labels: Path


_FORMS: tuple[tuple[str, str], ...] = (
    ("Ren et al. PNG pickles", "{split}_images_png.pkl"),
    ("images npz", "{split}_images.npz"),
)
_NAME_FILES = ("synsets.txt", "class_names.txt")


class TieredImageNet(ImageBenchmark):
    """tieredImageNet with the published split of Ren et al. (2018); see the module docstring.

    Args:
        root: folder holding ``tieredimagenet/`` (or the files themselves).
        image_size: side of the square images; default 84, the stored size.
        transform: optional callable applied to each float ``[3, S, S]`` item.
        cache_dir: folder of the decoded cache; default ``<root>/tieredimagenet/lit-meta-cache``.
        cache: read and write the decoded cache.
        allow_partial: split a root lacking some published classes with those it has.
        npz_channels: channel order of ``{split}_images.npz`` arrays: ``"BGR"`` as Ren
            et al.'s code writes them (OpenCV), or ``"RGB"``.
    """

    NAME = "tieredImageNet"
    FOLDER = "tieredimagenet"
    SPLIT_SIZES: ClassVar[dict[SplitName, SplitSize]] = {
        "train": SplitSize(351, 448_695),
        "val": SplitSize(97, 124_261),
        "test": SplitSize(160, 206_209),
    }
    # The statistics MetaOptNet (Lee et al., CVPR 2019, kjunelee/MetaOptNet,
    # data/tiered_imagenet.py, after Gidaris & Komodakis) normalise tieredImageNet with.
    MEAN: ClassVar[tuple[float, ...]] = tuple(x / 255 for x in (120.39586422, 115.59361427, 104.54012653))
    STD: ClassVar[tuple[float, ...]] = tuple(x / 255 for x in (70.68188272, 68.27635443, 72.54505529))
    DEFAULT_IMAGE_SIZE = STORED_SIZE

    def __init__(
        self,
        root: str | Path = "data",
        image_size: int | None = None,
        transform: Transform | None = None,
        cache_dir: str | Path | None = None,
        cache: bool = True,
        allow_partial: bool = False,
        npz_channels: ChannelOrder = "BGR",
    ) -> None:
        super().__init__(root, image_size, transform, cache_dir, cache, allow_partial)
        if npz_channels not in ("BGR", "RGB"):
            raise DatasetError(f"npz_channels must be 'BGR' or 'RGB', got {npz_channels!r}")
        self.npz_channels: ChannelOrder = npz_channels

    # -- the published split ----------------------------------------------------------------
    def split_table(self) -> dict[SplitName, list[str]]:
        """The class WordNet ids of meta-train, meta-val and meta-test, as Ren et al. list them."""
        return {split: list(classes) for split, classes in ren_split().classes.items()}

    def class_categories(self, split: SplitName | None = None) -> dict[str, str]:
        """Class WordNet id -> its category's WordNet id, for ``split`` (default: all 608 classes)."""
        table = ren_split()
        names = [c for s in SPLIT_NAMES for c in table.classes[s]] if split is None else table.classes[split]
        return {name: table.category_of[name] for name in names}

    @staticmethod
    def category_names() -> dict[str, str]:
        """Category WordNet id -> its WordNet words (``"n02087551": "hound, hound dog"``), all 34."""
        return dict(ren_split().category_words)

    # -- files ------------------------------------------------------------------------------
    def _candidate_folders(self) -> list[Path]:
        return [self.folder, self.folder / "tiered-imagenet", self.root]

    def locate(self) -> SourceFiles:
        """The first folder and form (PNG pickles before npz arrays) with a split's files.

        Raises:
            DatasetError: none found; the message lists each form's files and where to put them.
        """
        for folder in self._candidate_folders():
            for form, pattern in _FORMS:
                splits = {
                    split: _SplitFiles(folder / pattern.format(split=split), folder / f"{split}_labels.pkl")
                    for split in SPLIT_NAMES
                }
                present = {s: f for s, f in splits.items() if f.images.is_file() and f.labels.is_file()}
                if present:
                    name_files = tuple(folder / n for n in _NAME_FILES if (folder / n).is_file())
                    paths = tuple(p for f in present.values() for p in (f.images, f.labels)) + name_files
                    return SourceFiles(form, paths, {"folder": folder, "splits": present})
        raise DatasetError(self._missing_message())

    def _missing_message(self) -> str:
        tar = [p / TAR_NAME for p in (self.folder, self.root) if (p / TAR_NAME).is_file()]
        found = f" Found {tar[0]}: extract it there (tar -xf {TAR_NAME})." if tar else ""
        per_split = ", ".join(f"{s}_labels.pkl" for s in SPLIT_NAMES)
        return (
            f"tieredImageNet files not found in {self.folder} (nor in {self.folder / 'tiered-imagenet'} or "
            f"{self.root}).{found} lit-meta downloads nothing for tieredImageNet (no stable official host); obtain "
            f"Ren et al.'s {TAR_NAME} (md5 {TAR_MD5}, as torchmeta checks it; the Google Drive link in "
            "the README of github.com/renmengye/few-shot-ssl-public) and extract it into "
            f"{self.folder}, or put there, for the splits train, val and test, either "
            f"(1) {', '.join(f'{s}_images_png.pkl' for s in SPLIT_NAMES)}, {per_split}, synsets.txt and "
            f"class_names.txt (the tar's files), or (2) {', '.join(f'{s}_images.npz' for s in SPLIT_NAMES)} "
            f"(key 'images', uint8 [N, 84, 84, 3], BGR unless npz_channels='RGB') with {per_split}"
        )

    def _class_ids(self, source: SourceFiles, labels: _Labels) -> list[str]:
        """The WordNet id of each class name in ``labels`` (names not in the split table are kept as they are)."""
        if all(_WNID.fullmatch(name) for name in labels.names):
            return list(labels.names)
        folder: Path = source.details["folder"]
        synsets, class_names = (folder / n for n in _NAME_FILES)
        if not (synsets.is_file() and class_names.is_file()):
            raise DatasetError(
                f"{labels.path} names classes by words (e.g. {labels.names[0]!r}); put {TAR_NAME}'s synsets.txt "
                f"and class_names.txt in {folder} so lit-meta can map them to the published WordNet ids"
            )
        wnids = synsets.read_text(encoding="utf-8").splitlines()
        words = class_names.read_text(encoding="utf-8").splitlines()
        if len(wnids) != len(words):
            raise DatasetError(
                f"{synsets} has {len(wnids)} lines but {class_names} has {len(words)}; replace them with the tar's"
            )
        by_name: dict[str, list[str]] = {}
        for wnid, name in zip(wnids, words, strict=True):
            by_name.setdefault(name.strip(), []).append(wnid.strip())
        listed = ren_split().category_of
        ids = []
        for name in labels.names:
            candidates = by_name.get(name, [])
            published = [w for w in candidates if w in listed]
            if len(published) > 1:
                raise DatasetError(
                    f"{labels.path}: class name {name!r} is the name of {', '.join(published)} in {class_names}; "
                    "lit-meta cannot tell which class the file means"
                )
            ids.append(published[0] if published else candidates[0] if candidates else name)
        return ids

    def _split_labels(self, source: SourceFiles) -> Iterator[tuple[_SplitFiles, _Labels, list[str]]]:
        for files in source.details["splits"].values():
            labels = _read_labels(files.labels)
            yield files, labels, self._class_ids(source, labels)

    def inventory(self, source: SourceFiles) -> dict[str, int]:
        """Images per class WordNet id, from the labels files (the base keeps it beside the cache,
        so later loads unpickle nothing).

        Raises:
            DatasetError: a class is in two splits' files, or a labels file is unreadable.
        """
        counts: dict[str, int] = {}
        for files, labels, ids in self._split_labels(source):
            sizes = np.bincount(labels.per_image, minlength=len(ids))
            for name, size in zip(ids, sizes, strict=True):
                if name in counts:
                    raise DatasetError(
                        f"class {name} is in {files.labels} and in another split's labels file; the files are "
                        "not Ren et al.'s split, replace them"
                    )
                counts[name] = int(size)
        return counts

    # -- decoding -------------------------------------------------------------------------------
    def decode(self, source: SourceFiles, classes: Sequence[str]) -> DecodedImages:
        """Decode the images of ``classes`` into :meth:`allocate_images`, one split file at a time."""
        number = {name: i for i, name in enumerate(classes)}
        plans = []
        for files, labels, ids in self._split_labels(source):
            target = np.array([number.get(name, -1) for name in ids], dtype=np.int64)
            image_labels = target[labels.per_image] if len(ids) else labels.per_image
            plans.append((files, labels, image_labels))
        total = sum(int((image_labels >= 0).sum()) for _, _, image_labels in plans)
        images = self.allocate_images(total)
        labels_out = np.empty(total, dtype=np.int64)
        position = 0
        for files, labels, image_labels in plans:
            wanted = np.flatnonzero(image_labels >= 0)
            reader = self._read_png_pickle if source.form == _FORMS[0][0] else self._read_npz
            for start, block in reader(files.images, wanted, len(labels.per_image)):
                images[position + start : position + start + len(block)] = block
            labels_out[position : position + len(wanted)] = image_labels[wanted]
            position += len(wanted)
        return DecodedImages(images, labels_out, list(classes))

    def _read_png_pickle(self, path: Path, wanted: np.ndarray, count: int) -> Iterator[tuple[int, np.ndarray]]:
        encoded = _load_pickle(path)
        if not isinstance(encoded, list | tuple) or len(encoded) != count:
            size = len(encoded) if isinstance(encoded, list | tuple) else type(encoded).__name__
            raise DatasetError(
                f"{path} holds {size} images but its labels file labels {count}; the pair does not belong "
                "together, replace both from the same tar"
            )
        for start in range(0, len(wanted), _CHUNK_IMAGES):
            chunk = wanted[start : start + _CHUNK_IMAGES]
            block = np.stack(
                [
                    decode_image(_png_bytes(encoded[i]), "RGB", self.image_size, name=f"{path}[{i}]").numpy()
                    for i in chunk
                ]
            )
            yield start, block

    def _read_npz(self, path: Path, wanted: np.ndarray, count: int) -> Iterator[tuple[int, np.ndarray]]:
        try:
            with zipfile.ZipFile(path) as archive, archive.open("images.npy") as stream:
                version = np.lib.format.read_magic(stream)
                read_header = (
                    np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                )
                shape, fortran, dtype = read_header(stream)
                if fortran or dtype != np.uint8 or len(shape) != 4 or shape[3] != 3 or shape[0] != count:
                    raise DatasetError(
                        f"{path}: 'images' is {dtype} {list(shape)}, expected uint8 [{count}, H, W, 3] (C order) "
                        "matching its labels file; replace it"
                    )
                yield from self._read_rows(stream, shape, wanted, path)
        except DatasetError:
            raise
        except (OSError, zipfile.BadZipFile, KeyError, ValueError, EOFError) as exc:
            raise DatasetError(f"cannot read the images of {path}: {exc}; the file is damaged, replace it") from exc

    def _read_rows(
        self, stream: io.BufferedIOBase, shape: tuple[int, ...], wanted: np.ndarray, path: Path
    ) -> Iterator[tuple[int, np.ndarray]]:
        row_bytes = int(np.prod(shape[1:]))
        done = 0
        for first in range(0, shape[0], _CHUNK_IMAGES):
            rows = min(_CHUNK_IMAGES, shape[0] - first)
            data = stream.read(rows * row_bytes)
            if len(data) != rows * row_bytes:
                raise DatasetError(f"{path} ends after {first} images of {shape[0]}; the file is truncated, replace it")
            take = wanted[(wanted >= first) & (wanted < first + rows)] - first
            if not len(take):
                continue
            block = np.frombuffer(data, dtype=np.uint8).reshape(rows, *shape[1:])[take]
            if self.npz_channels == "BGR":
                block = block[..., ::-1]
            resized = [resize_array(np.ascontiguousarray(image), self.image_size) for image in block]
            yield done, np.stack(resized).transpose(0, 3, 1, 2)
            done += len(take)

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + (", npz_channels='RGB')" if self.npz_channels == "RGB" else ")")
