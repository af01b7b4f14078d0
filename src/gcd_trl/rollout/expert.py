"""Expert demonstrations, played through the same env, Episode and prompt code as the agent.

Each step asks the env's expert (ALFWorld: handcoded or planner; ScienceWorld: the gold path) for the
next action, writes it the way the model should ("<think>...</think><action>X</action>", or an RLVMR
meta tag), and feeds that completion to `Episode.apply`/`observe`, so a demonstration is exactly what
the agent would see and write. The think text is short and templated by verb: it shows the format and
a plausible reason, not real reasoning.

Faults are counted, never fatal: an env error (the env is rebuilt when built here), no expert action
before the end, an expert action the parser rejects, or an aborted env. Such episodes are lost.

The step budget: ALFWorld's handcoded expert searches receptacles one by one and can need more steps
than an episode allows (large rooms, `pick_two` games). `ExpertBudget` watches the steps left and hands
the rest of the episode to the planner (which walks straight to what it needs) while the planner's plan
from the current state still fits; `BudgetedExpertEnv` puts that rule inside an env, so a pool worker's
`expert_action()` follows it too (the `expert` policy of `gcd-trl eval`).
"""

from __future__ import annotations

import functools
import json
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gcd_trl import files
from gcd_trl.envs.alfworld import AlfWorldEnv
from gcd_trl.envs.base import EnvSpec, StepResult, Task, TextEnv
from gcd_trl.envs.registry import make_env
from gcd_trl.envs.tasks import task_type_name
from gcd_trl.prompts import default_agent_template, load_template
from gcd_trl.rollout.episode import Episode

_TASK_LEAD = re.compile(r"^your task is to:?\s*", re.I)
# steps an expert episode may take (expert paths run longer than the RL limit); data and `gcd-trl env` default to it
EXPERT_MAX_STEPS = {"alfworld": 50, "scienceworld": 100}


def expert_budgets() -> str:
    """EXPERT_MAX_STEPS in words, for help texts: "50 alfworld, 100 scienceworld"."""
    return ", ".join(f"{n} {env}" for env, n in EXPERT_MAX_STEPS.items())


def _goal(task_description: str) -> str:
    """The task description without ScienceWorld's "Your task is to" lead-in or a final period."""
    return _TASK_LEAD.sub("", task_description.strip()).rstrip(".").strip()


def expert_think(action: str, task_description: str = "", step: int = 0) -> str:
    """A short, templated reason for `action` (by its verb)."""
    a = action.strip()
    verb = a.split(" ", 1)[0].lower() if a else ""
    rest = a.split(" ", 1)[1] if " " in a else ""
    lead = f"My task: {_goal(task_description)}. " if step == 0 and task_description else ""
    if a.lower().startswith("go to"):
        why = f"I should go to {a[6:]} to find what the task needs."
    elif verb in ("take", "pick"):
        why = f"The object I need is here, so I {a}."
    elif verb in ("move", "put"):
        why = f"I have what the task needs, so I {a}."
    elif verb in ("open", "close"):
        why = f"I {verb} {rest} to continue the task."
    elif verb in ("heat", "cool", "clean"):
        why = f"The task needs the object {verb}ed, so I {a}."
    elif verb in ("use", "activate", "deactivate"):
        why = f"I {a} because the task calls for it."
    elif verb == "focus":
        why = f"This is the object the task is about, so I {a}."
    elif verb in ("look", "examine", "inventory", "read"):
        why = "I need more information about my surroundings before I act."
    else:
        why = f"The next step toward the goal is to {a}."
    return lead + why


def expert_tag(action: str, step: int) -> str:
    """The RLVMR meta tag an expert step is written with: plan first, explore while searching, else monitor."""
    if step == 0:
        return "planning"
    verb = action.strip().lower()
    if verb.startswith(("go to", "open", "look")):
        return "explore"
    return "monitor"


def expert_completion(
    action: str, *, task_description: str = "", step: int = 0, meta_reasoning: bool = False
) -> str:
    """The completion the model should write for the expert's `action`."""
    think = expert_think(action, task_description, step)
    if meta_reasoning:
        tag = expert_tag(action, step)
        if tag == "planning":
            goal = f"Task: {_goal(task_description)}. " if task_description else ""
            think = (
                f"{goal}step 1: find the objects the task needs; step 2: do with them what the task asks; "
                "step 3: check that the task is done."
            )
        return f"<{tag}>{think}</{tag}><action>{action}</action>"
    return f"<think>{think}</think><action>{action}</action>"


class ExpertBudget:
    """The env's expert within a step budget: ALFWorld's handcoded expert hands over to the planner when
    the planner's plan from the current state (plus `margin`) no longer fits in the steps left.

    Checks start once `check_within` steps are left. A step changes the planner's plan length by at most
    about one, so after a check with slack `left - plan - margin` the next one is due in half that slack:
    a handful of replans (0.01-1 s each on the real games) in the episodes that run long, none in the
    others. Other envs (ScienceWorld's gold path) are asked directly.
    """

    def __init__(self, env: TextEnv, max_steps: int, *, check_within: int = 16, margin: int = 2) -> None:
        if max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        self.env, self.max_steps = env, max_steps
        self.check_within, self.margin = check_within, margin
        self.reset()

    def reset(self) -> None:
        """A new episode starts (after env.reset)."""
        self.steps = 0
        self._next_check = max(0, self.max_steps - self.check_within)
        self.handed_over: str | None = None

    def stepped(self) -> None:
        """The env was stepped once."""
        self.steps += 1

    def action(self) -> str | None:
        env = self.env
        if isinstance(env, AlfWorldEnv) and not env.use_planner and self.steps >= self._next_check:
            self._check(env)
        return env.expert_action()

    def _check(self, env: AlfWorldEnv) -> None:
        left = self.max_steps - self.steps
        # alfworld's own planner from the current state (the env's planner expert uses the same call)
        plan = env._replan()
        slack = left - len(plan) - self.margin
        if slack >= 2:
            self._next_check = self.steps + slack // 2
            return
        self.handed_over = f"step budget: the planner needs {len(plan)} of the {left} steps left"
        env._fall_back(self.handed_over)
        env._plan, env._plan_idx = list(plan), 0  # reuse the plan just made


class BudgetedExpertEnv(TextEnv):
    """An env whose `expert_action()` keeps to an episode budget of `max_steps` (see `ExpertBudget`)."""

    def __init__(self, env: TextEnv, max_steps: int, **budget_kwargs) -> None:
        self.inner = env
        self.name = env.name
        self.budget = ExpertBudget(env, max_steps, **budget_kwargs)

    def reset(self, task: Task) -> StepResult:
        result = self.inner.reset(task)
        self.budget.reset()
        return result

    def step(self, action: str) -> StepResult:
        result = self.inner.step(action)
        self.budget.stepped()
        return result

    def expert_action(self) -> str | None:
        return self.budget.action()

    def close(self) -> None:
        self.inner.close()


def _make_budgeted_env(spec: EnvSpec, max_steps: int) -> TextEnv:
    return BudgetedExpertEnv(make_env(spec), max_steps)


def budgeted_env_factory(max_steps: int) -> Callable[[EnvSpec], TextEnv]:
    """An `EnvPool` env factory (picklable) building envs whose expert keeps to `max_steps` per episode."""
    return functools.partial(_make_budgeted_env, max_steps=max_steps)


@dataclass
class ExpertEpisode:
    """One expert episode: its Episode, one record per valid step, and a fault if it went wrong."""

    task: Task
    episode: Episode | None
    records: list[dict[str, Any]] = field(default_factory=list)
    fault: str | None = None
    wall_time_s: float = 0.0

    @property
    def won(self) -> bool:
        return bool(self.episode is not None and self.episode.won and self.fault is None)


def play_expert(
    env: TextEnv,
    task: Task,
    template: str,
    *,
    max_steps: int,
    history_length: int = 2,
    meta_reasoning: bool = False,
    suggestions: str | Sequence[str] = "",
    index: int = 0,
) -> ExpertEpisode:
    """Play one task with the expert; exceptions from the env propagate (the caller counts them)."""
    start = time.perf_counter()
    first = env.reset(task)
    ep = Episode(
        task,
        first,
        template,
        max_steps=max_steps,
        history_length=history_length,
        suggestions=suggestions,
        meta_reasoning=meta_reasoning,
        traj=index,
    )
    out = ExpertEpisode(task, ep)
    budget = ExpertBudget(env, max_steps)
    while not ep.done:
        prompt = ep.prompt()
        action = budget.action()
        if action is None:
            out.fault = "no_expert_action"
            break
        completion = expert_completion(
            action, task_description=ep.task_description, step=ep.num_steps, meta_reasoning=meta_reasoning
        )
        observation = ep.state.observation
        sent = ep.apply(completion)
        if sent is None:
            ep.observe(None)
            out.fault = f"expert_action_invalid:{ep.steps[-1].reason}:{action}"
            break
        ep.observe(env.step(sent))
        budget.stepped()
        out.records.append(
            {
                "task": task.to_dict(),
                "episode": index,
                "step": ep.steps[-1].step,
                "prompt": prompt,
                "completion": completion,
                "action": sent,
                "observation": observation,
            }
        )
    if ep.aborted and out.fault is None:
        out.fault = f"aborted:{ep.aborted}"
    for r in out.records:
        r["won"] = out.won
        r["num_steps"] = ep.num_steps
    out.wall_time_s = time.perf_counter() - start
    return out


def iter_expert(
    env: TextEnv | EnvSpec,
    tasks: Iterable[Task],
    *,
    template: str | None = None,
    max_steps: int | None = None,
    history_length: int = 2,
    meta_reasoning: bool = False,
    suggestions: str | Sequence[str] = "",
) -> Iterator[ExpertEpisode]:
    """Play every task in turn. `env` may be an env (caller closes it) or an EnvSpec (built and closed here)."""
    spec = env if isinstance(env, EnvSpec) else None
    live: TextEnv | None = None if spec else env  # type: ignore[assignment]
    try:
        for i, task in enumerate(tasks):
            text = (
                template
                if template is not None
                else load_template(default_agent_template(task.env, meta_reasoning))
            )
            steps = max_steps or EXPERT_MAX_STEPS[task.env]
            try:
                if live is None:
                    live = make_env(spec)  # type: ignore[arg-type]
                yield play_expert(
                    live,
                    task,
                    text,
                    max_steps=steps,
                    history_length=history_length,
                    meta_reasoning=meta_reasoning,
                    suggestions=suggestions,
                    index=i,
                )
            except Exception as err:  # an engine fault: count it, rebuild the env, go on
                print(f"[expert] {task.key}: {type(err).__name__}: {err}", file=sys.stderr)
                yield ExpertEpisode(task, None, fault=f"error:{type(err).__name__}: {err}")
                if spec is not None and live is not None:
                    _close_quietly(live)
                    live = None
    finally:
        if spec is not None and live is not None:
            _close_quietly(live)


def _close_quietly(env: TextEnv) -> None:
    try:
        env.close()
    except Exception as err:
        print(f"[expert] closing the env failed: {err}", file=sys.stderr)


def summarize(results: Sequence[ExpertEpisode], wall_time_s: float) -> dict[str, Any]:
    """{episodes, success, mean_steps, wall_time_s, faults, by_type}: by_type is per ALFWorld task type
    (or ScienceWorld task name)."""
    n = len(results)
    steps = [r.episode.num_steps for r in results if r.episode is not None]
    by_type: dict[str, dict[str, Any]] = {}
    for r in results:
        entry = by_type.setdefault(task_type_name(r.task), {"episodes": 0, "won": 0})
        entry["episodes"] += 1
        entry["won"] += int(r.won)
    for entry in by_type.values():
        entry["success"] = entry.pop("won") / entry["episodes"]
    faults = [f"{r.task.key}: {r.fault}" for r in results if r.fault]
    return {
        "episodes": n,
        "success": sum(r.won for r in results) / n if n else 0.0,
        "mean_steps": sum(steps) / len(steps) if steps else 0.0,
        "wall_time_s": round(wall_time_s, 3),
        "num_faults": len(faults),
        "faults": faults[:20],
        "by_type": dict(sorted(by_type.items())),
    }


def run_expert(
    env: TextEnv | EnvSpec,
    tasks: Sequence[Task],
    *,
    sink: Callable[[ExpertEpisode], None] | None = None,
    progress: str | None = None,
    name: Callable[[Task], str] | None = None,
    skipped: dict[str, str] | None = None,
    **kwargs: Any,
) -> tuple[dict[str, Any], int]:
    """Play the expert on every task (`iter_expert`, `kwargs` its options), going on past an engine that
    exits the process (fast-downward on bad PDDL); `sink(result)` gets each finished episode, `progress`
    names a progress bar (episodes done, success so far). Returns the summary (`summarize`'s, plus
    `failed`: every task that did not run cleanly, by `name`, after the `skipped` ones found unplayable
    before) and how many episodes ran cleanly."""
    from tqdm.auto import tqdm

    name = name or (lambda t: t.key)
    results: list[ExpertEpisode] = []
    start = time.perf_counter()
    wins = 0
    bar = tqdm(total=len(tasks), desc=progress, unit="ep", dynamic_ncols=True, disable=progress is None)
    remaining = list(tasks)
    try:
        while remaining:
            offset = len(results)
            try:
                for res in iter_expert(env, list(remaining), **kwargs):
                    for rec in res.records:
                        rec["episode"] += offset  # numbered over the whole run, across restarts
                    results.append(res)
                    remaining.pop(0)
                    wins += int(res.won)
                    if sink is not None:
                        sink(res)
                    bar.update(1)
                    bar.set_postfix(success=f"{wins}/{len(results)}", refresh=False)
            except SystemExit as err:  # an engine that exits the process (fast-downward on bad PDDL)
                results.append(ExpertEpisode(remaining.pop(0), None, fault=f"error:engine exited: {err}"))
                bar.update(1)
    finally:
        bar.close()
    summary = summarize(results, time.perf_counter() - start)
    skipped = skipped or {}
    summary["episodes_skipped"] = len(skipped)
    summary["failed"] = [{"task": t, "fault": f"not played: {why}"} for t, why in skipped.items()]
    summary["failed"] += [{"task": name(r.task), "fault": r.fault} for r in results if r.fault]
    return summary, sum(1 for r in results if r.fault is None)


def replay(env: TextEnv | EnvSpec, tasks: Iterable[Task], **kwargs: Any) -> dict[str, Any]:
    """Play the expert on `tasks` and summarise (a check that env, expert and parser agree)."""
    return run_expert(env, list(tasks), **kwargs)[0]


def write_expert_jsonl(
    env: TextEnv | EnvSpec,
    tasks: Iterable[Task],
    out_path: str | Path,
    *,
    only_won: bool = False,
    **kwargs: Any,
) -> dict[str, Any]:
    """Play the expert (`run_expert`) and write one JSON line per step (loadable with
    `datasets.load_dataset("json")`), episode by episode into OUT.partial, renamed to OUT when done (after a
    crash the partial file holds every finished episode).

    Fields: task (Task.to_dict()), episode, step, prompt, completion, action, observation (the raw env
    observation the action was taken in), won (the episode's outcome), num_steps. The summary adds `out`,
    `records` and `clean` (episodes that ran cleanly).
    """
    summary: dict[str, Any] = {}
    written = 0

    def write(tmp: Path) -> None:
        nonlocal written
        with tmp.open("w", encoding="utf-8") as f:

            def sink(res: ExpertEpisode) -> None:
                nonlocal written
                if only_won and not res.won:
                    return
                for rec in res.records:
                    f.write(json.dumps(rec, ensure_ascii=False) + "\n")
                    written += 1
                f.flush()

            found, clean = run_expert(env, list(tasks), sink=sink, **kwargs)
            summary.update(found, clean=clean)

    files.write_atomic(out_path, write, partial=True)
    summary.update(out=str(out_path), records=written)
    return summary
