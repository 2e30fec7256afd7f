"""Issue 17, case 2, for every registered learner: NaN inputs stop meta-training at that step.

Each lit-meta learner is built from its first (non-slow) config, shrunk as in
``tests/test_contract.py``, and takes one training step on a meta-batch of its own data
with one NaN pixel: the learner's own ``training_step`` (sequence learners override it),
the base's hooks catch it whichever way the meta-loss was computed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lit_meta.cli import MetaLearningCLI
from lit_meta.errors import NonFiniteLossError
from lit_meta.learners.registry import registered_learners, resolve_learner
from tests.cli.test_configs import CONFIGS, SLOW, config_id, load
from tests.reliability.test_learner_guards import loader, trainer, weights_finite
from tests.test_contract import _accept_cifar100_miniature, cli_args, glyph_root, image_folder_root

# the session's fixtures, and the CIFAR-100 miniature's checksum for CIFAR-FS and FC100 configs, as in the contract test
__all__ = ["_accept_cifar100_miniature", "glyph_root", "image_folder_root"]


def first_configs() -> dict[str, Path]:
    """The first non-slow config of each lit-meta learner, by learner name."""
    chosen: dict[str, Path] = {}
    for path in CONFIGS:
        if config_id(path) not in SLOW:
            chosen.setdefault(resolve_learner(load(path)["model"]["class_path"]).__name__, path)
    return chosen


CHOSEN = first_configs()


def test_case_02_every_lit_meta_learner_has_a_guarded_config() -> None:
    learners = {cls.__name__ for cls in registered_learners().values() if cls.__module__.startswith("lit_meta.")}
    assert learners <= set(CHOSEN), sorted(learners - set(CHOSEN))


@pytest.mark.parametrize("name", sorted(CHOSEN))
def test_case_02_nan_inputs_stop_every_learner(
    name: str, glyph_root: Path, image_folder_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = CHOSEN[name]
    monkeypatch.chdir(tmp_path)
    cli = MetaLearningCLI(
        args=["--config", str(path), *cli_args(load(path), glyph_root, image_folder_root), "--trainer.logger=false"],
        run=False,
    )
    datamodule, model = cli.datamodule, cli.model
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    batch.support_x[0].view(-1)[0] = float("nan")
    # the datamodule stays: Baseline reads its classes from the train split
    monkeypatch.setattr(datamodule, "train_dataloader", lambda: loader(batch))
    with pytest.raises(NonFiniteLossError, match=r"global step 0 \(train.*input data contains NaN or inf \(support_x"):
        trainer().fit(model, datamodule=datamodule)
    assert weights_finite(model)
