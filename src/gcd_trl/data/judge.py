"""Judge SFT data ("generative SFT", the paper's Figure 7): critic prompts over labelled agent steps.

    steps = read_steps("data/alfworld/agent_sft/steps")          # the agent builder's played steps
    result = build_judge_sft(steps, JudgeSFTConfig(good_share=0.5))
    save_rows(result.rows, "data/alfworld/judge_sft")

Which steps, which label:
- The agent builder's steps: expert steps (the expert's own action) and mistakes of its recovery
  episodes (`perturbation`: a repeated action, an irrelevant admissible action, a premature "the task
  is done", a malformed answer).
- Any other step records (RL rollouts, eval episodes) work too; they only get rule labels.
- The label is the paper's rule (`gcd.labels.rule_labels`: a step whose state comes back later is bad,
  the last step of a won episode is good) wherever the rule says something; elsewhere it is the
  construction's (an expert action is good, a perturbation bad); other steps are left out. Disagreements
  between rule and construction are counted (`rule_construction_disagreements`); `label_priority=
  "construction"` lets the construction win where both exist (the loop rule also flags expert steps that
  revisit an identical observation, e.g. an empty shelf seen twice).
- The critique follows the critic prompt's format: `<think>..</think><answer>\\boxed{0|1}</answer>`, then
  `<action>..</action>` (a better action: the expert's) when the score is 0, then `<advise>..</advise>`.
  It is written by a template, or by an OpenAI-compatible endpoint (`gcd.external.ExternalJudge`): the
  first of its answers whose score agrees with the label; when none agrees or the request fails, the
  template stands in (counted).
- Class balance: `good_share` (default 0.5) drops rows of the larger class, seeded, until good rows
  make that share; None keeps every labelled step. Both counts are reported before and after.
"""

from __future__ import annotations

import random
import re
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gcd_trl.gcd.judge import parse_judgement, render_judge_prompt
from gcd_trl.gcd.labels import BAD, GOOD, rule_labels
from gcd_trl.prompts import load_template
from gcd_trl.rollout.records import group_trajectories

CRITIQUE_SOURCES = ("template", "endpoint")
LABEL_PRIORITIES = ("rule", "construction")
_TASK_LEAD = re.compile(r"^your task is to:?\s*", re.I)
_TASK_LINE = re.compile(r"(?:Your task is to:|Task:)\s*(.+)")

ADVICE = {
    "repeat": "Never repeat an action that did not change the state; pick a different admissible action.",
    "irrelevant": "Choose actions that bring you closer to the objects and places the task names.",
    "premature_finish": "Check that every part of the task is done before concluding; until then keep acting.",
    "absent": "Only name objects and places that appear in the observation or the admissible actions.",
    "invalid": "Always answer with your reasoning and exactly one admissible action inside <action></action>.",
    "loop": "When you come back to a state you have already seen, try something you have not tried there.",
    "good": "Keep each action aimed at the next unmet part of the task and avoid revisiting places.",
    "finish": "Finish the task with the action that completes its last requirement.",
}


@dataclass
class JudgeSFTConfig:
    critic_template: str = "critic"  # a built-in critic template name or a file
    critique: str = "template"  # template | endpoint
    good_share: float | None = 0.5  # share of good rows after balancing; None: keep all
    label_priority: str = "rule"  # which label wins where both exist: the paper's rule, or the construction
    max_rows: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.label_priority not in LABEL_PRIORITIES:
            raise ValueError(f"label_priority={self.label_priority!r} is not one of {LABEL_PRIORITIES}")
        if self.critique not in CRITIQUE_SOURCES:
            raise ValueError(f"critique={self.critique!r} is not one of {CRITIQUE_SOURCES}")
        if self.good_share is not None and not 0.0 < self.good_share < 1.0:
            raise ValueError(f"good_share must lie in (0, 1) or be None, got {self.good_share}")
        if self.max_rows is not None and self.max_rows < 1:
            raise ValueError(f"max_rows must be >= 1, got {self.max_rows}")


@dataclass
class JudgeSFTResult:
    rows: list[dict[str, Any]]
    summary: dict[str, Any]


def _goal(prompt: str) -> str:
    m = _TASK_LINE.search(prompt)
    return m.group(1).strip().rstrip(".") if m else "the task"


def label_step(
    record: Mapping[str, Any], rule: int | None, priority: str = "rule"
) -> tuple[int | None, str, str, bool]:
    """(label, label_source, reason, overridden) for one step: the rule where it applies, else the
    construction's label (an expert action good, a perturbation bad); with priority "construction" the
    construction's label wins where both exist. `overridden`: rule and construction disagree."""
    kind = record.get("perturbation")
    expert = record.get("expert_action")
    if kind:
        construction, why = BAD, str(kind)
    elif expert is not None and record.get("valid") and record.get("action") == expert:
        construction, why = GOOD, "expert"
    else:
        construction, why = None, ""
    if rule is not None and priority == "construction" and construction is not None:
        return construction, "construction", why, construction != rule
    if rule is not None:
        overridden = construction is not None and construction != rule
        if rule == GOOD:
            return GOOD, "rule", "finish", overridden
        return BAD, "rule", (why if construction == BAD else "loop"), overridden
    if construction is not None:
        return construction, "construction", why, False
    return None, "none", "", False


def template_critique(record: Mapping[str, Any], label: int, reason: str) -> str:
    """A critique in the critic prompt's format, written from what is known about the step."""
    action = record.get("action") or record.get("raw_action") or "(no valid action)"
    goal = _goal(str(record.get("prompt", "")))
    expert = record.get("expert_action")
    if label == GOOD:
        if reason == "finish":
            think = f"The agent chose '{action}', which completes the task ({goal})."
        else:
            think = (
                f"The agent chose '{action}'. It makes progress toward the task ({goal}) and does not "
                "undo or repeat earlier steps."
            )
        advise = ADVICE["finish" if reason == "finish" else "good"]
        return f"<think>{think}</think>\n<answer>\\boxed{{1}}</answer>\n<advise>{advise}</advise>"
    if reason == "repeat":
        think = f"The agent repeats '{action}', which it just did; the state does not change and it makes no progress."
    elif reason == "irrelevant":
        think = f"'{action}' does not help with the task ({goal})."
    elif reason == "premature_finish":
        think = f"The agent believes the task is done, but it is not solved yet ({goal}); '{action}' does nothing."
    elif reason == "absent":
        think = f"'{action}' names something this room does not have; nothing happens."
    elif reason == "invalid":
        think = "The answer has no valid action block, so nothing happens in the environment."
    else:
        think = (
            f"After '{action}' the agent comes back to the state it acted in: the action made no progress."
        )
    better = expert if expert and expert != record.get("action") else None
    if better:
        think += f" '{better}' is a better choice."
    alt = f"\n<action>{better}</action>" if better else ""
    advise = ADVICE.get(reason, ADVICE["loop"])
    return f"<think>{think}</think>\n<answer>\\boxed{{0}}</answer>{alt}\n<advise>{advise}</advise>"


def balance(rows: list[dict[str, Any]], good_share: float | None, seed: int) -> list[dict[str, Any]]:
    """Drop rows of the larger class (seeded) so that good rows make `good_share` of the result."""
    if good_share is None:
        return rows
    good = [i for i, r in enumerate(rows) if r["label"] == GOOD]
    bad = [i for i, r in enumerate(rows) if r["label"] == BAD]
    if not good or not bad:
        return rows
    n_good = min(len(good), round(len(bad) * good_share / (1 - good_share)))
    n_bad = min(len(bad), round(n_good * (1 - good_share) / good_share))
    rng = random.Random(f"judge_sft_balance:{seed}")
    keep = set(rng.sample(good, n_good)) | set(rng.sample(bad, n_bad))
    return [r for i, r in enumerate(rows) if i in keep]  # file order kept


def build_judge_sft(
    records: Sequence[Mapping[str, Any]],
    cfg: JudgeSFTConfig | None = None,
    *,
    endpoint=None,
    progress: bool = True,
) -> JudgeSFTResult:
    """Label the step records, render critic prompts and critiques; rows are chat conversations."""
    from tqdm.auto import tqdm

    cfg = cfg or JudgeSFTConfig()
    if cfg.critique == "endpoint" and endpoint is None:
        raise ValueError("critique='endpoint' needs an endpoint (model and base URL)")
    start = time.perf_counter()
    template = load_template(cfg.critic_template, "critic")
    labelled: list[tuple[dict[str, Any], int, str, str]] = []
    counts: Counter[str] = Counter()
    for steps in group_trajectories(records).values():
        for rec, rule in zip(steps, rule_labels(steps)):
            label, source, reason, overridden = label_step(rec, rule, cfg.label_priority)
            counts[f"label_{source}"] += 1
            counts["rule_overrides"] += int(overridden)
            if label is not None:
                labelled.append((rec, label, source, reason))
    rows = []
    for rec, label, source, reason in labelled:
        rows.append(
            {
                "messages": [{"role": "user", "content": render_judge_prompt(rec, template)}],
                "label": label,
                "label_source": source,
                "reason": reason,
                "task": str(rec.get("task", "")),
                "episode": str(rec.get("episode", rec.get("traj", ""))),
                "step": int(rec["step"]),
                "agent_prompt": rec["prompt"],
                "agent_completion": rec["completion"],
                "_record": rec,
            }
        )
    before = Counter(r["label"] for r in rows)
    rows = balance(rows, cfg.good_share, cfg.seed)
    if cfg.max_rows is not None and len(rows) > cfg.max_rows:
        rng = random.Random(f"judge_sft_max_rows:{cfg.seed}")
        keep = set(rng.sample(range(len(rows)), cfg.max_rows))
        rows = [r for i, r in enumerate(rows) if i in keep]
    critiques = _endpoint_critiques(rows, endpoint, counts) if cfg.critique == "endpoint" else {}
    for i, r in enumerate(tqdm(rows, desc="judge-sft", unit="row", disable=not progress, dynamic_ncols=True)):
        rec = r.pop("_record")
        text = critiques.get(i) or template_critique(rec, r["label"], r["reason"])
        r["critique_source"] = "endpoint" if i in critiques else "template"
        r["messages"].append({"role": "assistant", "content": text})
    after = Counter(r["label"] for r in rows)
    summary = {
        "rows": len(rows),
        "good": after.get(GOOD, 0),
        "bad": after.get(BAD, 0),
        "good_share": round(after.get(GOOD, 0) / len(rows), 4) if rows else 0.0,
        "labelled_before_balance": {"good": before.get(GOOD, 0), "bad": before.get(BAD, 0)},
        "target_good_share": cfg.good_share,
        "steps_read": len(records),
        "label_sources": {k[len("label_") :]: v for k, v in sorted(counts.items()) if k.startswith("label_")},
        "label_priority": cfg.label_priority,
        "rule_construction_disagreements": counts.get("rule_overrides", 0),
        "reasons": dict(sorted(Counter(r["reason"] for r in rows).items())),
        "critique": cfg.critique,
        "critic_template": cfg.critic_template,
        "seed": cfg.seed,
        "wall_time_s": round(time.perf_counter() - start, 2),
    }
    if cfg.critique == "endpoint":
        summary["endpoint"] = {
            "agreeing": counts.get("endpoint_agreeing", 0),
            "disagreeing": counts.get("endpoint_disagreeing", 0),
            "failed": counts.get("endpoint_failed", 0),
            **endpoint.stats(),
        }
    return JudgeSFTResult(rows, summary)


def _endpoint_critiques(rows: list[dict[str, Any]], endpoint, counts: Counter) -> dict[int, str]:
    """The endpoint's critique per row index, where one of its answers agrees with the row's label."""
    prompts = [r["messages"][0]["content"] for r in rows]
    out: dict[int, str] = {}
    for i, res in enumerate(endpoint.judge_prompts(prompts)):
        if res.get("failed"):
            counts["endpoint_failed"] += 1
            continue
        texts = [c for c in res.get("critiques", [])]
        agreeing = [c for c in texts if c.get("score") == rows[i]["label"]]
        if not agreeing:
            counts["endpoint_disagreeing"] += 1
            continue
        counts["endpoint_agreeing"] += 1
        out[i] = _as_text(agreeing[0], rows[i]["label"])
    return out


def _as_text(critique: Mapping[str, Any], label: int) -> str:
    """A parsed endpoint critique written back in the critic format."""
    parts = [f"<think>{critique.get('think') or ''}</think>", f"<answer>\\boxed{{{label}}}</answer>"]
    if label == BAD and critique.get("action"):
        parts.append(f"<action>{critique['action']}</action>")
    parts.append(f"<advise>{critique.get('advise') or ''}</advise>")
    text = "\n".join(parts)
    assert parse_judgement(text).score == label
    return text
