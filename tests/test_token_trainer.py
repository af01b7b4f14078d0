"""Per-token advantages, NTHR features, the value-head loss and the PPO critic's loss inside the trainer, on
the tiny model with hand-made step samples (no env): (B, C) advantages reach TRL's loss, and the critic's
and the value head's gradients do not depend on how the step is cut into micro-batches."""

from __future__ import annotations

import dataclasses
import random

import pytest
import torch

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def _trainer(model_dir, out_dir, peft=False, **overrides):
    from datasets import Dataset
    from peft import LoraConfig

    from gcd_trl.envs.base import Task
    from gcd_trl.rollout.settings import EnvArguments
    from gcd_trl.trainers.grpo_config import AgentGRPOConfig
    from gcd_trl.trainers.run import trainer_class

    kwargs = dict(output_dir=str(out_dir), use_cpu=True, bf16=False, report_to="none", num_generations=2)
    kwargs.update(tasks_per_round=1, max_completion_length=16, max_tokens_per_microbatch=10_000)
    kwargs.update(learning_rate=1e-3, logging_steps=1, save_strategy="no", activation_checkpointing=False)
    kwargs.update(seed=0, disable_tqdm=True, loss_type="dapo")
    kwargs.update(overrides)
    args = AgentGRPOConfig(**kwargs)
    tasks = Dataset.from_list([Task("scienceworld", task_name="boil", variation=0).to_dict()])
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]) if peft else None
    return trainer_class(args)(
        str(model_dir),
        args=args,
        train_dataset=tasks,
        env_args=EnvArguments(environment="scienceworld"),
        peft_config=lora,
    )


def _samples(trainer, n=9, seed=0):
    from gcd_trl.rollout.episode import StepRecord
    from gcd_trl.rollout.samples import AgentSample

    rng = random.Random(seed)
    vocab = trainer.model.config.vocab_size
    out = []
    for i in range(n):
        traj = i % 3
        rec = StepRecord(
            group=0,
            traj=traj,
            step=i // 3,
            anchor=f"room {i % 2}",
            prompt="",
            completion="",
            action="a",
            valid=i != 4,
            reason=None,
            tag=None,
            env_reward=0.0,
            done=False,
            won=traj == 0,
        )
        prompt = [rng.randrange(3, vocab) for _ in range(rng.randint(4, 30))]
        completion = [rng.randrange(3, vocab) for _ in range(rng.randint(2, 12))]
        adv = rng.uniform(0.2, 1.5) * (1 if traj == 0 else -1)
        out.append(AgentSample(prompt, completion, truncated=i == 7, advantage=adv, record=rec))
    return out


def _grads(trainer, samples, budget, params=None):
    trainer.args.max_tokens_per_microbatch = budget
    model = trainer.model
    model.train()
    model.zero_grad()
    update = trainer._make_update(samples)
    loss = trainer._accumulate(model, update)
    params = list(model.parameters()) if params is None else params
    grads = torch.cat([p.grad.flatten() for p in params if p.grad is not None]).clone()
    model.zero_grad()
    return len(update.microbatches), float(loss), grads


def test_token_advantages_reach_trls_loss(tiny_model_dir, tmp_path):
    """Weights of 1 give the scalar-advantage gradient; weights of 0 on the negative samples' tokens give
    the gradient of those samples with advantage 0; any cut gives the same."""
    trainer = _trainer(tiny_model_dir, tmp_path, nthr=True)
    samples = _samples(trainer)
    _, _, g_scalar = _grads(trainer, samples, 10_000)
    for s in samples:
        s.token_weights = torch.ones(len(s.completion_ids))
    _, _, g_ones = _grads(trainer, samples, 10_000)
    torch.testing.assert_close(g_ones, g_scalar, rtol=1e-5, atol=1e-7)
    for s in samples:
        s.token_weights = torch.zeros(len(s.completion_ids)) if s.advantage < 0 else None
    n_one, _, g_damped = _grads(trainer, samples, 10_000)
    n_many, _, g_damped_cut = _grads(trainer, samples, 64)
    assert n_one == 1 and n_many >= 3
    for s in samples:
        s.token_weights = None
    zeroed = [dataclasses.replace(s, advantage=0.0) if s.advantage < 0 else s for s in samples]
    _, _, g_zero = _grads(trainer, zeroed, 10_000)
    torch.testing.assert_close(g_damped, g_zero, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(g_damped_cut, g_zero, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(g_damped, g_scalar)


def test_nthr_features_are_the_policys_hidden_states_and_errors(tiny_model_dir, tmp_path):
    trainer = _trainer(tiny_model_dir, tmp_path, nthr=True, temperature=0.7)
    samples = _samples(trainer, n=4)
    vocab = sorted({t for s in samples for t in s.completion_ids})
    feats, forwards = trainer._completion_features(samples, vocab)
    assert forwards == 1
    model = trainer.model
    for s, (h, g) in zip(samples, feats):
        ids = torch.tensor([s.prompt_ids + s.completion_ids])
        with torch.no_grad():
            out = model(input_ids=ids, output_hidden_states=True)
        start = len(s.prompt_ids) - 1
        positions = slice(start, start + len(s.completion_ids))
        torch.testing.assert_close(h, out.hidden_states[-1][0, positions], rtol=1e-4, atol=1e-5)
        probs = torch.softmax(out.logits[0, positions] / 0.7, -1)[:, vocab]
        onehot = torch.zeros_like(probs)
        onehot[torch.arange(len(s.completion_ids)), [vocab.index(t) for t in s.completion_ids]] = 1
        torch.testing.assert_close(g, onehot - probs, rtol=1e-4, atol=1e-6)
    trainer._nthr(samples)  # one mixed group: both signs present
    weighted = {id(s) for s in samples if s.token_weights is not None}
    assert weighted == {id(s) for s in samples if s.advantage < 0 and not s.truncated}
    assert trainer._metrics["train"]["nthr/groups_mixed"] == [1.0]


def test_value_head_loss_joins_the_actor_loss(tiny_model_dir, tmp_path):
    trainer = _trainer(tiny_model_dir, tmp_path, value_head_coef=1.0)
    samples = _samples(trainer)
    for i, s in enumerate(samples):
        if i % 3 != 2:
            s.label = int(s.record.won)
    params = list(trainer.model.parameters())
    n_one, loss_with, g_with = _grads(trainer, samples, 10_000, params)
    head_grad = trainer.value_head.score.weight.grad.clone()
    trainer.value_head.zero_grad()
    n_many, loss_cut, g_cut = _grads(trainer, samples, 64, params)
    head_grad_cut = trainer.value_head.score.weight.grad.clone()
    trainer.value_head.zero_grad()
    assert n_one == 1 and n_many >= 3
    torch.testing.assert_close(g_cut, g_with, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(head_grad_cut, head_grad, rtol=1e-4, atol=1e-6)
    assert head_grad.abs().sum() > 0
    trainer.args.value_head_coef = 0.0
    _, loss_without, g_without = _grads(trainer, samples, 10_000, params)
    assert not torch.allclose(g_with, g_without)  # the BCE gradient reaches the shared backbone
    stats = trainer._vh_stats.tolist()
    # three passes saw the 6 labelled steps (3 good from the won trajectory, 3 bad), each pass adding
    # the class-balanced BCE (about log 2 for a fresh head) as its last entry
    assert stats[0] == 9 and stats[2] == 9
    assert stats[4] / 3 == pytest.approx(loss_with - loss_without, rel=0.2)


def test_critic_loss_does_not_depend_on_the_cut(tiny_model_dir, tmp_path):
    trainer = _trainer(tiny_model_dir, tmp_path, advantage_estimator="gae", critic_learning_rate=1e-3)
    samples = _samples(trainer)
    per_sample = trainer._advantages(samples)
    assert len(per_sample) == len(samples)
    masked = trainer.mask_truncated_completions
    kept = [s.token_advantages for s in samples if not (s.truncated and masked)]
    flat = torch.cat([torch.as_tensor(a) for a in kept])
    assert float(flat.mean()) == pytest.approx(0.0, abs=1e-5)  # whitened over the loss-carrying tokens
    assert float(flat.std()) == pytest.approx(1.0, abs=1e-3)
    for s in samples:  # gamma = lam = 1: returns are the step's score on every token
        score = 10.0 * s.record.won - 0.1 * (not s.record.valid)
        assert s.returns.tolist() == pytest.approx([score] * len(s.completion_ids), abs=1e-5)
    grads = []

    def capture():
        grads.append(torch.cat([p.grad.flatten() for p in trainer.critic.parameters()]).clone())

    trainer.critic_optimizer.step = capture
    _grads(trainer, samples, 10_000)
    _grads(trainer, samples, 64)
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-6)
    m = trainer._metrics["train"]
    for key in ("critic/value_loss", "critic/value_clip_fraction", "critic/explained_variance"):
        assert key in m
    assert m["critic/value_loss"][0] == pytest.approx(m["critic/value_loss"][1], rel=1e-5)


def test_lora_actor_with_critic_value_head_and_nthr(tiny_model_dir, tmp_path):
    """A LoRA actor: only adapter weights get the actor's gradient (policy + value-head BCE through the
    adapted backbone), the critic stays a full model and trains; NTHR reads the adapted policy."""
    trainer = _trainer(
        tiny_model_dir, tmp_path, peft=True, advantage_estimator="gae", value_head_coef=1.0, beta=0.1
    )
    samples = _samples(trainer)
    trainer._advantages(samples)
    for s in samples:
        s.label = int(s.record.won)
    model = trainer.model
    critic_grads = []
    trainer.critic_optimizer.step = lambda: critic_grads.extend(p.grad for p in trainer.critic.parameters())
    _grads(trainer, samples, 64)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert trainer.value_head.score.weight.grad.abs().sum() > 0
    assert critic_grads and all(g is not None for g in critic_grads)
    assert trainer._metrics["train"]["critic/value_loss"]
    nthr = _trainer(tiny_model_dir, tmp_path / "nthr", peft=True, nthr=True)
    nthr._nthr(_samples(nthr))
    assert nthr._metrics["train"]["nthr/groups_mixed"] == [1.0]
