"""``lit-meta validate|test|predict --ckpt_path``: evaluation of a trained checkpoint in a new process."""

from __future__ import annotations

import pytest

from lit_meta.cli import MetaLearningCLI, main

from .test_resume import LEARNERS, fit, write_config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("trained")
    config = write_config(root, LEARNERS["maml"], num_workers=0)
    version = fit(config, root / "logs")
    return config, version / "checkpoints" / "last.ckpt"


@pytest.mark.parametrize("subcommand", ["validate", "test", "predict"])
def test_evaluation_subcommands_load_the_checkpoint(trained, subcommand, tmp_path, monkeypatch):
    config, checkpoint = trained
    monkeypatch.chdir(tmp_path)
    args = [subcommand, "--config", str(config), "--ckpt_path", str(checkpoint), "--trainer.logger", "false"]
    for _ in range(2):  # a second evaluation in the same folder must not trip over the first one's files
        cli = MetaLearningCLI(args=args)
    metrics = cli.trainer.callback_metrics
    if subcommand == "validate":
        assert {"val/acc", "val/acc_ci95", "val/episodes"} <= set(metrics)
    if subcommand == "test":
        assert metrics["test/episodes"] == 2 and 0 <= metrics["test/acc"] <= 1
    if subcommand == "predict":
        (predictions,) = cli.trainer.predict_loop.predictions
        assert predictions.labels.shape == (2, 6) and predictions.labels.max() < 3  # 2 episodes x 3 ways x 2 queries
        assert len((tmp_path / "predictions.csv").read_text().splitlines()) == 1 + 2 * 6  # written by default


def test_test_subcommand_prints_accuracy_with_its_interval(trained, tmp_path, monkeypatch, caplog):
    config, checkpoint = trained
    monkeypatch.chdir(tmp_path)
    assert main(["test", "--config", str(config), "--ckpt_path", str(checkpoint), "--trainer.logger", "false"]) == 0
    assert any("test/acc" in r.message and "95% CI over 2 episodes" in r.message for r in caplog.records)
