"""Episode throughput through a real DataLoader: Omniglot, and 84x84x3 images from the array cache.

``omniglot`` (the default) prints the time of the first (cold) Omniglot load, which
decodes all 32,460 PNGs into an empty cache folder, and of the cached load, then episodes
per second of 5-way 1-shot 15-query meta-train episodes (4 rotations, 4112 classes)
through ``DataLoader(EpisodeDataset(split), sampler=EpisodeSampler(...),
batch_size=meta_batch_size, collate_fn=collate_episodes, num_workers=0)`` for each
meta-batch size. ``--profile`` adds a cProfile of the largest meta-batch size, and a
split of the time between the sampler's plans, loading the items and collating.
The real data comes from ``--data``, ``LIT_META_OMNIGLOT`` or ``../shared/data/omniglot``::

    python benchmarks/episodes.py --episodes 10000 --profile

``images84`` (issue 18) measures what the image benchmarks' cache serves: learn2learn's
three miniImageNet pickles at full size (100 classes of 600 84x84x3 images, random pixels)
are written to ``--cache`` (default: a temporary folder), then
:class:`lit_meta.data.datasets.MiniImageNet` loads them twice: first unpickling them into
its plain-array cache, then memory-mapping that cache (its size on disk is printed). Then
float32 5-way 1-shot 15-query meta-train episodes through the same DataLoader, and a
Conv4 Prototypical Networks training step (``meta_loss`` + backward + Adam, 64 filters,
84x84x3 inputs, one episode per step) on those episodes; the loading time of an episode
is reported as a share of the step::

    python benchmarks/episodes.py images84 --episodes 3000 --meta-batch-sizes 1 --steps 10
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pickle
import platform
import pstats
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from lit_meta.data.datasets import ClassIndexedDataset, MiniImageNet, Omniglot
from lit_meta.data.episode import EpisodeDataset, collate_episodes
from lit_meta.data.sampler import EpisodeSampler, EpisodeShape
from results_log import record_result

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


def write_random_miniimagenet(folder: Path) -> None:
    """learn2learn's three miniImageNet pickles, at full size (Ravi's 100 classes x 600), of random pixels."""
    from lit_meta.data.datasets.miniimagenet import PICKLE_FILES, ravi_split

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for split, rows in ravi_split().items():
        classes = list(dict.fromkeys(label for _, label in rows))
        images = rng.integers(0, 256, (600 * len(classes), 84, 84, 3), dtype=np.uint8)
        class_dict = {wnid: list(range(600 * i, 600 * (i + 1))) for i, wnid in enumerate(classes)}
        with open(folder / PICKLE_FILES[split][0], "wb") as file:
            pickle.dump({"image_data": images, "class_dict": class_dict}, file, protocol=4)


def miniimagenet_loads(root: Path) -> tuple[float, float, MiniImageNet]:
    """Seconds of the first load (unpickle, write the array cache) and of the cached load (memory-map).

    The cache of an earlier run is deleted first, so the first load is cold.
    """
    shutil.rmtree(MiniImageNet(root).cache_folder.parent, ignore_errors=True)
    times = []
    for _ in range(2):
        start = time.perf_counter()
        family = MiniImageNet(root)
        assert len(family.images) == 60_000
        times.append(time.perf_counter() - start)
    return times[0], times[1], family


def protonet_step_seconds(split: ClassIndexedDataset, shape: EpisodeShape, steps: int, warmup: int) -> list[float]:
    """Seconds of Conv4 ProtoNet training steps on episodes of ``split`` (loaded before timing)."""
    from lit_meta.backbones import Conv4
    from lit_meta.learners import ProtoNet

    torch.manual_seed(0)
    model = ProtoNet(Conv4(in_channels=3, out_features=None, image_size=84)).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches = list(loader(split, shape, steps + warmup, 1))
    times = []
    for batch in batches:
        start = time.perf_counter()
        loss = model.meta_loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return times[warmup:]


def images84(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = args.cache or Path(tmp)
        if not (root / "miniimagenet").is_dir():
            write_random_miniimagenet(root / "miniimagenet")
        cold, cached, family = miniimagenet_loads(root)
        print(f"miniImageNet first load (unpickle learn2learn's pickles, write the array cache): {cold:.1f} s")
        print(f"miniImageNet cached load (memory-map): {cached * 1e3:.0f} ms")
        print(f"cache: {family.cache_folder}, {family.cache_bytes() / 2**30:.2f} GiB on disk")
        split = family.split("train")
        shape = EpisodeShape(ways=5, shots=1, queries=15)
        print(f"train split: {split.num_classes} classes, {len(split)} items of 3x84x84; 5-way 1-shot 15-query")
        episodes_per_second(split, shape, min(args.episodes, 1000), 1)  # pages the cache in
        rates = {}
        for meta_batch_size in args.meta_batch_sizes:
            rates[meta_batch_size] = episodes_per_second(split, shape, args.episodes, meta_batch_size)
            rate = rates[meta_batch_size]
            print(f"meta_batch_size {meta_batch_size:>3}: {rate:,.0f} float32 episodes/s over {args.episodes:,}")
        times = protonet_step_seconds(split, shape, args.steps, warmup=3)
        step = statistics.median(times)
        load = 1 / rates[1] if 1 in rates else 1 / episodes_per_second(split, shape, args.episodes, 1)
        print(
            f"Conv4 ProtoNet training step (median of {len(times)}): {step * 1e3:.1f} ms; loading one episode "
            f"{load * 1e3:.2f} ms = {100 * load / step:.2f}% of a step"
        )
        rows = [["first load: unpickle the pickles, write the cache", f"{cold:.1f} s"],
                ["cached load (memory-mapped .npy)", f"{cached * 1e3:.0f} ms"],
                ["cache on disk", f"{family.cache_bytes() / 2**30:.2f} GiB"],
                *[[f"episodes/s, meta-batch {size}", f"{rate:,.0f}"] for size, rate in rates.items()],
                [f"Conv4 ProtoNet step on the CPU, median of {len(times)}", f"{step * 1e3:,.0f} ms"],
                ["loading one episode, share of that step", f"{100 * load / step:.2f}%"]]  # fmt: skip
        record_table("84x84x3 episodes from the benchmarks' cache, 5-way 1-shot 15-query", rows, args)
        if args.profile:
            stages = stage_times(split, shape, args.episodes, 1)
            print("µs per episode: " + ", ".join(f"{name} {value:.0f}" for name, value in stages.items()))


def omniglot(args: argparse.Namespace) -> None:
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
        rows = [[f"first Omniglot load (decode {len(omniglot.characters)} PNGs, write cache)", f"{cold:.2f} s"],
                ["cached Omniglot load", f"{cached:.3f} s"]]  # fmt: skip
        for meta_batch_size in args.meta_batch_sizes:
            rate = episodes_per_second(split, shape, args.episodes, meta_batch_size)
            print(f"meta_batch_size {meta_batch_size:>3}: {rate:,.0f} episodes/s over {args.episodes:,} episodes")
            rows.append([f"episodes/s, meta-batch {meta_batch_size}", f"{rate:,.0f}"])
        record_table("Omniglot episodes through DataLoader(num_workers=0), 5-way 1-shot 15-query", rows, args)
        if args.profile:
            meta_batch_size = max(args.meta_batch_sizes)
            stages = stage_times(split, shape, args.episodes, meta_batch_size)
            print("µs per episode: " + ", ".join(f"{name} {value:.0f}" for name, value in stages.items()))
            profile = cProfile.Profile()
            profile.runcall(episodes_per_second, split, shape, args.episodes, meta_batch_size)
            pstats.Stats(profile).sort_stats("tottime").print_stats(15)


def record_table(title: str, rows: list[list[str]], args: argparse.Namespace) -> None:
    """One ``table`` line for ``report.py``, with the load average the figures were taken under."""
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    figures = {"section": "Episode pipeline (issues 2, 18)", "title": title, "columns": ["", "figure"], "rows": rows,
               "note": f"load average at the start: {load}"}  # fmt: skip
    record_result("episodes", "table", figures, budget={"episodes": args.episodes})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("setting", nargs="?", choices=("omniglot", "images84"), default="omniglot")
    default_data = os.environ.get("LIT_META_OMNIGLOT", str(REPO_ROOT.parent / "shared" / "data" / "omniglot"))
    parser.add_argument("--data", type=Path, default=Path(default_data), help="folder of the two Omniglot zips")
    parser.add_argument(
        "--cache", type=Path, default=None, help="cache folder (omniglot: must be empty for a cold load)"
    )
    parser.add_argument("--episodes", type=int, default=10_000, help="episodes per throughput measurement")
    parser.add_argument("--meta-batch-sizes", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--steps", type=int, default=20, help="images84: timed ProtoNet steps")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--profile", action="store_true", help="cProfile the largest meta-batch size")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    print("$", shlex.join([Path(sys.executable).name, *sys.argv]))
    print("machine:", machine(), "| load average:", ", ".join(f"{v:.1f}" for v in os.getloadavg()))
    if args.setting == "images84":
        images84(args)
    else:
        omniglot(args)


if __name__ == "__main__":
    main()
