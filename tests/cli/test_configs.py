"""Every YAML under ``configs/`` through the real ``lit-meta fit``, on embedded data.

Each config runs in-process with ``fast_dev_run``: jsonargparse validates the
whole file (a wrong key anywhere fails), then one training, validation and test
batch run and the test summary is printed. Omniglot configs run on the
procedural glyphs (also ``[1, 28, 28]`` images, 1,000 meta-train classes of 20
drawings), so nothing is downloaded; sinusoid configs run as they are.
"""

from __future__ import annotations

import importlib
import inspect
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from lit_meta.cli import init_arguments, main
from lit_meta.data.datamodule import EpisodicDataModule
from lit_meta.data.datasets import DATASETS, Omniglot, ProceduralGlyphs
from lit_meta.learners import registered_learners

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
CONFIGS = sorted(CONFIG_DIR.rglob("*.yaml"))
QUICKSTART = CONFIG_DIR / "quickstart.yaml"
OMNIGLOT_DRAWINGS = 20
"""Drawings of each Omniglot character, so at most ``shots + queries`` per class of an episode."""

# Reptile adapts for 50 steps per evaluated 20-way episode: 10-25 s each on 2 cores.
SLOW = {"reptile/omniglot_20w1s.yaml", "reptile/omniglot_20w5s.yaml"}

# One batch of each split runs under fast_dev_run; small batches and one query per class
# keep a run to a second or two. The episodes' shapes are checked without running them.
SMALL_RUN = [
    "--trainer.fast_dev_run=1",
    "--data.meta_batch_size=2",
    "--data.eval_meta_batch_size=1",
    "--data.queries=1",
    "--data.train_episodes=2",
    "--data.val_episodes=2",
    "--data.test_episodes=2",
]


def load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def data_args(config: dict[str, Any]) -> dict[str, Any]:
    """The datamodule's arguments, whether ``data:`` holds them directly or under ``init_args``."""
    data = config.get("data") or {}
    return data.get("init_args", data)


def config_id(path: Path) -> str:
    return path.relative_to(CONFIG_DIR).as_posix()


OMNIGLOT_CONFIGS = [path for path in CONFIGS if data_args(load(path)).get("dataset") == "omniglot"]


@pytest.fixture(scope="session")
def glyph_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One glyph cache for the session: the images are generated once (~3 s), not per config."""
    root = tmp_path_factory.mktemp("glyphs")
    ProceduralGlyphs(root=str(root)).prepare()
    return root


def glyph_kwargs(data: dict[str, Any]) -> dict[str, Any]:
    """The config's ``dataset_kwargs`` for Omniglot, checked, less those the glyphs do not take.

    ``dataset_kwargs`` is a free dict that jsonargparse cannot check, so its keys are
    checked against Omniglot here.
    """
    kwargs = data.get("dataset_kwargs") or {}
    inspect.signature(Omniglot).bind(**kwargs)
    glyph_parameters = inspect.signature(ProceduralGlyphs).parameters
    return {key: value for key, value in kwargs.items() if key in glyph_parameters}


def omniglot_overrides(config: dict[str, Any], glyph_root: Path) -> list[str]:
    """Command-line overrides that run an Omniglot config on the glyphs, quickly; none for other datasets."""
    data = data_args(config)
    if data.get("dataset") != "omniglot":
        return []
    kwargs = glyph_kwargs(data)
    overrides = [
        "--data.dataset=glyphs",
        f"--data.root={glyph_root}",
        f"--data.dataset_kwargs={json.dumps(kwargs) if kwargs else 'null'}",
    ]
    # MAML's execution="auto" times both paths on the first batch, ~20 s for a 20-way Conv4
    # meta-batch on 2 cores; the sinusoid configs, where that is cheap, keep it.
    module, class_name = config["model"]["class_path"].rsplit(".", 1)
    if "execution" in init_arguments(getattr(importlib.import_module(module), class_name)):
        overrides.append("--model.init_args.execution=loop")
    return overrides


@pytest.mark.parametrize(
    "path",
    [
        pytest.param(path, id=config_id(path), marks=[pytest.mark.slow] if config_id(path) in SLOW else [])
        for path in CONFIGS
    ],
)
def test_config_runs(
    path: Path,
    glyph_root: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = load(path)
    monkeypatch.chdir(tmp_path)  # the default CSV logger writes to the working directory
    args = [
        "fit",
        f"--config={path}",
        *omniglot_overrides(config, glyph_root),
        *SMALL_RUN,
        f"--trainer.default_root_dir={tmp_path}",
    ]
    with caplog.at_level(logging.INFO):
        assert main(args) == 0
    if config.get("test_after_fit"):
        metric = "test/mse" if data_args(config).get("dataset") == "sinusoid" else "test/acc"
        assert any(record.getMessage().startswith(f"{metric} ") for record in caplog.records), caplog.text


@pytest.mark.parametrize("path", OMNIGLOT_CONFIGS, ids=config_id)
def test_omniglot_episodes_fit_the_characters(path: Path, tmp_path: Path) -> None:
    """The runs above use one query per class; the configured episodes must fit 20 drawings."""
    data = {key: value for key, value in data_args(load(path)).items() if key != "dataset_kwargs"}
    datamodule = EpisodicDataModule(**{**data, "dataset": "glyphs", "root": str(tmp_path)})
    for split, shape in datamodule.shapes.items():
        assert shape.shots + shape.queries <= OMNIGLOT_DRAWINGS, (split, shape)


def test_quickstart_is_found() -> None:
    assert QUICKSTART in CONFIGS


def test_help_lists_learners_and_datasets() -> None:
    exe = Path(sys.executable).with_name("lit-meta")
    if not exe.is_file():
        pytest.skip(f"the lit-meta console script is not installed next to {sys.executable}")
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, check=True, timeout=120).stdout
    # lit-meta's own learners: this process also registered the subclasses other tests define.
    own = {cls.__name__ for path, cls in registered_learners().items() if path.startswith("lit_meta.")}
    for name in [*sorted(own), *DATASETS]:
        assert name in out


@pytest.mark.parametrize(
    ("section", "key", "typo"),
    [("model", "lr_schedule", "lr_schedul"), ("data", "ways", "wayz"), ("trainer", "max_epochs", "max_epoch")],
)
def test_misspelled_key_names_the_valid_ones(
    section: str, key: str, typo: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = load(QUICKSTART)
    arguments = config[section]["init_args"] if section == "model" else config[section]
    where = {
        "model": f"{config['model']['class_path']} arguments",
        "data": "lit_meta.EpisodicDataModule arguments",
        "trainer": "trainer options",
    }[section]
    arguments[typo] = arguments.pop(key)
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(SystemExit) as exited:
        main(["fit", f"--config={path}"])
    assert exited.value.code != 0
    err = capsys.readouterr().err
    assert f"'{typo}' is not valid. Did you mean '{key}'?" in err
    valid = err.split(f"Valid {where}: ", 1)[1].splitlines()[0].split(", ")
    assert key in valid
    assert typo not in valid


def test_print_config(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["fit", f"--config={QUICKSTART}", "--print_config"])
    assert exited.value.code in (None, 0)
    printed, source = yaml.safe_load(capsys.readouterr().out), load(QUICKSTART)
    assert printed["model"]["class_path"] == source["model"]["class_path"]
    assert printed["model"]["init_args"]["meta_lr"] == source["model"]["init_args"]["meta_lr"]
    assert data_args(printed)["ways"] == data_args(source)["ways"]
    assert printed["test_after_fit"] is True
