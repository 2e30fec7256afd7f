"""The ``lit-meta`` console script.

The LightningCLI front end (``fit``, ``validate``, ``test``, ``predict``,
``adapt``) arrives with the learners; until then the script describes the
package and lists the registered datasets.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from lit_meta import __version__
from lit_meta.data.datasets import DATASETS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lit-meta",
        description="Meta-learning and few-shot learning for PyTorch Lightning.",
        epilog="datasets: " + ", ".join(sorted(DATASETS)),
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
