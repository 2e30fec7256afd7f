"""Test accuracy against the number of inner steps of a trained gradient-based learner (Finn et al., 2017,
Section 5.1 and Figure 3 make the same sweep for the sinusoid).

Loads a checkpoint of MAML, FOMAML, ANIL, Meta-SGD or Reptile and adapts to the same
``--episodes`` Omniglot test episodes (published split) with each number of inner steps
in ``--steps``, through the learner's own :meth:`adapt` (``eval_execution`` as
``--execution`` says). Prints the accuracies (mean and 95% interval over episodes) and
records them in ``benchmarks/results/inner_steps.jsonl``.

    python benchmarks/inner_steps.py --learner MAML --checkpoint path/to/last.ckpt \\
        --setting "omniglot 5w1s" --trained "136 steps of configs/maml/omniglot_5w1s.yaml"
    python benchmarks/inner_steps.py --learner MAML --name MAML++ --checkpoint path/to/last.ckpt
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

import lit_meta.learners
from lit_meta import EpisodicDataModule

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from results_log import record_result  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--learner", default="MAML", help="the learner class in lit_meta.learners")
    parser.add_argument("--name", help="the learner's name in the report (MAML++ is lit_meta.MAML); default: --learner")
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--setting", default="omniglot 5w1s", help="the label of the result")
    parser.add_argument("--trained", default="", help="how the checkpoint was trained (recorded)")
    parser.add_argument("--ways", type=int, default=5)
    parser.add_argument("--shots", type=int, default=1)
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 2, 3, 5, 10])
    parser.add_argument("--execution", default="compiled", choices=["loop", "compiled"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--data", type=Path, default=Path(os.environ.get("LIT_META_OMNIGLOT", HERE.parents[1] / "shared/data"))
    )
    parser.add_argument("--cache", type=Path, default=Path("data/omniglot-cache"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"command: {' '.join(sys.argv)}")
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, {args.threads} threads")

    learner_class = getattr(lit_meta.learners, args.learner)
    learner = learner_class.load_from_checkpoint(args.checkpoint, map_location="cpu", eval_execution=args.execution)
    learner.eval()
    dm = EpisodicDataModule(
        "omniglot", root=str(args.data), dataset_kwargs={"cache_dir": str(args.cache)}, ways=args.ways,
        shots=args.shots, queries=15, meta_batch_size=32, test_episodes=args.episodes, seed=args.seed,
    )  # fmt: skip
    dm.setup("test")
    episodes = [episode for batch in dm.test_dataloader() for episode in batch]
    points = []
    for steps in args.steps:
        start = time.perf_counter()
        scores = [
            float(
                (learner.adapt(e.support_x, e.support_y, steps=steps)(e.query_x).argmax(-1) == e.query_y).float().mean()
            )
            * 100
            for e in episodes
        ]
        acc, ci = statistics.fmean(scores), 1.96 * statistics.stdev(scores) / math.sqrt(len(scores))
        points.append([steps, acc, ci])
        print(f"{steps:3d} inner steps: {acc:.2f} ± {ci:.2f} ({time.perf_counter() - start:.0f} s)")
    record_result(
        "inner_steps",
        "inner_steps",
        {
            "learner": args.name or args.learner,
            "setting": args.setting,
            "trained": args.trained,
            "train_inner_steps": learner.hparams.inner_steps,
            "inner_lr": learner.hparams.inner_lr,
            "test_episodes": len(episodes),
            "points": points,
        },
        budget={"episodes": len(episodes)},
    )


if __name__ == "__main__":
    main()
