"""Time MAML's meta-gradient on the loop path alone, in this process: an A/B of two versions of the code.

One ``MAML(execution="loop")`` meta-gradient (``meta_loss`` and its backward) of 32
Conv4 tasks shaped like Omniglot 5-way 1-shot 15-query (random images), with glibc
malloc retaining freed memory as ``lit-meta fit`` does, 2 threads; prints the fastest and
the median of the timed steps after a warm-up one. No Trainer, no path planning, no
peer: only the code of the inner loop and the per-task meta-gradient. To compare two
versions, alternate fresh processes with ``PYTHONPATH`` on each tree's ``src``:

    for r in 1 2 3 4; do for tree in /tmp/before/src src; do
        PYTHONPATH=$tree python benchmarks/maml_loop_step.py --order 2; done; done
"""

from __future__ import annotations

import argparse
import platform
import sys
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--order", type=int, choices=(1, 2), default=2, help="first or second order")
    parser.add_argument("--steps", type=int, default=4, help="timed steps after one warm-up step")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    import lit_meta
    from lit_meta import glibc_malloc
    from lit_meta.backbones import Conv4
    from lit_meta.learners import MAML
    from synthetic_episodes import omniglot_like_batch

    glibc_malloc.retain_freed_memory()
    tasks = 32
    batch = omniglot_like_batch(tasks)
    learner = MAML(Conv4(1, out_features=5), inner_lr=0.4, first_order=args.order == 1, execution="loop")
    times = []
    for _ in range(1 + args.steps):
        start = time.perf_counter()
        learner.meta_loss(batch).backward()
        times.append(time.perf_counter() - start)
        learner.zero_grad()
    timed = sorted(times[1:])
    print(f"command: {' '.join(sys.argv)}")
    machine = f"{platform.platform()}, torch {torch.__version__}, {args.threads} threads"
    print(f"machine: {machine}; lit_meta from {lit_meta.__file__}")
    print(f"order {args.order}: fastest {timed[0]:.3f} s, median {timed[len(timed) // 2]:.3f} s per meta-gradient")


if __name__ == "__main__":
    main()
