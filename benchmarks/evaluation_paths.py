"""Which way of adapting many evaluation episodes is fastest here (issue 19, point 4): one task after
another or all of a batch at once, eager or compiled.

Conv4, Omniglot-shaped random episodes (5-way 1-shot, 15 queries), ``--steps`` inner SGD
steps at lr 0.4 without an outer gradient, then the query pass; ``--tasks`` episodes per
batch. The paths, each timed ``--rounds`` times after a warm-up (which compiles):

* ``loop``: ``MAML(eval_execution="loop").adapt`` per episode (eager; the reference);
* ``compiled``: ``MAML(eval_execution="compiled").adapt`` per episode (support gradients and
  query pass under ``torch.compile``);
* ``vmap``: :func:`~lit_meta.functional.batched_adapt_and_score` on the whole batch under
  ``torch.no_grad`` (per-task weights make grouped convolutions);
* ``vmap compiled``: one inner step of the whole batch, ``torch.func.vmap`` of
  ``torch.func.grad_and_value`` under ``torch.compile``, and the batch's query pass likewise.

Prints seconds per 600 episodes and the largest difference of the outputs from the loop's.

    python benchmarks/evaluation_paths.py --tasks 16 --steps 10
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from lit_meta.backbones import Conv4
from lit_meta.functional import adaptable_parameters, batched_adapt_and_score, functional_forward, task_buffers
from lit_meta.learners import MAML

INNER_LR = 0.4


def vmap_compiled(net: torch.nn.Module, steps: int) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    """All tasks of a batch at once: a compiled, vmapped inner step and query pass."""
    buffers = task_buffers(net)

    def step(params: dict[str, Tensor], x: Tensor, y: Tensor) -> dict[str, Tensor]:
        grads = torch.func.grad(lambda p: F.cross_entropy(functional_forward(net, p, buffers, x), y))(params)
        return {n: params[n] - INNER_LR * grads[n] for n in params}

    batched_step = torch.compile(torch.func.vmap(step), dynamic=False)
    batched_query = torch.compile(torch.func.vmap(lambda p, x: functional_forward(net, p, buffers, x)), dynamic=False)

    def run(support_x: Tensor, support_y: Tensor, query_x: Tensor) -> Tensor:
        tasks = len(support_x)
        params = {n: p.detach().expand(tasks, *p.shape) for n, p in adaptable_parameters(net).items()}
        with torch.no_grad():
            for _ in range(steps):
                params = batched_step(params, support_x, support_y)
            return batched_query(params, query_x)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"command: python {' '.join(sys.argv)}")
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, {args.threads} threads")
    torch.manual_seed(0)
    net = Conv4(in_channels=1, out_features=5)
    tasks = args.tasks
    support_x = torch.rand(tasks, 5, 1, 28, 28)
    support_y = torch.arange(5).expand(tasks, -1).contiguous()
    query_x = torch.rand(tasks, 75, 1, 28, 28)
    query_y = torch.arange(5).repeat_interleave(15).expand(tasks, -1).contiguous()
    learners = {mode: MAML(net, inner_lr=INNER_LR, eval_execution=mode) for mode in ("loop", "compiled")}

    def per_task(mode: str) -> Callable[[], Tensor]:
        learner = learners[mode]
        return lambda: torch.stack(
            [learner.adapt(support_x[t], support_y[t], steps=args.steps)(query_x[t]).detach() for t in range(tasks)]
        )

    def vmap() -> Tensor:
        params = {n: p.detach() for n, p in adaptable_parameters(net).items()}
        with torch.no_grad():
            return batched_adapt_and_score(
                net, params, task_buffers(net), F.cross_entropy, support_x, support_y, query_x, query_y,
                steps=args.steps, step_size=INNER_LR, first_order=True,
            ).query_output  # fmt: skip

    batched = vmap_compiled(net, args.steps)
    paths = {
        "loop": per_task("loop"),
        "compiled": per_task("compiled"),
        "vmap": vmap,
        "vmap compiled": lambda: batched(support_x, support_y, query_x),
    }
    reference = paths["loop"]()
    print(f"\n{tasks} episodes per batch, {args.steps} inner steps\n")
    print("| path | warm-up s | s per 600 episodes (each round) | max abs output difference from the loop |")
    print("| --- | --- | --- | --- |")
    for name, run in paths.items():
        start = time.perf_counter()
        outputs = run()
        warm_up = time.perf_counter() - start
        rounds = []
        for _ in range(args.rounds):
            start = time.perf_counter()
            run()
            rounds.append((time.perf_counter() - start) / tasks * 600)
        difference = (outputs - reference).abs().max().item()
        print(f"| {name} | {warm_up:.1f} | {', '.join(f'{r:.1f}' for r in rounds)} | {difference:.2g} |")


if __name__ == "__main__":
    main()
