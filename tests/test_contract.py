"""The contract every registered learner keeps, checked through every config under ``configs/``.

No learner is listed here: the registry (:func:`~lit_meta.learners.registry.registered_learners`)
says which learners exist, and ``configs/`` says how each is run. A learner added later is
one file plus one config, and both tests below cover it without an edit:

* every lit-meta learner of the registry is the model of at least one config;
* every config meta-trains for two steps through ``lit-meta fit`` (then tests, when the
  config says ``test_after_fit``) and writes a checkpoint; the checkpoint loads as its
  learner with ``weights_only=True``, every weight restored; the loaded learner adapts
  to a fresh meta-test episode; ``lit-meta test`` reports the test metric with its 95% CI;
  and ``lit-meta adapt`` labels a folder of query images (image classification only, so not on features).

Omniglot configs run on the procedural glyphs, configs on ``dataset: features`` on features
of the glyphs, configs on ``dataset: image_folder`` on random images in a folder for every
class they list, and configs on ``miniimagenet``, ``cifar_fs`` and ``fc100`` on miniatures of
their files read by the real families, as in ``tests/cli/test_configs.py``. Every run
is shrunk on the command line: one query per class, one task per step, one validation and two
test episodes, gradient learners on the reference ``execution="loop"`` path and adapting with one
step (``eval_inner_steps=1``). Each config then takes 2-7 s on 2 CPU cores (MAML 20-way 5-shot,
five second-order inner steps per training task, about 13 s).
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from lit_meta import EpisodicDataModule, MetaLearner
from lit_meta.adaptation import CSV_COLUMNS
from lit_meta.cli import init_arguments, main
from lit_meta.data.episode import Episode
from lit_meta.learners.registry import registered_learners, resolve_learner
from tests.cli.test_configs import (
    BENCHMARK_CONFIGS,
    BENCHMARK_IMAGE_SIZES,
    CONFIGS,
    IMAGE_FOLDER_CONFIGS,
    IMAGE_FOLDER_IMAGES,
    SLOW,
    accept_cifar100_miniature,
    config_id,
    data_args,
    glyph_features,
    glyph_kwargs,
    glyph_root,
    image_folder_root,
    load,
)

# the session's glyph cache and image folder, fixtures shared with tests/cli/test_configs.py
__all__ = ["glyph_root", "image_folder_root"]


@pytest.fixture(autouse=True)
def _accept_cifar100_miniature(monkeypatch: pytest.MonkeyPatch, image_folder_root: Path) -> None:
    accept_cifar100_miniature(monkeypatch, image_folder_root)


STEPS = 2
# Tiny episodes: one query per class, one task per step, two test episodes, one validation batch.
SMALL_DATA = {
    "meta_batch_size": 1,
    "eval_meta_batch_size": 1,
    "queries": 1,
    "train_queries": 1,
    "eval_queries": 1,
    "train_episodes": STEPS,  # one epoch of STEPS steps, so one validation
    "val_episodes": 2,
    "test_episodes": 2,
}
SMALL_TRAINER = [
    f"--trainer.max_steps={STEPS}",
    "--trainer.limit_val_batches=1",
    "--trainer.num_sanity_val_steps=0",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--trainer.log_every_n_steps=1",
]


def small_data(config: dict[str, Any], glyph_root: Path, image_folder_root: Path) -> dict[str, Any]:
    """The config's datamodule arguments changed for a tiny run (Omniglot becomes the glyphs, a published
    image benchmark random images at its size)."""
    data, small = data_args(config), dict(SMALL_DATA)
    if data.get("dataset") == "omniglot":
        small.update(dataset="glyphs", root=str(glyph_root), dataset_kwargs=glyph_kwargs(data) or None)
    elif data.get("dataset") == "glyphs" and data.get("root") is None and not data.get("dataset_kwargs"):
        small.update(root=str(glyph_root))  # the session's cache of the default glyphs, not ~/.cache
    elif data.get("dataset") == "features":
        small.update(root=str(glyph_features(glyph_root, config)))
    elif data.get("dataset") == "image_folder":
        small.update(root=str(image_folder_root))  # the config's class lists and image size are kept
    elif data.get("dataset") in BENCHMARK_IMAGE_SIZES:
        small.update(root=str(image_folder_root))  # the real family reads its miniature there
    return small


def cli_args(config: dict[str, Any], glyph_root: Path, image_folder_root: Path) -> list[str]:
    """Overrides that run a config for a few tiny steps: its data shrunk, gradient learners on the loop path."""
    overrides = [
        f"--data.{key}={'null' if value is None else value}"
        for key, value in small_data(config, glyph_root, image_folder_root).items()
    ]
    arguments = init_arguments(resolve_learner(config["model"]["class_path"]))
    # execution="auto" times the paths on the first batch, longer than the whole run here.
    if "execution" in arguments:
        overrides.append("--model.init_args.execution=loop")
    # Five adaptations follow (validation, two test episodes, adapt, lit-meta adapt): one step each,
    # not Reptile's 50 on 20-way 5-shot episodes (90 s). Meta-training keeps the config's steps.
    if "eval_inner_steps" in arguments:
        overrides.append("--model.init_args.eval_inner_steps=1")
    return [*overrides, *SMALL_TRAINER]


def fresh_test_episode(config: dict[str, Any], glyph_root: Path, image_folder_root: Path) -> Episode:
    """The first episode of the meta-test split of the config's (shrunk) datamodule."""
    datamodule = EpisodicDataModule(**{**data_args(config), **small_data(config, glyph_root, image_folder_root)})
    datamodule.setup("test")
    return next(iter(datamodule.test_dataloader()))[0]


def write_task_folders(episode: Episode, folder: Path) -> tuple[Path, Path]:
    """``support/<class>/<i>.png`` and ``query/<i>.png`` from an episode of grey (glyphs) or RGB images."""
    support, query = folder / "support", folder / "query"
    query.mkdir(parents=True)

    def save(image: torch.Tensor, path: Path) -> None:
        # [C, H, W] in [0, 1] to [H, W] (grey) or [H, W, 3] (RGB) bytes
        Image.fromarray(image.mul(255).round().to(torch.uint8).permute(1, 2, 0).squeeze(-1).numpy()).save(path)

    for i, (image, label) in enumerate(zip(episode.support_x, episode.support_y.tolist(), strict=True)):
        (support / f"class{label:02d}").mkdir(parents=True, exist_ok=True)
        save(image, support / f"class{label:02d}" / f"{i}.png")
    for i, image in enumerate(episode.query_x):
        save(image, query / f"q{i:03d}.png")
    return support, query


def logged_metrics(csv_path: Path) -> dict[str, float]:
    """The last logged value of every metric in a CSVLogger's ``metrics.csv``."""
    values: dict[str, float] = {}
    with csv_path.open(newline="") as file:
        for row in csv.DictReader(file):
            values.update({key: float(value) for key, value in row.items() if value not in ("", None)})
    return values


def test_every_registered_learner_has_a_config() -> None:
    configured = {resolve_learner(load(path)["model"]["class_path"]) for path in CONFIGS}
    lit_meta_learners = {
        path: cls for path, cls in registered_learners().items() if cls.__module__.split(".")[0] == "lit_meta"
    }
    assert lit_meta_learners, "the registry found no lit-meta learner"
    missing = sorted(path for path, cls in lit_meta_learners.items() if cls not in configured)
    assert not missing, f"registered learners without a config under configs/: {missing}"


@pytest.mark.parametrize("path", IMAGE_FOLDER_CONFIGS + BENCHMARK_CONFIGS, ids=config_id)
def test_image_folder_episodes_fit_the_generated_images(path: Path, glyph_root: Path, image_folder_root: Path) -> None:
    """The contract run's episodes (one query per class) fit the images of every generated class folder."""
    config = load(path)
    datamodule = EpisodicDataModule(**{**data_args(config), **small_data(config, glyph_root, image_folder_root)})
    for split, shape in datamodule.shapes.items():
        assert shape.shots + shape.queries <= IMAGE_FOLDER_IMAGES, (split, shape)


@pytest.mark.parametrize(
    "path",
    [
        pytest.param(path, id=config_id(path), marks=[pytest.mark.slow] if config_id(path) in SLOW else [])
        for path in CONFIGS
    ],
)
def test_config_fits_checkpoints_loads_tests_and_adapts(
    path: Path,
    glyph_root: Path,
    image_folder_root: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = load(path)
    learner_class = resolve_learner(config["model"]["class_path"])
    episode = fresh_test_episode(config, glyph_root, image_folder_root)
    regression = not episode.is_classification
    monkeypatch.chdir(tmp_path)  # the default CSV logger writes to the working directory
    run = [
        "--config",
        str(path),
        *cli_args(config, glyph_root, image_folder_root),
        f"--trainer.default_root_dir={tmp_path}",
    ]

    # fit: a few steps, and a checkpoint of the last one
    checkpoints = tmp_path / "checkpoints"
    save_last = [
        "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
        f"--trainer.callbacks.dirpath={checkpoints}",
        "--trainer.callbacks.save_last=true",
    ]
    with caplog.at_level(logging.INFO):
        assert main(["fit", *run, *save_last]) == 0
    metric = "test/mse" if regression else "test/acc"
    if config.get("test_after_fit"):  # fit then tests the best checkpoint and prints the summary
        assert any(r.getMessage().startswith(f"{metric} ") for r in caplog.records), caplog.text
    caplog.clear()
    ckpt = checkpoints / "last.ckpt"
    assert ckpt.is_file(), sorted(tmp_path.rglob("*.ckpt"))

    # the checkpoint loads as its learner without unpickling code, and adapts to a new episode
    learner = MetaLearner.load_from_checkpoint(ckpt, weights_only=True)
    assert type(learner) is learner_class
    saved = torch.load(ckpt, weights_only=True)["state_dict"]
    assert saved.keys() == learner.state_dict().keys()
    assert all(torch.equal(saved[name], value) for name, value in learner.state_dict().items())
    outputs = learner.eval().adapt(episode.support_x, episode.support_y)(episode.query_x)
    queries = episode.query_x.shape[0]
    if regression:
        assert outputs.is_floating_point() and outputs.shape[0] == queries, outputs.shape
    else:
        assert outputs.shape == (queries, episode.ways), outputs.shape
    assert torch.isfinite(outputs).all()

    # lit-meta test: the metric and its 95% CI, in the printed summary and in metrics.csv
    with caplog.at_level(logging.INFO):
        assert main(["test", *run, f"--ckpt_path={ckpt}"]) == 0
    assert any(r.getMessage().startswith(f"{metric} ") and "±" in r.getMessage() for r in caplog.records), caplog.text
    runs = sorted(tmp_path.glob("lightning_logs/version_*/metrics.csv"), key=lambda p: int(p.parent.name[8:]))
    logged = logged_metrics(runs[-1])  # the test run's, after fit's
    assert metric in logged and f"{metric}_ci95" in logged, logged
    assert logged["test/episodes"] == SMALL_DATA["test_episodes"], logged

    # lit-meta adapt labels the images of a new task; items that are not images (sinusoid regression
    # tasks, feature vectors) are skipped
    if episode.support_x.dim() != 4:
        return
    support, query = write_task_folders(episode, tmp_path / "task")
    output = tmp_path / "predictions.csv"
    args = ["adapt", f"--ckpt_path={ckpt}", f"--support={support}", f"--query={query}", f"--output={output}"]
    assert main(args) == 0
    with output.open(newline="") as file:
        reader = csv.DictReader(file)
        assert tuple(reader.fieldnames or ()) == CSV_COLUMNS
        rows = list(reader)
    assert sorted(row["file"] for row in rows) == sorted(p.name for p in query.iterdir())
