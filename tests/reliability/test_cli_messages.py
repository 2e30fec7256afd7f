"""Issue 17, cases 6, 7, 16, 18, 19: what the ``lit-meta`` command line says, and how often.

Errors are one line naming the config key and the fix (a traceback only with ``--debug``),
an unknown learner lists the registered ones, log noise is said once, the console script
imports from the working folder, and ``--help`` lists every subcommand. The errors come
before any training, so each run takes a few seconds.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import lightning as L
import pytest
import yaml
from _pytest.config import parse_warning_filter

from lit_meta import ProtoNet
from lit_meta.backbones import Conv4
from lit_meta.callbacks import RetainFreedCPUMemory
from lit_meta.cli import SUBCOMMANDS, main
from lit_meta.data.datamodule import EpisodicDataModule
from lit_meta.errors import EpisodeConfigError
from lit_meta.learners.registry import registered_learners

from ..conftest import two_spawned_cpu_processes

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "configs" / "quickstart.yaml"
LIT_META = Path(sys.executable).with_name("lit-meta")
GLYPHS = {"num_classes": 60, "drawings_per_class": 6}


def error_line(err: str) -> str:
    """The one line of stderr besides Lightning's own "Seed set to 0" (printed before parsing ends)."""
    lines = [line for line in err.splitlines() if line and not line.startswith("Seed set to")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def tiny_run(root: Path) -> list[str]:
    """A quickstart fit of a few steps on small glyphs, through the real command line."""
    return [
        "fit",
        f"--config={QUICKSTART}",
        f"--data.root={root}",
        f"--data.dataset_kwargs={GLYPHS}",
        "--data.train_ways=5",
        "--data.queries=2",
        "--data.train_queries=2",
        "--data.train_episodes=4",
        "--data.val_episodes=2",
        "--data.test_episodes=2",
        "--data.eval_meta_batch_size=2",
        "--trainer.max_epochs=1",
        f"--trainer.logger.init_args.save_dir={root}",
    ]


def test_case_06_a_refused_value_is_one_line_naming_its_key(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fit", f"--config={QUICKSTART}", "--data.ways=0"]) == 2
    line = error_line(capsys.readouterr().err)
    assert line == "lit-meta: error: data.ways=0: an episode must discriminate at least 2 classes; set ways >= 2"

    assert main(["fit", f"--config={QUICKSTART}", "--data.ways=abc"]) == 2  # refused by jsonargparse
    assert error_line(capsys.readouterr().err) == "lit-meta: error: data.ways=abc: expected int"

    assert main(["fit", f"--config={QUICKSTART}", "--model.distance=manhattan"]) == 2
    assert error_line(capsys.readouterr().err) == (
        "lit-meta: error: model.distance=manhattan: expected one of 'euclidean', 'cosine'"
    )


def test_case_06_debug_keeps_the_traceback() -> None:
    with pytest.raises(ValueError, match="ways=0") as raised:
        main(["fit", f"--config={QUICKSTART}", "--data.ways=0", "--debug"])
    assert isinstance(raised.value.__cause__, EpisodeConfigError)


def test_case_06_the_console_command_prints_one_line_and_exits_2(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "lit_meta.cli", "fit", f"--config={QUICKSTART}", "--data.ways=0"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        env={**os.environ, "LIT_META_DEBUG": ""},
    )
    assert done.returncode == 2
    assert error_line(done.stderr) == (
        "lit-meta: error: data.ways=0: an episode must discriminate at least 2 classes; set ways >= 2"
    )


def test_case_07_an_unknown_learner_lists_the_registered_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    learners = sorted({cls.__name__ for cls in registered_learners().values()})
    assert main(["fit", f"--config={QUICKSTART}", "--model=lit_meta.MAMLL"]) == 2
    line = error_line(capsys.readouterr().err)
    assert line.startswith("lit-meta: error: model: unknown learner 'lit_meta.MAMLL'. Did you mean 'lit_meta.MAML'?")
    assert f"Registered learners: {', '.join(learners)} " in line

    config = yaml.safe_load(QUICKSTART.read_text())
    config["model"]["class_path"] = "lit_meta.ProtoNett"
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["fit", f"--config={path}"]) == 2
    assert "unknown learner 'lit_meta.ProtoNett'. Did you mean 'lit_meta.ProtoNet'?" in error_line(
        capsys.readouterr().err
    )

    assert main(["fit", f"--config={QUICKSTART}", "--model=my_project.LabelSmoothingMAML"]) == 2
    assert error_line(capsys.readouterr().err) == (
        "lit-meta: error: model: cannot import 'my_project.LabelSmoothingMAML': no module 'my_project' in the "
        "current folder or on PYTHONPATH; run lit-meta from the folder that holds it or add that folder to PYTHONPATH"
    )


def test_case_16a_the_malloc_message_is_said_once_per_process(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(RetainFreedCPUMemory, "announced", False)
    monkeypatch.setattr("lit_meta.glibc_malloc.retain_freed_memory", lambda: True)
    monkeypatch.setattr("lit_meta.glibc_malloc.release_freed_memory", lambda: True)
    trainer = L.Trainer(accelerator="cpu", logger=False)
    with caplog.at_level(logging.INFO):
        for stage in ("fit", "test", "fit"):
            callback = RetainFreedCPUMemory()
            callback.setup(trainer, None, stage)  # type: ignore[arg-type]
            callback.teardown(trainer, None, stage)  # type: ignore[arg-type]
    assert sum("glibc malloc keeps freed memory" in r.getMessage() for r in caplog.records) == 1


def test_case_16b_testing_after_fit_replaces_no_callback(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    datamodule = EpisodicDataModule(
        "glyphs",
        root=str(tmp_path),
        dataset_kwargs=GLYPHS,
        ways=3,
        shots=1,
        queries=2,
        train_episodes=2,
        meta_batch_size=2,
    )
    model = ProtoNet(Conv4(in_channels=1, out_features=None, hidden_channels=8), retain_cpu_memory=True)
    trainer = L.Trainer(max_steps=1, limit_val_batches=0, logger=False, enable_checkpointing=False)
    with caplog.at_level(logging.INFO):
        trainer.fit(model, datamodule)
        trainer.test(model, datamodule)
    assert not [r for r in caplog.records if "will override existing callbacks" in r.getMessage()]
    assert sum(isinstance(c, RetainFreedCPUMemory) for c in trainer.callbacks) == 1


def test_case_16d_the_cli_uses_no_deprecated_jsonargparse_api(tmp_path: Path) -> None:
    """``config.yaml`` is written without the ``skip_none`` that jsonargparse 5.0 removes."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main([*tiny_run(tmp_path), "--trainer.max_steps=1", "--trainer.limit_val_batches=0"]) == 0
    ours = [w for w in caught if issubclass(w.category, DeprecationWarning) and "lit_meta" in w.filename]
    assert not ours, [str(w.message) for w in ours]
    (config,) = (tmp_path / "lightning_logs").glob("version_*/config.yaml")
    assert yaml.safe_load(config.read_text())["data"]["init_args"]["eval_ways"] is None  # None values kept


def test_case_16e_a_deprecation_warning_from_lit_meta_fails_the_tests(request: pytest.FixtureRequest) -> None:
    """pyproject's ``filterwarnings`` (as pytest applies them to every test, unless ``-W`` overrides them)."""
    with warnings.catch_warnings():
        for entry in request.config.getini("filterwarnings"):
            warnings.filterwarnings(*parse_warning_filter(entry, escape=False))
        with pytest.raises(DeprecationWarning):
            warnings.warn_explicit("old API", DeprecationWarning, "cli.py", 1, module="lit_meta.cli")
        warnings.warn_explicit("old API", DeprecationWarning, "x.py", 1, module="some_library")  # not ours


@pytest.mark.slow  # two spawned processes importing Lightning: ~30 s on 2 cores
def test_case_16c_ddp_logs_the_synced_metrics_without_warnings(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    datamodule = EpisodicDataModule(
        "glyphs", root=str(tmp_path), dataset_kwargs=GLYPHS, ways=3, shots=1, queries=2, val_episodes=4
    )
    model = ProtoNet(Conv4(in_channels=1, out_features=None, hidden_channels=8))
    trainer = L.Trainer(**two_spawned_cpu_processes(), logger=False, enable_progress_bar=False)
    (metrics,) = trainer.validate(model, datamodule)
    assert metrics["val/episodes"] == 4  # the 4 episodes, each once: 2 on each rank, synced
    assert "sync_dist" not in capfd.readouterr().err


@pytest.fixture
def my_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder holding ``my_project/`` (the README's subclassing example), as the working folder."""
    (tmp_path / "my_project").mkdir()
    (tmp_path / "my_project" / "__init__.py").write_text(
        "from lit_meta import MAML\n\n\nclass LabelSmoothingMAML(MAML):\n    pass\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, "my_project", raising=False)
    return tmp_path


def test_case_18_the_console_script_imports_from_the_working_folder(my_project: Path) -> None:
    if not LIT_META.is_file():
        pytest.skip(f"the lit-meta console script is not installed next to {sys.executable}")
    paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p not in ("", "."))}  # no "." in it
    fit = [LIT_META, "fit", f"--config={QUICKSTART}", "--model=my_project.LabelSmoothingMAML", "--print_config"]
    done = subprocess.run(fit, capture_output=True, text=True, cwd=my_project, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert yaml.safe_load(done.stdout)["model"]["class_path"] == "my_project.LabelSmoothingMAML"


def test_case_18_adapt_imports_from_the_working_folder(
    my_project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``main()`` as the console script runs it (``argv=None``): ``--import my_project`` finds ``./my_project``."""
    adapt = ["adapt", "--import=my_project", "--ckpt_path=missing.ckpt", "--support=s", "--query=q"]
    monkeypatch.setattr(sys, "argv", ["lit-meta", *adapt])
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(my_project))])
    assert main() == 2
    assert capsys.readouterr().err.startswith("error: checkpoint missing.ckpt does not exist")  # past the import
    assert "my_project" in sys.modules


def test_case_19_help_lists_every_subcommand_in_full(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "{fit,validate,test,predict,adapt,embed,data}" in out
    listed = " ".join(out.split("Available subcommands:", 1)[1].split())  # help lines wrap on narrow terminals
    for name, line in SUBCOMMANDS.items():
        assert f"{name} {line}" in listed
    assert "--debug" in out and "LIT_META_DEBUG=1" in out


@pytest.mark.parametrize(
    ("argv", "said"),
    [(["fitt"], "unknown subcommand 'fitt'. Did you mean 'fit'?"), ([], "no subcommand.")],
    ids=["misspelt", "none"],
)
def test_case_19_a_wrong_or_missing_subcommand_lists_all_seven(
    argv: list[str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    assert capsys.readouterr().err == (
        f"lit-meta: error: {said} Use one of fit, validate, test, predict, adapt, embed, data (lit-meta --help)\n"
    )
