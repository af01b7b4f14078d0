"""ScienceWorldEnv on the real simulator (one shared JVM for most tests)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from gcd_trl.envs.base import EnvSpec, Task
from gcd_trl.envs.registry import make_env
from gcd_trl.envs.scienceworld import (
    _GOLD_CACHE,
    VARIATIONS_ASSET,
    ScienceWorldEnv,
    ScienceWorldJVMError,
    _read_asset,
    anchor_key,
    max_variations,
    query_variations,
    task_names,
    variations,
)

# short gold paths that the simulator also generates quickly
SHORT_TASKS = [
    ("find-non-living-thing", 0),
    ("lifespan-shortest-lived", 3),
    ("lifespan-longest-lived-then-shortest-lived", 3),
    ("power-component", 0),
    ("use-thermometer", 0),
    ("freeze", 0),
]


def sw_task(name: str, variation: int) -> Task:
    return Task(env="scienceworld", split="test", task_name=name, variation=variation)


def alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture(scope="module")
def env():
    e = ScienceWorldEnv()
    yield e
    e.close()


def play_gold(env: ScienceWorldEnv, task: Task, max_steps: int = 300):
    env.reset(task)
    results = []
    while len(results) < max_steps:
        action = env.expert_action()
        if action is None:
            break
        results.append(env.step(action))
        if results[-1].done:
            break
    return results


@pytest.mark.parametrize("name,variation", SHORT_TASKS)
def test_gold_path_wins(env, name, variation):
    results = play_gold(env, sw_task(name, variation))
    last = results[-1]
    assert last.done and last.won and last.score == 100.0
    assert not any(r.done for r in results[:-1])
    assert env.expert_action() is None  # episode over
    assert all(r.admissible_actions is None for r in results)
    assert (name, variation, "easy") in _GOLD_CACHE


def test_reset_returns_look_around_and_prompt_info(env):
    r = env.reset(sw_task("boil", 0))
    assert r.observation.startswith("This room is called the")
    assert r.task_description.startswith("Your task is to boil")
    assert r.admissible_actions is None
    assert r.reward == 0.0 and r.done is False and r.won is False and 0 <= r.score < 100
    templates, objects = r.info["action_templates"], r.info["objects"]
    assert {"focus on OBJ", "move OBJ to OBJ", "look around", "open OBJ"} <= set(templates)
    assert templates == sorted(set(templates))
    assert "agent" in objects and all(isinstance(o, str) and o for o in objects)
    assert objects == sorted(set(objects))
    # a second reset of the same task starts from the same state
    assert env.reset(sw_task("boil", 0)).info["anchor"] == r.info["anchor"]


def test_step_semantics_and_objects_refresh(env):
    start = env.reset(sw_task("boil", 0))
    bad = env.step("dance with the moon")
    assert bad.observation == "No known action matches that input."
    assert bad.reward == 0.0 and bad.info["score_delta"] == 0 and not bad.done
    assert bad.task_description == start.task_description
    moved = env.step("go to kitchen")  # "easy": doors are open
    assert "kitchen" in moved.observation
    assert set(moved.info["objects"]) != set(start.info["objects"])
    assert "sink" in " ".join(moved.info["objects"])


def test_scores_sum_of_rewards(env):
    results = play_gold(env, sw_task("power-component", 0))
    start_score = env.reset(sw_task("power-component", 0)).score
    assert sum(r.reward for r in results) == pytest.approx((results[-1].score - start_score) / 100)
    assert all(r.reward == r.info["score_delta"] / 100 for r in results)


def test_failure_ends_episode_without_win(env):
    # focusing on the wrong thing makes "find an animal" impossible: the server scores -100
    start = env.reset(sw_task("find-animal", 0))
    r = env.step("focus on air")
    assert r.info["raw_score"] == -100 and r.info["failed"] is True
    assert r.done is True and r.won is False
    assert r.score == 0.0 and r.reward == pytest.approx(-start.score / 100)
    assert env.expert_action() is None
    with pytest.raises(RuntimeError, match="over"):
        env.step("look around")


def test_expert_leaves_after_deviation_and_reuses_cache(env):
    task = sw_task("find-non-living-thing", 0)
    env.reset(task)
    gold = env.gold_path()
    assert env.expert_action() == gold[0]
    env.step("dance")  # off the gold path
    assert env.expert_action() is None
    # a repeated reset replays the cached path (the simulator may generate another one)
    env.reset(task)
    assert env.gold_path() == gold
    assert env.expert_action() == gold[0]


def test_lazy_gold_generation_restores_state(env):
    task = sw_task("lifespan-longest-lived", 5)
    _GOLD_CACHE.pop((task.task_name, task.variation, "easy"), None)
    env.reset(task)
    before = env.step("look around")
    assert env.expert_action() is None or env.gold_path()[0] == "look around"
    assert (task.task_name, task.variation, "easy") in _GOLD_CACHE
    after = env.step("look around")  # same room, same score after regenerating + replaying
    assert after.info["anchor"] == before.info["anchor"] and after.score == before.score


def test_gold_cache_dir_shares_paths(env, tmp_path):
    task = sw_task("lifespan-shortest-lived", 7)
    key = (task.task_name, task.variation, "easy")
    _GOLD_CACHE.pop(key, None)
    env.gold_cache_dir = tmp_path
    try:
        env.reset(task)
        gold = env.gold_path()
        (path,) = tmp_path.glob("*.json")
        assert path.name == "lifespan-shortest-lived-7-easy.json"
        assert json.loads(path.read_text())["actions"] == gold
        # another process would read the file: edit it and drop the in-memory copy to see it used
        path.write_text(json.dumps({"actions": ["look around", *gold]}))
        _GOLD_CACHE.pop(key)
        assert env.gold_path() == ["look around", *gold]
        path.write_text("{not json")
        _GOLD_CACHE.pop(key)
        with pytest.raises(ValueError, match=path.name):
            env.gold_path()
    finally:
        env.gold_cache_dir = None
        _GOLD_CACHE.pop(key, None)


def test_fast_step_matches_standard_step(env):
    task = sw_task("use-thermometer", 0)  # gold path cached by test_gold_path_wins
    fast = play_gold(env, task)
    env.fast_step = False
    try:
        slow = play_gold(env, task)
    finally:
        env.fast_step = True
    # episodes of one variation differ in details (listing order, measured temperatures) whichever
    # step is used, so compare what the agent is scored on
    assert [(r.score, r.done, r.won) for r in fast] == [(r.score, r.done, r.won) for r in slow]
    assert slow[-1].won and "valid_actions" in slow[0].info and len(slow[0].info["valid_actions"]) > 10


def test_anchor_key_ignores_listing_order():
    a = "In it, you see: \n\ta table. On the table is: a jug, a cup (containing red paint).\n\tthe agent\n"
    b = "In it, you see: \n\tthe agent\n\ta table. On the table is: a cup (containing red paint), a jug.\n"
    c = "In it, you see: \n\tthe agent\n\ta table. On the table is: a cup (containing blue paint), a jug.\n"
    assert anchor_key(a) == anchor_key(b) != anchor_key(c)


def test_heap_cap_on_jvm_command_line(env):
    cmdline = Path(f"/proc/{env.pid}/cmdline").read_bytes().split(b"\0")
    assert b"-Xmx512m" in cmdline
    assert env.pid in child_pids()


def test_bad_tasks_raise_clear_errors(env):
    with pytest.raises(ValueError, match="no-such-task"):
        env.reset(sw_task("no-such-task", 0))
    with pytest.raises(ValueError, match="boil.*0..29.*30"):
        env.reset(sw_task("boil", 30))
    with pytest.raises(ValueError, match="alfworld"):
        env.reset(Task(env="alfworld", game="/nowhere"))
    with pytest.raises(ValueError, match="jvm_heap"):
        ScienceWorldEnv(jvm_heap="lots")
    with pytest.raises(ValueError, match="noDoors"):
        ScienceWorldEnv(simplifications="openDoors,noDoors")
    assert env.reset(sw_task("boil", 29)).observation  # still usable


def child_pids() -> set[int]:
    me = str(os.getpid())
    out = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except (FileNotFoundError, ProcessLookupError):
                continue
            if fields[1] == me and fields[0] != "Z":
                out.add(int(entry))
    return out


def test_close_leaves_no_jvm_and_dead_jvm_raises():
    spare = make_env(EnvSpec(env="scienceworld", jvm_heap="256m"))
    pid = spare.pid
    assert alive(pid) and b"-Xmx256m" in Path(f"/proc/{pid}/cmdline").read_bytes()
    spare.reset(sw_task("melt", 0))
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(ScienceWorldJVMError, match=str(pid)):
        spare.step("look around")
    with pytest.raises(ScienceWorldJVMError):
        spare.reset(sw_task("melt", 0))
    spare.close()  # closing after the JVM died is fine

    other = ScienceWorldEnv()
    pid = other.pid
    before = child_pids()
    assert pid in before
    with other:
        other.reset(sw_task("melt", 0))
    assert not alive(pid)
    assert child_pids() == before - {pid}
    other.close()  # idempotent
    with pytest.raises(ScienceWorldJVMError, match="closed"):
        other.step("look around")


def test_variation_helpers():
    names = task_names()
    assert len(names) == 30 and names == sorted(names) and names[29] == "use-thermometer"
    assert variations("boil", "dev") == list(range(14, 21))
    totals = {w: sum(len(variations(n, w)) for n in names) for w in ("train", "dev", "test")}
    assert totals == {"train": 3592, "dev": 1796, "test": 1819}
    assert max_variations("inclined-plane-friction-named-surfaces") == 1386
    with pytest.raises(ValueError, match="valid"):
        variations("boil", "valid")
    with pytest.raises(ValueError, match="frobnicate"):
        variations("frobnicate")


def test_variations_asset_matches_live_simulator(env):
    assert VARIATIONS_ASSET.is_file(), "regenerate: python -m gcd_trl.envs.scienceworld --write-variations"
    live = query_variations(env)  # on the shared JVM; it ends env's episode
    with pytest.raises(RuntimeError, match="reset"):
        env.step("look around")
    assert list(live) == task_names()  # the simulator's own order is alphabetical
    assert _read_asset(VARIATIONS_ASSET) == live


def test_agent_cannot_reset_its_own_episode(env):
    first = env.reset(Task(env="scienceworld", task_name="boil", variation=0))
    assert "reset task" not in first.info["action_templates"]
    result = env.step("reset task")
    assert result.info["refused"] == "reset task" and result.observation == "Nothing happens."
    assert not result.done and result.reward == 0.0
