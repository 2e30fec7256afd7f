"""The cost of train-time augmentation per 5-way 1-shot 15-query episode of 84x84 RGB images.

Builds an in-memory class-indexed dataset of random ``uint8`` 3x84x84 images (the
miniImageNet shape; 20 classes of 30 images), then times, per episode of 80 images:
loading the episode through ``EpisodeDataset`` without and with the default
``EpisodeAugmentation`` (random resized crop, flip, colour jitter), and each op alone on
the loaded float batch. Prints the command, the machine and the figures (median of
``--repeats`` rounds of ``--episodes`` episodes each). ``--retain-freed-memory`` sets
glibc malloc as ``lit-meta`` training on a CPU does (``RetainFreedCPUMemory``), so freed
episode-sized tensors are reused instead of returned and page-faulted in again::

    python benchmarks/augmentation_cost.py --threads 1
    python benchmarks/augmentation_cost.py --threads 1 --retain-freed-memory
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from lit_meta import glibc_malloc
from lit_meta.data.augmentation import EpisodeAugmentation
from lit_meta.data.datasets import TensorClassDataset
from lit_meta.data.episode import EpisodeDataset
from lit_meta.data.sampler import EpisodeSampler, EpisodeShape

OFF = {"crop_scale": None, "horizontal_flip": 0.0, "brightness": 0.0, "contrast": 0.0, "saturation": 0.0}
ALONE = {
    "crop": {**OFF, "crop_scale": (0.08, 1.0)},
    "flip": {**OFF, "horizontal_flip": 0.5},
    "brightness": {**OFF, "brightness": 0.4},
    "contrast": {**OFF, "contrast": 0.4},
    "saturation": {**OFF, "saturation": 0.4},
}


def microseconds_per_call(call: Callable[[int], object], calls: int, repeats: int) -> float:
    """Median over ``repeats`` rounds of the mean time of ``calls`` calls ``call(i)``, in µs."""
    call(0)  # warm-up
    rounds = []
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(calls):
            call(i)
        rounds.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--episodes", type=int, default=200, help="episodes per timed round")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds; the median is printed")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--retain-freed-memory", action="store_true", help="glibc malloc as lit-meta's CPU training")
    args = parser.parse_args()
    if args.retain_freed_memory and not glibc_malloc.retain_freed_memory():
        print("warning: --retain-freed-memory had no effect (malloc is not glibc's)")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    print("$", shlex.join([Path(sys.executable).name, *sys.argv]))
    print(
        f"machine: {platform.platform()}, {os.cpu_count()} CPUs, python {platform.python_version()}, "
        f"torch {torch.__version__} with {torch.get_num_threads()} threads, load average "
        + ", ".join(f"{v:.1f}" for v in os.getloadavg())
    )

    classes, per_class = 20, 30
    rng = np.random.default_rng(0)
    data = torch.from_numpy(rng.integers(0, 256, size=(classes * per_class, 3, 84, 84), dtype=np.uint8))
    split = TensorClassDataset(data, np.repeat(np.arange(classes), per_class), [f"c{c}" for c in range(classes)])
    plans = list(EpisodeSampler(split, EpisodeShape(ways=5, shots=1, queries=15), num_episodes=args.episodes))
    print(f"episodes: 5-way 1-shot 15-query, {5 * 16} images of 3x84x84 each, float32")

    plain, augmented = EpisodeDataset(split), EpisodeDataset(split, EpisodeAugmentation())
    load = microseconds_per_call(lambda i: plain[plans[i]], len(plans), args.repeats)
    both = microseconds_per_call(lambda i: augmented[plans[i]], len(plans), args.repeats)
    print(f"load an episode: {load:,.0f} µs; with the default augmentation: {both:,.0f} µs (+{both - load:,.0f} µs)")
    episode = plain[plans[0]]
    batch = torch.cat([episode.support_x, episode.query_x])
    for name, fields in ALONE.items():
        augmentation = EpisodeAugmentation(**fields)
        alone = microseconds_per_call(
            lambda i, a=augmentation: a(batch, torch.Generator().manual_seed(i)), len(plans), args.repeats
        )
        print(f"  {name:<10} alone: {alone:,.0f} µs per episode")


if __name__ == "__main__":
    main()
