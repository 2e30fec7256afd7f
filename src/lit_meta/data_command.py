"""``lit-meta data``: the dataset families, a root checked against the published split, the cache built.

* ``lit-meta data list`` names every registered family (:data:`~lit_meta.data.datasets.DATASETS`).
* ``lit-meta data check NAME --root DIR`` counts the classes and images of each split of a
  published benchmark (an :class:`~lit_meta.data.datasets.ImageBenchmark`) without decoding
  anything, and prints them against the published counts with the missing classes
  (:meth:`ImageBenchmark.check <lit_meta.data.datasets.ImageBenchmark.check>`). Exit status
  0 when the root holds the published split, 1 when it does not, 2 on an error.
* ``lit-meta data prepare NAME --root DIR`` fetches what the family can fetch and builds its
  decoded cache, then says where the cache is, its size on disk and how long it took.

``--option KEY=VALUE`` passes a constructor argument of the family (``split=meta_dataset``,
``allow_partial=true``); values are read as YAML scalars, as ``data.dataset_kwargs`` is.
"""

from __future__ import annotations

import argparse
import difflib
import inspect
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import yaml

from lit_meta.data.array_cache import RECORD_NAME
from lit_meta.data.datasets import DATASETS, ImageBenchmark, MetaDataset, Omniglot, build_dataset
from lit_meta.data.datasets.base import SPLIT_NAMES
from lit_meta.errors import ConfigError, DatasetError, LitMetaError

EXIT_MISMATCH = 1
"""``data check``'s exit status for a root that does not hold the published split."""
EXIT_ERROR = 2
"""Exit status of a refused command line, an unknown family or absent files."""
_OMNIGLOT_NOTE = " (loading refuses a release that lacks characters of the published split it names)"


class _Parser(argparse.ArgumentParser):
    """A usage error is one line naming the subcommand's ``--help``, not the usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _families_text() -> str:
    lines = []
    for name in sorted(DATASETS):
        family = DATASETS[name]
        if issubclass(family, ImageBenchmark):
            sizes = " / ".join(f"{family.SPLIT_SIZES[s].classes}" for s in SPLIT_NAMES)
            images = " / ".join(f"{family.SPLIT_SIZES[s].images}" for s in SPLIT_NAMES)
            what = f"{family.NAME}: {sizes} classes, {images} images (check, prepare)"
        else:
            what = f"{_summary(family)} (prepare)"
        lines.append(f"  {name:<16} {what}")
    return "\n".join(lines)


def _summary(family: type, width: int = 60) -> str:
    """The first sentence of ``family``'s docstring, without RST markup, cut to ``width`` characters."""
    paragraph = " ".join((inspect.getdoc(family) or family.__name__).split("\n\n")[0].split())
    sentence = paragraph.replace("``", "").split(". ")[0].rstrip(".")
    return sentence if len(sentence) <= width else sentence[: width - 3].rsplit(" ", 1)[0] + " ..."


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``lit-meta data`` and its ``list``, ``check`` and ``prepare`` subcommands."""
    parser = _Parser(
        prog="lit-meta data",
        description="List the dataset families, check a prepared folder against a benchmark's\n"
        "published split, or build a family's decoded cache.",
        epilog=f"dataset families (NAME):\n{_families_text()}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="{list,check,prepare}", parser_class=_Parser)
    commands.required = True
    commands.add_parser("list", help="list the dataset families", description="List the dataset families.")
    check = commands.add_parser(
        "check",
        help="count classes and images per split against the published counts",
        description="Count the classes and images of each split in DIR (without decoding) and print them "
        "against the benchmark's published counts, with the classes missing or short of images.",
        epilog="exit status: 0 when DIR holds the published split, 1 when it does not (the table says "
        "what differs), 2 on an error (an unknown NAME, an unknown option, files absent)",
    )
    prepare = commands.add_parser(
        "prepare",
        help="fetch what can be fetched and build the decoded cache",
        description="Fetch the family's files where it can (else say which to obtain and where to put "
        "them) and decode them once into the cache that training reads; print where the cache is, its "
        "size on disk and how long it took. A cache that is up to date is kept.",
    )
    for sub in (check, prepare):
        sub.add_argument("name", metavar="NAME", help="a dataset family, as `lit-meta data list` names it")
        sub.add_argument(
            "--root", required=True, metavar="DIR", help="the folder holding the family's folder (or its files)"
        )
        sub.add_argument(
            "--image-size", type=int, default=None, metavar="N", help="side of the square images, in pixels"
        )
        sub.add_argument(
            "--option",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="a constructor argument of the family, e.g. split=meta_dataset or allow_partial=true "
            "(repeatable; VALUE read as YAML)",
        )
    return parser


def family_named(name: str) -> type[MetaDataset]:
    """The registered family called ``name`` (``-`` and case ignored).

    Raises:
        DatasetError: no such family; the message names the nearest and lists them all.
    """
    key = name.lower().replace("-", "_")
    if key in DATASETS:
        return DATASETS[key]
    close = difflib.get_close_matches(key, DATASETS, n=1)
    suggestion = f" Did you mean {close[0]!r}?" if close else ""
    raise DatasetError(
        f"unknown dataset family {name!r}.{suggestion} Families: {', '.join(sorted(DATASETS))} (lit-meta data list)"
    )


def family_options(family: type[MetaDataset], pairs: Sequence[str], image_size: int | None) -> dict[str, Any]:
    """The constructor arguments given as ``KEY=VALUE`` (and ``--image-size``), checked against ``family``'s.

    Raises:
        ConfigError: a pair without ``=``, or a key ``family`` does not take (the nearest is named).
    """
    accepted = [p for p in inspect.signature(family).parameters if p not in ("self", "root")]
    options: dict[str, Any] = {}
    for pair in pairs:
        key, equals, value = pair.partition("=")
        if not equals or not key:
            raise ConfigError(f"--option {pair!r}: give KEY=VALUE, e.g. --option allow_partial=true")
        options[key.strip()] = yaml.safe_load(value) if value else ""
    if image_size is not None:
        options["image_size"] = image_size
    for key in options:
        if key not in accepted:
            close = difflib.get_close_matches(key, accepted, n=1)
            suggestion = f" Did you mean {close[0]!r}?" if close else ""
            flag = "--image-size" if key == "image_size" else f"--option {key}"
            raise ConfigError(
                f"{flag}: {family.__name__} takes no argument {key!r}.{suggestion} Its arguments: {', '.join(accepted)}"
            )
    return options


def _build(args: argparse.Namespace) -> MetaDataset:
    family = family_named(args.name)
    options = family_options(family, args.option, args.image_size)
    try:
        return build_dataset(args.name, root=args.root, **options)
    except LitMetaError:
        raise
    except (TypeError, ValueError) as exc:  # a value of the wrong type for the constructor
        given = ", ".join(f"{key}={value!r}" for key, value in options.items())
        raise ConfigError(f"{family.__name__} refused the options {given}: {exc}") from exc


def run_check(args: argparse.Namespace) -> int:
    """Print the check of ``args.root``; 0 if it holds the published split, :data:`EXIT_MISMATCH` if not.

    Raises:
        DatasetError: the family has no published counts (it is not an ImageBenchmark), or
            its files are absent (the family's message).
    """
    dataset = _build(args)
    if not isinstance(dataset, ImageBenchmark):
        benchmarks = sorted(name for name, family in DATASETS.items() if issubclass(family, ImageBenchmark))
        raise DatasetError(
            f"{args.name!r} has no published counts to check; `lit-meta data check` checks "
            f"{', '.join(benchmarks) or 'the published benchmarks'}. Use `lit-meta data prepare {args.name} "
            f"--root {args.root}` to fetch and load it{_OMNIGLOT_NOTE if isinstance(dataset, Omniglot) else ''}"
        )
    report = dataset.check()
    print(report.format())
    return 0 if report.ok else EXIT_MISMATCH


def run_prepare(args: argparse.Namespace) -> int:
    """Fetch and decode; print where the cache is, its size on disk and how long it took.

    An :class:`~lit_meta.data.datasets.ImageBenchmark` builds its array cache (kept when up to
    date); another family fetches its files (:meth:`~lit_meta.data.datasets.MetaDataset.prepare`)
    and loads each split, which builds whatever cache it keeps.
    """
    dataset = _build(args)
    start = time.perf_counter()
    if isinstance(dataset, ImageBenchmark):
        record = dataset.cache_folder / RECORD_NAME
        before = record.stat().st_mtime_ns if record.is_file() else None
        dataset.prepare()
        elapsed = time.perf_counter() - start
        after = record.stat().st_mtime_ns if record.is_file() else None
        if after is None:
            print(f"{dataset.NAME}: loaded in {elapsed:.1f} s; no cache written (cache=False or not writable)")
            return 0
        what = "up to date, kept" if before == after else "built"
        print(
            f"{dataset.NAME}: cache {what} in {elapsed:.1f} s at {dataset.cache_folder} "
            f"({_size(dataset.cache_bytes())} on disk)"
        )
        return 0
    dataset.prepare()
    for split in SPLIT_NAMES:
        if dataset.has_split(split):
            dataset.split(split)
    elapsed = time.perf_counter() - start
    print(f"{args.name}: ready under {Path(args.root)} in {elapsed:.1f} s (files fetched, every split loaded once)")
    return 0


def _size(num_bytes: int) -> str:
    """``"12.3 MiB"``: bytes in the largest binary unit (up to GiB) that leaves at least 1."""
    exponent = 0 if num_bytes < 1024 else min(3, (num_bytes.bit_length() - 1) // 10)
    unit = ("B", "KiB", "MiB", "GiB")[exponent]
    return f"{num_bytes} B" if exponent == 0 else f"{num_bytes / (1 << 10 * exponent):.1f} {unit}"


def main(argv: Sequence[str] | None = None, debug: bool = False) -> int:
    """``lit-meta data``: 0 on success, 1 for a check that does not match, 2 on an error (one line on stderr).

    With ``debug``, lit-meta's errors propagate with their traceback.
    """
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # --help (0), or a usage error printed (2)
        return exit_.code if isinstance(exit_.code, int) else 0
    if args.command == "list":
        print(f"dataset families (NAME):\n{_families_text()}")
        return 0
    try:
        return run_check(args) if args.command == "check" else run_prepare(args)
    except LitMetaError as error:
        if debug:
            raise
        print(f"lit-meta: error: {error}", file=sys.stderr)
        return EXIT_ERROR


__all__ = ["EXIT_ERROR", "EXIT_MISMATCH", "build_parser", "family_named", "family_options", "main"]
