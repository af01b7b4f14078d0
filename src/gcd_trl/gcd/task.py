"""The GCD judge task of one round, without a model: what the trainer asks of GCD each round.

    task = JudgeTask(gcd_args, output_dir, seed=0, judge_rows=rows)
    prompts = task.prompts(step_records, round_index)          # labels -> balanced critic prompts (+ static)
    answers = generate([p.prompt for p in prompts for _ in range(G)])      # the policy, same backend
    judged = task.score(prompts, answers, round_index)          # rewards, group advantages, advice, counts
    rules_changed = task.update_rules(round_index, generator)   # every correction_every rounds

Labels come from the rules (`gcd.labels`), an external judge (`gcd.external`) or both; prompts are
class-balanced (`gcd.judge.build_judge_prompts`); static judge rows of the dataset are drawn from their own
checkpointed sampler; the policy's answers are scored against the labels (`score_judge_answers`) and get
GRPO advantages within each prompt's group (`judge_advantages`); advice of answers that matched the label
(and of agreeing external critiques) feeds the golden rules (`gcd.correction.RuleBook`).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gcd_trl.gcd.correction import RuleBook
from gcd_trl.gcd.external import ExternalGenerator, ExternalJudge, advice_from_results
from gcd_trl.gcd.judge import (
    JudgePrompt,
    build_judge_prompts,
    judge_advantages,
    judge_prompt_from_row,
    score_judge_answers,
)
from gcd_trl.gcd.labels import label_records
from gcd_trl.prompts import load_template


@dataclass
class JudgedRound:
    """The scored judge answers of a round: one entry per answer, prompt-major (G answers per prompt)."""

    advantages: list[float]
    infos: list[dict[str, Any]]  # per answer: label, label_source, reward, score, source step
    counts: dict[str, float] = field(default_factory=dict)  # sums, to be reduced over processes


class JudgeTask:
    """Labels, judge prompts, scoring and golden rules for a run; see the module docstring."""

    def __init__(
        self,
        args: Any,
        output_dir: str | Path,
        *,
        seed: int = 0,
        judge_rows: Sequence[Mapping[str, Any]] = (),
        process_index: int = 0,
        num_processes: int = 1,
        scale_rewards: str | bool = "group",
    ) -> None:
        self.args = args
        self.seed, self.rank, self.world = seed, process_index, num_processes
        self.scale_rewards = scale_rewards
        self.template = load_template(args.judge_template, "critic")
        self.static = [
            judge_prompt_from_row(r, self.template, f"judge row {i}") for i, r in enumerate(judge_rows)
        ]
        out = Path(output_dir)
        self.external: ExternalJudge | None = None
        if args.judge_model:  # labels (judge_labels external/both) and/or golden rules (correction_source)
            cache = args.judge_cache_dir or out / "judge_cache"
            self.external = ExternalJudge.from_args(args, cache_dir=cache, template=self.template)
        self.rules: RuleBook | None = None
        if args.correction:
            template = load_template(args.suggestion_template, "suggestion")
            self.rules = RuleBook.from_args(
                args, path=args.rules_file or out / "golden_rules.json", template=template
            )
        self.static_cursor = 0  # static judge rows drawn so far (checkpointed)

    # ---- labels and prompts ---------------------------------------------------------------------------
    def label(
        self, records: Sequence[Mapping[str, Any]], round_index: int, *, ruled: bool = False
    ) -> list[dict]:
        """The step records with `label` / `label_source`; external votes on a seeded sample of steps.
        `ruled`: the records carry their rule labels already (`label`), computed once for the round."""
        use_external = self.external is not None and self.args.judge_labels in ("external", "both")
        external = None
        if use_external and self.args.judge_external_steps_per_round:
            # in "both" mode the steps the rules leave unlabelled go first (they gain a label only this way),
            # then a seeded sample of the rest
            rng = random.Random(self._seed(round_index, 1))
            by_rule = records if ruled else label_records(records, None, mode="rules")
            order = list(range(len(records)))
            rng.shuffle(order)
            if self.args.judge_labels == "both":
                order.sort(key=lambda i: by_rule[i].get("label") is not None)
            chosen = [records[i] for i in order[: self.args.judge_external_steps_per_round]]
            external = self.external.judge_records(chosen)
            if self.rules is not None:
                self.rules.add_advice(advice_from_results(external), round_index, "external")
        mode = self.args.judge_labels if use_external else "rules"
        return label_records(records, external, mode=mode, ruled=ruled)

    def prompts(self, labelled: Sequence[Mapping[str, Any]], round_index: int) -> list[JudgePrompt]:
        """This process's judge prompts: class-balanced labelled steps, then static judge rows."""
        k = max(1, self.args.judge_prompts_per_round // self.world)
        out = build_judge_prompts(
            labelled, k, self._seed(round_index, 2), self.template, balance=self.args.judge_class_balance
        )
        n_static = self.args.static_judge_prompts_per_round // self.world if self.static else 0
        for j in range(n_static):
            # every process walks the same endless shuffled sequence; process p takes its own slots
            pos = (self.static_cursor + j) * self.world + self.rank
            epoch, i = divmod(pos, len(self.static))
            order = list(range(len(self.static)))
            random.Random(self.seed * 7919 + epoch).shuffle(order)
            out.append(self.static[order[i]])
        self.static_cursor += n_static
        return out

    # ---- scoring --------------------------------------------------------------------------------------
    def score(
        self,
        prompts: Sequence[JudgePrompt],
        answers: Sequence[str],
        labelled: Sequence[Mapping[str, Any]],
        round_index: int,
    ) -> JudgedRound:
        """Rewards and advantages of the answers (G per prompt, prompt-major); advice to the rule book."""
        g = self.args.judge_num_generations
        if len(answers) != len(prompts) * g:
            raise ValueError(f"JudgeTask.score: {len(answers)} answers for {len(prompts)} prompts x G={g}")
        grouped = [list(answers[i * g : (i + 1) * g]) for i in range(len(prompts))]
        scores = score_judge_answers(prompts, grouped, self.args.judge_format_penalty)
        advs = judge_advantages(scores.rewards, self.scale_rewards)
        if self.rules is not None:
            self.rules.add_advice(scores.advice, round_index, "policy")
        infos, flat_adv = [], []
        counts = dict.fromkeys(
            ("answers", "good_answers", "good_hits", "bad_answers", "bad_hits", "unparsable", "reward_sum"),
            0.0,
        )
        for i, p in enumerate(prompts):
            src = labelled[p.record_ref] if p.record_ref is not None else None
            for j in range(g):
                score = scores.judgements[i][j].score
                reward = scores.rewards[i][j]
                side = "good" if p.label == 1 else "bad"
                counts["answers"] += 1
                counts[f"{side}_answers"] += 1
                counts[f"{side}_hits"] += float(score == p.label)
                counts["unparsable"] += float(score is None)
                counts["reward_sum"] += reward
                flat_adv.append(advs[i][j])
                infos.append(
                    {
                        "label": p.label,
                        "label_source": p.label_source,
                        "reward": reward,
                        "score": score,
                        "prompt": p.prompt,
                        "source": None
                        if src is None
                        else {k: src.get(k) for k in ("group", "traj", "step", "anchor", "action")},
                    }
                )
        counts["prompts"] = float(len(prompts))
        return JudgedRound(flat_adv, infos, counts)

    @staticmethod
    def label_counts(labelled: Sequence[Mapping[str, Any]]) -> dict[str, float]:
        """Steps, labelled good / bad, and by source: sums to reduce over processes."""
        out = dict.fromkeys(("steps", "good", "bad", "rule", "external"), 0.0)
        for r in labelled:
            out["steps"] += 1
            if r.get("label") is None:
                continue
            out["good" if r["label"] == 1 else "bad"] += 1
            if r.get("label_source") in ("rule", "external"):
                out[r["label_source"]] += 1
        return out

    # ---- golden rules ---------------------------------------------------------------------------------
    def rules_generator(self, policy: Any) -> tuple[Any, str]:
        """Who writes the rules: the external endpoint (auto, when configured) or the policy."""
        source = self.args.correction_source
        if source == "external" or (source == "auto" and self.external is not None):
            return ExternalGenerator(self.external), "external"
        return policy, "policy"

    def suggestions(self) -> list[str]:
        return self.rules.suggestions() if self.rules is not None else []

    # ---- checkpoints ----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "static_cursor": self.static_cursor,
            "rules": self.rules.state_dict() if self.rules is not None else None,
            "external": self.external.state_dict() if self.external is not None else None,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.static_cursor = int(state.get("static_cursor", 0))
        if self.rules is not None and state.get("rules"):
            self.rules.load_state_dict(state["rules"])
        if self.external is not None and state.get("external"):
            self.external.load_state_dict(state["external"])

    def _seed(self, round_index: int, salt: int) -> int:
        return ((self.seed * 1_000_003 + round_index) * 31 + salt) * 1009 + self.rank
