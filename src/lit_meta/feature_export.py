"""Embedding every item of a dataset with a trained learner's backbone: ``lit-meta embed``.

The backbone runs once over every split and the vectors are written to a features
file (:mod:`lit_meta.data.datasets.features`), which the ``"features"`` dataset serves
to any learner with no backbone in the loop: LEO (Rusu et al., 2019, "Meta-Learning
with Latent Embedding Optimization", ICLR, Section 4.2.1) meta-learns on fixed
pre-trained embeddings this way. From Python::

    learner = MetaLearner.load_from_checkpoint("last.ckpt", weights_only=True)
    arrays = embed_dataset(feature_network(learner), build_dataset("glyphs"))
    arrays.save("glyph_features.npz")

What a feature is:

* the backbone's output, flattened to one vector per item (a feature map
  ``[C, H, W]``, as Relation Networks use, becomes ``C*H*W`` numbers);
* for learners whose class scores are the backbone's last ``nn.Linear``
  (:attr:`~lit_meta.learners.base.MetaLearner.class_scores` ``== "backbone_head"``:
  MAML and the other gradient-based learners), the input of that layer, read with
  a forward hook (:class:`HeadInput`): its outputs are one task's logits, not features.

BatchNorm. Embedding runs the network in eval mode, where BatchNorm normalises with
its running statistics; whether those mean anything depends on how the learner
trained, and each layer is checked:

* running statistics updated in training (``num_batches_tracked > 0``): metric-based
  learners call the backbone as a module, so training updates them and evaluation
  (``adapt``, validation, test) normalises with them. They are used as they are, so a
  feature is exactly the embedding the learner itself computes at evaluation, and
  depends only on its item.
* running statistics never updated (still their initial mean 0, variance 1):
  gradient-based learners normalise with each task's batch statistics and never
  touch them (Finn et al., 2017, Section 5.1), so eval mode would normalise with
  statistics the learner never saw. Such layers get the statistics of the
  meta-training items instead, the population statistics that per-task batch
  statistics estimate: a copy of the network accumulates them over the train split
  (shuffled, in batches, a cumulative average as ``momentum=None`` keeps), then
  embeds every split in eval mode. Features still depend only on their item (not on
  the batch it is embedded in), and no split but the train split informs them.
* layers without running statistics (``track_running_stats=False``) normalise every
  batch of ``batch_size`` items with its own statistics, as they do in the learner.

The learner's own network is never changed.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import pickle
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from lit_meta import __version__
from lit_meta.command_line import import_user_modules, torch_device
from lit_meta.data.datasets import DATASETS, MetaDataset, build_dataset
from lit_meta.data.datasets.base import SPLIT_NAMES, ClassIndexedDataset, SplitName
from lit_meta.data.datasets.features import FeatureArrays
from lit_meta.errors import DatasetError, LitMetaError
from lit_meta.functional.params import evaluation_mode
from lit_meta.learners import checkpoints
from lit_meta.learners.base import MetaLearner

DEFAULT_BATCH_SIZE = 256
BatchNormUse = Literal["running", "train_split", "none"]
"""How the embedding normalised with BatchNorm (see the module docstring), as recorded in the file."""


class HeadInput(nn.Module):
    """The input of ``backbone``'s last registered ``nn.Linear`` (its head), flattened: the features the head scores.

    The backbone runs whole (the head too, its output discarded), so any network
    whose head is its last ``nn.Linear`` works without knowing its structure.

    Raises:
        ValueError: ``backbone`` has no ``nn.Linear``.
    """

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        heads = [module for module in backbone.modules() if isinstance(module, nn.Linear)]
        if not heads:
            raise ValueError(f"{type(backbone).__name__} has no nn.Linear head whose input could be the features")
        self.backbone = backbone
        self.head = heads[-1]

    def forward(self, x: Tensor) -> Tensor:
        captured: list[Tensor] = []
        hook = self.head.register_forward_hook(lambda module, inputs, output: captured.append(inputs[0]))
        try:
            self.backbone(x)
        finally:
            hook.remove()
        return captured[-1].flatten(1)


def feature_network(learner: MetaLearner) -> nn.Module:
    """The network whose output is a learner's features: its backbone, or the input of the backbone's head
    when the head gives the class scores (:class:`HeadInput`)."""
    if learner.class_scores == "backbone_head":
        return HeadInput(learner.backbone)
    return learner.backbone


def embed_dataset(
    network: nn.Module,
    dataset: MetaDataset,
    splits: Sequence[SplitName] | None = None,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    metadata: Mapping[str, Any] | None = None,
) -> FeatureArrays:
    """``network`` applied to every item of the given splits of ``dataset``, in eval mode, without gradients.

    BatchNorm layers whose running statistics were never updated get those of the
    train split's items first, on a copy (see the module docstring). Classes are
    numbered split after split (train, val, test), each split's classes in its own
    order, and items keep their split's order.

    Args:
        network: items ``[n, *item_shape]`` -> features ``[n, ...]`` (flattened); e.g. :func:`feature_network`.
        dataset: a family of class-indexed splits.
        splits: the splits to embed; default every split the dataset has classes for.
        batch_size: items per forward pass; items go to the device of the network's parameters
            and the features come back to the CPU as float32.
        metadata: plain values recorded in the file, with ``"batch_norm"`` added.

    Raises:
        DatasetError: a split the dataset lacks, a regression dataset (no items to embed), or
            BatchNorm statistics to compute without a train split.
        ValueError: ``batch_size`` below 1.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: embed at least one item per forward pass")
    if splits is None:
        splits = [name for name in SPLIT_NAMES if dataset.has_split(name)]
    missing = [name for name in splits if name not in SPLIT_NAMES or not dataset.has_split(name)]
    if missing:
        raise DatasetError(f"{dataset!r} has no classes for the splits {missing}; embed some of {list(SPLIT_NAMES)}")
    ordered = [name for name in SPLIT_NAMES if name in splits]
    sources = {name: _class_indexed(dataset, name) for name in ordered}
    parameter = next(network.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    with torch.no_grad():
        prepared, batch_norm = _normalised_network(network, dataset, sources, batch_size, device)
        with evaluation_mode(prepared):
            features = {name: _embed(prepared, items, batch_size, device) for name, items in sources.items()}
    offsets = np.cumsum([0, *(sources[name].num_classes for name in ordered)])[:-1]
    return FeatureArrays(
        features=np.concatenate([features[name] for name in ordered]),
        labels=np.concatenate([sources[name].labels + offset for name, offset in zip(ordered, offsets, strict=True)]),
        class_names=np.array([n for name in ordered for n in sources[name].class_names], dtype=np.str_),
        class_ids=np.concatenate([sources[name].class_ids for name in ordered]).astype(np.int64),
        class_split=np.array([name for name in ordered for _ in range(sources[name].num_classes)], dtype=np.str_),
        metadata={**(metadata or {}), "batch_norm": batch_norm},
    )


def _class_indexed(dataset: MetaDataset, name: SplitName) -> ClassIndexedDataset:
    split = dataset.split(name)
    if not isinstance(split, ClassIndexedDataset):
        raise DatasetError(
            f"the {name} split of {type(dataset).__name__} is a distribution of regression tasks, not a set of "
            "items; lit-meta embed embeds the items of a classification dataset"
        )
    return split


def _embed(network: nn.Module, source: ClassIndexedDataset, batch_size: int, device: torch.device) -> np.ndarray:
    parts = [
        network(source.load(np.arange(start, min(start + batch_size, len(source)))).to(device)).flatten(1)
        for start in range(0, len(source), batch_size)
    ]
    return torch.cat(parts).float().cpu().numpy()


def _normalised_network(
    network: nn.Module,
    dataset: MetaDataset,
    sources: Mapping[str, ClassIndexedDataset],
    batch_size: int,
    device: torch.device,
) -> tuple[nn.Module, BatchNormUse]:
    """``network`` itself when its BatchNorm running statistics were trained; otherwise a copy whose untouched
    layers hold the statistics of the train split's items (a cumulative average over shuffled batches)."""
    layers = [module for module in network.modules() if isinstance(module, _BatchNorm)]
    untouched = [
        i for i, layer in enumerate(layers) if layer.track_running_stats and int(layer.num_batches_tracked) == 0
    ]
    if not untouched:
        return network, "running" if layers else "none"
    if not dataset.has_split("train"):
        raise DatasetError(
            f"{type(network).__name__}'s BatchNorm running statistics were never updated, so embedding normalises "
            f"with those of the train split's items, but {dataset!r} has no train split; use a dataset with one"
        )
    train = sources["train"] if "train" in sources else _class_indexed(dataset, "train")
    network = copy.deepcopy(network)
    copied = [module for module in network.modules() if isinstance(module, _BatchNorm)]
    network.eval()
    for i in untouched:
        copied[i].reset_running_stats()
        copied[i].momentum = None  # a cumulative average: every batch counts the same
        copied[i].train()
    # A fixed shuffle: batches of a class-sorted split would each see a few classes only.
    order = np.random.default_rng(0).permutation(len(train))
    for start in range(0, len(order), batch_size):
        network(train.load(order[start : start + batch_size]).to(device))
    return network, "train_split"


# -- checkpoint and command line ------------------------------------------------------------------
def export_features(
    ckpt_path: str | Path,
    output: str | Path,
    *,
    dataset: str | None = None,
    root: str | None = None,
    dataset_kwargs: Mapping[str, Any] | None = None,
    splits: Sequence[SplitName] | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: str | torch.device = "cpu",
    overwrite: bool = False,
) -> tuple[Path, FeatureArrays]:
    """Embed a dataset with the learner of a checkpoint and write the features file; returns its path and arrays.

    The dataset defaults to the one the checkpoint's datamodule was built with (its
    ``datamodule_hyper_parameters``): its name, ``root`` and ``dataset_kwargs``, each
    replaced by the argument given. Naming another dataset drops the recorded
    ``root`` and ``dataset_kwargs``. The learner is loaded with ``weights_only=True``
    onto ``device`` (a torch device name, e.g. ``"cpu"`` or ``"cuda"``), where it runs.

    Raises:
        LitMetaError: a missing or unreadable checkpoint, an existing ``output`` without
            ``overwrite``, no dataset recorded nor given, or an unknown or unreadable dataset.
    """
    output = Path(output)
    if output.exists() and not overwrite:
        raise LitMetaError(f"{output} exists; pass --overwrite to replace it, or choose another --output")
    path = Path(ckpt_path)
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise LitMetaError(f"checkpoint {path} {what}; pass the .ckpt file lit-meta fit wrote")
    name, root, kwargs = _dataset_arguments(path, dataset, root, dataset_kwargs)
    try:
        family = build_dataset(name, root=root, **kwargs)
    except TypeError as error:  # a keyword the family does not take
        raise LitMetaError(f"dataset {name!r} with dataset_kwargs {kwargs}: {error}; fix --dataset_kwargs") from error
    family.prepare()
    try:
        learner = MetaLearner.load_from_checkpoint(path, map_location=device, weights_only=True).to(device)
    except (ValueError, pickle.UnpicklingError, RuntimeError) as error:
        raise LitMetaError(f"cannot load a learner from checkpoint {path}: {error}") from error
    backbone = learner.hparams.get("backbone")
    metadata = {
        "checkpoint": str(path.resolve()),
        "learner": f"{type(learner).__module__}.{type(learner).__qualname__}",
        "backbone": backbone if isinstance(backbone, Mapping) else type(learner.backbone).__qualname__,
        "features": "backbone_head_input" if learner.class_scores == "backbone_head" else "backbone_output",
        "dataset": name,
        "root": root,
        "dataset_kwargs": dict(kwargs),
        "lit_meta_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        network = feature_network(learner)
    except ValueError as error:
        raise LitMetaError(f"cannot embed with the {metadata['learner']} of {path}: {error}") from error
    arrays = embed_dataset(network, family, splits, batch_size=batch_size, metadata=metadata)
    try:
        return arrays.save(output, overwrite=overwrite), arrays
    except DatasetError as error:
        raise LitMetaError(str(error)) from error


def _dataset_arguments(
    ckpt_path: Path, dataset: str | None, root: str | None, dataset_kwargs: Mapping[str, Any] | None
) -> tuple[str, str | None, dict[str, Any]]:
    """The dataset name, root and kwargs: those given, else those the checkpoint's datamodule recorded."""
    recorded: Mapping[str, Any] = {}
    checkpoint = checkpoints.read(ckpt_path, weights_only=True)  # its errors name the file and what failed
    hparams = checkpoint.get("datamodule_hyper_parameters") if isinstance(checkpoint, Mapping) else None
    if isinstance(hparams, Mapping) and isinstance(hparams.get("dataset"), str):
        recorded = hparams
    if dataset is None and not recorded:
        raise LitMetaError(
            f"checkpoint {ckpt_path} does not record its dataset (it was saved without an EpisodicDataModule); pass "
            f"--dataset NAME (one of {', '.join(sorted(DATASETS))}) and --root, --dataset_kwargs as needed"
        )
    if dataset is not None and dataset != recorded.get("dataset"):
        recorded = {}
    return (
        dataset or recorded["dataset"],
        root if root is not None else recorded.get("root"),
        dict(dataset_kwargs if dataset_kwargs is not None else recorded.get("dataset_kwargs") or {}),
    )


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"{text!r} is not JSON ({error}); e.g. '{{\"num_classes\": 100}}'") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"{text!r}: give a JSON object of keyword arguments, e.g. '{{\"seed\": 1}}'")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The ``lit-meta embed`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="lit-meta embed",
        description=(
            "Run a trained learner's backbone once over every item of a dataset and write the features to an .npz\n"
            "file, which the dataset 'features' serves to any learner (data.dataset: features, data.root: FILE).\n\n"
            "The dataset is the one the checkpoint was trained on, unless --dataset names another. Learners whose\n"
            "backbone ends in the class scores (MAML and other gradient-based learners) give the input of that\n"
            "last linear layer. BatchNorm uses the running statistics training left, or, where training never\n"
            "updated them (per-task batch statistics), statistics of the train split's items."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--ckpt_path", required=True, metavar="CKPT", help="checkpoint written by lit-meta fit")
    parser.add_argument("--output", required=True, metavar="FILE.npz", help="the features file to write")
    parser.add_argument("--dataset", default=None, metavar="NAME", help=f"one of {', '.join(sorted(DATASETS))}")
    parser.add_argument("--root", default=None, metavar="DIR", help="the dataset's root")
    parser.add_argument(
        "--dataset_kwargs", type=_json_object, default=None, metavar="JSON", help="the dataset's other arguments"
    )
    parser.add_argument(
        "--splits", nargs="+", choices=SPLIT_NAMES, default=None, help="splits to embed (default: all it has)"
    )
    parser.add_argument(
        "--batch_size", type=int, default=DEFAULT_BATCH_SIZE, metavar="N", help="items per forward pass (%(default)s)"
    )
    parser.add_argument(
        "--device", default="auto", metavar="DEVICE", help="cpu, cuda, or auto: cuda when available (%(default)s)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    parser.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE",
        help="import this module first, registering the learners it defines; repeatable",
    )
    return parser


def summarize(arrays: FeatureArrays, path: Path, seconds: float) -> str:
    """One line: items, dimension, classes per split, the file and the time taken."""
    per_split = {name: int((arrays.class_split == name).sum()) for name in SPLIT_NAMES}
    counts = ", ".join(f"{name} {count}" for name, count in per_split.items() if count)
    items, dim = arrays.features.shape
    return f"embedded {items} items into {dim} features (classes: {counts}) -> {path} in {seconds:.1f} s"


def main(argv: Sequence[str] | None = None) -> int:
    """``lit-meta embed``: 0 on success, 2 on bad input (the error is printed to stderr)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # --help (0), or a usage error argparse has printed (2)
        return exit_.code if isinstance(exit_.code, int) else 0
    start = time.perf_counter()
    try:
        if args.batch_size < 1:
            raise LitMetaError(f"--batch_size {args.batch_size}: embed at least one item per forward pass")
        auto = "cuda" if torch.cuda.is_available() else "cpu"
        device = torch_device(auto if args.device == "auto" else args.device)
        import_user_modules(args.imports)
        path, arrays = export_features(
            args.ckpt_path,
            args.output,
            dataset=args.dataset,
            root=args.root,
            dataset_kwargs=args.dataset_kwargs,
            splits=args.splits,
            batch_size=args.batch_size,
            device=device,
            overwrite=args.overwrite,
        )
    except LitMetaError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(summarize(arrays, path, time.perf_counter() - start))
    return 0


__all__ = [
    "DEFAULT_BATCH_SIZE",
    "HeadInput",
    "build_parser",
    "embed_dataset",
    "export_features",
    "feature_network",
    "main",
    "summarize",
]
