"""Where the time of one MAML meta-training step goes (the setup of ``maml_step.py``).

Profiles one second-order step (per-task loop, backward per task) with
``torch.profiler`` and groups self CPU time by operator family: convolutions
(forward and backward, and which layer), BatchNorm, max-pool, ReLU, the rest.
Also measures the convolution rate of each layer alone, to compare the step with
its compute floor.

    python benchmarks/maml_profile.py
"""

from __future__ import annotations

import os
import platform
import sys
import time
from collections import defaultdict

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from lit_meta.backbones import Conv4
from lit_meta.data.episode import EpisodeBatch
from lit_meta.learners import MAML

FAMILIES = {
    "convolution": ("conv", "mkldnn_convolution", "thnn_conv"),
    "batch norm": ("batch_norm", "native_batch_norm"),
    "max-pool": ("max_pool", "max_pool2d"),
    "relu": ("relu", "threshold"),
    "linear/matmul": ("addmm", "mm", "linear", "matmul", "bmm"),
    "loss": ("cross_entropy", "log_softmax", "nll_loss", "_log_softmax"),
}


def family(op: str) -> str:
    name = op.lower()
    for fam, keys in FAMILIES.items():
        if any(k in name for k in keys):
            return fam
    return "elementwise, copies, autograd bookkeeping"


def conv_rates(threads: int) -> None:
    """GFLOP/s of each Conv4 layer's forward on a query-set-sized batch (75 images)."""
    print("\nconvolution forward rate per layer (75 images, 2 threads):")
    torch.set_num_threads(threads)
    for channels_in, size in ((1, 28), (64, 14), (64, 7), (64, 3)):
        x = torch.randn(75, channels_in, size, size)
        w = torch.randn(64, channels_in, 3, 3)
        for _ in range(5):
            F.conv2d(x, w, padding=1)
        start = time.perf_counter()
        reps = 50
        for _ in range(reps):
            F.conv2d(x, w, padding=1)
        seconds = (time.perf_counter() - start) / reps
        flops = 2 * 75 * 64 * channels_in * 9 * size * size
        print(
            f"  in={channels_in:2d} {size:2d}x{size:<2d}: {flops / seconds / 1e9:6.1f} GFLOP/s ({seconds * 1e3:.2f} ms)"
        )


def main() -> None:
    threads = 2
    torch.set_num_threads(threads)
    print("command:", " ".join([os.path.basename(sys.executable), *sys.argv]))
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {threads} threads")
    torch.manual_seed(0)
    tasks, ways, queries = 32, 5, 15
    batch = EpisodeBatch(
        support_x=torch.rand(tasks, ways, 1, 28, 28), support_y=torch.arange(ways).expand(tasks, -1).contiguous(),
        query_x=torch.rand(tasks, ways * queries, 1, 28, 28),
        query_y=torch.arange(ways).repeat_interleave(queries).expand(tasks, -1).contiguous(),
        classes=torch.zeros(tasks, ways, dtype=torch.long),
    )  # fmt: skip
    learner = MAML(Conv4(1, 5), inner_lr=0.4, execution="loop")
    for _ in range(2):
        learner.meta_loss(batch).backward()
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        learner.meta_loss(batch).backward()
    wall = time.perf_counter() - start
    totals: dict[str, float] = defaultdict(float)
    ops: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        totals[family(event.key)] += event.self_cpu_time_total
        ops[event.key] += event.self_cpu_time_total
    total = sum(totals.values())
    print(f"\none second-order step, 32 tasks: {wall:.2f} s wall under the profiler")
    print("\n| operator family | share of self CPU time |\n| --- | --- |")
    for fam, t in sorted(totals.items(), key=lambda kv: -kv[1]):
        print(f"| {fam} | {100 * t / total:.1f}% |")
    print("\ntop operators (self CPU ms):")
    for op, t in sorted(ops.items(), key=lambda kv: -kv[1])[:12]:
        print(f"  {t / 1e3:8.1f}  {op}")
    conv_rates(threads)


if __name__ == "__main__":
    main()
