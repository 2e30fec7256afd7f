"""MANN's own Omniglot setup (Santoro et al., 2016, Table 1) through the real CLI, within a stated budget.

Runs ``lit-meta fit --config configs/mann/omniglot_5w10s.yaml`` (5-way episodes of 10
presentations per class, 20x20 images, the 1,200 / 423 character split) for ``--minutes``
of training (``trainer.max_time``; the config's own end is 100,000 episodes), logging the
training accuracy at each presentation every 25 steps (the paper's Figure 2 plots these
training curves). Then ``lit-meta test`` of the last checkpoint, twice, on 600 episodes of
the 423 test characters: the paper's setup (accuracy at the 1st, 2nd, 3rd, 4th, 5th and
10th presentation, Table 1) and the standard 5-way 1-shot query accuracy
(``--data.eval_shots 1``). Prints both next to the paper, writes ``result.json`` and one
PNG of the training curves.

    python benchmarks/omniglot_mann.py --minutes 90 --out benchmarks/results
    python benchmarks/omniglot_mann.py --run-dir /tmp/runs/mann --out benchmarks/results  # a run made already

``--run-dir`` reports a ``lit-meta fit`` of the config made by hand (its logs and
``last.ckpt`` under that folder) instead of starting one. Omniglot is read from ``--data``
(default ``../shared/data``), decoded once into ``--cache``.
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
CONFIG = REPO / "configs" / "mann" / "omniglot_5w10s.yaml"
INSTANCES = (1, 2, 3, 4, 5, 10)
PAPER = {"MANN": (36.4, 82.8, 91.0, 92.6, 94.9, 98.1), "LSTM": (24.4, 49.5, 55.3, 61.0, 63.6, 62.5)}
"""Santoro et al. (2016), Table 1, 5-way Omniglot with one-hot labels: accuracy (%) by presentation."""
EPISODES_PER_STEP = 16
PAPER_EPISODES = 100_000


def data_arguments(args: argparse.Namespace) -> list[str]:
    kwargs = {"split": "santoro", "image_size": 20, "cache_dir": str(args.cache)}
    return ["--data.root", str(args.data), "--data.dataset_kwargs", json.dumps(kwargs)]


def fit(args: argparse.Namespace) -> tuple[Path, str, float]:
    run_dir = args.out / "logs" / "mann_5w10s"
    command = [
        "lit-meta", "fit", "--config", str(CONFIG), *data_arguments(args),
        "--trainer.max_time", f"00:{args.minutes // 60:02d}:{args.minutes % 60:02d}:00",
        "--trainer.default_root_dir", str(run_dir),
        "--trainer.log_every_n_steps", "25",
        "--trainer.enable_progress_bar", "false",
        "--test_after_fit", "false",
    ]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(command, check=True, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
    return run_dir, shlex.join(command), time.perf_counter() - start


def newest_version(folder: Path) -> Path:
    versions = sorted((folder / "lightning_logs").iterdir(), key=lambda p: int(p.name.split("_")[-1]))
    return versions[-1]


def training_curve(run_dir: Path) -> tuple[list[dict[str, float]], int]:
    """The logged training rows of the fit (the first version under ``run_dir``) and the steps it took."""
    versions = sorted((run_dir / "lightning_logs").iterdir(), key=lambda p: int(p.name.split("_")[-1]))
    with open(versions[0] / "metrics.csv") as file:
        rows = [r for r in csv.DictReader(file) if r.get("train/acc_instance_1")]
    curve = [{key: float(value) for key, value in r.items() if value} for r in rows]
    return curve, int(max(r["step"] for r in curve)) + 1


def last_checkpoint(run_dir: Path) -> Path:
    found = sorted(run_dir.rglob("last*.ckpt"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise SystemExit(f"no last.ckpt under {run_dir}")
    return found[-1]


def test(args: argparse.Namespace, checkpoint: Path, name: str, extra: list[str]) -> dict[str, float | str]:
    """``lit-meta test`` of ``checkpoint`` with ``extra`` arguments; its logged test metrics and command."""
    save_dir = args.out / "logs" / f"mann_test_{name}"
    command = [
        "lit-meta", "test", "--config", str(CONFIG), *data_arguments(args), *extra,
        "--ckpt_path", str(checkpoint),
        "--trainer.default_root_dir", str(save_dir),
        "--trainer.enable_progress_bar", "false",
    ]  # fmt: skip
    subprocess.run(command, check=True, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
    with open(newest_version(save_dir) / "metrics.csv") as file:
        (row,) = [r for r in csv.DictReader(file) if r.get("test/acc")]
    return {
        **{key: float(value) for key, value in row.items() if key.startswith("test/") and value},
        "command": shlex.join(command),
    }


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = result["curve"]
    episodes = [EPISODES_PER_STEP * (r["step"] + 1) for r in curve]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    window = 8  # 8 logged points = 200 steps = 3,200 episodes
    for k in (1, 2, 3, 5, 10):
        values = [100 * r[f"train/acc_instance_{k}"] for r in curve]
        smooth = [
            sum(values[max(0, i - window + 1) : i + 1]) / len(values[max(0, i - window + 1) : i + 1])
            for i in range(len(values))
        ]
        line = ax.plot(
            episodes,
            smooth,
            label=f"{k}{'st' if k == 1 else 'nd' if k == 2 else 'rd' if k == 3 else 'th'} presentation",
        )
        ax.axhline(PAPER["MANN"][INSTANCES.index(k)], color=line[0].get_color(), linestyle=":", linewidth=0.8)
    ax.set_xlabel(f"training episodes ({EPISODES_PER_STEP} per step); the paper trains {PAPER_EPISODES:,}")
    ax.set_ylabel("training accuracy (%), moving mean of 3,200 episodes")
    ax.set_title("MANN, Omniglot 5-way, 10 presentations per class (dotted: paper, Table 1)", fontsize=10)
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.text(0.01, 0.01, result["fit_command"][:160], fontsize=5, color="grey")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=int, default=90, help="training time")
    parser.add_argument("--run-dir", type=Path, help="report this run of the config instead of starting one")
    parser.add_argument("--fit-command", default="", help="with --run-dir: the command that made it, to record")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (OMP_NUM_THREADS)")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/lit-meta-omniglot-cache"))
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--plot-only", action="store_true", help="redraw the PNG from <out>/mann_result.json")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    result_path = args.out / "mann_result.json"
    if args.plot_only:
        plot(json.loads(result_path.read_text()), args.out / "omniglot_mann_curves.png")
        return
    if args.run_dir is None:
        run_dir, fit_command, wall = fit(args)
    else:
        run_dir, fit_command, wall = args.run_dir, args.fit_command, float("nan")
    curve, steps = training_curve(run_dir)
    checkpoint = last_checkpoint(run_dir)
    sequence = test(args, checkpoint, "5w10s", [])
    one_shot = test(args, checkpoint, "5w1s", ["--data.eval_shots", "1", "--data.eval_queries", "15"])
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}",
        "fit_command": fit_command,
        "fit_wall_s": wall,
        "steps": steps,
        "episodes": steps * EPISODES_PER_STEP,
        "sequence": sequence,
        "one_shot": one_shot,
        "curve": curve,
    }
    result_path.write_text(json.dumps(result, indent=1))
    print(f"MANN, Omniglot 5-way, {steps} steps = {steps * EPISODES_PER_STEP:,} episodes "
          f"({100 * steps * EPISODES_PER_STEP / PAPER_EPISODES:.0f}% of the paper's {PAPER_EPISODES:,})")  # fmt: skip
    print("presentation   " + "  ".join(f"{k:>13}" for k in INSTANCES))
    print("lit-meta       " + "  ".join(
        f"{100 * sequence[f'test/acc_instance_{k}']:6.1f} ± {100 * sequence[f'test/acc_instance_{k}_ci95']:4.1f}"
        for k in INSTANCES
    ))  # fmt: skip
    for name, row in PAPER.items():
        print(f"paper {name:<8} " + "  ".join(f"{value:>13.1f}" for value in row))
    print(f"query after 10 presentations: {100 * sequence['test/acc']:.2f} ± {100 * sequence['test/acc_ci95']:.2f}")
    print(f"5-way 1-shot query accuracy:  {100 * one_shot['test/acc']:.2f} ± {100 * one_shot['test/acc_ci95']:.2f}")
    try:
        plot(result, args.out / "omniglot_mann_curves.png")
    except ImportError:
        sys.stderr.write("matplotlib is not installed: no PNG (rerun with --plot-only where it is)\n")


if __name__ == "__main__":
    main()
