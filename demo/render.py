"""Assemble `runs/demo/report.md` from the stages' outputs (eval reports and episodes, trainer logs) and the
plots: the results table, the paired tests, the judge's accuracy per round and the learning checks."""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

from demo import ROOT, SCIENCEWORLD_EXPERT_STEPS
from demo.report import (
    by_type_table,
    judge_rounds,
    plot_by_type,
    plot_judge_accuracy,
    plot_results,
    plot_round_curves,
    result_row,
    results_table,
    round_rows,
)
from gcd_trl.eval.runner import read_episodes
from gcd_trl.eval.stats import PairedComparison, paired

SFT_MARGIN = 0.15  # the SFT row must beat random by this much for RL to have something to amplify
ALPHA = 0.05
JUDGE_FORMAT_LIMIT = 0.2


def _paired(dirs: dict[str, Path], new: str, old: str) -> PairedComparison | None:
    if new not in dirs or old not in dirs:
        return None
    return paired(read_episodes(dirs[new]), read_episodes(dirs[old]), new, old)


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _check(ok: bool) -> str:
    return "**met**" if ok else "**not met**"


def write_report(demo: Any, sw_dir: Path) -> Path:
    out: Path = demo.out
    b = demo.budget
    plots = out / "plots"
    rows = {
        split: {
            label: result_row(label, json.loads((d / "report.json").read_text())) for label, d in dirs.items()
        }
        for split, dirs in demo.eval_dirs.items()
    }
    held, full = rows.get("heldout", {}), rows.get("full", {})
    sw_row = result_row("expert", json.loads((sw_dir / "report.json").read_text()))
    tests = {
        pair: _paired(demo.eval_dirs.get("heldout", {}), *pair)
        for pair in (("RL (GiGPO)", "SFT"), ("RL+GCD (GiGPO)", "RL (GiGPO)"), ("RL+GCD (GiGPO)", "SFT"))
    }
    full_tests = {pair: _paired(demo.eval_dirs.get("full", {}), *pair) for pair in (("RL (GiGPO)", "SFT"),)}
    per_round = {label: round_rows(d) for label, d in demo.runs.items()}
    judge = judge_rounds(demo.runs["RL+GCD (GiGPO)"])

    pngs = [
        plot_results(list(held.values()), plots / "results.png"),
        plot_round_curves(per_round, plots),
        plot_judge_accuracy(judge, plots / "judge_accuracy.png"),
        plot_by_type(list(held.values()), plots / "by_type.png"),
    ]
    pngs = [p for group in pngs for p in (group if isinstance(group, list) else [group]) if p is not None]

    rooms = f"rooms cut to {b.room_size} receptacles" if b.room_size else "full rooms"
    start = (
        "the shipped warm start (`data/warm_start/`: the tiny model trained by `make warm-start`; its data, "
        "tokens, wall time and closed-loop numbers are in data/README.md)"
        if not b.from_scratch
        else f"this run's own cold start (a random-init tiny model, `make data`, {b.sft_minutes:g} minutes of SFT)"
    )
    lines = [
        "# gcd-trl demo report",
        "",
        f"The paper's pipeline on the tiny offline model and generated ALFWorld games of task types 1-2 in {rooms} "
        f"({b.train_games} games for RL, {b.heldout_games} held out; {b.full_heldout_games} held-out games of the "
        f"same seed in full rooms), on {platform.machine()} CPU, seed {b.seed}. The policy called SFT below is "
        f"{start}. RL+GCD is GCD's co-training: the policy also answers the paper's critic prompt about its "
        "own steps in the same GRPO loop"
        + (
            ", and golden rules distilled from its critiques fill the agent prompt."
            if b.correction
            else " (golden rules off: the tiny policy cannot write usable ones, docs/sft.md)."
        )
        + " Numbers are what this run measured.",
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
        f"Configs written for this run: `{demo.configs.relative_to(out)}/`; budget: `budget.json`. Wall time of "
        f"the stages run this time: {total / 60:.1f} min.",
        "",
        f"## Results on the {b.heldout_games} held-out games ({rooms}; the layout of the paper's Table 1)",
        "",
        *results_table(list(held.values()), f"ALFWorld held-out ({rooms})"),
        "",
        f"Every policy played each held-out game once (models greedy, at most {b.max_episode_steps} steps), so "
        "two policies are compared game by game: the exact McNemar test counts the games only one of them won.",
        "",
        "| comparison | games won by both / neither | only the first | only the second | one-sided p (first better) | two-sided p |",
        "|---|---|---|---|---|---|",
    ]
    for (a, c), t in tests.items():
        if t is not None:
            lines.append(
                f"| {a} vs {c} | {t.both} / {t.neither} | {t.new_only} | {t.old_only} | "
                f"{t.p_one_sided:.4g} | {t.p_two_sided:.4g} |"
            )
    if full:
        lines += [
            "",
            f"## The same policies on {b.full_heldout_games} held-out games in full rooms",
            "",
            f"Same seed, so the same scenes and goals, with every receptacle of the floor plan (10-40); at most "
            f"{b.full_max_episode_steps} steps. The curriculum's rooms are what RL trained on; this row shows how "
            "far that carries.",
            "",
            *results_table(list(full.values()), "ALFWorld held-out (full rooms)")[:-2],
        ]
        for t in full_tests.values():
            if t is not None:
                lines += ["", f"- {t.sentence()}."]
    lines += [
        "",
        f"ScienceWorld expert (gold path, at most {SCIENCEWORLD_EXPERT_STEPS} steps) on {sw_row['episodes']} L0 "
        f"test variations: {sw_row['success']}/{sw_row['episodes']} won, mean steps {sw_row['mean_steps']:.1f}.",
        "",
        "## Learning checks",
        "",
    ]
    sft, rnd = held.get("SFT"), held.get("random")
    if sft and rnd:
        gap = sft["success_rate"] - rnd["success_rate"]
        lines.append(
            f"- SFT beats random by at least {100 * SFT_MARGIN:.0f} points: {_pct(sft['success_rate'])}% vs "
            f"{_pct(rnd['success_rate'])}% ({100 * gap:+.1f} points): {_check(gap >= SFT_MARGIN)}."
        )
    t = tests[("RL (GiGPO)", "SFT")]
    if t is not None:
        lines.append(
            f"- RL (GiGPO) beats SFT on the paired games at p < {ALPHA}: {t.sentence()}: "
            f"{_check(t.p_one_sided < ALPHA and t.new_only > t.old_only)}."
        )
    t = tests[("RL+GCD (GiGPO)", "RL (GiGPO)")]
    if t is not None:
        lines.append(f"- RL+GCD vs RL (reported, no target): {t.sentence()}.")
    if judge:
        worst = max(r["format_failure_rate"] for r in judge)
        classes = all(r["answers_good"] > 0 and r["answers_bad"] > 0 for r in judge)
        lines.append(
            f"- The judge is live: its format-failure rate is at most {100 * JUDGE_FORMAT_LIMIT:.0f}% in every "
            f"round (worst {_pct(worst)}%): {_check(worst <= JUDGE_FORMAT_LIMIT)}; both label classes are judged "
            f"in every round: {_check(classes)}."
        )
    lines += ["", "## The judge, round by round (RL+GCD)", ""]
    if judge:
        lines += [
            "Accuracy of the policy's own judge answers against the step labels (rules: a step whose state comes "
            "back later is bad, the last step of a won episode good). The majority-class rate is what a judge "
            "that always gives the commoner label would score on the same answers.",
            "",
            "| round | judge prompts | answers (good / bad steps) | format failures | accuracy on good steps | "
            "accuracy on bad steps | overall | majority-class rate |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in judge:
            lines.append(
                f"| {r['round']} | {r['prompts']:.0f} | {r['answers_good']:.0f} / {r['answers_bad']:.0f} | "
                f"{_pct(r['format_failure_rate'])}% | {_fmt(r['accuracy_good'])} | {_fmt(r['accuracy_bad'])} | "
                f"{_fmt(r['accuracy'])} | {_pct(r['majority'])}% |"
            )
        rules = out / "rl_gigpo_gcd" / "golden_rules.json"
        if rules.is_file():
            book = json.loads(rules.read_text())
            latest = book.get("versions", [])[-1:] or []
            shown = "; ".join(f"`{' '.join(r['rule'].split())[:160]}`" for v in latest for r in v["rules"])
            lines += ["", f"Golden rules, in the tiny policy's own words: {shown or 'none parsable yet'}."]
    else:
        lines.append("No judge rounds were logged.")
    lines += ["", "## Training, round by round", ""]
    for label, rs in per_round.items():
        if rs:
            lines.append(
                f"- {label}: rollout success per round "
                + ", ".join(f"{_pct(r['success_rate'])}%" for r in rs)
                + "; advantages/std "
                + ", ".join(f"{r['advantages_std']:.2f}" for r in rs)
                + "."
            )
    lines += [
        "",
        "## Success by task type (held-out)",
        "",
        *by_type_table(list(held.values())),
        "",
        "## Plots",
        "",
    ]
    for png in pngs:
        lines.append(f"![{png.stem}](plots/{png.name})")
    analysis = out / "analysis"
    analysis_pngs = sorted(analysis.glob("*.png")) if analysis.is_dir() else []
    lines += ["", "## Analyses of the GCD run (`make analyze RUN=runs/demo`)", ""]
    if analysis_pngs:
        lines.append(
            "The paper's diagnostics on the RL+GCD run's checkpoints and rollouts (numbers and notes: "
            "[analysis/report.md](analysis/report.md)):"
        )
        lines += [""] + [f"![{p.stem}](analysis/{p.name})" for p in analysis_pngs]
    else:
        lines.append("Not run yet: `make analyze RUN=runs/demo` adds them here.")
    lines.append("")
    path = out / "report.md"
    path.write_text("\n".join(lines))
    (out / "results.json").write_text(
        json.dumps(
            {
                "heldout": list(held.values()),
                "full_rooms": list(full.values()),
                "paired": [t.to_dict() for t in tests.values() if t is not None],
                "paired_full_rooms": [t.to_dict() for t in full_tests.values() if t is not None],
                "judge_rounds": judge,
                "rounds": per_round,
                "scienceworld_expert": sw_row,
                "stages": demo.ran,
                "start": demo.start_kind,
                "warm_start": str((ROOT / "data" / "warm_start").relative_to(ROOT))
                if not b.from_scratch
                else None,
            },
            indent=2,
            default=str,
        )
    )
    return path


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"
