"""Omniglot: 1623 handwritten characters of 50 alphabets, 20 drawings each (Lake et al., 2015)."""

from __future__ import annotations

import functools
import json
import re
import warnings
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib.resources import files as package_files
from pathlib import Path
from types import MappingProxyType
from typing import ClassVar, Literal, get_args

import numpy as np
import torch

from lit_meta.data.atomic_file import atomic_file
from lit_meta.data.datasets.base import (
    ClassIndexedDataset,
    MetaDataset,
    RotatedClasses,
    SplitName,
    TensorClassDataset,
    Transform,
)
from lit_meta.data.download import download_url
from lit_meta.data.preprocessing import ImagePreprocessing, describe_transform
from lit_meta.data.transforms import decode_image, invert
from lit_meta.errors import DatasetError

OmniglotSplit = Literal["vinyals", "lake", "santoro", "seeded"]
OMNIGLOT_SPLITS: tuple[OmniglotSplit, ...] = get_args(OmniglotSplit)

VINYALS_SPLIT_FILES: tuple[SplitName, ...] = ("train", "val", "test")
"""The published lists, ``lit_meta/data/splits/omniglot_vinyals/<name>.txt``; the package
also ships ``trainval.txt`` (``train.txt`` followed by ``val.txt``) and ``SOURCE.md``."""
_LIST_LINE = re.compile(r"([^/\s]+/character\d+)/rot(\d{3})")
_LISTED_ANGLES = frozenset({0, 90, 180, 270})


@functools.cache
def vinyals_split() -> MappingProxyType[str, SplitName]:
    """The published Omniglot split of Vinyals et al. (2016) as used by Snell et al. (2017):
    ``"<Alphabet>/characterNN"`` -> ``"train"``, ``"val"`` or ``"test"`` for all 1623
    characters (1028 / 172 / 423).

    Read from the lists shipped with the package (``lit_meta/data/splits/omniglot_vinyals/``,
    MIT, Copyright (c) 2017 Jake Snell, from jakesnell/prototypical-networks; see
    ``SOURCE.md`` there). The lists name classes ``<Alphabet>/characterNN/rotDDD``; every
    character is listed with all four rotations (``rot000`` to ``rot270``) in one list,
    which is checked here, so the split is by character and every rotation class of a
    character is in the list that names the character.

    Raises:
        DatasetError: the shipped lists are missing or malformed (a damaged installation).
    """
    folder = package_files("lit_meta.data").joinpath("splits", "omniglot_vinyals")
    angles: dict[str, set[int]] = {}
    split_of: dict[str, SplitName] = {}
    for split in VINYALS_SPLIT_FILES:
        try:
            lines = folder.joinpath(f"{split}.txt").read_text(encoding="utf-8").split()
        except OSError as exc:
            raise DatasetError(
                f"the published Omniglot split list {split}.txt is missing from the lit-meta installation "
                f"({exc}); reinstall lit-meta"
            ) from exc
        for line in lines:
            match = _LIST_LINE.fullmatch(line)
            if match is None or split_of.setdefault(match[1], split) != split:
                raise DatasetError(
                    f"malformed line {line!r} in the published Omniglot split list {split}.txt of the lit-meta "
                    "installation (expected <Alphabet>/characterNN/rotDDD, each character in one list); "
                    "reinstall lit-meta"
                )
            angles.setdefault(match[1], set()).add(int(match[2]))
    incomplete = [name for name, listed in angles.items() if listed != _LISTED_ANGLES]
    if incomplete:
        raise DatasetError(
            f"the published Omniglot split lists of the lit-meta installation do not name all four rotations of "
            f"{', '.join(incomplete[:3])}; reinstall lit-meta"
        )
    return MappingProxyType(split_of)


# A drawing's path ends in <Alphabet>/characterNN/XXXX_YY.png: XXXX is the global character
# id (0001-1623), YY the drawer (01-20).
_DRAWING_PATH = re.compile(r"(?:.*/)?([^/]+)/(character\d+)/(\d+)_(\d+)\.png", re.IGNORECASE)


@dataclass(frozen=True)
class _Drawing:
    char_id: int
    drawer: int
    alphabet: str
    character: str
    name: str  # how errors refer to it: "archive.zip::member" or a path


class Omniglot(MetaDataset):
    """Omniglot (Lake, Salakhutdinov & Tenenbaum, 2015, "Human-level concept learning
    through probabilistic program induction", Science 350(6266)), split by character.

    **Files.** The original release, ``images_background.zip`` (964 characters of 30
    alphabets) and ``images_evaluation.zip`` (659 characters of 20 alphabets), is read
    from ``root/omniglot/``. Each set may be there as its zip, read member by member
    without extracting, or as the folder the zip extracts to
    (``root/omniglot/images_background/<Alphabet>/characterNN/XXXX_YY.png``); the zip
    wins when both exist. ``root`` itself is also searched, so ``root`` may point at the
    folder holding the files. :meth:`prepare` downloads absent zips into
    ``root/omniglot/``.

    **Items.** Every drawing is decoded from its 105x105 1-bit PNG, resized to
    ``image_size`` (Lanczos) and stored *inverted* relative to the files: ink is bright
    (1.0) on a zero background, so zero padding in a convolution matches the
    background. Items are float ``[1, image_size, image_size]`` in ``[0, 1]``. Class
    ``c`` is character ``XXXX = c + 1`` (``class_ids`` are the global character ids
    minus one); class names are ``"<Alphabet>/characterNN"``.

    **Cache.** The decoded array is written to ``cache_dir`` (default: the folder the
    files were found in) as ``omniglot_<size>px.npz``, keyed by image size, the
    sources' sizes and modification times and a format version; a cache that does not
    match is rebuilt. A cache folder that cannot be written only costs a warning.

    **Splits**, all by character and disjoint:

    * ``"vinyals"`` (default): the published split of Vinyals et al. (2016), "Matching
      Networks for One Shot Learning" (NeurIPS), 1200 characters for meta-training and
      423 for meta-testing, with the 172 validation characters of Snell, Swersky & Zemel
      (2017), "Prototypical Networks for Few-shot Learning" (NeurIPS): 1028 / 172 / 423,
      the character lists of Snell et al.'s code, shipped with lit-meta (see
      :func:`vinyals_split`). Characters are matched by their folder names
      (``<Alphabet>/characterNN``); a release that lacks characters the lists name is
      refused unless ``allow_partial=True``.
    * ``"seeded"``: the 1028 / 172 / 423 sizes drawn by a fixed permutation,
      ``numpy.random.default_rng(SEEDED_SPLIT_SEED).permutation(1623)`` of the class
      numbers with ``SEEDED_SPLIT_SEED = 0``: the first 423 are meta-test, the next 172
      meta-val, the rest meta-train; for a partial release the sizes scale with the number
      of characters. This was lit-meta's ``"vinyals"`` split before the published lists
      were shipped: not the papers' test characters.
    * ``"lake"``: the background set is meta-train and the evaluation set meta-test
      (Lake et al., 2015), minus five background alphabets held out for validation
      (``LAKE_VALIDATION_ALPHABETS``, 81 characters): 883 / 81 / 659.
    * ``"santoro"``: 1200 characters for meta-training and the remaining 423 for
      meta-testing, with no validation characters, as in Santoro et al. (2016),
      "Meta-Learning with Memory-Augmented Neural Networks" (ICML), Section 4.1:
      1200 / 0 / 423. The 423 are the published ``"vinyals"`` meta-test characters and
      the 1200 its meta-train and meta-val ones together (``trainval.txt``; the paper's
      own lists are not published, and Vinyals et al.'s 1200 / 423 split follows it). The
      same release checks as ``"vinyals"`` apply. The paper downscaled the images to 20x20 pixels: pass
      ``image_size=20`` to match it (the default stays 28). As the paper holds out
      nothing for validation, :meth:`has_split` is ``False`` for ``"val"`` and
      :meth:`split` refuses it; :class:`~lit_meta.data.datamodule.EpisodicDataModule`
      then skips validation.

    ``rotations`` (default 0, 90, 180 and 270 degrees) turn every character's rotations
    into new classes (Santoro et al., 2016, "Meta-Learning with Memory-Augmented Neural
    Networks", ICML; Vinyals et al., 2016; Finn et al., 2017, "Model-Agnostic
    Meta-Learning", ICML), turned counter-clockwise as in Snell et al.'s code. They are
    applied after splitting, so all rotations of a character share its split, as in the
    published lists (which name ``rot000`` to ``rot270`` of each character in one list;
    ``rotations=(0,)`` keeps the ``rot000`` classes): by default the splits hold 4112 /
    688 / 1692 classes (``"vinyals"``, the published lists' lines, and ``"seeded"``),
    3532 / 324 / 2636 (``"lake"``) or 4800 / 0 / 1692 (``"santoro"``).
    ``(0,)`` disables them; class ids are then the character ids minus one, otherwise
    ``4 * (character id - 1) + angle // 90``.

    Args:
        root: folder holding (or receiving) the ``omniglot/`` folder.
        split: ``"vinyals"``, ``"lake"``, ``"santoro"`` or ``"seeded"``, see above.
        image_size: side of the square images, in pixels (Santoro et al., 2016, used 20;
            most later work 28).
        rotations: angles (multiples of 90 degrees) whose rotations become classes.
        transform: optional callable applied to each item, a float ``[1, S, S]``
            tensor, after rotation.
        download: fetch absent files (:meth:`prepare`); when ``False`` absent files raise
            :class:`~lit_meta.errors.DatasetError`.
        mirror: base URL to download from instead of the original release, e.g.
            ``"https://example.org/omniglot"``, or a ``file://`` URL of a local folder holding
            the zips (``"file:///shared/mirrors/omniglot"``, copied, for machines without
            internet); the zip's file name is appended.
        cache_dir: folder of the decoded cache; default: where the files are.
        cache: read and write the decoded cache.
        precompute_rotations: store every rotated copy of a split's images (memory per
            rotation: 25 MB over all splits at 28 px, 360 MB at 105 px) instead of rotating
            at each load; the items are the same, episodes load several times faster.
        allow_partial: with ``"vinyals"`` or ``"santoro"``, split a release that lacks
            some of the listed characters (a partial copy, a miniature for tests) by the
            published lists, character by character; by default such a release raises
            :class:`~lit_meta.errors.DatasetError`, as its splits are not the benchmark's.
    """

    resources: ClassVar[dict[str, tuple[str, str]]] = {
        "images_background": (
            "https://github.com/brendenlake/omniglot/raw/master/python/images_background.zip",
            "md5:68d2efa1b9178cc56df9314c21c6e718",
        ),
        "images_evaluation": (
            "https://github.com/brendenlake/omniglot/raw/master/python/images_evaluation.zip",
            "md5:6b91aef0f799c5bb55b94e3f2daec811",
        ),
    }
    """Set name -> (URL, checksum) of the original release. Checksums are checked only on
    download: files already present are trusted, because faithful re-encodings of the
    release (same pixels, different PNG and zip bytes) cannot match the original md5s."""

    LAKE_VALIDATION_ALPHABETS: ClassVar[tuple[str, ...]] = (
        "Alphabet_of_the_Magi",
        "Blackfoot_(Canadian_Aboriginal_Syllabics)",
        "Inuktitut_(Canadian_Aboriginal_Syllabics)",
        "Ojibwe_(Canadian_Aboriginal_Syllabics)",
        "Tagalog",
    )
    SEEDED_SPLIT_SEED: ClassVar[int] = 0
    VINYALS_SIZES: ClassVar[tuple[int, int, int]] = (1028, 172, 423)
    """Characters in meta-train, meta-val and meta-test of the full release (the published
    ``"vinyals"`` lists; also the ``"seeded"`` split's sizes)."""
    CACHE_FORMAT: ClassVar[int] = 1

    def __init__(
        self,
        root: str | Path = "data",
        split: OmniglotSplit = "vinyals",
        image_size: int = 28,
        rotations: Sequence[int] = (0, 90, 180, 270),
        transform: Transform | None = None,
        download: bool = True,
        mirror: str | None = None,
        cache_dir: str | Path | None = None,
        cache: bool = True,
        precompute_rotations: bool = True,
        allow_partial: bool = False,
    ) -> None:
        if split not in OMNIGLOT_SPLITS:
            raise DatasetError(
                f"unknown Omniglot split {split!r}; use 'vinyals' (the published 1028 / 172 / 423 characters), "
                "'lake' (background / evaluation sets), 'santoro' (1200 / 0 / 423, no validation) or 'seeded' "
                "(1028 / 172 / 423 drawn by a seeded permutation)"
            )
        if image_size < 1:
            raise DatasetError(f"image_size must be positive, got {image_size}")
        self.root = Path(root)
        self.split_scheme: OmniglotSplit = split
        self.image_size = int(image_size)
        self.rotations = tuple(int(r) for r in rotations)
        self.transform = transform
        self.download = download
        self.mirror = mirror
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self.cache = cache
        self.precompute_rotations = precompute_rotations
        self.allow_partial = allow_partial
        self._characters: TensorClassDataset | None = None
        self._background: np.ndarray | None = None

    @property
    def folder(self) -> Path:
        """Where :meth:`prepare` puts downloads: ``root/omniglot``."""
        return self.root / "omniglot"

    # -- files --------------------------------------------------------------------------------
    def _find(self, name: str) -> Path | None:
        for folder in (self.folder, self.root):
            if (folder / f"{name}.zip").is_file():
                return folder / f"{name}.zip"
            if (folder / name).is_dir():
                return folder / name
        return None

    def _missing_message(self, missing: Sequence[str]) -> str:
        expected = "; ".join(f"{self.folder / name}.zip (or the folder {self.folder / name}/)" for name in missing)
        return (
            f"Omniglot files not found: expected {expected}. Pass download=True (or call prepare()) to download "
            f"them, or copy them there from {', '.join(self.resources[name][0] for name in missing)}"
        )

    def prepare(self) -> None:
        """Download the zips of the release that are absent; present files are left alone."""
        missing = [name for name in self.resources if self._find(name) is None]
        if not missing:
            return
        if not self.download:
            raise DatasetError(self._missing_message(missing))
        for name in missing:
            url, checksum = self.resources[name]
            if self.mirror is not None:
                url = f"{self.mirror.rstrip('/')}/{url.rsplit('/', 1)[1]}"
            download_url(url, self.folder / f"{name}.zip", checksum)

    def _sources(self) -> dict[str, Path]:
        found = {name: self._find(name) for name in self.resources}
        if any(path is None for path in found.values()) and self.download:
            self.prepare()
            found = {name: self._find(name) for name in self.resources}
        missing = [name for name, path in found.items() if path is None]
        if missing:
            raise DatasetError(self._missing_message(missing))
        return {name: path for name, path in found.items() if path is not None}

    # -- decoding -----------------------------------------------------------------------------
    @staticmethod
    def _folder_pngs(folder: Path) -> list[Path]:
        return sorted(path for path in folder.glob("*/character*/*") if path.suffix.lower() == ".png")

    @staticmethod
    def _parse(relative: str, name: str) -> _Drawing | None:
        if any(part.startswith(".") or part == "__MACOSX" for part in relative.split("/")):
            return None
        match = _DRAWING_PATH.fullmatch(relative)
        if match is None:
            return None
        alphabet, character, char_id, drawer = match.groups()
        return _Drawing(int(char_id), int(drawer), alphabet, character, name)

    def _read_set(self, path: Path) -> Iterator[tuple[_Drawing, bytes]]:
        """Every drawing of one set with its PNG bytes."""
        if path.is_dir():
            for file in self._folder_pngs(path):
                drawing = self._parse(file.relative_to(path).as_posix(), str(file))
                if drawing is not None:
                    yield drawing, file.read_bytes()
            return
        try:
            archive = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as exc:
            raise DatasetError(
                f"{path} is not a readable zip archive ({exc}); delete it and call prepare() to download it again"
            ) from exc
        with archive:
            for info in archive.infolist():
                drawing = self._parse(info.filename, f"{path}::{info.filename}")
                if drawing is None or info.is_dir():
                    continue
                try:
                    data = archive.read(info)
                except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
                    raise DatasetError(
                        f"cannot read {drawing.name} ({exc}); the archive is corrupt: delete {path} "
                        "and call prepare() to download it again"
                    ) from exc
                yield drawing, data

    def _decode(self, sources: dict[str, Path]) -> dict[str, np.ndarray]:
        """Decode the whole release into the arrays the cache stores."""
        drawings: list[_Drawing] = []
        images: list[torch.Tensor] = []
        set_of: dict[int, int] = {}
        for set_index, (name, path) in enumerate(sources.items()):
            count = len(drawings)
            for drawing, data in self._read_set(path):
                images.append(decode_image(data, "L", self.image_size, name=drawing.name))
                drawings.append(drawing)
                set_of[drawing.char_id] = set_index
            if len(drawings) == count:
                raise DatasetError(
                    f"no drawings found in {path}; expected {name}/<Alphabet>/characterNN/XXXX_YY.png entries "
                    "as in the original Omniglot release"
                )
        folder_of: dict[int, tuple[str, str]] = {}
        id_of: dict[tuple[str, str], int] = {}
        for drawing in drawings:
            folder = (drawing.alphabet, drawing.character)
            if folder_of.setdefault(drawing.char_id, folder) != folder or id_of.setdefault(folder, drawing.char_id) != (
                drawing.char_id
            ):
                raise DatasetError(
                    f"{drawing.name}: character id {drawing.char_id:04d} in {'/'.join(folder)} clashes with "
                    f"another character folder; each characterNN folder must hold one id"
                )
        char_ids = np.array(sorted(folder_of), dtype=np.int64)
        order = sorted(range(len(drawings)), key=lambda i: (drawings[i].char_id, drawings[i].drawer))
        return {
            "images": invert(torch.stack([images[i] for i in order])).numpy(),
            "labels": np.searchsorted(char_ids, [drawings[i].char_id for i in order]).astype(np.int64),
            "class_ids": char_ids - 1,
            "class_names": np.array(["/".join(folder_of[c]) for c in char_ids]),
            "class_sets": np.array([set_of[c] for c in char_ids], dtype=np.int64),
        }

    # -- cache --------------------------------------------------------------------------------
    def _cache_key(self, sources: dict[str, Path]) -> str:
        stats = {}
        for name, path in sources.items():
            files = self._folder_pngs(path) if path.is_dir() else [path]
            file_stats = [file.stat() for file in files]
            stats[name] = [
                "folder" if path.is_dir() else "zip",
                len(files),
                sum(s.st_size for s in file_stats),
                max((s.st_mtime_ns for s in file_stats), default=0),
            ]
        return json.dumps(
            {"format": self.CACHE_FORMAT, "image_size": self.image_size, "sources": stats}, sort_keys=True
        )

    def _read_cache(self, path: Path, key: str) -> dict[str, np.ndarray] | None:
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as stored:
                if str(stored["key"]) != key:
                    return None
                return {name: stored[name] for name in stored.files if name != "key"}
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            warnings.warn(f"ignoring unreadable Omniglot cache {path} ({exc}); it will be rebuilt", stacklevel=3)
            return None

    def _write_cache(self, path: Path, key: str, arrays: dict[str, np.ndarray]) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_file(path) as file:
                np.savez(file, key=np.array(key), **arrays)
        except OSError as exc:
            warnings.warn(
                f"cannot write the Omniglot cache {path} ({exc}); the next load decodes the images again. "
                "Pass cache_dir= a writable folder to keep it",
                stacklevel=3,
            )

    # -- datasets -----------------------------------------------------------------------------
    @property
    def characters(self) -> TensorClassDataset:
        """All characters of the release as one dataset (no split, no rotation, no transform)."""
        if self._characters is None:
            sources = self._sources()
            cache_path = (self.cache_dir or next(iter(sources.values())).parent) / f"omniglot_{self.image_size}px.npz"
            key = self._cache_key(sources)
            arrays = self._read_cache(cache_path, key) if self.cache else None
            if arrays is None:
                arrays = self._decode(sources)
                if self.cache:
                    self._write_cache(cache_path, key, arrays)
            self._background = arrays["class_sets"] == 0
            self._characters = TensorClassDataset(
                torch.from_numpy(arrays["images"]),
                arrays["labels"],
                [str(name) for name in arrays["class_names"]],
                class_ids=arrays["class_ids"],
            )
        return self._characters

    def split_classes(self) -> dict[SplitName, np.ndarray]:
        """Class numbers of :attr:`characters` in meta-train, meta-val and meta-test."""
        characters = self.characters
        num = characters.num_classes
        if self.split_scheme in ("vinyals", "santoro"):
            published = self._published_splits(characters.class_names)
            groups = {name: np.flatnonzero(published == name) for name in VINYALS_SPLIT_FILES}
            if self.split_scheme == "santoro":
                # Santoro et al. (2016) train on all 1200 non-test characters and validate on none.
                train = np.flatnonzero(published != "test")
                groups = {"test": groups["test"], "val": groups["val"][:0], "train": train}
        elif self.split_scheme == "seeded":
            total = sum(self.VINYALS_SIZES)
            n_val, n_test = (round(num * size / total) for size in self.VINYALS_SIZES[1:])
            order = np.random.default_rng(self.SEEDED_SPLIT_SEED).permutation(num)
            groups = {"test": order[:n_test], "val": order[n_test : n_test + n_val], "train": order[n_test + n_val :]}
        else:
            assert self._background is not None
            alphabets = np.array([name.split("/", 1)[0] for name in characters.class_names])
            held_out = np.isin(alphabets, self.LAKE_VALIDATION_ALPHABETS)
            groups = {
                "train": np.flatnonzero(self._background & ~held_out),
                "val": np.flatnonzero(self._background & held_out),
                "test": np.flatnonzero(~self._background),
            }
        return {name: np.sort(classes) for name, classes in groups.items()}  # type: ignore[misc]

    def _published_splits(self, class_names: Sequence[str]) -> np.ndarray:
        """The published split (``"train"``, ``"val"`` or ``"test"``) of each character, refusing
        characters the lists do not name and, unless ``allow_partial``, a release lacking some."""
        published = vinyals_split()
        unknown = [name for name in class_names if name not in published]
        if unknown:
            raise DatasetError(
                f"{len(unknown)} characters of the Omniglot release in {self.root} are not named in the published "
                f"split lists (e.g. {', '.join(unknown[:3])}): split={self.split_scheme!r} needs the original "
                "release's <Alphabet>/characterNN folders. Use split='seeded' or 'lake' for another set of characters"
            )
        missing = sorted(set(published) - set(class_names))
        if missing and not self.allow_partial:
            found = [str(path) for path in map(self._find, self.resources) if path is not None]
            raise DatasetError(
                f"the Omniglot release in {self.root} lacks {len(missing)} of the {len(published)} characters that "
                f"the published split={self.split_scheme!r} lists name (e.g. {', '.join(missing[:3])}), so its "
                f"splits would not be the benchmark's. Replace {' and '.join(found)} by the original zips (delete "
                "them, then call prepare() or pass download=True), or pass allow_partial=True to split the "
                "characters present by the lists"
            )
        return np.array([published[name] for name in class_names], dtype=str)

    def has_split(self, name: SplitName) -> bool:
        """Whether the split scheme holds out characters for ``name``: ``False`` only for
        ``"val"`` of ``"santoro"``, which has no validation characters. Reads no files."""
        return not (self.split_scheme == "santoro" and name == "val")

    def split(self, name: SplitName) -> ClassIndexedDataset:
        """Meta-train (``"train"``), meta-val (``"val"``) or meta-test (``"test"``) characters.

        Raises:
            DatasetError: for an unknown ``name``, a split the scheme does not have
                (``"val"`` of ``"santoro"``, see :meth:`has_split`), or a split that a
                partial release leaves without characters.
        """
        if name not in ("train", "val", "test"):
            raise DatasetError(f"unknown split {name!r}; use 'train', 'val' or 'test'")
        if not self.has_split(name):
            raise DatasetError(
                f"Omniglot split={self.split_scheme!r} has no {name} characters: Santoro et al. (2016) train on "
                f"1200 characters and test on the other 423, holding out none for validation. Use split='vinyals' "
                f"(1028 / 172 / 423 characters) for a validation split, or do not validate "
                f"(EpisodicDataModule skips validation by itself for this scheme)"
            )
        groups = self.split_classes()
        if len(groups[name]) == 0:
            raise DatasetError(
                f"the {self.split_scheme!r} {name} split of Omniglot in {self.root} holds no characters "
                f"({self.characters.num_classes} found in all); the release is incomplete"
            )
        subset = self.characters.subset(groups[name])
        subset.transform = self.transform  # RotatedClasses applies its base's transform after rotating
        if self.rotations == (0,):
            return subset
        rotated = RotatedClasses(subset, self.rotations)
        if not self.precompute_rotations:
            return rotated
        # Gathering stored copies is several times faster per episode than rotating at load time.
        return TensorClassDataset(
            rotated.load_items(np.arange(len(rotated))),
            rotated.labels,
            rotated.class_names,
            class_ids=rotated.class_ids,
            transform=self.transform,
        )

    def image_preprocessing(self) -> ImagePreprocessing:
        """Grey-scale ``image_size`` squares, inverted: new files are read like the release's
        black-on-white drawings and become bright ink on black.

        A custom ``transform`` is not stored in checkpoints (only its name, so
        ``lit-meta adapt`` can warn that it is not applied).
        """
        return ImagePreprocessing(
            "L", (self.image_size, self.image_size), invert=True, custom_transform=describe_transform(self.transform)
        )

    def __repr__(self) -> str:
        partial = ", allow_partial=True" if self.allow_partial else ""
        return (
            f"Omniglot(root={str(self.root)!r}, split={self.split_scheme!r}, image_size={self.image_size}, "
            f"rotations={self.rotations}{partial})"
        )
