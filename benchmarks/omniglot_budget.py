"""Paper configs on the real Omniglot within a stated CPU budget, through the real CLI.

Each ``configs/<learner>/omniglot_<ways>w<shots>s.yaml`` runs as ``lit-meta fit`` for
``--minutes`` of training (``trainer.max_time``; ``--max-steps`` caps the steps as well, to
compare with another run at equal steps), validating every ``--val-every`` steps,
then tests its best validation checkpoint on 600 episodes (``test_after_fit``). The
script prints a table (test accuracy with its 95% CI next to the paper's number, the
training steps reached, the wall time of the whole run) and records each run, validation
curve included, as an ``accuracy`` line in ``benchmarks/results/omniglot_accuracy.jsonl``
(``python benchmarks/report.py`` draws the curves). Each run's figures are also kept in
``<out>/logs/<learner>_<setting>/result.json``.

    python benchmarks/omniglot_budget.py --learners protonet --minutes 8
    python benchmarks/omniglot_budget.py --settings 20w1s 20w5s --minutes 20 30 --allocator jemalloc

``--resume`` continues the runs already under ``--out`` from their newest ``last.ckpt`` (the
same command otherwise, so the same episode stream and hyperparameters), with ``--minutes``
as the total training time: Lightning's Timer restores the time already spent from the
checkpoint. The checkpoint callback keeps writing into the first run's checkpoint folder, so
the best validation checkpoint of the whole run is the one tested, and the recorded curve
joins every part of the run. ``last.ckpt`` is rewritten only when the validation accuracy
improves, so the steps after the last improvement are trained again; bitwise resume makes
them the same, and the record says whether their validation points came out equal.

``--override KEY VALUE`` runs a variant of the config (``--override model.init_args.lr_decay_every
5000``); the record lists its overrides and, like a run on another split, is not the summary's headline.

``--variant NAME`` runs ``configs/<learner>/omniglot_<ways>w<shots>s_<NAME>.yaml`` instead, a second
config of the same setting (``--learners relation_net --settings 5w1s --variant authors``: the Relation
Network authors' BatchNorm, clipping and test); its record is a learner of its own in the summary
(``RelationNet, authors config``), next to the config as shipped.

``--split`` trains on another Omniglot split than the config's, for instance ``santoro``: the
1,200 characters the papers of Vinyals et al., Snell et al. and Sung et al. trained on (the
published split's training and validation characters), tested on the same 423. That split has
no validation characters, so nothing is validated and the final weights are tested; such a
record is not the summary's headline, which stays on the config's (published) split.

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

from results_log import record_result
from subprocess_runs import (
    allocator_environment,
    checkpoint_step,
    device_budget,
    log_versions,
    resume_differences,
    resumed_note,
    version_number,
)

REPO = Path(__file__).resolve().parents[1]
SETTINGS = ("5w1s", "5w5s", "20w1s", "20w5s")
PAPER = {  # test accuracy (%) as published; Vinyals et al. 2016 tabulate Siamese
    "protonet": (98.8, 99.7, 96.0, 98.9),
    "matching_net": (98.1, 98.9, 93.8, 98.5),
    "relation_net": (99.6, 99.8, 97.6, 99.1),
    "siamese": (97.3, 98.4, 88.1, 97.0),  # fine-tuned row; without fine-tuning (as ours runs): 96.7, 98.4, 88.0, 96.5
    "maml": (98.7, 99.9, 95.8, 98.9),
    "fomaml": (98.3, 99.2, 89.4, 97.9),  # Finn et al. 2017, Table 1 ("MAML, first order approx.")
    "maml_plus_plus": (99.47, 99.93, 97.65, 99.33),  # Antoniou et al. 2019, Table 1
    "meta_sgd": (99.53, 99.93, 95.93, 98.97),  # Li et al. 2017, Table 1
    "anil": (None, None, 96.2, 98.0),  # Raghu et al. 2020, Table 2: Omniglot 20-way only (mean of 3 seeds)
    "snail": (99.07, 99.78, 97.64, 99.36),  # Mishra et al. 2018, Table 1
    "metanet": (98.95, None, 97.00, None),  # Munkhdalai & Yu 2017, Table 1 (1-shot only)
    # Nichol et al. 2018, Table 2, "Reptile + Transduction": our BatchNorm, like theirs, normalises the
    # query set with its own batch statistics; without transduction they report 95.39, 98.90, 88.14, 96.65.
    "reptile": (97.68, 99.48, 89.43, 97.12),
}


NAMES = {"protonet": "ProtoNet", "matching_net": "MatchingNet", "relation_net": "RelationNet", "siamese": "SiameseNet",
         "maml": "MAML", "snail": "SNAIL", "metanet": "MetaNet", "fomaml": "FOMAML", "maml_plus_plus": "MAML++",
         "meta_sgd": "Meta-SGD", "anil": "ANIL", "reptile": "Reptile"}  # fmt: skip
SOURCES = {"protonet": "Snell et al. 2017, Table 1", "matching_net": "Vinyals et al. 2016, Table 1",
           "relation_net": "Sung et al. 2018, Table 1", "siamese": "Koch et al. 2015 (Vinyals et al. 2016)",
           "maml": "Finn et al. 2017, Table 1", "snail": "Mishra et al. 2018, Table 1",
           "metanet": "Munkhdalai & Yu 2017, Table 1", "fomaml": "Finn et al. 2017, Table 1",
           "maml_plus_plus": "Antoniou et al. 2019, Table 1", "meta_sgd": "Li et al. 2017, Table 1",
           "anil": "Raghu et al. 2020, Table 2", "reptile": "Nichol et al. 2018, Table 2 (transductive)"}  # fmt: skip


def variant_setting(setting: str, variant: str | None) -> str:
    """``setting``, or ``<setting>_<variant>``: how a config's file and its run's folder name a variant."""
    return f"{setting}_{variant}" if variant else setting


def config_path(learner: str, setting: str, variant: str | None = None) -> Path:
    """A learner's Omniglot config: ``omniglot_<setting>.yaml``, or ``omniglot_<setting>_<variant>.yaml``."""
    return REPO / "configs" / learner / f"omniglot_{variant_setting(setting, variant)}.yaml"


def run_folder(learner: str, setting: str, args: argparse.Namespace) -> Path:
    """Where a run logs: ``<out>/logs/<learner>_<setting>[_<variant>]``."""
    return args.out / "logs" / f"{learner}_{variant_setting(setting, args.variant)}"


def fit_command(learner: str, setting: str, minutes: int, args: argparse.Namespace) -> list[str]:
    """The ``lit-meta fit`` command of a run: the config, the data, the budget and the ``--override`` values."""
    config = config_path(learner, setting, args.variant)
    save_dir = run_folder(learner, setting, args)
    data = data_config(config)
    dataset_kwargs = {**(data.get("dataset_kwargs") or {}), "cache_dir": str(args.cache)}
    if args.split:
        dataset_kwargs["split"] = args.split
    return [
        "lit-meta", "fit", "--config", str(config),
        "--data.root", str(args.data),
        "--data.dataset_kwargs", json.dumps(dataset_kwargs),
        "--data.train_episodes", str(args.val_every * data.get("meta_batch_size", 32)),
        "--trainer.max_time", f"00:{minutes // 60:02d}:{minutes % 60:02d}:00",
        "--trainer.enable_progress_bar", "false",
        "--trainer.logger.init_args.save_dir", str(save_dir),
        *(["--data.val_episodes", str(args.val_episodes)] if args.val_episodes else []),
        *(["--data.test_episodes", str(args.test_episodes)] if args.test_episodes else []),
        *(["--trainer.max_steps", str(args.max_steps)] if args.max_steps else []),
        *(argument for key, value in args.override or [] for argument in (f"--{key}", value)),
    ]  # fmt: skip


def run(learner: str, setting: str, minutes: int, args: argparse.Namespace) -> dict:
    save_dir = run_folder(learner, setting, args)
    command = fit_command(learner, setting, minutes, args)
    resumed = resume_arguments(save_dir, command) if args.resume else None
    if resumed is not None:
        command += ["--ckpt_path", resumed["checkpoint"], "--trainer.callbacks.init_args.dirpath", resumed["dirpath"]]
        part = f"version_{version_number(log_versions(save_dir)[-1]) + 1}"  # the folder Lightning logs this part in
        (save_dir / RESUMES).write_text(json.dumps({**resumed_from(save_dir), part: resumed["step"]}))
    start = time.perf_counter()
    env = allocator_environment(args.allocator)
    if args.threads:
        env = {**env, "OMP_NUM_THREADS": str(args.threads)}
    completed = subprocess.run(command, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if completed.returncode != 0:
        sys.stderr.write(completed.stderr[-3000:])
        raise SystemExit(f"{shlex.join(command)} failed")
    result = {
        **read_run(save_dir),
        "learner": learner,
        "setting": setting,
        "variant": args.variant,
        "minutes": minutes,
        "allocator": args.allocator,
        "wall_s": wall + (resumed["earlier"]["wall_s"] if resumed else 0.0),
        "command": shlex.join(command),
    }
    if resumed is not None:
        result["resumed"] = {
            "from_step": resumed["step"],
            "earlier_command": resumed["earlier"]["command"],
            "earlier_steps": resumed["earlier"]["steps"],
            "redone_points_equal": redone_points_equal(save_dir),
        }
    (save_dir / "result.json").write_text(json.dumps(result, indent=1))
    return result


RESUMES = "resumes.json"  # in a run's folder: {Lightning log folder: the global step its part resumed from}


def read_metrics(version: Path) -> list[dict]:
    with open(version / "metrics.csv") as file:
        return list(csv.DictReader(file))


def resumed_from(save_dir: Path) -> dict[str, int]:
    path = save_dir / RESUMES
    return json.loads(path.read_text()) if path.is_file() else {}


def joined(save_dir: Path, parts: list[Path]) -> dict[int, str]:
    """The validation points (step -> accuracy as logged) of ``parts`` joined into one run.

    A part that resumed from the checkpoint of global step ``g`` replaces the earlier points after ``g``:
    the steps after the checkpoint were trained again. (Lightning logs a run resumed from a checkpoint
    saved after an epoch's validation one step higher than the uninterrupted run: 11,600 for 11,599.)
    """
    starts = resumed_from(save_dir)
    points: dict[int, str] = {}
    for version in parts:
        if version.name in starts:
            points = {step: acc for step, acc in points.items() if step <= starts[version.name]}
        points.update((int(r["step"]), r["val/acc"]) for r in read_metrics(version) if r.get("val/acc"))
    return points


def read_run(save_dir: Path) -> dict:
    """Test accuracy, training steps and validation curve of the run logged under ``save_dir``.

    The test is the newest part's; the curve joins the parts (:func:`joined`).
    """
    parts = log_versions(save_dir)
    newest = read_metrics(parts[-1])
    test = next(r for r in newest if r.get("test/acc"))
    return {
        "acc": 100 * float(test["test/acc"]),
        "ci95": 100 * float(test["test/acc_ci95"]),
        "episodes": int(float(test["test/episodes"])),
        # The test is logged at the step training ended on; the last training loss may be logged up to
        # log_every_n_steps earlier, which is all a run without validation has besides.
        # A part resumed at its step budget trains nothing and logs only its test.
        "steps": max(
            [int(test["step"]), *(int(r["step"]) + 1 for r in newest if r.get("train/loss") or r.get("val/acc"))]
        ),
        "curve": [(step, float(acc)) for step, acc in sorted(joined(save_dir, parts).items())],
    }


def redone_points_equal(save_dir: Path) -> bool | None:
    """Whether the newest part's validations of the steps it trained again equal the earlier parts' (bitwise resume).

    The earlier points after the checkpoint are paired with the newest part's at the same step, or all at one
    step higher where Lightning logs the resumed run so (a checkpoint saved after an epoch's validation):
    whichever offset pairs more of them. An earlier point the newest part has no counterpart for (the
    validation a time budget ends a run with, between two regular ones) is not compared. ``None`` when the
    newest part did not resume or no earlier validation came after its checkpoint.
    """
    *earlier, newest = log_versions(save_dir)
    start = resumed_from(save_dir).get(newest.name)
    if start is None:
        return None
    after = joined(save_dir, [newest])
    before = [(step, acc) for step, acc in sorted(joined(save_dir, earlier).items()) if step > start]
    pairs = max(
        ([(acc, after[step + offset]) for step, acc in before if step + offset in after] for offset in (1, 0)),
        key=len,
    )
    return all(a == b for a, b in pairs) if pairs else None


def resume_arguments(save_dir: Path, command: list[str]) -> dict:
    """The checkpoint to continue the run under ``save_dir`` from, checked against the earlier part's command.

    Raises:
        SystemExit: there is no earlier run or checkpoint, or the earlier part ran another command
            (other than in its time or step budget): its episode stream or hyperparameters would not continue.
    """
    record = save_dir / "result.json"
    checkpoints = sorted(save_dir.glob("lightning_logs/*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
    if not record.is_file() or not checkpoints:
        raise SystemExit(f"--resume: no finished run with a last.ckpt under {save_dir}")
    earlier = json.loads(record.read_text())
    if differing := resume_differences(command, shlex.split(earlier["command"])):
        raise SystemExit(f"--resume: {save_dir} ran another command; differing arguments: {differing}")
    checkpoint = checkpoints[-1]
    step = checkpoint_step(checkpoint)
    return {"checkpoint": str(checkpoint), "dirpath": str(checkpoint.parent), "step": step, "earlier": earlier}


def data_config(config: Path) -> dict:
    """The ``data`` section of a config (its dataset_kwargs are kept when the cache folder is added)."""
    import yaml

    return yaml.safe_load(config.read_text())["data"]


def omniglot_kwarg(config: Path, name: str):
    """A keyword argument of the Omniglot dataset as a config sets it, or the dataset's default."""
    import inspect

    from lit_meta.data.datasets.omniglot import Omniglot

    kwargs = data_config(config).get("dataset_kwargs") or {}
    return kwargs.get(name, inspect.signature(Omniglot).parameters[name].default)


def split_text(config: Path, split: str | None = None) -> str:
    """The Omniglot split (``split`` in place of the config's, when given) and rotations, as the report shows them."""
    rotations = omniglot_kwarg(config, "rotations")
    turned = "no rotations" if list(rotations) == [0] else f"rotations {', '.join(map(str, rotations))}"
    return f"{split or omniglot_kwarg(config, 'split')}, {turned}"


NOT_VALIDATED = "never validated (e.g. a split without validation characters): the final weights are tested"


def curve_status(curve: list[tuple[int, float]]) -> str | None:
    """``"still rising"`` when the best validation accuracy came in the last fifth of the validated steps.

    A curve of two to four points is still rising when its last point is its best; a single point
    cannot say whether the curve has flattened, and the status says so.
    """
    if not curve:
        return None
    if len(curve) == 1:
        return "one validation point: too short to tell whether the curve has flattened"
    if len(curve) < 5:
        return "still rising" if curve[-1][1] >= max(acc for _, acc in curve) else None
    best_step = max(curve, key=lambda point: point[1])[0]
    return "still rising" if best_step >= curve[-1][0] - (curve[-1][0] - curve[0][0]) / 5 else None


def config_max_steps(learner: str, setting: str, variant: str | None = None) -> int | None:
    """The ``trainer.max_steps`` of a learner's Omniglot config for ``setting`` (of its ``variant``, if given)."""
    import yaml

    config = yaml.safe_load(config_path(learner, setting, variant).read_text())
    return (config.get("trainer") or {}).get("max_steps")


def with_projection(status: str | None, r: dict) -> str | None:
    """A still-rising status gets the projected budget: the config's ``trainer.max_steps`` at this run's pace.

    The pace is the time the run took over its steps: the ``--minutes`` budget, or the run's wall time
    (its final test included) where ``--max-steps`` ended it sooner.
    """
    if status != "still rising":
        return status
    max_steps = config_max_steps(r["learner"], r["setting"], r.get("variant"))
    if not max_steps or max_steps <= r["steps"]:
        return status
    hours = max_steps * min(r["minutes"] * 60, r["wall_s"]) / r["steps"] / 3600
    return f"{status}; the config's {max_steps:,} steps would take ~{hours:.1f} h at this pace"


def step_budget(r: dict, args: argparse.Namespace) -> int | None:
    """The steps that bound a run: ``--max-steps``, an overridden ``trainer.max_steps`` or the config's."""
    overridden = dict(args.override or []).get("trainer.max_steps")
    steps = args.max_steps or overridden or config_max_steps(r["learner"], r["setting"], r.get("variant"))
    return int(steps) if steps else None


def trained_steps(r: dict, args: argparse.Namespace) -> int:
    """The run's steps, at most its step budget.

    A part resumed from a checkpoint saved after an epoch's validation logs its steps one higher than it
    trains them (Lightning's numbering), so read from its log a run that reached its budget would count one
    or two steps past it; the trainer never trains past ``max_steps``.
    """
    budget = step_budget(r, args)
    return min(r["steps"], budget) if budget else r["steps"]


def record(r: dict, args: argparse.Namespace) -> None:
    """One ``accuracy`` line for ``report.py``: the test accuracy, the paper's and the validation curve."""
    paper = PAPER[r["learner"]][SETTINGS.index(r["setting"])]
    variant = r.get("variant")
    config = config_path(r["learner"], r["setting"], variant)
    name = NAMES[r["learner"]] + (f", {variant} config" if variant else "")
    figures = {
        "learner": name, "setting": f"omniglot {r['setting']}",
        "split": split_text(config, args.split),
        "acc": round(r["acc"], 2), "ci95": round(r["ci95"], 2), "test_episodes": r["episodes"],
        "train_steps": trained_steps(r, args), "wall_min": round(r["wall_s"] / 60, 1),
        "paper": None if paper is None else {"acc": paper, "source": SOURCES[r["learner"]]},
        "curve": [[step, round(100 * acc, 2), None] for step, acc in r["curve"]],
        "status": with_projection(curve_status(r["curve"]), r) if r["curve"] else NOT_VALIDATED,
        "note": f"allocator {args.allocator}, threads={args.threads or 'default'}; lit-meta command: {r['command']}",
    }  # fmt: skip
    if args.split and args.split != omniglot_kwarg(config, "split"):
        figures["headline"] = False  # the summary stays on the config's split
    if args.override:
        figures["overrides"] = dict(args.override)
        figures["headline"] = False  # the summary stays on the configs as shipped
    if "resumed" in r:
        resumed = r["resumed"]
        figures["resumed"] = resumed
        figures["note"] += f"; {resumed_note(resumed)}; wall time counts both parts"
    # Both bound the run: a run can end on the config's steps well inside its minutes.
    steps = step_budget(r, args)
    budget = {"minutes": r["minutes"], **({"steps": steps} if steps else {})}
    budget.update(device_budget(shlex.split(r["command"])))
    record_result("omniglot_accuracy", "accuracy", figures, budget=budget)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--learners", nargs="+", default=["protonet"], choices=sorted(PAPER))
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=SETTINGS)
    parser.add_argument(
        "--minutes", type=int, nargs="+", default=[8],
        help="training time per setting: one value for all, or one per --settings entry",
    )  # fmt: skip
    parser.add_argument(
        "--max-steps", type=int, help="training steps at most, as well as --minutes; default: the config's max_steps"
    )
    parser.add_argument("--val-every", type=int, default=200, help="training steps between validations")
    parser.add_argument("--val-episodes", type=int, help="validation episodes; default: the config's")
    parser.add_argument("--test-episodes", type=int, help="test episodes; default: the config's (600)")
    parser.add_argument("--threads", type=int, help="intra-op threads (OMP_NUM_THREADS); default: torch's")
    parser.add_argument(
        "--allocator", choices=("glibc", "jemalloc"), default="glibc",
        help="jemalloc (preloaded, page decay off) is ~25%% faster for Conv4 on this CPU",
    )  # fmt: skip
    parser.add_argument(
        "--variant", help="run configs/<learner>/omniglot_<setting>_<VARIANT>.yaml, a second config of the setting "
        "(e.g. authors: relation_net's authors' protocol); recorded as a learner of its own",
    )  # fmt: skip
    parser.add_argument(
        "--split", help="the Omniglot split to train and test on in place of the config's (e.g. santoro: 1,200 "
        "training characters, no validation)",
    )  # fmt: skip
    parser.add_argument(
        "--override", nargs=2, action="append", metavar=("KEY", "VALUE"),
        help="a config value in place of the config's, as lit-meta's --KEY VALUE (e.g. model.init_args.lr_decay_every "
        "5000); repeatable. Such a run is recorded with its overrides and is not the summary's headline",
    )  # fmt: skip
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/lit-meta-omniglot-cache"))
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results", help="logs go in <out>/logs")
    parser.add_argument(
        "--resume", action="store_true",
        help="continue the runs under --out from their newest last.ckpt; --minutes is then the total training time",
    )  # fmt: skip
    args = parser.parse_args()
    if len(args.minutes) not in (1, len(args.settings)):
        parser.error(f"--minutes takes 1 value or one per setting ({len(args.settings)}), not {len(args.minutes)}")
    per_setting = args.minutes * len(args.settings) if len(args.minutes) == 1 else args.minutes
    minutes = dict(zip(args.settings, per_setting, strict=True))
    print("command:", shlex.join([sys.executable, *sys.argv]))
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, allocator {args.allocator}")
    print(
        "| learner | setting | test acc (95% CI) | paper | training budget | training steps "
        "| wall time (train + eval) |\n| --- | --- | --- | --- | --- | --- | --- |"
    )
    for learner in args.learners:
        for setting in args.settings:
            r = run(learner, setting, minutes[setting], args)
            record(r, args)
            paper = PAPER[learner][SETTINGS.index(setting)]
            print(
                f"| {learner} | {setting} | {r['acc']:.2f} ± {r['ci95']:.2f} | {paper} | {r['minutes']} min "
                f"| {r['steps']} | {r['wall_s'] / 60:.1f} min |",
                flush=True,
            )


if __name__ == "__main__":
    main()
