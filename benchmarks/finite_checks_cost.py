"""The cost of the non-finite guard (``check_finite``) next to the MAML step it guards.

Times, in this process and alternating, the two checks a training step runs when
``check_finite=True`` (:mod:`lit_meta.learners.finite_checks`: ``isfinite`` of the meta-loss,
and of the fused norms of every meta-gradient) and one second-order ``MAML`` meta-gradient
(``meta_loss`` and its backward, loop path) of ``--tasks`` Conv4 tasks shaped like Omniglot
5-way 1-shot 15-query (random images). Prints the median of each and their ratio::

    python benchmarks/finite_checks_cost.py --tasks 4 --threads 1
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5, help="timed steps after one warm-up step")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    from lit_meta.backbones import Conv4
    from lit_meta.learners import MAML, finite_checks
    from synthetic_episodes import omniglot_like_batch

    tasks = args.tasks
    batch = omniglot_like_batch(tasks)
    learner = MAML(Conv4(1, out_features=5), inner_lr=0.4, execution="loop")
    steps, checks = [], []
    for _ in range(1 + args.steps):
        learner.zero_grad()
        start = time.perf_counter()
        loss = learner.meta_loss(batch)
        loss.backward()
        steps.append(time.perf_counter() - start)
        start = time.perf_counter()
        finite_checks.check_loss(loss, batch, what="meta-loss", where="benchmark", divergence_fix="")
        finite_checks.check_gradients(list(learner.named_parameters()), batch, where="benchmark", divergence_fix="")
        checks.append(time.perf_counter() - start)
    step, check = statistics.median(steps[1:]), statistics.median(checks[1:])
    print(f"command: python {' '.join(sys.argv)}")
    print(
        f"machine: {platform.platform()}, {platform.processor() or 'cpu'}, torch {torch.__version__}, "
        f"{args.threads} thread(s)"
    )
    print(f"MAML second-order meta-gradient, {tasks} Conv4 tasks: median {step * 1e3:.1f} ms")
    print(f"non-finite checks (loss + all meta-gradients): median {check * 1e3:.3f} ms")
    print(f"ratio: {check / step:.5f} ({100 * check / step:.3f}% of the step)")


if __name__ == "__main__":
    main()
