"""The demo's report: what ran, the results in the layout of the paper's Table 1, per-task-type success,
and PNG plots of the training curves and of the results (`runs/demo/report.md`).

Small samples deserve honesty: every success rate carries a 95% Wilson interval, and a difference between
two policies is called out only when their intervals do not overlap.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from gcd_trl.analysis.plotting import pyplot, save_png
from gcd_trl.eval.stats import wilson

# training-curve panels: (title, metric keys tried in order)
CURVES = (
    ("success rate (rollouts)", ("rollout/success_rate",)),
    ("episode length", ("rollout/episode_length",)),
    ("malformed-output rate", ("rollout/invalid_rate",)),
    ("not-admissible rate (well-formed)", ("rollout/inadmissible_rate",)),
    ("loss", ("loss",)),
    ("judge accuracy: good / bad steps", ("judge/accuracy_good", "judge/accuracy_bad")),
    ("judge share of tokens", ("judge/token_share",)),
)


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


def plot_training_curves(runs: Mapping[str, str | Path], out_dir: str | Path) -> list[Path]:
    """One PNG per curve of CURVES (`curve_<name>.png`), one line per run (x: optimizer step)."""
    histories = {name: log_history(d) for name, d in runs.items()}
    histories = {k: v for k, v in histories.items() if v}
    if not histories:
        return []
    plt = pyplot()
    written = []
    for title, keys in CURVES:
        fig, ax = plt.subplots(figsize=(4.2, 2.8))
        drawn = False
        for name, rows in histories.items():
            for key in keys:
                pts = [(r["step"], r[key]) for r in rows if key in r and r[key] is not None]
                if not pts:
                    continue
                xs, ys = zip(*pts)
                label = name if len(keys) == 1 else f"{name}: {key.split('_')[-1]} steps"
                ax.plot(
                    xs,
                    ys,
                    "-" if key == keys[0] else "--",
                    marker="o",
                    markersize=3,
                    linewidth=1,
                    label=label,
                )
                drawn = True
        ax.set_title(title)
        ax.set_xlabel("optimizer step")
        if drawn:
            ax.legend()
        else:
            ax.text(0.5, 0.5, "not logged in these runs", ha="center", va="center", transform=ax.transAxes)
        slug = keys[0].replace("/", "_")
        written.append(save_png(fig, Path(out_dir) / f"curve_{slug}.png"))
    return written


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


def overlap(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    return not (a["ci"][1] < b["ci"][0] or b["ci"][1] < a["ci"][0])


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


def verdicts(rows: Mapping[str, Mapping[str, Any]], pairs: Sequence[tuple[str, str]]) -> list[str]:
    """One sentence per compared pair: a difference, or 'within noise' when the intervals overlap."""
    out = []
    for a, b in pairs:
        if a not in rows or b not in rows:
            continue
        ra, rb = rows[a], rows[b]
        diff = ra["success_rate"] - rb["success_rate"]
        if overlap(ra, rb):
            out.append(
                f"- {a} vs {b}: {_pct(ra['success_rate'])}% vs {_pct(rb['success_rate'])}% "
                f"({diff * 100:+.1f} points) is **within noise** at this sample size (the 95% intervals overlap)."
            )
        else:
            word = "above" if diff > 0 else "below"
            out.append(
                f"- {a} is **{word}** {b}: {_pct(ra['success_rate'])}% vs {_pct(rb['success_rate'])}% "
                f"({diff * 100:+.1f} points; the 95% intervals do not overlap)."
            )
    return out
