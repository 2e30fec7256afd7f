"""A decoded dataset kept on disk as plain ``.npy`` arrays and one JSON record.

Datasets distributed as image folders, pickles or archives are decoded once into a
cache folder that later loads read with ``numpy.load(..., allow_pickle=False)``: no
code runs when a cache is read, and the arrays are memory-mapped, so a 1.3 GB
miniImageNet cache opens in milliseconds and pages in as episodes touch it.

A cache folder holds one ``<name>.npy`` per array and ``record.json``, which names the
arrays and holds the key the cache was built for (the source files' identity, the
image size, a format version) and any JSON metadata (class names, splits). The record
is deleted first and written last, so a cache whose record matches is complete: an
interrupted build is rebuilt, never half-read.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lit_meta.data.atomic_file import atomic_file

RECORD_NAME = "record.json"
STAGED_SUFFIX = ".staged.npy"
"""Ending of an array being written in place (:func:`open_staged_array`) before it joins a cache."""


@dataclass(frozen=True)
class CachedArrays:
    """What :func:`read_array_cache` returns: the arrays by name and the record's metadata."""

    arrays: dict[str, np.ndarray]
    meta: dict[str, Any]


def read_array_cache(folder: str | Path, key: Mapping[str, Any], mmap: bool = True) -> CachedArrays | None:
    """The cache in ``folder`` if it was built for ``key``, else ``None``.

    ``mmap=True`` maps the arrays copy-on-write (writable in memory, the file is never
    changed); ``False`` reads them into memory. An unreadable cache is reported with a
    warning and treated as absent.
    """
    folder = Path(folder)
    record_path = folder / RECORD_NAME
    if not record_path.is_file():
        return None
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
        if record.get("key") != json.loads(json.dumps(dict(key))):
            return None
        arrays = {
            name: np.load(folder / f"{name}.npy", mmap_mode="c" if mmap else None, allow_pickle=False)
            for name in record["arrays"]
        }
    except (OSError, ValueError, KeyError, TypeError) as exc:
        warnings.warn(f"ignoring unreadable dataset cache {folder} ({exc}); it will be rebuilt", stacklevel=2)
        return None
    return CachedArrays(arrays, dict(record.get("meta", {})))


def write_array_cache(
    folder: str | Path, key: Mapping[str, Any], arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]
) -> bool:
    """Write ``arrays`` and ``meta`` to ``folder`` as the cache for ``key``; ``True`` on success.

    Each file is written under a temporary name and renamed into place; an array from
    :func:`open_staged_array` for this folder and name is flushed and renamed, not copied.
    A folder that cannot be written costs a warning (the data is decoded again next time),
    not an error.
    """
    folder = Path(folder)
    for name in arrays:
        if not name.isidentifier():
            raise ValueError(f"array names must be identifiers, got {name!r}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / RECORD_NAME).unlink(missing_ok=True)
        for name, array in arrays.items():
            if _is_staged(array, folder, name):
                array.flush()
                os.replace(array.filename, folder / f"{name}.npy")
                continue
            with atomic_file(folder / f"{name}.npy") as file:
                np.save(file, np.ascontiguousarray(array))
        record = {"key": dict(key), "arrays": sorted(arrays), "meta": dict(meta)}
        with atomic_file(folder / RECORD_NAME) as file:
            file.write(json.dumps(record, indent=1, sort_keys=True).encode("utf-8"))
    except OSError as exc:
        warnings.warn(
            f"cannot write the dataset cache {folder} ({exc}); the next load decodes the source again. "
            "Pass cache_dir= a writable folder to keep it",
            stacklevel=2,
        )
        return False
    return True


def open_staged_array(folder: str | Path, name: str, shape: tuple[int, ...], dtype: np.dtype | type) -> np.memmap:
    """A new ``.npy`` array in ``folder``, memory-mapped for writing, to fill in place.

    For data larger than memory (tieredImageNet's 9.5 GB of training images): a decoder
    writes into it chunk by chunk, and :func:`write_array_cache` given it under ``name``
    renames the file into the cache instead of copying it. Until then the file is
    ``<name>.<process id>.staged.npy``, so neither a cache being read nor another
    process building the same cache (DDP ranks) is overwritten; an interrupted build
    leaves it behind, to be deleted by hand.

    Raises:
        OSError: the folder cannot be written.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.{os.getpid()}{STAGED_SUFFIX}"
    return np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)


def _is_staged(array: np.ndarray, folder: Path, name: str) -> bool:
    """Whether ``array`` is this process's :func:`open_staged_array` of ``name`` in ``folder``."""
    if not isinstance(array, np.memmap) or array.filename is None:
        return False
    return Path(array.filename).resolve() == (folder / f"{name}.{os.getpid()}{STAGED_SUFFIX}").resolve()


def cache_size(folder: str | Path) -> int:
    """Bytes on disk of the cache in ``folder`` (its arrays and record)."""
    folder = Path(folder)
    return sum(path.stat().st_size for path in folder.iterdir() if path.is_file()) if folder.is_dir() else 0
