"""Paper configs on the real Omniglot within a stated CPU budget, through the real CLI.

Each ``configs/<learner>/omniglot_<ways>w<shots>s.yaml`` runs as ``lit-meta fit`` for
``--minutes`` of training (``trainer.max_time``), validating every ``--val-every`` steps,
then tests its best validation checkpoint on 600 episodes (``test_after_fit``). The
script prints a table (test accuracy with its 95% CI next to the paper's number, the
training steps reached, the wall time of the whole run) and draws the validation
curves into one PNG per learner.

    python benchmarks/omniglot_budget.py --learners protonet --minutes 8 --out benchmarks/results

Omniglot is read from ``--data`` (default ``../shared/data``, holding ``omniglot/``),
decoded once into ``--cache``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SETTINGS = ("5w1s", "5w5s", "20w1s", "20w5s")
PAPER = {  # test accuracy (%) as published; Vinyals et al. 2016 tabulate Siamese
    "protonet": (98.8, 99.7, 96.0, 98.9),
    "matching_net": (98.1, 98.9, 93.8, 98.5),
    "relation_net": (99.6, 99.8, 97.6, 99.1),
    "siamese": (97.3, 98.4, 88.1, 97.0),
    "maml": (98.7, 99.9, 95.8, 98.9),
}


def run(learner: str, setting: str, args: argparse.Namespace) -> dict:
    config = REPO / "configs" / learner / f"omniglot_{setting}.yaml"
    save_dir = args.out / "logs" / f"{learner}_{setting}"
    data = data_config(config)
    dataset_kwargs = {**(data.get("dataset_kwargs") or {}), "cache_dir": str(args.cache)}
    command = [
        "lit-meta", "fit", "--config", str(config),
        "--data.root", str(args.data),
        "--data.dataset_kwargs", json.dumps(dataset_kwargs),
        "--data.train_episodes", str(args.val_every * data.get("meta_batch_size", 32)),
        "--trainer.max_time", f"00:00:{args.minutes:02d}:00",
        "--trainer.enable_progress_bar", "false",
        "--trainer.logger.init_args.save_dir", str(save_dir),
    ]  # fmt: skip
    start = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if completed.returncode != 0:
        sys.stderr.write(completed.stderr[-3000:])
        raise SystemExit(f"{shlex.join(command)} failed")
    (version,) = sorted((save_dir / "lightning_logs").iterdir())[-1:]
    with open(version / "metrics.csv") as file:
        rows = list(csv.DictReader(file))
    curve = [(int(r["step"]), float(r["val/acc"])) for r in rows if r.get("val/acc")]
    test = next(r for r in rows if r.get("test/acc"))
    steps = max(int(r["step"]) for r in rows if r.get("train/loss") or r.get("val/acc")) + 1
    return {
        "learner": learner,
        "setting": setting,
        "acc": 100 * float(test["test/acc"]),
        "ci95": 100 * float(test["test/acc_ci95"]),
        "episodes": int(float(test["test/episodes"])),
        "steps": steps,
        "wall_s": wall,
        "curve": curve,
        "command": shlex.join(command),
    }


def data_config(config: Path) -> dict:
    """The ``data`` section of a config (its dataset_kwargs are kept when the cache folder is added)."""
    import yaml

    return yaml.safe_load(config.read_text())["data"]


def plot(results: list[dict], path: Path, minutes: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in results:
        steps, accs = zip(*r["curve"], strict=True) if r["curve"] else ((), ())
        ax.plot(steps, [100 * a for a in accs], marker="o", label=f"{r['setting']} (test {r['acc']:.1f}%)")
    ax.set_xlabel("training step")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(f"{results[0]['learner']} on Omniglot, {minutes} min of training per setting (2-core CPU)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--learners", nargs="+", default=["protonet"], choices=sorted(PAPER))
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=SETTINGS)
    parser.add_argument("--minutes", type=int, default=8, help="training time per setting")
    parser.add_argument("--val-every", type=int, default=200, help="training steps between validations")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/lit-meta-omniglot-cache"))
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()
    print("command:", shlex.join([sys.executable, *sys.argv]))
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs")
    print("| learner | setting | test acc (95% CI, 600 episodes) | paper | training steps | wall time (train + eval) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for learner in args.learners:
        results = []
        for setting in args.settings:
            r = run(learner, setting, args)
            results.append(r)
            paper = PAPER[learner][SETTINGS.index(setting)]
            print(
                f"| {learner} | {setting} | {r['acc']:.2f} ± {r['ci95']:.2f} | {paper} | {r['steps']} | "
                f"{r['wall_s'] / 60:.1f} min |",
                flush=True,
            )
        plot(results, args.out / f"omniglot_{learner}_curves.png", args.minutes)


if __name__ == "__main__":
    main()
