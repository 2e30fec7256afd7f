"""A recorded result names the commit it measured, and whether the code differed from it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from ..conftest import REPO_ROOT

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")

STATE = (
    "import json, sys; sys.path.insert(0, 'benchmarks'); "
    "from results_log import git_state; print(json.dumps(git_state()))"
)


def git(repo, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout


def test_appending_results_leaves_the_commit_clean_and_a_code_change_does_not(tmp_path) -> None:
    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    shutil.copy(REPO_ROOT / "benchmarks" / "results_log.py", tmp_path / "benchmarks")
    (tmp_path / "benchmarks" / "results" / "accuracy.jsonl").write_text("{}\n")
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", ".")
    git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "start")

    def state() -> dict:
        out = subprocess.run([sys.executable, "-c", STATE], cwd=tmp_path, capture_output=True, text=True, check=True)
        return json.loads(out.stdout)

    with open(tmp_path / "benchmarks" / "results" / "accuracy.jsonl", "a") as results:
        results.write("{}\n")  # an earlier run of the same queue recorded its line
    assert state() == {"commit": git(tmp_path, "rev-parse", "HEAD").strip(), "dirty": False}
    with open(tmp_path / "benchmarks" / "results_log.py", "a") as code:
        code.write("\n# changed\n")
    assert state()["dirty"] is True


def test_a_copy_records_the_commit_it_was_copied_from_only_when_told(tmp_path) -> None:
    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    shutil.copy(REPO_ROOT / "benchmarks" / "results_log.py", tmp_path / "benchmarks")

    def state(**env: str) -> dict:
        environment = {"PATH": "/usr/bin:/bin", "GIT_CEILING_DIRECTORIES": str(tmp_path.parent), **env}
        out = subprocess.run(
            [sys.executable, "-c", STATE], cwd=tmp_path, capture_output=True, text=True, check=True, env=environment
        )
        return json.loads(out.stdout)

    assert state() == {"commit": None, "dirty": None}
    assert state(BENCHMARK_COPIED_FROM_COMMIT="abc123") == {"commit": "abc123", "dirty": None, "copied": True}
    git(tmp_path, "init", "-q")  # a copy with a .git of its own (an older one, say): the named commit still wins
    assert state(BENCHMARK_COPIED_FROM_COMMIT="abc123") == {"commit": "abc123", "dirty": None, "copied": True}
