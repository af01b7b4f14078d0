"""Eval reports: the numbers of one eval directory (`report.json`, `report.md`) and tables that merge
several directories (and optionally the paper's numbers) in the layout of the paper's Table 1: rows =
policies, columns = L0 / L1 / L2 / mean per environment, success rates in percent.

An episode line (see `gcd_trl.rollout.records`) carries `task`, `type`, `won`, `steps`, `invalid`,
`repeated`, `aborted` and its `trajectory`; rates are over steps (`invalid_rate`, `repeated_rate`) or over
episodes (`success_rate`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from gcd_trl.envs.base import ENV_NAMES
from gcd_trl.envs.splits import LEVELS

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
ENV_TITLES = {"alfworld": "ALFWorld", "scienceworld": "ScienceWorld"}


class ReportError(ValueError):
    """An eval directory or a paper-numbers file that cannot be read: names the file and the problem."""


COUNT_KEYS = ("episodes", "success", "steps", "steps_won", "invalid", "inadmissible", "repeated")


def episode_counts(episodes: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """The sums the rates are made of (summable over processes and shards): episodes, wins, steps, steps
    of won episodes, invalid, inadmissible and repeated steps."""
    return {
        "episodes": len(episodes),
        "success": sum(bool(e["won"]) for e in episodes),
        "steps": sum(int(e["steps"]) for e in episodes),
        "steps_won": sum(int(e["steps"]) for e in episodes if e["won"]),
        "invalid": sum(int(e["invalid"]) for e in episodes),
        # well-formed actions off the admissible list (sent to the env with inadmissible_action=env)
        "inadmissible": sum(int(e.get("inadmissible", 0)) for e in episodes),
        "repeated": sum(int(e["repeated"]) for e in episodes),
    }


def episode_rates(counts: Mapping[str, float]) -> dict[str, Any]:
    """The rates of an evaluation from `episode_counts` (or their sum over processes): success over
    episodes, invalid / inadmissible / repeated over steps. `gcd-trl eval` and the trainer's evaluation
    report these same numbers."""
    n, won, steps = counts["episodes"], counts["success"], counts["steps"]
    return {
        "episodes": n,
        "success": won,
        "success_rate": won / n if n else 0.0,
        "mean_steps": steps / n if n else 0.0,
        "mean_steps_won": counts["steps_won"] / won if won else None,
        "invalid_rate": counts["invalid"] / steps if steps else 0.0,
        "inadmissible_rate": counts["inadmissible"] / steps if steps else 0.0,
        "repeated_rate": counts["repeated"] / steps if steps else 0.0,
    }


def _rates(episodes: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    return episode_rates(episode_counts(episodes))


def summarize(episodes: Sequence[Mapping[str, Any]], *, expected: int | None = None, **meta: Any) -> dict:
    """The report of a list of episode lines: overall rates, `by_type`, pass@k, plus `meta` fields
    (environment, split, policy, label, ...). `expected` (tasks x samples) sets `complete`."""
    report: dict[str, Any] = dict(meta)
    report.update(_rates(episodes))
    report["aborted"] = sum(1 for e in episodes if e.get("aborted"))
    report["truncated_outputs"] = sum(int(e.get("truncated_outputs", 0)) for e in episodes)
    if expected is not None:
        report["expected_episodes"] = expected
        report["complete"] = len(episodes) == expected
    by_task: dict[str, list[bool]] = {}
    for e in episodes:
        by_task.setdefault(e["task"], []).append(bool(e["won"]))
    report["tasks"] = len(by_task)
    k = max((len(v) for v in by_task.values()), default=0)
    if k > 1:  # pass@k: a task counts when any of its k episodes won
        report[f"pass@{k}"] = sum(any(v) for v in by_task.values()) / len(by_task)
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for e in episodes:
        groups.setdefault(str(e.get("type")), []).append(e)
    report["by_type"] = {t: _rates(groups[t]) for t in sorted(groups)}
    return report


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _num(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def table1(
    rows: Sequence[tuple[str, Mapping[str, Mapping[str, float]]]], envs: Sequence[str] = ENV_NAMES
) -> str:
    """A Markdown table in Table 1's layout. `rows`: (label, {env: {level: success rate in [0, 1]}}).

    `mean` averages the levels present; it is starred when a level is missing."""
    head = ["policy"]
    for env in envs:
        head += [f"{ENV_TITLES.get(env, env)} {lv}" for lv in LEVELS] + [f"{ENV_TITLES.get(env, env)} mean"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, cells in rows:
        line = [label]
        for env in envs:
            got = cells.get(env, {})
            vals = [got.get(lv) for lv in LEVELS]
            line += [_pct(v) for v in vals]
            present = [v for v in vals if v is not None]
            mean = sum(present) / len(present) if present else None
            line.append(_pct(mean) + ("*" if present and len(present) < len(LEVELS) else ""))
        lines.append("| " + " | ".join(line) + " |")
    return "\n".join(lines)


def _detail_rows(report: Mapping[str, Any]) -> list[str]:
    lines = [
        "| type | episodes | success | success rate | mean steps | invalid rate | inadmissible rate | "
        "repeated rate |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in list(report.get("by_type", {}).items()) + [("all", report)]:
        lines.append(
            f"| {name} | {r['episodes']} | {r['success']} | {_pct(r['success_rate'])} | "
            f"{_num(r['mean_steps'])} | {_pct(r['invalid_rate'])} | {_pct(r.get('inadmissible_rate'))} | "
            f"{_pct(r['repeated_rate'])} |"
        )
    return lines


def report_markdown(report: Mapping[str, Any]) -> str:
    """report.md: this policy as a Table 1 row, then the breakdown by task type (ALFWorld) / task."""
    env, split = report.get("environment"), report.get("split")
    label = report.get("label") or report.get("policy") or "policy"
    cells = {env: {split: report["success_rate"]}} if split in LEVELS else {}
    out = [f"# Evaluation: {label} on {ENV_TITLES.get(env, env)} {split} ({report.get('part', 'test')})", ""]
    if not report.get("complete", True):
        out += [
            f"**Incomplete**: {report['episodes']} of {report['expected_episodes']} episodes; rerun the same "
            "command to finish.",
            "",
        ]
    if cells:
        out += [table1([(label, cells)], envs=[env]), ""]
    extra = [f"pass@{k[5:]} {_pct(v)}%" for k, v in report.items() if k.startswith("pass@")]
    out += [
        f"Success {report['success']}/{report['episodes']} ({_pct(report['success_rate'])}%), mean steps "
        f"{_num(report['mean_steps'])}, malformed-output rate {_pct(report['invalid_rate'])}%, not-admissible "
        f"rate {_pct(report.get('inadmissible_rate'))}%, repeated-action "
        f"rate {_pct(report['repeated_rate'])}%, aborted episodes {report.get('aborted', 0)}"
        + (", " + ", ".join(extra) if extra else "")
        + ".",
        "",
        "## By " + ("task type" if env == "alfworld" else "task"),
        "",
        *_detail_rows(report),
        "",
    ]
    return "\n".join(out)


def load_report(eval_dir: str | os.PathLike) -> dict:
    path = Path(eval_dir) / REPORT_JSON
    if not path.is_file():
        raise ReportError(
            f"{eval_dir}: no {REPORT_JSON} (not an eval directory, or the eval never finished a run)"
        )
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ReportError(f"{path}: not valid JSON ({err.msg})") from None


def read_paper(path: str | os.PathLike) -> list[tuple[str, dict[str, dict[str, float]]]]:
    """Published numbers (YAML or JSON): `rows: [{label, alfworld: {L0: 86.7, ...}, scienceworld: {...}}]`,
    in percent. Returned as Table 1 rows with rates in [0, 1]."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ReportError(f"paper numbers file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ReportError(f"{path}: not valid YAML/JSON: {err}") from None
    rows = data.get("rows") if isinstance(data, dict) else None
    if not isinstance(rows, list):
        raise ReportError(f"{path}: expected a mapping with a list under 'rows'")
    out = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or not isinstance(row.get("label"), str):
            raise ReportError(f"{path}: rows[{i}] needs a string 'label'")
        cells: dict[str, dict[str, float]] = {}
        for env in ENV_NAMES:
            for lv, v in (row.get(env) or {}).items():
                if lv not in LEVELS or not isinstance(v, int | float):
                    raise ReportError(
                        f"{path}: rows[{i}].{env}.{lv}: expected L0/L1/L2 with a number (percent)"
                    )
                cells.setdefault(env, {})[lv] = float(v) / 100
        unknown = set(row) - {"label", *ENV_NAMES}
        if unknown:
            raise ReportError(f"{path}: rows[{i}]: unknown key {sorted(unknown)[0]!r}")
        out.append((row["label"], cells))
    return out


def merge_reports(eval_dirs: Iterable[str | os.PathLike], paper: str | os.PathLike | None = None) -> dict:
    """Several eval directories (and optionally published numbers) as one Table 1: rows by label, in the
    order first seen. Returns {"rows": [...], "runs": [...], "markdown": str}."""
    rows: dict[str, dict[str, dict[str, float]]] = {}
    runs = []
    for d in eval_dirs:
        r = load_report(d)
        label = r.get("label") or r.get("policy") or str(d)
        env, split = r.get("environment"), r.get("split")
        if split not in LEVELS:
            split = str(split)
        if env in rows.get(label, {}) and split in rows[label][env]:
            raise ReportError(
                f"{d}: a second result for {label!r} on {env} {split}; give runs distinct labels"
            )
        rows.setdefault(label, {}).setdefault(env, {})[split] = r["success_rate"]
        runs.append({"dir": str(d), **{k: v for k, v in r.items() if k != "by_type"}})
    table_rows = list(rows.items())
    paper_rows = read_paper(paper) if paper else []
    envs = [e for e in ENV_NAMES if any(e in cells for _, cells in table_rows + paper_rows)]
    md = [table1(paper_rows + table_rows, envs=envs or ENV_NAMES), ""]
    if paper_rows:
        md += [f"Rows from {Path(paper).name}: published numbers; the others measured here.", ""]
    md += [
        "| run | policy | env | split | episodes | success | success rate | mean steps | invalid rate | "
        "inadmissible rate | repeated rate |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        md.append(
            f"| {run['dir']} | {run.get('label') or run.get('policy')} | {run.get('environment')} | "
            f"{run.get('split')} | {run['episodes']}{'' if run.get('complete', True) else ' (incomplete)'} | "
            f"{run['success']} | {_pct(run['success_rate'])} | {_num(run['mean_steps'])} | "
            f"{_pct(run['invalid_rate'])} | {_pct(run.get('inadmissible_rate'))} | {_pct(run['repeated_rate'])} |"
        )
    return {
        "rows": [{"label": label, **cells} for label, cells in paper_rows + table_rows],
        "runs": runs,
        "markdown": "\n".join(md) + "\n",
    }
