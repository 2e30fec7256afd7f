"""The ``lit-meta`` console script.

The LightningCLI front end (``fit``, ``validate``, ``test``, ``predict``,
``adapt``) arrives with the CLI issue; until then the script describes the
package and lists the learners and the registered datasets.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from lit_meta import __version__, learners
from lit_meta.data.datasets import DATASETS


def available_learners() -> list[str]:
    """The concrete learners exported by :mod:`lit_meta.learners`."""
    return sorted(
        name
        for name in learners.__all__
        if isinstance(cls := getattr(learners, name), type)
        and issubclass(cls, learners.MetaLearner)
        and cls is not learners.MetaLearner
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lit-meta",
        description="Meta-learning and few-shot learning for PyTorch Lightning.",
        epilog=f"learners: {', '.join(available_learners())}\ndatasets: {', '.join(sorted(DATASETS))}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"lit-meta {__version__}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    parser.parse_args(argv)
    parser.print_help()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
