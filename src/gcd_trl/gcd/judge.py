"""The judge task: critic prompts about the policy's own steps, answers parsed, rewards and advantages.

One round, as the trainer uses it:

    labelled = label_records(step_records, external_results, mode)          # gcd.labels
    prompts = build_judge_prompts(labelled, k, seed, template)              # class-balanced, rendered
    answers = generator.generate([p.prompt for p in prompts for _ in range(G_judge)])
    scores = score_judge_answers(prompts, [texts of each prompt's G_judge answers], format_penalty)
    advantages = judge_advantages(scores.rewards, scale_rewards)            # per prompt group, as TRL

A judge answer follows prompts/critic.txt: `<think>..</think> <answer>\\boxed{0|1}</answer>
<action>..</action> <advise>..</advise>`. Its reward is 1 when the boxed score equals the step's label,
0 when it does not, and -format_penalty when there is no parsable \\boxed{0} / \\boxed{1}.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gcd_trl.prompts import load_template, render_critic_prompt

_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")


def _block(tag: str, text: str) -> str | None:
    """The content of the last <tag>...</tag> block (None when absent)."""
    found = re.findall(rf"<{tag}>(.*?)</{tag}>", text, flags=re.DOTALL | re.IGNORECASE)
    return found[-1].strip() if found else None


@dataclass(frozen=True)
class Judgement:
    """A parsed critic answer. `score` is 1 (good), 0 (bad) or None (no parsable \\boxed{0|1})."""

    score: int | None
    think: str | None = None
    action: str | None = None
    advise: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"score": self.score, "think": self.think, "action": self.action, "advise": self.advise}


def parse_judgement(text: str) -> Judgement:
    """Parse a critic answer. The score is the last \\boxed{} inside the <answer> block when there is one,
    else the last \\boxed{} of the text; only a bare 0 or 1 counts (the template's "0/1" does not)."""
    answer = _block("answer", text)
    boxes = _BOXED.findall(answer) if answer is not None else []
    if not boxes:
        boxes = _BOXED.findall(text)
    score = None
    if boxes and boxes[-1].strip() in ("0", "1"):
        score = int(boxes[-1].strip())
    return Judgement(
        score=score, think=_block("think", text), action=_block("action", text), advise=_block("advise", text)
    )


def judge_reward(text: str, label: int, format_penalty: float) -> float:
    """1.0 when the answer's boxed score equals `label`, 0.0 when not, -format_penalty when unparsable."""
    if label not in (0, 1):
        raise ValueError(f"judge_reward: label must be 0 or 1, got {label!r}")
    score = parse_judgement(text).score
    if score is None:
        return -float(format_penalty)
    return 1.0 if score == label else 0.0


def render_judge_prompt(record: Mapping[str, Any], template: str | None = None) -> str:
    """The critic prompt for one step record.

    The {problem} is the step's whole agent prompt (task, guidelines, recent history, current observation,
    admissible actions: exactly what the agent saw) and the {response} its full answer (reasoning and
    action). `template` is the template text (default: the built-in critic template).
    """
    for name in ("prompt", "completion"):
        if not isinstance(record.get(name), str):
            raise ValueError(f"render_judge_prompt: the step record has no string field {name!r}")
    text = template if template is not None else load_template("critic")
    return render_critic_prompt(text, problem=record["prompt"].strip(), response=record["completion"].strip())


def select_balanced(
    records: Sequence[Mapping[str, Any]], k: int, seed: int, balance: bool = True
) -> list[Mapping[str, Any]]:
    """Up to `k` labelled agent steps, as many good as bad.

    With `balance` (default) each class contributes the same number, min(k // 2, good, bad) (an odd k
    leaves one out; a round without good steps gives none: an all-"bad" answer would otherwise score
    well); with
    `balance=False` the rest of `k` is filled from whichever class has more. Deterministic in `seed`;
    the result is shuffled so classes alternate randomly.
    """
    if k < 0:
        raise ValueError(f"select_balanced: k must be >= 0, got {k}")
    rng = random.Random(seed)
    good = [r for r in records if r.get("kind", "agent") == "agent" and r.get("label") == 1]
    bad = [r for r in records if r.get("kind", "agent") == "agent" and r.get("label") == 0]
    per_class = min(k // 2, len(good), len(bad))
    n_good = n_bad = per_class
    if not balance:
        spare = k - 2 * per_class
        extra_good = min(spare, len(good) - per_class)
        n_good += extra_good
        n_bad += min(spare - extra_good, len(bad) - per_class)
    chosen = rng.sample(good, n_good) + rng.sample(bad, n_bad)
    rng.shuffle(chosen)
    return chosen


@dataclass(frozen=True)
class JudgePrompt:
    """One judge prompt of a round: the critic prompt, the step's label, and where it came from.

    `record_ref` is the index of the step in the list given to `build_judge_prompts` (None for a static
    judge row of the dataset); `label_source` is "rule", "external" or "static".
    """

    prompt: str
    label: int
    record_ref: int | None
    label_source: str = "rule"


def build_judge_prompts(
    labelled_records: Sequence[Mapping[str, Any]],
    k: int,
    seed: int,
    template: str | None = None,
    balance: bool = True,
) -> list[JudgePrompt]:
    """The round's judge prompts: `select_balanced` steps rendered with the critic template."""
    text = template if template is not None else load_template("critic")
    index = {id(r): i for i, r in enumerate(labelled_records)}
    out = []
    for r in select_balanced(labelled_records, k, seed, balance=balance):
        out.append(
            JudgePrompt(
                prompt=render_judge_prompt(r, text),
                label=int(r["label"]),
                record_ref=index[id(r)],
                label_source=str(r.get("label_source", "rule")),
            )
        )
    return out


def judge_prompt_from_row(
    row: Mapping[str, Any], template: str | None = None, where: str = "row"
) -> JudgePrompt:
    """A static judge row of the dataset (`kind: judge`) as a JudgePrompt.

    The row holds `label` (0 or 1) and either a ready critic `prompt`, or a step's agent `prompt` with
    its `completion` (rendered here with the critic template).
    """
    label = row.get("label")
    if label not in (0, 1) or isinstance(label, bool):
        raise ValueError(f"{where}: a judge row needs label 0 or 1, got {label!r}")
    if not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
        raise ValueError(f"{where}: a judge row needs a non-empty string 'prompt'")
    if isinstance(row.get("completion"), str):
        prompt = render_judge_prompt(row, template)
    else:
        prompt = row["prompt"]
    return JudgePrompt(prompt=prompt, label=int(label), record_ref=None, label_source="static")


@dataclass
class JudgeScores:
    """Rewards and parsed answers of a round's judge samples, grouped by prompt, plus round metrics."""

    rewards: list[list[float]]
    judgements: list[list[Judgement]]
    advice: list[str] = field(default_factory=list)  # <advise> of answers that matched the label
    metrics: dict[str, float] = field(default_factory=dict)


def score_judge_answers(
    prompts: Sequence[JudgePrompt], answers: Sequence[Sequence[str]], format_penalty: float
) -> JudgeScores:
    """Score each prompt's answers; metrics: judge/accuracy_good, judge/accuracy_bad (share of answers
    equal to the label on good / bad steps), judge/format_failures (share of answers without a score),
    judge/prompts, judge/answers, judge/good_prompts."""
    if len(prompts) != len(answers):
        raise ValueError(f"score_judge_answers: {len(prompts)} prompts but {len(answers)} answer groups")
    rewards, judgements, advice = [], [], []
    hits = {0: 0, 1: 0}
    seen = {0: 0, 1: 0}
    unparsable = total = 0
    for p, texts in zip(prompts, answers):
        group_r, group_j = [], []
        for text in texts:
            j = parse_judgement(text)
            group_j.append(j)
            if j.score is None:
                group_r.append(-float(format_penalty))
                unparsable += 1
            else:
                group_r.append(1.0 if j.score == p.label else 0.0)
                if j.score == p.label and j.advise:
                    advice.append(j.advise)
            hits[p.label] += int(j.score == p.label)
            seen[p.label] += 1
            total += 1
        rewards.append(group_r)
        judgements.append(group_j)
    metrics = {
        "judge/prompts": float(len(prompts)),
        "judge/good_prompts": float(sum(p.label == 1 for p in prompts)),
        "judge/answers": float(total),
        "judge/format_failures": unparsable / total if total else 0.0,
    }
    if seen[1]:
        metrics["judge/accuracy_good"] = hits[1] / seen[1]
    if seen[0]:
        metrics["judge/accuracy_bad"] = hits[0] / seen[0]
    return JudgeScores(rewards=rewards, judgements=judgements, advice=advice, metrics=metrics)


def judge_advantages(
    rewards: Sequence[Sequence[float]], scale_rewards: str | bool = "group"
) -> list[list[float]]:
    """GRPO advantages of judge answers, normalised within each prompt's group as TRL does:
    reward - group mean, divided by (std + 1e-4) where std is the unbiased std of the group ("group"),
    of all judge rewards of the round ("batch"), or not at all ("none" / False)."""
    import numpy as np

    scale = {True: "group", False: "none"}.get(scale_rewards, scale_rewards)  # type: ignore[arg-type]
    if scale not in ("group", "batch", "none"):
        raise ValueError(f"scale_rewards={scale_rewards!r} is not one of 'group', 'batch', 'none'")
    flat = np.array([x for g in rewards for x in g], dtype=np.float64)
    batch_std = float(flat.std(ddof=1)) if flat.size > 1 else 0.0
    out = []
    for group in rewards:
        r = np.asarray(group, dtype=np.float64)
        if r.size == 0:
            out.append([])
            continue
        adv = r - r.mean()
        if scale == "group":
            adv = adv / ((float(r.std(ddof=1)) if r.size > 1 else 0.0) + 1e-4)
        elif scale == "batch":
            adv = adv / (batch_std + 1e-4)
        out.append([float(a) for a in adv])
    return out
