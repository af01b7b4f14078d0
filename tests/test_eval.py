"""`gcd_trl.eval` on the real ALFWorld engine (generated games of all six types): the expert wins them all
(handing over to the planner when the step budget runs short), the random policy runs a split and
reports, a model and an OpenAI-compatible endpoint play through the same collector, resume skips what is
written, a changed config is refused, bad inputs are named, and reports merge into Table 1."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest

from gcd_trl.envs.alfworld import TASK_TYPES
from gcd_trl.envs.base import EnvSpec
from gcd_trl.envs.pool import EnvPool
from gcd_trl.eval import ExpertPolicy, RandomPolicy, evaluate
from gcd_trl.eval.runner import EPISODES_FILE, EvalError, read_episodes
from gcd_trl.rollout.records import read_steps
from gcd_trl.rollout.settings import EnvArguments
from openai_server import openai_server_fixture  # noqa: F401 (the fixture)

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")


@pytest.fixture(scope="module")
def games_dir(tmp_path_factory):
    """Six generated games, one per task type (seed 3: its clean game takes the handcoded expert 47 steps)."""
    from gcd_trl.envs.alfworld_gen import generate_games

    out = tmp_path_factory.mktemp("games")
    generate_games(out, 6, seed=3)
    return out


@pytest.fixture(scope="module")
def tasks(games_dir):
    from gcd_trl.envs.splits import split_tasks

    return split_tasks("alfworld", "all", "test", games_dir)


@pytest.fixture(scope="module")
def pool():
    p = EnvPool(EnvSpec("alfworld"), 2)
    yield p
    p.close()


def settings(games_dir, **kw) -> EnvArguments:
    kw.setdefault("max_episode_steps", 30)
    return EnvArguments(environment="alfworld", split="all", part="test", data_dir=str(games_dir), **kw)


def test_expert_wins_generated_games_of_all_six_types(games_dir, tasks, tmp_path):
    report = evaluate(ExpertPolicy(), tasks, settings(games_dir), tmp_path, num_envs=2, progress=False)
    assert report["episodes"] == 6 and report["success"] == 6 and report["success_rate"] == 1.0
    assert set(report["by_type"]) == set(TASK_TYPES.values())
    assert report["invalid_rate"] == 0 and report["aborted"] == 0 and report["complete"]
    assert report["mean_steps"] < 30
    lines = read_episodes(tmp_path)
    steps = read_steps(tmp_path / EPISODES_FILE)
    assert len(steps) == sum(e["steps"] for e in lines) and all(s["valid"] for s in steps)
    assert all(s["task"] == e["task"] for e in lines for s in e["trajectory"])
    assert all(e["trajectory"][-1]["won"] and e["trajectory"][-1]["done"] for e in lines)
    assert (tmp_path / "report.md").read_text().count("| pick_") == 5


def test_random_policy_draws_the_same_wherever_the_games_are(games_dir, tasks, pool, tmp_path):
    """Its RNG is seeded by `Task.seed_key` (task and trial folders): a copy of the games elsewhere gets the
    same actions, so the demo's random row does not depend on the checkout's path."""
    import shutil

    from gcd_trl.envs.splits import split_tasks

    moved = tmp_path / "elsewhere"
    shutil.copytree(games_dir, moved)
    args = settings(games_dir, max_episode_steps=4)
    here = evaluate(RandomPolicy(seed=1), tasks[:3], args, tmp_path / "a", pool=pool, progress=False)
    there_tasks = split_tasks("alfworld", "all", "test", moved)[:3]
    assert [t.seed_key for t in there_tasks] == [t.seed_key for t in tasks[:3]]
    assert [t.key for t in there_tasks] != [t.key for t in tasks[:3]]
    evaluate(
        RandomPolicy(seed=1),
        there_tasks,
        settings(moved, max_episode_steps=4),
        tmp_path / "b",
        pool=pool,
        progress=False,
    )
    assert here["episodes"] == 3

    def actions(out):
        return [[s["action"] for s in e["trajectory"]] for e in read_episodes(out)]

    assert actions(tmp_path / "a") == actions(tmp_path / "b")
    assert len({a for ep in actions(tmp_path / "a") for a in ep}) > 1


def test_expert_hands_over_to_the_planner_when_the_budget_runs_short(tasks):
    """The clean game takes the handcoded expert 47 steps: within 20 it must hand over and still win."""
    from gcd_trl.envs.alfworld import AlfWorldEnv
    from gcd_trl.prompts import load_template
    from gcd_trl.rollout.expert import play_expert

    task = next(t for t in tasks if t.task_type == 3)
    with AlfWorldEnv("handcoded") as env:
        env.reset(task)
        for _ in range(20):  # the handcoded expert alone is still searching after 20 steps
            result = env.step(env.expert_action())
        assert not result.won and env.fallback_reason is None
        played = play_expert(env, task, load_template("alfworld"), max_steps=20)
        assert played.won and played.episode.num_steps <= 20
        assert env.fallback_reason.startswith("step budget")


def test_random_policy_runs_a_split_and_reports(games_dir, tasks, pool, tmp_path):
    args = settings(games_dir, max_episode_steps=6)
    report = evaluate(
        RandomPolicy(seed=1), tasks, args, tmp_path / "a", num_samples=2, pool=pool, progress=False
    )
    assert report["episodes"] == 12 and report["tasks"] == 6 and "pass@2" in report
    assert 0 <= report["success"] <= 12 and report["success_rate"] == report["success"] / 12
    assert report["invalid_rate"] == 0 and set(report["by_type"]) == set(TASK_TYPES.values())
    lines = read_episodes(tmp_path / "a")
    for e in lines:  # every action was one of the admissible actions shown in its prompt
        for s in e["trajectory"]:
            shown = re.search(r"admissible actions of the current situation are: \[(.*)\]", s["prompt"], re.S)
            assert f"'{s['action']}'" in shown.group(1)
    again = evaluate(
        RandomPolicy(seed=1), tasks, args, tmp_path / "b", num_samples=2, pool=pool, progress=False
    )
    assert again == report | {"local": again["local"]}
    actions = {(e["task"], e["sample"]): [s["action"] for s in e["trajectory"]] for e in lines}
    assert actions == {
        (e["task"], e["sample"]): [s["action"] for s in e["trajectory"]]
        for e in read_episodes(tmp_path / "b")
    }
    other = evaluate(RandomPolicy(seed=2), tasks[:2], args, None, pool=pool, progress=False)
    assert other["local"]["episodes"] == 2 == other["episodes"], (
        "no output_dir: nothing written, still a report"
    )


def test_resume_skips_written_episodes_and_refuses_a_changed_config(games_dir, tasks, pool, tmp_path):
    args = settings(games_dir, max_episode_steps=4)
    full = evaluate(RandomPolicy(), tasks, args, tmp_path / "full", pool=pool, progress=False)
    part = tmp_path / "part"
    evaluate(RandomPolicy(), tasks, args, part, pool=pool, progress=False)
    kept = (part / EPISODES_FILE).read_text().splitlines(keepends=True)[:2]
    (part / EPISODES_FILE).write_text("".join(kept) + kept[0][:50])  # as a kill mid-write leaves it
    resumed = evaluate(RandomPolicy(), tasks, args, part, pool=pool, progress=False)
    assert resumed["local"]["played"] == 4, "only the 4 missing episodes are played again"
    lines = (part / EPISODES_FILE).read_text().splitlines(keepends=True)
    assert lines[:2] == kept and len(lines) == 6
    assert len({(json.loads(x)["task"], json.loads(x)["sample"]) for x in lines}) == 6
    assert json.loads((part / "report.json").read_text()) == json.loads(
        (tmp_path / "full/report.json").read_text()
    )
    assert {k: v for k, v in resumed.items() if k != "local"} == {
        k: v for k, v in full.items() if k != "local"
    }
    with pytest.raises(EvalError, match=r"max_episode_steps: 4 there, 5 now"):
        evaluate(RandomPolicy(), tasks, dataclasses.replace(args, max_episode_steps=5), part, pool=pool)
    with pytest.raises(EvalError, match="policy: 'random' there, 'expert' now"):
        evaluate(ExpertPolicy(), tasks, args, part, pool=pool)
    with pytest.raises(EvalError, match="num_tasks: 6 there, 5 now"):
        evaluate(RandomPolicy(), tasks[:5], args, part, pool=pool)


def test_shards_write_their_own_files_and_fill_one_report(games_dir, tasks, pool, tmp_path):
    """Two processes' shares (run one after the other here): each its own episodes file; the report
    is complete once both are, and equals a one-process run."""
    args = settings(games_dir, max_episode_steps=3)
    one = evaluate(RandomPolicy(), tasks, args, tmp_path / "one", pool=pool, progress=False)
    first = evaluate(RandomPolicy(), tasks, args, tmp_path / "two", pool=pool, progress=False, shard=(0, 2))
    assert not first["complete"] and first["local"]["episodes"] == 3
    last = evaluate(RandomPolicy(), tasks, args, tmp_path / "two", pool=pool, progress=False, shard=(1, 2))
    assert sorted(p.name for p in (tmp_path / "two").glob("episodes*")) == [
        "episodes.rank0.jsonl",
        "episodes.rank1.jsonl",
    ]
    drop = {"local"}
    assert {k: v for k, v in last.items() if k not in drop} == {k: v for k, v in one.items() if k not in drop}


def test_model_policy_plays_the_tiny_model(tiny_model_dir, games_dir, tasks, pool, tmp_path):
    from gcd_trl.generation import HFGenerator, SamplingSettings

    gen = HFGenerator.from_pretrained(str(tiny_model_dir), SamplingSettings(max_new_tokens=8), device="cpu")
    report = evaluate(
        gen, tasks[:2], settings(games_dir, max_episode_steps=2), tmp_path, pool=pool, progress=False
    )
    assert report["episodes"] == 2 and report["mean_steps"] == 2
    lines = read_episodes(tmp_path)
    first = lines[0]["trajectory"][0]
    assert first["completion"] == gen.generate([first["prompt"]])[0].text, "greedy: the same answer again"
    if report["invalid_rate"] == 1.0:  # a random-init model writes no tags: every output invalid
        assert all(s["reason"] for e in lines for s in e["trajectory"])
    assert report["truncated_outputs"] == sum(e["truncated_outputs"] for e in lines) >= 1


def test_openai_policy_plays_through_a_real_http_server(openai_server, games_dir, tasks, pool, tmp_path):
    from gcd_trl.generation import OpenAIGenerator

    def answer(prompt, i):  # the first admissible action shown, as the agent format asks
        listed = re.search(r"admissible actions of the current situation are: \['([^']*)'", prompt)
        return f"<think>I try the first action.</think><action>{listed.group(1)}</action>"

    openai_server.answer = answer
    gen = OpenAIGenerator(openai_server.base_url, "agent-model", "GCD_TEST_NO_SUCH_KEY", concurrency=2)
    report = evaluate(
        gen, tasks[:3], settings(games_dir, max_episode_steps=3), tmp_path, pool=pool, progress=False
    )
    assert report["episodes"] == 3 and report["invalid_rate"] == 0
    assert openai_server.completions == sum(e["steps"] for e in read_episodes(tmp_path)) == 9


def test_golden_rules_are_shown_in_every_prompt(games_dir, tasks, pool, tmp_path):
    from gcd_trl.gcd.correction import FORMAT

    rules = tmp_path / "rules.json"
    rule = "Never examine the same receptacle twice in a row."
    rules.write_text(json.dumps({"format": FORMAT, "versions": [{"version": 1, "rules": [{"rule": rule}]}]}))
    args = settings(games_dir, max_episode_steps=2)
    evaluate(RandomPolicy(), tasks[:2], args, tmp_path / "out", golden_rules=rules, pool=pool, progress=False)
    steps = read_steps(tmp_path / "out" / EPISODES_FILE)
    assert len(steps) == 4 and all(rule in s["prompt"] for s in steps)


def _prepare(tmp_path, text: str, *extra: str):
    from gcd_trl.eval.setup import prepare

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(text)
    return prepare(["--config", str(cfg), *extra])


def test_bad_inputs_are_named_before_anything_loads(games_dir, tmp_path, tiny_model_dir, monkeypatch):
    from gcd_trl.config import ConfigError as InputError

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    base = f"policy: random\nenvironment: alfworld\nsplit: all\ndata_dir: {games_dir}\noutput_dir: {tmp_path}/o\n"
    ev, env, got, _ = _prepare(tmp_path, base)
    assert ev.policy == "random" and env.part == "test" and len(got) == 6
    cases = [
        (base + "polcy: model\n", r"unknown key 'polcy' \(did you mean 'policy'\?\)"),
        (base + "max_episode_steps: many\n", "key 'max_episode_steps'.*expects int"),
        (base.replace("random", "sampled"), "policy='sampled' is not one of"),
        (base.replace("random", "model"), "policy=model needs model_name_or_path"),
        (
            base.replace("random", "model") + "model_name_or_path: /no/such/dir\n",
            "model_name_or_path /no/such/dir",
        ),
        (base.replace("random", "model") + f"model_name_or_path: {games_dir}\n", "no config.json"),
        (base.replace("data_dir: ", "data_dir: /missing"), "tasks: ALFWorld games directory not found"),
        (
            base.replace("alfworld", "scienceworld"),
            r"split=all \(every game in data_dir\) applies to environment=alfworld only",
        ),
        (base + "golden_rules: /no/rules.json\n", "golden_rules file not found"),
        (base + "top_p: 0\n", "top_p=0"),
        (
            base.replace("policy: random", "policy: openai") + "model_name_or_path: m\n",
            "export OPENAI_API_KEY",
        ),
        (
            base.replace("policy: random", "policy: model")
            + f"model_name_or_path: {tiny_model_dir}\nnum_samples: 3\n",
            "temperature > 0",
        ),
    ]
    for text, pattern in cases:
        with pytest.raises(InputError, match=pattern):
            _prepare(tmp_path, text)
    with pytest.raises(InputError, match="output_dir is not set"):
        _prepare(tmp_path, base.replace(f"output_dir: {tmp_path}/o\n", ""))
    with pytest.raises(InputError, match="max_tasks=0"):
        _prepare(tmp_path, base, "--max_tasks", "0")


def test_cli_runs_and_resumes_and_report_merges_with_the_paper(games_dir, tmp_path, capsys):
    from gcd_trl.cli import main
    from gcd_trl.eval.report import read_paper

    cfg = tmp_path / "random.yaml"
    cfg.write_text(
        f"policy: random\nenvironment: alfworld\nsplit: all\ndata_dir: {games_dir}\n"
        f"output_dir: {tmp_path}/random\nmax_episode_steps: 3\nnum_envs: 2\nprogress: false\nmax_tasks: 3\n"
    )
    for _ in range(2):  # the second run finds every episode written and plays nothing
        with pytest.raises(SystemExit) as code:
            main(["eval", "--config", str(cfg), "--label", "random (ours)"])
        assert code.value.code == 0
    assert len(read_episodes(tmp_path / "random")) == 3
    with pytest.raises(SystemExit) as code:
        main(["eval", "--config", str(cfg), "--max_episode_steps", "4"])
    assert code.value.code == 2 and "max_episode_steps: 3 there, 4 now" in capsys.readouterr().err
    # a report from an L1 run, as Table 1 shows it (the split name is what places a run in a column)
    l1 = tmp_path / "l1"
    l1.mkdir()
    report = json.loads((tmp_path / "random" / "report.json").read_text())
    (l1 / "report.json").write_text(
        json.dumps(report | {"split": "L1", "label": "expert", "success_rate": 1.0})
    )
    paper = "configs/eval/paper_table1.yaml"
    assert len(read_paper(paper)) == 16
    out = tmp_path / "table.md"
    with pytest.raises(SystemExit) as code:
        main(["eval", "report", str(tmp_path / "random"), str(l1), "--paper", paper, "--out", str(out)])
    assert code.value.code == 0
    md = out.read_text()
    assert "| Qwen2.5-7B GiGPO with GCD (paper) | 94.4 | 96.0 | 92.4 | 94.3 |" in md
    assert "| expert | - | 100.0 | - | 100.0* |" in md
    assert f"| {tmp_path / 'random'} | random (ours) | alfworld | all | 3 |" in md
    with pytest.raises(SystemExit) as code:
        main(["eval", "report", str(tmp_path / "nothing"), "--out", str(out)])
    assert code.value.code == 2 and "no report.json" in capsys.readouterr().err


def test_expert_policy_answers_with_its_slot(games_dir, tasks, pool):
    """The expert is asked per pool slot: with fewer envs than episodes, slots are refilled and each
    episode still gets its own env's expert (every episode won)."""
    two = [t for t in tasks if t.task_type in (1, 2)]
    report = evaluate(
        ExpertPolicy(), two, settings(games_dir), None, num_samples=2, pool=pool, progress=False
    )
    assert report["success"] == 4 and report["invalid_rate"] == 0 and report["pass@2"] == 1.0


def test_shipped_eval_configs_parse(monkeypatch):
    """Every configs/eval/*.yaml has only known, well-typed keys; the offline ones resolve completely."""
    from pathlib import Path

    from gcd_trl.config import check_yaml
    from gcd_trl.eval.config import EVAL_DATACLASSES, parse_eval_config

    configs = sorted(p for p in Path("configs/eval").glob("*.yaml") if p.name != "paper_table1.yaml")
    assert len(configs) >= 8
    for path in configs:
        check_yaml(path, EVAL_DATACLASSES)
        text = path.read_text()
        if "policy: expert" in text or "policy: random" in text:
            ev, env = parse_eval_config(["--config", str(path)])
            assert ev.output_dir and env.part == "test" and env.max_episode_steps == 30
