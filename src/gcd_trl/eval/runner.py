"""Play every task of a split with a policy, append each finished episode to `episodes.jsonl` at once,
and report.

    report = evaluate(policy, tasks, env_args, "outputs/eval/grpo-L1")

- Every task is played `num_samples` times (k of pass@k), in an `EnvPool` through the RL
  `RolloutCollector`: one batched generation per turn over every live env, the same `Episode` and prompt
  rules as training (max_episode_steps, history, prompt template, suggestions).
- Each episode is written the moment it ends (one JSON line: task, type, won, steps, invalid,
  repeated, ..., `trajectory` = its step records, `gcd_trl.rollout.records`). Ctrl-C or a kill loses
  only the episodes in flight; rerunning skips what is written (a torn last line is dropped).
- `eval_config.json` keeps what defines the run (policy, model fingerprint, sampling, split, tasks,
  episode rules); a rerun that differs is refused, naming the keys.
- An episode aborted by the pool (a dead or hung env worker) is replayed up to `retry_aborted` times,
  then written as aborted (counted, never a win).
- Several processes (`shard=(rank, world)`): each plays every world-th episode into its own
  `episodes.rank{r}.jsonl`; the report covers every file, and is complete when the last one is.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from gcd_trl import files
from gcd_trl.envs.base import Task
from gcd_trl.envs.tasks import task_type_name
from gcd_trl.eval.policies import Policy, as_policy
from gcd_trl.eval.report import REPORT_JSON, REPORT_MD, episode_counts, report_markdown, summarize
from gcd_trl.prompts import format_suggestions, load_template
from gcd_trl.rollout.collector import RolloutCollector
from gcd_trl.rollout.episode import Episode

EPISODES_FILE = "episodes.jsonl"
CONFIG_FILE = "eval_config.json"
DEFAULT_NUM_ENVS = 8


class EvalError(ValueError):
    """An eval directory that cannot be resumed (a different config, a corrupt file): names what and where."""


# ----------------------------------------------------------------------------------------- identity
def _sha(text: str | bytes) -> str:
    return hashlib.sha256(text.encode() if isinstance(text, str) else text).hexdigest()[:16]


def model_fingerprint(name_or_path: str) -> str:
    """A cheap content fingerprint of a local model directory (config and the head and tail of every
    weight file), so a retrained checkpoint saved to the same path is a different policy; a hub id is its
    name."""
    path = Path(name_or_path).expanduser()
    if not path.is_dir():
        return name_or_path
    h = hashlib.sha256()
    for f in sorted(path.iterdir()):
        if f.name == "config.json" or f.suffix in (".safetensors", ".bin", ".pt", ".pth"):
            size = f.stat().st_size
            h.update(f"{f.name}:{size}".encode())
            with f.open("rb") as fh:
                h.update(fh.read(1 << 20))
                if size > 2 << 20:
                    fh.seek(-(1 << 20), os.SEEK_END)
                    h.update(fh.read())
    return h.hexdigest()[:16]


def eval_identity(
    settings: Any,
    tasks: Sequence[Task],
    *,
    policy: str,
    num_samples: int = 1,
    meta_reasoning: bool | None = None,
    split: str | None = None,
    part: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """What defines an evaluation's results: a rerun in the same directory must match it key by key."""
    meta = bool(settings.meta_reasoning if meta_reasoning is None else meta_reasoning)
    name = settings.template_name(meta)
    identity: dict[str, Any] = {
        "policy": policy,
        "environment": settings.environment,
        "split": split or settings.split,
        "part": part or getattr(settings, "part", "test"),
        "num_tasks": len(tasks),
        "tasks": _sha("\n".join(t.key for t in tasks)),
        "num_samples": num_samples,
        "max_episode_steps": settings.max_episode_steps,
        "history_length": settings.history_length,
        "prompt_template": f"{name} ({_sha(load_template(name, 'agent'))})",
        "meta_reasoning": meta,
        "suggestions": _sha(format_suggestions(settings.suggestions)),
    }
    for key in ("history_older_actions", "reasoning_history", "inadmissible_action", "invalid_feedback"):
        if getattr(settings, key, None) is not None:
            identity[key] = getattr(settings, key)
    if settings.environment == "scienceworld":
        identity["simplifications"] = settings.simplifications
    if policy == "expert" and settings.environment == "alfworld":
        identity["alfworld_expert"] = settings.alfworld_expert
    identity.update(extra or {})
    return identity


def check_output_dir(output_dir: str | os.PathLike, identity: Mapping[str, Any]) -> bool:
    """Refuse a directory holding an evaluation with a different identity. True when it holds this one."""
    path = Path(output_dir) / CONFIG_FILE
    if not path.is_file():
        if Path(output_dir).is_dir() and any(Path(output_dir).glob("episodes*.jsonl")):
            raise EvalError(f"{output_dir}: holds episodes but no {CONFIG_FILE}; use an empty output_dir")
        return False
    try:
        before = json.loads(path.read_text())["identity"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise EvalError(f"{path}: unreadable ({err}); use another output_dir") from None
    now = json.loads(json.dumps(identity))  # the same JSON types as the stored copy
    diffs = [
        f"{k}: {before.get(k, '(unset)')!r} there, {now.get(k, '(unset)')!r} now"
        for k in sorted(set(before) | set(now))
        if before.get(k, "(unset)") != now.get(k, "(unset)")
    ]
    if diffs:
        raise EvalError(
            f"{output_dir} holds an evaluation with a different config ({'; '.join(diffs)}): use another "
            "output_dir, or delete this one to start over"
        )
    return True


# ---------------------------------------------------------------------------------------- episodes
def episode_line(ep: Episode, task_index: int, truncated_outputs: int = 0) -> dict[str, Any]:
    """One finished episode as written to episodes.jsonl (its steps follow the step-record schema)."""
    key = ep.task.key
    line = {
        "task": key,
        "type": task_type_name(ep.task),
        "task_index": task_index,
        "sample": ep.traj,
        "won": bool(ep.won),
        "score": float(ep.score),
        "steps": ep.num_steps,
        "invalid": ep.num_invalid,
        "repeated": ep.repeated_actions,
        "inadmissible": int(getattr(ep, "num_inadmissible", 0)),
        "truncated": bool(ep.truncated),
        "truncated_outputs": truncated_outputs,
        "aborted": ep.aborted,
        "trajectory": [{**s.to_dict(), "task": key} for s in ep.steps],
    }
    return line


def _episode_files(output_dir: Path) -> list[Path]:
    return sorted(output_dir.glob("episodes*.jsonl"))


def read_episodes(output_dir: str | os.PathLike, repair: str | None = None) -> list[dict[str, Any]]:
    """Every episode line in the directory's episode files. A torn last line (a kill mid-write) is skipped,
    and cut off the file named `repair` (this process's own); a bad line elsewhere is an error naming file
    and line."""
    out = []
    for path in _episode_files(Path(output_dir)):
        data = path.read_bytes()
        lines = data.split(b"\n")
        good_end = 0
        for lineno, raw in enumerate(lines, start=1):
            if not raw.strip():
                good_end += len(raw) + 1
                continue
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError:
                if lineno == len(lines):  # the last line, without its newline: torn by a kill
                    if repair == path.name:
                        with path.open("r+b") as f:
                            f.truncate(good_end)
                    break
                raise EvalError(f"{path}:{lineno}: not valid JSON; fix or delete the line") from None
            if not isinstance(obj, dict) or "task" not in obj or "sample" not in obj:
                raise EvalError(f"{path}:{lineno}: not an episode line (needs 'task' and 'sample')")
            out.append(obj)
            good_end += len(raw) + 1
    return out


# ------------------------------------------------------------------------------------ the collector
class _SlotTracker:
    """The env pool as the collector sees it: remembers which slot each reset result came from, and lets
    the evaluation write finished episodes before the next batch of resets."""

    def __init__(self, pool: Any, before_reset: Callable[[], None]) -> None:
        self.pool, self.num_envs, self._before = pool, pool.num_envs, before_reset
        self._slot_of: dict[int, int] = {}

    @property
    def stats(self) -> dict[str, int]:
        return self.pool.stats

    def reset(self, tasks: dict[int, Task]) -> dict:
        self._before()
        results = self.pool.reset(tasks)
        self._slot_of = {id(r): slot for slot, r in results.items()}
        return results

    def step(self, actions: dict[int, str]) -> dict:
        return self.pool.step(actions)

    def expert_action(self, slots: Sequence[int]) -> dict[int, str | None]:
        return self.pool.expert_action(slots)

    def slot_of(self, result: Any) -> int:
        return self._slot_of[id(result)]


class _EvalCollector(RolloutCollector):
    """The RL collector, with the policy answering whole episodes (it may need their env state and slot)
    and each finished episode handed to `on_finish` before anything else happens."""

    def __init__(self, pool: Any, settings: Any, policy: Policy, on_finish: Callable, **kwargs: Any) -> None:
        self.tracker = _SlotTracker(pool, self.flush)
        super().__init__(self.tracker, settings, generate=self._generate, progress=False, **kwargs)
        self.policy, self.on_finish = policy, on_finish
        self.jobs: list[tuple[int, int]] = []
        self._live: list[tuple[Episode, int]] = []  # in the order the collector started them
        self._truncated: dict[int, int] = {}
        self.time_generation = self.time_env = 0.0
        self.turns = 0

    def _episode(self, task: Task, first: Any, group: int, traj: int) -> Episode:
        task_index, sample = self.jobs[group]
        ep = super()._episode(task, first, task_index, sample)
        self._live.append((ep, self.tracker.slot_of(first)))
        return ep

    def flush(self) -> None:
        keep = []
        for ep, slot in self._live:
            if ep.done:
                self.on_finish(ep, self._truncated.pop(id(ep), 0))
            else:
                keep.append((ep, slot))
        self._live = keep

    def _generate(self, prompts: list[str]) -> list:
        self.flush()
        episodes = [ep for ep, _ in self._live]
        if len(episodes) != len(prompts) or any(ep.prompt() != p for ep, p in zip(episodes, prompts)):
            raise RuntimeError("eval: the collector's live episodes and its prompts disagree")
        gens = self.policy.act(episodes, [slot for _, slot in self._live], self.tracker)
        for ep, g in zip(episodes, gens):
            if g.truncated:
                self._truncated[id(ep)] = self._truncated.get(id(ep), 0) + 1
        return gens

    def play(self, tasks: Sequence[Task], jobs: list[tuple[int, int]]) -> None:
        """Play one episode per job (task index, sample)."""
        self.jobs = jobs
        try:
            out = self.collect([tasks[i] for i, _ in jobs], 1)
        finally:
            self.flush()
        self.time_generation += out.time_generation
        self.time_env += out.time_env
        self.turns += out.turns


# ---------------------------------------------------------------------------------------- evaluate
def evaluate(
    policy: Any,
    tasks: Sequence[Task],
    settings: Any,
    output_dir: str | os.PathLike | None = None,
    *,
    num_samples: int = 1,
    pool: Any = None,
    num_envs: int | None = None,
    meta_reasoning: bool | None = None,
    golden_rules: str | os.PathLike | None = None,
    split: str | None = None,
    part: str | None = None,
    label: str | None = None,
    identity: Mapping[str, Any] | None = None,
    progress: bool = True,
    sync_max: Callable[[int], int] | None = None,
    shard: tuple[int, int] = (0, 1),
    retry_aborted: int = 2,
) -> dict[str, Any]:
    """Evaluate `policy` on every task (`num_samples` episodes each); see the module docstring.

    `policy`: a `Policy` (`ExpertPolicy`, `RandomPolicy`), a `Generator`, or a `generate(prompts)`
    callable (the trainer's). `settings`: the episode rules and pool settings (`EnvArguments`).
    `pool`: an existing `EnvPool` to play in (not closed here); else one is built with `num_envs`
    workers (default `settings.num_envs`, else min(episodes, 8)). `golden_rules`: a rules JSON file
    shown as {suggestions}. `output_dir=None` keeps nothing on disk (no resume). `sync_max`: the
    all-reduce max that keeps several processes' turns in lockstep (see RolloutCollector).

    Returns the report (`summarize`) of every episode in `output_dir` (all shards), plus `local`: this
    process's counts over its share (all-reduce them to combine shards in memory).
    """
    policy = as_policy(policy)
    meta = bool(settings.meta_reasoning if meta_reasoning is None else meta_reasoning)
    if golden_rules is not None:
        from gcd_trl.gcd.correction import read_rules

        settings = dataclasses.replace(settings, suggestions=read_rules(golden_rules))
    if num_samples < 1:
        raise ValueError(f"num_samples={num_samples!r} must be >= 1")
    rank, world = shard
    ident = eval_identity(
        settings,
        tasks,
        policy=policy.name,
        num_samples=num_samples,
        meta_reasoning=meta,
        split=split,
        part=part,
        extra=identity,
    )
    meta_fields = {
        "environment": settings.environment,
        "split": ident["split"],
        "part": ident["part"],
        "policy": policy.name,
        "label": label or policy.name,
        "samples_per_task": num_samples,
    }
    jobs = [(i, k) for i in range(len(tasks)) for k in range(num_samples)][rank::world]
    by_key = {t.key: i for i, t in enumerate(tasks)}
    out_dir = Path(output_dir) if output_dir is not None else None
    done: dict[tuple[int, int], dict] = {}
    handle = None
    if out_dir is not None:
        if not check_output_dir(out_dir, ident):
            out_dir.mkdir(parents=True, exist_ok=True)
            files.write_text_atomic(
                out_dir / CONFIG_FILE, json.dumps({"identity": ident, "meta": meta_fields}, indent=2)
            )
        name = EPISODES_FILE if world == 1 else f"episodes.rank{rank}.jsonl"
        for e in read_episodes(out_dir, repair=name):
            if e["task"] in by_key:
                done[(by_key[e["task"]], int(e["sample"]))] = e
        handle = (out_dir / name).open("a", encoding="utf-8")
    pending = [j for j in jobs if j not in done]
    mine = [done[j] for j in jobs if j in done]
    wins = sum(bool(e["won"]) for e in mine)
    bar = tqdm(
        total=len(jobs),
        initial=len(mine),
        desc=f"eval {meta_fields['label']}",
        unit="ep",
        disable=not progress,
        dynamic_ncols=True,
    )
    if mine:
        bar.set_postfix(success=f"{wins}/{len(mine)} ({wins / len(mine):.0%})")
    retry: list[tuple[int, int]] = []
    attempts: dict[tuple[int, int], int] = {}

    def on_finish(ep: Episode, truncated_outputs: int) -> None:
        nonlocal wins
        job = (ep.group, ep.traj)
        if ep.aborted is not None and attempts.get(job, 0) < retry_aborted:
            attempts[job] = attempts.get(job, 0) + 1
            retry.append(job)
            return
        line = episode_line(ep, ep.group, truncated_outputs)
        if handle is not None:
            handle.write(json.dumps(line, ensure_ascii=False) + "\n")
            handle.flush()
        mine.append(line)
        wins += line["won"]
        bar.update(1)
        bar.set_postfix(success=f"{wins}/{len(mine)} ({wins / len(mine):.0%})")

    own_pool = pool is None
    t0 = time.perf_counter()
    idle = not pending and sync_max is None  # everything was done already: no env to start
    collector = None
    try:
        if own_pool and not idle:
            from gcd_trl.rollout.expert import budgeted_env_factory

            gold = out_dir / "gold_paths" if out_dir and settings.environment == "scienceworld" else None
            size = num_envs or settings.num_envs or min(DEFAULT_NUM_ENVS, max(1, len(pending)))
            kwargs = (
                {"env_factory": budgeted_env_factory(settings.max_episode_steps)}
                if getattr(policy, "budgeted_envs", False)
                else {}
            )
            pool = settings.make_pool(size, gold_cache_dir=gold, **kwargs)
        if not idle:
            collector = _EvalCollector(
                pool, settings, policy, on_finish, sync_max=sync_max, meta_reasoning=meta
            )
            collector.play(tasks, pending)
            # episodes aborted by a dead env worker are played again (as many rounds on every process,
            # for collective generation backends)
            while (sync_max(len(retry)) if sync_max is not None else len(retry)) > 0:
                batch, retry[:] = list(retry), []
                collector.play(tasks, batch)
    except BaseException:
        if out_dir is not None and handle is not None:  # Ctrl-C: what is written so far, as a report
            handle.close()
            try:
                _report(out_dir, mine, tasks, by_key, len(tasks) * num_samples, meta_fields)
            except Exception as err:  # never hide the interruption itself
                print(f"eval: could not write the partial report: {err}", file=sys.stderr)
        raise
    finally:
        bar.close()
        if handle is not None:
            handle.close()
        if own_pool and pool is not None:
            pool.close()
    wall = time.perf_counter() - t0
    report = _report(out_dir, mine, tasks, by_key, len(tasks) * num_samples, meta_fields)
    report["local"] = {
        **episode_counts(mine),  # sum these over processes, then `episode_rates`
        "played": len(mine) - (len(jobs) - len(pending)),
        "wall_time_s": round(wall, 3),
        "time_generation_s": round(collector.time_generation, 3) if collector else 0.0,
        "time_env_s": round(collector.time_env, 3) if collector else 0.0,
        "turns": collector.turns if collector else 0,
    }
    return report


def _report(out_dir, mine, tasks, by_key, expected, meta_fields) -> dict[str, Any]:
    if out_dir is None:
        episodes = mine
    else:  # every shard's file: the report covers what every process has written so far
        found = {}
        for e in read_episodes(out_dir):
            if e["task"] in by_key:
                found[(by_key[e["task"]], int(e["sample"]))] = e
        episodes = [found[k] for k in sorted(found)]
    report = summarize(episodes, expected=expected, **meta_fields)
    if out_dir is not None:
        write_report(out_dir, report)
    return report


def write_report(out_dir: str | os.PathLike, report: Mapping[str, Any]) -> None:
    """report.json and report.md, each written atomically."""
    out_dir = Path(out_dir)
    files.write_text_atomic(out_dir / REPORT_JSON, json.dumps(report, indent=2) + "\n")
    files.write_text_atomic(out_dir / REPORT_MD, report_markdown(report))
