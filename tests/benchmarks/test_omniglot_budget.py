"""The accuracy benchmark's record: whether the validation curve was still rising, and which split it trained on."""

from __future__ import annotations

import json
from types import ModuleType

import pytest
import torch

from ..conftest import REPO_ROOT, import_benchmark

PUBLISHED = "vinyals, rotations 0, 90, 180, 270"


@pytest.fixture(scope="module")
def budget() -> ModuleType:
    return import_benchmark("omniglot_budget")


def test_a_curve_whose_best_point_is_in_its_last_fifth_is_still_rising(budget) -> None:
    assert budget.curve_status([(100 * i, 90 + i) for i in range(1, 11)]) == "still rising"


def test_a_flattened_curve_has_no_status(budget) -> None:
    assert budget.curve_status([(100 * i, 97.0 if i == 5 else 96.0) for i in range(1, 11)]) is None


def test_a_short_curve_ending_on_its_best_point_is_still_rising(budget) -> None:
    assert budget.curve_status([(99, 89.35), (100, 89.43)]) == "still rising"
    assert budget.curve_status([(99, 89.35), (100, 88.0)]) is None


def test_a_single_point_says_it_cannot_tell(budget) -> None:
    assert "too short to tell" in budget.curve_status([(78, 65.49)])
    assert budget.curve_status([]) is None


def test_the_projected_budget_runs_at_the_pace_the_run_took(budget) -> None:
    """A run that --max-steps ended before its --minutes is projected at its own time, not the budget's."""
    run = {"learner": "reptile", "setting": "5w1s", "steps": 8000}  # the config's 100,000 steps
    stopped_by_steps = budget.with_projection("still rising", {**run, "minutes": 45, "wall_s": 30 * 60})
    assert stopped_by_steps.endswith("100,000 steps would take ~6.2 h at this pace")
    stopped_by_time = budget.with_projection("still rising", {**run, "minutes": 45, "wall_s": 47 * 60})
    assert stopped_by_time.endswith("100,000 steps would take ~9.4 h at this pace")
    assert budget.with_projection(None, {**run, "minutes": 45, "wall_s": 30 * 60}) is None


def test_a_result_names_the_split_its_config_trains_on(budget) -> None:
    configs = REPO_ROOT / "configs"
    assert budget.split_text(configs / "protonet" / "omniglot_5w1s.yaml") == PUBLISHED
    assert budget.split_text(configs / "siamese" / "omniglot_5w1s.yaml") == PUBLISHED
    assert budget.split_text(configs / "siamese" / "omniglot_koch_5w1s.yaml") == "lake, no rotations"
    # --split santoro: the papers' 1,200 training characters in place of the config's published split
    assert budget.split_text(configs / "matching_net" / "omniglot_5w1s.yaml", "santoro") == (
        "santoro, rotations 0, 90, 180, 270"
    )


def write_part(save_dir, version: int, rows: list[dict]) -> None:
    """One part of a run as Lightning's CSV logger leaves it: ``lightning_logs/version_N/metrics.csv``."""
    folder = save_dir / "lightning_logs" / f"version_{version}"
    folder.mkdir(parents=True)
    keys = ["step", "train/loss", "val/acc", "test/acc", "test/acc_ci95", "test/episodes"]
    lines = [",".join(keys)] + [",".join(str(row.get(key, "")) for key in keys) for row in rows]
    (folder / "metrics.csv").write_text("\n".join(lines) + "\n")


def test_a_resumed_run_joins_its_parts_and_tests_the_newest(budget, tmp_path) -> None:
    test = {"step": 0, "test/acc": 0.5, "test/acc_ci95": 0.01, "test/episodes": 600}
    write_part(tmp_path, 0, [{"step": 99, "train/loss": 1}, {"step": 99, "val/acc": 0.8}, {"step": 199, "val/acc": 0.9},
                             {"step": 299, "val/acc": 0.85}, {"step": 330, "train/loss": 1}, test])  # fmt: skip
    # Resumed from the checkpoint of step 200 (saved after the validation logged at 199): Lightning logs the
    # redone validation of step 299 at 300.
    newest_test = {**test, "test/acc": 0.97}
    write_part(tmp_path, 1, [{"step": 300, "val/acc": 0.85}, {"step": 400, "val/acc": 0.95}, newest_test])
    (tmp_path / budget.RESUMES).write_text(json.dumps({"version_1": 200}))
    run = budget.read_run(tmp_path)
    assert run["curve"] == [(99, 0.8), (199, 0.9), (300, 0.85), (400, 0.95)]
    assert run["acc"] == pytest.approx(97.0) and run["steps"] == 401
    assert budget.redone_points_equal(tmp_path) is True


def test_a_run_resumed_at_its_step_budget_reports_its_new_test(budget, tmp_path) -> None:
    """Resumed at its step budget (to test the best checkpoint again, under a changed config), the newest part
    trains nothing and logs only its test: the run keeps its steps and its curve, and reports that test."""
    write_part(tmp_path, 0, [{"step": 99, "val/acc": 0.8}, {"step": 199, "val/acc": 0.9},
                             {"step": 199, "train/loss": 1},
                             {"step": 200, "test/acc": 0.5, "test/acc_ci95": 0.01, "test/episodes": 600}])  # fmt: skip
    write_part(tmp_path, 1, [{"step": 200, "test/acc": 0.97, "test/acc_ci95": 0.01, "test/episodes": 2000}])
    (tmp_path / budget.RESUMES).write_text(json.dumps({"version_1": 200}))
    run = budget.read_run(tmp_path)
    assert run["curve"] == [(99, 0.8), (199, 0.9)]
    assert (run["acc"], run["episodes"], run["steps"]) == (pytest.approx(97.0), 2000, 200)


def test_a_resume_that_redid_a_validation_differently_says_so(budget, tmp_path) -> None:
    write_part(tmp_path, 0, [{"step": 199, "val/acc": 0.9}, {"step": 299, "val/acc": 0.85}])
    write_part(tmp_path, 1, [{"step": 300, "val/acc": 0.86}, {"step": 400, "val/acc": 0.95}])
    (tmp_path / budget.RESUMES).write_text(json.dumps({"version_1": 200}))
    assert budget.redone_points_equal(tmp_path) is False
    (tmp_path / budget.RESUMES).write_text(json.dumps({"version_1": 300}))
    assert budget.redone_points_equal(tmp_path) is None  # no earlier validation after step 300
    (tmp_path / budget.RESUMES).unlink()
    assert budget.redone_points_equal(tmp_path) is None  # the newest part did not resume


def test_a_time_budget_validation_one_step_after_a_regular_one_is_not_paired_with_it(budget, tmp_path) -> None:
    """The earlier part validated at 2,399 and, as its time ran out, at 2,400. Resumed from the checkpoint of
    step 2,200, the newest part logs its 2,299 and 2,399 validations at 2,300 and 2,400: its 2,400 is the
    earlier 2,399, not the earlier 2,400 (a MetaNet run, whose redone validations were equal bit for bit)."""
    write_part(tmp_path, 0, [{"step": 2199, "val/acc": 0.94}, {"step": 2299, "val/acc": 0.9325},
                             {"step": 2399, "val/acc": 0.9336}, {"step": 2400, "val/acc": 0.9343}])  # fmt: skip
    write_part(tmp_path, 1, [{"step": 2300, "val/acc": 0.9325}, {"step": 2400, "val/acc": 0.9336},
                             {"step": 2500, "val/acc": 0.9495}])  # fmt: skip
    (tmp_path / budget.RESUMES).write_text(json.dumps({"version_1": 2200}))
    assert budget.redone_points_equal(tmp_path) is True


def earlier_run(save_dir, command: str) -> None:
    checkpoints = save_dir / "lightning_logs" / "version_0" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save({"global_step": 200}, checkpoints / "last.ckpt")
    (save_dir / "result.json").write_text(json.dumps({"command": command, "steps": 331, "wall_s": 60.0}))


def test_resume_continues_from_the_last_checkpoint_into_its_folder(budget, tmp_path) -> None:
    earlier_run(tmp_path, "lit-meta fit --config /elsewhere/configs/siamese/omniglot_5w1s.yaml --data.root D "
                          "--trainer.max_time 00:00:10:00")  # fmt: skip
    now = ["lit-meta", "fit", "--config", "/here/configs/siamese/omniglot_5w1s.yaml", "--data.root", "D",
           "--trainer.max_time", "00:00:20:00"]  # fmt: skip
    resumed = budget.resume_arguments(tmp_path, now)
    assert resumed["step"] == 200 and resumed["checkpoint"].endswith("version_0/checkpoints/last.ckpt")
    assert resumed["dirpath"] == str(tmp_path / "lightning_logs" / "version_0" / "checkpoints")


def test_resume_refuses_another_command_or_a_missing_run(budget, tmp_path) -> None:
    with pytest.raises(SystemExit, match="no finished run"):
        budget.resume_arguments(tmp_path, ["lit-meta", "fit", "--config", "c.yaml"])
    earlier_run(tmp_path, "lit-meta fit --config configs/siamese/omniglot_5w1s.yaml --data.train_episodes 200")
    other = ["lit-meta", "fit", "--config", "configs/siamese/omniglot_5w1s.yaml", "--data.train_episodes", "100"]
    with pytest.raises(SystemExit, match=r"data\.train_episodes"):
        budget.resume_arguments(tmp_path, other)


def test_a_validation_that_only_the_earlier_part_ran_is_not_compared(budget, tmp_path) -> None:
    """The earlier part's time budget ended it with a validation at step 330, between the regular ones; the
    resumed part never validates there, so only the redone regular validations (299 logged as 300) count."""
    write_part(
        tmp_path, 0, [{"step": 199, "val/acc": 0.9}, {"step": 299, "val/acc": 0.85}, {"step": 330, "val/acc": 0.7}]
    )
    write_part(tmp_path, 1, [{"step": 300, "val/acc": 0.85}, {"step": 400, "val/acc": 0.95}])
    (tmp_path / budget.RESUMES).write_text(json.dumps({"version_1": 200}))
    assert budget.redone_points_equal(tmp_path) is True


def test_an_override_reaches_the_command_and_keeps_the_run_off_the_summary(budget, tmp_path, monkeypatch) -> None:
    args = budget.argparse.Namespace(
        split=None, data=tmp_path, cache=tmp_path / "cache", out=tmp_path, val_every=200, val_episodes=None,
        test_episodes=None, max_steps=None, override=[["model.init_args.lr_decay_every", "5000"]],
        allocator="glibc", threads=1, variant=None,
    )  # fmt: skip
    command = budget.fit_command("matching_net", "5w1s", 60, args)
    assert command[-2:] == ["--model.init_args.lr_decay_every", "5000"]
    recorded, budgets = [], []

    def record_result(stem, kind, figures, *, budget) -> None:
        recorded.append(figures)
        budgets.append(budget)

    monkeypatch.setattr(budget, "record_result", record_result)
    run = {"learner": "matching_net", "setting": "5w1s", "acc": 97.5, "ci95": 0.3, "episodes": 600, "steps": 20_000,
           "wall_s": 3600.0, "minutes": 60, "curve": [(999, 0.97)], "command": " ".join(command)}  # fmt: skip
    budget.record(run, args)
    assert recorded[0]["overrides"] == {"model.init_args.lr_decay_every": "5000"}
    assert recorded[0]["headline"] is False
    assert budgets[0] == {"minutes": 60, "steps": 20_000}  # the config's max_steps bound it too
    args.override = None
    budget.record(run, args)
    assert "overrides" not in recorded[1] and recorded[1].get("headline", True)


def test_a_variant_runs_its_second_config_and_is_a_learner_of_its_own(budget, tmp_path, monkeypatch) -> None:
    """``--variant authors`` runs ``omniglot_5w1s_authors.yaml`` into a folder of its own, and its record is a
    summary row of its own (a learner name of its own), bounded by that config's max_steps."""
    args = budget.argparse.Namespace(
        split=None, data=tmp_path, cache=tmp_path / "cache", out=tmp_path, val_every=200, val_episodes=None,
        test_episodes=None, max_steps=None, override=None, allocator="glibc", threads=1, variant="authors",
    )  # fmt: skip
    command = budget.fit_command("relation_net", "5w1s", 60, args)
    config = REPO_ROOT / "configs" / "relation_net" / "omniglot_5w1s_authors.yaml"
    assert command[command.index("--config") + 1] == str(config)
    save_dir = command[command.index("--trainer.logger.init_args.save_dir") + 1]
    assert save_dir == str(tmp_path / "logs" / "relation_net_5w1s_authors")
    recorded, budgets = [], []

    def record_result(stem, kind, figures, *, budget) -> None:
        recorded.append(figures)
        budgets.append(budget)

    monkeypatch.setattr(budget, "record_result", record_result)
    run = {"learner": "relation_net", "setting": "5w1s", "variant": "authors", "acc": 98.5, "ci95": 0.3,
           "episodes": 1000, "steps": 20_000, "wall_s": 3600.0, "minutes": 60, "curve": [(999, 0.97), (1999, 0.98)],
           "command": " ".join(command)}  # fmt: skip
    budget.record(run, args)
    assert recorded[0]["learner"] == "RelationNet, authors config"
    assert recorded[0].get("headline", True) and recorded[0]["paper"]["acc"] == 99.6
    assert recorded[0]["split"] == PUBLISHED
    assert budgets[0] == {"minutes": 60, "steps": 1_000_000}
    assert "1,000,000 steps would take" in recorded[0]["status"]


def test_each_paper_figure_is_the_one_its_config_cites(budget) -> None:
    """The summary's paper column and the configs' comments must not drift apart."""
    for learner, figures in budget.PAPER.items():
        assert learner in budget.NAMES and learner in budget.SOURCES
        for setting, figure in zip(budget.SETTINGS, figures, strict=True):
            if figure is None:
                continue
            config = REPO_ROOT / "configs" / learner / f"omniglot_{setting}.yaml"
            comments = "".join(line for line in config.read_text().splitlines(True) if line.startswith("#"))
            assert any(f"{figure:.{digits}f}" in comments for digits in (1, 2)), (config, figure)


def test_a_resumed_run_is_recorded_at_most_at_its_step_budget(budget, tmp_path, monkeypatch) -> None:
    """A part resumed after an epoch's validation logs its steps one higher (Lightning's numbering): a run
    read as 100,002 steps trained the config's 100,000, and is recorded so; a run short of its budget keeps
    its own count."""
    args = budget.argparse.Namespace(
        split=None, data=tmp_path, cache=tmp_path / "cache", out=tmp_path, val_every=1000, val_episodes=None,
        test_episodes=None, max_steps=None, override=None, allocator="glibc", threads=1, variant=None,
    )  # fmt: skip
    recorded = []
    monkeypatch.setattr(budget, "record_result", lambda stem, kind, figures, *, budget: recorded.append(figures))
    run = {"learner": "reptile", "setting": "5w1s", "acc": 96.5, "ci95": 0.3, "episodes": 600, "steps": 100_002,
           "wall_s": 3600.0, "minutes": 300, "curve": [(99_001, 0.97)], "command": "lit-meta fit"}  # fmt: skip
    budget.record(run, args)
    assert recorded[0]["train_steps"] == 100_000  # configs/reptile/omniglot_5w1s.yaml: max_steps 100000
    args.max_steps = 45_000
    budget.record({**run, "steps": 45_002}, args)
    budget.record({**run, "steps": 30_000}, args)
    assert [r["train_steps"] for r in recorded[1:]] == [45_000, 30_000]
