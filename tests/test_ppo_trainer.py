"""The paper's baselines end to end on the real ALFWorld engine (generated games) with the tiny model and a
scripted policy: PPO with its critic (warm-up, checkpoint, resume), the value-head classifier and GRPO_nthr
train a few rounds with finite losses and their metrics logged; `gcd-trl rl` picks the trainer."""

from __future__ import annotations

import math

import pytest
import torch

from gcd_trl.envs.base import EnvSpec, Task
from gcd_trl.envs.pool import EnvPool
from helpers import small_run_args

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


@pytest.fixture(scope="module")
def alfworld_tasks(tmp_path_factory):
    from gcd_trl.envs.alfworld import task_type_of
    from gcd_trl.envs.alfworld_gen import generate_games

    games = generate_games(tmp_path_factory.mktemp("games"), 3, seed=0, task_types=(1,))
    return [Task("alfworld", split="all", game=g, task_type=task_type_of(g)).to_dict() for g in games]


@pytest.fixture(scope="module")
def pool():
    p = EnvPool(EnvSpec("alfworld"), 2)
    yield p
    p.close()


def make(model_dir, out_dir, tasks, pool, **overrides):
    from datasets import Dataset

    from gcd_trl.rollout.settings import EnvArguments
    from gcd_trl.trainers.grpo_config import AgentGRPOConfig
    from gcd_trl.trainers.run import trainer_class
    from test_trainer import scripted_policy

    defaults = dict(lr_scheduler_type="constant", save_strategy="steps", save_steps=1)
    args = AgentGRPOConfig(**small_run_args(out_dir, **{**defaults, **overrides}))
    env_args = EnvArguments(environment="alfworld", split="all", max_episode_steps=3, history_length=2)
    trainer = trainer_class(args)(
        str(model_dir), args=args, train_dataset=Dataset.from_list(tasks), env_args=env_args, env_pool=pool
    )
    trainer._generate_turn = scripted_policy(trainer)
    return trainer


def rows(trainer):
    return [h for h in trainer.state.log_history if "rollout/success_rate" in h]


def check_finite(row, keys):
    for key in keys:
        assert key in row and math.isfinite(row[key]), (key, row.get(key))


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(path))


def test_ppo_rounds_warmup_checkpoint_and_resume(tiny_model_dir, alfworld_tasks, pool, tmp_path):
    from gcd_trl.trainers.ppo import AgentPPOTrainer

    out = tmp_path / "ppo"
    trainer = make(
        tiny_model_dir,
        out,
        alfworld_tasks,
        pool,
        advantage_estimator="gae",
        critic_learning_rate=1e-3,
        critic_warmup_rounds=1,
    )
    assert isinstance(trainer, AgentPPOTrainer)
    critic_init = {k: v.clone() for k, v in trainer.critic.state_dict().items()}
    trainer.train()
    logged = rows(trainer)
    assert len(logged) == 2
    for row in logged:
        check_finite(
            row,
            (
                "loss",
                "critic/value_loss",
                "critic/values_mean",
                "critic/explained_variance",
                "critic/grad_norm",
            ),
        )
        assert 0.0 <= row["critic/value_clip_fraction"] <= 1.0
    assert logged[0].get("critic/warmup") == 1.0 and "critic/warmup" not in logged[1]
    assert "entropy" not in logged[0] and "entropy" in logged[1]  # round 0 trains the critic only
    # warm-up: the actor's weights after round 0 are the initial ones, the critic's are not
    actor_init = _weights(tiny_model_dir / "model.safetensors")
    actor_1 = _weights(out / "checkpoint-1" / "model.safetensors")
    assert all(torch.equal(actor_1[k], v) for k, v in actor_init.items())
    critic_1 = _weights(out / "checkpoint-1" / "critic" / "model.safetensors")
    assert any(not torch.equal(critic_1[k], v) for k, v in critic_init.items())
    actor_2 = _weights(out / "checkpoint-2" / "model.safetensors")
    assert any(not torch.equal(actor_2[k], v) for k, v in actor_init.items())
    assert (out / "checkpoint-2" / "critic" / "optimizer.pt").is_file()

    resumed = make(
        tiny_model_dir,
        out,
        alfworld_tasks,
        pool,
        advantage_estimator="gae",
        critic_learning_rate=1e-3,
        critic_warmup_rounds=1,
    )
    loaded = {}
    original = resumed._load_optimizer_and_scheduler

    def spy(checkpoint):
        original(checkpoint)
        if checkpoint is not None:
            loaded["critic"] = {k: v.clone() for k, v in resumed.critic.state_dict().items()}
            loaded["opt_steps"] = [
                int(s["step"]) for s in resumed.critic_optimizer.state_dict()["state"].values()
            ]

    resumed._load_optimizer_and_scheduler = spy
    resumed.train(resume_from_checkpoint=str(out / "checkpoint-1"))
    assert all(torch.equal(loaded["critic"][k], v) for k, v in critic_1.items())
    assert loaded["opt_steps"] and set(loaded["opt_steps"]) == {1}  # one critic step before the checkpoint
    assert resumed.state.global_step == 2
    check_finite(rows(resumed)[-1], ("loss", "critic/value_loss", "entropy"))
    resumed.save_model(str(out / "final"))
    assert (out / "final" / "critic" / "model.safetensors").is_file()


def test_value_head_rounds(tiny_model_dir, alfworld_tasks, pool, tmp_path):
    trainer = make(
        tiny_model_dir, tmp_path, alfworld_tasks, pool, value_head_coef=1.0, value_head_learning_rate=1e-2
    )
    head_init = trainer.value_head.score.weight.detach().clone()
    trainer.train()
    logged = rows(trainer)
    assert len(logged) == 2
    for row in logged:
        check_finite(row, ("loss", "value_head/loss", "value_head/accuracy", "value_head/labelled_bad"))
        assert 0.0 <= row["value_head/accuracy"] <= 1.0
    ckpt = tmp_path / "checkpoint-2"
    assert (ckpt / "value_head.safetensors").is_file() and (ckpt / "value_head_optimizer.pt").is_file()
    # a run started from that folder picks its head up (the value SFT -> RL path)
    again = make(tiny_model_dir, tmp_path / "again", alfworld_tasks, pool, value_head_coef=1.0)
    again.value_head.load(ckpt)
    saved = _weights(ckpt / "value_head.safetensors")
    torch.testing.assert_close(again.value_head.score.weight.detach(), saved["score.weight"])
    assert not torch.equal(saved["score.weight"], head_init)  # the head trained


def test_nthr_rounds(tiny_model_dir, alfworld_tasks, pool, tmp_path):
    trainer = make(tiny_model_dir, tmp_path, alfworld_tasks, pool, nthr=True, save_strategy="no")
    trainer.train()
    logged = rows(trainer)
    assert len(logged) == 2
    for row in logged:
        check_finite(row, ("loss", "nthr/groups", "nthr/selected_token_fraction"))
    # the invalid penalty splits even an all-failing group into positive and negative step samples
    assert sum(row["nthr/groups_mixed"] for row in logged) >= 1


def test_rl_command_picks_the_trainer():
    from gcd_trl.trainers.grpo import AgentGRPOTrainer
    from gcd_trl.trainers.grpo_config import AgentGRPOConfig
    from gcd_trl.trainers.ppo import AgentPPOTrainer
    from gcd_trl.trainers.run import trainer_class
    from gcd_trl.trainers.token import AgentTokenTrainer

    base = dict(output_dir="/tmp/x", use_cpu=True, bf16=False, num_generations=2, tasks_per_round=1)
    assert trainer_class(AgentGRPOConfig(**base)) is AgentGRPOTrainer
    assert trainer_class(AgentGRPOConfig(**base, advantage_estimator="gae")) is AgentPPOTrainer
    assert trainer_class(AgentGRPOConfig(**base, nthr=True)) is AgentTokenTrainer
    assert trainer_class(AgentGRPOConfig(**base, value_head_coef=0.5)) is AgentTokenTrainer


def test_nthr_p_is_the_groups_episode_success_rate(
    tiny_model_dir, alfworld_tasks, pool, tmp_path, monkeypatch
):
    """Deng et al.'s p is the share of the group's episodes won, not of its positive step samples: 4 of 8
    episodes won, the 4 failures twice as long, gives p = 0.5 and eta = 2|0.5 - p| = 0."""
    import gcd_trl.trainers.token as token_trainer
    from gcd_trl.rollout.episode import StepRecord
    from gcd_trl.rollout.samples import AgentSample

    trainer = make(tiny_model_dir, tmp_path, alfworld_tasks, pool, nthr=True, save_strategy="no")
    seen = []
    real = token_trainer.nthr_weights
    monkeypatch.setattr(token_trainer, "nthr_weights", lambda *a, **k: seen.append(k) or real(*a, **k))
    ids = trainer.processing_class("<think>x</think><action>look</action>", add_special_tokens=False)[
        "input_ids"
    ]
    samples = []
    for traj in range(8):
        won = traj < 4
        length = 2 if won else 4
        for step in range(length):
            last = step == length - 1
            record = StepRecord(
                0, traj, step, f"obs {step}", "p", "c", "look", True, None, "think", 0.0, last, won and last
            )
            samples.append(AgentSample([1, 2, 3], list(ids), advantage=1.0 if won else -1.0, record=record))
    trainer._nthr(samples)
    positive_share = 8 / (8 + 16)
    assert len(seen) == 1 and seen[0]["p"] == 0.5 != positive_share
    assert trainer._metrics["train"]["nthr/eta_mean"][-1] == 0.0
