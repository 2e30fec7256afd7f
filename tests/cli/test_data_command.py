"""``lit-meta data list|check|prepare`` through the real command, on the ``Tiny`` benchmark family
of ``tests/data/test_image_benchmark.py`` registered by name."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lit_meta.cli import main
from lit_meta.data import datasets
from lit_meta.data.datasets import ProceduralGlyphs
from lit_meta.errors import ConfigError, DatasetError
from tests.data.test_image_benchmark import Tiny, write_tiny


@pytest.fixture(autouse=True)
def tiny_registered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(datasets.DATASETS, "tiny", Tiny)
    Tiny.decodes = 0


def run(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    status = main(["data", *map(str, argv)])
    out, err = capsys.readouterr()
    return status, out, err


def test_check_of_a_complete_root_prints_the_table_and_exits_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_tiny(tmp_path)
    status, out, err = run(capsys, "check", "tiny", "--root", tmp_path)
    assert (status, err) == (0, "")
    assert out.splitlines()[1:] == [
        "split          classes              images",
        "train       3 / 3            12 / 12       ok",
        "val         2 / 2             8 / 8        ok",
        "test        2 / 2             8 / 8        ok",
        "matches the published split",
    ]
    assert Tiny.decodes == 0  # counted, not decoded


def test_check_of_a_root_missing_a_class_names_it_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_tiny(tmp_path, classes="abcdfg")
    status, out, _ = run(capsys, "check", "tiny", "--root", tmp_path)
    assert status == 1
    assert "val         1 / 2             4 / 8        MISMATCH" in out
    assert "val: 1 classes missing: e" in out
    assert out.rstrip().endswith("does NOT match the published split")


def test_prepare_builds_the_cache_once_and_says_where_how_big_and_how_long(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_tiny(tmp_path)
    cache = tmp_path / "tiny" / "lit-meta-cache" / "tiny_6px"
    status, out, _ = run(capsys, "prepare", "tiny", "--root", tmp_path)
    assert status == 0 and Tiny.decodes == 1
    assert out.startswith("Tiny: cache built in ") and f" s at {cache} (" in out and " KiB on disk)" in out
    assert (cache / "images.npy").is_file()
    status, out, _ = run(capsys, "prepare", "tiny", "--root", tmp_path)
    assert status == 0 and Tiny.decodes == 1  # the second prepare reads nothing but the cache's record
    assert out.startswith("Tiny: cache up to date, kept in ")


def test_options_reach_the_family(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_tiny(tmp_path, classes="abcdef")
    status, _, err = run(capsys, "prepare", "tiny", "--root", tmp_path)
    assert status == 2 and "lacks 1 of the 7 classes" in err and "allow_partial=True" in err
    status, out, _ = run(capsys, "prepare", "tiny", "--root", tmp_path, "--option", "allow_partial=true")
    assert status == 0 and "tiny_6px" in out
    status, out, _ = run(capsys, "prepare", "tiny", "--root", tmp_path, "--image-size", "3", "--option=allow_partial=1")
    assert status == 0 and "tiny_3px" in out
    assert np.load(tmp_path / "tiny" / "lit-meta-cache" / "tiny_3px" / "images.npy").shape[1:] == (3, 6, 6)


def test_a_misspelt_option_names_the_nearest_argument(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run(capsys, "check", "tiny", "--root", tmp_path, "--option", "allow_partal=true")
    assert status == 2
    assert err.startswith("lit-meta: error: --option allow_partal: Tiny takes no argument 'allow_partal'. ")
    assert "Did you mean 'allow_partial'?" in err and err.count("\n") == 1
    status, _, err = run(capsys, "check", "tiny", "--root", tmp_path, "--option", "image_size=[1, 2]")
    assert status == 2 and err.startswith("lit-meta: error: Tiny refused the options image_size=[1, 2]: int() ")
    with pytest.raises(ConfigError, match="give KEY=VALUE"):
        main(["data", "check", "tiny", "--root", str(tmp_path), "--option", "allow_partial", "--debug"])


def test_absent_files_print_the_familys_message_in_one_line_or_raise_with_debug(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = run(capsys, "check", "tiny", "--root", tmp_path)
    assert (status, out) == (2, "")
    assert err == f"lit-meta: error: put the tiny files in {tmp_path / 'tiny'}\n"
    with pytest.raises(DatasetError, match="put the tiny files in"):
        main(["data", "check", "tiny", "--root", str(tmp_path), "--debug"])


def test_a_family_without_published_counts_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run(capsys, "check", "omniglot", "--root", tmp_path)
    assert status == 2 and err.count("\n") == 1
    assert "'omniglot' has no published counts to check; `lit-meta data check` checks " in err
    assert re.search(r"checks [a-z0-9_, ]*\btiny\b[a-z0-9_, ]*\.", err)
    assert f"lit-meta data prepare omniglot --root {tmp_path}" in err


def test_prepare_of_another_family_fetches_and_loads_its_splits(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ("prepare", "glyphs", "--root", tmp_path, "--option", "num_classes=20", "--option", "drawings_per_class=2")
    status, out, _ = run(capsys, *argv)
    assert status == 0 and out.startswith(f"glyphs: ready under {tmp_path} in ")
    assert ProceduralGlyphs(root=str(tmp_path), num_classes=20, drawings_per_class=2).cache_path.is_file()


def test_list_and_help_name_every_family_and_the_exit_statuses(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "list")
    assert status == 0
    assert "  tiny             Tiny: 3 / 2 / 2 classes, 12 / 8 / 8 images (check, prepare)" in out.splitlines()
    assert all(f"  {name} " in out for name in datasets.DATASETS)
    status, out, _ = run(capsys, "check", "--help")
    assert status == 0 and "exit status: 0 when DIR holds the published split, 1 when it does not" in out
    status, out, _ = run(capsys, "--help")
    assert status == 0 and "tiny" in out and "{list,check,prepare}" in out


def test_a_usage_error_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run(capsys, "check", "tiny")
    assert status == 2
    assert err == (
        "lit-meta data check: error: the following arguments are required: --root (see lit-meta data check --help)\n"
    )


def test_the_console_script_refuses_an_unknown_family_in_one_line(tmp_path: Path) -> None:
    """The one run of the installed script (importing lightning takes most of its ~10 s on a busy machine)."""
    exe = Path(sys.executable).with_name("lit-meta")
    if not exe.is_file():
        pytest.skip(f"the lit-meta console script is not installed next to {sys.executable}")
    argv = [str(exe), "data", "check", "omniglott", "--root", str(tmp_path)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, env={**os.environ, "LIT_META_DEBUG": ""})
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("lit-meta: error: unknown dataset family 'omniglott'. Did you mean 'omniglot'? ")
    assert done.stderr.count("\n") == 1


def test_check_of_a_miniimagenet_root_missing_a_class_names_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.data.test_miniimagenet import CLASSES, write_form

    write_form(tmp_path, "libfewshot", classes={**CLASSES, "val": ["n01855672"]})
    status, out, _ = run(capsys, "check", "miniimagenet", "--root", tmp_path)
    assert status == 1
    assert "LibFewShot" in out.splitlines()[0] or "libfewshot" in out.splitlines()[0].lower()
    assert re.search(r"^val +1 / 16 +3 / 9600 +MISMATCH$", out, re.M)
    assert "val: 15 classes missing: n02091244, " in out
