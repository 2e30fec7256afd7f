"""``lit-meta adapt``: a briefly trained learner labels the images of brand-new glyph classes."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from lit_meta import MAML, EpisodicDataModule, MetaLearner, ProtoNet
from lit_meta.adaptation import CSV_COLUMNS, adapt_to_folder, label_folder, load_learner, stored_preprocessing
from lit_meta.backbones import Conv4
from lit_meta.backbones.mlp import SinusoidMLP
from lit_meta.cli import main
from lit_meta.data.datasets import ImageFolder, Omniglot, ProceduralGlyphs
from lit_meta.data.preprocessing import ImagePreprocessing

GLYPHS = {"num_classes": 100, "drawings_per_class": 20}  # 10 meta-test classes
WAYS, SHOTS, QUERIES = 5, 5, 10


@dataclass(frozen=True)
class Task:
    """Support and query folders of new classes, and the true class of every query file."""

    support: Path
    query: Path
    truth: dict[str, str]


@pytest.fixture(scope="module")
def glyph_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("glyphs")
    ProceduralGlyphs(root=str(root), **GLYPHS).prepare()
    return root


@pytest.fixture(scope="module")
def task(glyph_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Task:
    """5 meta-test glyph classes (never trained on): 5 support and 10 query PNGs each, white ink on black."""
    test = ProceduralGlyphs(root=str(glyph_root), **GLYPHS).split("test")
    folder = tmp_path_factory.mktemp("task")
    support, query = folder / "support", folder / "query"
    query.mkdir()
    order = np.random.default_rng(0).permutation(WAYS * QUERIES)  # query file names do not reveal the class
    truth = {}
    for c in range(WAYS):
        name = test.class_names[c]
        (support / name).mkdir(parents=True)
        images = test.load_items(test.class_indices[c][: SHOTS + QUERIES])[:, 0].numpy()
        for i, image in enumerate(images[:SHOTS]):
            Image.fromarray(image).save(support / name / f"{i}.png")
        for i, image in enumerate(images[SHOTS:]):
            file = f"q{order[c * QUERIES + i]:03d}.png"
            Image.fromarray(image).save(query / file)
            truth[file] = name
    return Task(support, query, truth)


@pytest.fixture
def bad_task(task: Task, tmp_path: Path) -> Task:
    """A copy of ``task`` that a test may break."""
    shutil.copytree(task.support, tmp_path / "support")
    shutil.copytree(task.query, tmp_path / "query")
    return Task(tmp_path / "support", tmp_path / "query", task.truth)


def train(learner: MetaLearner, datamodule: EpisodicDataModule, steps: int, path: Path) -> Path:
    """Meta-train briefly on one thread and save a checkpoint holding the datamodule's state."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        trainer = L.Trainer(
            max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
        )  # fmt: skip
        trainer.fit(learner, datamodule=datamodule)
        trainer.save_checkpoint(path)
    finally:
        torch.set_num_threads(threads)
    return path


def glyph_episodes(root: Path, steps: int) -> EpisodicDataModule:
    return EpisodicDataModule(
        "glyphs", root=str(root), dataset_kwargs=GLYPHS, ways=WAYS, shots=1, queries=5,
        meta_batch_size=4, train_episodes=4 * steps, val_episodes=4,
    )  # fmt: skip


@pytest.fixture(scope="module")
def protonet_ckpt(glyph_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    L.seed_everything(0, verbose=False)
    learner = ProtoNet(Conv4(in_channels=1, out_features=None, hidden_channels=32))
    return train(learner, glyph_episodes(glyph_root, 40), 40, tmp_path_factory.mktemp("protonet") / "protonet.ckpt")


@pytest.fixture(scope="module")
def maml_ckpt(glyph_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    L.seed_everything(0, verbose=False)
    learner = MAML(Conv4(1, WAYS, hidden_channels=32), inner_lr=0.4, eval_inner_steps=3, meta_lr=3e-3, execution="loop")
    return train(learner, glyph_episodes(glyph_root, 30), 30, tmp_path_factory.mktemp("maml") / "maml.ckpt")


def adapt(*args: str | Path) -> int:
    return main(["adapt", *map(str, args)])


def read_predictions(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as file:
        reader = csv.DictReader(file)
        assert tuple(reader.fieldnames or ()) == CSV_COLUMNS
        return list(reader)


def check_predictions(rows: list[dict[str, str]], task: Task) -> float:
    """Asserts one well-formed row per query image; returns the accuracy."""
    assert sorted(row["file"] for row in rows) == sorted(task.truth)
    classes = {folder.name for folder in task.support.iterdir()}
    assert all(row["predicted_class"] in classes for row in rows)
    assert all(0.0 < float(row["probability"]) <= 1.0 for row in rows)
    return float(np.mean([row["predicted_class"] == task.truth[row["file"]] for row in rows]))


# -- happy paths ----------------------------------------------------------------------------------
def test_protonet_labels_new_classes_well_above_chance(
    protonet_ckpt: Path, task: Task, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "out" / "predictions.csv"
    assert (
        adapt("--ckpt_path", protonet_ckpt, "--support", task.support, "--query", task.query, "--output", output) == 0
    )
    printed = capsys.readouterr().out
    assert f"wrote {WAYS * QUERIES} predictions to {output}" in printed
    assert "mean probability" in printed
    # 40 training steps reach 64-80% on such tasks; chance is 20%.
    assert check_predictions(read_predictions(output), task) >= 0.5


def test_maml_adapts_with_autograd_outside_lightning(maml_ckpt: Path, task: Task) -> None:
    learner, preprocessing = load_learner(maml_ckpt)
    assert preprocessing == ImagePreprocessing("L", (28, 28), invert=False)
    before = {name: p.clone() for name, p in learner.state_dict().items()}
    with torch.inference_mode():  # as inside Trainer.predict: adaptation must still get gradients
        task_model, class_names = adapt_to_folder(learner, task.support, preprocessing, steps=3)
        predictions = label_folder(task_model, class_names, task.query, preprocessing)
    assert all(torch.equal(p, before[name]) for name, p in learner.state_dict().items())
    rows = [
        {"file": p.file, "predicted_class": p.predicted_class, "probability": str(p.probability)} for p in predictions
    ]
    # 30 second-order steps reach 40-76% on such tasks; chance is 20%.
    assert check_predictions(rows, task) >= 0.35


def test_maml_checkpoint_through_the_command(maml_ckpt: Path, task: Task, tmp_path: Path) -> None:
    output = tmp_path / "predictions.csv"
    args = ("--ckpt_path", maml_ckpt, "--support", task.support, "--query", task.query, "--output", output)
    assert adapt(*args, "--steps", "2", "--batch_size", "25") == 0
    assert len(read_predictions(output)) == WAYS * QUERIES


def test_console_script_writes_predictions_to_the_working_folder(
    protonet_ckpt: Path, task: Task, tmp_path: Path
) -> None:
    exe = Path(sys.executable).parent / "lit-meta"
    if not exe.exists():
        pytest.skip(f"the lit-meta console script is not installed next to {sys.executable}")
    args = ["adapt", "--ckpt_path", protonet_ckpt, "--support", task.support, "--query", task.query]
    done = subprocess.run([exe, *map(str, args)], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "predictions.csv" in done.stdout
    check_predictions(read_predictions(tmp_path / "predictions.csv"), task)


# -- preprocessing --------------------------------------------------------------------------------
def test_checkpoint_stores_the_datasets_preprocessing(protonet_ckpt: Path) -> None:
    checkpoint = torch.load(protonet_ckpt, map_location="cpu", weights_only=False)
    assert checkpoint["EpisodicDataModule"]["preprocessing"] == {
        "mode": "L", "size": [28, 28], "invert": False, "custom_transform": None,
    }  # fmt: skip
    assert stored_preprocessing(checkpoint) == ImagePreprocessing("L", (28, 28))


def test_preprocessing_reads_a_glyph_file_as_the_dataset_loads_it(glyph_root: Path, tmp_path: Path) -> None:
    family = ProceduralGlyphs(root=str(glyph_root), **GLYPHS)
    split = family.split("test")
    Image.fromarray(split.load_items(np.array([3]))[0, 0].numpy()).save(tmp_path / "glyph.png")
    preprocessing = family.image_preprocessing()
    assert ImagePreprocessing.from_dict(preprocessing.to_dict()) == preprocessing
    torch.testing.assert_close(preprocessing(tmp_path / "glyph.png"), split.load(np.array([3]))[0], rtol=0, atol=0)


def test_omniglot_preprocessing_inverts_black_ink_on_white(tmp_path: Path) -> None:
    drawing = np.full((105, 105), 255, dtype=np.uint8)
    drawing[40:60, 40:60] = 0  # black ink on white, as in the release
    Image.fromarray(drawing).save(tmp_path / "drawing.png")
    preprocessing = Omniglot(root=tmp_path, image_size=28).image_preprocessing()
    assert preprocessing == ImagePreprocessing("L", (28, 28), invert=True)
    image = preprocessing(tmp_path / "drawing.png")
    assert image.shape == (1, 28, 28) and image.max() == 1.0 and image[0, 0, 0] == 0.0


def brighten(image: torch.Tensor) -> torch.Tensor:
    return image.sqrt()


def test_image_folder_preprocessing_records_mode_size_and_transform(tmp_path: Path) -> None:
    folder = ImageFolder(tmp_path, image_size=(32, 48), mode="RGB", transform=brighten)
    assert folder.image_preprocessing() == ImagePreprocessing("RGB", (32, 48), False, custom_transform="brighten")
    assert ImageFolder(tmp_path, mode="L").image_preprocessing().custom_transform is None


def test_adapt_warns_that_a_custom_transform_is_not_applied(protonet_ckpt: Path, task: Task) -> None:
    learner, _ = load_learner(protonet_ckpt)
    preprocessing = ImagePreprocessing("L", (28, 28), custom_transform="normalize")
    with pytest.warns(UserWarning, match="custom transform normalize"):
        adapt_to_folder(learner, task.support, preprocessing)


def copy_checkpoint(source: Path, target: Path, *drop: str) -> Path:
    checkpoint = torch.load(source, map_location="cpu", weights_only=False)
    for key in drop:
        del checkpoint[key]
    torch.save(checkpoint, target)
    return target


def test_preprocessing_falls_back_to_the_recorded_dataset(protonet_ckpt: Path, tmp_path: Path) -> None:
    older = copy_checkpoint(protonet_ckpt, tmp_path / "older.ckpt", "EpisodicDataModule")
    assert load_learner(older)[1] == ImagePreprocessing("L", (28, 28))


def test_checkpoint_without_preprocessing_needs_mode_and_image_size(
    protonet_ckpt: Path, task: Task, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bare = copy_checkpoint(protonet_ckpt, tmp_path / "bare.ckpt", "EpisodicDataModule", "datamodule_hyper_parameters")
    args = ("--ckpt_path", bare, "--support", task.support, "--query", task.query, "--output", tmp_path / "p.csv")
    assert adapt(*args) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and str(bare) in error and "--mode" in error and "--image_size" in error
    assert adapt(*args, "--mode", "L", "--image_size", "28", "--no-invert") == 0


# -- bad input ------------------------------------------------------------------------------------
def break_task(task: Task, how: str) -> tuple[Path, Path, str]:
    """Support and query folders broken in one way, and what the error must name."""
    classes = sorted(task.support.iterdir())
    if how == "missing support":
        shutil.rmtree(task.support)
        return task.support, task.query, f"support folder {task.support} does not exist"
    if how == "one class":
        for folder in classes[1:]:
            shutil.rmtree(folder)
        return task.support, task.query, f"support folder {task.support} holds 1 class folder"
    if how == "empty class":
        for file in classes[2].iterdir():
            file.unlink()
        (classes[2] / "notes.txt").write_text("not an image")
        return task.support, task.query, f"class folder {classes[2]} holds no image files"
    if how == "unreadable image":
        broken = classes[1] / "1.png"
        broken.write_bytes(b"not a png")
        return task.support, task.query, f"cannot decode image {broken}"
    if how == "empty query":
        for file in task.query.iterdir():
            file.unlink()
        return task.support, task.query, f"query folder {task.query} holds no image files"
    if how == "nested query":
        nested = task.query / "more"
        nested.mkdir()
        for file in task.query.glob("*.png"):
            file.rename(nested / file.name)
        return task.support, task.query, "sub-folders are not read"
    raise AssertionError(how)


@pytest.mark.parametrize(
    "how", ["missing support", "one class", "empty class", "unreadable image", "empty query", "nested query"]
)
def test_bad_folders_are_named_in_the_error(
    how: str, protonet_ckpt: Path, bad_task: Task, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    support, query, message = break_task(bad_task, how)
    output = tmp_path / "predictions.csv"
    assert adapt("--ckpt_path", protonet_ckpt, "--support", support, "--query", query, "--output", output) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and message in error, error
    assert not output.exists()


def test_missing_checkpoint_is_named(task: Task, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.ckpt"
    assert adapt("--ckpt_path", missing, "--support", task.support, "--query", task.query) == 2
    assert f"error: checkpoint {missing} does not exist" in capsys.readouterr().err


def test_steps_are_refused_for_a_learner_without_them(
    protonet_ckpt: Path, task: Task, capsys: pytest.CaptureFixture[str]
) -> None:
    assert adapt("--ckpt_path", protonet_ckpt, "--support", task.support, "--query", task.query, "--steps", "3") == 2
    assert "ProtoNet adapts without gradient steps" in capsys.readouterr().err


def test_a_head_for_other_ways_is_refused(maml_ckpt: Path, bad_task: Task, capsys: pytest.CaptureFixture[str]) -> None:
    for folder in sorted(bad_task.support.iterdir())[3:]:
        shutil.rmtree(folder)
    assert adapt("--ckpt_path", maml_ckpt, "--support", bad_task.support, "--query", bad_task.query) == 2
    error = capsys.readouterr().err
    assert f"labels exactly {WAYS} classes" in error and f"{bad_task.support} holds 3 class folders" in error


@pytest.fixture(scope="module")
def sinusoid_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    L.seed_everything(0, verbose=False)
    dm = EpisodicDataModule("sinusoid", shots=5, queries=5, meta_batch_size=2, train_episodes=2, val_episodes=2)
    return train(MAML(SinusoidMLP(), inner_lr=0.01), dm, 1, tmp_path_factory.mktemp("sinusoid") / "sinusoid.ckpt")


def test_regression_checkpoints_are_refused(
    sinusoid_ckpt: Path, task: Task, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert adapt("--ckpt_path", sinusoid_ckpt, "--support", task.support, "--query", task.query) == 2
    assert "Sinusoid, whose items are not images (e.g. regression tasks)" in capsys.readouterr().err
    # Without the record of its dataset, the single output of its network gives it away.
    bare = copy_checkpoint(sinusoid_ckpt, tmp_path / "bare.ckpt", "datamodule_hyper_parameters")
    args = ("--ckpt_path", bare, "--support", task.support, "--query", task.query, "--mode", "L", "--image_size", "28")
    assert adapt(*args) == 2
    assert "has a single output, a regression model" in capsys.readouterr().err


def test_usage_errors_return_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert adapt("--support", "s", "--query", "q") == 2
    assert "--ckpt_path" in capsys.readouterr().err
    assert adapt("--ckpt_path", "c", "--support", "s", "--query", "q", "--image_size", "big") == 2
    assert "HEIGHTxWIDTH" in capsys.readouterr().err
