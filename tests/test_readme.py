"""The README's Python blocks run as written, in order, in one namespace, as a reader runs them.

Nothing in the README is edited at test time. What makes the run short and offline lives
here: a fixture puts a tiny generated Omniglot release where the data-layer example looks
for it (``data/omniglot``, so nothing is downloaded; its characters are named in the
published split lists, and the registry's ``"omniglot"`` accepts the partial release:
``allow_partial=True``), points the glyph cache at the
session's, runs in an empty working directory, and caps every ``lightning.Trainer`` at
:data:`MAX_STEPS` training steps and one validation/test/predict batch
(``LIT_META_README_STEPS`` changes the cap). A block whose first line names a file
(``# my_transforms.py``) is saved to that file, as a reader does, and later blocks import
it from the working directory. A failure names the README line.
"""

from __future__ import annotations

import os
import re
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning
import lightning.pytorch
import pytest

from lit_meta.data.datasets import DATASETS, Omniglot
from tests.cli.test_configs import glyph_root
from tests.conftest import REPO_ROOT
from tests.data.test_omniglot import make_release

__all__ = ["glyph_root"]  # the session's glyph cache, a fixture shared with tests/cli/test_configs.py

README = REPO_ROOT / "README.md"
MAX_STEPS = int(os.environ.get("LIT_META_README_STEPS", "3"))


def python_blocks(text: str) -> list[tuple[int, str]]:
    """``(first line number, code)`` of every fenced ``python`` block, in order."""
    blocks = []
    for match in re.finditer(r"^```python\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE):
        blocks.append((text.count("\n", 0, match.start(1)) + 1, match.group(1)))
    return blocks


class ShortTrainer(lightning.Trainer):
    """A ``Trainer`` whose run is cut to :data:`MAX_STEPS` steps and one batch per evaluation."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        steps = kwargs.get("max_steps", -1)
        kwargs["max_steps"] = MAX_STEPS if steps is None or steps < 0 else min(steps, MAX_STEPS)
        if isinstance(kwargs.get("val_check_interval"), int):
            kwargs["val_check_interval"] = min(kwargs["val_check_interval"], MAX_STEPS)
        for name in ("limit_val_batches", "limit_test_batches", "limit_predict_batches"):
            kwargs.setdefault(name, 1)
        kwargs.setdefault("enable_progress_bar", False)
        super().__init__(*args, **kwargs)


class MiniatureOmniglot(Omniglot):
    """Omniglot that splits a partial release by the published lists (``allow_partial=True``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_partial", True)
        super().__init__(*args, **kwargs)


@pytest.fixture
def readme_workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, glyph_root: Path) -> Iterator[Path]:
    # 3 x 6 characters with 16 drawings each: the data-layer example's 5-way 1-shot 15-query episodes
    # from the default (published) split, whose lists put Arcadian in train, Bengali in val, ULOG in test.
    make_release(
        tmp_path / "data" / "omniglot",
        drawers=16,
        background={"Arcadian": 6, "Bengali": 6},
        evaluation={"ULOG": 6},
    )
    monkeypatch.setitem(DATASETS, "omniglot", MiniatureOmniglot)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("LIT_META_CACHE", str(glyph_root))
    monkeypatch.setattr(lightning, "Trainer", ShortTrainer)
    monkeypatch.setattr(lightning.pytorch, "Trainer", ShortTrainer)
    yield tmp_path
    for name in [path.stem for path in tmp_path.glob("*.py")]:
        sys.modules.pop(name, None)


def test_readme_has_the_python_examples() -> None:
    blocks = python_blocks(README.read_text())
    assert len(blocks) >= 8, "the README's Python examples were not found: did the fences change?"


def test_readme_python_blocks_run_as_written(readme_workspace: Path) -> None:
    namespace: dict[str, Any] = {"__name__": "readme"}
    for line, code in python_blocks(README.read_text()):
        if file_name := re.fullmatch(r"# (\w+\.py)", code.split("\n", 1)[0]):
            (readme_workspace / file_name[1]).write_text(code)
            continue
        # Padding keeps the README's line numbers in tracebacks.
        compiled = compile("\n" * (line - 1) + code, str(README), "exec")
        try:
            exec(compiled, namespace)
        except Exception:
            pytest.fail(f"the README's Python block at line {line} failed:\n{traceback.format_exc()}", pytrace=False)
