"""learn2learn's side of ``benchmarks/maml_step.py``; runs in the peer environment.

One MAML meta-training step the way learn2learn's own Omniglot example
(``examples/vision/maml_omniglot.py``) runs it: for each task ``learner = maml.clone()``,
``learner.adapt(support_loss)``, ``query_loss.backward()``; then the gradients are
divided by the number of tasks and Adam steps. The network is the same Conv4 as
lit-meta's (4 x [conv3x3 64, BatchNorm, ReLU, max-pool 2], linear head), loaded with
the same initial weights. Imports torch, learn2learn and ``benchmarks/peak_rss.py``
(standard library only).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import learn2learn as l2l
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for the shared peak_rss helper
from peak_rss import (
    current_rss_mb,
    environment_footprint,
    minor_page_faults,
    peak_rss_mb,
    peak_rss_since_reset_mb,
    reset_peak_rss,
)


def conv4(ways: int) -> nn.Module:
    blocks = []
    for in_channels in (1, 64, 64, 64):
        blocks.append(
            nn.Sequential(nn.Conv2d(in_channels, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2))
        )
    return nn.Sequential(*blocks, nn.Flatten(), nn.Linear(64, ways))


def main() -> None:
    parser = argparse.ArgumentParser()
    for name, kind in (("--steps", int), ("--warmup", int), ("--threads", int), ("--inner-lr", float)):
        parser.add_argument(name, type=kind, required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--one", required=True)
    args = parser.parse_args()
    config = json.loads(args.one)
    torch.set_num_threads(args.threads)

    batch = torch.load(args.workdir / "batch.pt")
    tasks = len(batch["support_x"])
    net = conv4(ways=int(batch["support_y"].max()) + 1)
    with torch.no_grad():
        for p, w in zip(net.parameters(), torch.load(args.workdir / "weights.pt"), strict=True):
            p.copy_(w)
    maml = l2l.algorithms.MAML(net, lr=args.inner_lr, first_order=config["first_order"])
    if config.get("eval"):
        # learn2learn's example evaluates with the training fast_adapt: clone, adapt, predict.
        start = time.perf_counter()
        for i in range(600):
            t = i % tasks
            learner = maml.clone()
            for _ in range(10):
                learner.adapt(F.cross_entropy(learner(batch["support_x"][t]), batch["support_y"][t]))
            learner(batch["query_x"][t]).argmax(-1)
        print(json.dumps({"times": [time.perf_counter() - start], "peak_rss_mb": peak_rss_mb()}))
        return
    optimizer = torch.optim.Adam(maml.parameters(), lr=1e-3)
    start_rss = current_rss_mb()
    times = []
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            reset_peak_rss()
            faults = minor_page_faults()
        start = time.perf_counter()
        optimizer.zero_grad()
        for t in range(tasks):
            learner = maml.clone()
            learner.adapt(F.cross_entropy(learner(batch["support_x"][t]), batch["support_y"][t]))
            F.cross_entropy(learner(batch["query_x"][t]), batch["query_y"][t]).backward()
        for p in maml.parameters():
            p.grad.mul_(1.0 / tasks)
        if step == 0:
            torch.save([p.grad.clone() for p in net.parameters()], args.workdir / f"grads-{config['key']}.pt")
        optimizer.step()
        times.append(time.perf_counter() - start)
    result = {
        "times": times[args.warmup :],
        "peak_rss_mb": peak_rss_mb(),
        "steady_rss_mb": peak_rss_since_reset_mb(),
        "start_rss_mb": start_rss,
        "faults_per_step": (minor_page_faults() - faults) / args.steps,
        **environment_footprint(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
