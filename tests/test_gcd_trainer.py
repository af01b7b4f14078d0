"""GCD inside AgentGRPOTrainer on the real ALFWorld engine and the tiny model: judge samples join the
round with their rewards and advantages under every estimator, their metrics are logged, golden rules are
written, restored on resume and shown to the agent, and static judge rows come from the dataset."""

from __future__ import annotations

import json
import math
import random
import re

import pytest

from gcd_trl.envs.base import EnvSpec, Task
from gcd_trl.envs.pool import EnvPool
from helpers import small_run_args

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

RULE = "Never repeat an action that just produced Nothing happens."
_ADMISSIBLE = re.compile(r"admissible actions of the current situation are: \[(.*)\]\.", re.S)


@pytest.fixture(scope="module")
def alfworld_tasks(tmp_path_factory):
    from gcd_trl.envs.alfworld import task_type_of
    from gcd_trl.envs.alfworld_gen import generate_games

    games = generate_games(tmp_path_factory.mktemp("games"), 2, seed=1, task_types=(1,))
    return [Task("alfworld", split="all", game=g, task_type=task_type_of(g)).to_dict() for g in games]


@pytest.fixture(scope="module")
def pool():
    p = EnvPool(EnvSpec("alfworld"), 2)
    yield p
    p.close()


def scripted(trainer, seen_prompts, tag="think", seed=0):
    """Agent: an admissible action or a bad output. Judge (critic prompt): a boxed 0/1 verdict with advice,
    sometimes no box. Rules (suggestion prompt): one golden rule."""
    from gcd_trl.generation import Generation

    rng = random.Random(seed)
    tok = trainer.processing_class
    eos = trainer.eos_token_ids[0]

    def generate(prompts):
        out = []
        for prompt in prompts:
            seen_prompts.append(prompt)
            if "Critic" in prompt:
                verdict = rng.choice(["0", "1", None])
                box = f"<answer>\\boxed{{{verdict}}}</answer>" if verdict else "<answer>fine</answer>"
                text = f"<think>it loops</think>{box}<advise>Do not repeat useless actions.</advise>"
            elif "Golden Rule" in prompt:
                text = f"<think>common pattern</think><rule>{RULE}</rule>"
            else:
                found = _ADMISSIBLE.search(prompt)
                actions = re.findall(r"'([^']*)'", found.group(1)) if found else ["look"]
                if rng.random() < 0.6:
                    text = f"<{tag}>go on</{tag}><action>{rng.choice(actions)}</action>"
                else:
                    text = "no tags at all"
            ids = tok(text, add_special_tokens=False)["input_ids"][:12] + [eos]
            prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"][-64:]
            out.append(Generation(list(prompt_ids), ids, text, truncated=False))
        return out

    return generate


def make(model_dir, out_dir, tasks, pool, estimator="grpo", rows=(), **gcd_overrides):
    from datasets import Dataset

    from gcd_trl.gcd.args import GCDArguments
    from gcd_trl.rollout.settings import EnvArguments
    from gcd_trl.trainers.grpo import AgentGRPOTrainer
    from gcd_trl.trainers.grpo_config import AgentGRPOConfig

    rlvmr = estimator == "rlvmr"
    args = AgentGRPOConfig(
        **small_run_args(
            out_dir,
            max_tokens_per_microbatch=4096,
            save_strategy="steps",
            save_steps=1,
            advantage_estimator=estimator,
        )
    )
    env_args = EnvArguments(
        environment="alfworld",
        split="all",
        max_episode_steps=3,
        history_length=2,
        meta_reasoning=rlvmr or None,
    )
    gcd = dict(
        gcd=True,
        gcd_coef=0.5,
        judge_prompts_per_round=4,
        judge_num_generations=2,
        judge_class_balance=False,
        correction=True,
        correction_every=1,
        max_rules=2,
    )
    gcd.update(gcd_overrides)
    dataset = Dataset.from_list(
        [{**t, "kind": "episode", "prompt": None, "label": None} for t in tasks] + list(rows)
    )
    return AgentGRPOTrainer(
        str(model_dir),
        args=args,
        train_dataset=dataset,
        env_args=env_args,
        env_pool=pool,
        gcd_args=GCDArguments(**gcd),
    )


def capture_rounds(trainer):
    rounds = []
    original = trainer._make_round

    def wrapped(samples, index=0):
        rounds.append(list(samples))
        return original(samples, index)

    trainer._make_round = wrapped
    return rounds


@pytest.mark.parametrize("estimator", ["grpo", "gigpo", "rlvmr"])
def test_judge_samples_train_with_each_estimator(tiny_model_dir, alfworld_tasks, pool, tmp_path, estimator):
    import torch

    trainer = make(tiny_model_dir, tmp_path, alfworld_tasks, pool, estimator=estimator)
    prompts: list[str] = []
    trainer._generate_turn = scripted(trainer, prompts, tag="explore" if estimator == "rlvmr" else "think")
    rounds = capture_rounds(trainer)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train()
    assert len(rounds) == 2
    for samples in rounds:
        agent = [s for s in samples if s.kind == "agent"]
        judge = [s for s in samples if s.kind == "judge"]
        assert agent and judge and len(judge) % 2 == 0
        for s in judge:
            assert s.label in (0, 1)
            assert s.reward == (-0.1 if s.score is None else float(s.score == s.label))
        # group advantages: each prompt's two answers sum to zero
        for a, b in zip(judge[::2], judge[1::2]):
            assert a.prompt == b.prompt
            assert a.advantage + b.advantage == pytest.approx(0.0, abs=1e-6)
    rows = [h for h in trainer.state.log_history if "judge/prompts" in h]
    assert len(rows) == 2
    for h in rows:
        assert h["judge/prompts"] >= 1 and 0 <= h["judge/format_failure_rate"] <= 1
        assert 0 < h["judge/token_share"] < 1 and math.isfinite(h["loss"])
        assert 0 < h["judge/labelled_share"] <= 1 and h["judge/labelled_by_rule_share"] == 1.0
    assert any("judge/accuracy_bad" in h for h in rows)
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))
    # rollout files carry the judge samples, marked, readable by the records schema
    from gcd_trl.rollout.records import read_steps

    judged = read_steps(tmp_path / "rollouts", kind="judge")
    assert len(judged) == sum(s.kind == "judge" for r in rounds for s in r)
    assert all(r["label"] in (0, 1) and "judge_reward" in r for r in judged)
    assert read_steps(tmp_path / "rollouts", kind="agent")


def test_golden_rules_are_written_restored_and_shown(tiny_model_dir, alfworld_tasks, pool, tmp_path):
    trainer = make(tiny_model_dir, tmp_path, alfworld_tasks, pool)
    prompts: list[str] = []
    trainer._generate_turn = scripted(trainer, prompts)
    trainer.train()
    book = json.loads((tmp_path / "golden_rules.json").read_text())
    assert book["versions"] and book["versions"][0]["rules"][0]["rule"] == RULE
    assert book["versions"][0]["round"] == 0 and book["versions"][0]["rules"][0]["advice"]
    agent_prompts = [p for p in prompts if "ALFRED" in p]
    assert any(RULE in p for p in agent_prompts), "round 1's agent prompts hold the rule"
    assert not any(RULE in p for p in agent_prompts[:2])
    state = json.loads((tmp_path / "checkpoint-1" / "gcd_state.json").read_text())
    assert state["rules"]["versions"][0]["rules"][0]["rule"] == RULE

    # resume from checkpoint 1 in a fresh trainer: the rules are back before its first agent prompt
    resumed = make(tiny_model_dir, tmp_path, alfworld_tasks, pool, correction_every=50)
    later: list[str] = []
    resumed._generate_turn = scripted(resumed, later)
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-1"))
    first_agent = next(p for p in later if "ALFRED" in p)
    assert RULE in first_agent
    assert resumed.cotrain.task.rules.versions == state["rules"]["versions"]


def test_gcd_coef_zero_keeps_judge_out_of_the_loss(tiny_model_dir, alfworld_tasks, pool, tmp_path):
    """The model's own generation (TRL's backend): judge answers are capped at judge_max_completion_length,
    judged and logged, but with gcd_coef 0 they stay out of the loss."""
    trainer = make(
        tiny_model_dir,
        tmp_path,
        alfworld_tasks,
        pool,
        gcd_coef=0.0,
        correction=False,
        judge_max_completion_length=3,
    )
    trainer.args.max_steps = 1
    lengths = []
    original = trainer.generator.generate

    def recording(prompts):
        outs = original(prompts)
        lengths.extend(
            (p.startswith("Role: You are an expert evaluator"), len(o.completion_ids))
            for p, o in zip(prompts, outs)
        )
        return outs

    trainer.generator.generate = recording
    rounds = capture_rounds(trainer)
    trainer.train()
    assert rounds and all(s.kind == "agent" for s in rounds[0])
    assert any("judge/prompts" in h for h in trainer.state.log_history)  # judged, for the metrics
    judge_lengths = [n for is_judge, n in lengths if is_judge]
    agent_lengths = [n for is_judge, n in lengths if not is_judge]
    assert judge_lengths and max(judge_lengths) <= 3 and max(agent_lengths) > 3


def test_static_judge_rows_join_the_round(tiny_model_dir, alfworld_tasks, pool, tmp_path):
    rows = [
        {
            "env": None,
            "split": None,
            "game": None,
            "task_type": None,
            "task_name": None,
            "variation": None,
            "kind": "judge",
            "prompt": f"Critic: is action {i} good? Answer in \\boxed{{}}.",
            "label": i % 2,
        }
        for i in range(3)
    ]
    trainer = make(
        tiny_model_dir,
        tmp_path,
        alfworld_tasks,
        pool,
        rows=rows,
        static_judge_prompts_per_round=2,
        correction=False,
        judge_prompts_per_round=1,
    )
    trainer.args.max_steps = 1
    trainer._generate_turn = scripted(trainer, [])
    rounds = capture_rounds(trainer)
    trainer.train()
    static = [s for s in rounds[0] if s.kind == "judge" and s.label_source == "static"]
    assert len(static) == 2 * 2  # 2 rows x G=2
    assert trainer.cotrain.task.static_cursor == 2


def test_external_judge_labels_the_round_and_faults_fall_back(
    tiny_model_dir, alfworld_tasks, pool, tmp_path, monkeypatch
):
    """An external judge on a real OpenAI-compatible server on 127.0.0.1 labels the round's steps; server
    errors on some requests fall back to the rules, training goes on, and the counts reach the metrics. A
    second pass over the same steps is served from the disk cache (no new requests)."""
    from openai_server import Fault, OpenAIServer

    monkeypatch.setenv("JUDGE_KEY", "test-key")
    good = "<think>fine</think><answer>\\boxed{1}</answer><advise>Explore new rooms.</advise>"
    server = OpenAIServer(answer=lambda prompt, i: good).start()
    external = dict(
        judge_model="judge",
        judge_base_url=server.base_url,
        judge_api_key_env="JUDGE_KEY",
        judge_labels="both",
        judge_votes=2,
        judge_min_agree=2,
        judge_max_retries=0,
        judge_external_steps_per_round=100,
        correction=False,
        judge_cache_dir=str(tmp_path / "judge_cache"),
    )
    try:
        server.fault_for = lambda prompt, body: (
            Fault.server_error() if "now at step 1 and" in prompt else None
        )
        trainer = make(tiny_model_dir, tmp_path / "run", alfworld_tasks, pool, **external)
        trainer.args.max_steps = 1
        trainer._generate_turn = scripted(trainer, [])
        rounds = capture_rounds(trainer)
        trainer.train()
        h = next(x for x in trainer.state.log_history if "judge/prompts" in x)
        assert h["judge/external_requests"] == server.requests > 0
        assert h["judge/external_failures"] >= 1, "the injected 500s are counted"
        assert h["judge/labelled_by_external_share"] > 0
        assert h["judge/labelled_by_rule_share"] > 0, "steps whose request failed keep their rule label"
        by_external = [s for s in rounds[0] if s.kind == "judge" and s.label_source == "external"]
        assert by_external and all(s.label == 1 for s in by_external)
        logged = "".join(p.read_text() for p in (tmp_path / "run" / "rollouts").iterdir())
        assert "test-key" not in logged

        server.fault_for = lambda prompt, body: None
        again = make(tiny_model_dir, tmp_path / "again", alfworld_tasks, pool, **external)
        ext = again.cotrain.task.external
        records = [{**s.record.to_dict(), "round": 0} for s in rounds[0] if s.kind == "agent"]
        sent = server.requests
        first = ext.judge_records(records)  # the steps answered before come from the cache
        assert ext.cache_hits > 0 and server.requests - sent < len(records)
        assert all(not r["failed"] for r in first.values())
        sent, hits = server.requests, ext.cache_hits
        ext.judge_records(records)  # everything is cached now: no request at all
        assert server.requests == sent and ext.cache_hits == hits + len(first)
    finally:
        server.stop()
