"""The demo's report pieces: per-round training numbers read from a run's trainer log, the results table in
the layout of the paper's Table 1, per-task-type success, and PNG plots (`runs/demo/report.md`).

Small samples deserve honesty: every success rate carries a 95% Wilson interval, and two policies are
compared on the same games with an exact McNemar test (render.py), not by their intervals.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from gcd_trl.analysis.plotting import pyplot, save_png
from gcd_trl.eval.stats import wilson


def log_history(run_dir: str | Path) -> list[dict[str, Any]]:
    """The trainer's logged rows (trainer_state.json of the run, else of its newest checkpoint)."""
    run_dir = Path(run_dir)
    candidates = [run_dir / "trainer_state.json"] + sorted(
        run_dir.glob("checkpoint-*/trainer_state.json"), key=lambda p: int(p.parent.name.split("-")[1])
    )[::-1]
    for path in candidates:
        if path.is_file():
            return json.loads(path.read_text()).get("log_history", [])
    return []


def round_rows(run_dir: str | Path) -> list[dict[str, Any]]:
    """One row per RL round from the trainer's log: a round's rollout metrics are logged once, with the
    first optimizer step that trains on it (`rollout/success_rate` marks that row)."""
    out = []
    for row in log_history(run_dir):
        if "rollout/success_rate" in row:
            out.append(
                {
                    "round": len(out) + 1,
                    "step": row.get("step"),
                    "success_rate": row["rollout/success_rate"],
                    "episode_length": row.get("rollout/episode_length"),
                    "inadmissible_rate": row.get("rollout/inadmissible_rate"),
                    "invalid_rate": row.get("rollout/invalid_rate"),
                    "advantages_std": row.get("advantages/std", 0.0),
                }
            )
    return out


def judge_rounds(run_dir: str | Path) -> list[dict[str, Any]]:
    """Per round: the judge's answers on good and bad steps, its accuracy on each, overall, and the
    majority-class rate (what always answering the commoner label would score on the same answers)."""
    out = []
    for row in log_history(run_dir):
        if "judge/answers" not in row:
            continue
        good, bad = row.get("judge/answers_good", 0.0), row.get("judge/answers_bad", 0.0)
        acc_good, acc_bad = row.get("judge/accuracy_good"), row.get("judge/accuracy_bad")
        hits = (acc_good or 0.0) * good + (acc_bad or 0.0) * bad
        out.append(
            {
                "round": len(out) + 1,
                "prompts": row.get("judge/prompts", 0.0),
                "answers_good": good,
                "answers_bad": bad,
                "format_failure_rate": row.get("judge/format_failure_rate", 0.0),
                "accuracy_good": acc_good,
                "accuracy_bad": acc_bad,
                "accuracy": hits / (good + bad) if good + bad else None,
                "majority": max(good, bad) / (good + bad) if good + bad else 0.0,
            }
        )
    return out


def _round_axis(ax, rounds: int) -> None:
    ax.set_xlabel("round")
    ax.set_xticks(range(1, rounds + 1))


def plot_round_curves(
    per_round: Mapping[str, Sequence[Mapping[str, Any]]], out_dir: str | Path
) -> list[Path]:
    """Training success per round (and the not-admissible rate) for each run, on integer round ticks; runs
    that overlap stay visible (distinct markers and line styles). A curve that never changes is not drawn:
    a flat line on a magnified axis says nothing."""
    runs = {k: v for k, v in per_round.items() if v}
    if not runs:
        return []
    plt = pyplot()
    written = []
    styles = [("o", "-"), ("s", "--"), ("^", ":")]
    rounds = max(len(v) for v in runs.values())
    for key, title, ylim in (
        ("success_rate", "training success rate (rollouts, T=1)", (0, 1)),
        ("inadmissible_rate", "not-admissible outputs (rollouts)", (0, 1)),
    ):
        values = [r[key] for rs in runs.values() for r in rs if r.get(key) is not None]
        if not values or max(values) - min(values) < 1e-9:
            continue
        fig, ax = plt.subplots(figsize=(4.8, 3.0))
        for (name, rs), (marker, style) in zip(runs.items(), styles):
            pts = [(r["round"], r[key]) for r in rs if r.get(key) is not None]
            ax.plot(*zip(*pts), style, marker=marker, markersize=5, linewidth=1.2, label=name, alpha=0.85)
        ax.set_ylim(*ylim)
        ax.set_title(title)
        _round_axis(ax, rounds)
        ax.legend(fontsize=7)
        written.append(save_png(fig, Path(out_dir) / f"round_{key}.png"))
    return written


def plot_judge_accuracy(rows: Sequence[Mapping[str, Any]], out: str | Path) -> Path | None:
    """The judge's accuracy on good and on bad steps per round, with the majority-class rate."""
    if not rows:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.8, 3.0))
    for key, label, marker in (("accuracy_good", "good steps", "o"), ("accuracy_bad", "bad steps", "s")):
        pts = [(r["round"], r[key]) for r in rows if r.get(key) is not None]
        if pts:
            ax.plot(*zip(*pts), "-", marker=marker, markersize=5, linewidth=1.2, label=label)
    ax.plot(
        [r["round"] for r in rows], [r["majority"] for r in rows], ":", color="grey", label="majority class"
    )
    ax.set_ylim(0, 1)
    ax.set_title("GCD judge accuracy by label")
    _round_axis(ax, len(rows))
    ax.legend(fontsize=7)
    return save_png(fig, out)


def plot_results(rows: Sequence[Mapping[str, Any]], out: str | Path) -> Path:
    """Held-out success per policy with 95% intervals, and the outputs the env could not act on."""
    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3))
    names = [r["label"] for r in rows]
    rates = [r["success_rate"] for r in rows]
    lo = [r["success_rate"] - r["ci"][0] for r in rows]
    hi = [r["ci"][1] - r["success_rate"] for r in rows]
    ax1.bar(names, rates, yerr=[lo, hi], capsize=3, color="#4c72b0")
    ax1.set_ylim(0, 1)
    ax1.set_title("held-out success (95% Wilson interval)")
    malformed = [r["invalid_rate"] for r in rows]
    ax2.bar(names, malformed, color="#dd8452", label="malformed")
    ax2.bar(
        names,
        [r["inadmissible_rate"] for r in rows],
        bottom=malformed,
        color="#c44e52",
        label="not admissible",
    )
    ax2.set_ylim(0, 1)
    ax2.set_title("invalid outputs (per step)")
    ax2.legend(fontsize=7)
    for ax in (ax1, ax2):
        ax.tick_params(axis="x", labelrotation=20)
    return save_png(fig, out)


def plot_by_type(rows: Sequence[Mapping[str, Any]], out: str | Path) -> Path | None:
    """Success per ALFWorld task type, one group of bars per type."""
    types = sorted({t for r in rows for t in r.get("by_type", {})})
    if not types:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 3))
    width = 0.8 / max(len(rows), 1)
    for i, r in enumerate(rows):
        ys = [r.get("by_type", {}).get(t, {}).get("success_rate", 0.0) for t in types]
        ax.bar([x + i * width for x in range(len(types))], ys, width, label=r["label"])
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(types))], [t.replace("_", " ") for t in types])
    ax.tick_params(axis="x", labelsize=6)
    ax.set_ylim(0, 1)
    ax.set_title("held-out success by task type")
    ax.legend(ncol=len(rows))
    return save_png(fig, out)


def result_row(label: str, report: Mapping[str, Any]) -> dict[str, Any]:
    """One policy's numbers from an eval report.json, with its success interval."""
    n, k = int(report["episodes"]), int(report["success"])
    return {
        "label": label,
        "episodes": n,
        "success": k,
        "success_rate": report["success_rate"],
        "ci": wilson(k, n),
        "mean_steps": report["mean_steps"],
        "invalid_rate": report["invalid_rate"],
        "inadmissible_rate": report["inadmissible_rate"],
        "repeated_rate": report["repeated_rate"],
        "by_type": report.get("by_type", {}),
    }


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def results_table(rows: Sequence[Mapping[str, Any]], column: str) -> list[str]:
    """Table 1's layout (rows = policies) for the demo's held-out split, plus the diagnostics."""
    lines = [
        f"| policy | {column} success % | 95% interval | episodes | mean steps | malformed % | "
        "not admissible % | repeated-action % |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['label']} | {_pct(r['success_rate'])} | {_pct(r['ci'][0])}-{_pct(r['ci'][1])} | "
            f"{r['success']}/{r['episodes']} | {r['mean_steps']:.1f} | {_pct(r['invalid_rate'])} | "
            f"{_pct(r['inadmissible_rate'])} | {_pct(r['repeated_rate'])} |"
        )
    lines += [
        "",
        "Rates are per step: *malformed* outputs have no parsable action; *not admissible* ones name an action "
        'that is not on the step\'s admissible list (the env answers "Nothing happens.").',
    ]
    return lines


def by_type_table(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    types = sorted({t for r in rows for t in r.get("by_type", {})})
    if not types:
        return []
    lines = ["| task type | " + " | ".join(r["label"] for r in rows) + " |", "|---|" + "---|" * len(rows)]
    for t in types:
        cells = []
        for r in rows:
            got = r.get("by_type", {}).get(t)
            cells.append(f"{got['success']}/{got['episodes']}" if got else "-")
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    return lines
