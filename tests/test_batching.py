"""Round geometry (task sampling, micro-batch packing, equal counts) and the invariant that matters:
the round's gradient does not depend on how it was cut into micro-batches (real tiny model, TRL's loss)."""

from __future__ import annotations

import random

import pytest

from gcd_trl.trainers.microbatch import (
    LOSS_TYPES,
    RoundTotals,
    equalize_microbatches,
    microbatch_loss_scale,
    pack_microbatches,
    padded_tokens,
)
from gcd_trl.trainers.sampler import RoundTaskSampler, tasks_fingerprint

# ---------------------------------------------------------------------------------------------- sampler


def test_sampler_is_round_robin_over_shuffled_epochs():
    s = RoundTaskSampler(10, 5, seed=3)
    rounds = [s.next_round() for _ in range(6)]  # 3 epochs of 10 tasks
    for e in range(3):
        epoch = rounds[2 * e] + rounds[2 * e + 1]
        assert sorted(epoch) == list(range(10)), "every task once per epoch"
    assert rounds[0] + rounds[1] != rounds[2] + rounds[3], "each epoch is reshuffled"
    assert RoundTaskSampler(10, 5, seed=3).global_round(4) == rounds[4], "a pure function of (seed, round)"
    assert RoundTaskSampler(10, 5, seed=4).global_round(0) != rounds[0]
    assert RoundTaskSampler(10, 5, seed=3, shuffle=False).global_round(1) == [5, 6, 7, 8, 9]


def test_sampler_round_spanning_epochs_and_more_tasks_than_the_list():
    s = RoundTaskSampler(3, 4, seed=0)
    r0, r1, r2 = (s.global_round(r) for r in range(3))
    assert sorted(r0[:3]) == [0, 1, 2] and sorted(r0[3:] + r1[:2]) == [0, 1, 2]
    assert len(r2) == 4


def test_sampler_shards_processes():
    P, T = 4, 8
    shards = [RoundTaskSampler(13, T, seed=1, num_processes=P, process_index=p) for p in range(P)]
    for r in range(5):
        parts = [sh.local_round(r) for sh in shards]
        assert all(len(p) == T // P for p in parts)
        assert sum(parts, []) == shards[0].global_round(r), "the processes' shares make up the round"
    with pytest.raises(ValueError, match="not divisible"):
        RoundTaskSampler(13, 6, num_processes=4)


def test_sampler_state_resumes_the_same_sequence_and_refuses_other_tasks():
    a = RoundTaskSampler(7, 3, seed=5, fingerprint="abc")
    for _ in range(4):
        a.next_round()
    state = a.state_dict()
    expected = [a.next_round() for _ in range(5)]
    b = RoundTaskSampler(7, 3, seed=5, fingerprint="abc")
    b.load_state_dict(state)
    assert [b.next_round() for _ in range(5)] == expected
    with pytest.raises(ValueError, match="fingerprint"):
        RoundTaskSampler(7, 3, seed=5, fingerprint="other").load_state_dict(state)
    with pytest.raises(ValueError, match="tasks_per_round"):
        RoundTaskSampler(7, 2, seed=5, fingerprint="abc").load_state_dict(state)


def test_fingerprint_depends_on_the_task_list():
    rows = [{"env": "alfworld", "game": f"g{i}"} for i in range(3)]
    assert tasks_fingerprint(rows) == tasks_fingerprint([dict(r) for r in rows])
    assert tasks_fingerprint(rows) != tasks_fingerprint(rows[::-1])


# ---------------------------------------------------------------------------------------------- packing


def _lengths(n, seed=0):
    rng = random.Random(seed)
    return [rng.randint(5, 60) for _ in range(n)], [rng.randint(1, 20) for _ in range(n)]


@pytest.mark.parametrize("budget", [16, 100, 300, 10_000])
def test_pack_covers_every_sample_once_within_budget(budget):
    P, C = _lengths(50)
    batches = pack_microbatches(P, C, budget)
    assert sorted(i for b in batches for i in b) == list(range(50))
    for b in batches:
        assert len(b) >= 1
        assert padded_tokens(b, P, C) <= budget or len(b) == 1, "only a lone oversize sample may exceed"
    if budget >= 10_000:
        assert len(batches) == 1


def test_pack_groups_similar_lengths():
    P = [10, 50, 11, 52, 9, 49]
    C = [1] * 6
    batches = pack_microbatches(P, C, 2 * 53)
    assert sorted(map(sorted, batches)) == [[0, 2], [1, 3], [4, 5]] or all(len(b) <= 2 for b in batches)
    assert {frozenset(b) for b in batches} >= {frozenset({1, 3})}, "the two longest share a micro-batch"


def test_pack_empty():
    assert pack_microbatches([], [], 100) == []


def test_equalize_splits_before_padding():
    out = equalize_microbatches([[0, 1, 2, 3], [4]], 4)
    assert len(out) == 4 and sorted(i for b in out for i in b) == [0, 1, 2, 3, 4]
    assert all(b for b in out), "enough rows: no padding micro-batch"
    out = equalize_microbatches([[0], [1]], 4)
    assert out[:2] == [[0], [1]] and out[2:] == [[], []]
    assert equalize_microbatches([], 2) == [[], []]
    with pytest.raises(ValueError, match="exceed"):
        equalize_microbatches([[0], [1], [2]], 2)


def test_loss_scale_rejects_unknown_loss_type():
    with pytest.raises(ValueError, match="unknown loss_type"):
        microbatch_loss_scale("nope", RoundTotals(4, 10, 1, 2), 2, 5)


def test_loss_scale_token_sum_handles_fewer_tokens_than_microbatches():
    num_items, factor = microbatch_loss_scale(
        "dapo", RoundTotals(rows=5, tokens=3, num_processes=1, num_microbatches=5), 1, 1
    )
    # TRL divides by max(num_items, 1) * M / P = 5; the round's loss divides by 3 tokens
    assert num_items == 1.0 and factor == pytest.approx(5 / 3)


# ---------------------------------------------------------------------------------------------- gradient


def _trainer(model_dir, out_dir, peft=False, **overrides):
    from datasets import Dataset
    from peft import LoraConfig

    from gcd_trl.envs.base import Task
    from gcd_trl.rollout.settings import EnvArguments
    from gcd_trl.trainers.grpo import AgentGRPOTrainer
    from gcd_trl.trainers.grpo_config import AgentGRPOConfig

    kwargs = dict(output_dir=str(out_dir), use_cpu=True, bf16=False, report_to="none", num_generations=2)
    kwargs.update(
        tasks_per_round=1, max_completion_length=16, max_tokens_per_microbatch=10_000, learning_rate=1e-3
    )
    kwargs.update(
        logging_steps=1, save_strategy="no", activation_checkpointing=False, seed=0, disable_tqdm=True
    )
    kwargs.update(overrides)
    tasks = Dataset.from_list([Task("scienceworld", task_name="boil", variation=0).to_dict()])
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]) if peft else None
    return AgentGRPOTrainer(
        str(model_dir),
        args=AgentGRPOConfig(**kwargs),
        train_dataset=tasks,
        env_args=EnvArguments(environment="scienceworld"),
        peft_config=lora,
    )


def _fake_samples(trainer, n=9, seed=0):
    from gcd_trl.rollout.episode import StepRecord
    from gcd_trl.rollout.samples import AgentSample

    rng = random.Random(seed)
    vocab = trainer.model.config.vocab_size
    samples = []
    for i in range(n):
        rec = StepRecord(
            group=0,
            traj=i % 2,
            step=i,
            anchor="",
            prompt="",
            completion="",
            action="a",
            valid=True,
            reason=None,
            tag=None,
            env_reward=0.0,
            done=False,
            won=False,
        )
        prompt = [rng.randrange(3, vocab) for _ in range(rng.randint(4, 30))]
        completion = [rng.randrange(3, vocab) for _ in range(rng.randint(1, 12))]
        s = AgentSample(prompt, completion, truncated=i == 3, advantage=rng.uniform(-1.5, 1.5), record=rec)
        samples.append(s)
    if n > 5:
        samples[5].weight = 0.0  # a dropped sample carries no loss
    return samples


def _round_grad(trainer, samples, budget):
    import torch

    trainer.args.max_tokens_per_microbatch = budget
    model = trainer.model
    model.train()  # TRL's normalisers read the mode
    model.zero_grad()
    rnd = trainer._make_update(samples)
    loss = trainer._accumulate(model, rnd)
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]).clone()
    model.zero_grad()
    return len(rnd.microbatches), loss.item(), grads


@pytest.mark.parametrize(
    "overrides",
    [
        {"loss_type": "dapo"},
        {"loss_type": "grpo"},
        {"loss_type": "bnpo", "mask_truncated_completions": True},
        {"loss_type": "dr_grpo"},
        {"loss_type": "dapo", "num_iterations": 2, "beta": 0.1},
        {"loss_type": "dapo", "beta": 0.1, "peft": True},
    ],
    ids=["dapo", "grpo", "bnpo_masktrunc", "dr_grpo", "dapo_iter2_kl", "lora_kl"],
)
def test_round_gradient_does_not_depend_on_the_cut(tiny_model_dir, tmp_path, overrides):
    import torch

    trainer = _trainer(tiny_model_dir, tmp_path, **overrides)
    if overrides.get("peft"):
        trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
        assert trainable and all("lora_" in n for n in trainable)
    samples = _fake_samples(trainer)
    n_one, loss_one, g_one = _round_grad(trainer, samples, 10_000)
    n_many, loss_many, g_many = _round_grad(trainer, samples, 64)
    assert n_one == 1 and n_many >= 4
    assert g_one.abs().sum() > 0
    torch.testing.assert_close(g_many, g_one, rtol=1e-4, atol=1e-6)
    assert loss_many == pytest.approx(loss_one, rel=1e-4, abs=1e-6)


def _with_judge(trainer, samples, n=5, seed=1):
    """Add GCD judge samples (kind "judge", no env record) to a list of agent samples."""
    from gcd_trl.rollout.samples import JudgeSample

    rng = random.Random(seed)
    vocab = trainer.model.config.vocab_size
    judge = []
    for i in range(n):
        prompt = [rng.randrange(3, vocab) for _ in range(rng.randint(20, 40))]
        completion = [rng.randrange(3, vocab) for _ in range(rng.randint(2, 14))]
        judge.append(
            JudgeSample(
                prompt,
                completion,
                advantage=rng.uniform(-1.0, 1.0),
                prompt="",
                completion="",
                label=i % 2,
                label_source="rule",
                score=None,
                reward=0.0,
            )
        )
    mixed = list(samples) + judge
    random.Random(seed).shuffle(mixed)
    return mixed


@pytest.mark.parametrize("loss_type", ["dapo", "grpo", "bnpo"])
def test_mixed_round_gradient_is_agent_plus_coef_times_judge(tiny_model_dir, tmp_path, loss_type):
    """L = L_agent + gcd_coef x L_judge, each term the loss type's formula over its own samples: the mixed
    gradient equals the weighted sum of the two kinds' gradients computed alone, whatever the cut; and
    gcd_coef = 0 gives exactly the agent-only gradient."""
    import torch

    trainer = _trainer(tiny_model_dir, tmp_path, loss_type=loss_type)
    agent = _fake_samples(trainer)
    mixed = _with_judge(trainer, agent)
    judge_only = [s for s in mixed if s.kind == "judge"]
    trainer.gcd_coef = 0.5
    _, _, g_agent = _round_grad(trainer, agent, 10_000)
    _, _, g_judge_alone = _round_grad(trainer, [_as_agent(s) for s in judge_only], 10_000)
    n_one, _, g_one = _round_grad(trainer, mixed, 10_000)
    n_many, _, g_many = _round_grad(trainer, mixed, 80)
    assert n_one == 2 and n_many >= 5  # one micro-batch per kind at least
    torch.testing.assert_close(g_one, g_agent + 0.5 * g_judge_alone, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(g_many, g_one, rtol=1e-4, atol=1e-6)
    trainer.gcd_coef = 0.0
    _, _, g_zero = _round_grad(trainer, mixed, 80)
    torch.testing.assert_close(g_zero, g_agent, rtol=1e-5, atol=1e-7)


def _as_agent(sample):
    from gcd_trl.rollout.episode import StepRecord
    from gcd_trl.rollout.samples import AgentSample

    rec = StepRecord(0, 0, 0, "", "", "", "a", True, None, None, 0.0, False, False)
    return AgentSample(
        sample.prompt_ids, sample.completion_ids, sample.truncated, advantage=sample.advantage, record=rec
    )


def test_entropy_bonus_is_a_token_mean_over_the_step(tiny_model_dir, tmp_path):
    """entropy_coef adds -coef x (mean token entropy of the step): independent of the cut, and its
    gradient is the difference of the runs with and without it."""
    import torch

    trainer = _trainer(tiny_model_dir, tmp_path, loss_type="dapo", entropy_coef=0.05)
    samples = _fake_samples(trainer)
    _, loss_one, g_one = _round_grad(trainer, samples, 10_000)
    _, loss_many, g_many = _round_grad(trainer, samples, 64)
    torch.testing.assert_close(g_many, g_one, rtol=1e-4, atol=1e-6)
    assert loss_many == pytest.approx(loss_one, rel=1e-4, abs=1e-6)
    trainer._entropy_coef = 0.0
    _, loss_plain, g_plain = _round_grad(trainer, samples, 10_000)
    assert not torch.allclose(g_plain, g_one)
    # the bonus lowers the loss by coef x mean entropy (entropy > 0 for a random model)
    assert loss_one < loss_plain


def test_padding_microbatches_carry_no_gradient(tiny_model_dir, tmp_path):
    """A process with fewer samples than another's micro-batch count pads with zero-weight rows."""
    import torch

    trainer = _trainer(tiny_model_dir, tmp_path, loss_type="dapo")
    samples = _fake_samples(trainer, n=3)
    _, _, g_ref = _round_grad(trainer, samples, 10_000)
    trainer._sync_max = lambda m: m + 4  # another rank: 5 passes
    n, _, g_pad = _round_grad(trainer, samples, 10_000)
    assert n == 5
    torch.testing.assert_close(g_pad, g_ref, rtol=1e-4, atol=1e-6)


_DDP_WORKER = """
import os, sys
import torch
torch.set_num_threads(1)
sys.path.insert(0, {tests!r})
from test_batching import _fake_samples, _trainer, _with_judge

rank = int(os.environ["RANK"])
model_dir, out_dir = sys.argv[1], sys.argv[2]
result = {{}}
for case in ("dapo", "grpo", "dapo_mixed"):
    loss_type = case.split("_")[0]
    trainer = _trainer(model_dir, os.path.join(out_dir, f"{{case}}-{{rank}}"), loss_type=loss_type,
                       tasks_per_round=2, max_tokens_per_microbatch=64)
    samples = _fake_samples(trainer)
    if case.endswith("mixed"):
        trainer.gcd_coef = 0.5
        samples = _with_judge(trainer, samples)
    mine = samples[:6] if rank == 0 else samples[6:]  # unequal shares, unequal micro-batch counts
    model = trainer.accelerator.prepare_model(trainer.model)
    assert isinstance(model, torch.nn.parallel.DistributedDataParallel), type(model)
    model.train()
    rnd = trainer._make_update(mine)
    trainer._accumulate(model, rnd)
    result[case] = (len(rnd.microbatches), torch.cat([p.grad.flatten() for p in model.parameters()]))
if rank == 0:
    torch.save(result, os.path.join(out_dir, "grads.pt"))
"""


def test_round_gradient_is_the_same_split_over_two_processes(tiny_model_dir, tmp_path):
    """Two DDP processes (gloo) with unequal shares of the round give the single-process gradient: the
    loss is normalised over the whole round on all processes, and the padded micro-batch counts match;
    also for a GCD round mixing agent and judge samples."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import torch

    script = tmp_path / "worker.py"
    script.write_text(_DDP_WORKER.format(tests=str(Path(__file__).parent)))
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    cmd = [torchrun, "--standalone", "--nproc_per_node=2", str(script), str(tiny_model_dir), str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = torch.load(tmp_path / "grads.pt")
    for case in ("dapo", "grpo", "dapo_mixed"):
        trainer = _trainer(tiny_model_dir, tmp_path / case, loss_type=case.split("_")[0])
        samples = _fake_samples(trainer)
        if case.endswith("mixed"):  # GCD: agent and judge samples, unequal shares on the two ranks
            trainer.gcd_coef = 0.5
            samples = _with_judge(trainer, samples)
        _, _, g_ref = _round_grad(trainer, samples, 64)
        num_mb, g_ddp = result[case]
        assert num_mb >= 3
        torch.testing.assert_close(g_ddp, g_ref, rtol=1e-4, atol=1e-6)


def test_all_loss_types_are_known():
    assert set(LOSS_TYPES) == {"dapo", "cispo", "vespo", "bnpo", "grpo", "sapo", "luspo", "dr_grpo"}
