"""The trainer's GCD half: the policy co-trained as a generative judge of its own steps (paper §4).

Each round, after the agent's episodes (the trainer calls, in order):

    label_samples(samples, index)                      # GCD rule labels, once per round (judge, value head)
    judge, tokens = cotrain.judge_round(samples, index, metrics)   # balanced critic prompts, G answers each
    cotrain.update_rules(index, metrics)               # every correction_every rounds: new golden rules

`judge_round` asks the policy to judge a class-balanced set of the round's labelled steps through the
agent's own generation backend (one batched call, answers capped at `judge_max_completion_length`), scores
the answers against the labels and returns them as `JudgeSample`s with group advantages; they join the
agent samples in one optimizer step with loss weight `gcd_coef`. `gcd.task.JudgeTask` holds the model-free
half (labels, prompts, scoring, golden rules); this module adds what needs the running trainer: generation,
processes (`gcd_trl.dist`) and metrics. It never imports a trainer.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from gcd_trl import dist
from gcd_trl.gcd.labels import label_records
from gcd_trl.gcd.task import JudgeTask
from gcd_trl.generation import Generation
from gcd_trl.rollout.samples import AgentSample, JudgeSample


def label_samples(samples: Sequence[AgentSample], round_index: int) -> None:
    """Set each agent sample's `label` from the GCD rules (`gcd.labels`), over the round's trajectories."""
    rows = label_records([{**s.record_dict, "round": round_index} for s in samples])
    for s, row in zip(samples, rows):
        s.label = row["label"]


class _CallableGenerator:
    """A `generate(prompts)` function as a `Generator` object."""

    def __init__(self, fn: Callable[[list[str]], list[Generation]]) -> None:
        self.generate = fn


class CoTraining:
    """GCD for one run: the judge task, its generation and metrics, golden rules. See the module docstring.

    Args:
        gcd_args: `gcd.args.GCDArguments` (gcd on).
        output_dir: the run's folder (judge cache, golden rules).
        accelerator: the trainer's (process index and count, reductions).
        generate: the agent's `generate(prompts) -> list[Generation]`.
        max_new_tokens: a context manager factory capping completions at n tokens (None: the default).
        seed, judge_rows, scale_rewards: as `JudgeTask`.
    """

    def __init__(
        self,
        gcd_args: Any,
        output_dir: str | Path,
        *,
        accelerator: Any,
        generate: Callable[[list[str]], list[Generation]],
        max_new_tokens: Callable[[int | None], contextlib.AbstractContextManager] | None = None,
        seed: int = 0,
        judge_rows: Sequence[Mapping[str, Any]] = (),
        scale_rewards: str | bool = "group",
    ) -> None:
        self.args = gcd_args
        self.coef = float(gcd_args.gcd_coef)
        self.accelerator = accelerator
        self.generate = generate
        self.max_new_tokens = max_new_tokens or (lambda limit: contextlib.nullcontext())
        self.task = JudgeTask(
            gcd_args,
            output_dir,
            seed=seed,
            judge_rows=judge_rows,
            process_index=accelerator.process_index,
            num_processes=accelerator.num_processes,
            scale_rewards=scale_rewards,
        )

    # ---- a round ----------------------------------------------------------------------------------------
    def judge_round(
        self, samples: Sequence[AgentSample], index: int, metrics: dict[str, list]
    ) -> tuple[list[JudgeSample], int]:
        """Judge the round's labelled steps (G answers each, one batched call), score the answers against the
        labels; returns the judge samples and the tokens they add to the step (all processes; 0 when
        gcd_coef is 0: the judge still answers, its metrics are logged, but it is not trained)."""
        task, g = self.task, self.args
        t0 = time.perf_counter()
        records = [
            {
                **s.record_dict,
                "round": index,
                "label": s.label,
                "label_source": "rule" if s.label is not None else "none",
            }
            for s in samples
        ]
        labelled = task.label(records, index, ruled=True)
        t_external = time.perf_counter() - t0
        prompts = task.prompts(labelled, index)
        t1 = time.perf_counter()
        with self.max_new_tokens(g.judge_max_completion_length):
            gens = self.generate([p.prompt for p in prompts for _ in range(g.judge_num_generations)])
        t_generate = time.perf_counter() - t1
        judged = task.score(prompts, [x.text for x in gens], labelled, index)
        judge = [
            JudgeSample(
                gen.prompt_ids,
                gen.completion_ids,
                gen.truncated,
                gen.logprobs,
                advantage=float(adv),
                prompt=info["prompt"],
                completion=gen.text,
                label=info["label"],
                label_source=info["label_source"],
                score=info["score"],
                reward=info["reward"],
                source=info["source"],
            )
            for gen, adv, info in zip(gens, judged.advantages, judged.infos)
        ]
        tokens = self._log(
            metrics, samples, judge, judged.counts, task.label_counts(labelled), t_external, t_generate
        )
        return judge, tokens

    def _log(self, m, samples, judge, counts, labels, t_external, t_generate) -> int:
        keys = sorted(counts) + sorted(labels)
        agent_tokens = sum(len(s.prompt_ids) + len(s.completion_ids) for s in samples)
        judge_tokens = sum(len(s.prompt_ids) + len(s.completion_ids) for s in judge)
        values = [counts[k] for k in sorted(counts)] + [labels[k] for k in sorted(labels)]
        values += [agent_tokens, judge_tokens, t_generate, t_external]
        totals = dist.sum_over_processes(self.accelerator, values)
        v = dict(zip(keys + ["agent_tokens", "judge_tokens", "t_generate", "t_external"], totals))
        procs = self.accelerator.num_processes
        m["judge/prompts"].append(v["prompts"])
        m["judge/answers"].append(v["answers"])
        if v["good_answers"]:
            m["judge/accuracy_good"].append(v["good_hits"] / v["good_answers"])
        if v["bad_answers"]:
            m["judge/accuracy_bad"].append(v["bad_hits"] / v["bad_answers"])
        # answers per label class: the majority-class rate (what a judge that always says one label scores)
        m["judge/answers_good"].append(v["good_answers"])
        m["judge/answers_bad"].append(v["bad_answers"])
        m["judge/format_failure_rate"].append(v["unparsable"] / max(v["answers"], 1))
        m["judge/reward_mean"].append(v["reward_sum"] / max(v["answers"], 1))
        m["judge/labelled_share"].append((v["good"] + v["bad"]) / max(v["steps"], 1))
        m["judge/labelled_good"].append(v["good"])
        m["judge/labelled_bad"].append(v["bad"])
        m["judge/labelled_by_rule_share"].append(v["rule"] / max(v["good"] + v["bad"], 1))
        m["judge/labelled_by_external_share"].append(v["external"] / max(v["good"] + v["bad"], 1))
        m["judge/token_share"].append(v["judge_tokens"] / max(v["agent_tokens"] + v["judge_tokens"], 1))
        m["time/judge_generation"].append(v["t_generate"] / procs)
        m["time/judge_labels"].append(v["t_external"] / procs)
        if self.task.external is not None:
            for name, value in self.task.external.metrics("judge/external_").items():
                m[name].append(value)
        return int(v["judge_tokens"]) if self.coef > 0 else 0

    # ---- golden rules -----------------------------------------------------------------------------------
    def update_rules(self, index: int, metrics: dict[str, list]) -> None:
        """Golden rules every `correction_every` rounds, the same on every process: advice is gathered from
        all processes, every process takes part in generation (it may be collective), process 0's book wins."""
        rules, acc = self.task.rules, self.accelerator
        if rules is None:
            return
        if acc.num_processes > 1:
            pending = dist.gather_objects(acc, [rules.pending])
            rules.pending = [a for part in pending for a in part][-rules.max_advice :]
        if not rules.due(index):
            return
        generator, source = self.task.rules_generator(_CallableGenerator(self.generate))
        if source == "external" and not acc.is_main_process:
            rules.last_update_round = index  # process 0 asks the endpoint; its book is broadcast
        else:
            rules.maybe_update(index, generator, source=source)
        if acc.num_processes > 1:
            rules.load_state_dict(dist.broadcast_object(acc, rules.state_dict()))
        for name, value in rules.metrics("gcd/").items():
            metrics[name].append(value)

    def suggestions(self) -> list[str]:
        """The current golden rules (shown in the agent prompt's {suggestions})."""
        return self.task.suggestions()

    # ---- checkpoints ------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return self.task.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.task.load_state_dict(state)
