"""CPU time of a MAML++ training step in each phase of its Omniglot config, and the multi-step loss once annealed.

MAML++ (``configs/maml_plus_plus/omniglot_5w1s.yaml``) changes its training step twice: the
multi-step loss weighs every inner step's query loss for the first ``multi_step_loss_steps``
(5,000), and the meta-gradient is first order for the first ``first_order_steps`` (25,000). The
model is built from the config (as ``lit-meta`` builds it) and takes ``--steps`` timed training
steps, after one warm-up, at a global step in each phase, on a meta-batch of the config's training
shape filled with random pixels, on the loop path (``execution="loop"``, the reference; the
compiled path is timed once the annealing ends, as ``"auto"`` would):

* ``0``: multi-step loss, first order;
* ``5000``: the last step's loss only, first order; ``before`` is the same step computed as
  lit-meta did before it stopped scoring the query set after every inner step once the annealing
  ended (the multi-step loss with weights 0, ..., 0, 1: the same value and gradient);
* ``25000``: the last step's loss only, second order.

    python benchmarks/maml_plus_plus_step.py --steps 2
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

from lit_meta.learners import MAML
from model_based_step import build, training_batch
from results_log import record_result

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "maml_plus_plus" / "omniglot_5w1s.yaml"


def time_phase(model: MAML, batch, global_step: int, steps: int, multi_step: bool) -> float:
    """Median CPU seconds of a training step at ``global_step`` (``multi_step``: through the multi-step loss)."""
    MAML.global_step = property(lambda self: global_step)  # type: ignore[assignment,method-assign]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    cpu = []
    for step in range(steps + 1):
        start = time.process_time()
        loss = model._multi_step_meta_loss(batch) if multi_step else model.meta_loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step:  # the first is a warm-up
            cpu.append(time.process_time() - start)
    return statistics.median(cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2, help="timed steps per phase (median), after one warm-up")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print("command:", shlex.join([sys.executable, *sys.argv]))
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {args.threads} thread(s)")
    config = yaml.safe_load(CONFIG.read_text())
    torch.manual_seed(0)
    batch = training_batch(config["data"], torch.Generator().manual_seed(0))
    rows = []
    for label, global_step, execution, multi_step in [
        ("multi-step loss, first order", 0, "loop", True),
        ("annealed, first order, as before (every step scored)", 5000, "loop", True),
        ("annealed, first order", 5000, "loop", False),
        ("annealed, first order, compiled", 5000, "compiled", False),
        ("annealed, second order", 25000, "loop", False),
    ]:
        config["model"]["init_args"]["execution"] = execution
        model = build(config)
        model.train()
        rows.append((label, global_step, execution, time_phase(model, batch, global_step, args.steps, multi_step)))
    before = rows[1][3]
    print("| phase | global step | path | CPU s per step | before / this |")
    print("| --- | --- | --- | --- | --- |")
    for label, global_step, execution, seconds in rows:
        print(f"| {label} | {global_step:,} | {execution} | {seconds:.2f} | {before / seconds:.2f}x |")
    for label, global_step, execution, seconds in rows:
        figures = {
            "what": f"MAML++ training step: {label}", "learner": "MAML++",
            "setting": "maml_plus_plus/omniglot_5w1s.yaml", "run": f"global step {global_step:,}, {execution} path",
            "ours_s": round(seconds, 2), "peer": None, "tasks_per_step": config["data"]["meta_batch_size"],
            "note": f"CPU s, one thread, random pixels; {before / seconds:.2f}x the annealed step as computed before",
        }  # fmt: skip
        record_result("model_based", "speed", figures, budget={"steps": args.steps})


if __name__ == "__main__":
    main()
