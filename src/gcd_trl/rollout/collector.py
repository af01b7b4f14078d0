"""Play a round: G episodes of each task in the env pool, one batched generation per turn.

Every live env of this process is prompted at once each turn (never one env at a time); an env whose
episode ends is refilled with the next pending episode, so the generation batch stays full when the pool
has fewer envs than episodes. Each env step becomes an `AgentSample` (token ids, behaviour log-probs when
the backend gives them, and the Episode's `StepRecord`). Invalid (format-error) outputs never reach the env:
`Episode.apply` returns None for them and the env is not stepped; a well-formed action that is not
admissible reaches it with `inadmissible_action="env"` (the references' rule, counted per episode).
Episodes aborted by the pool (a dead or hung env worker) are counted but give no samples.

The collector knows no model: `generate(prompts) -> list[Generation]` is given by the trainer. With several
processes, `sync_max(n)` (an all-reduce max) keeps the turn loop in lockstep: a process whose episodes
are all finished still calls `generate([])` while others play, because some generation backends are
collective.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from tqdm.auto import tqdm

from gcd_trl.envs.base import Task
from gcd_trl.generation import Generation
from gcd_trl.prompts import HistoryDefaults, history_defaults, load_template
from gcd_trl.rollout.episode import Episode
from gcd_trl.rollout.samples import AgentSample


@dataclass
class EpisodeSummary:
    task: str
    group: int
    traj: int
    length: int
    won: bool
    score: float
    aborted: bool
    invalid: int
    repeated: int
    inadmissible: int = 0  # valid steps whose action was not admissible (sent to the env anyway)


@dataclass
class Rollout:
    """What a round produced on this process."""

    samples: list[AgentSample] = field(default_factory=list)
    episodes: list[EpisodeSummary] = field(default_factory=list)
    time_generation: float = 0.0
    time_env: float = 0.0
    turns: int = 0
    pool_restarts: int = 0


def resolve_history(env_args, template_name: str, template: str | None = None) -> HistoryDefaults:
    """The history the prompts show: each EnvArguments value that is set (not None), else the template's
    default (`prompts.HISTORY_DEFAULTS`: 2 pairs for the paper templates, RLVMR's for the RLVMR ones)."""
    base = history_defaults(template_name, template)
    values = {
        "history_length": getattr(env_args, "history_length", None),
        "older_actions": getattr(env_args, "history_older_actions", None),
        "reasoning_history": getattr(env_args, "reasoning_history", None),
    }
    return replace(base, **{k: v for k, v in values.items() if v is not None})


class RolloutCollector:
    """Runs episodes in an `EnvPool` with batched generation. See the module docstring."""

    def __init__(
        self,
        pool,
        env_args,
        *,
        generate: Callable[[list[str]], list[Generation]],
        sync_max: Callable[[int], int] | None = None,
        meta_reasoning: bool = False,
        progress: bool = False,
        template: str | None = None,
        suggestions: Callable[[], str | list[str]] | None = None,
    ) -> None:
        """`suggestions`: called at the start of every `collect` for the prompt's {suggestions} (the trainer's
        golden rules, which change between rounds); default: `env_args.suggestions`."""
        self.pool = pool
        self.env_args = env_args
        self.generate = generate
        self.sync_max = sync_max
        self.meta_reasoning = meta_reasoning
        self.progress = progress
        name = env_args.template_name(meta_reasoning)
        self.template = template if template is not None else load_template(name, "agent")
        self.suggestions = env_args.suggestions
        self._suggestions = suggestions
        self.history = resolve_history(env_args, name, self.template)

    def _episode(self, task: Task, first, group: int, traj: int) -> Episode:
        return Episode(
            task,
            first,
            self.template,
            max_steps=self.env_args.max_episode_steps,
            history_length=self.history.history_length,
            older_actions=self.history.older_actions,
            reasoning_history=self.history.reasoning_history,
            suggestions=self.suggestions,
            meta_reasoning=self.meta_reasoning,
            inadmissible_action=getattr(self.env_args, "inadmissible_action", "env"),
            invalid_feedback=getattr(self.env_args, "invalid_feedback", "env"),
            group=group,
            traj=traj,
        )

    def collect(
        self, tasks: list[Task], num_generations: int, *, group_offset: int = 0, round_index: int = 0
    ) -> Rollout:
        """Play `num_generations` episodes of each task; group ids are `group_offset + i` for tasks[i]."""
        if self._suggestions is not None:
            self.suggestions = self._suggestions()
        out = Rollout()
        restarts0 = self.pool.stats.get("restarts", 0)
        pending = deque(
            (task, group_offset + i, k) for i, task in enumerate(tasks) for k in range(num_generations)
        )
        free = deque(range(self.pool.num_envs))
        live: dict[int, Episode] = {}
        gens: dict[int, list[Generation]] = {}
        t_start = time.perf_counter()
        steps = wins = 0
        bar = tqdm(
            total=len(pending),
            desc=f"round {round_index}",
            unit="ep",
            disable=not self.progress,
            leave=False,
            dynamic_ncols=True,
        )

        def finish(ep: Episode, history: list[Generation]) -> None:
            nonlocal wins
            prev = None
            # an episode cut short by a dead or hung env says nothing about the policy: not trained on
            for rec, gen in zip(ep.steps if ep.aborted is None else [], history):
                repeated = rec.action is not None and rec.action == prev
                out.samples.append(
                    AgentSample(
                        gen.prompt_ids,
                        gen.completion_ids,
                        gen.truncated,
                        gen.logprobs,
                        record=rec,
                        repeated=repeated,
                    )
                )
                prev = rec.action
            out.episodes.append(
                EpisodeSummary(
                    ep.task.key,
                    ep.group,
                    ep.traj,
                    ep.num_steps,
                    bool(ep.won),
                    float(ep.score),
                    ep.aborted is not None,
                    ep.num_invalid,
                    ep.repeated_actions,
                    ep.num_inadmissible,
                )
            )
            wins += bool(ep.won)
            bar.update(1)
            elapsed = max(time.perf_counter() - t_start, 1e-9)
            bar.set_postfix(success=f"{wins / len(out.episodes):.2f}", steps_s=f"{steps / elapsed:.1f}")

        try:
            while True:
                while pending and free:  # refill: start the next episodes in the free env slots
                    starts = {}
                    while pending and free:
                        starts[free.popleft()] = pending.popleft()
                    t = time.perf_counter()
                    results = self.pool.reset({slot: task for slot, (task, _, _) in starts.items()})
                    out.time_env += time.perf_counter() - t
                    for slot, (task, group, traj) in starts.items():
                        ep = self._episode(task, results[slot], group, traj)
                        if ep.done:  # aborted at reset: no step to learn from
                            finish(ep, [])
                            free.append(slot)
                        else:
                            live[slot], gens[slot] = ep, []
                n = len(live)
                if (self.sync_max(n) if self.sync_max is not None else n) == 0:
                    break
                slots = list(live)
                t = time.perf_counter()
                generations = self.generate([live[s].prompt() for s in slots])
                out.time_generation += time.perf_counter() - t
                out.turns += 1
                if len(generations) != len(slots):
                    raise RuntimeError(
                        f"generate returned {len(generations)} completions for {len(slots)} prompts"
                    )
                actions: dict[int, str] = {}
                for slot, gen in zip(slots, generations):
                    gens[slot].append(gen)
                    action = live[slot].apply(gen.text)
                    if action is None:
                        live[slot].observe(None)  # invalid: recorded with its reason, the env is not stepped
                    else:
                        actions[slot] = action
                if actions:
                    t = time.perf_counter()
                    results = self.pool.step(actions)
                    out.time_env += time.perf_counter() - t
                    for slot in actions:
                        live[slot].observe(results[slot])
                steps += len(slots)
                for slot in slots:
                    if live[slot].done:
                        finish(live.pop(slot), gens.pop(slot))
                        free.append(slot)
        finally:
            bar.close()
        out.pool_restarts = self.pool.stats.get("restarts", 0) - restarts0
        return out
