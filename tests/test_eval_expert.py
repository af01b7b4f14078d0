"""The `expert` policy on the real benchmark data: it wins real ALFWorld valid_unseen games (a handful
here, all 134 in the slow test) and ScienceWorld variations of the real splits along their gold paths;
the `random` policy plays ScienceWorld (templates filled with objects in view) and reports."""

from __future__ import annotations

import pytest

from gcd_trl.envs.base import EnvSpec
from gcd_trl.envs.pool import EnvPool
from gcd_trl.envs.splits import split_tasks
from gcd_trl.eval import ExpertPolicy, RandomPolicy, evaluate, read_episodes
from gcd_trl.rollout.settings import EnvArguments

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")

# quick to generate and short: ScienceWorld tasks whose gold paths fit the RL step limit
SW_TASKS = ("find-non-living-thing", "power-component", "lifespan-shortest-lived")


@pytest.fixture(scope="module")
def alfworld_l1(shared_dir):
    return split_tasks("alfworld", "L1", "test", shared_dir / "data" / "alfworld")


def _alfworld(data_dir, **kw) -> EnvArguments:
    return EnvArguments(environment="alfworld", split="L1", part="test", data_dir=str(data_dir), **kw)


def test_expert_wins_real_valid_unseen_games_of_every_type(shared_dir, alfworld_l1, tmp_path):
    one_per_type = list({t.task_type: t for t in reversed(alfworld_l1)}.values())
    assert len(one_per_type) == 6
    args = _alfworld(shared_dir / "data" / "alfworld", max_episode_steps=30)
    report = evaluate(ExpertPolicy(), one_per_type, args, tmp_path, num_envs=2, progress=False)
    assert report["success"] == 6 and report["invalid_rate"] == 0 and len(report["by_type"]) == 6
    assert report["split"] == "L1" and report["part"] == "test"


@pytest.mark.slow
def test_expert_wins_all_134_valid_unseen_games(shared_dir, alfworld_l1, tmp_path):
    """Every game of L1 within the RL step limit of 30 (16 min on the shared 2-core machine)."""
    args = _alfworld(shared_dir / "data" / "alfworld", max_episode_steps=30)
    report = evaluate(ExpertPolicy(), alfworld_l1, args, tmp_path, num_envs=2, progress=False)
    lost = [e["task"] for e in read_episodes(tmp_path) if not e["won"]]
    assert report["episodes"] == 134 and not lost, f"expert lost {lost[:5]}"


@pytest.fixture(scope="module")
def sw_pool():
    pool = EnvPool(EnvSpec("scienceworld"), 2)
    yield pool
    pool.close()


def _sw_tasks():
    tasks = split_tasks("scienceworld", "L1", "test")
    return [next(t for t in tasks if t.task_name == name) for name in SW_TASKS]


def test_expert_follows_scienceworld_gold_paths_to_a_win(sw_pool, tmp_path):
    tasks = _sw_tasks()
    args = EnvArguments(environment="scienceworld", split="L1", part="test", max_episode_steps=30)
    report = evaluate(ExpertPolicy(), tasks, args, tmp_path, pool=sw_pool, progress=False)
    assert report["success"] == 3 and report["invalid_rate"] == 0
    assert set(report["by_type"]) == set(SW_TASKS)
    for e in read_episodes(tmp_path):
        assert e["score"] == 100 and e["trajectory"][-1]["won"]


def test_random_policy_plays_scienceworld(sw_pool, tmp_path):
    tasks = _sw_tasks()[:2]
    args = EnvArguments(environment="scienceworld", split="L1", part="test", max_episode_steps=4)
    report = evaluate(RandomPolicy(seed=0), tasks, args, tmp_path, pool=sw_pool, progress=False)
    assert report["episodes"] == 2 and report["invalid_rate"] == 0 and report["mean_steps"] <= 4
    actions = [s["action"] for e in read_episodes(tmp_path) for s in e["trajectory"]]
    assert actions and not any("OBJ" in a or "LOC" in a for a in actions), "templates are filled in"
