"""One JSON line per measurement, appended to ``benchmarks/results/<stem>.jsonl``.

Every benchmark script records what it measured through :func:`record_result`;
``python benchmarks/report.py`` reads these files and regenerates ``RESULTS.md``
and the figures without running anything. A line holds:

* ``kind``: what ``figures`` holds (``"accuracy"``, ``"speed"``, ``"curves"``, ...; the
  report documents each kind's fields);
* ``command``: the command line that produced it, as a user would type it;
* ``machine``: platform, CPU model, CPU count, torch threads, the GPU (``nvidia-smi``'s name, or ``None``);
* ``versions``: Python, torch and the packages of the measuring process that matter;
* ``git``: the commit of this checkout and whether the tree had uncommitted changes;
* ``date``: UTC, ISO 8601;
* ``budget``: what bounded the run (minutes, steps, episodes), or ``None``;
* ``figures``: the measurement itself.

Standard library only (``torch`` is asked for its version if the process imported it),
so the peer scripts in ``peers/``, which run in other environments, may record too.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib.metadata
import json
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
SCHEMA = 1
VERSIONED_PACKAGES = ("torch", "lightning", "lit-meta", "numpy", "learn2learn", "easyfsl")


def command_line(argv: list[str] | None = None) -> str:
    """The command as typed: ``python benchmarks/x.py --flag value``, relative to the repository."""
    argv = list(sys.argv if argv is None else argv)
    script = Path(argv[0])
    with contextlib.suppress(ValueError):  # a script outside the repository keeps its own path
        script = script.resolve().relative_to(RESULTS.parents[1])
    return shlex.join(["python", str(script), *argv[1:]])


def machine() -> dict[str, Any]:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    facts: dict[str, Any] = {"platform": platform.platform(), "cpu": cpu, "cpus": os.cpu_count(), "gpu": gpu_name()}
    torch = sys.modules.get("torch")
    if torch is not None:
        facts["torch_threads"] = torch.get_num_threads()
        facts["cuda"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return facts


def gpu_name() -> str | None:
    """The first NVIDIA GPU's name as ``nvidia-smi`` gives it (``"NVIDIA H200"``), ``None`` without one.

    Asked of ``nvidia-smi`` rather than torch, so a script that runs ``lit-meta`` in a subprocess and never
    imports torch still records the GPU its runs had.
    """
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    names = out.stdout.strip().splitlines()
    return names[0].strip() if names else None


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


COPIED_COMMIT = "BENCHMARK_COPIED_FROM_COMMIT"
"""Environment variable naming the commit of a checkout copied without its ``.git`` (to a GPU machine, say)."""


def git_state() -> dict[str, Any]:
    """The commit measured, and whether tracked code differed from it (the result files' own appends do not count).

    Where :data:`COPIED_COMMIT` names the commit a copied checkout was made from, that commit is recorded
    with ``"copied": true`` and no dirty flag (whether the copy was clean is the copier's word), whatever
    ``.git`` the copy holds: a GPU machine's copy may carry an older ``.git`` beside a newer tree.
    """
    if os.environ.get(COPIED_COMMIT):
        return {"commit": os.environ[COPIED_COMMIT], "dirty": None, "copied": True}
    root = RESULTS.parents[1]

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()

    code_only = ["--porcelain", "--untracked-files=no", "--", ".", f":(exclude){RESULTS.relative_to(root)}"]
    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", *code_only))}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}


def record_result(
    stem: str,
    kind: str,
    figures: dict[str, Any],
    *,
    budget: dict[str, Any] | None = None,
    command: str | None = None,
    results_dir: Path | None = None,
) -> dict[str, Any]:
    """Append one result line to ``<results_dir>/<stem>.jsonl`` and return it.

    Args:
        stem: the result file, without ``.jsonl`` (one per benchmark, e.g. ``"omniglot_accuracy"``).
        kind: what ``figures`` holds; ``report.py`` renders each kind its own way.
        figures: the measurement (JSON-serialisable).
        budget: what bounded the run, e.g. ``{"minutes": 8}`` or ``{"steps": 300}``.
        command: the command line; by default this process's own (:func:`command_line`).
        results_dir: where the file lies; by default ``benchmarks/results``.
    """
    line = {
        "schema": SCHEMA,
        "kind": kind,
        "command": command if command is not None else command_line(),
        "machine": machine(),
        "versions": versions(),
        "git": git_state(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "budget": budget,
        "figures": figures,
    }
    directory = results_dir if results_dir is not None else RESULTS
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / f"{stem}.jsonl", "a", encoding="utf-8") as file:
        file.write(json.dumps(line, sort_keys=False) + "\n")
    return line


def read_results(stem: str, results_dir: Path | None = None) -> list[dict[str, Any]]:
    """Every line of ``<results_dir>/<stem>.jsonl``, oldest first; ``[]`` if there is none."""
    path = (results_dir if results_dir is not None else RESULTS) / f"{stem}.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
