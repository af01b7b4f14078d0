"""Issue 8: the baselines follow the reference code the paper's baselines ran (verl-agent, and RLVMR's copy
of it with the RLVMR additions). Each test pins one reference rule on a constructed example; its docstring
names the reference file and function. docs/fidelity.md lists every setting and each deliberate difference.

Reference paths: verl-agent = github.com/langfengQ/verl-agent, RLVMR = github.com/Tencent/DigitalHuman
(folder RLVMR/code), both read through the project's code search.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from gcd_trl.advantages import AdvantageConfig, compute_advantage_terms, records_to_batch
from gcd_trl.advantages.gigpo import discounted_returns
from gcd_trl.advantages.rlvmr import mr_rewards
from gcd_trl.envs.base import StepResult, Task
from gcd_trl.prompts import load_template
from gcd_trl.rollout.episode import Episode
from gcd_trl.rollout.parse import parse_output

REPO = Path(__file__).resolve().parents[1]
ADMISSIBLE = ["go to desk 1", "go to cabinet 1", "look"]
TASK = Task(env="alfworld", split="all", game="/games/pick_and_place_simple-Mug-None-Desk-1/trial_1")


def result(obs, admissible=ADMISSIBLE, **kw):
    return StepResult(
        observation=obs, task_description="put a mug on desk.", admissible_actions=list(admissible), **kw
    )


def play(outputs, answers, *, template="alfworld", meta=False, traj=0, **episode_kw):
    """Records of one episode: `answers[i]` is the env's StepResult for output i (ignored if invalid)."""
    ep = Episode(
        TASK, result("Start."), load_template(template), meta_reasoning=meta, traj=traj, **episode_kw
    )
    for text, answer in zip(outputs, answers):
        sent = ep.apply(text)
        ep.observe(None if sent is None else answer)
    return [s.to_dict() for s in ep.steps]


# --------------------------------------------------------------------------- 1. reward scale


def test_a_win_pays_ten_and_the_invalid_penalty_is_one_percent_of_it():
    """verl-agent agent_system/environments/env_package/alfworld/envs.py `compute_reward`: 10 * won (RLVMR's
    sciworld/envs.py the same); the trainer subtracts invalid_action_penalty_coef (0.1) per invalid step.
    Step records carry `won`; the estimators turn it into 10 * won, as if the records said so."""
    win = play(
        ["<think>a</think><action>look</action>"] * 2, [result("Room."), result("Won.", done=True, won=True)]
    )
    loss = play(["no tags", "<think>a</think><action>look</action>"], [None, result("Room.")], traj=1)
    records = win + loss
    batch = records_to_batch(records, "grpo")
    np.testing.assert_array_equal(batch.episode_reward, [10.0, 10.0, 0.0, 0.0])
    explicit = [dict(r, episode_reward=10.0 if r["traj"] == 0 else 0.0) for r in records]
    for estimator in ("grpo", "gigpo"):
        a = compute_advantage_terms(records, AdvantageConfig(estimator)).total
        b = compute_advantage_terms(explicit, AdvantageConfig(estimator)).total
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)
    # mean norm shows the raw scores: group mean (10 + 10 + (0 - 0.1) + 0) / 4 = 4.975
    adv = compute_advantage_terms(records, AdvantageConfig("grpo", norm="mean")).total
    np.testing.assert_allclose(adv, [5.025, 5.025, -5.075, -4.975])
    # the ratio is what the scale changes: with a win worth 1 the same penalty weighs ten times more
    std10 = compute_advantage_terms(records, AdvantageConfig("grpo")).total
    std1 = compute_advantage_terms(records, AdvantageConfig("grpo", success_reward=1.0)).total
    assert std1[2] - std1[3] < std10[2] - std10[3] < 0  # the invalid step's extra push down, relative
    assert abs((std10[2] - std10[3]) / (std10[0] - std10[3])) == pytest.approx(0.1 / 10, rel=0.01)


def test_trainer_cli_and_rollout_records_agree(tmp_path):
    """The trainer builds its AdvantageConfig from AgentGRPOConfig (AdvantageConfig.from_args) and writes
    StepRecord dicts; `gcd-trl advantages` with its defaults re-scores such a file to the same numbers."""
    from gcd_trl.commands import advantages as cli
    from gcd_trl.trainers.grpo_config import AgentGRPOConfig

    train = AgentGRPOConfig(
        output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none", advantage_estimator="gigpo"
    )
    config = AdvantageConfig.from_args(train)
    assert (config.success_reward, config.step_reward, config.estimator) == (10.0, "success", "gigpo")
    assert config.epsilon == AdvantageConfig().epsilon  # TRL's clip epsilon is not ours
    records = play(
        ["<think>a</think><action>look</action>", "<think>a</think><action>go to desk 1</action>"],
        [result("Room."), result("Won.", done=True, won=True)],
    ) + play(["<think>a</think><action>dance</action>", "oops"], [result("Nothing happens."), None], traj=1)
    expected = compute_advantage_terms(records, config).total
    src, out = tmp_path / "round.jsonl", tmp_path / "adv.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in records))
    parser = argparse.ArgumentParser()
    cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(
        ["advantages", "--advantage_estimator", "gigpo", "--input", str(src), "--output", str(out)]
    )
    assert args.func(args) == 0
    got = [json.loads(line)["advantage"] for line in out.read_text().splitlines()]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)


# ----------------------------------------------------------------------- 2. what is invalid


@pytest.mark.parametrize(
    ("text", "valid"),
    [
        ("<think>x</think><action>fly to the moon</action>", True),  # not admissible: still valid
        ("<think>x</think><action>look</action>", True),
        ("<action>look</action><think>x</think>", True),  # <think> anywhere
        ("<think>x</think> look", False),  # no action tags
        ("<action>look</action>", False),  # no <think>
        ("<think>先看看</think><action>look</action>", False),  # Chinese characters
    ],
)
def test_only_format_errors_are_invalid(text, valid):
    """verl-agent env_package/alfworld/projection.py `alfworld_projection`: valids[i] = 1 once
    <action>...</action> is found, reset to 0 without <think>...</think> or with a character in
    U+4E00-U+9FFF; admissibility is not checked. (It sends the last 30 characters of a tagless output to the
    env, which answers "Nothing happens."; gcd-trl never sends a format error and shows that answer.)"""
    assert parse_output(text, ADMISSIBLE).valid is valid


@pytest.fixture(scope="module")
def alfworld_game(tmp_path_factory):
    from gcd_trl.envs.alfworld import task_type_of
    from gcd_trl.envs.alfworld_gen import generate_games

    (game,) = generate_games(tmp_path_factory.mktemp("games"), 1, seed=0, task_types=(1,))
    return Task("alfworld", split="all", game=game, task_type=task_type_of(game))


def test_real_alfworld_answers_an_inadmissible_action_with_nothing_happens(alfworld_game):
    """verl-agent env_manager.py `AlfWorldEnvironmentManager.step` passes every projected action to
    `envs.step`; the TextWorld engine answers an unknown one "Nothing happens." and nothing changes. Here on
    the real engine: the default rule sends it (valid, admissible=False, no penalty); the option
    inadmissible_action=invalid never sends it; a format error never reaches the env under either rule."""
    from gcd_trl.envs.alfworld import AlfWorldEnv

    env = AlfWorldEnv()
    try:
        first = env.reset(alfworld_game)
        ep = Episode(alfworld_game, first, load_template("alfworld"))
        sent = ep.apply("<think>try</think><action>fly to the moon</action>")
        assert sent == "fly to the moon"
        answer = env.step(sent)
        ep.observe(answer)
        assert answer.observation == "Nothing happens." and not answer.done
        assert sorted(answer.admissible_actions) == sorted(first.admissible_actions)  # state unchanged
        rec = ep.steps[0]
        assert (
            rec.valid
            and rec.admissible is False
            and rec.action == "fly to the moon"
            and rec.env_reward == 0.0
        )
        assert ep.apply("no tags at all") is None  # format error: the env is not stepped
        ep.observe(None)
        assert ep.observation == "Nothing happens." and not ep.steps[1].valid

        strict = Episode(
            alfworld_game, env.reset(alfworld_game), load_template("alfworld"), inadmissible_action="invalid"
        )
        assert strict.apply("<think>try</think><action>fly to the moon</action>") is None
        strict.observe(None)
        assert strict.steps[0].reason == "not_admissible" and strict.steps[0].admissible is False
    finally:
        env.close()


def test_collector_sends_inadmissible_actions_and_counts_them(alfworld_game):
    """The run-level rule (EnvArguments.inadmissible_action, default env) reaches every episode of a round;
    EpisodeSummary.inadmissible counts the actions the env answered although they were not admissible."""
    from gcd_trl.envs.base import EnvSpec
    from gcd_trl.envs.pool import EnvPool
    from gcd_trl.generation import Generation
    from gcd_trl.rollout.collector import RolloutCollector
    from gcd_trl.rollout.settings import EnvArguments

    script = [
        "<think>a</think><action>fly to the moon</action>",
        "no tags",
        "<think>a</think><action>look</action>",
    ]

    def generate(prompts):
        return [Generation([1], [2], script[min(p.count("[Observation"), 2)], False) for p in prompts]

    pool = EnvPool(EnvSpec("alfworld"), 1)
    try:
        for rule, sent_inadmissible in (("env", 1), ("invalid", 0)):
            env_args = EnvArguments(split="all", max_episode_steps=3, inadmissible_action=rule)
            rollout = RolloutCollector(pool, env_args, generate=generate).collect([alfworld_game], 2)
            (first, *_) = rollout.episodes
            assert [e.inadmissible for e in rollout.episodes] == [sent_inadmissible] * 2
            assert first.invalid == 2 - sent_inadmissible
            records = [s.record for s in rollout.samples]
            assert all(r.action is None for r in records if not r.valid)  # invalid never reached the env
    finally:
        pool.close()


# --------------------------------------------------------------- 3. GiGPO step rewards (ScienceWorld)


def _scienceworld_records():
    """Two ScienceWorld-like trajectories: env_reward is the score delta / 100 (our adapter's reward)."""
    won = [(0.25, False), (0.0, False), (0.5, False), (0.25, True)]  # scores 25, 25, 75, 100: won
    lost = [(0.25, False), (0.5, False), (0.0, False)]  # 75 points, not won
    out = []
    for traj, steps in enumerate((won, lost)):
        for i, (delta, w) in enumerate(steps):
            out.append(
                dict(group=0, traj=traj, step=i, anchor=f"s{i}", valid=True, env_reward=delta, won=w, done=w)
            )
    return out


def test_gigpo_step_rewards_are_the_success_reward_only():
    """RLVMR env_package/sciworld/envs.py `compute_reward`: reward = 10 * won at every step (0 until the
    winning step), and gigpo/core_gigpo.py `compute_step_discounted_returns` discounts those env rewards;
    the score deltas never reach GiGPO. gigpo_step_reward=dense keeps them as an option (x success_reward)."""
    records = _scienceworld_records()
    batch = records_to_batch(records, "gigpo")
    np.testing.assert_array_equal(batch.step_reward, [0, 0, 0, 10, 0, 0, 0])
    np.testing.assert_allclose(
        discounted_returns(batch, 0.95), [10 * 0.95**3, 10 * 0.95**2, 10 * 0.95, 10, 0, 0, 0]
    )
    dense = records_to_batch(records, config=AdvantageConfig("gigpo", step_reward="dense"))
    np.testing.assert_allclose(dense.step_reward, [2.5, 0, 5, 2.5, 2.5, 5, 0])
    # a failed trajectory's 75 points earn its steps nothing: with norm "mean" its first step sits 10*0.95^3/2
    # below the winner's in their anchor group (dense: 9.156 vs 7.25, far closer)
    success = compute_advantage_terms(records, AdvantageConfig("gigpo", norm="mean")).step
    dense_adv = compute_advantage_terms(
        records, AdvantageConfig("gigpo", norm="mean", step_reward="dense")
    ).step
    assert success[4] == pytest.approx(-10 * 0.95**3 / 2) and dense_adv[4] == pytest.approx(
        (7.25 - 9.1559375) / 2
    )


# ----------------------------------------------------------------------------- 4. RLVMR format


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("<planning>step 1: go</planning><action>look</action>", None),
        ("<planning></planning><action>look</action>", "empty_meta_tag"),
        ("<explore>a</explore><action>look</action><monitor>b</monitor>", "multiple_meta_tags"),
        ("<action>look</action><monitor>b</monitor>", "meta_tag_after_action"),
        ("<monitor>a</monitor><action>look</action><action>look</action>", "multiple_action_tags"),
        ("<reflection>a</reflection><action>fly</action>", None),  # inadmissible but well-formed
    ],
)
def test_rlvmr_format_exactly_one_nonempty_tag_before_the_action(text, reason):
    """RLVMR env_package/alfworld/projection.py `alfworld_projection_rlvmr`: one <action> block
    (findall == 1), skill_count == 1 over the whole output, the tag's content non-empty and before
    "<action>", no Chinese characters; `action_available` (admissibility) is reported, not required."""
    out = parse_output(text, ADMISSIBLE, meta_reasoning=True)
    assert out.reason == reason and out.valid is (reason is None)


def _mr(records, **kw):
    reward, _, _ = mr_rewards(records_to_batch(records, "rlvmr"), **kw)
    return reward.tolist()


def test_rlvmr_reflection_compares_raw_action_text_and_pays_the_first_step():
    """RLVMR rlvmr/core_rlvmr.py `process_trajectory_rlvmr_rewards`: <reflection> is paid when the previous
    step failed (`is_action_valid and action_available` false) and `re.findall('<action>(.*?)</action>')` of
    the two outputs differ; at step 0 the "previous action" is "" with prev_valid False, so it is paid."""
    ok = result("Room.")
    records = play(
        [
            "<reflection>start</reflection><action>look</action>",  # first step -> 1
            "<explore>x</explore><monitor>y</monitor><action>go to desk 1</action>",  # invalid (two tags)
            "<reflection>retry</reflection><action>go to desk 1</action>",  # raw text as the invalid -> 0
            "<monitor>on</monitor><action>dance</action>",  # valid, not admissible: sent, a failed step
            "<reflection>oops</reflection><action>look</action>",  # after an inadmissible step, new text -> 1
            "<reflection>again</reflection><action>go to cabinet 1</action>",  # previous step fine -> 0
        ],
        [ok, None, ok, result("Nothing happens."), ok, ok],
        template="alfworld_rlvmr",
        meta=True,
    )
    assert [r["valid"] for r in records] == [True, False, True, True, True, True]
    assert records[1]["action"] is None and records[1]["raw_action"] == "go to desk 1"
    assert records[3]["admissible"] is False
    assert _mr(records) == [1, 0, 0, 0, 1, 0]
    assert _mr(records, reflection_at_first_step=False) == [0, 0, 0, 0, 1, 0]
    # the whole estimator sees the same rule through its config
    terms = compute_advantage_terms(records, AdvantageConfig("rlvmr", reflection_at_first_step=False))
    assert terms.step_signal.tolist() == [0, 0, 0, 0, 1, 0]


def test_rlvmr_explore_compares_raw_text_of_earlier_valid_steps():
    """`process_trajectory_rlvmr_rewards`: <explore> earns its reward unless an earlier step with
    is_action_valid wrote the same findall(<action>) text (so "Look" after "look" is new)."""
    ok = result("Room.")
    records = play(
        [
            "<explore>a</explore><action>look</action>",  # new -> 1
            "<explore>b</explore><action>Look</action>",  # different raw text -> 1
            "<explore>c</explore><action>look</action>",  # repeat -> 0
        ],
        [ok, ok, ok],
        template="alfworld_rlvmr",
        meta=True,
    )
    assert [r["action"] for r in records] == ["look"] * 3  # the env got the admissible spelling each time
    assert _mr(records) == [1, 1, 0]


def test_rlvmr_template_shows_full_history_and_last_three_outputs():
    """RLVMR agent_system/environments/env_manager.py `build_text_obs`: ALFWorld shows every past
    (observation, action) (history_length = len(buffer)) and, with meta_think, the last min(3, n) full
    outputs; ScienceWorld every action plus the last 2 observations. verl-agent's default is 2 pairs."""
    from gcd_trl.rollout.collector import resolve_history
    from gcd_trl.rollout.settings import EnvArguments

    def resolved(env_args, name):
        h = resolve_history(env_args, name)
        return h.history_length, h.older_actions, h.reasoning_history

    assert resolved(EnvArguments(), "alfworld_rlvmr") == (-1, False, 3)
    assert resolved(EnvArguments(environment="scienceworld"), "scienceworld_rlvmr") == (2, True, 3)
    assert resolved(EnvArguments(), "alfworld") == (2, False, 0)
    assert resolved(EnvArguments(history_length=4, reasoning_history=1), "alfworld_rlvmr") == (4, False, 1)
    outputs = [f"<monitor>step {i}</monitor><action>look</action>" for i in range(1, 6)]
    ep = Episode(
        TASK,
        result("obs 0"),
        load_template("alfworld_rlvmr"),
        meta_reasoning=True,
        history_length=-1,
        reasoning_history=3,
    )
    for i, text in enumerate(outputs, start=1):
        ep.apply(text)
        ep.observe(result(f"obs {i}"))
    prompt = ep.prompt()
    assert prompt.count("[Observation") == 5 + 3
    assert (
        "output: '<monitor>step 3</monitor>" in prompt and "output: '<monitor>step 2</monitor>" not in prompt
    )


# ------------------------------------------------------------------------------- 5. paper recipes


def _recipes():
    return sorted((REPO / "configs" / "rl").glob("*qwen2.5*.yaml"))


def test_paper_recipes_reproduce_the_reference_settings(monkeypatch, tmp_path):
    """RLVMR examples/{grpo,gigpo,rlvmr}_trainer/run_{alfworld,sciworld}.sh and verl/trainer/config/
    ppo_trainer.yaml: lr 1e-6, ppo_mini_batch_size 256 (x rollout.n = 1, so 256 step samples per optimizer
    step), entropy_coeff 0.001, kl_loss_coef 0.01 low_var_kl, clip 0.2, invalid_action_penalty_coef 0.1,
    16 tasks x group 8, max_steps 30, gamma 0.95, step_advantage_w 1.0, mean_std_norm."""
    from gcd_trl.trainers.fidelity import fidelity_summary
    from gcd_trl.trainers.grpo_config import parse_rl_config

    monkeypatch.setenv("ALFWORLD_DATA", str(tmp_path))
    recipes = _recipes()
    assert len(recipes) == 12
    for path in recipes:
        train, env, _, _ = parse_rl_config(["--config", str(path), "--bf16", "false", "--use_vllm", "false"])
        summary = fidelity_summary(train, env)
        assert summary["differs_from_reference"] == "nothing", (path.name, summary["differs_from_reference"])
        assert (summary["success_reward"], summary["invalid_penalty"], summary["ppo_mini_batch_size"]) == (
            10.0,
            0.1,
            256,
        )
        assert (summary["entropy_coef"], summary["beta"], summary["inadmissible_action"]) == (
            0.001,
            0.01,
            "env",
        )
        history = summary["prompt"]
        if env.environment == "alfworld":
            assert history["history_length"] == "all"
        else:
            assert history["history_length"] == 2 and history["older_actions"]
        assert history["reasoning_history"] == (3 if train.advantage_estimator == "rlvmr" else 0)


def test_config_check_prints_the_resolved_reference_settings(monkeypatch, tmp_path, capsys):
    from gcd_trl.commands.config import run_check

    monkeypatch.setenv("ALFWORLD_DATA", str(tmp_path))
    model = tmp_path / "model"  # config check, like rl, needs the model (offline: a saved folder)
    model.mkdir()
    (model / "config.json").write_text("{}")
    path = REPO / "configs" / "rl" / "scienceworld_gigpo_qwen2.5-1.5b.yaml"
    assert (
        run_check(
            argparse.Namespace(file=str(path), all=False, overrides=["--model_name_or_path", str(model)])
        )
        == 0
    )
    out = capsys.readouterr().out
    fidelity = out[out.index("\nfidelity:\n") :]
    for line in (
        "success_reward: 10.0",
        "invalid_penalty: 0.1",
        "ppo_mini_batch_size: 256",
        "entropy_coef: 0.001",
        "gigpo_step_reward: success",
        "invalid_rule: format errors only",
        "mini_batches: '256 step samples per optimizer step",
        "kl: beta=0.01",
        "differs_from_reference: nothing",
    ):
        assert line in fidelity, line
    # an override that departs from the references is named
    assert (
        run_check(
            argparse.Namespace(
                file=str(path),
                all=False,
                overrides=["--success_reward", "1", "--model_name_or_path", str(model)],
            )
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "differs_from_reference:\n    success_reward:\n      here: 1.0\n      reference: 10.0" in out
