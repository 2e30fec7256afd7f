"""Regenerate ``benchmarks/RESULTS.md`` and ``benchmarks/figures/*.png`` from the recorded results.

``python benchmarks/report.py [--results DIR] [--out FILE] [--figures DIR]`` reads every
``*.jsonl`` under ``--results`` (lines written by ``results_log.record_result``) and writes the
report. It runs nothing, imports neither torch nor lit_meta (standard library and matplotlib's
Agg backend only), and is deterministic: the same lines give byte-identical markdown, and the
PNGs carry no date or software metadata.

Every line has ``kind``, ``command``, ``machine``, ``versions``, ``git``, ``date``, ``budget`` and
``figures`` (``results_log.py``). What ``figures`` holds, by kind (fields marked ? may be absent):

``accuracy``: one test accuracy of one learner in one setting.
    ``learner``, ``setting`` (``"<dataset> <N>w<K>s"``, e.g. ``"omniglot 5w1s"``), ``split``?,
    ``acc`` and ``ci95`` (%, mean and 95% half-width over the test episodes), ``test_episodes``,
    ``train_steps``?, ``train_episodes``?, ``wall_min``? (wall minutes, validation and test included),
    ``paper``? ``{"acc", "ci95"?, "source"}`` (source names the paper and table),
    ``curve``? ``[[step, acc, ci95 or null], ...]`` (validation accuracy against training steps),
    ``status``? (e.g. ``"still rising"``), ``note``?, ``variant``? (what sets this run apart).
    The summary table shows, per learner and setting, the most recent line (by ``date``, then
    file order) whose ``headline`` is not ``false``.
``speed``: a time measured next to a peer in the same run.
    ``what`` (e.g. ``"training step, 2nd order"``, ``"600-episode evaluation"``), ``learner``,
    ``setting``, ``ours_s``, ``peer``? (``null``: no peer), ``peer_s``?, ``ratio``? (peer time over
    ours, >1 means we are faster), ``ours_peak_mb``?, ``peer_peak_mb``?, ``run``?, ``note``?.
``curves``: a side-by-side training run of a learner and its peer (``benchmarks/side_by_side.py``).
    ``learner``, ``setting``, ``peer``, ``series`` ``{name: [[step, acc, ci95], ...]}`` (ours under
    ``"lit-meta"``), ``gradient_max_abs_diff``?, ``agree`` (bool), ``note``?.
``inner_steps``: accuracy against the inner steps at test time of a gradient-based learner.
    ``learner``, ``setting``, ``train_inner_steps``?, ``points`` ``[[steps, acc, ci95], ...]``, ``note``?.
``sinusoid``: the MAML paper's sinusoid regression (Finn et al. 2017, Section 5.1, Figures 2-3).
    ``k_shot``, ``test_tasks``, ``mse`` ``{model: {"0": [mse, ci95], "1": [...], "10": [...]}}``,
    ``fits``? ``{"x": [...], "target": [...], "support_x": [...], "support_y": [...],
    "models": {model: {"<steps>": [y over x], ...}}}`` (one task's fitted functions), ``note``?.
``table``: any other measured table, rendered as it is.
    ``section`` (the heading it goes under), ``title``, ``columns``, ``rows`` (lists of strings),
    ``note``?.
"""

from __future__ import annotations

import argparse
import json
import re
import textwrap
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

HERE = Path(__file__).resolve().parent
LEVEL_POINTS = 1.0  # the target: within 1 point of the paper (5-way 1-shot)
SPEED_LEVEL = 0.10  # a speed ratio within 10% of 1 is "level"
PNG_METADATA = {"Software": None}
NOTES = [
    ("episode_pipeline.md", "episode pipeline, procedural glyphs, 84x84 episodes and augmentation (issues 2, 18)"),
    ("maml_step.md", "one MAML step against learn2learn: allocators, page faults, compiled path (issues 3, 14)"),
    ("protonet_step.md", "one ProtoNet episode against learn2learn (issue 4)"),
    ("omniglot_accuracy.md", "sinusoid, MAML, ProtoNet, Matching/Relation/Siamese on Omniglot (issues 3, 4, 18)"),
    ("model_based.md", "MANN, SNAIL and MetaNet on Omniglot (issue 15)"),
    ("pretraining.md", "Baseline, Baseline++, Meta-learner LSTM and LEO on Omniglot (issue 16)"),
    ("guards.md", "the non-finite guard's cost and the adaptation-growth warning (issue 17)"),
]


def read_lines(results: Path) -> list[dict[str, Any]]:
    """Every line of every ``*.jsonl`` under ``results``, in file-name then line order, with its file."""
    lines = []
    for path in sorted(results.rglob("*.jsonl")):
        for text in path.read_text(encoding="utf-8").splitlines():
            if text.strip():
                line = json.loads(text)
                line["_file"] = path.relative_to(results).as_posix()
                lines.append(line)
    return lines


def by_date(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(lines, key=lambda line: line.get("date") or "")  # stable: file order breaks ties


def fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def acc_text(acc: float | None, ci: float | None) -> str:
    if acc is None:
        return "-"
    return f"{acc:.2f} ± {ci:.2f}" if ci is not None else f"{acc:.2f}"


def budget_text(budget: dict[str, Any] | None) -> str:
    if not budget:
        return "-"
    return ", ".join(f"{fmt(value)} {key}" for key, value in budget.items())


def commit_text(line: dict[str, Any]) -> str:
    git = line.get("git") or {}
    if git.get("commit"):
        return git["commit"][:7] + (" (dirty)" if git.get("dirty") else "")
    if git.get("transcribed_from"):
        return f"transcribed from {git['transcribed_from']}"
    return "commit unknown"


def provenance(lines: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """One ``(command, "date, commit")`` entry per distinct command, in order."""
    seen: dict[str, list[str]] = {}
    for line in lines:
        entry = seen.setdefault(line["command"], [])
        stamp = f"{(line.get('date') or '')[:10]}, {commit_text(line)}"
        if stamp not in entry:
            entry.append(stamp)
    return [(command, "; ".join(stamps)) for command, stamps in seen.items()]


def commands_text(lines: list[dict[str, Any]]) -> str:
    """The markdown naming each command of ``lines``, with its date and commit."""
    return " ".join(f"`{command}` ({stamps})." for command, stamps in provenance(lines))


def group_by(lines: list[dict[str, Any]], key: Any) -> dict[str, list[dict[str, Any]]]:
    """``lines`` grouped by ``key(line)``, groups and lines in their first order."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for line in lines:
        groups[key(line)].append(line)
    return groups


def table_row(cells: list[Any]) -> str:
    """A markdown table row; a ``|`` inside a cell is escaped."""
    return "| " + " | ".join(str(cell).replace("|", "\\|") for cell in cells) + " |"


def speed_verdict(ratio: float) -> str:
    """ "level" within ``SPEED_LEVEL`` of 1, else "ahead (1.3x)" or "behind (0.8x)"."""
    if abs(ratio - 1) <= SPEED_LEVEL:
        return "level"
    return f"{'ahead' if ratio > 1 else 'behind'} ({ratio:.2f}x)"


def verdict(ours: float, ci: float | None, reference: float) -> str:
    """ "level" within the larger of the CI and 1 point, else "ahead by X" or "behind by X"."""
    difference = ours - reference
    if abs(difference) <= max(ci or 0.0, LEVEL_POINTS):
        return "level"
    return f"{'ahead' if difference > 0 else 'behind'} by {abs(difference):.1f}"


class Report:
    def __init__(self, results: Path, figures: Path, out: Path):
        self.results = results
        self.lines = read_lines(results)
        self.figures = figures
        self.out = out
        self.md: list[str] = []
        self.figure_names: list[str] = []

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [line for line in self.lines if line["kind"] == kind]

    # ---- figures -----------------------------------------------------------------------------

    def save(self, fig: Any, name: str, lines: list[dict[str, Any]], caption: str) -> None:
        width = int(fig.get_figwidth() * 19)  # characters of 5.5 pt monospace across the figure
        footer = "\n".join(
            textwrap.fill(f"{command} ({stamps})", width, subsequent_indent="    ")
            for command, stamps in provenance(lines)
        )
        fig.text(0.01, 0.005, footer, fontsize=5.5, va="bottom", ha="left", family="monospace", color="0.3")
        fig.subplots_adjust(bottom=0.14 + 0.035 * footer.count("\n"))
        self.figures.mkdir(parents=True, exist_ok=True)
        fig.savefig(self.figures / name, dpi=100, metadata=PNG_METADATA)
        plt.close(fig)
        self.figure_names.append(name)
        link = Path(_relpath(self.figures / name, self.out.parent)).as_posix()
        self.md.append(f"![{caption}]({link})")
        self.md.append("")
        self.md.append(f"*{caption}.* Command: {commands_text(lines)}")
        self.md.append("")

    # ---- sections ----------------------------------------------------------------------------

    def header(self) -> None:
        self.md += [
            "# Benchmark results",
            "",
            "<!-- Generated by `python benchmarks/report.py`; do not edit. -->",
            "*Generated by `python benchmarks/report.py` from the JSON lines in `benchmarks/results/`; do not edit.*",
            'To regenerate: `pip install -e ".[report]"`, then `python benchmarks/report.py` (runs nothing; the',
            "benchmark scripts record their results with `benchmarks/results_log.py`). Each table and figure names",
            "the command that measured it, the date and the commit. Accuracies are % (mean ± 95% CI over the test",
            'episodes); "level" means within the larger of the CI and 1 point.',
            "",
        ]

    def summary(self) -> None:
        latest: dict[tuple[str, str], dict[str, Any]] = {}
        for line in by_date(self.of("accuracy")):
            if line["figures"].get("headline", True):
                latest[(line["figures"]["learner"], line["figures"]["setting"])] = line
        peers: dict[tuple[str, str], dict[str, Any]] = {}
        for line in by_date(self.of("curves")):
            peers[(line["figures"]["learner"], line["figures"]["setting"])] = line
        keys = sorted(set(latest) | set(peers), key=_natural)
        self.md += [
            "## Summary",
            "",
            "| learner | setting | ours | paper | difference | peer, side by side | verdict | budget |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for key in keys:
            line, peer = latest.get(key), peers.get(key)
            ours = paper = difference = peer_text = "-"
            verdicts, budget = [], "-"
            if line is not None:
                f = line["figures"]
                ours = acc_text(f["acc"], f.get("ci95"))
                budget = budget_text(line.get("budget"))
                if f.get("paper"):
                    paper = acc_text(f["paper"]["acc"], f["paper"].get("ci95"))
                    difference = f"{f['acc'] - f['paper']['acc']:+.2f}"
                    verdicts.append(verdict(f["acc"], f.get("ci95"), f["paper"]["acc"]))
                else:
                    verdicts.append("no paper figure")
                if f.get("status"):
                    verdicts.append(f["status"])
            if peer is not None:
                p = peer["figures"]
                final = p["series"][p["peer"]][-1]
                ours_final = p["series"]["lit-meta"][-1]
                peer_text = f"{p['peer']} {acc_text(*final[1:3])} (ours {acc_text(*ours_final[1:3])})"
                verdicts.append(f"agrees with {p['peer']}" if p.get("agree") else f"disagrees with {p['peer']}")
                if line is None:
                    budget = budget_text(peer.get("budget"))
            self.md.append(table_row([*key, ours, paper, difference, peer_text, "; ".join(verdicts) or "-", budget]))
        self.md.append("")

    def speed_summary(self) -> None:
        """Per timed thing next to a peer: the latest ratio, the range over every recorded run, a verdict."""
        lines = [line for line in by_date(self.of("speed")) if line["figures"].get("ratio") is not None]
        if not lines:
            return
        self.md += [
            "| speed: what | setting | peer | latest ratio (run, date) | range over runs | peak MB lit-meta / peer | "
            "verdict |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        keys = group_by(
            lines, lambda line: (line["figures"]["what"], line["figures"]["setting"], line["figures"]["peer"])
        )
        for (what, setting, peer), group in sorted(keys.items()):
            f = group[-1]["figures"]
            ratios = [line["figures"]["ratio"] for line in group]
            latest = f"{f['ratio']:.2f}x ({f.get('run') or '-'}, {(group[-1].get('date') or '')[:10]})"
            peaks = f"{fmt(f.get('ours_peak_mb'), 0)} / {fmt(f.get('peer_peak_mb'), 0)}"
            span = f"{min(ratios):.2f}-{max(ratios):.2f}x ({len(ratios)})"
            self.md.append(table_row([what, setting, peer, latest, span, peaks, speed_verdict(f["ratio"])]))
        self.md += [
            "",
            f'Ratio: the peer\'s time over ours in the same run (>1: lit-meta is faster); "level" within '
            f"{SPEED_LEVEL:.0%}, since runs on this machine vary by about ±15%.",
            "",
        ]

    def accuracy(self) -> None:
        lines = self.of("accuracy")
        if not lines:
            return
        self.md += ["## Accuracy", ""]
        for file, group in group_by(lines, lambda line: line["_file"]).items():
            self.md += [
                f"### `{file}`",
                "",
                "| learner | setting | split | test acc | test episodes | paper | source | difference | "
                "training steps | episodes | wall min | budget | status, note |",
                "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
            ]
            for line in group:
                f = line["figures"]
                paper = f.get("paper") or {}
                name = f["learner"] + (f" ({f['variant']})" if f.get("variant") else "")
                diff = f"{f['acc'] - paper['acc']:+.2f}" if paper else "-"
                note = "; ".join(x for x in (f.get("status"), f.get("note")) if x) or "-"
                cells = [name, f["setting"], f.get("split") or "-", acc_text(f["acc"], f.get("ci95"))]
                cells += [fmt(f.get("test_episodes")), acc_text(paper.get("acc"), paper.get("ci95"))]
                cells += [paper.get("source") or "-", diff, fmt(f.get("train_steps")), fmt(f.get("train_episodes"))]
                self.md.append(table_row([*cells, fmt(f.get("wall_min"), 1), budget_text(line.get("budget")), note]))
            self.md += ["", f"Commands: {commands_text(group)}", ""]

    def learning_curves(self) -> None:
        with_curve = [line for line in self.of("accuracy") if line["figures"].get("curve")]
        if not with_curve:
            return
        self.md += ["## Learning curves", ""]
        for learner, group in group_by(with_curve, lambda line: line["figures"]["learner"]).items():
            fig, ax = plt.subplots(figsize=(8, 4.8))
            for index, line in enumerate(group):
                f = line["figures"]
                colour = f"C{index % 10}"
                label = f["setting"] + (f" ({f['variant']})" if f.get("variant") else "")
                _plot_series(ax, f["curve"], colour, label)
                if f.get("paper"):
                    ax.axhline(f["paper"]["acc"], color=colour, linestyle=":", linewidth=1)
            ax.set_xlabel("training step")
            ax.set_ylabel("validation accuracy (%)")
            papers = any(line["figures"].get("paper") for line in group)
            ax.set_title(f"{learner}: validation accuracy" + (" (dotted: the paper's test accuracy)" if papers else ""))
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
            self.save(fig, f"curve_{_slug(learner)}.png", group, f"{learner}, validation accuracy against steps")

    def side_by_side(self) -> None:
        lines = self.of("curves")
        if not lines:
            return
        self.md += [
            "## Side by side with the peers",
            "",
            "| learner | setting | peer | ours, final | peer, final | max abs gradient difference | agree | note |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for line in lines:
            f = line["figures"]
            ours, theirs = f["series"]["lit-meta"][-1], f["series"][f["peer"]][-1]
            grad = f.get("gradient_max_abs_diff")
            cells = [f["learner"], f["setting"], f["peer"], acc_text(*ours[1:3]), acc_text(*theirs[1:3])]
            cells += ["-" if grad is None else f"{grad:.1e}", "yes" if f.get("agree") else "no", f.get("note") or "-"]
            self.md.append(table_row(cells))
        self.md.append("")
        for line in lines:
            f = line["figures"]
            fig, ax = plt.subplots(figsize=(8, 4.8))
            for index, (name, series) in enumerate(f["series"].items()):
                _plot_series(ax, series, f"C{index}", name)
            ax.set_xlabel("training step")
            ax.set_ylabel("accuracy (%)")
            ax.set_title(f"{f['learner']}, {f['setting']}: lit-meta and {f['peer']} (95% bands)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
            name = f"side_by_side_{_slug(f['learner'])}_{_slug(f['setting'])}_{_slug(f['peer'])}.png"
            self.save(fig, name, [line], f"{f['learner']} {f['setting']} next to {f['peer']}")

    def speed(self) -> None:
        lines = self.of("speed")
        if not lines:
            return
        self.md += [
            "## Speed",
            "",
            "Peer time over ours, both measured in the same run (>1: lit-meta is faster); peak RSS in MB.",
            "",
            "| what | learner | setting | run | lit-meta s | peer | peer s | ratio | peak MB lit-meta / peer | "
            "date | note |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for line in lines:
            f = line["figures"]
            ratio = f.get("ratio")
            peaks = f"{fmt(f.get('ours_peak_mb'), 0)} / {fmt(f.get('peer_peak_mb'), 0)}"
            cells = [f["what"], f["learner"], f.get("setting") or "-", f.get("run") or "-", fmt(f["ours_s"], 3)]
            cells += [f.get("peer") or "-", fmt(f.get("peer_s"), 3), "-" if ratio is None else f"{ratio:.2f}x", peaks]
            self.md.append(table_row([*cells, (line.get("date") or "")[:10], f.get("note") or "-"]))
        self.md += ["", f"Commands: {commands_text(lines)}", ""]

    def inner_steps(self) -> None:
        lines = self.of("inner_steps")
        if not lines:
            return
        self.md += ["## Accuracy against inner steps", ""]
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for index, line in enumerate(lines):
            f = line["figures"]
            label = f"{f['learner']} {f['setting']}"
            if f.get("train_inner_steps") is not None:
                label += f" (trained with {f['train_inner_steps']})"
            _plot_series(ax, f["points"], f"C{index}", label, marker="o")
            self.md.append(
                f"* {label}: "
                + ", ".join(f"{p[0]} steps {acc_text(p[1], p[2])}" for p in f["points"])
                + (f". {f['note']}" if f.get("note") else "")
            )
        self.md.append("")
        ax.set_xlabel("inner steps at test time")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title("Gradient-based learners: accuracy against inner steps")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        self.save(fig, "inner_steps.png", lines, "Accuracy against inner steps")

    def sinusoid(self) -> None:
        lines = self.of("sinusoid")
        if not lines:
            return
        self.md += ["## Sinusoid regression (Finn et al. 2017, Section 5.1)", ""]
        for line in lines:
            f = line["figures"]
            steps = sorted({s for mse in f["mse"].values() for s in mse}, key=int)
            self.md += [
                f"Test MSE over {fmt(f.get('test_tasks'))} held-out tasks, K={f.get('k_shot')}, "
                f"budget {budget_text(line.get('budget'))}:",
                "",
                "| model | " + " | ".join(f"{s} steps" for s in steps) + " |",
                "| --- | " + " | ".join("---" for _ in steps) + " |",
            ]
            for model, mse in f["mse"].items():
                self.md.append(f"| {model} | " + " | ".join(f"{mse[s][0]:.3f} ± {mse[s][1]:.3f}" for s in steps) + " |")
            self.md.append("")
            if f.get("note"):
                self.md += [f["note"], ""]
        line = lines[-1]
        f = line["figures"]
        fits = f.get("fits")
        fig, axes = plt.subplots(1, 2 if fits else 1, figsize=(11 if fits else 6, 4.5), squeeze=False)
        ax = axes[0][0]
        for index, (model, mse) in enumerate(f["mse"].items()):
            points = [[int(s), v[0], v[1]] for s, v in sorted(mse.items(), key=lambda kv: int(kv[0]))]
            _plot_series(ax, points, f"C{index}", model, marker="o")
        ax.set_xlabel("gradient steps at test time")
        ax.set_ylabel("test MSE")
        ax.set_title("MSE after fine-tuning (paper's Figure 3, right)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        if fits:
            ax = axes[0][1]
            ax.plot(fits["x"], fits["target"], color="red", label="ground truth")
            ax.scatter(fits["support_x"], fits["support_y"], color="purple", marker="^", label="K points", zorder=3)
            styles = ["-", "--", ":", "-."]
            for index, (model, by_steps) in enumerate(fits["models"].items()):
                for order, (s, ys) in enumerate(sorted(by_steps.items(), key=lambda kv: int(kv[0]))):
                    ax.plot(fits["x"], ys, color=f"C{index}", linestyle=styles[order % 4], label=f"{model}, {s} steps")
            ax.set_title("One held-out task (paper's Figure 2)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        self.save(fig, "sinusoid.png", [line], "Sinusoid regression, MAML against pretraining")

    def tables(self) -> None:
        lines = self.of("table")
        if not lines:
            return
        self.md += ["## Other measurements", ""]
        for section, group in group_by(lines, lambda line: line["figures"]["section"]).items():
            self.md += [f"### {section}", ""]
            for line in group:
                f = line["figures"]
                self.md += [
                    f"**{f['title']}** (`{line['command']}`, {(line.get('date') or '')[:10]}, {commit_text(line)})",
                    "",
                    "| " + " | ".join(f["columns"]) + " |",
                    "| " + " | ".join("---" for _ in f["columns"]) + " |",
                ]
                self.md += [table_row(row) for row in f["rows"]]
                self.md.append("")
                if f.get("note"):
                    self.md += [f["note"], ""]

    def notes(self) -> None:
        notes_dir = HERE / "notes"
        self.md += ["## Investigations", "", "The logs of how the figures above were reached, kept verbatim:", ""]
        for name, what in NOTES:
            link = Path(_relpath(notes_dir / name, self.out.parent)).as_posix()
            self.md.append(f"* [{name}]({link}): {what}")
        self.md.append("")

    def legacy_figures(self, results: Path) -> None:
        """Figures the scripts drew before they recorded their points: kept, since the report cannot redraw them."""
        pngs = sorted(results.rglob("*.png"))
        if not pngs:
            return
        self.md += [
            "## Figures drawn before the results were recorded",
            "",
            "Their data points are not in the JSON lines, so the report cannot redraw them; the notes describe each.",
            "",
        ]
        for path in pngs:
            link = Path(_relpath(path, self.out.parent)).as_posix()
            self.md.append(f"* [{path.relative_to(results).as_posix()}]({link})")
        self.md.append("")

    def write(self) -> None:
        self.header()
        self.summary()
        self.speed_summary()
        self.accuracy()
        self.speed()
        self.side_by_side()
        self.learning_curves()
        self.inner_steps()
        self.sinusoid()
        self.tables()
        self.legacy_figures(self.results)
        self.notes()
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.write_text("\n".join(self.md).rstrip("\n") + "\n", encoding="utf-8")


def _plot_series(ax: Any, points: list[list[Any]], colour: str, label: str, marker: str = ".") -> None:
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    ax.plot(xs, ys, color=colour, marker=marker, markersize=4, label=label)
    if all(len(p) > 2 and p[2] is not None for p in points):
        low = [p[1] - p[2] for p in points]
        high = [p[1] + p[2] for p in points]
        ax.fill_between(xs, low, high, color=colour, alpha=0.2, linewidth=0)


def _natural(key: tuple[str, str]) -> tuple[Any, ...]:
    """Learner, then setting with its numbers compared as numbers (5w1s before 20w1s)."""
    parts = re.split(r"(\d+)", key[1])
    return (key[0].lower(), *[(0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts])


def _slug(text: str) -> str:
    text = text.lower().replace("+", "p")
    return "_".join("".join(c if c.isalnum() else " " for c in text).split())


def _relpath(path: Path, start: Path) -> str:
    import os.path

    return os.path.relpath(path.resolve(), start.resolve())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", type=Path, default=HERE / "results")
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    parser.add_argument("--figures", type=Path, default=HERE / "figures")
    args = parser.parse_args(argv)
    plt.rcParams.update({"svg.hashsalt": "lit-meta", "font.size": 9})
    report = Report(args.results, args.figures, args.out)
    report.write()
    print(f"wrote {args.out} and {len(report.figure_names)} figures under {args.figures}")


if __name__ == "__main__":
    main()
