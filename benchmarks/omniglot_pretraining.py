"""Pre-training, learned inner optimisers and latent adaptation on the real Omniglot, in a CPU budget.

The pipeline of issue 16, each stage through the real CLI (``lit-meta fit``, ``test``, ``embed``):

1. ``baseline`` and ``baseline_plus_plus``: supervised pre-training on the meta-training
   classes (``configs/<learner>/omniglot_5w5s.yaml``) for ``--minutes``, then the best
   validation checkpoint tested on 600 5-way 5-shot episodes and, with the 1-shot config,
   on 600 5-way 1-shot episodes (one pre-training serves both: only the test shots differ);
2. ``leo_features``: ``lit-meta embed`` of the pre-trained Baseline's backbone over every
   split, then LEO meta-trained on those features (``configs/leo/omniglot_features_<setting>.yaml``);
3. ``leo`` (end to end, Conv4 in the loop) and ``meta_lstm``: meta-trained from scratch
   (``configs/<learner>/omniglot_<setting>.yaml``).

Every run stops at ``trainer.max_time`` and tests its best validation checkpoint. The script
prints a table, keeps each run's figures in ``<out>/logs/<run>/result.json`` and records each
run as an ``accuracy`` line in ``benchmarks/results/pretraining.jsonl`` (validation curve
included; ``python benchmarks/report.py`` draws the curves).

    python benchmarks/omniglot_pretraining.py --stages baseline leo_features --minutes 12 6
    python benchmarks/omniglot_pretraining.py --stages meta_lstm --settings 5w1s --minutes 12 --threads 1

Omniglot is read from ``--data`` (default ``../shared/data``), decoded once into ``--cache``.
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

REPO = Path(__file__).resolve().parents[1]
STAGES = ("baseline", "baseline_plus_plus", "leo_features", "leo", "meta_lstm")
SETTINGS = ("5w1s", "5w5s")


def image_data_arguments(config: Path, args: argparse.Namespace) -> list[str]:
    """The real Omniglot under ``--data``, decoded into ``--cache``, keeping the config's dataset_kwargs."""
    data = yaml.safe_load(config.read_text())["data"]
    kwargs = {**(data.get("dataset_kwargs") or {}), "cache_dir": str(args.cache)}
    return ["--data.root", str(args.data), "--data.dataset_kwargs", json.dumps(kwargs)]


def lit_meta(command: list[str], args: argparse.Namespace) -> float:
    """Runs ``lit-meta COMMAND``; returns its wall time in seconds, or stops the script with its error."""
    env = {**os.environ, **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {})}
    start = time.perf_counter()
    completed = subprocess.run(["lit-meta", *command], capture_output=True, text=True, env=env)
    if completed.returncode != 0:
        sys.stderr.write(completed.stderr[-4000:])
        raise SystemExit(f"lit-meta {shlex.join(command)} failed")
    return time.perf_counter() - start


def metrics_rows(save_dir: Path) -> list[dict[str, str]]:
    """The rows of the newest CSVLogger run under ``save_dir``."""
    versions = sorted((save_dir / "lightning_logs").iterdir(), key=lambda p: int(p.name.split("_")[-1]))
    with open(versions[-1] / "metrics.csv") as file:
        return list(csv.DictReader(file))


def test_result(rows: list[dict[str, str]]) -> dict:
    test = next(r for r in rows if r.get("test/acc"))
    return {
        "acc": 100 * float(test["test/acc"]),
        "ci95": 100 * float(test["test/acc_ci95"]),
        "episodes": int(float(test["test/episodes"])),
    }


def fit(name: str, config: Path, minutes: int, data: list[str], args: argparse.Namespace) -> dict:
    """``lit-meta fit`` of ``config`` for ``minutes``, validating every ``--val-every`` steps, then its test."""
    name += args.tag
    save_dir = args.out / "logs" / name
    batch = yaml.safe_load(config.read_text())["data"].get("meta_batch_size", 1)
    command = [
        "fit", "--config", str(config), *data,
        "--data.train_episodes", str(args.val_every * batch),
        "--data.val_episodes", str(args.val_episodes),
        "--trainer.max_time", f"00:{minutes // 60:02d}:{minutes % 60:02d}:00",
        "--trainer.enable_progress_bar", "false",
        "--trainer.logger.init_args.save_dir", str(save_dir),
    ]  # fmt: skip
    wall = lit_meta(command, args)
    rows = metrics_rows(save_dir)
    checkpoints = sorted(save_dir.rglob("*.ckpt"))
    best = next((p for p in checkpoints if p.name != "last.ckpt"), checkpoints[-1])
    result = {
        "run": name,
        **test_result(rows),
        "minutes": minutes,
        "steps": max(int(r["step"]) for r in rows if r.get("train/loss") or r.get("val/acc")) + 1,
        "curve": [(int(r["step"]), float(r["val/acc"])) for r in rows if r.get("val/acc")],
        "checkpoint": str(best),
        "wall_s": wall,
        "command": shlex.join(["lit-meta", *command]),
    }
    save(result, save_dir)
    return result


def test(name: str, config: Path, checkpoint: str, data: list[str], args: argparse.Namespace) -> dict:
    """``lit-meta test`` of ``checkpoint`` on the episodes of ``config``."""
    name += args.tag
    save_dir = args.out / "logs" / name
    command = [
        "test", "--config", str(config), *data, "--ckpt_path", checkpoint,
        "--trainer.enable_progress_bar", "false",
        "--trainer.logger.init_args.save_dir", str(save_dir),
    ]  # fmt: skip
    wall = lit_meta(command, args)
    result = {
        "run": name,
        **test_result(metrics_rows(save_dir)),
        "wall_s": wall,
        "command": shlex.join(["lit-meta", *command]),
    }
    save(result, save_dir)
    return result


def save(result: dict, save_dir: Path) -> None:
    save_dir.mkdir(parents=True, exist_ok=True)
    (save_dir / "result.json").write_text(json.dumps(result, indent=1))


def pretrain(learner: str, minutes: int, args: argparse.Namespace) -> list[dict]:
    """Pre-training (the 5-shot config), then the same checkpoint tested 1-shot."""
    five, one = (REPO / "configs" / learner / f"omniglot_{s}.yaml" for s in ("5w5s", "5w1s"))
    trained = fit(f"{learner}_pretrain_5w5s", five, minutes, image_data_arguments(five, args), args)
    tested = test(f"{learner}_test_5w1s", one, trained["checkpoint"], image_data_arguments(one, args), args)
    return [trained, tested]


def leo_on_features(minutes: int, args: argparse.Namespace) -> list[dict]:
    """``lit-meta embed`` of the pre-trained Baseline, then LEO on the features, each setting."""
    source = json.loads((args.out / "logs" / "baseline_pretrain_5w5s" / "result.json").read_text())
    features = args.out / "logs" / "baseline_features.npz"
    if not features.exists():
        wall = lit_meta(["embed", "--ckpt_path", source["checkpoint"], "--output", str(features)], args)
        print(f"embedded {source['checkpoint']} into {features} in {wall:.0f} s", flush=True)
    results = []
    for setting in args.settings:
        config = REPO / "configs" / "leo" / f"omniglot_features_{setting}.yaml"
        results.append(fit(f"leo_features_{setting}", config, minutes, ["--data.root", str(features)], args))
    return results


def from_scratch(learner: str, minutes: int, args: argparse.Namespace) -> list[dict]:
    results = []
    for setting in args.settings:
        config = REPO / "configs" / learner / f"omniglot_{setting}.yaml"
        results.append(fit(f"{learner}_{setting}", config, minutes, image_data_arguments(config, args), args))
    return results


LEARNERS = {"baseline": "Baseline", "baseline_plus_plus": "Baseline++", "leo_features": "LEO", "leo": "LEO",
            "meta_lstm": "Meta-learner LSTM"}  # fmt: skip


def record(stage: str, r: dict, args: argparse.Namespace) -> None:
    """One ``accuracy`` line for ``report.py`` (its validation curve included when the run trained)."""
    setting = "5w1s" if "5w1s" in r["run"] else "5w5s"
    variant = {"leo_features": "on the pre-trained Baseline's features", "leo": "end to end"}.get(stage, "")
    figures = {
        "learner": LEARNERS[stage], "setting": f"omniglot {setting}", "split": "the config's",
        "acc": round(r["acc"], 2), "ci95": round(r["ci95"], 2), "test_episodes": r["episodes"],
        "train_steps": r.get("steps"), "wall_min": round(r["wall_s"] / 60, 1),
        "curve": [[step, round(100 * acc, 2), None] for step, acc in r.get("curve", [])] or None,
        "variant": f"{variant}, {r['run']}".strip(", "),
        "note": ("" if "minutes" in r else "a test of the trained checkpoint; ") + f"lit-meta command: {r['command']}",
    }  # fmt: skip
    budget = {"minutes": r["minutes"]} if "minutes" in r else None
    record_result("pretraining", "accuracy", figures, budget=budget)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=SETTINGS)
    parser.add_argument(
        "--minutes", type=int, nargs="+", default=[10],
        help="training time of each run of a stage: one value for all stages, or one per --stages entry",
    )  # fmt: skip
    parser.add_argument("--val-every", type=int, default=100, help="training steps between validations")
    parser.add_argument("--val-episodes", type=int, default=100, help="validation episodes")
    parser.add_argument("--threads", type=int, help="intra-op threads (OMP_NUM_THREADS); default: torch's")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/lit-meta-omniglot-cache"))
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "pretraining")
    parser.add_argument("--tag", default="", help="suffix of the run names, to keep a second run of a stage apart")
    parser.add_argument(
        "--retest", nargs=2, action="append", default=[], metavar=("RUN", "OVERRIDE"),
        help="instead of training: test the checkpoint of the recorded RUN again with one more lit-meta option "
        "without its leading dashes (e.g. meta_lstm_5w1s model.init_args.eval_batch_norm=query_batch); repeatable",
    )  # fmt: skip
    args = parser.parse_args()
    if args.retest:
        for run, override in args.retest:
            recorded = json.loads((args.out / "logs" / run / "result.json").read_text())
            config = Path(shlex.split(recorded["command"])[3])
            data = [*image_data_arguments(config, args), f"--{override}"]
            suffix = override.rsplit("=", 1)[-1]
            r = test(f"{run}_test_{suffix}", config, recorded["checkpoint"], data, args)
            record(next(stage for stage in sorted(STAGES, key=len, reverse=True) if run.startswith(stage)), r, args)
            print(
                f"| {r['run']} | {r['acc']:.2f} ± {r['ci95']:.2f} | {override} | {r['wall_s'] / 60:.1f} min |",
                flush=True,
            )
        return
    if len(args.minutes) not in (1, len(args.stages)):
        parser.error(f"--minutes takes 1 value or one per stage ({len(args.stages)}), not {len(args.minutes)}")
    per_stage = args.minutes * len(args.stages) if len(args.minutes) == 1 else args.minutes
    minutes = dict(zip(args.stages, per_stage, strict=True))
    print("command:", shlex.join([sys.executable, *sys.argv]))
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, threads {args.threads or 'torch default'}")
    print("| run | test acc (95% CI) | training budget | training steps | wall time |\n| --- | --- | --- | --- | --- |")
    for stage in args.stages:
        if stage in ("baseline", "baseline_plus_plus"):
            results = pretrain(stage, minutes[stage], args)
        elif stage == "leo_features":
            results = leo_on_features(minutes[stage], args)
        else:
            results = from_scratch(stage, minutes[stage], args)
        for r in results:
            record(stage, r, args)
            budget = f"{r['minutes']} min" if "minutes" in r else "(test of the checkpoint above)"
            print(
                f"| {r['run']} | {r['acc']:.2f} ± {r['ci95']:.2f} | {budget} | {r.get('steps', '')} "
                f"| {r['wall_s'] / 60:.1f} min |",
                flush=True,
            )


if __name__ == "__main__":
    main()
