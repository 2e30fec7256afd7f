"""``python benchmarks/report.py`` regenerates the report from recorded results, running nothing (issue 19)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURE = REPO_ROOT / "tests" / "fixtures" / "results"
REPORT = REPO_ROOT / "benchmarks" / "report.py"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

pytest.importorskip("matplotlib")

# Runs report.py with torch and lit_meta unimportable: any import of either fails the run.
BLOCKED_RUN = """
import runpy, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "lit_meta"):
            raise ImportError(f"report.py must not import {name}")
sys.meta_path.insert(0, Block())
sys.argv = [sys.argv[1], *sys.argv[2:]]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def generate(out_dir: Path) -> str:
    out = out_dir / "RESULTS.md"
    command = [sys.executable, "-c", BLOCKED_RUN, str(REPORT), "--results", str(FIXTURE), "--out", str(out)]
    subprocess.run([*command, "--figures", str(out_dir / "figures")], check=True, capture_output=True, timeout=60)
    return out.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    out_dir = tmp_path_factory.mktemp("report")
    return generate(out_dir), out_dir


def summary_rows(markdown: str) -> dict[tuple[str, str], list[str]]:
    section = markdown.split("## Summary", 1)[1].split("\n## ", 1)[0]
    table = [row for row in section.splitlines() if row.startswith("| ")]
    rows = [[cell.strip() for cell in row.strip("|").split("|")] for row in table]
    return {(row[0], row[1]): row for row in rows[1:]}


def test_header_says_generated(report: tuple[str, Path]) -> None:
    markdown, _ = report
    assert markdown.startswith("# Benchmark results")
    assert "do not edit" in markdown.split("## Summary")[0]
    assert "python benchmarks/report.py" in markdown.split("## Summary")[0]


def test_summary_verdicts_against_the_paper_and_the_peer(report: tuple[str, Path]) -> None:
    rows = summary_rows(report[0])
    protonet = rows[("ProtoNet", "omniglot 5w1s")]
    assert protonet[2] == "98.50 ± 0.20" and protonet[4] == "-0.30" and protonet[6] == "level"
    maml = rows[("MAML", "omniglot 5w1s")]  # the later line is not a headline: the 28-minute run is shown
    assert maml[2] == "95.70 ± 0.40"
    assert maml[6].startswith("behind by 3.0") and "agrees with learn2learn" in maml[6] and "still rising" in maml[6]
    assert "learn2learn 89.50 ± 1.50" in maml[5]
    assert maml[7] == "28 minutes"


def test_speed_row_gives_the_ratio_measured_in_the_same_run(report: tuple[str, Path]) -> None:
    rows = [line for line in report[0].splitlines() if line.startswith("| 600-episode evaluation")]
    summary, table = rows  # the summary's speed table, then the speed section's
    assert summary.endswith("| 1.25-1.25x (1) | 426 / 468 | ahead (1.25x) |")
    assert "| 60.000 | learn2learn | 75.000 | 1.25x | 426 / 468 |" in table


def test_every_figure_is_a_png_named_with_its_command(report: tuple[str, Path]) -> None:
    markdown, out_dir = report
    figures = sorted((out_dir / "figures").glob("*.png"))
    names = {path.name for path in figures}
    assert {"curve_maml.png", "curve_protonet.png", "inner_steps.png", "sinusoid.png"} <= names
    assert "side_by_side_maml_omniglot_5w1s_learn2learn.png" in names
    for path in figures:
        assert path.read_bytes().startswith(PNG_SIGNATURE)
        link = f"(figures/{path.name})"
        assert link in markdown
        caption = markdown.split(link, 1)[1].split("\n\n", 2)[1]
        assert "Command: `python benchmarks/" in caption and "0123456" in caption
    assert "`python benchmarks/inner_steps.py --checkpoint maml.ckpt`" in markdown


def test_same_results_give_identical_output(report: tuple[str, Path], tmp_path: Path) -> None:
    markdown, out_dir = report
    assert generate(tmp_path) == markdown
    for path in (out_dir / "figures").glob("*.png"):
        assert (tmp_path / "figures" / path.name).read_bytes() == path.read_bytes()
