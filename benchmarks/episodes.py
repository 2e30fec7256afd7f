"""Omniglot load times and episode throughput through a real DataLoader.

Prints the command line and machine, the time of the first (cold) Omniglot load,
which decodes all 32,460 PNGs into an empty cache folder, and of the cached load,
then episodes per second of 5-way 1-shot 15-query meta-train episodes (4 rotations,
4112 classes) through ``DataLoader(EpisodeDataset(split), sampler=EpisodeSampler(...),
batch_size=meta_batch_size, collate_fn=collate_episodes, num_workers=0)`` for each
meta-batch size. ``--profile`` adds a cProfile of the largest meta-batch size, and a
split of the time between the sampler's plans, loading the items and collating.

The real data comes from ``--data``, ``LIT_META_OMNIGLOT`` or ``../shared/data/omniglot``::

    python benchmarks/episodes.py --episodes 10000 --profile
"""

from __future__ import annotations

import argparse
import cProfile
import os
import platform
import pstats
import shlex
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from lit_meta.data.datasets import ClassIndexedDataset, Omniglot
from lit_meta.data.episode import EpisodeDataset, collate_episodes
from lit_meta.data.sampler import EpisodeSampler, EpisodeShape

REPO_ROOT = Path(__file__).resolve().parents[1]


def machine() -> str:
    return (
        f"{platform.platform()}, python {platform.python_version()}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__} with {torch.get_num_threads()} threads"
    )


def load_times(data: Path, cache_dir: Path) -> tuple[float, float, Omniglot]:
    """Seconds of the cold load (decode, write the cache) and of the cached load."""
    times = []
    for _ in range(2):
        start = time.perf_counter()
        omniglot = Omniglot(data, download=False, cache_dir=cache_dir)
        assert omniglot.characters.num_classes == 1623
        times.append(time.perf_counter() - start)
    return times[0], times[1], omniglot


def loader(split: ClassIndexedDataset, shape: EpisodeShape, episodes: int, meta_batch_size: int) -> DataLoader:
    return DataLoader(
        EpisodeDataset(split),  # type: ignore[arg-type]
        sampler=EpisodeSampler(split, shape, episodes),
        batch_size=meta_batch_size,
        collate_fn=collate_episodes,
        num_workers=0,
    )


def episodes_per_second(split: ClassIndexedDataset, shape: EpisodeShape, episodes: int, meta_batch_size: int) -> float:
    batches = loader(split, shape, episodes, meta_batch_size)
    next(iter(loader(split, shape, meta_batch_size, meta_batch_size)))  # warm-up
    start = time.perf_counter()
    count = sum(len(batch) for batch in batches)
    return count / (time.perf_counter() - start)


def stage_times(
    split: ClassIndexedDataset, shape: EpisodeShape, episodes: int, meta_batch_size: int
) -> dict[str, float]:
    """Microseconds per episode spent drawing plans, loading episodes and collating them."""
    sampler = EpisodeSampler(split, shape, episodes)
    dataset = EpisodeDataset(split)
    start = time.perf_counter()
    plans = list(sampler)
    planned = time.perf_counter()
    loaded = [dataset[plan] for plan in plans]
    done_loading = time.perf_counter()
    for i in range(0, len(loaded), meta_batch_size):
        collate_episodes(loaded[i : i + meta_batch_size])
    collated = time.perf_counter()
    return {
        "plan": (planned - start) / episodes * 1e6,
        "load": (done_loading - planned) / episodes * 1e6,
        "collate": (collated - done_loading) / episodes * 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    default_data = os.environ.get("LIT_META_OMNIGLOT", str(REPO_ROOT.parent / "shared" / "data" / "omniglot"))
    parser.add_argument("--data", type=Path, default=Path(default_data), help="folder of the two Omniglot zips")
    parser.add_argument("--cache", type=Path, default=None, help="cache folder (must be empty for a cold load)")
    parser.add_argument("--episodes", type=int, default=10_000, help="episodes per throughput measurement")
    parser.add_argument("--meta-batch-sizes", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--profile", action="store_true", help="cProfile the largest meta-batch size")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    print("$", shlex.join([Path(sys.executable).name, *sys.argv]))
    print("machine:", machine(), "| load average:", ", ".join(f"{v:.1f}" for v in os.getloadavg()))
    with tempfile.TemporaryDirectory() as tmp:
        cache_dir = args.cache or Path(tmp)
        if any(cache_dir.glob("omniglot_*px.npz")):
            print(f"warning: {cache_dir} already holds a cache, so the first load is not cold")
        cold, cached, omniglot = load_times(args.data, cache_dir)
        print(f"omniglot first load (decode {len(omniglot.characters)} PNGs, write cache): {cold:.2f} s")
        print(f"omniglot cached load: {cached:.3f} s")

        split = omniglot.split("train")
        shape = EpisodeShape(ways=5, shots=1, queries=15)
        print(f"train split: {split.num_classes} classes, {len(split)} items; episodes 5-way 1-shot 15-query")
        for meta_batch_size in args.meta_batch_sizes:
            rate = episodes_per_second(split, shape, args.episodes, meta_batch_size)
            print(f"meta_batch_size {meta_batch_size:>3}: {rate:,.0f} episodes/s over {args.episodes:,} episodes")
        if args.profile:
            meta_batch_size = max(args.meta_batch_sizes)
            stages = stage_times(split, shape, args.episodes, meta_batch_size)
            print("µs per episode: " + ", ".join(f"{name} {value:.0f}" for name, value in stages.items()))
            profile = cProfile.Profile()
            profile.runcall(episodes_per_second, split, shape, args.episodes, meta_batch_size)
            pstats.Stats(profile).sort_stats("tottime").print_stats(15)


if __name__ == "__main__":
    main()
