"""The ``lit-meta`` console script: LightningCLI for every learner, plus ``adapt``, ``embed`` and ``data``.

``lit-meta fit|validate|test|predict`` is :class:`MetaLearningCLI`, a
``LightningCLI`` in subclass mode: the model is any
:class:`~lit_meta.learners.MetaLearner` (``model.class_path``) and the data any
:class:`~lit_meta.data.EpisodicDataModule` (the default ``data.class_path``), so
every constructor argument is a validated YAML key. ``lit-meta adapt`` labels the
images of a new task with a trained checkpoint (:mod:`lit_meta.adaptation`);
``lit-meta embed`` writes its backbone's features of a dataset (:mod:`lit_meta.feature_export`);
``lit-meta data`` checks and prepares the published benchmarks (:mod:`lit_meta.data_command`).
Errors print one line naming the config key (:mod:`lit_meta.cli_errors`); ``--debug`` or
``LIT_META_DEBUG=1`` prints the traceback instead.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import os
import re
import sys
import warnings
from argparse import RawDescriptionHelpFormatter
from collections.abc import Sequence
from typing import Any, NoReturn

from jsonargparse import DefaultHelpFormatter, lazy_instance
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info

from lit_meta import __version__
from lit_meta.callbacks import (
    DestroyProcessGroupAtExit,
    EpisodeImageLogger,
    EpisodePredictionWriter,
    RetainFreedCPUMemory,
    StepSizeMonitor,
)
from lit_meta.cli_errors import (
    DEBUG_ENVIRONMENT_VARIABLE,
    DEBUG_FLAG,
    instantiation_error,
    parse_error_line,
    split_debug_flag,
)
from lit_meta.data.datamodule import EpisodicDataModule
from lit_meta.data.datasets import DATASETS
from lit_meta.errors import CheckpointError, LitMetaError
from lit_meta.learners.base import MetaLearner, init_arguments
from lit_meta.learners.registry import registered_learners
from lit_meta.metrics import format_mean_ci

DEFAULT_SEED = 0
"""Seed of ``seed_everything`` when a config sets none, so a config alone fixes a run."""


def available_learners() -> list[str]:
    """The registered learners (:mod:`lit_meta.learners.registry`) by class name, for ``--help``."""
    return sorted({cls.__name__ for cls in registered_learners().values()})


SUBCOMMANDS = {
    "fit": "meta-train a learner (then test it if test_after_fit)",
    "validate": "evaluate on the meta-validation episodes, with 95% CI",
    "test": "evaluate on the meta-test episodes, with 95% CI",
    "predict": "label the queries of the meta-test episodes",
    "adapt": "label new images from a few examples per class",
    "embed": "write a checkpoint's backbone features to a .npz",
    "data": "list the dataset families, check a folder against a published split, build a cache",
}
"""Every subcommand with its one-line help; ``adapt``, ``embed`` and ``data`` run before LightningCLI (:func:`main`)."""


def _description() -> str:
    return (
        "Meta-learning and few-shot learning for PyTorch Lightning.\n\n"
        "  lit-meta fit --config configs/quickstart.yaml\n"
        "  lit-meta test --config CONFIG --ckpt_path CKPT\n"
        "  lit-meta adapt --ckpt_path CKPT --support DIR --query DIR\n"
        "  lit-meta data check miniimagenet --root data"
    )


def _epilog() -> str:
    return (
        f"learners (model.class_path): {', '.join(available_learners())}\n"
        f"datasets (data.dataset): {', '.join(sorted(DATASETS))}\n"
        "class paths are imported from the current folder and PYTHONPATH (my_project.MyLearner)\n"
        f"errors print one line; {DEBUG_FLAG} (anywhere on the line) or {DEBUG_ENVIRONMENT_VARIABLE}=1 "
        "prints the traceback"
    )


class MetaLearningCLI(LightningCLI):
    """``LightningCLI`` for meta-learners and episodic data.

    Differences from a plain ``LightningCLI``:

    * the model is any :class:`~lit_meta.learners.MetaLearner` and the data
      defaults to :class:`~lit_meta.data.EpisodicDataModule`;
    * a fixed default seed (:data:`DEFAULT_SEED`) and a CSV logger by default;
    * always-on callbacks: :class:`~lit_meta.callbacks.StepSizeMonitor` (outer
      learning rates and learned inner step sizes) and
      :class:`~lit_meta.callbacks.EpisodeImageLogger` (support/query grids);
    * ``test_after_fit: true`` tests the best checkpoint after ``fit``;
    * ``test`` ends with one line: accuracy (or MSE) with its 95% CI;
    * ``predict`` writes the predictions to a CSV file (``--predictions_path``,
      :class:`~lit_meta.callbacks.EpisodePredictionWriter`);
    * the command line owns its process, so unless the learner says
      ``retain_cpu_memory=False`` it keeps freed CPU memory for reuse while the
      Trainer runs (:class:`~lit_meta.callbacks.RetainFreedCPUMemory`), and a
      distributed run destroys its process group before its processes exit
      (:class:`~lit_meta.callbacks.DestroyProcessGroupAtExit`; Lightning does so only
      for NCCL, and a gloo group left to the interpreter's exit can abort a finished run).

    Every registered learner (including those of the ``lit_meta.learners`` entry
    points) is imported before the arguments are parsed, so ``--model Name`` finds it.

    A refused value raises one :class:`~lit_meta.errors.ConfigError` naming its config key
    (a value jsonargparse refuses: one line and ``SystemExit(2)``, as argparse does);
    ``debug=True`` keeps jsonargparse's full message and the constructor's own exception.
    """

    def __init__(
        self, args: Sequence[str] | None = None, run: bool = True, *, debug: bool = False, **kwargs: Any
    ) -> None:
        self.debug = debug
        kwargs.setdefault("seed_everything_default", DEFAULT_SEED)
        kwargs.setdefault("auto_configure_optimizers", False)
        kwargs.setdefault(
            "parser_kwargs",
            {
                "prog": "lit-meta",
                "description": _description(),
                "epilog": _epilog(),
                "formatter_class": _RawHelpFormatter,
            },
        )
        trainer_defaults = {
            "logger": lazy_instance(CSVLogger, save_dir="."),
            "callbacks": [StepSizeMonitor(), EpisodeImageLogger()],
            **kwargs.pop("trainer_defaults", {}),
        }
        kwargs.setdefault("parser_class", _ArgumentParser)
        registered_learners()
        kwargs.setdefault("save_config_callback", _SaveConfigInRunDir)
        super().__init__(
            MetaLearner,
            EpisodicDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            trainer_defaults=trainer_defaults,
            args=args,  # type: ignore[arg-type]
            run=run,
            **kwargs,
        )

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        parser = super().init_parser(**kwargs)
        parser.debug = self.debug  # type: ignore[attr-defined]
        return parser

    def setup_parser(
        self, add_subcommands: bool, main_kwargs: dict[str, Any], subparser_kwargs: dict[str, Any]
    ) -> None:
        super().setup_parser(add_subcommands, main_kwargs, subparser_kwargs)
        if add_subcommands:
            _list_subcommands(self.parser)

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except Exception as exc:
            config = self.config[self.subcommand] if self.subcommand else self.config
            error = None if self.debug else instantiation_error(exc, config)
            if error is None:
                raise
            raise error from exc

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.set_defaults({"data": {"class_path": "lit_meta.data.datamodule.EpisodicDataModule"}})
        parser.add_argument(
            "--test_after_fit",
            type=bool,
            default=False,
            help="After fit, test the best checkpoint (or the final weights) on the meta-test split.",
        )
        parser.add_argument(
            "--predictions_path",
            type=str | None,
            default=None,
            help="predict only: the CSV file the predictions go to, one row per query with its episode, "
            "predicted label and class id, probability and true label and class id (default: "
            "predictions.csv in the run's log_dir).",
        )

    def _parse_ckpt_path(self) -> None:
        """Keeps the config's learner and hyperparameters when ``ckpt_path`` is given.

        LightningCLI would replace them with the checkpoint's, silently: a MAML config resumed
        from a ProtoNet checkpoint trained a ProtoNet, and ``--model.*`` options were dropped.
        The config and command line win instead; the learner checks the checkpoint against
        them when the Trainer restores it (:meth:`MetaLearner.on_load_checkpoint
        <lit_meta.learners.MetaLearner.on_load_checkpoint>`): another learner class is an
        error, other hyperparameters a warning that lists them (an error for those that
        change the network).

        Raises:
            CheckpointError: ``ckpt_path`` names a local file that does not exist (before anything
                is built; Lightning's own error came with a traceback, after the data was set up).
        """
        subcommand = self.config.get("subcommand")
        path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if not isinstance(path, str) or path in ("best", "last", "hpc") or "://" in path or path.startswith("registry"):
            return  # Lightning's names for checkpoints of this run, remote files and model-registry entries
        if not os.path.isfile(path):
            raise CheckpointError(
                f"ckpt_path={path}: no such file; give a checkpoint a run wrote (lightning_logs/version_N/checkpoints/"
                "last.ckpt, say), or 'best' or 'last' to test after a fit in the same run"
            )

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        if self.model.hparams.get("retain_cpu_memory") is None:
            trainer.callbacks.append(RetainFreedCPUMemory())
        trainer.callbacks.append(DestroyProcessGroupAtExit())
        return trainer

    def before_predict(self) -> None:
        """Adds the writer of the predictions file (``--predictions_path``)."""
        path = self.config[self.subcommand].get("predictions_path")
        self.trainer.callbacks.append(EpisodePredictionWriter(path))

    def after_fit(self) -> None:
        if not self.config[self.subcommand].get("test_after_fit"):
            return
        checkpoint = self.trainer.checkpoint_callback
        best = isinstance(checkpoint, ModelCheckpoint) and bool(checkpoint.best_model_path)
        self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path="best" if best else None)
        self.after_test()

    def after_test(self) -> None:
        summary = test_summary(self.trainer.callback_metrics)
        if summary:
            rank_zero_info(summary)


def test_summary(metrics: dict[str, Any]) -> str | None:
    """``"test/acc 97.10 ± 0.45 % (95% CI over 600 episodes)"`` from the logged test metrics."""
    episodes = int(metrics.get("test/episodes", 0))
    for name, percent in (("acc", True), ("mse", False)):
        if f"test/{name}" in metrics:
            mean, ci95 = float(metrics[f"test/{name}"]), float(metrics.get(f"test/{name}_ci95", float("nan")))
            return f"test/{name} {format_mean_ci(mean, ci95, episodes, percent=percent)}"
    return None


class _SaveConfigInRunDir(SaveConfigCallback):
    """Writes ``config.yaml`` into the run's own folder, for every logger.

    Lightning writes it to ``trainer.log_dir``, which for loggers without a
    versioned folder (W&B) is the shared ``save_dir``, so a second run there
    failed. CSV and TensorBoard runs keep their ``log_dir``; others use
    ``<save_dir>/<name>/<version>/``, next to the checkpoints.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **{**kwargs, "save_to_log_dir": False})

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        logger = trainer.logger
        if logger is None:
            if stage != "fit":
                return  # no run folder to keep it in; an evaluation changes nothing to reproduce
            directory = trainer.default_root_dir
        elif isinstance(logger, (CSVLogger, TensorBoardLogger)):
            directory = logger.log_dir
        else:
            _ = logger.experiment  # starts the run, which gives it its version
            save_dir = logger.save_dir or trainer.default_root_dir
            directory = os.path.join(save_dir, str(logger.name), str(logger.version))
        path = os.path.join(directory, self.config_filename)
        if os.path.isfile(path) and not self.overwrite:
            raise RuntimeError(f"{path} exists: a previous run wrote it; choose another save_dir or version")
        os.makedirs(directory, exist_ok=True)
        self.parser.save(self.config, path, skip_unset=False, overwrite=self.overwrite, multifile=self.multifile)


class _ArgumentParser(LightningArgumentParser):
    """Refused values print one line (:func:`~lit_meta.cli_errors.parse_error_line`) instead of the
    usage and jsonargparse's nested message, unless ``debug``; an unknown key also lists the valid ones."""

    debug = False

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:  # type: ignore[override]
        hint = _valid_keys_hint(self, message)
        if self.debug or not self.exit_on_error:  # not exit_on_error: jsonargparse tries another type
            super().error(f"{message}\n{hint}" if hint else message, ex)
        sys.stderr.write(f"lit-meta: error: {parse_error_line(message, hint)}\n")
        self.exit(2)


def _list_subcommands(parser: LightningArgumentParser) -> None:
    """``--help`` lists every subcommand of :data:`SUBCOMMANDS` with its line (Lightning's are cut
    from the ``Trainer`` docstrings), ``adapt`` and ``embed`` included, which :func:`main` runs."""
    action = parser._subcommands_action
    for choice in action._choices_actions:
        choice.help = SUBCOMMANDS.get(choice.dest, choice.help)
    listed = {choice.dest for choice in action._choices_actions}
    for name, line in SUBCOMMANDS.items():
        if name not in listed:
            action._choices_actions.append(argparse._SubParsersAction._ChoicesPseudoAction(name, (), line))
    action.metavar = "{" + ",".join(choice.dest for choice in action._choices_actions) + "}"


def _valid_keys_hint(parser: LightningArgumentParser, message: str) -> str:
    """The valid keys, and the closest to the wrong one, for jsonargparse's unknown-key errors ("" for others)."""
    if match := re.search(r"class_path '([\w.]+)':\s+Option '(\w+)' is not accepted", message):
        class_path, key = match.groups()
        try:
            module, name = class_path.rsplit(".", 1)
            valid = init_arguments(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError, ValueError):
            return ""
        where = f"{class_path} arguments"
    elif match := re.search(r"Subcommand '(\w+)' does not accept option '([\w.]+)'", message):
        subcommand, key = match.groups()
        subparser = parser._subcommands_action._name_parser_map.get(subcommand) if parser._subcommands_action else None
        prefix = key.rsplit(".", 1)[0] + "." if "." in key else ""
        dests = {a.dest for a in getattr(subparser, "_actions", [])}
        valid = sorted(d for d in dests if d.startswith(prefix) and "." not in d[len(prefix) :])
        key = key[len(prefix) :]
        valid = [d[len(prefix) :] for d in valid]
        where = f"{prefix.rstrip('.') or subcommand} options"
    else:
        return ""
    close = difflib.get_close_matches(key, valid, n=1)
    suggestion = f"Did you mean '{close[0]}'? " if close else ""
    return f"{suggestion}Valid {where}: {', '.join(valid)}"


class _RawHelpFormatter(DefaultHelpFormatter, RawDescriptionHelpFormatter):
    """Keeps the line breaks of the description and epilog (jsonargparse's default formatter reflows them)."""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lit-meta`` console script: returns the exit status, never raises ``SystemExit``.

    0 on success (and for ``--help``); 2 for a command line, config or run that lit-meta
    refused (a :class:`~lit_meta.errors.LitMetaError`, a value jsonargparse or a constructor
    refused), with one line on stderr naming the config key; other exceptions propagate.
    ``lit-meta data check`` returns 1 for a folder that does not hold the published split.
    With ``--debug`` anywhere in ``argv`` or ``LIT_META_DEBUG=1``, refused values print
    jsonargparse's full message and lit-meta's errors propagate with their traceback.
    Called from Python, ``argv`` is the command line and the same statuses are returned.
    As the console script (``argv=None``) it first puts the current folder on ``sys.path``,
    as ``python -m`` does, so ``--model my_project.MyLearner`` imports ``./my_project``.
    """
    if argv is None:
        import_from_working_directory()
    given, debug = split_debug_flag(sys.argv[1:] if argv is None else argv)
    if given[:1] == ["adapt"]:
        from lit_meta.adaptation import main as adapt_main

        return adapt_main(given[1:])
    if given[:1] == ["embed"]:
        from lit_meta.feature_export import main as embed_main

        return embed_main(given[1:])
    if given[:1] == ["data"]:
        from lit_meta.data_command import main as data_main

        return data_main(given[1:], debug=debug)
    if given[:1] == ["--version"]:
        print(f"lit-meta {__version__}")
        return 0
    if not given or (not given[0].startswith("-") and given[0] not in SUBCOMMANDS):
        what = f"unknown subcommand {given[0]!r}" if given else "no subcommand"
        close = difflib.get_close_matches(given[0], SUBCOMMANDS, n=1) if given else []
        suggestion = f" Did you mean {close[0]!r}?" if close else ""
        print(
            f"lit-meta: error: {what}.{suggestion} Use one of {', '.join(SUBCOMMANDS)} (lit-meta --help)",
            file=sys.stderr,
        )
        return 2
    try:
        with warnings.catch_warnings():
            # argv is the command line (sys.argv less --debug, or a Python caller's); Lightning warns about both.
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
            MetaLearningCLI(args=given, debug=debug)
    except SystemExit as exit_:  # --help, --print_config (0), or a refused value, printed (2)
        return exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
    except LitMetaError as exc:
        if debug:
            raise
        print(f"lit-meta: error: {exc}", file=sys.stderr)
        return 2
    return 0


def import_from_working_directory() -> None:
    """Put the current folder first on ``sys.path``, as ``python -m`` does: the command line owns its process."""
    cwd = os.getcwd()
    if not any(os.path.abspath(entry or os.curdir) == cwd for entry in sys.path):
        sys.path.insert(0, cwd)


if __name__ == "__main__":
    raise SystemExit(main())
