"""An episode stream written once to a folder and read alike by lit-meta and a peer library.

``benchmarks/side_by_side.py`` draws the episodes through lit-meta's data layer and writes
them here; each side's process (lit-meta's, and a peer's in its own environment) reads the
same arrays back. NumPy and the standard library only, so the peer scripts import it too.

A folder holds, per split (``train``, ``val``):

* ``<split>_images.npy``: float32 ``[M, *item_shape]``, every item the split's episodes use, once;
* ``<split>_support.npy`` / ``<split>_query.npy``: int64 ``[episodes, items]``, rows of the images;
* ``<split>_support_y.npy`` / ``<split>_query_y.npy``: int64 ``[episodes, items]``, labels ``0 .. ways-1``;
* ``<split>_classes.npy``: int64 ``[episodes, ways]``, the class ids of each episode's labels;

and ``stream.json``: ways, shots, queries, the meta-batch size and the episodes of each split.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

FIELDS = ("support", "query", "support_y", "query_y", "classes")


class EpisodeItems(NamedTuple):
    """One episode as item indices into its split, with labels and class ids."""

    support: np.ndarray
    support_y: np.ndarray
    query: np.ndarray
    query_y: np.ndarray
    classes: np.ndarray


def write_stream(
    folder: Path,
    splits: Mapping[str, Sequence[EpisodeItems]],
    load: Callable[[str, np.ndarray], np.ndarray],
    **info: int,
) -> None:
    """Writes the episodes of each split; ``load(split, indices)`` gives the items ``[len(indices), ...]``."""
    folder.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split, episodes in splits.items():
        support = np.stack([e.support for e in episodes])
        query = np.stack([e.query for e in episodes])
        used, rows = np.unique(np.concatenate([support.ravel(), query.ravel()]), return_inverse=True)
        np.save(folder / f"{split}_images.npy", np.asarray(load(split, used), dtype=np.float32))
        arrays = {
            "support": rows[: support.size].reshape(support.shape),
            "query": rows[support.size :].reshape(query.shape),
            "support_y": np.stack([e.support_y for e in episodes]),
            "query_y": np.stack([e.query_y for e in episodes]),
            "classes": np.stack([e.classes for e in episodes]),
        }
        for field, array in arrays.items():
            np.save(folder / f"{split}_{field}.npy", array.astype(np.int64))
        counts[split] = len(episodes)
    (folder / "stream.json").write_text(json.dumps({**info, "episodes": counts}, indent=1))


class EpisodeStream:
    """The episodes of a folder written by :func:`write_stream`, as NumPy arrays."""

    def __init__(self, folder: Path) -> None:
        self.info = json.loads((Path(folder) / "stream.json").read_text())
        self.arrays = {
            split: {name: np.load(Path(folder) / f"{split}_{name}.npy") for name in ("images", *FIELDS)}
            for split in self.info["episodes"]
        }

    def episodes(self, split: str, start: int, count: int) -> dict[str, np.ndarray]:
        """Episodes ``start .. start+count-1``: ``support_x [count, items, *item_shape]``, ``support_y``,
        ``query_x``, ``query_y`` and ``classes``."""
        a = self.arrays[split]
        picked = slice(start, start + count)
        return {
            "support_x": a["images"][a["support"][picked]],
            "support_y": a["support_y"][picked],
            "query_x": a["images"][a["query"][picked]],
            "query_y": a["query_y"][picked],
            "classes": a["classes"][picked],
        }

    def count(self, split: str) -> int:
        return self.info["episodes"][split]


def accuracy_with_ci(correct: np.ndarray) -> tuple[float, float]:
    """Mean per-episode accuracy (%) and the half-width of its 95% interval, 1.96 std / sqrt(n)."""
    correct = np.asarray(correct, dtype=np.float64)
    return 100 * float(correct.mean()), 100 * 1.96 * float(correct.std()) / np.sqrt(len(correct))
