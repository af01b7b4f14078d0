"""`gcd-trl analyze all`: every analysis on one training run, and a markdown report of the plots.

The run's model folders (checkpoint-N in order, then the final model; `base` first when given) form the
series for `influence` and `consistency`; the last one is analysed by `similarity`, `coupling` and
`tokens`. Trajectories are the run's rollouts (and any eval episodes.jsonl under it). One analysis that
cannot run (too little data: e.g. no won episode, so no step labelled good) or fails is reported and the
others go on; nothing already written is lost.
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path
from typing import Any

from gcd_trl.analysis.common import AnalysisError, find_checkpoints, model_labels, write_json

ORDER = ("theory", "similarity", "coupling", "influence", "consistency", "tokens")


def run_trajectories(run: Path) -> list[str]:
    paths = []
    if (run / "rollouts").is_dir() and any((run / "rollouts").glob("*.jsonl")):
        paths.append(str(run / "rollouts"))
    paths += sorted(str(p) for p in run.rglob("episodes.jsonl") if "analysis" not in p.parts)
    return paths


def _sizes(quick: bool) -> dict[str, dict[str, Any]]:
    if quick:
        return {
            "theory": {"samples": 100_000},
            "similarity": {"num_samples": 24, "gradients": True},
            "coupling": {"num_actions": 6, "per_action": 3, "verify": 1},
            "influence": {"per_class": 8},
            "consistency": {"max_states": 8},
            "tokens": {"num_samples": 16},
        }
    return {"similarity": {"gradients": True}}


def run_all(
    run_dir: str,
    *,
    out_dir: str | None = None,
    base: str | None = None,
    trajectories: list[str] | None = None,
    only: list[str] | tuple[str, ...] = ORDER,
    device: str = "auto",
    seed: int = 0,
    quick: bool = False,
) -> dict[str, Any]:
    from gcd_trl.analysis.consistency import run_consistency
    from gcd_trl.analysis.coupling import run_coupling
    from gcd_trl.analysis.influence import run_influence
    from gcd_trl.analysis.similarity import run_similarity
    from gcd_trl.analysis.theory import run_theory
    from gcd_trl.analysis.tokens import run_tokens

    run = Path(run_dir)
    models = [str(p) for p in find_checkpoints(run)]
    if base:
        models.insert(0, base)
    needs_model = [a for a in only if a != "theory"]
    if needs_model and not models:
        raise AnalysisError(f"{run}: no checkpoint-N folder or saved model (config.json) to analyse")
    paths = trajectories or run_trajectories(run)
    if needs_model and not paths:
        raise AnalysisError(f"{run}: no rollouts/*.jsonl or episodes.jsonl; pass --trajectories")
    out = Path(out_dir) if out_dir else run / "analysis"
    sizes = _sizes(quick)
    last = models[-1] if models else None
    common = {"seed": seed, "device": device}
    jobs = {
        "theory": lambda: run_theory(str(out), seed=seed, **sizes.get("theory", {})),
        "similarity": lambda: run_similarity(last, paths, str(out), **common, **sizes.get("similarity", {})),
        "coupling": lambda: run_coupling(last, paths, str(out), **common, **sizes.get("coupling", {})),
        "influence": lambda: run_influence(models, paths, str(out), **common, **sizes.get("influence", {})),
        "consistency": lambda: run_consistency(
            models, paths, str(out), **common, **sizes.get("consistency", {})
        ),
        "tokens": lambda: run_tokens(last, paths, str(out), **common, **sizes.get("tokens", {})),
    }
    summary: dict[str, Any] = {
        "run": str(run),
        "models": models,
        "trajectories": paths,
        "analyses": {},
    }
    results = {}
    todo, done = [name for name in ORDER if name in only], 0
    for name in todo:
        print(f"[analyze] {name} ({done + 1}/{len(todo)}) ...", file=sys.stderr, flush=True)
        done += 1
        try:
            results[name] = jobs[name]()
            summary["analyses"][name] = {"status": "ok", "json": f"{name}.json", "png": f"{name}.png"}
        except AnalysisError as err:
            summary["analyses"][name] = {"status": "skipped", "message": str(err)}
        except Exception as err:  # keep going: the other analyses still run
            traceback.print_exc()
            summary["analyses"][name] = {"status": "failed", "message": f"{type(err).__name__}: {err}"}
        write_json(out / "summary.json", summary)
    summary["report"] = str(write_report(out / "report.md", summary, results))
    write_json(out / "summary.json", summary)
    return summary


def _fmt(x: Any, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}g}" if isinstance(x, float) else str(x)


def headline(name: str, r: dict[str, Any]) -> str:
    """One line of the key numbers of an analysis result."""
    if name == "theory":
        s, t = r["lemma_3_1_summary"], r["theorem_3_2"]["summary"]
        return (
            f"Lemma 3.1 on {s['points']} (p,q,r): max |MC - closed form| = {s['max_abs_z']:.2f} s.e.; "
            f"Theorem 3.2 grid: p1 rises at {t['p1_rises']}/{t['points']} points, p3/p1 grows at all: "
            f"{t['gap_always_widens']}; the printed condition agrees at {t['paper_condition_agrees']}/{t['points']}."
        )
    if name == "similarity":
        h = r["hidden"]
        line = f"mean pairwise cosine (hidden): agent {_fmt(h['agent']['mean'])} vs reference {_fmt(h['reference']['mean'])}"
        if "gradient" in r:
            g = r["gradient"]
            line += (
                f"; gradient: agent {_fmt(g['agent']['mean'])} vs reference {_fmt(g['reference']['mean'])}"
            )
        return line + "."
    if name == "coupling":
        s = r["summary"]
        pear = [v["pearson"] for v in r["verify"] if v["pearson"] is not None]
        return (
            f"{r['num_samples']} samples, {len(r['actions'])} actions: mean Δ log p same action "
            f"{_fmt(s['same_action_mean'])}, other actions {_fmt(s['different_action_mean'])}"
            + (f"; exact-step check Pearson r ≥ {min(pear):.4f}" if pear else "")
            + "."
        )
    if name == "influence":
        gaps = ", ".join(f"{c['label']}: {_fmt(c['eq2']['gap'])}" for c in r["checkpoints"])
        return f"{r['num_good']} good / {r['num_bad']} bad steps ({r['label_source']}); gap (same - different): {gaps}."
    if name == "consistency":
        parts = []
        for c in r["checkpoints"]:
            rep = c["repeat"]
            parts.append(f"{c['label']}: {_fmt(rep.get('high_share'))} of {rep['states']}")
        return (
            f"share of repeat states repeated ≥{r['high']}/{r['num_samples']} times: "
            + ", ".join(parts)
            + "."
        )
    if name == "tokens":
        return "top tokens: " + ", ".join(f"`{t['token']}`" for t in r["top_tokens"][:8]) + "."
    return ""


def write_report(path: Path, summary: dict[str, Any], results: dict[str, Any]) -> Path:
    lines = [f"# Analysis of `{summary['run']}`", ""]
    lines.append("Models: " + ", ".join(f"`{x}`" for x in model_labels(summary["models"])) + "  ")
    lines.append("Trajectories: " + ", ".join(f"`{p}`" for p in summary["trajectories"]))
    lines.append("")
    for name in ORDER:
        entry = summary["analyses"].get(name)
        if entry is None:
            continue
        lines += [f"## {name}", ""]
        if entry["status"] == "ok":
            lines += [headline(name, results[name]), "", f"![{name}]({name}.png)", ""]
            if name == "tokens":
                lines += ["Shaded text: [tokens.html](tokens.html)", ""]
        else:
            lines += [f"**{entry['status']}**: {entry['message']}", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
