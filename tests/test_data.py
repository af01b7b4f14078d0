"""The SFT data builders on the real ALFWorld engine (generated games): agent data round-trips through the
RL collector's prompt code, builders are deterministic, judge labels follow the rules, the CLI checks
its input first."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from gcd_trl.data.agent import (
    AgentSFTConfig,
    build_agent_sft,
    dedup_rows,
    oversample_factors,
    oversample_rows,
)
from gcd_trl.data.io import load_rows, save_rows, save_steps
from gcd_trl.envs.alfworld import task_type_of
from gcd_trl.envs.alfworld_gen import generate_games
from gcd_trl.envs.base import EnvSpec, Task
from gcd_trl.envs.pool import EnvPool
from gcd_trl.generation import Generation
from gcd_trl.rollout.collector import RolloutCollector
from gcd_trl.rollout.records import read_steps
from gcd_trl.rollout.settings import EnvArguments
from openai_server import Fault, openai_server_fixture  # noqa: F401 (the fixture)


@pytest.fixture(scope="module")
def tasks(tmp_path_factory) -> list[Task]:
    out = tmp_path_factory.mktemp("data_games")
    games = generate_games(out, 3, seed=5, task_types=(1, 2, 3))
    return [Task(env="alfworld", split="gen", game=g, task_type=task_type_of(g)) for g in games]


def _env_args(**kw) -> EnvArguments:
    env = EnvArguments(environment="alfworld", prompt_template="alfworld_compact", **kw)
    env.meta_reasoning = bool(env.meta_reasoning)
    return env


@pytest.fixture(scope="module")
def built(tasks):
    cfg = AgentSFTConfig(think="short", recovery_episodes=1, perturb_prob=0.3, seed=3, oversample_max=3)
    return build_agent_sft(tasks, _env_args(), cfg, progress=False)


def _scripted(answers: dict[str, str]):
    """A generate() that answers each prompt with the completion recorded for it."""

    def generate(prompts: list[str]) -> list[Generation]:
        return [Generation([], [], answers[p], False) for p in prompts]

    return generate


def test_agent_rows_are_the_prompts_rl_builds(tasks, built):
    """Replaying each played episode's completions through the RL collector (real env pool) asks for
    exactly the prompts the SFT rows hold, step by step, expert and recovery episodes alike."""
    env_args = _env_args(max_episode_steps=50)
    rows_by_episode: dict[str, dict[int, str]] = {}
    for r in built.rows:
        rows_by_episode.setdefault(r["episode"], {})[r["step"]] = r["messages"][0]["content"]
    steps_by_episode: dict[str, list[dict]] = {}
    for s in built.steps:
        steps_by_episode.setdefault(s["episode"], []).append(s)
    assert {s["source"] for s in built.steps} == {"expert", "recovery"}
    assert any(s["perturbation"] for s in built.steps), "a recovery episode made no mistake"
    checked = 0
    with EnvPool(EnvSpec("alfworld"), 1) as pool:
        for episode, steps in steps_by_episode.items():
            task = next(t for t in tasks if t.key == steps[0]["task"])
            answers = {s["prompt"]: s["completion"] for s in steps}
            collector = RolloutCollector(pool, env_args, generate=_scripted(answers))
            rollout = collector.collect([task], 1)
            played = [s.record for s in rollout.samples]
            assert [p.prompt for p in played] == [s["prompt"] for s in steps]
            assert [p.completion for p in played] == [s["completion"] for s in steps]
            for rec in played:  # every kept row of this episode holds the prompt RL showed at that step
                if rec.step in rows_by_episode.get(episode, {}):
                    assert rows_by_episode[episode][rec.step] == rec.prompt
                    checked += 1
    assert checked >= 20


def test_rows_label_every_state_with_the_expert_action(built):
    rows = built.rows
    assert rows and all(
        r["messages"][0]["role"] == "user" and r["messages"][1]["role"] == "assistant" for r in rows
    )
    for r in rows:
        completion = r["messages"][1]["content"]
        assert completion.startswith("<think>") and completion.endswith(f"<action>{r['action']}</action>")
        assert r["action"] in r["messages"][0]["content"]  # an admissible action, listed in the prompt
    recovery = [r for r in rows if r["off_expert_path"]]
    assert recovery, "no recovery rows"
    assert any("Nothing happens." in r["messages"][0]["content"] for r in recovery)
    assert built.summary["rows"] == len(rows)
    assert built.summary["dedup_removed"] > 0  # recovery episodes start on the expert's path


def test_agent_builder_is_deterministic_across_workers(tasks, built, tmp_path):
    cfg = AgentSFTConfig(
        think="short", recovery_episodes=1, perturb_prob=0.3, seed=3, oversample_max=3, workers=2
    )
    again = build_agent_sft(tasks, _env_args(), cfg, progress=False)
    assert again.rows == built.rows
    assert again.steps == built.steps
    a = save_rows(built.rows, tmp_path / "a")
    b = save_rows(again.rows, tmp_path / "b")
    assert a.read_bytes() == b.read_bytes()
    assert load_rows(tmp_path / "a") == built.rows
    other = build_agent_sft(
        tasks[:1], _env_args(), AgentSFTConfig(recovery_episodes=1, seed=4), progress=False
    )
    assert [s["perturbation"] for s in other.steps] != [
        s["perturbation"] for s in built.steps if s["task"] == tasks[0].key
    ]


def test_agent_builder_does_not_depend_on_where_the_games_are(tasks, built, tmp_path):
    """Perturbations are seeded by the game's task and trial folders, not its absolute path: the same
    games copied to another folder give the same rows (a checkout elsewhere rebuilds the same data)."""
    moved = []
    for t in tasks:
        game = Path(t.game)
        copy = tmp_path / "elsewhere" / game.parent.name / game.name
        shutil.copytree(game, copy)
        moved.append(Task(env="alfworld", split="gen", game=str(copy), task_type=t.task_type))
    cfg = AgentSFTConfig(think="short", recovery_episodes=1, perturb_prob=0.3, seed=3, oversample_max=3)
    again = build_agent_sft(moved, _env_args(), cfg, progress=False)

    def strip(rows):
        return [{k: v for k, v in r.items() if k not in ("task", "episode")} for r in rows]

    assert any(s["perturbation"] for s in built.steps)
    assert strip(again.rows) == strip(built.rows)
    assert [s["perturbation"] for s in again.steps] == [s["perturbation"] for s in built.steps]
    assert {t.seed_key for t in moved} == {t.seed_key for t in tasks}
    assert {t.key for t in moved}.isdisjoint(t.key for t in tasks)


def test_policy_episodes_are_replayed_and_labelled_by_the_expert(tasks, built, tmp_path):
    """DAgger: a policy's completions (here a recovery episode's, written as `gcd-trl eval` episodes) are
    replayed on the real engine; every state they reach is a row with the prompt the policy saw there and
    the expert's action, and only those episodes are played."""
    from gcd_trl.data.agent import read_policy_episodes

    by_episode: dict[str, list[dict]] = {}
    for s in built.steps:
        by_episode.setdefault(s["episode"], []).append(s)
    played = next(
        v
        for v in by_episode.values()
        if sum(bool(s["perturbation"]) for s in v) >= 2
        and any(not s["valid"] or s["admissible"] is False for s in v)
    )
    elsewhere = "alfworld:/elsewhere/game"
    lines = [
        {"task": played[0]["task"], "trajectory": played},
        {"task": elsewhere, "trajectory": [dict(played[0], task=elsewhere)]},
    ]
    eval_dir = tmp_path / "eval"
    eval_dir.mkdir()
    (eval_dir / "episodes.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    policy = read_policy_episodes([str(eval_dir)], [t.key for t in tasks])
    assert list(policy) == [played[0]["task"]] and len(policy[played[0]["task"]][0]) == len(played)

    cfg = AgentSFTConfig(think="short", seed=3, dedup=False, policy_completions=policy)
    result = build_agent_sft(tasks, _env_args(), cfg, progress=False)
    assert {r["source"] for r in result.rows} == {"policy"}
    assert [r["messages"][0]["content"] for r in result.rows] == [s["prompt"] for s in played]
    assert [r["action"] for r in result.rows] == [s["expert_action"] for s in played]
    first = next(i for i, s in enumerate(played) if s["perturbation"])
    assert [r["off_expert_path"] for r in result.rows] == [i > first for i in range(len(played))]
    mistakes = sum(bool(s["perturbation"]) for s in played)
    for s in result.steps:  # only what did nothing is a construction "bad" for the judge builder
        assert s["perturbation"] == ("policy" if not s["valid"] or s["admissible"] is False else None)
    assert any(s["perturbation"] for s in result.steps)
    assert result.summary["policy_episodes"] == 1 and result.summary["expert_episodes"] == 0
    assert result.summary["policy_steps_off_expert"] == mistakes

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"task": "x"}\n')
    with pytest.raises(ValueError, match=r"--policy_episodes .*bad.jsonl:1: missing field"):
        read_policy_episodes([str(bad)], [t.key for t in tasks])
    with pytest.raises(ValueError, match="none of the 2 episodes is for one of the 1 selected tasks"):
        read_policy_episodes([str(eval_dir)], [tasks[1].key if tasks[1].key != played[0]["task"] else "z"])


def test_cli_knows_every_perturbation():
    from gcd_trl.commands import data as command
    from gcd_trl.data import agent

    assert command.PERTURBATIONS == agent.PERTURBATIONS


def test_dedup_and_oversampling():
    def row(prompt, action):
        return {
            "messages": [{"role": "user", "content": prompt}],
            "action": action,
            "verb": action.split()[0],
        }

    rows = [row("p1", "go to a"), row("p1", "go to a"), row("p2", "go to b"), row("p1", "take x from a")]
    kept, removed = dedup_rows(rows)
    assert removed == 1 and [r["action"] for r in kept] == ["go to a", "go to b", "take x from a"]
    many = [row(f"g{i}", "go to a") for i in range(16)] + [row("t", "take x from a"), row("o", "open a")] * 2
    factors = oversample_factors(many, 3)
    assert factors == {"go": 1, "take": 3, "open": 3}  # sqrt(16 / 2) = 2.8 -> 3
    out, added = oversample_rows(many, 3)
    assert added == 8 and sum(r["verb"] == "take" for r in out) == 6
    assert oversample_rows(many, 1)[1] == 0


def test_meta_reasoning_rows_use_the_rlvmr_tags(tasks):
    env = EnvArguments(environment="alfworld", prompt_template="alfworld_rlvmr_compact", meta_reasoning=True)
    res = build_agent_sft(
        tasks[:1], env, AgentSFTConfig(think="short", recovery_episodes=1, seed=1), progress=False
    )
    completions = [r["messages"][1]["content"] for r in res.rows]
    assert completions[0].startswith("<planning>")
    assert all(
        c.split(">", 1)[0][1:] in ("planning", "explore", "reflection", "monitor") for c in completions
    )
    assert "Plan: " in res.rows[1]["messages"][0]["content"]


def test_think_from_an_openai_compatible_endpoint(tasks, openai_server):
    from gcd_trl.gcd.external import ExternalJudge

    openai_server.answer = lambda prompt, i: "Because the mug may be here."
    judge = ExternalJudge(model="m", base_url=openai_server.base_url, votes=1, min_agree=1, max_retries=0)
    res = build_agent_sft(
        tasks[:1], _env_args(), AgentSFTConfig(think="endpoint"), endpoint=judge, progress=False
    )
    assert all(
        r["messages"][1]["content"].startswith("<think>Because the mug may be here.</think>")
        for r in res.rows
    )
    assert openai_server.requests >= len(res.rows)
    # a failing endpoint falls back to the template, counted
    openai_server.fault_for = lambda prompt, body: Fault.server_error()
    judge2 = ExternalJudge(model="m2", base_url=openai_server.base_url, votes=1, min_agree=1, max_retries=0)
    res2 = build_agent_sft(
        tasks[:1], _env_args(), AgentSFTConfig(think="endpoint"), endpoint=judge2, progress=False
    )
    assert res2.rows and res2.summary["rationales"]["endpoint_fallback"] == len(res2.rows)
    assert all("<think>" in r["messages"][1]["content"] for r in res2.rows)


# ---- judge data ------------------------------------------------------------------------------------------
def _step(step, anchor, action, *, expert=None, perturbation=None, won=False, valid=True, episode="e"):
    return {
        "group": 0,
        "traj": 0,
        "task": "alfworld:g",
        "episode": episode,
        "step": step,
        "anchor": anchor,
        "prompt": f"Task: put a mug in the sink.\nNow: {anchor}\nActions: '{action}'",
        "completion": f"<think>x</think><action>{action}</action>",
        "action": action if valid else None,
        "valid": valid,
        "won": won,
        "expert_action": expert,
        "perturbation": perturbation,
    }


def test_judge_labels_follow_the_rules_then_the_construction():
    from gcd_trl.data.judge import JudgeSFTConfig, build_judge_sft
    from gcd_trl.gcd.judge import parse_judgement
    from gcd_trl.gcd.labels import rule_labels

    traj = [
        _step(0, "A", "go to desk 1", expert="go to desk 1"),  # A recurs at step 3: rule says bad
        _step(1, "B", "go to bed 1", expert="take mug 1 from desk 1", perturbation="irrelevant"),
        _step(2, "C", "go to desk 1", expert="go to desk 1"),  # unlabelled by rule: the expert's, good
        _step(3, "A", "look", expert="take mug 1 from desk 1", perturbation="premature_finish"),
        _step(4, "D", "go to sink 1", expert="take mug 1 from desk 1", valid=False, perturbation="invalid"),
        _step(5, "D", "take mug 1 from desk 1", expert="take mug 1 from desk 1"),
        _step(6, "E", "put mug 1 in/on sink 1", expert="put mug 1 in/on sink 1", won=True),
    ]
    rules = rule_labels(traj)
    assert rules == [0, None, None, None, 0, None, 1]
    res = build_judge_sft(traj, JudgeSFTConfig(good_share=None), progress=False)
    by_step = {r["step"]: r for r in res.rows}
    assert set(by_step) == set(range(7))
    expected = {0: 0, 1: 0, 2: 1, 3: 0, 4: 0, 5: 1, 6: 1}
    assert {s: r["label"] for s, r in by_step.items()} == expected
    for s, rule in enumerate(rules):
        if rule is not None:
            assert by_step[s]["label"] == rule and by_step[s]["label_source"] == "rule"
        else:
            assert by_step[s]["label_source"] == "construction"
    assert (
        res.summary["rule_construction_disagreements"] == 1
    )  # step 0: an expert action the rule calls a loop
    for r in res.rows:
        messages = r["messages"]
        assert messages[0]["role"] == "user" and "Agent Response" in messages[0]["content"]
        judgement = parse_judgement(messages[1]["content"])
        assert judgement.score == r["label"]
        assert judgement.advise
        assert (judgement.action is not None) == (r["label"] == 0 and r["step"] != 0)
    assert by_step[1]["messages"][1]["content"].count("<action>take mug 1 from desk 1</action>") == 1
    # the construction's label can win instead: step 0 (the expert's action) is then good
    res = build_judge_sft(
        traj, JudgeSFTConfig(good_share=None, label_priority="construction"), progress=False
    )
    assert {r["step"]: r["label"] for r in res.rows} == {**expected, 0: 1}


def test_judge_balance_is_reported_and_configurable():
    from gcd_trl.data.judge import JudgeSFTConfig, build_judge_sft

    traj = [_step(i, f"S{i}", f"go to x {i}", expert=f"go to x {i}") for i in range(12)]
    traj += [_step(12 + i, f"T{i}", "look", expert="go to y", perturbation="irrelevant") for i in range(3)]
    res = build_judge_sft(traj, JudgeSFTConfig(good_share=0.5, seed=1), progress=False)
    assert res.summary["labelled_before_balance"] == {"good": 12, "bad": 3}
    assert (res.summary["good"], res.summary["bad"]) == (3, 3)
    res = build_judge_sft(traj, JudgeSFTConfig(good_share=0.75, seed=1), progress=False)
    assert (res.summary["good"], res.summary["bad"]) == (9, 3)
    res_again = build_judge_sft(traj, JudgeSFTConfig(good_share=0.75, seed=1), progress=False)
    assert res_again.rows == res.rows


def test_judge_builder_reads_the_agent_builders_steps(built, tmp_path):
    from gcd_trl.data.judge import JudgeSFTConfig, build_judge_sft

    save_steps(built.steps, tmp_path)
    records = read_steps(tmp_path / "steps")
    assert len(records) == len(built.steps)
    res = build_judge_sft(records, JudgeSFTConfig(critic_template="critic_compact"), progress=False)
    assert res.summary["good"] == res.summary["bad"] > 0
    kinds = set(res.summary["reasons"])
    assert kinds & {"irrelevant", "repeat", "invalid", "premature_finish"}


# ---- command line ----------------------------------------------------------------------------------------
def _cli(argv: list[str]) -> int:
    from gcd_trl.cli import main

    with pytest.raises(SystemExit) as exc:
        main(argv)
    return int(exc.value.code)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--games", "/nonexistent/games"], "--games /nonexistent/games: no such directory"),
        (["--games", ".", "--prompt_template", "nope_template"], "--prompt_template"),
        (["--games", ".", "--recovery_episodes", "-1"], "--recovery_episodes must be >= 0"),
        (["--games", ".", "--task_types", "9"], "--task_types must be in 1-6"),
        (["--games", ".", "--think", "endpoint"], "--endpoint_model"),
        ([], "one of --games DIR or --split"),
    ],
)
def test_agent_cli_rejects_bad_input_first(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # "--games ." is an empty folder, wherever the suite runs
    code = _cli(["data", "agent-sft", "--output_dir", str(tmp_path / "o"), *argv])
    assert code == 2
    assert message in capsys.readouterr().err


def test_cli_builds_agent_and_judge_data(tasks, tmp_path, capsys):
    games = str(Path(tasks[0].game).parents[1])
    out = tmp_path / "agent"
    argv = ["--games", games, "--max_tasks", "1", "--output_dir", str(out), "--quiet", "--think", "short"]
    assert _cli(["data", "agent-sft", *argv, "--template", "alfworld_compact"]) == 0  # an old spelling
    summary = json.loads(capsys.readouterr().out)
    assert summary["rows"] == len(load_rows(out)) and summary["words"] > 0
    assert json.loads((out / "summary.json").read_text())["rows"] == summary["rows"]
    jout = tmp_path / "judge"
    assert _cli(["data", "judge-sft", "--steps", str(out / "steps"), "--out", str(jout), "--quiet"]) == 0
    jsummary = json.loads(capsys.readouterr().out)
    assert jsummary["rows"] == len(load_rows(jout))
    assert _cli(["data", "judge-sft", "--steps", str(tmp_path / "no.jsonl"), "--output_dir", str(jout)]) == 2
    assert "--steps" in capsys.readouterr().err
    bad = str(tmp_path / "no_episodes.jsonl")
    assert (
        _cli(["data", "agent-sft", *argv[:4], "--output_dir", str(tmp_path / "p"), "--policy_episodes", bad])
        == 2
    )
    assert f"--policy_episodes {bad}: no such file" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()


def test_bad_tokenizer_fails_before_any_episode(tasks, tmp_path, capsys):
    games = str(Path(tasks[0].game).parents[1])
    out = str(tmp_path / "o")
    assert _cli(["data", "agent-sft", "--games", games, "--output_dir", out, "--tokenizer", "/no/tok"]) == 2
    assert "--tokenizer /no/tok: cannot load a tokenizer" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_absent_perturbation_names_a_receptacle_type_the_room_lacks():
    import random

    from gcd_trl.data.agent import _absent_entity_action
    from gcd_trl.envs.alfworld import type_names

    admissible = ["go to shelf 1", "go to drawer 2", "take pen 2 from shelf 1", "look"]
    rng = random.Random(0)
    receptacles, objects = type_names()
    for _ in range(20):
        action = _absent_entity_action(rng, "take pen 2 from shelf 1", admissible)
        assert action.endswith(" 1 from shelf 1") and action.startswith("take ")
        thing = action[len("take ") : -len(" 1 from shelf 1")]
        assert thing in objects and thing != "pen" and action not in admissible
        place = _absent_entity_action(rng, "go to drawer 2", admissible)[len("go to ") : -len(" 1")]
        assert place in receptacles and place not in {"shelf", "drawer"}
    assert _absent_entity_action(rng, "look", admissible) is None  # nothing to swap
