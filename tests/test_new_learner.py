"""A new learner is one Python file plus one YAML, outside the package, through the console script.

``toy_learner.py`` (the README's "Adding a learner" example) classifies a query by its
squared distance to each class's mean support image, times one learned scale. It is
registered three ways: by the config naming it (``model.class_path`` imports its module),
by importing its module before loading a checkpoint, and by a ``lit_meta.learners``
entry point; ``lit-meta adapt`` also takes it with ``--import``. Every command runs in a
fresh process, as a user runs it (each imports Lightning, ~7 s on 2 cores).
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from lit_meta import EpisodicDataModule
from lit_meta.adaptation import CSV_COLUMNS
from lit_meta.learners.registry import ENTRY_POINT_GROUP
from tests.cli.test_configs import glyph_root
from tests.test_contract import write_task_folders

__all__ = ["glyph_root"]  # the session's glyph cache, a fixture shared with tests/cli/test_configs.py

README = Path(__file__).resolve().parents[1] / "README.md"
LIT_META = Path(sys.executable).parent / "lit-meta"

TOY_LEARNER = '''\
"""Nearest class mean on raw pixels, with one learned scale."""

import torch
from torch import Tensor, nn

from lit_meta.learners import MetricMetaLearner


class NearestMean(MetricMetaLearner):
    """Logits: minus the squared distance to each class's mean support image, times a learned scale."""

    def __init__(self, backbone: nn.Module, scale: float = 0.1, **kwargs) -> None:
        super().__init__(backbone, **kwargs)
        self.log_scale = nn.Parameter(torch.tensor(scale).log())

    def summarize_support(self, support: Tensor, one_hot: Tensor) -> dict[str, Tensor]:
        return {"means": one_hot.mT @ support / one_hot.sum(-2).unsqueeze(-1)}

    def compare(self, query: Tensor, means: Tensor) -> Tensor:
        return -self.log_scale.exp() * (query.unsqueeze(-2) - means.unsqueeze(-3)).pow(2).sum(-1)
'''

# The README's toy.yaml, with tiny episodes and the session's glyph cache.
TOY_CONFIG = """\
model:
  class_path: toy_learner.NearestMean
  init_args:
    backbone: {{class_path: torch.nn.Flatten}}
    meta_lr: 0.01
data:
  dataset: glyphs
  root: {root}
  ways: 5
  shots: 1
  queries: 2
  meta_batch_size: 2
  train_episodes: 6
  val_episodes: 2
  test_episodes: 4
trainer:
  max_steps: 3
  enable_progress_bar: false
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {{save_last: true}}
"""

LOAD = """\
import sys
from lit_meta import MetaLearner
learner = MetaLearner.load_from_checkpoint(sys.argv[1], weights_only=True)
print("loaded", type(learner).__module__, type(learner).__qualname__)
"""

# Refused before its module is imported (and the refusal does not import it), loaded after.
LOAD_BEFORE_AND_AFTER_IMPORT = """\
import sys
from lit_meta import MetaLearner
from lit_meta.learners.registry import UnknownLearnerError
try:
    MetaLearner.load_from_checkpoint(sys.argv[1], weights_only=True)
except UnknownLearnerError as error:
    print("refused:", error)
else:
    raise SystemExit("loaded a learner whose module was never imported")
assert "toy_learner" not in sys.modules, "the refused load imported the module the checkpoint names"
import toy_learner
learner = MetaLearner.load_from_checkpoint(sys.argv[1], weights_only=True)
print("loaded", type(learner).__module__, type(learner).__qualname__)
"""


@dataclass(frozen=True)
class ToyProject:
    """The learner's folder (on ``PYTHONPATH``), its config, and the checkpoint ``lit-meta fit`` wrote."""

    folder: Path
    config: Path
    checkpoint: Path
    glyph_root: Path


def run(command: list[str | Path], *path: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """A fresh process with ``path`` prepended to ``PYTHONPATH``; asserts it succeeded."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*map(str, path), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(list(map(str, command)), cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{command} failed:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def toy(glyph_root: Path, tmp_path_factory: pytest.TempPathFactory) -> ToyProject:
    """``toy_learner.py`` and ``toy.yaml`` in a folder outside the package, meta-trained by ``lit-meta fit``."""
    if not LIT_META.is_file():
        pytest.skip(f"the lit-meta console script is not installed next to {sys.executable}")
    folder = tmp_path_factory.mktemp("toy")
    (folder / "toy_learner.py").write_text(TOY_LEARNER)
    config = folder / "toy.yaml"
    config.write_text(TOY_CONFIG.format(root=glyph_root))
    run([LIT_META, "fit", "--config", config], folder, cwd=folder)
    checkpoints = list(folder.glob("lightning_logs/version_0/checkpoints/last.ckpt"))
    assert checkpoints, sorted(folder.rglob("*"))
    return ToyProject(folder, config, checkpoints[0], glyph_root)


@pytest.fixture
def entry_point(tmp_path: Path) -> Path:
    """A folder whose ``toy_learner-0.0.dist-info`` declares the learner in the ``lit_meta.learners`` group,
    as ``pip install`` of a package with ``[project.entry-points."lit_meta.learners"]`` would."""
    dist_info = tmp_path / "site" / "toy_learner-0.0.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy_learner\nVersion: 0.0\n")
    (dist_info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\nnearest_mean = toy_learner:NearestMean\n")
    return dist_info.parent


def test_readme_shows_the_toy_learner() -> None:
    assert TOY_LEARNER in README.read_text(), "README.md's 'Adding a learner' must show the file this test runs"


def test_fit_then_test_prints_the_accuracy_with_its_ci(toy: ToyProject) -> None:
    done = run([LIT_META, "test", "--config", toy.config, "--ckpt_path", toy.checkpoint], toy.folder, cwd=toy.folder)
    summary = [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("test/acc ")]
    assert summary and " ± " in summary[0] and "(95% CI over 4 episodes)" in summary[0], done.stdout + done.stderr


def test_checkpoint_loads_once_the_module_is_imported(toy: ToyProject) -> None:
    done = run([sys.executable, "-c", LOAD_BEFORE_AND_AFTER_IMPORT, toy.checkpoint], toy.folder, cwd=toy.folder)
    refusal = next(line for line in done.stdout.splitlines() if line.startswith("refused:"))
    assert "toy_learner.NearestMean is not a registered lit-meta learner" in refusal
    assert f'"{ENTRY_POINT_GROUP}" entry-point group' in refusal and "import toy_learner" in refusal
    assert "loaded toy_learner NearestMean" in done.stdout


def test_entry_point_registers_it_for_loading_help_and_adapt(
    toy: ToyProject, entry_point: Path, tmp_path: Path
) -> None:
    path = (toy.folder, entry_point)
    loaded = run([sys.executable, "-c", LOAD, toy.checkpoint], *path, cwd=tmp_path).stdout
    assert "loaded toy_learner NearestMean" in loaded

    learners = next(
        line for line in run([LIT_META, "--help"], *path, cwd=tmp_path).stdout.splitlines() if "learners" in line
    )
    assert "NearestMean" in learners.split(": ", 1)[1].split(", "), learners

    datamodule = EpisodicDataModule("glyphs", root=str(toy.glyph_root), ways=5, shots=2, queries=2)
    datamodule.setup("test")
    support, query = write_task_folders(next(iter(datamodule.test_dataloader()))[0], tmp_path / "task")
    output = tmp_path / "predictions.csv"
    adapt = ["adapt", "--ckpt_path", toy.checkpoint, "--support", support, "--query", query, "--output", output]
    run([LIT_META, *adapt], *path, cwd=tmp_path)
    with output.open(newline="") as file:
        reader = csv.DictReader(file)
        assert tuple(reader.fieldnames or ()) == CSV_COLUMNS
        rows = list(reader)
    assert sorted(row["file"] for row in rows) == sorted(p.name for p in query.iterdir())
    assert {row["predicted_class"] for row in rows} <= {folder.name for folder in support.iterdir()}


def test_lit_meta_adapt_imports_the_module_the_user_names(toy: ToyProject, tmp_path: Path) -> None:
    """Registered by import only (no entry point): ``lit-meta adapt --import toy_learner`` labels a folder."""
    datamodule = EpisodicDataModule("glyphs", root=str(toy.glyph_root), ways=5, shots=1, queries=2)
    datamodule.setup("test")
    support, query = write_task_folders(next(iter(datamodule.test_dataloader()))[0], tmp_path / "task")
    output = tmp_path / "predictions.csv"
    adapt = ["adapt", "--ckpt_path", toy.checkpoint, "--support", support, "--query", query, "--output", output]
    run([LIT_META, *adapt, "--import", "toy_learner"], toy.folder, cwd=tmp_path)
    with output.open(newline="") as file:
        assert len(list(csv.DictReader(file))) == len(list(query.iterdir()))
