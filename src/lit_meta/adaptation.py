"""Adapting a trained meta-learner to a brand-new task given as image folders: ``lit-meta adapt``.

A new task is a support folder with one sub-folder of a few labelled images per new
class, and a query folder of images to label::

    support/<class name>/<image files>     the folder names are the class names
    query/<image files>                    read directly inside, not from sub-folders

Images are decoded as the learner's training images were (channels, size, polarity,
value scale): the :class:`~lit_meta.data.preprocessing.ImagePreprocessing` the
checkpoint stores. From Python::

    learner, preprocessing = load_learner("last.ckpt")
    task_model, class_names = adapt_to_folder(learner, "support", preprocessing)
    predictions = label_folder(task_model, class_names, "query", preprocessing)
    write_predictions(predictions, "predictions.csv")
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import sys
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lit_meta.command_line import import_user_modules, torch_device
from lit_meta.data.datasets import MetaDataset, build_dataset
from lit_meta.data.datasets.image_folder import class_folders, image_files
from lit_meta.data.preprocessing import ImagePreprocessing
from lit_meta.data.transforms import IMAGE_EXTENSIONS
from lit_meta.errors import DatasetError, LitMetaError
from lit_meta.learners import checkpoints
from lit_meta.learners.base import MetaLearner, TaskModel

CSV_COLUMNS: tuple[str, str, str] = ("file", "predicted_class", "probability")
"""Header of the predictions file :func:`write_predictions` writes."""

_IMAGE_KINDS = ", ".join(sorted(IMAGE_EXTENSIONS))


@dataclass(frozen=True)
class Prediction:
    """The label of one query image.

    Args:
        file: the image's path relative to the query folder, with ``/`` separators.
        predicted_class: the name of the support class folder it is assigned to.
        probability: softmax of the task model's outputs at that class.
    """

    file: str
    predicted_class: str
    probability: float


# -- folders --------------------------------------------------------------------------------------
def support_files(support_dir: str | Path) -> dict[str, list[Path]]:
    """The image files of every class of a support folder, by class name (sorted).

    Raises:
        DatasetError: the folder is missing, holds fewer than two class folders, or a
            class folder holds no image file directly inside it.
    """
    root = Path(support_dir)
    layout = f"expected {root}/<class name>/<a few images>, one sub-folder per new class"
    if not root.is_dir():
        raise DatasetError(f"support folder {root} does not exist; {layout}")
    folders = class_folders(root)
    if len(folders) < 2:
        found = f"only {folders[0].name!r}" if folders else "none"
        raise DatasetError(
            f"support folder {root} holds {len(folders)} class folder(s) ({found}); a task needs at least 2 classes: "
            f"{layout}"
        )
    files = {folder.name: image_files(folder) for folder in folders}
    for folder in folders:
        if not files[folder.name]:
            raise DatasetError(
                f"class folder {folder} holds no image files ({_IMAGE_KINDS}) directly inside it; "
                "add a few examples of the class or remove the folder"
            )
    return files


def query_files(query_dir: str | Path) -> list[Path]:
    """The image files directly inside a query folder, sorted by name; sub-folders are not read.

    Raises:
        DatasetError: the folder is missing or holds no image file.
    """
    root = Path(query_dir)
    if not root.is_dir():
        raise DatasetError(f"query folder {root} does not exist; pass the folder holding the images to label")
    files = image_files(root)
    if not files:
        nested = " (its sub-folders are not read: put the images directly inside it)" if class_folders(root) else ""
        raise DatasetError(f"query folder {root} holds no image files ({_IMAGE_KINDS}){nested}")
    return files


# -- checkpoint -----------------------------------------------------------------------------------
def load_learner(
    ckpt_path: str | Path, device: str | torch.device = "cpu"
) -> tuple[MetaLearner, ImagePreprocessing | None]:
    """The learner in a checkpoint, in eval mode on ``device``, and how its training images were decoded.

    The decoding is the ``"preprocessing"`` entry the
    :class:`~lit_meta.data.EpisodicDataModule` (or a subclass) stores in the
    checkpoint; failing that, the image preprocessing of the dataset its recorded
    hyperparameters name; else ``None``. Only load checkpoints you trust: a learner
    built from Python holds a pickled backbone.

    Raises:
        LitMetaError: the file is missing, unreadable (a :class:`~lit_meta.errors.CheckpointError`
            naming what it could not load) or not a lit-meta checkpoint, or the
            learner was trained on a dataset whose items are not images (regression).
    """
    path = Path(ckpt_path)
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise LitMetaError(
            f"checkpoint {path} {what}; pass the .ckpt file lit-meta fit wrote, "
            "e.g. lightning_logs/version_0/checkpoints/last.ckpt"
        )
    checkpoint = checkpoints.read(path, weights_only=False)  # its errors name the file and what failed
    if not isinstance(checkpoint, Mapping) or "state_dict" not in checkpoint:
        raise LitMetaError(f"{path} is not a Lightning checkpoint (it has no state_dict); pass a .ckpt file")
    preprocessing = stored_preprocessing(checkpoint)
    if preprocessing is None:
        dataset = _recorded_dataset(checkpoint)
        if dataset is not None:
            preprocessing = dataset.image_preprocessing()
            if preprocessing is None:
                raise LitMetaError(
                    f"checkpoint {path} was trained on {type(dataset).__name__}, whose items are not images "
                    "(e.g. regression tasks); lit-meta adapt labels images and needs a learner trained on image "
                    "classification"
                )
    try:
        learner = MetaLearner.load_from_checkpoint(path, map_location=device)
    except ValueError as exc:
        raise LitMetaError(f"cannot load a learner from checkpoint {path}: {exc}") from exc
    return learner.eval(), preprocessing


def stored_preprocessing(checkpoint: Mapping[str, Any]) -> ImagePreprocessing | None:
    """The ``"preprocessing"`` entry of the datamodule state in a checkpoint, if any.

    Lightning keeps a datamodule's state under its class name, so every top-level
    entry is searched: subclasses of the datamodule are found too.
    """
    for value in checkpoint.values():
        if isinstance(value, Mapping) and isinstance(value.get("preprocessing"), Mapping):
            return ImagePreprocessing.from_dict(value["preprocessing"])
    return None


def _recorded_dataset(checkpoint: Mapping[str, Any]) -> MetaDataset | None:
    """The dataset family the datamodule's hyperparameters name, rebuilt without reading data; else ``None``."""
    hparams = checkpoint.get("datamodule_hyper_parameters")
    if not isinstance(hparams, Mapping) or not isinstance(hparams.get("dataset"), str):
        return None  # not an EpisodicDataModule, or one given a dataset instance
    try:
        return build_dataset(hparams["dataset"], root=hparams.get("root"), **(hparams.get("dataset_kwargs") or {}))
    except (LitMetaError, TypeError, ValueError):
        return None


# -- adaptation -----------------------------------------------------------------------------------
def adapt_to_folder(
    learner: MetaLearner,
    support_dir: str | Path,
    preprocessing: ImagePreprocessing,
    *,
    steps: int | None = None,
) -> tuple[TaskModel, list[str]]:
    """Adapt ``learner`` to the task a support folder gives: a task model and its class names.

    Class ``i`` of the task model is ``class_names[i]``, the ``i``-th class folder by
    name. The learner is put in eval mode (as for any inference) and its weights are
    not changed; gradient-based learners adapt with autograd enabled even inside
    ``torch.no_grad`` or ``torch.inference_mode``. Support images go to the
    learner's device.

    Args:
        learner: a trained classifier, e.g. from :func:`load_learner`.
        support_dir: ``support_dir/<class name>/<image files>``, at least two classes.
        preprocessing: how the learner's training images were decoded.
        steps: gradient steps of the adaptation, for learners that take them
            (:meth:`~lit_meta.learners.base.MetaLearner.adaptation_steps` is not ``None``);
            default: the learner's own.

    Raises:
        DatasetError: a bad support folder or an unreadable image, naming it.
        LitMetaError: a learner that cannot label this many classes, ``steps`` for a
            learner without steps, or images the learner's network cannot take.
    """
    files = support_files(support_dir)
    class_names = list(files)
    _check_classifier(learner, len(class_names), Path(support_dir))
    options = _adapt_options(learner, steps)
    if preprocessing.custom_transform is not None:
        warnings.warn(
            f"the training images went through the custom transform {preprocessing.custom_transform}, which "
            "lit-meta adapt does not apply; the images here are only decoded, resized and scaled to [0, 1]",
            UserWarning,
            stacklevel=2,
        )
    learner.eval()
    with learner.adaptation_context():  # images loaded here are normal tensors, never inference tensors
        support_x = torch.stack([preprocessing(path) for name in class_names for path in files[name]])
        support_y = torch.tensor([label for label, name in enumerate(class_names) for _ in files[name]])
        try:
            task_model = learner.adapt(support_x.to(learner.device), support_y.to(learner.device), **options)
        except RuntimeError as exc:
            raise LitMetaError(
                f"{type(learner).__name__} cannot adapt to the images of {support_dir} decoded as "
                f"{preprocessing.mode} {preprocessing.size[0]}x{preprocessing.size[1]} ({exc}); check the image "
                "mode and size against those it was trained on"
            ) from exc
    return task_model, class_names


def _check_classifier(learner: MetaLearner, ways: int, support_dir: Path) -> None:
    """The learner's head check (:meth:`~lit_meta.learners.base.MetaLearner.check_ways`) for the new task."""
    if learner.head_size() == 1:
        raise LitMetaError(
            f"the {type(learner).__name__} in this checkpoint has a single output, a regression model "
            "(e.g. sinusoid); lit-meta adapt labels images and needs a learner trained on image classification"
        )
    learner.check_ways(
        ways,
        f"support folder {support_dir} holds {ways} class folders",
        fix=f"give it {learner.head_size()} class folders, or train a learner for tasks of this many classes",
    )


def _adapt_options(learner: MetaLearner, steps: int | None) -> dict[str, int]:
    if steps is None:
        return {}
    if steps < 1:
        raise LitMetaError(f"steps={steps}: adaptation takes at least 1 step")
    if learner.adaptation_steps() is None:
        raise LitMetaError(
            f"{type(learner).__name__} adapts without gradient steps, so steps={steps} does not apply; leave it "
            "out (it is for learners that fine-tune, such as MAML and Reptile)"
        )
    return {"steps": steps}


# -- labelling ------------------------------------------------------------------------------------
def label_folder(
    task_model: TaskModel,
    class_names: Sequence[str],
    query_dir: str | Path,
    preprocessing: ImagePreprocessing,
    *,
    device: str | torch.device = "cpu",
    batch_size: int | None = None,
) -> list[Prediction]:
    """Label every image directly inside ``query_dir`` (sorted by file name) with ``task_model``.

    Learners whose BatchNorm uses batch statistics at evaluation (MAML and its
    relatives, as in their papers) label a batch jointly, like an episode's query
    set, so their labels can depend on which images share a batch.

    Args:
        task_model: from :func:`adapt_to_folder`.
        class_names: the task model's classes, in output order.
        query_dir: the folder of images to label.
        preprocessing: the decoding the task model's learner was trained with.
        device: the device of the learner the task model comes from.
        batch_size: images per call of the task model; default all at once.

    Raises:
        DatasetError: a missing or empty query folder, or an unreadable image, naming it.
        LitMetaError: a task model whose outputs do not match ``class_names``.
    """
    if batch_size is not None and batch_size < 1:
        raise LitMetaError(f"batch_size={batch_size}: use a positive number, or None for all images at once")
    root = Path(query_dir)
    files = query_files(root)
    step = batch_size or len(files)
    predictions: list[Prediction] = []
    for start in range(0, len(files), step):
        chunk = files[start : start + step]
        with torch.no_grad():
            logits = task_model(torch.stack([preprocessing(path) for path in chunk]).to(device))
        if logits.shape != (len(chunk), len(class_names)):
            raise LitMetaError(
                f"the task model gave outputs of shape {tuple(logits.shape)} for {len(chunk)} images, expected "
                f"({len(chunk)}, {len(class_names)}): one score per class of {list(class_names)}"
            )
        probability, label = logits.float().softmax(-1).max(-1)
        predictions += [
            Prediction(path.relative_to(root).as_posix(), class_names[index], value)
            for path, index, value in zip(chunk, label.tolist(), probability.tolist(), strict=True)
        ]
    return predictions


def write_predictions(predictions: Sequence[Prediction], path: str | Path) -> Path:
    """Write ``file,predicted_class,probability`` rows (see :data:`CSV_COLUMNS`); returns the path.

    Missing parent folders are created.

    Raises:
        LitMetaError: the file cannot be written, naming it.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as file:
            writer = csv.writer(file)
            writer.writerow(CSV_COLUMNS)
            writer.writerows((p.file, p.predicted_class, f"{p.probability:.6f}") for p in predictions)
    except OSError as exc:
        raise LitMetaError(f"cannot write the predictions to {path}: {exc}; pass another --output") from exc
    return path


def summarize(predictions: Sequence[Prediction], class_names: Sequence[str]) -> str:
    """One line: how many images went to each class, and the mean probability."""
    counts = Counter(p.predicted_class for p in predictions)
    per_class = ", ".join(f"{name} {counts[name]}" for name in class_names)
    mean = sum(p.probability for p in predictions) / max(len(predictions), 1)
    return f"{len(predictions)} images labelled: {per_class}; mean probability {mean:.3f}"


# -- command line ---------------------------------------------------------------------------------
def _image_size(text: str) -> tuple[int, int]:
    parts = text.lower().replace(",", "x").split("x")
    try:
        height, width = (int(parts[0]),) * 2 if len(parts) == 1 else (int(parts[0]), int(parts[1]))
    except (ValueError, IndexError):
        raise argparse.ArgumentTypeError(f"{text!r}: give one int (square) or HEIGHTxWIDTH, e.g. 28 or 84x84") from None
    if len(parts) > 2 or height < 1 or width < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give one positive int or HEIGHTxWIDTH, e.g. 28 or 84x84")
    return height, width


def build_parser() -> argparse.ArgumentParser:
    """The ``lit-meta adapt`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="lit-meta adapt",
        description=(
            "Adapt a trained learner to a new task from a few labelled images, then label new images.\n\n"
            "  SUPPORT/<class name>/<image files>   a few examples of each new class (at least 2 classes)\n"
            "  QUERY/<image files>                  images to label, directly inside (sub-folders are not read)\n\n"
            "Images are decoded as the learner's training images were (mode, size, polarity), as the checkpoint\n"
            "records; --mode, --image_size and --invert override that, or supply it for checkpoints without it."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--ckpt_path", required=True, metavar="CKPT", help="checkpoint written by lit-meta fit or Trainer.fit"
    )
    parser.add_argument("--support", required=True, metavar="DIR", help="folder of class folders of labelled examples")
    parser.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE",
        help="import this module first, registering the learners it defines (e.g. your own learner's module, "
        "on PYTHONPATH); repeatable. lit-meta never imports a module because a checkpoint names it",
    )
    parser.add_argument("--query", required=True, metavar="DIR", help="folder of images to label")
    parser.add_argument(
        "--output",
        default="predictions.csv",
        metavar="CSV",
        help="CSV to write: file,predicted_class,probability (default: %(default)s)",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        metavar="N",
        help="adaptation steps of gradient-based learners (default: as in training)",
    )
    parser.add_argument(
        "--device", default="cpu", metavar="DEVICE", help="torch device, e.g. cpu or cuda (default: %(default)s)"
    )
    parser.add_argument(
        "--batch_size", type=int, default=None, metavar="N", help="query images per forward pass (default: all at once)"
    )
    parser.add_argument("--mode", choices=("L", "RGB"), default=None, help="decode images as grey scale or colour")
    parser.add_argument(
        "--image_size", type=_image_size, default=None, metavar="SIZE", help="N or HEIGHTxWIDTH, e.g. 28 or 84x84"
    )
    parser.add_argument(
        "--invert",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="invert grey levels (Omniglot-style dark ink on white becomes bright ink on black)",
    )
    return parser


def _preprocessing(stored: ImagePreprocessing | None, args: argparse.Namespace) -> ImagePreprocessing:
    """The checkpoint's decoding with the options given on the command line replaced."""
    if stored is None:
        if args.mode is None or args.image_size is None:
            raise LitMetaError(
                f"checkpoint {args.ckpt_path} does not record how its training images were decoded (it was saved "
                "without its datamodule, or by an older lit-meta); pass --mode L|RGB and --image_size, and --invert "
                "if the files are dark on a light background but the training images were bright on black"
            )
        return ImagePreprocessing(args.mode, args.image_size, invert=bool(args.invert))
    given = {"mode": args.mode, "size": args.image_size, "invert": args.invert}
    return dataclasses.replace(stored, **{name: value for name, value in given.items() if value is not None})


def main(argv: Sequence[str] | None = None) -> int:
    """``lit-meta adapt``: 0 on success, 2 on bad input (the error is printed to stderr)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # --help (0), or a usage error argparse has printed (2)
        return exit_.code if isinstance(exit_.code, int) else 0
    try:
        device = torch_device(args.device)
        import_user_modules(args.imports)
        learner, stored = load_learner(args.ckpt_path, device)
        preprocessing = _preprocessing(stored, args)
        task_model, class_names = adapt_to_folder(learner, args.support, preprocessing, steps=args.steps)
        predictions = label_folder(
            task_model, class_names, args.query, preprocessing, device=device, batch_size=args.batch_size
        )
        path = write_predictions(predictions, args.output)
    except LitMetaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {len(predictions)} predictions to {path}")
    print(summarize(predictions, class_names))
    return 0


__all__ = [
    "CSV_COLUMNS",
    "Prediction",
    "adapt_to_folder",
    "build_parser",
    "label_folder",
    "load_learner",
    "main",
    "query_files",
    "stored_preprocessing",
    "summarize",
    "support_files",
    "write_predictions",
]
