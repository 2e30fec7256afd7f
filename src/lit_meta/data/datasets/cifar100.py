"""CIFAR-100's python archive, the source of the CIFAR-FS and FC100 few-shot benchmarks.

CIFAR-100 (Krizhevsky, 2009, "Learning Multiple Layers of Features from Tiny Images",
technical report, University of Toronto) holds 600 32x32 colour images in each of 100
classes, grouped in 20 super-classes of 5 classes. Its official python release,
``cifar-100-python.tar.gz`` from https://www.cs.toronto.edu/~kriz/cifar.html, holds three
pickles: ``cifar-100-python/train`` (500 images per class) and ``cifar-100-python/test``
(100 per class), each a dict with ``data`` (``uint8`` ``[N, 3072]``: the red, green and
blue 32x32 planes of each image), ``fine_labels``, ``coarse_labels``, ``filenames`` and
``batch_label``; and ``cifar-100-python/meta`` with ``fine_label_names`` and
``coarse_label_names``.

:class:`CIFAR100Benchmark` is the shared base of the benchmarks that split CIFAR-100's
classes (both of the archive's batches, all 600 images of each class); each benchmark's own
module holds only its published class lists.
"""

from __future__ import annotations

import pickle
import tarfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, ClassVar

import numpy as np

from lit_meta.data.array_cache import read_array_cache, write_array_cache
from lit_meta.data.array_pickle import load_array_pickle
from lit_meta.data.datasets.base import Transform
from lit_meta.data.datasets.benchmark import CACHE_FOLDER, DecodedImages, ImageBenchmark, SourceFiles
from lit_meta.data.download import download_url, verify_checksum
from lit_meta.data.transforms import resize_array
from lit_meta.errors import DatasetError

CIFAR100_FOLDER = "cifar100"
"""The folder under ``root`` where every CIFAR-100 benchmark looks for (and downloads) the archive."""
CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
CIFAR100_ARCHIVE = "cifar-100-python.tar.gz"
CIFAR100_ARCHIVE_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"
"""The official archive's md5, as published with it and checked by torchvision."""
CIFAR100_EXTRACTED = "cifar-100-python"
"""The folder the archive holds (and extracts to)."""
CIFAR100_MEMBER_MD5: dict[str, str] = {
    "train": "16019d7e3df5f24257cddd939b257f8d",
    "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
    "meta": "7973b15100ade9c7d40fb424638fde48",
}
"""md5 of the pickles inside the official archive (as torchvision's ``CIFAR100`` checks them),
for a copy already extracted to ``cifar-100-python/``."""
CIFAR100_BATCHES = ("train", "test")
_SIDE = 32

CIFAR100_SUPERCLASSES: dict[str, tuple[str, ...]] = {
    "aquatic_mammals": ("beaver", "dolphin", "otter", "seal", "whale"),
    "fish": ("aquarium_fish", "flatfish", "ray", "shark", "trout"),
    "flowers": ("orchid", "poppy", "rose", "sunflower", "tulip"),
    "food_containers": ("bottle", "bowl", "can", "cup", "plate"),
    "fruit_and_vegetables": ("apple", "mushroom", "orange", "pear", "sweet_pepper"),
    "household_electrical_devices": ("clock", "keyboard", "lamp", "telephone", "television"),
    "household_furniture": ("bed", "chair", "couch", "table", "wardrobe"),
    "insects": ("bee", "beetle", "butterfly", "caterpillar", "cockroach"),
    "large_carnivores": ("bear", "leopard", "lion", "tiger", "wolf"),
    "large_man-made_outdoor_things": ("bridge", "castle", "house", "road", "skyscraper"),
    "large_natural_outdoor_scenes": ("cloud", "forest", "mountain", "plain", "sea"),
    "large_omnivores_and_herbivores": ("camel", "cattle", "chimpanzee", "elephant", "kangaroo"),
    "medium_mammals": ("fox", "porcupine", "possum", "raccoon", "skunk"),
    "non-insect_invertebrates": ("crab", "lobster", "snail", "spider", "worm"),
    "people": ("baby", "boy", "girl", "man", "woman"),
    "reptiles": ("crocodile", "dinosaur", "lizard", "snake", "turtle"),
    "small_mammals": ("hamster", "mouse", "rabbit", "shrew", "squirrel"),
    "trees": ("maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"),
    "vehicles_1": ("bicycle", "bus", "motorcycle", "pickup_truck", "train"),
    "vehicles_2": ("lawn_mower", "rocket", "streetcar", "tank", "tractor"),
}
"""CIFAR-100's 20 super-classes and their 5 classes each (Krizhevsky, 2009; the table of
https://www.cs.toronto.edu/~kriz/cifar.html), spelled as the archive's ``meta`` pickle names
them (``coarse_label_names``, ``fine_label_names``); checked against every archive read."""


@dataclass(frozen=True)
class CIFAR100Arrays:
    """The whole archive as arrays: the ``train`` batch's images, then the ``test`` batch's.

    Args:
        images: ``uint8`` ``[N, 3, 32, 32]``.
        fine_labels: ``[N]`` positions in ``fine_names``.
        coarse_labels: ``[N]`` positions in ``coarse_names``.
        fine_names: the archive's ``fine_label_names``.
        coarse_names: the archive's ``coarse_label_names``.
    """

    images: np.ndarray
    fine_labels: np.ndarray
    coarse_labels: np.ndarray
    fine_names: list[str]
    coarse_names: list[str]


def _unpickle(stream: IO[bytes], name: str) -> dict[str, Any]:
    """A CIFAR-100 pickle's dict, its keys as ``str``; ``latin1`` reads the Python 2 strings of the release."""
    try:
        content = load_array_pickle(stream)
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, OSError, tarfile.TarError) as exc:
        raise DatasetError(
            f"cannot read {name} ({type(exc).__name__}: {exc}): not a CIFAR-100 python pickle; delete it and "
            f"download {CIFAR100_URL} again"
        ) from exc
    if not isinstance(content, dict):
        raise DatasetError(f"{name} holds a {type(content).__name__}, not the dict of a CIFAR-100 python pickle")
    return {key.decode("latin1") if isinstance(key, bytes) else key: value for key, value in content.items()}


def _names(value: Any) -> list[str]:
    return [v.decode("latin1") if isinstance(v, bytes) else str(v) for v in value]


def _field(content: dict[str, Any], key: str, name: str) -> Any:
    if key not in content:
        raise DatasetError(
            f"{name} lacks the key {key!r} (it has {', '.join(sorted(content))}): not a CIFAR-100 python pickle"
        )
    return content[key]


def _load_pickles(source: SourceFiles) -> dict[str, tuple[dict[str, Any], str]]:
    """``train``, ``test``, ``meta`` -> (content, name for messages), each checksum-verified before it is unpickled.

    The archive is read as a stream, member after member in its own order: one pass of
    decompression, where looking members up by name would decompress it again for each.
    """
    loaded: dict[str, tuple[dict[str, Any], str]] = {}
    if source.details["kind"] == "folder":
        folder = source.paths[0]
        for member, md5 in CIFAR100_MEMBER_MD5.items():
            verify_checksum(folder / member, f"md5:{md5}")
            with (folder / member).open("rb") as stream:
                loaded[member] = (_unpickle(stream, str(folder / member)), str(folder / member))
        return loaded
    archive = source.paths[0]
    verify_checksum(archive, f"md5:{CIFAR100_ARCHIVE_MD5}")
    wanted = {f"{CIFAR100_EXTRACTED}/{member}": member for member in CIFAR100_MEMBER_MD5}
    try:
        with tarfile.open(archive, "r|gz") as tar:
            for info in tar:
                member = wanted.get(info.name.removeprefix("./"))
                stream = tar.extractfile(info) if member is not None else None
                if stream is not None:
                    name = f"{archive}::{info.name}"
                    loaded[member] = (_unpickle(stream, name), name)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise DatasetError(
            f"cannot read {archive} ({type(exc).__name__}: {exc}); delete it and download it again"
        ) from exc
    missing = [path for path, member in wanted.items() if member not in loaded]
    if missing:
        raise DatasetError(f"{archive} has no file {', '.join(missing)}: it is not CIFAR-100's python release")
    return loaded


def read_cifar100(source: SourceFiles) -> CIFAR100Arrays:
    """Read the whole archive (or its extracted folder) that :meth:`CIFAR100Benchmark.locate` found.

    **Pickles run code when loaded.** The archive's md5 (or, for an extracted folder, each
    pickle's) is verified against the official release's before anything is unpickled, and the
    unpickler accepts only plain data and numpy arrays, refusing any other global a pickle names
    (:func:`~lit_meta.data.array_pickle.load_array_pickle`).

    Raises:
        ChecksumError: the archive or a pickle is not the official one (the message names it).
        DatasetError: a pickle lacks a key, or its arrays disagree in length or shape, or a class
            is not in the super-class CIFAR-100 puts it in.
    """
    members = _load_pickles(source)
    meta, meta_name = members["meta"]
    fine_names = _names(_field(meta, "fine_label_names", meta_name))
    coarse_names = _names(_field(meta, "coarse_label_names", meta_name))
    images, fine, coarse = [], [], []
    for batch in CIFAR100_BATCHES:
        content, name = members[batch]
        data = np.asarray(_field(content, "data", name))
        fine_labels = np.asarray(_field(content, "fine_labels", name), dtype=np.int64)
        coarse_labels = np.asarray(_field(content, "coarse_labels", name), dtype=np.int64)
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * _SIDE * _SIDE:
            raise DatasetError(f"{name}: 'data' is {data.dtype} {list(data.shape)}, expected uint8 [N, 3072]")
        if not len(data) == len(fine_labels) == len(coarse_labels):
            raise DatasetError(
                f"{name}: {len(data)} images but {len(fine_labels)} fine and {len(coarse_labels)} coarse labels"
            )
        for labels, names, key in ((fine_labels, fine_names, "fine"), (coarse_labels, coarse_names, "coarse")):
            if labels.size and (labels.min() < 0 or labels.max() >= len(names)):
                raise DatasetError(f"{name}: {key} labels outside 0..{len(names) - 1}")
        images.append(data.reshape(-1, 3, _SIDE, _SIDE))
        fine.append(fine_labels)
        coarse.append(coarse_labels)
    arrays = CIFAR100Arrays(
        np.concatenate(images), np.concatenate(fine), np.concatenate(coarse), fine_names, coarse_names
    )
    _check_superclasses(arrays, source)
    return arrays


def _check_superclasses(arrays: CIFAR100Arrays, source: SourceFiles) -> None:
    superclass = {fine: coarse for coarse, fines in CIFAR100_SUPERCLASSES.items() for fine in fines}
    pairs = np.unique(np.stack([arrays.fine_labels, arrays.coarse_labels]), axis=1)
    for fine_label, coarse_label in pairs.T:
        fine, coarse = arrays.fine_names[fine_label], arrays.coarse_names[coarse_label]
        if superclass.get(fine) != coarse:
            expected = (
                f"CIFAR-100 puts it in {superclass[fine]!r}" if fine in superclass else "CIFAR-100 has no such class"
            )
            raise DatasetError(
                f"{source.paths[0]}: images of class {fine!r} are labelled with the super-class {coarse!r}, but "
                f"{expected}; this is not CIFAR-100's python release. Delete it and download {CIFAR100_URL}"
            )


def _resize(images: np.ndarray, size: int) -> np.ndarray:
    """``uint8`` ``[N, 3, 32, 32]`` to ``[N, 3, size, size]`` with Pillow's Lanczos filter."""
    out = np.empty((len(images), 3, size, size), dtype=np.uint8)
    for i, image in enumerate(images):
        out[i] = resize_array(image.transpose(1, 2, 0), size).transpose(2, 0, 1)
    return out


class CIFAR100Benchmark(ImageBenchmark):
    """A few-shot benchmark made of CIFAR-100's classes: a published split of its 100 classes,
    all 600 images of each (the archive's ``train`` and ``test`` batches together).

    **Files.** ``root/cifar100/cifar-100-python.tar.gz``, the official python release (md5
    ``eb9058c3a382ffc7106e4002c42a8d85``), read member by member without extracting; or the
    folder it extracts to, ``root/cifar100/cifar-100-python/`` (``train``, ``test``, ``meta``:
    what torchvision's ``CIFAR100`` leaves); the archive wins when both exist. ``root`` itself
    is searched too. Every CIFAR-100 benchmark reads this one folder, so CIFAR-FS and FC100
    share one download. With ``download=True`` an absent archive is downloaded there from
    https://www.cs.toronto.edu/~kriz/ (or ``mirror``) and its md5 verified.

    **Pickles.** The archive's members are Python pickles, which run code when loaded: the
    archive's md5 (for the extracted folder, each pickle's md5) is verified against the
    official release's before anything is unpickled, and the unpickler refuses every global
    but numpy's array reconstruction (:func:`read_cifar100`). Only files in the user's root are
    read. The images are converted once into the plain-array cache (see
    :class:`~lit_meta.data.datasets.benchmark.ImageBenchmark`, ``root/cifar100/lit-meta-cache/
    <family>_<size>px``); the labels of the whole archive go to
    ``root/cifar100/lit-meta-cache/cifar100_labels`` for the class counts. Later loads read
    only these ``.npy`` arrays: nothing is unpickled again.

    **Items.** Images of 32x32 pixels (the default ``image_size``; another size is resized
    with Lanczos), float ``[3, S, S]`` in ``[0, 1]``. :attr:`MEAN` and :attr:`STD` are the
    per-channel statistics of CIFAR-100's training images that the CIFAR-FS and FC100 loaders
    of Lee et al. (2019, "Meta-Learning with Differentiable Convex Optimization", CVPR;
    kjunelee/MetaOptNet, ``data/CIFAR_FS.py`` and ``data/FC100.py``) normalise with.

    Args:
        root: the folder holding (or receiving) ``cifar100/``.
        image_size: side of the square images, in pixels (32, the archive's, by default).
        transform: optional callable applied to each item, a float ``[3, S, S]`` tensor.
        download: download the archive when neither it nor its extracted folder is there;
            when ``False`` their absence raises :class:`~lit_meta.errors.DatasetError`.
        mirror: base URL to download from instead of the official host, e.g.
            ``"https://example.org/cifar"``, or a ``file://`` URL of a local folder holding
            the archive (``"file:///shared/mirrors/cifar"``, copied); the archive's file name
            is appended. Its md5 is verified all the same.
        cache_dir: folder of the decoded caches (default ``root/cifar100/lit-meta-cache``).
        cache: read and write the caches.
        allow_partial: split an archive that lacks some of the listed classes (a miniature
            for tests) with the classes it has; see
            :class:`~lit_meta.data.datasets.benchmark.ImageBenchmark`.
    """

    IMAGES_PER_CLASS: ClassVar[int | None] = 600
    MEAN: ClassVar[tuple[float, ...]] = tuple(v / 255 for v in (129.37731888, 124.10583864, 112.47758569))
    STD: ClassVar[tuple[float, ...]] = tuple(v / 255 for v in (68.20947949, 65.43124043, 70.45866994))
    DEFAULT_IMAGE_SIZE: ClassVar[int] = _SIDE
    LABELS_CACHE_FORMAT: ClassVar[int] = 1

    def __init__(
        self,
        root: str | Path = "data",
        image_size: int | None = None,
        transform: Transform | None = None,
        download: bool = True,
        mirror: str | None = None,
        cache_dir: str | Path | None = None,
        cache: bool = True,
        allow_partial: bool = False,
    ) -> None:
        super().__init__(root, image_size, transform, cache_dir, cache, allow_partial)
        # Stored under another name: download() is the base's hook that fetches the files.
        self.download_missing = download
        self.mirror = mirror
        self._last_read: tuple[dict[str, Any], CIFAR100Arrays] | None = None

    @property
    def folder(self) -> Path:
        """``root/cifar100``: the archive's folder, shared by every CIFAR-100 benchmark (and their caches)."""
        return self.root / CIFAR100_FOLDER

    # -- files ----------------------------------------------------------------------------------
    def locate(self) -> SourceFiles:
        """The archive, else its extracted folder, in ``root/cifar100`` or ``root``."""
        for folder in (self.folder, self.root):
            if (folder / CIFAR100_ARCHIVE).is_file():
                return SourceFiles("CIFAR-100 python archive", (folder / CIFAR100_ARCHIVE,), {"kind": "archive"})
            if all((folder / CIFAR100_EXTRACTED / member).is_file() for member in CIFAR100_MEMBER_MD5):
                return SourceFiles(
                    "extracted CIFAR-100 python folder", (folder / CIFAR100_EXTRACTED,), {"kind": "folder"}
                )
        raise DatasetError(
            f"{self.NAME} needs CIFAR-100's python release, which is not there: expected "
            f"{self.folder / CIFAR100_ARCHIVE} (md5 {CIFAR100_ARCHIVE_MD5}), or the folder it extracts to, "
            f"{self.folder / CIFAR100_EXTRACTED}/ with train, test and meta. Pass download=True (the default) to "
            f"download it, or copy it there from {CIFAR100_URL}"
        )

    def download(self) -> None:
        """Download the archive into ``root/cifar100`` unless it (or its extracted folder) is there.

        Raises:
            DatasetError: it is absent and ``download=False``, or the download failed (a
                :class:`~lit_meta.errors.ChecksumError` for another file, a
                :class:`~lit_meta.errors.DownloadedPageError` for a web page in its place).
        """
        try:
            self.locate()
            return
        except DatasetError:
            if not self.download_missing:
                raise
        url = CIFAR100_URL if self.mirror is None else f"{self.mirror.rstrip('/')}/{CIFAR100_ARCHIVE}"
        download_url(url, self.folder / CIFAR100_ARCHIVE, f"md5:{CIFAR100_ARCHIVE_MD5}")

    # -- reading --------------------------------------------------------------------------------
    def _labels_folder(self) -> Path:
        base = self.cache_dir if self.cache_dir is not None else self.folder / CACHE_FOLDER
        return base / "cifar100_labels"

    def inventory(self, source: SourceFiles) -> dict[str, int]:
        """Images per class, from the labels cache; the first call reads the archive to build it.

        What that first call read is kept for the :meth:`decode` that follows it on a first
        load, so that a first load reads (and verifies) the archive once, not twice.
        """
        key = {"format": self.LABELS_CACHE_FORMAT, "source": source.key()}
        self._last_read = None
        cached = read_array_cache(self._labels_folder(), key) if self.cache else None
        if cached is not None:
            labels, names = cached.arrays["fine_labels"], list(cached.meta["fine_names"])
        else:
            arrays = read_cifar100(source)
            self._last_read = (source.key(), arrays)
            labels, names = arrays.fine_labels, arrays.fine_names
            if self.cache:
                write_array_cache(self._labels_folder(), key, {"fine_labels": labels}, {"fine_names": names})
        counts = np.bincount(labels, minlength=len(names))
        return {name: int(count) for name, count in zip(names, counts, strict=True) if count}

    def decode(self, source: SourceFiles, classes: Sequence[str]) -> DecodedImages:
        """The images of ``classes``, in the archive's order (``train`` batch, then ``test``)."""
        last_read, self._last_read = self._last_read, None
        arrays = last_read[1] if last_read is not None and last_read[0] == source.key() else read_cifar100(source)
        position = {name: i for i, name in enumerate(arrays.fine_names)}
        lookup = np.full(len(arrays.fine_names), -1, dtype=np.int64)
        lookup[[position[name] for name in classes]] = np.arange(len(classes))
        labels = lookup[arrays.fine_labels]
        keep = labels >= 0
        images = arrays.images[keep]
        if self.image_size != _SIDE:
            images = _resize(images, self.image_size)
        return DecodedImages(np.ascontiguousarray(images), labels[keep], list(classes))

    def superclass(self, class_name: str) -> str:
        """The CIFAR-100 super-class of a class (:data:`CIFAR100_SUPERCLASSES`)."""
        for coarse, fines in CIFAR100_SUPERCLASSES.items():
            if class_name in fines:
                return coarse
        raise DatasetError(f"{class_name!r} is not a CIFAR-100 class")
