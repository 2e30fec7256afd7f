"""Shared fixtures: tiny generated data only."""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch

from lit_meta.callbacks import DestroyProcessGroupAtExit
from lit_meta.data.datasets import MetaDataset, TensorClassDataset
from lit_meta.data.datasets.base import SplitName

REPO_ROOT = Path(__file__).resolve().parents[1]


def two_spawned_cpu_processes(*callbacks: L.Callback) -> dict[str, Any]:
    """Trainer arguments for DDP over two spawned CPU processes (gloo) with ``callbacks``, and with
    :class:`~lit_meta.callbacks.DestroyProcessGroupAtExit`, else their exit can abort a finished run."""
    return {
        "accelerator": "cpu",
        "devices": 2,
        "strategy": "ddp_spawn",
        "callbacks": [*callbacks, DestroyProcessGroupAtExit()],
    }


def import_benchmark(name: str) -> ModuleType:
    """The script ``benchmarks/<name>.py`` as a module (its sibling imports resolve while it loads)."""
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(REPO_ROOT / "benchmarks"))


def omniglot_dir() -> Path:
    """The real Omniglot release, from ``LIT_META_OMNIGLOT`` or ``../shared/data/omniglot``."""
    return Path(os.environ.get("LIT_META_OMNIGLOT", REPO_ROOT.parent / "shared" / "data" / "omniglot"))


class TinyImages(MetaDataset):
    """Random 1x8x8 images, ``items_per_class`` per class, classes split 6/3/3 by default."""

    def __init__(self, classes_per_split: tuple[int, int, int] = (6, 3, 3), items_per_class: int = 6, seed: int = 0):
        total = sum(classes_per_split)
        rng = np.random.default_rng(seed)
        data = torch.from_numpy(rng.integers(0, 256, size=(total * items_per_class, 1, 8, 8), dtype=np.uint8))
        labels = np.repeat(np.arange(total), items_per_class)
        self.family = TensorClassDataset(data, labels, [f"class{c}" for c in range(total)])
        bounds = np.cumsum([0, *classes_per_split])
        self.classes = {name: np.arange(bounds[i], bounds[i + 1]) for i, name in enumerate(("train", "val", "test"))}

    def split(self, name: SplitName) -> TensorClassDataset:
        return self.family.subset(self.classes[name])


@pytest.fixture(autouse=True)
def one_thread():
    """Every test runs single-threaded: its tensors are tiny, and a second intra-op thread
    only adds synchronisation, which costs milliseconds per op on a loaded 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_images() -> TinyImages:
    return TinyImages()
