"""MAML and first-order MAML on Omniglot 5-way 1-shot within a stated CPU budget.

Paper setup (Finn et al., 2017, Section 5.2 and Appendix A.1): Conv4 with 64 filters,
28x28 images, 4 rotations as new classes, inner lr 0.4, 1 inner step (3 at test),
meta-batch 32, Adam 1e-3, 60,000 iterations: 98.7 ± 0.4% (MAML), 98.3 ± 0.5% (FOMAML).
That is days of CPU here, so each variant trains for ``--minutes``, with a validation
curve (100 fixed episodes every ``--val-every`` steps), then is tested on 600 episodes;
the script prints the curve, the test accuracy and the time 60,000 iterations would take,
and records each variant as an ``accuracy`` line in ``benchmarks/results/omniglot_accuracy.jsonl``
(``python benchmarks/report.py`` draws the curves).

    python benchmarks/omniglot_maml.py --minutes 10
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import sys
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger

from lit_meta import EpisodicDataModule
from lit_meta.backbones import Conv4
from lit_meta.learners import MAML
from results_log import record_result

REPO = Path(__file__).resolve().parents[1]
PAPER_ITERATIONS = 60_000
PAPER = {"MAML": {"acc": 98.7, "ci95": 0.4, "source": "Finn et al. 2017, Table 1"},
         "FOMAML": {"acc": 98.3, "ci95": 0.5, "source": "Finn et al. 2017, Table 1"}}  # fmt: skip


def run(first_order: bool, args: argparse.Namespace) -> dict:
    L.seed_everything(args.seed, verbose=False)
    dm = EpisodicDataModule(
        "omniglot", root=str(args.data), dataset_kwargs={"cache_dir": str(args.cache)},
        ways=5, shots=1, queries=15, meta_batch_size=32,
        train_episodes=32 * 100_000, val_episodes=100, test_episodes=600, seed=args.seed,
    )  # fmt: skip
    model = MAML(Conv4(in_channels=1, out_features=5), inner_lr=0.4, inner_steps=1, eval_inner_steps=3,
                 first_order=first_order, meta_lr=1e-3, execution=args.execution)  # fmt: skip
    name = "fomaml" if first_order else "maml"
    logger = CSVLogger(args.out / "logs", name=f"omniglot_5w1s_{name}")
    trainer = L.Trainer(
        max_time={"minutes": args.minutes}, val_check_interval=args.val_every, check_val_every_n_epoch=None,
        logger=logger, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0,
    )  # fmt: skip
    start_cpu, start = time.process_time(), time.perf_counter()
    trainer.fit(model, dm)
    train_wall, train_cpu = time.perf_counter() - start, time.process_time() - start_cpu
    (scores,) = trainer.test(model, dm, verbose=False)
    steps = trainer.global_step
    curve = []
    with open(Path(logger.log_dir) / "metrics.csv") as f:
        for row in csv.DictReader(f):
            if row.get("val/acc"):
                curve.append((int(row["step"]) + 1, float(row["val/acc"]), float(row["val/acc_ci95"])))
    return {
        "name": "FOMAML" if first_order else "MAML", "steps": steps, "train_wall": train_wall,
        "train_cpu": train_cpu, "test": scores, "curve": curve,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="training budget per variant")
    parser.add_argument("--val-every", type=int, default=25)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--data", type=Path, default=Path(os.environ.get("LIT_META_OMNIGLOT", REPO.parent / "shared/data/omniglot"))
    )
    parser.add_argument("--cache", type=Path, default=Path("data/omniglot-cache"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="logs go in <out>/logs")
    parser.add_argument("--results", type=Path, default=None, help="where to record (default benchmarks/results)")
    parser.add_argument(
        "--execution", default="auto", choices=["auto", "loop", "compiled", "vmap"],
        help="MAML's meta-training path (auto: the library's default, measured on the first batch)",
    )  # fmt: skip
    parser.add_argument("--variants", nargs="*", default=["maml", "fomaml"], choices=["maml", "fomaml"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.cache.mkdir(parents=True, exist_ok=True)
    print("command:", " ".join([os.path.basename(sys.executable), *sys.argv]))
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {args.threads} threads, "
          f"execution={args.execution}")  # fmt: skip
    results = [run(variant == "fomaml", args) for variant in args.variants]
    for r in results:
        per_step = r["train_wall"] / max(r["steps"], 1)
        test = r["test"]
        print(f"\n{r['name']}: {r['steps']} iterations in {r['train_wall'] / 60:.1f} min wall "
              f"({r['train_cpu'] / 60:.1f} min CPU), {per_step:.2f} s/iteration incl. validation")  # fmt: skip
        print(
            f"  test (600 episodes, 3 inner steps): {100 * test['test/acc']:.2f} ± {100 * test['test/acc_ci95']:.2f}%"
        )
        print(f"  60,000 iterations would take {PAPER_ITERATIONS * per_step / 3600:.0f} h at this rate")
        print(
            "  validation curve (iteration: acc ± CI): "
            + ", ".join(f"{s}: {100 * a:.1f} ± {100 * c:.1f}" for s, a, c in r["curve"])
        )
        figures = {
            "learner": r["name"], "setting": "omniglot 5w1s", "split": "vinyals (the default)",
            "acc": round(100 * test["test/acc"], 2), "ci95": round(100 * test["test/acc_ci95"], 2),
            "test_episodes": 600,
            "train_steps": r["steps"], "wall_min": round(r["train_wall"] / 60, 1), "paper": PAPER[r["name"]],
            "curve": [[s, round(100 * a, 2), round(100 * c, 2)] for s, a, c in r["curve"]],
            "note": f"{per_step:.2f} s/iteration incl. validation; execution={args.execution}",
        }  # fmt: skip
        budget = {"minutes": args.minutes}
        record_result("omniglot_accuracy", "accuracy", figures, budget=budget, results_dir=args.results)
    print("\nrecorded in omniglot_accuracy.jsonl; python benchmarks/report.py draws the curves")


if __name__ == "__main__":
    main()
