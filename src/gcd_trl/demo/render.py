"""Assemble `runs/demo/report.md` from the stages' outputs (eval reports, trainer logs) and the plots."""

from __future__ import annotations

import json
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gcd_trl.demo.pipeline import SCIENCEWORLD_EXPERT_STEPS
from gcd_trl.demo.report import (
    by_type_table,
    log_history,
    plot_by_type,
    plot_results,
    plot_training_curves,
    result_row,
    results_table,
    verdicts,
)


def _admissible_share(row: Mapping[str, Any]) -> float:
    """Share of the policy's steps whose output parsed as an admissible action."""
    return 1.0 - row["invalid_rate"] - row["inadmissible_rate"]


def _first_rounds_std(run_dir: Path, n: int = 3) -> list[float]:
    return [r["advantages/std"] for r in log_history(run_dir) if "advantages/std" in r][:n]


def write_report(demo: Any, eval_dirs: Mapping[str, Path], runs: Mapping[str, Path], sw_dir: Path) -> Path:
    out: Path = demo.out
    plots = out / "plots"
    rows = {}
    for label, d in eval_dirs.items():
        rows[label] = result_row(label, json.loads((d / "report.json").read_text()))
    ordered = [rows[k] for k in eval_dirs]
    sw = json.loads((sw_dir / "report.json").read_text())
    sw_row = result_row("expert", sw)

    curve_pngs = plot_training_curves({k: v for k, v in runs.items()}, plots)
    results_png = plot_results(ordered, plots / "results.png")
    type_png = plot_by_type(ordered, plots / "by_type.png")

    b = demo.budget
    sft_adm = _admissible_share(rows["SFT"])
    lines = [
        "# gcd-trl demo report",
        "",
        f"The paper's pipeline on the tiny offline model ({_millions(out / 'tiny-model')} parameters, random init, "
        "its own tokenizer) and "
        f"generated ALFWorld games of task types 1-2 ({b.train_games} for training, {b.heldout_games} held out), "
        f"on {platform.machine()} CPU. Seed {b.seed}. Numbers are what this run measured.",
        "",
        "## What ran",
        "",
        "| stage | wall time | commands |",
        "|---|---|---|",
    ]
    total = sum(demo.group_walls)  # side-by-side stages overlap: their group's wall time counts once
    for r in demo.ran:
        total += 0.0 if r.get("reused") or r.get("side_by_side") else r["wall_s"]
        note = " (reused)" if r.get("reused") else " (side by side)" if r.get("side_by_side") else ""
        cmds = "<br>".join(
            f"`{c.split(' -m gcd_trl ')[-1] if ' -m gcd_trl ' in c else c}`" for c in r["commands"]
        )
        lines.append(f"| {r['stage']} | {r['wall_s']:.0f} s{note} | {cmds} |")
    lines += [
        "",
        f"Configs written for this run: `{demo.configs.relative_to(out)}/` (SFT and both RL runs); budget: "
        f"`budget.json`. Wall time of the stages run this time: {total / 60:.1f} min.",
        "",
        "## Results on the held-out games (the layout of the paper's Table 1)",
        "",
        *results_table(ordered, "ALFWorld held-out (generated)"),
        "",
        f"ScienceWorld expert (gold path, at most {SCIENCEWORLD_EXPERT_STEPS} steps) on {sw_row['episodes']} L0 "
        f"test variations: {sw_row['success']}/{sw_row['episodes']} won, mean steps {sw_row['mean_steps']:.1f}.",
        "",
        "What the differences mean (95% Wilson intervals; small samples):",
        "",
        *verdicts(
            rows,
            [
                ("SFT", "random"),
                ("RL (GiGPO)", "SFT"),
                ("RL+GCD (GiGPO)", "SFT"),
                ("RL+GCD (GiGPO)", "RL (GiGPO)"),
            ],
        ),
        "",
        "## Learning checks",
        "",
    ]
    ok = "meets" if sft_adm >= 0.9 else "misses"
    lines.append(
        f"- After SFT, {100 * sft_adm:.1f}% of the model's greedy outputs on held-out games parse as "
        f"admissible actions ({ok} the 90% target)."
    )
    for label, d in runs.items():
        stds = _first_rounds_std(d)
        if stds:
            nz = "non-zero" if any(s > 0 for s in stds) else "ZERO (no learning signal)"
            lines.append(
                f"- {label}: advantages/std in the first rounds {', '.join(f'{s:.3f}' for s in stds)}: {nz}."
            )
    rl, gcd, sft = rows.get("RL (GiGPO)"), rows.get("RL+GCD (GiGPO)"), rows["SFT"]
    if rl and rl["success_rate"] <= sft["success_rate"]:
        lines.append(
            f"- RL did not beat SFT in {b.rounds} rounds here: a 2-core budget is a few optimizer steps, "
            "and RL can only reinforce what the cold start sometimes does (a success, a valid action). "
            "`make demo ROUNDS=N` gives RL N rounds (the finished stages before it are reused)."
        )
    if gcd:
        hist = log_history(runs["RL+GCD (GiGPO)"])
        rules = out / "rl_gigpo_gcd" / "golden_rules.json"
        shown = ""
        if rules.is_file():
            book = json.loads(rules.read_text())
            latest = book.get("versions", [])[-1:] or []
            shown = "; ".join(f"`{' '.join(r['rule'].split())[:160]}`" for v in latest for r in v["rules"])
        judged = [r for r in hist if "judge/prompts" in r]
        rules_text = (
            f"golden rules, in the tiny policy's own words: {shown}"
            if shown
            else "golden rules: none yet (the tiny model rarely writes a parsable rule)"
        )
        lines.append(f"- GCD: {len(judged)} rounds with judge samples; {rules_text}.")
    lines += ["", "## Success by task type (held-out)", "", *by_type_table(ordered), "", "## Plots", ""]
    for png in [results_png, type_png, *curve_pngs]:
        if png is not None:
            lines.append(f"![{png.stem}](plots/{png.name})")
    lines += [
        "",
        "Training curves are logged per optimizer step (one round = one step here); `judge/*` curves exist "
        "for the GCD run only.",
        "",
    ]
    analysis = out / "analysis"
    pngs = sorted(analysis.glob("*.png")) if analysis.is_dir() else []
    lines += ["## Analyses of the GCD run (`make analyze RUN=runs/demo`)", ""]
    if pngs:
        lines.append(
            "The paper's diagnostics on the RL+GCD run's checkpoints and rollouts (numbers and notes: "
            "[analysis/report.md](analysis/report.md)):"
        )
        lines += [""] + [f"![{p.stem}](analysis/{p.name})" for p in pngs]
    else:
        lines.append("Not run yet: `make analyze RUN=runs/demo` adds them here.")
    lines.append("")
    path = out / "report.md"
    path.write_text("\n".join(lines))
    (out / "results.json").write_text(
        json.dumps(
            {"heldout": ordered, "scienceworld_expert": sw_row, "stages": demo.ran}, indent=2, default=str
        )
    )
    return path


def _millions(model_dir: Path) -> str:
    from gcd_trl.tiny_model import count_parameters

    try:
        return f"{count_parameters(model_dir) / 1e6:.1f}M"
    except (OSError, FileNotFoundError):
        return "?"
