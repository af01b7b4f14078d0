"""EnvPool on the real engines: same results as an in-process env, and faults that never stop the pool."""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

import pytest

from gcd_trl.envs.base import EnvSpec, StepResult, Task, TextEnv
from gcd_trl.envs.pool import EnvPool
from gcd_trl.envs.registry import make_env

FIELDS = ("observation", "task_description", "admissible_actions", "reward", "score", "done", "won")


def view(result: StepResult, sort_lines: bool = False) -> tuple:
    """The comparable fields; `sort_lines` because ScienceWorld lists a room's objects in an order
    that can change from one reset to the next (seen on find-living-thing variation 1)."""
    fields = [getattr(result, f) for f in FIELDS]
    if sort_lines:
        fields[0] = sorted(result.observation.splitlines())
    return tuple(fields)


def group_members(pgids: list[int], live_only: bool = True) -> list[tuple[int, str]]:
    """(pid, command) of processes whose process group is one of `pgids` (read from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        comm, rest = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :].split()
        state, pgrp = rest[0], int(rest[2])
        if pgrp in pgids and not (live_only and state == "Z"):
            found.append((int(entry.name), comm))
    return found


def wait_gone(pgids: list[int], live_only: bool = True, patience: float = 10.0) -> list[tuple[int, str]]:
    """Group members still there after up to `patience` s (killed processes take a moment to exit)."""
    deadline = time.monotonic() + patience
    while (left := group_members(pgids, live_only)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def assert_aborted(result: StepResult, reason_part: str) -> None:
    assert result.done and not result.won and result.admissible_actions is None and result.observation == ""
    assert reason_part in result.info["aborted"], result.info


@pytest.fixture(scope="module")
def alfworld_games(shared_dir: Path) -> list[str]:
    games = sorted(
        str(p.parent) for p in (shared_dir / "data/alfworld/json_2.1.1/valid_unseen").glob("*/*/game.tw-pddl")
    )
    if len(games) < 2:
        pytest.skip("no alfworld valid_unseen games in the shared data")
    return [games[0], games[len(games) // 2]]


@pytest.fixture(scope="module")
def alfworld_pool():
    with EnvPool(EnvSpec("alfworld"), 2, step_timeout=60.0) as pool:
        yield pool


def play_alfworld(
    pool: EnvPool, tasks: dict[int, Task], num_steps: int
) -> dict[int, list[tuple[str, StepResult]]]:
    """Random admissible actions (seeded per slot); returns [(action, result)] per slot, reset first."""
    first = pool.reset(tasks)
    trace = {slot: [("", result)] for slot, result in first.items()}
    rngs = {slot: random.Random(slot) for slot in tasks}
    for _ in range(num_steps):
        live = {s: t[-1][1] for s, t in trace.items() if not t[-1][1].done}
        actions = {s: rngs[s].choice(sorted(r.admissible_actions)) for s, r in live.items()}
        for slot, result in pool.step(actions).items():
            trace[slot].append((actions[slot], result))
    return trace


def test_alfworld_pool_matches_in_process_env(alfworld_pool: EnvPool, alfworld_games: list[str]):
    tasks = {0: Task(env="alfworld", game=alfworld_games[0]), 1: Task(env="alfworld", game=alfworld_games[1])}
    trace = play_alfworld(alfworld_pool, tasks, num_steps=4)
    assert alfworld_pool.stats["aborted"] == 0
    with make_env(EnvSpec("alfworld")) as env:
        for slot, task in tasks.items():
            assert view(env.reset(task)) == view(trace[slot][0][1])
            for action, result in trace[slot][1:]:
                assert view(env.step(action)) == view(result), (slot, action)
            assert alfworld_pool.expert_action([slot])[slot] == env.expert_action()


def test_killed_worker_aborts_only_its_slot_and_is_restarted(
    alfworld_pool: EnvPool, alfworld_games: list[str]
):
    tasks = {0: Task(env="alfworld", game=alfworld_games[0]), 1: Task(env="alfworld", game=alfworld_games[1])}
    play_alfworld(alfworld_pool, tasks, num_steps=1)
    before, old_pids = alfworld_pool.stats, alfworld_pool.worker_pids()
    os.kill(old_pids[0], signal.SIGKILL)

    out = alfworld_pool.step({0: "look", 1: "look"})
    assert_aborted(out[0], "worker died")
    assert not out[1].done and "aborted" not in out[1].info and out[1].observation
    assert alfworld_pool.worker_pids()[0] != old_pids[0] and alfworld_pool.worker_pids()[1] == old_pids[1]
    after = alfworld_pool.stats
    assert after["crashes"] == before["crashes"] + 1 and after["restarts"] == before["restarts"] + 1
    assert after["aborted"] == before["aborted"] + 1
    # the aborted slot has no episode until it is reset; then it plays as before
    assert_aborted(alfworld_pool.step({0: "look"})[0], "no episode")
    trace = play_alfworld(alfworld_pool, {0: tasks[0]}, num_steps=2)
    assert all("aborted" not in r.info for _, r in trace[0]) and len(trace[0]) > 1
    assert not alfworld_pool.step({1: "look"})[1].done  # slot 1 kept its episode throughout


def test_worker_dead_between_episodes_is_replaced_and_the_reset_retried(
    alfworld_pool: EnvPool, alfworld_games: list[str]
):
    """A worker killed while idle (the OOM killer between episodes): the next reset of its slot starts the
    episode on the replacement instead of reporting it aborted; the crash and the retry are counted."""
    tasks = {0: Task(env="alfworld", game=alfworld_games[0]), 1: Task(env="alfworld", game=alfworld_games[1])}
    play_alfworld(alfworld_pool, tasks, num_steps=1)
    before, old_pids = alfworld_pool.stats, alfworld_pool.worker_pids()
    os.kill(old_pids[0], signal.SIGKILL)
    assert not wait_gone([old_pids[0]])  # dead before the next episode starts

    out = alfworld_pool.reset(tasks)
    assert all("aborted" not in r.info and not r.done and r.observation for r in out.values()), out
    with make_env(EnvSpec("alfworld")) as env:
        assert view(out[0]) == view(env.reset(tasks[0]))  # the same episode, on the new worker
    after = alfworld_pool.stats
    assert after["crashes"] == before["crashes"] + 1 and after["restarts"] == before["restarts"] + 1
    assert after["reset_retries"] == before["reset_retries"] + 1 and after["aborted"] == before["aborted"]
    assert alfworld_pool.worker_pids()[0] != old_pids[0] and alfworld_pool.worker_pids()[1] == old_pids[1]
    assert not alfworld_pool.step({0: "look", 1: "look"})[0].done


def test_hung_worker_times_out_and_is_restarted(alfworld_pool: EnvPool, alfworld_games: list[str]):
    tasks = {0: Task(env="alfworld", game=alfworld_games[0]), 1: Task(env="alfworld", game=alfworld_games[1])}
    play_alfworld(alfworld_pool, tasks, num_steps=1)
    before, old_pids = alfworld_pool.stats, alfworld_pool.worker_pids()
    os.kill(old_pids[1], signal.SIGSTOP)  # hangs: never answers
    alfworld_pool.step_timeout = 2.0
    try:
        out = alfworld_pool.step({1: "look"})
    finally:
        alfworld_pool.step_timeout = 60.0
    assert_aborted(out[1], "timeout")
    after = alfworld_pool.stats
    assert after["timeouts"] == before["timeouts"] + 1 and after["restarts"] == before["restarts"] + 1
    assert alfworld_pool.worker_pids()[1] != old_pids[1] and not wait_gone([old_pids[1]])
    assert "aborted" not in alfworld_pool.step({0: "look"})[0].info  # slot 0 kept its episode
    assert "aborted" not in alfworld_pool.reset({1: tasks[1]})[1].info


def test_env_exception_is_reported_not_raised(alfworld_pool: EnvPool, tmp_path: Path):
    before = alfworld_pool.stats
    out = alfworld_pool.reset({0: Task(env="alfworld", game=str(tmp_path / "no_such_game"))})
    assert_aborted(out[0], "env error during reset")
    assert "no_such_game" in out[0].info["aborted"]
    assert alfworld_pool.stats["errors"] == before["errors"] + 1
    assert alfworld_pool.expert_action([0]) == {0: None}  # no episode: nothing to ask the worker


def test_bad_requests_raise_clear_errors(alfworld_pool: EnvPool):
    with pytest.raises(KeyError, match="slot 7"):
        alfworld_pool.step({7: "look"})
    with pytest.raises(TypeError, match="expected str"):
        alfworld_pool.step({0: 3})
    with pytest.raises(ValueError, match="fork"):
        EnvPool(EnvSpec("alfworld"), 1, start_method="fork")


def test_scienceworld_pool_matches_in_process_and_close_kills_jvms():
    tasks = {
        0: Task(env="scienceworld", task_name="boil", variation=0),
        1: Task(env="scienceworld", task_name="find-living-thing", variation=1),
    }
    actions = ["look around", "open door to kitchen", "go to kitchen", "look around", "inventory"]
    pool = EnvPool(EnvSpec("scienceworld"), 2)
    try:
        pids = pool.worker_pids()
        assert any(comm == "java" for _, comm in group_members(pids))
        trace = {s: [r] for s, r in pool.reset(tasks).items()}
        for action in actions:
            for slot, result in pool.step(dict.fromkeys(tasks, action)).items():
                trace[slot].append(result)
        assert pool.stats["aborted"] == 0
        # a killed worker takes its JVM with it
        os.kill(pids[0], signal.SIGKILL)
        assert_aborted(pool.step({0: "look around"})[0], "worker died")
        assert not wait_gone([pids[0]])
        pids = pool.worker_pids()
    finally:
        pool.close()
    assert not wait_gone(pids, live_only=False)  # no worker, JVM or zombie left
    with pytest.raises(RuntimeError, match="closed"):
        pool.step({0: "look around"})

    with make_env(EnvSpec("scienceworld")) as env:
        for slot, task in tasks.items():
            assert view(env.reset(task), True) == view(trace[slot][0], True)
            for action, result in zip(actions, trace[slot][1:]):
                assert view(env.step(action), True) == view(result, True), (slot, action)


class _EnvironEcho(TextEnv):
    """Reports the worker's view of the process: an env var and the working directory."""

    name = "alfworld"

    def reset(self, task: Task) -> StepResult:
        return StepResult(
            observation=os.environ.get("GCD_TRL_POOL_PROBE", "unset"),
            task_description=os.getcwd(),
            admissible_actions=None,
        )

    def step(self, action: str) -> StepResult:
        raise NotImplementedError

    def expert_action(self) -> str | None:
        return None


def _environ_echo(spec: EnvSpec) -> TextEnv:
    return _EnvironEcho()


def test_workers_see_the_pools_environment_not_the_forkservers(tmp_path, monkeypatch):
    """Workers fork from a forkserver that preloads the engines; it started with an older environment and
    directory, and a worker must still see the ones its pool was created under (as spawn gives)."""
    task = Task(env="alfworld", game="unused")
    monkeypatch.delenv("GCD_TRL_POOL_PROBE", raising=False)
    with EnvPool(EnvSpec("alfworld"), 1, env_factory=_environ_echo) as pool:  # starts the forkserver
        assert pool.reset({0: task})[0].observation == "unset"
    monkeypatch.setenv("GCD_TRL_POOL_PROBE", "set after the forkserver started")
    monkeypatch.chdir(tmp_path)
    with EnvPool(EnvSpec("alfworld"), 2, env_factory=_environ_echo) as pool:
        first = pool.reset({0: task, 1: task})
    assert {r.observation for r in first.values()} == {"set after the forkserver started"}
    assert {r.task_description for r in first.values()} == {str(tmp_path)}
