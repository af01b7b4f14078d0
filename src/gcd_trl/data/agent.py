"""Agent SFT data: expert episodes rendered with the RL prompt code, one chat conversation per step.

    env_args = EnvArguments(environment="alfworld", prompt_template="alfworld_compact")
    result = build_agent_sft(tasks, env_args, AgentSFTConfig(think="short", recovery_episodes=1))
    save_rows(result.rows, "data/alfworld/agent_sft")        # train.jsonl, loadable by load_dataset

A row's prompt is made by the same `Episode` the RL collector builds from the same `EnvArguments` (template,
history window, admissible actions, suggestions, invalid-output feedback), so SFT trains exactly the
prompts RL will show. Per task:
- one **expert episode**: the env's expert plays (ALFWorld: the searching handcoded expert by default;
  the planner's walkthrough knows where objects are, which a policy cannot see; ScienceWorld: the gold
  path); every step is a row.
- `recovery_episodes` **recovery episodes** (DAgger-style): a perturbed policy plays (with probability
  `perturb_prob` a step is a mistake: an irrelevant admissible action, a repeat of the last action, a
  malformed output, a premature "the task is done", or an absent thing: the expert's action naming a
  receptacle type the room lacks, which a model imitating object priors writes), and every state it
  reaches is a row labelled
  with the expert's action in that state. So the model sees "Nothing happens." and histories with
  mistakes, and learns to leave them. The expert must answer in states off its own path: ALFWorld's
  does; ScienceWorld's gold path only survives malformed outputs (the env is not stepped), so only
  those are used there.
- or, with `policy_completions` (`--policy_episodes`: a model's `gcd-trl eval` episodes on the same
  games), **policy episodes** only: DAgger proper. The model's own completions are replayed, and every
  state they reach is a row labelled with the expert's action, so the model learns to leave the mistakes
  it makes itself (after a first cold start: a loop of "Nothing happens." it does not break).
Then identical (prompt, action) rows are dropped (`dedup`) and rows of rare action verbs are repeated
(`oversample_max`: verb v gets round(sqrt(n_max / n_v)) copies, at most that many).

Every played step is also kept as a step record (the `rollout.records` schema plus `task`, `episode`,
`source`, `expert_action`, `perturbation`): the judge builder labels them.

Deterministic for a seed: each task's perturbations come from its own RNG, seeded by (seed, task, episode),
so the result does not depend on `workers` (tasks are played in worker processes, merged in task order) nor on
the folder the games are in (`Task.seed_key`).
"""

from __future__ import annotations

import math
import random
import re
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from gcd_trl.envs.alfworld import type_names
from gcd_trl.envs.base import EnvSpec, Task, TextEnv
from gcd_trl.envs.registry import make_env
from gcd_trl.prompts import load_template
from gcd_trl.rollout.collector import resolve_history
from gcd_trl.rollout.episode import UNKNOWN_COMMAND, Episode
from gcd_trl.rollout.expert import EXPERT_MAX_STEPS

from .rationale import THINK_STYLES, Rationales

PERTURBATIONS = ("irrelevant", "repeat", "invalid", "premature_finish", "absent")
# perturbations after which the ScienceWorld gold path still holds (the env is not stepped)
ENV_STEPPING_FREE = ("invalid",)
_NO_OP = ("look", "inventory")
_SKIP_RANDOM = ("help",)  # ALFWorld's help prints the command list: never a plausible agent action


@dataclass
class AgentSFTConfig:
    """How agent SFT data is made (the prompt settings come from the RL `EnvArguments`)."""

    think: str = "template"  # template | short | endpoint (see data/rationale.py)
    recovery_episodes: int = 0  # perturbed (DAgger-style) episodes per task
    perturb_prob: float = 0.25  # chance that a recovery-episode step is a mistake
    perturbations: tuple[str, ...] = PERTURBATIONS
    max_perturbations: int = 4  # per recovery episode
    expert_max_steps: int | None = None  # default: 50 ALFWorld, 100 ScienceWorld
    only_won: bool = True  # drop expert episodes the expert did not win
    dedup: bool = True
    oversample_max: int = 1  # 1: off
    seed: int = 0
    workers: int = 1
    # DAgger on a policy's own mistakes: per task key, episodes of completions a policy wrote (e.g. an
    # eval's episodes.jsonl of the model being trained, on the training games). Each is replayed and every
    # state it reaches becomes a row labelled with the expert's action there. When set, only these
    # episodes are played (mix the rows with the expert data in the SFT config).
    policy_completions: dict[str, list[list[str]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.think not in THINK_STYLES:
            raise ValueError(f"think={self.think!r} is not one of {THINK_STYLES}")
        if self.recovery_episodes < 0:
            raise ValueError(f"recovery_episodes must be >= 0, got {self.recovery_episodes}")
        if not 0.0 <= self.perturb_prob <= 1.0:
            raise ValueError(f"perturb_prob must lie in [0, 1], got {self.perturb_prob}")
        unknown = [p for p in self.perturbations if p not in PERTURBATIONS]
        if unknown:
            raise ValueError(f"unknown perturbation {unknown[0]!r}; known: {', '.join(PERTURBATIONS)}")
        if self.max_perturbations < 0:
            raise ValueError(f"max_perturbations must be >= 0, got {self.max_perturbations}")
        if self.expert_max_steps is not None and self.expert_max_steps < 1:
            raise ValueError(f"expert_max_steps must be >= 1, got {self.expert_max_steps}")
        if self.oversample_max < 1:
            raise ValueError(f"oversample_max must be >= 1 (1 = off), got {self.oversample_max}")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")


@dataclass
class AgentSFTResult:
    rows: list[dict[str, Any]]
    steps: list[dict[str, Any]]  # every played step, as step records (for the judge builder)
    summary: dict[str, Any]


@dataclass
class _Context:
    """What a worker needs to play tasks (picklable)."""

    env_args: Any
    cfg: AgentSFTConfig
    template_name: str
    template: str
    meta_reasoning: bool
    endpoint: Any = None


@dataclass
class _TaskResult:
    rows: list[dict[str, Any]] = field(default_factory=list)
    steps: list[dict[str, Any]] = field(default_factory=list)
    episodes: list[dict[str, Any]] = field(default_factory=list)
    faults: list[str] = field(default_factory=list)
    rationale_stats: dict[str, int] = field(default_factory=dict)


def make_episode(ctx: _Context, task: Task, first, traj: int, max_steps: int) -> Episode:
    """The Episode the RL collector would build for this task (`RolloutCollector._episode`)."""
    hist = resolve_history(ctx.env_args, ctx.template_name, ctx.template)
    return Episode(
        task,
        first,
        ctx.template,
        max_steps=max_steps,
        history_length=hist.history_length,
        older_actions=hist.older_actions,
        reasoning_history=hist.reasoning_history,
        suggestions=ctx.env_args.suggestions,
        meta_reasoning=ctx.meta_reasoning,
        inadmissible_action=getattr(ctx.env_args, "inadmissible_action", "env"),
        invalid_feedback=getattr(ctx.env_args, "invalid_feedback", "env"),
        group=0,
        traj=traj,
    )


def read_policy_episodes(paths: Sequence[str], task_keys: Sequence[str]) -> dict[str, list[list[str]]]:
    """Per task key, the completions of each episode in step-record files (`gcd-trl eval`'s
    episodes.jsonl, RL rollouts), in step order. Episodes of other tasks are an error only when none
    matches (`--games` and the eval's `data_dir` must be the same games)."""
    from gcd_trl.rollout.records import RecordFileError, group_trajectories, read_steps

    try:
        episodes = group_trajectories(read_steps(paths, kind="agent"))
    except RecordFileError as err:
        raise ValueError(f"--policy_episodes {err}") from None
    wanted = set(task_keys)
    out: dict[str, list[list[str]]] = {}
    for (_, task, _, _), steps in episodes.items():
        if task in wanted:
            out.setdefault(task, []).append([str(s["completion"]) for s in steps])
    if episodes and not out:
        raise ValueError(
            f"--policy_episodes: none of the {len(episodes)} episodes is for one of the {len(wanted)} selected "
            "tasks (play the policy on the same games: `gcd-trl eval --data_dir` = `--games`)"
        )
    return out


def action_verb(action: str) -> str:
    """The first word of an action ("go" for "go to X"): the unit of oversampling."""
    return action.strip().split(" ", 1)[0].lower() if action.strip() else ""


def _after_mistake(ep: Episode) -> bool:
    """The agent's last output did nothing: the env answered it like an unknown command."""
    return bool(ep.steps) and ep.observation.strip().startswith(UNKNOWN_COMMAND.get(ep.task.env, "Nothing"))


def _perturb(
    rng: random.Random, ep: Episode, expert: str, kinds: Sequence[str], rationales: Rationales
) -> tuple[str, str] | None:
    """A mistake in this state: (kind, completion), or None when no chosen kind applies here."""
    admissible = ep.state.admissible_actions
    kind = rng.choice(list(kinds))
    step = ep.num_steps
    if kind == "repeat" and ep.history:
        last = ep.history[-1][1]
        if last and last != "(invalid output)" and last != expert:
            return kind, rationales.completion(last, task_description=ep.task_description, step=step)
        kind = "irrelevant"
    if kind == "irrelevant" and admissible:
        choices = [a for a in admissible if a != expert and a not in _SKIP_RANDOM]
        if choices:
            action = rng.choice(choices)
            return "irrelevant", rationales.completion(
                action, task_description=ep.task_description, step=step
            )
        return None
    if kind == "absent" and admissible:
        action = _absent_entity_action(rng, expert, admissible)
        if action is not None:
            return kind, rationales.completion(action, task_description=ep.task_description, step=step)
        return None
    if kind == "premature_finish" and admissible:
        noop = [a for a in _NO_OP if a in admissible and a != expert]
        return (kind, rationales.premature_finish(noop[0])) if noop else None
    if kind == "invalid":
        # a malformed answer (never reaches the env): the reasoning with no action block
        tag = "monitor" if ep.meta_reasoning else "think"
        return kind, f"<{tag}>I should {expert}.</{tag}>"
    return None


_ENTITY = re.compile(r"\b([a-z]+) (\d+)\b")


def _absent_entity_action(rng: random.Random, expert: str, admissible: Sequence[str]) -> str | None:
    """The expert's action with its first thing swapped for one of a type this room does not have (what a
    policy imitating object priors writes: "go to sofa 1" in a room without a sofa). ALFWorld answers
    "Nothing happens.", and the recovery rows after it teach the way back to the admissible list."""
    match = _ENTITY.search(expert)
    if match is None:
        return None
    present = {m.group(1) for a in admissible for m in _ENTITY.finditer(a)}
    receptacles, objects = type_names()
    pool = (
        receptacles if match.group(1) in receptacles else objects
    )  # a place for a place, a thing for a thing
    absent = [name for name in pool if name not in present]
    if not absent:
        return None
    return f"{expert[: match.start()]}{rng.choice(absent)} 1{expert[match.end() :]}"


def _play(
    env: TextEnv,
    ctx: _Context,
    task: Task,
    task_index: int,
    traj: int,
    rationales: Rationales,
    script: Sequence[str] | None = None,
) -> tuple[list[dict], list[dict], dict[str, Any]]:
    """One episode (traj 0: the expert's; traj >= 1: a recovery episode, or with `script` a policy's
    completions replayed, until they run out). Rows, step records, summary."""
    cfg = ctx.cfg
    recovery = traj > 0
    source = "policy" if script is not None else "recovery" if recovery else "expert"
    rng = random.Random(f"agent_sft:{cfg.seed}:{task.seed_key}:{traj}")
    kinds = [k for k in cfg.perturbations if task.env == "alfworld" or k in ENV_STEPPING_FREE]
    max_steps = cfg.expert_max_steps or EXPERT_MAX_STEPS[task.env]
    ep = make_episode(ctx, task, env.reset(task), traj, max_steps)
    episode_id = f"{task.key}#{traj}"
    rows, steps = [], []
    fault, perturbed = None, 0
    while not ep.done and (script is None or ep.num_steps < len(script)):
        prompt = ep.prompt()
        expert = env.expert_action()
        if expert is None:
            fault = "expert_lost" if perturbed else "no_expert_action"
            break
        labeller = "planner" if getattr(env, "use_planner", False) else ctx.env_args.alfworld_expert
        if task.env != "alfworld":
            labeller = "gold"
        target = rationales.completion(
            expert,
            task_description=ep.task_description,
            step=ep.num_steps,
            after_mistake=_after_mistake(ep),
            prompt=prompt,
        )
        rows.append(
            {
                "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": target}],
                "env": task.env,
                "task": task.key,
                "episode": episode_id,
                "step": ep.num_steps,
                "action": expert,
                "verb": action_verb(expert),
                "source": source,
                "labeller": labeller,
                "off_expert_path": perturbed > 0,
                "oversampled": False,
            }
        )
        kind, completion = None, target
        if script is not None:
            completion = script[ep.num_steps]
        elif recovery and kinds and perturbed < cfg.max_perturbations and rng.random() < cfg.perturb_prob:
            mistake = _perturb(rng, ep, expert, kinds, rationales)
            if mistake is not None:
                (kind, completion), perturbed = mistake, perturbed + 1
        sent = ep.apply(completion)
        ep.observe(env.step(sent) if sent is not None else None)
        record = ep.steps[-1].to_dict()
        if script is not None and sent != expert:
            perturbed += 1
            if sent is None or record.get("admissible") is False:  # a mistake for sure: the judge's "bad"
                kind = "policy"
        record.update(
            group=task_index,
            task=task.key,
            episode=episode_id,
            source=rows[-1]["source"],
            expert_action=expert,
            perturbation=kind,
        )
        steps.append(record)
        if kind is None and sent is None:  # the expert's own answer was refused: a bug, not data
            fault = f"expert_action_invalid:{record['reason']}:{expert}"
            break
    if ep.aborted and fault is None:
        fault = f"aborted:{ep.aborted}"
    won = bool(ep.won)
    for r in rows:
        r["won"] = won
    for s in steps:
        s["won_episode"] = won
    summary = {
        "task": task.key,
        "episode": episode_id,
        "source": source,
        "won": won,
        "steps": ep.num_steps,
        "perturbations": perturbed,
        "fault": fault,
    }
    return rows, steps, summary


def _play_task(env: TextEnv, ctx: _Context, task: Task, index: int) -> _TaskResult:
    out = _TaskResult()
    rationales = Rationales(ctx.cfg.think, ctx.meta_reasoning, ctx.endpoint)
    if ctx.cfg.policy_completions:  # DAgger: only the policy's episodes, numbered from 1
        plays = [(k + 1, script) for k, script in enumerate(ctx.cfg.policy_completions.get(task.key, []))]
    else:
        plays = [(traj, None) for traj in range(1 + ctx.cfg.recovery_episodes)]
    for traj, script in plays:
        rows, steps, summary = _play(env, ctx, task, index, traj, rationales, script)
        out.episodes.append(summary)
        if summary["fault"]:
            out.faults.append(f"{summary['episode']}: {summary['fault']}")
        if traj == 0 and ctx.cfg.only_won and not summary["won"]:
            rows = []  # a failed expert demonstration teaches its failure
        out.rows.extend(rows)
        out.steps.extend(steps)
    out.rationale_stats = dict(rationales.stats)
    return out


# ---- worker processes ---------------------------------------------------------------------------------
_WORKER: dict[str, Any] = {}


def _worker_init(spec: EnvSpec, ctx: _Context) -> None:
    import os

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _WORKER["ctx"] = ctx
    _WORKER["spec"] = spec
    _WORKER["env"] = None


def _worker_play(item: tuple[int, Task]) -> _TaskResult:
    index, task = item
    return _safe_play(_WORKER, index, task)


def _safe_play(holder: dict[str, Any], index: int, task: Task) -> _TaskResult:
    """Play one task; an engine fault is counted, the env rebuilt, and nothing already played is lost."""
    try:
        if holder.get("env") is None:
            holder["env"] = make_env(holder["spec"])
        return _play_task(holder["env"], holder["ctx"], task, index)
    except Exception as err:  # an engine fault: count it, rebuild the env for the next task
        env, holder["env"] = holder.get("env"), None
        if env is not None:
            try:
                env.close()
            except Exception:
                pass
        return _TaskResult(faults=[f"{task.key}: error: {type(err).__name__}: {err}"])


def build_agent_sft(
    tasks: Sequence[Task],
    env_args,
    cfg: AgentSFTConfig | None = None,
    *,
    endpoint=None,
    progress: bool = True,
) -> AgentSFTResult:
    """Play the tasks and return rows (one chat conversation per step), step records and a summary.

    `env_args` is the RL run's `config.EnvArguments` (or anything with its fields): the prompt template,
    history, suggestions and invalid-output rules are taken from it. `endpoint`: an `ExternalJudge` for
    `think="endpoint"`.
    """
    from tqdm.auto import tqdm

    cfg = cfg or AgentSFTConfig()
    tasks = list(tasks)
    if cfg.policy_completions:
        tasks = [t for t in tasks if t.key in cfg.policy_completions]
    if not tasks:
        raise ValueError("build_agent_sft: no tasks given")
    envs = {t.env for t in tasks}
    if len(envs) != 1 or envs != {env_args.environment}:
        raise ValueError(f"tasks are for {sorted(envs)} but env_args.environment is {env_args.environment!r}")
    meta = bool(env_args.meta_reasoning)
    name = env_args.template_name(meta)
    ctx = _Context(env_args, cfg, name, load_template(name, "agent"), meta, endpoint)
    spec = env_args.spec()
    start = time.perf_counter()
    bar = tqdm(total=len(tasks), desc="agent-sft", unit="task", disable=not progress, dynamic_ncols=True)
    results: list[_TaskResult] = []
    try:
        if cfg.workers > 1 and len(tasks) > 1:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            with ProcessPoolExecutor(
                max_workers=min(cfg.workers, len(tasks)),
                mp_context=mp.get_context("spawn"),
                initializer=_worker_init,
                initargs=(spec, ctx),
            ) as pool:
                for res in pool.map(_worker_play, list(enumerate(tasks))):
                    results.append(res)
                    bar.update(1)
        else:
            holder: dict[str, Any] = {"spec": spec, "ctx": ctx, "env": None}
            try:
                for i, task in enumerate(tasks):
                    results.append(_safe_play(holder, i, task))
                    bar.update(1)
            finally:
                if holder.get("env") is not None:
                    holder["env"].close()
    finally:
        bar.close()
    rows = [r for res in results for r in res.rows]
    steps = [s for res in results for s in res.steps]
    played = len(rows)
    removed = 0
    if cfg.dedup:
        rows, removed = dedup_rows(rows)
    rows, added = oversample_rows(rows, cfg.oversample_max)
    episodes = [e for res in results for e in res.episodes]
    faults = [f for res in results for f in res.faults]
    for f in faults[:5]:
        print(f"[agent-sft] fault: {f}", file=sys.stderr)
    rstats: Counter[str] = Counter()
    for res in results:
        rstats.update(res.rationale_stats)
    summary = _summary(rows, episodes, faults, played, removed, added, time.perf_counter() - start)
    summary.update(
        env=env_args.environment,
        template=name,
        think=cfg.think,
        meta_reasoning=meta,
        seed=cfg.seed,
        step_records=len(steps),
        rationales=dict(rstats) if cfg.think == "endpoint" else None,
    )
    return AgentSFTResult(rows, steps, summary)


def dedup_rows(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """Keep the first row of each (prompt, action) pair; returns (rows, number removed)."""
    seen: set[tuple[str, str]] = set()
    kept = []
    for r in rows:
        key = (r["messages"][0]["content"], r["action"])
        if key in seen:
            continue
        seen.add(key)
        kept.append(r)
    return kept, len(rows) - len(kept)


def oversample_factors(rows: Sequence[dict[str, Any]], max_factor: int) -> dict[str, int]:
    """Copies per action verb: round(sqrt(n_max / n_verb)), between 1 and `max_factor`."""
    counts = Counter(r["verb"] for r in rows)
    if not counts or max_factor <= 1:
        return dict.fromkeys(counts, 1)
    n_max = max(counts.values())
    return {v: max(1, min(max_factor, round(math.sqrt(n_max / n)))) for v, n in counts.items()}


def oversample_rows(rows: list[dict[str, Any]], max_factor: int) -> tuple[list[dict[str, Any]], int]:
    """Repeat rows of rare verbs (each copy right after its original); returns (rows, copies added)."""
    factors = oversample_factors(rows, max_factor)
    out = []
    for r in rows:
        out.append(r)
        for _ in range(factors.get(r["verb"], 1) - 1):
            out.append({**r, "oversampled": True})
    return out, len(out) - len(rows)


def _summary(
    rows: list[dict[str, Any]],
    episodes: list[dict[str, Any]],
    faults: list[str],
    played: int,
    removed: int,
    added: int,
    wall: float,
) -> dict[str, Any]:
    expert = [e for e in episodes if e["source"] == "expert"]
    recovery = [e for e in episodes if e["source"] == "recovery"]
    policy = [e for e in episodes if e["source"] == "policy"]
    return {
        "rows": len(rows),
        "rows_by_source": dict(sorted(Counter(r["source"] for r in rows).items())),
        "rows_by_verb": dict(sorted(Counter(r["verb"] for r in rows).items())),
        "rows_off_expert_path": sum(bool(r.get("off_expert_path")) for r in rows),
        "rows_labelled_by": dict(sorted(Counter(r["labeller"] for r in rows).items())),
        "played_steps": played,
        "dedup_removed": removed,
        "oversampled_added": added,
        "episodes": len(episodes),
        "expert_episodes": len(expert),
        "expert_success": round(sum(e["won"] for e in expert) / len(expert), 4) if expert else 0.0,
        "expert_mean_steps": round(sum(e["steps"] for e in expert) / len(expert), 2) if expert else 0.0,
        "recovery_episodes": len(recovery),
        "recovery_success": round(sum(e["won"] for e in recovery) / len(recovery), 4) if recovery else 0.0,
        "perturbations": sum(e["perturbations"] for e in recovery),
        "policy_episodes": len(policy),
        "policy_steps_off_expert": sum(e["perturbations"] for e in policy),
        "num_faults": len(faults),
        "faults": faults[:20],
        "wall_time_s": round(wall, 2),
    }
