"""The sequence learners' Omniglot configs (split ``santoro``: no validation) through the real CLI, in a budget.

Runs ``lit-meta fit --config CONFIG`` for ``--minutes`` of training (``trainer.max_time``),
logging the training accuracy every 25 steps: the query accuracy (``train/acc``) and, for
MANN, the accuracy at each presentation of a class (the paper's Figure 2 plots these
training curves). The split has no validation characters, so these training curves are
the curves. Then ``lit-meta test`` of the last checkpoint on 600 episodes of the 423 test
characters; for MANN's own setup (``configs/mann/omniglot_5w10s.yaml``: 5-way episodes of
10 presentations per class, 20x20 images) that gives the accuracy at the 1st, 2nd, 3rd,
4th, 5th and 10th presentation (Santoro et al., 2016, Table 1), and a second test gives
the standard 5-way 1-shot query accuracy (``--data.eval_shots 1``). Prints the figures
next to the paper's, records them as ``accuracy`` lines in ``benchmarks/results/model_based.jsonl``
(for ``python benchmarks/report.py``), and writes ``<name>_result.json`` and a PNG of the
training accuracy by presentation, which the report does not draw.

    python benchmarks/omniglot_sequence.py --config configs/mann/omniglot_5w10s.yaml --minutes 90
    python benchmarks/omniglot_sequence.py --config configs/snail/omniglot_5w1s.yaml --minutes 35 \
        -- --data.meta_batch_size 8 --model.init_args.meta_lr 0.001
    python benchmarks/omniglot_sequence.py --config configs/mann/omniglot_5w10s.yaml --run-dir /tmp/runs/mann

Arguments after ``--`` go to ``lit-meta fit`` (and are recorded with the command); its
``--model`` and ``--model.*`` arguments go to the tests of its checkpoint as well.

``--resume`` continues the run under ``--out`` from its newest checkpoint, with ``--minutes`` as the
total training time (Lightning's Timer restores the time already spent from the checkpoint) and
otherwise the same command: the same arguments after ``--``, so the same data and hyperparameters;
a command that differs in anything else is refused. The continued fit logs into a
new Lightning version, and the training curve joins the versions by step.

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

import yaml

from results_log import record_result
from subprocess_runs import checkpoint_step, device_budget, log_versions, resume_differences, resumed_note

REPO = Path(__file__).resolve().parents[1]
INSTANCES = (1, 2, 3, 4, 5, 10)
MANN_PAPER = {"MANN": (36.4, 82.8, 91.0, 92.6, 94.9, 98.1), "LSTM": (24.4, 49.5, 55.3, 61.0, 63.6, 62.5)}
"""Santoro et al. (2016), Table 1, 5-way Omniglot with one-hot labels: accuracy (%) by presentation."""
PAPER = {  # query accuracy (%) as published
    "snail/omniglot_5w1s.yaml": 99.07,  # Mishra et al. 2018, Table 1
    "snail/omniglot_5w5s.yaml": 99.78,
    "snail/omniglot_20w1s.yaml": 97.64,
    "snail/omniglot_20w5s.yaml": 99.36,
}
PAPER_EPISODES = {"mann/omniglot_5w10s.yaml": 100_000}


def config_name(config: Path) -> str:
    return config.resolve().relative_to(REPO / "configs").as_posix()


def data_arguments(config: Path, args: argparse.Namespace) -> list[str]:
    data = yaml.safe_load(config.read_text())["data"]
    kwargs = {**(data.get("dataset_kwargs") or {}), "cache_dir": str(args.cache)}
    return ["--data.root", str(args.data), "--data.dataset_kwargs", json.dumps(kwargs)]


def environment(args: argparse.Namespace) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": str(args.threads)}


def fit_command(config: Path, run_dir: Path, args: argparse.Namespace) -> list[str]:
    return [
        "lit-meta", "fit", "--config", str(config), *data_arguments(config, args),
        "--trainer.max_time", f"00:{args.minutes // 60:02d}:{args.minutes % 60:02d}:00",
        "--trainer.default_root_dir", str(run_dir),
        "--trainer.logger.init_args.save_dir", str(run_dir),
        "--trainer.log_every_n_steps", "25",
        "--trainer.enable_progress_bar", "false",
        "--test_after_fit", "false",
        *args.fit_arguments,
    ]  # fmt: skip


def fit(command: list[str], args: argparse.Namespace) -> tuple[str, float]:
    start = time.perf_counter()
    subprocess.run(command, check=True, env=environment(args))
    return shlex.join(command), time.perf_counter() - start


def training_curve(run_dir: Path) -> list[dict[str, float]]:
    """The logged training rows of the fit under ``run_dir``, of every version (a fit resumed from a
    checkpoint logs into a new one), by step."""
    rows: dict[float, dict[str, float]] = {}
    for version in log_versions(run_dir):
        if (version / "metrics.csv").exists():
            with open(version / "metrics.csv") as file:
                for r in csv.DictReader(file):
                    if r.get("train/acc"):
                        rows[float(r["step"])] = {k: float(v) for k, v in r.items() if v}
    return [rows[step] for step in sorted(rows)]


SPLIT_SIZES = {"santoro": "1,200 / 423 characters"}  # training / test characters


def split_text(config: str) -> str:
    """The Omniglot split a config (its name under ``configs/``) trains and tests on, as the report shows it."""
    data = yaml.safe_load((REPO / "configs" / config).read_text())["data"]
    split = (data.get("dataset_kwargs") or {}).get("split", "vinyals")
    return f"{split} ({SPLIT_SIZES[split]})" if split in SPLIT_SIZES else split


def training_status(curve: list[dict[str, float]]) -> str | None:
    """Whether the training query accuracy was still rising: its mean over the last quarter of the steps
    against the quarter before, more than half a point apart. The split has no validation characters, so
    the training curve is the only one there is. ``None`` for a curve of fewer than 8 points."""
    points = [(row["step"], row["train/acc"]) for row in curve if "train/acc" in row]
    if len(points) < 8:
        return None
    last = points[-1][0]
    quarter = last / 4

    def mean(start: float, end: float) -> float:
        values = [acc for step, acc in points if start <= step < end]
        return 100 * sum(values) / len(values)

    before, end = mean(last - 2 * quarter, last - quarter), mean(last - quarter, last + 1)
    trend = "still rising" if end - before > 0.5 else "flat"
    return (
        f"{trend}: training query accuracy {before:.1f}% over steps {last - 2 * quarter:,.0f}-{last - quarter:,.0f},"
        f" {end:.1f}% over the last quarter"
    )


def last_checkpoint(run_dir: Path) -> Path:
    found = sorted(run_dir.rglob("*.ckpt"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise SystemExit(f"no checkpoint under {run_dir}")
    return found[-1]


def resume(command: list[str], run_dir: Path, result_path: Path) -> dict:
    """The newest checkpoint of the fit under ``run_dir`` and that fit's result, checked against ``command``.

    Raises:
        SystemExit: there is no earlier result or checkpoint, or the earlier fit ran another command
            (other than in its time or step budget): its episode stream or hyperparameters would not continue.
    """
    if not result_path.is_file() or not run_dir.is_dir():
        raise SystemExit(f"--resume: no finished run of this config under {run_dir.parent.parent} ({result_path.name})")
    earlier = json.loads(result_path.read_text())
    if differing := resume_differences(command, shlex.split(earlier["fit_command"])):
        raise SystemExit(f"--resume: {run_dir} ran another command; differing arguments: {differing}")
    checkpoint = last_checkpoint(run_dir)
    step = checkpoint_step(checkpoint)
    return {"checkpoint": checkpoint, "step": step, "earlier": earlier}


def test(config: Path, checkpoint: Path, save_dir: Path, extra: list[str], args: argparse.Namespace) -> dict:
    """``lit-meta test`` of ``checkpoint`` with ``extra`` arguments: its logged test metrics and command."""
    command = [
        "lit-meta", "test", "--config", str(config), *data_arguments(config, args), *extra,
        "--ckpt_path", str(checkpoint),
        "--trainer.default_root_dir", str(save_dir),
        "--trainer.logger.init_args.save_dir", str(save_dir),
        "--trainer.enable_progress_bar", "false",
    ]  # fmt: skip
    subprocess.run(command, check=True, env=environment(args))
    with open(log_versions(save_dir)[-1] / "metrics.csv") as file:
        (row,) = [r for r in csv.DictReader(file) if r.get("test/acc")]
    metrics = {key: float(value) for key, value in row.items() if key.startswith("test/") and value}
    return {**metrics, "command": shlex.join(command)}


def model_arguments(fit_command: list[str]) -> list[str]:
    """The ``--model`` and ``--model.*`` arguments of the fit (``--model.x value`` or ``--model.x=value``),
    which the tests of its checkpoint need too: a model built otherwise does not load it."""
    picked = []
    for i, word in enumerate(fit_command):
        name = word.split("=", 1)[0]
        if name != "--model" and not name.startswith("--model."):
            continue
        if "=" in word:
            picked.append(word)
        elif i + 1 < len(fit_command):
            picked += [word, fit_command[i + 1]]
    return picked


def episodes_per_step(config: dict, fit_command: list[str]) -> int:
    """The meta-batch size of the fit: the command's ``--data.meta_batch_size`` or the config's."""
    for i, word in enumerate(fit_command):
        if word == "--data.meta_batch_size":
            return int(fit_command[i + 1])
        if word.startswith("--data.meta_batch_size="):
            return int(word.split("=", 1)[1])
    return int(config["data"].get("meta_batch_size", 32))


def ordinal(k: int) -> str:
    return f"{k}{ {1: 'st', 2: 'nd', 3: 'rd'}.get(k, 'th') }"


def moving_mean(values: list[float], window: int) -> list[float]:
    return [sum(values[max(0, i - window + 1) : i + 1]) / (i + 1 - max(0, i - window + 1)) for i in range(len(values))]


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve, per_step = result["curve"], result["episodes_per_step"]
    episodes = [per_step * (r["step"] + 1) for r in curve]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    window = 8  # logged points: 200 steps
    if "train/acc_instance_1" in curve[0]:
        for k in (1, 2, 3, 5, 10):
            line = ax.plot(episodes, moving_mean([100 * r[f"train/acc_instance_{k}"] for r in curve], window))
            line[0].set_label(f"{ordinal(k)} presentation")
            paper = MANN_PAPER["MANN"][INSTANCES.index(k)]
            ax.axhline(paper, color=line[0].get_color(), linestyle=":", linewidth=0.8)
    else:
        ax.plot(episodes, moving_mean([100 * r["train/acc"] for r in curve], window), label="query accuracy")
        if result.get("paper") is not None:
            ax.axhline(result["paper"], color="grey", linestyle=":", linewidth=0.8, label="paper (test)")
    test_acc = 100 * result["test"]["test/acc"]
    ax.set_xlabel(f"training episodes ({per_step} per step)")
    ax.set_ylabel(f"training accuracy (%), moving mean of {window * 25} steps")
    ax.set_title(f"{result['config']} on Omniglot, 2-core CPU (test: {test_acc:.1f}%; dotted: paper)", fontsize=9)
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.text(0.01, 0.01, result["fit_command"][-200:], fontsize=4.5, color="grey")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=100)


def report(result: dict) -> None:
    steps, per_step = result["steps"], result["episodes_per_step"]
    paper_episodes = PAPER_EPISODES.get(result["config"])
    along = (
        f" ({100 * steps * per_step / paper_episodes:.0f}% of the paper's {paper_episodes:,})" if paper_episodes else ""
    )
    print(f"{result['config']}: {steps} steps = {steps * per_step:,} episodes{along}, {result['machine']}")
    test = result["test"]
    if "test/acc_instance_1" in test:
        print("presentation   " + "  ".join(f"{ordinal(k):>13}" for k in INSTANCES))
        print("lit-meta       " + "  ".join(
            f"{100 * test[f'test/acc_instance_{k}']:6.1f} ± {100 * test[f'test/acc_instance_{k}_ci95']:4.1f}"
            for k in INSTANCES
        ))  # fmt: skip
        for name, row in MANN_PAPER.items():
            print(f"paper {name:<8} " + "  ".join(f"{value:>13.1f}" for value in row))
    print(
        f"query accuracy: {100 * test['test/acc']:.2f} ± {100 * test['test/acc_ci95']:.2f} (paper: {result['paper']})"
    )
    if "one_shot" in result:
        one_shot = result["one_shot"]
        print(f"5-way 1-shot query accuracy: {100 * one_shot['test/acc']:.2f} ± {100 * one_shot['test/acc_ci95']:.2f}")


def record(result: dict, args: argparse.Namespace) -> None:
    """``accuracy`` lines for ``report.py``: the query accuracy (MANN: the 10th presentation, and 5-way 1-shot)."""
    config, test = result["config"], result["test"]
    learner = config.split("/")[0].upper()
    ways, shots = config.removesuffix(".yaml").split("_")[-1].replace("s", "").split("w")
    common = {"learner": learner, "test_episodes": int(float(test.get("test/episodes", 600))),
              "train_steps": result["steps"], "train_episodes": result["steps"] * result["episodes_per_step"],
              "split": split_text(config), "note": f"lit-meta command: {result['fit_command']}"}  # fmt: skip
    if resumed := result.get("resumed"):
        common["note"] += f"; {resumed_note(resumed)}; the budget is the training time of both parts"
    if status := training_status(result["curve"]):
        common["status"] = status
    # A --run-dir run was made elsewhere, perhaps on another machine: only a fit run here is booked to this GPU.
    if args.run_dir:
        budget = {"steps": result["steps"]}
    else:
        budget = {"minutes": args.minutes, **device_budget(shlex.split(result["fit_command"]))}
    lines = []
    if "test/acc_instance_10" in test:
        paper = {"acc": MANN_PAPER["MANN"][-1], "source": "Santoro et al. 2016, Table 1"}
        lines.append({**common, "setting": f"omniglot {ways}w{shots}s (10th presentation)", "paper": paper,
                      "acc": round(100 * test["test/acc_instance_10"], 2),
                      "ci95": round(100 * test["test/acc_instance_10_ci95"], 2)})  # fmt: skip
    else:
        paper = {"acc": result["paper"], "source": "Mishra et al. 2018, Table 1"} if result["paper"] else None
        lines.append({**common, "setting": f"omniglot {ways}w{shots}s", "paper": paper,
                      "acc": round(100 * test["test/acc"], 2),
                      "ci95": round(100 * test["test/acc_ci95"], 2)})  # fmt: skip
    if one_shot := result.get("one_shot"):
        lines.append({**common, "setting": f"omniglot {ways}w1s", "acc": round(100 * one_shot["test/acc"], 2),
                      "ci95": round(100 * one_shot["test/acc_ci95"], 2)})  # fmt: skip
    for figures in lines:
        record_result("model_based", "accuracy", figures, budget=budget)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--minutes", type=int, default=90, help="training time")
    parser.add_argument(
        "--resume", action="store_true", help="continue the run under --out; --minutes is then the total training time"
    )
    parser.add_argument("--run-dir", type=Path, help="report this run of the config instead of starting one")
    parser.add_argument("--fit-command", default="", help="with --run-dir: the command that made it, to record")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (OMP_NUM_THREADS)")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/lit-meta-omniglot-cache"))
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--plot-only", action="store_true", help="redraw the PNG from the saved result")
    parser.add_argument("fit_arguments", nargs="*", help="after --: more lit-meta fit arguments")
    args = parser.parse_args()
    name = config_name(args.config).removesuffix(".yaml").replace("/", "_")
    args.out.mkdir(parents=True, exist_ok=True)
    result_path = args.out / f"{name}_result.json"
    png = args.out / f"{name}_curves.png"
    if args.plot_only:
        plot(json.loads(result_path.read_text()), png)
        return
    if args.resume and args.run_dir:
        parser.error("--resume continues the run under --out, not a --run-dir")
    run_dir = args.run_dir or args.out / "logs" / name
    resumed = None
    if args.run_dir is None:
        command = fit_command(args.config, run_dir, args)
        if args.resume:
            resumed = resume(command, run_dir, result_path)
            command += ["--ckpt_path", str(resumed["checkpoint"])]
        fit_command_text, wall = fit(command, args)
    else:
        fit_command_text, wall = args.fit_command, float("nan")
    curve = training_curve(run_dir)
    config = yaml.safe_load(args.config.read_text())
    fit_words = shlex.split(fit_command_text)
    per_step, model = episodes_per_step(config, fit_words), model_arguments(fit_words)
    checkpoint = last_checkpoint(run_dir)
    result = {
        "config": config_name(args.config),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "fit_command": fit_command_text,
        "fit_wall_s": wall + (resumed["earlier"]["fit_wall_s"] if resumed else 0.0),
        "episodes_per_step": per_step,
        "steps": int(max(r["step"] for r in curve)) + 1,
        "paper": PAPER.get(config_name(args.config)),
        "test": test(args.config, checkpoint, args.out / "logs" / f"{name}_test", model, args),
        "curve": curve,
    }
    if resumed is not None:
        result["resumed"] = {
            "from_step": resumed["step"],
            "earlier_command": resumed["earlier"]["fit_command"],
            "earlier_steps": resumed["earlier"]["steps"],
        }
    if config_name(args.config).startswith("mann/"):
        extra = [*model, "--data.eval_shots", "1", "--data.eval_queries", "15"]
        result["one_shot"] = test(args.config, checkpoint, args.out / "logs" / f"{name}_test_5w1s", extra, args)
    result_path.write_text(json.dumps(result, indent=1))
    report(result)
    record(result, args)
    try:
        plot(result, png)
    except ImportError:
        sys.stderr.write("matplotlib is not installed: no PNG (rerun with --plot-only where it is)\n")


if __name__ == "__main__":
    main()
