"""One benchmark configuration per fresh subprocess, so each reports its own peak RSS."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from lit_meta.glibc_malloc import MAX_MMAP_THRESHOLD

JEMALLOC = Path("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2")
# Without this, jemalloc returns freed pages to the OS and each step faults them back in:
# measured 30-70% slower than glibc for both implementations.
JEMALLOC_CONF = "dirty_decay_ms:-1,muzzy_decay_ms:-1"
# The thresholds lit_meta.glibc_malloc.retain_freed_memory sets, as glibc tunables, so a
# peer that knows nothing of lit-meta runs with the same malloc settings (a tunable cannot
# say "never trim", so the trim threshold is 1 TiB).
GLIBC_RETAIN_TUNABLES = f"glibc.malloc.mmap_threshold={MAX_MMAP_THRESHOLD}:glibc.malloc.trim_threshold={2**40}"
ALLOCATOR_ENVIRONMENTS = {
    "default": {},  # the system's malloc as it is
    "glibc-retain": {"GLIBC_TUNABLES": GLIBC_RETAIN_TUNABLES},
    # Diagnostic: the same without glibc's per-thread cache of small freed chunks. Before
    # the fix of glibc bug 30723 (Debian 12 has 2.36), memalign (PyTorch allocates CPU
    # tensors 64-byte aligned) splits small pieces off each block it hands out; held in
    # that cache they keep the block from merging with its neighbours once freed, so
    # same-size blocks never reuse it and the heap grows (glibc_memalign_fragmentation.py).
    "glibc-retain-no-tcache": {"GLIBC_TUNABLES": GLIBC_RETAIN_TUNABLES + ":glibc.malloc.tcache_count=0"},
    "jemalloc": {"LD_PRELOAD": str(JEMALLOC), "MALLOC_CONF": JEMALLOC_CONF},
}


def allocator_environment(allocator: str) -> dict[str, str]:
    """This process's environment with the variables of ``ALLOCATOR_ENVIRONMENTS[allocator]``
    (none for an allocator not listed there, such as ``"glibc"``: malloc as it is).

    A library to preload that is not there stops the benchmark: the dynamic loader would only
    print a warning and the run would go on under glibc malloc, booked as ``allocator``.
    """
    variables = ALLOCATOR_ENVIRONMENTS.get(allocator, {})
    preload = variables.get("LD_PRELOAD")
    if preload and not Path(preload).is_file():
        raise SystemExit(f"--allocator {allocator}: {preload} is not there (Debian: apt-get install libjemalloc2)")
    return {**os.environ, **variables}


def allocator_environment_note(allocator: str) -> str:
    """The variables :func:`allocator_environment` sets, for a benchmark's header."""
    variables = ALLOCATOR_ENVIRONMENTS.get(allocator, {})
    return ", ".join(f"{name}={value}" for name, value in variables.items()) or "malloc as it is"


def run_configuration(command: list[str], allocator: str, label: str) -> dict | None:
    """Runs ``command`` (optionally under jemalloc) and returns the JSON its last stdout line holds.

    A failed run prints its label and the end of its stderr and returns ``None``.
    """
    out = subprocess.run(command, env=allocator_environment(allocator), capture_output=True, text=True, check=False)
    if out.returncode != 0:
        print(f"{label}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def version_number(version: Path) -> int:
    """The N of a Lightning log folder ``version_N``."""
    return int(version.name.split("_")[-1])


def log_versions(save_dir: Path) -> list[Path]:
    """The Lightning log folders (``lightning_logs/version_N``) of the runs logged under ``save_dir``, oldest first."""
    return sorted((save_dir / "lightning_logs").iterdir(), key=version_number)


def command_options(command: list[str]) -> dict[str, str]:
    """The options of a ``lit-meta <verb>`` command by name, spelt ``--name value`` or ``--name=value``.

    An option given twice keeps its last value, as the command line does.
    """
    options: dict[str, str] = {}
    words = iter(command[2:])
    for word in words:
        if not word.startswith("--"):
            raise ValueError(f"{word!r} in {command}: expected an option (--name value or --name=value)")
        name, equals, value = word.partition("=")
        options[name] = value if equals else next(words, "")
    return options


# What a continued run may change in its ``lit-meta fit`` command; everything else must be as the earlier part ran it.
RESUME_ARGUMENTS = ("--trainer.max_time", "--trainer.max_steps", "--ckpt_path", "--trainer.callbacks.init_args.dirpath")


def resume_differences(command: list[str], earlier: list[str]) -> list[tuple[str, str]]:
    """The options in which ``command`` would not continue the run ``earlier`` made, as (name, value) pairs of
    either; empty when they differ only in :data:`RESUME_ARGUMENTS`. A config is compared by its name under
    ``configs/`` (its last three path parts), so a run from another checkout compares equal."""

    def comparable(words: list[str]) -> dict[str, str]:
        options = command_options(words)
        if "--config" in options:
            options["--config"] = "/".join(Path(options["--config"]).parts[-3:])
        return {name: value for name, value in options.items() if name not in RESUME_ARGUMENTS}

    return sorted(set(comparable(command).items()) ^ set(comparable(earlier).items()))


def checkpoint_step(checkpoint: Path) -> int:
    """The global step a Lightning checkpoint was saved at: where a run continued from it starts."""
    import torch

    return torch.load(checkpoint, map_location="cpu", weights_only=False)["global_step"]


def resumed_note(resumed: dict) -> str:
    """What a continued run's record says of its earlier part: the step it resumed from, the earlier part's
    steps and command (``resumed``: ``from_step``, ``earlier_steps``, ``earlier_command``)."""
    return (
        f"resumed at step {resumed['from_step']:,} from an earlier run of {resumed['earlier_steps']:,} steps"
        f" (its command: {resumed['earlier_command']})"
    )


def device_budget(command: list[str]) -> dict[str, str]:
    """``{"device": <GPU name>}`` where a ``lit-meta`` command ran on this machine's GPU, else ``{}``.

    The Trainer's default accelerator (``"auto"``) takes the GPU where there is one, so a command ran
    on it unless it asked for the CPU (``--trainer.accelerator cpu``). Budget scripts add this to a
    run's ``budget``: minutes on an H200 are not minutes on this project's 2-core CPU.
    """
    from results_log import gpu_name

    gpu = gpu_name()
    return {"device": gpu} if gpu and command_options(command).get("--trainer.accelerator") != "cpu" else {}
