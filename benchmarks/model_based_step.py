"""CPU time of one training step of each model-based config (MANN, SNAIL, MetaNet), as configured.

Each ``configs/{mann,snail,metanet}/*.yaml`` model is built from its config (as ``lit-meta``
builds it) and takes ``--steps`` training steps, after one warm-up step, on a meta-batch of
the config's training shape (ways, shots, queries, tasks per step, image size) filled with
random pixels: ``loss = model.meta_loss(batch); loss.backward(); optimizer.step()``. The
process's CPU time per step (``time.process_time``) is printed with the wall time; with one
intra-op thread (the default here) CPU time counts the work itself and is less sensitive to
what else runs on the machine than wall time, which the table also shows.

    python benchmarks/model_based_step.py --steps 3
    python benchmarks/model_based_step.py --configs configs/mann/omniglot_5w10s.yaml --threads 2
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
import yaml
from jsonargparse import ArgumentParser

from lit_meta.data.episode import EpisodeBatch
from lit_meta.learners import MetaLearner
from results_log import record_result

NAMES = {"mann": "MANN", "snail": "SNAIL", "metanet": "MetaNet"}

REPO = Path(__file__).resolve().parents[1]


def build(config: dict) -> MetaLearner:
    parser = ArgumentParser()
    parser.add_subclass_arguments(MetaLearner, "model")
    return parser.instantiate(parser.parse_object({"model": config["model"]})).model


def training_batch(data: dict, generator: torch.Generator) -> EpisodeBatch:
    ways = data.get("train_ways") or data.get("ways", 5)
    shots = data.get("train_shots") or data.get("shots", 1)
    queries = data.get("train_queries") or data.get("queries", 15)
    tasks = data.get("meta_batch_size", 32)
    size = (data.get("dataset_kwargs") or {}).get("image_size", 28)
    labels = torch.arange(ways).repeat_interleave(shots)
    support_y = torch.stack([labels[torch.randperm(len(labels), generator=generator)] for _ in range(tasks)])
    return EpisodeBatch(
        support_x=torch.rand(tasks, ways * shots, 1, size, size, generator=generator),
        support_y=support_y,
        query_x=torch.rand(tasks, ways * queries, 1, size, size, generator=generator),
        query_y=torch.arange(ways).repeat_interleave(queries).expand(tasks, -1).clone(),
        classes=torch.arange(ways).expand(tasks, -1).clone(),
    )


def time_steps(config_path: Path, steps: int) -> dict:
    config = yaml.safe_load(config_path.read_text())
    torch.manual_seed(0)
    model = build(config)
    model.train()
    batch = training_batch(config["data"], torch.Generator().manual_seed(0))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    cpu, wall = [], []
    for step in range(steps + 1):
        c0, w0 = time.process_time(), time.perf_counter()
        loss = model.meta_loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step:  # the first is a warm-up
            cpu.append(time.process_time() - c0)
            wall.append(time.perf_counter() - w0)
    data = config["data"]
    return {
        "config": config_path.relative_to(REPO / "configs").as_posix(),
        "tasks": data.get("meta_batch_size", 32),
        "parameters": sum(p.numel() for p in model.parameters()),
        "cpu_s": statistics.median(cpu),
        "wall_s": statistics.median(wall),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default = sorted(p for name in ("mann", "snail", "metanet") for p in (REPO / "configs" / name).glob("*.yaml"))
    parser.add_argument("--configs", type=Path, nargs="+", default=default)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per config (median), after one warm-up")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print("command:", shlex.join([sys.executable, *sys.argv]))
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {args.threads} thread(s)")
    print("| config | tasks per step | parameters | CPU s per step | wall s per step |")
    print("| --- | --- | --- | --- | --- |")
    for path in args.configs:
        r = time_steps(path.resolve(), args.steps)
        print(
            f"| {r['config']} | {r['tasks']} | {r['parameters']:,} | {r['cpu_s']:.2f} | {r['wall_s']:.2f} |", flush=True
        )
        figures = {
            "what": "training step as configured (CPU s)", "setting": r["config"],
            "learner": NAMES[r["config"].split("/")[0]],
            "ours_s": round(r["cpu_s"], 2), "peer": None, "wall_s": round(r["wall_s"], 2), "tasks_per_step": r["tasks"],
            "parameters": r["parameters"], "note": "random pixels",
        }  # fmt: skip
        record_result("model_based", "speed", figures, budget={"steps": args.steps})


if __name__ == "__main__":
    main()
