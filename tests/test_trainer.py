"""AgentGRPOTrainer end to end on the real engines (generated ALFWorld games, ScienceWorld's JVM) with a
tiny random model: rounds train with each estimator, metrics are logged, invalid outputs never reach an
env, and a resumed run plays the same next tasks as the uninterrupted one."""

from __future__ import annotations

import json
import math
import random
import re
import shutil
from pathlib import Path

import pytest

from gcd_trl.envs.base import EnvSpec, Task
from gcd_trl.envs.pool import EnvPool
from helpers import small_run_args, tiny_rl_config, write_config

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

ROLLOUT_METRICS = (
    "rollout/success_rate",
    "rollout/episode_length",
    "rollout/invalid_rate",
    "rollout/inadmissible_rate",
    "rollout/repeated_action_rate",
    "rollout/samples",
    "rollout/tokens",
    "rollout/truncated_rate",
    "rollout/aborted_episodes",
    "rollout/pool_restarts",
    "advantages/mean",
    "advantages/std",
    "advantages/min",
    "advantages/max",
    "time/generation",
    "time/env",
    "time/backward",
)


class SpyPool(EnvPool):
    """An EnvPool that checks every action it is asked to play against the slot's admissible list."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.admissible: dict[int, list[str] | None] = {}
        self.sent: list[str] = []
        self.not_admissible: list[tuple[int, str]] = []

    def _remember(self, results):
        for slot, r in results.items():
            self.admissible[slot] = r.admissible_actions
        return results

    def reset(self, tasks):
        return self._remember(super().reset(tasks))

    def step(self, actions):
        for slot, action in actions.items():
            self.sent.append(action)
            allowed = self.admissible.get(slot)
            if allowed is not None and action not in allowed:
                self.not_admissible.append((slot, action))
        return self._remember(super().step(actions))


@pytest.fixture(scope="module")
def alfworld_tasks(tmp_path_factory):
    from gcd_trl.envs.alfworld import task_type_of
    from gcd_trl.envs.alfworld_gen import generate_games

    games = generate_games(tmp_path_factory.mktemp("games"), 3, seed=0, task_types=(1,))
    return [Task("alfworld", split="all", game=g, task_type=task_type_of(g)).to_dict() for g in games]


@pytest.fixture(scope="module")
def alfworld_pool():
    pool = SpyPool(EnvSpec("alfworld"), 2)  # fewer envs than episodes: finished slots are refilled
    yield pool
    pool.close()


def make_trainer(
    model_dir, out_dir, tasks, pool, environment="alfworld", meta_reasoning=None, eval_tasks=None, **overrides
):
    from datasets import Dataset

    from gcd_trl.rollout.settings import EnvArguments
    from gcd_trl.trainers.grpo import AgentGRPOTrainer
    from gcd_trl.trainers.grpo_config import AgentGRPOConfig

    args = AgentGRPOConfig(**small_run_args(out_dir, **overrides))
    env_args = EnvArguments(
        environment=environment,
        split="all" if environment == "alfworld" else "L0",
        max_episode_steps=3,
        history_length=2,
        meta_reasoning=meta_reasoning,
    )
    return AgentGRPOTrainer(
        str(model_dir),
        args=args,
        train_dataset=Dataset.from_list(tasks),
        env_args=env_args,
        env_pool=pool,
        eval_dataset=Dataset.from_list(eval_tasks) if eval_tasks else None,
    )


_ADMISSIBLE = re.compile(r"admissible actions of the current situation are: \[(.*)\]\.", re.S)


def scripted_policy(trainer, tag="think", p_valid=0.6, seed=0, fallback_actions=("look around", "inventory")):
    """A stand-in for the model's sampling: an admissible action (read from the prompt; ScienceWorld lists
    none, so one of `fallback_actions`) or a bad output."""
    from gcd_trl.rollout.collector import Generation

    rng = random.Random(seed)
    tok = trainer.processing_class
    eos = trainer.eos_token_ids[0]

    def generate(prompts):
        ids = (
            trainer._tokenize_prompts([[{"role": "user", "content": p}] for p in prompts])[0]
            if prompts
            else []
        )
        out = []
        for prompt, prompt_ids in zip(prompts, ids):
            found = _ADMISSIBLE.search(prompt)
            actions = re.findall(r"'([^']*)'", found.group(1)) if found else list(fallback_actions)
            if actions and rng.random() < p_valid:
                text = f"<{tag}>I look around.</{tag}><action>{rng.choice(actions)}</action>"
            else:
                text = rng.choice(["<action>fly to the moon</action>", "no tags at all", "<action></action>"])
            completion = tok(text, add_special_tokens=False)["input_ids"] + [eos]
            out.append(Generation(list(prompt_ids), completion, text, truncated=False))
        return out

    return generate


def capture_samples(trainer):
    seen = []
    original = trainer._advantages

    def wrapped(samples):
        seen.append(list(samples))
        return original(samples)

    trainer._advantages = wrapped
    return seen


def metric_rows(trainer):
    return [h for h in trainer.state.log_history if "rollout/success_rate" in h]


def check_rounds(trainer, rounds, episodes_per_round):
    rows = metric_rows(trainer)
    assert len(rows) == rounds
    for h in rows:
        for key in ROLLOUT_METRICS:
            assert key in h and math.isfinite(h[key]), (key, h.get(key))
        assert math.isfinite(h["loss"])
        assert h["rollout/episodes"] == episodes_per_round
        assert 0.0 <= h["rollout/success_rate"] <= 1.0
        assert 1 <= h["rollout/episode_length"] <= 3
        assert h["rollout/samples"] >= episodes_per_round
        assert 0.0 <= h["rollout/invalid_rate"] <= 1.0
        assert 0.0 <= h["rollout/inadmissible_rate"] <= 1.0 - h["rollout/invalid_rate"] + 1e-9
        assert h["advantages/min"] - 1e-9 <= h["advantages/mean"] <= h["advantages/max"] + 1e-9
        assert h["time/generation"] > 0 and h["time/backward"] > 0
        assert h["rollout/aborted_episodes"] == 0


def test_model_generation_rounds_grpo(tiny_model_dir, alfworld_tasks, alfworld_pool, tmp_path):
    """TRL's own generation path (transformers generate): the random model writes mostly invalid text."""
    trainer = make_trainer(
        tiny_model_dir, tmp_path, alfworld_tasks, alfworld_pool, advantage_estimator="grpo", max_steps=1
    )
    sent_before = len(alfworld_pool.sent)
    seen = capture_samples(trainer)
    trainer.train()
    check_rounds(trainer, rounds=1, episodes_per_round=4)
    samples = [s for rnd in seen for s in rnd]
    for s in samples:
        assert s.prompt_ids and 1 <= len(s.completion_ids) <= 16
        assert s.truncated == (s.completion_ids[-1] not in trainer.eos_token_ids)
    assert {s.record.group for s in samples} == {0, 1} and {s.record.traj for s in samples} == {0, 1}
    valid = sum(s.record.valid for s in samples)
    assert len(alfworld_pool.sent) - sent_before == valid, "only valid outputs are played"
    assert not alfworld_pool.not_admissible


@pytest.mark.parametrize("estimator", ["grpo", "gigpo", "rlvmr"])
def test_scripted_rounds_each_estimator(tiny_model_dir, alfworld_tasks, alfworld_pool, tmp_path, estimator):
    """A policy that mixes admissible actions and bad outputs: envs are stepped, advantages differ, the
    model moves, and no invalid output reaches an env."""
    import torch

    rlvmr = estimator == "rlvmr"
    trainer = make_trainer(
        tiny_model_dir,
        tmp_path,
        alfworld_tasks,
        alfworld_pool,
        advantage_estimator=estimator,
        meta_reasoning=rlvmr or None,
        max_steps=1,
    )
    trainer._generate_turn = scripted_policy(trainer, tag="explore" if rlvmr else "think")
    seen = capture_samples(trainer)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    sent_before = len(alfworld_pool.sent)
    trainer.train()
    check_rounds(trainer, rounds=1, episodes_per_round=4)
    samples = [s for rnd in seen for s in rnd]
    valid = [s for s in samples if s.record.valid]
    invalid = [s for s in samples if not s.record.valid]
    assert valid and invalid
    assert all(s.record.action is None and s.record.reason for s in invalid)
    assert len(alfworld_pool.sent) - sent_before == len(valid)
    assert not alfworld_pool.not_admissible, "an action outside the admissible list reached an env"
    rows = metric_rows(trainer)
    assert any(h["advantages/std"] > 0 for h in rows)
    assert any(h["rollout/invalid_rate"] > 0 for h in rows)
    off_list = sum(s.record.valid and s.record.admissible is False for s in samples)
    assert rows[0]["rollout/inadmissible_rate"] == pytest.approx(off_list / len(samples))
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters())), "no update"
    # the round's step records are on disk with their advantages, as `gcd-trl advantages` reads them
    dumped = [json.loads(line) for f in sorted((tmp_path / "rollouts").glob("*.jsonl")) for line in f.open()]
    assert len(dumped) == len(samples)
    assert sorted(r["advantage"] for r in dumped) == pytest.approx(sorted(s.advantage for s in samples))
    assert {"group", "traj", "step", "anchor", "valid", "reason", "tag", "won"} <= set(dumped[0])


def train_recording_rounds(model_dir, out_dir, tasks, pool, resume=None, **overrides):
    """Train a scripted-policy trainer (resuming from `resume` if given); (the trainer, the task lists of
    the rounds it played)."""
    trainer = make_trainer(model_dir, out_dir, tasks, pool, **overrides)
    trainer._generate_turn = scripted_policy(trainer)
    played = []
    original = trainer.task_sampler.next_round

    def recording():
        round_tasks = original()
        played.append(round_tasks)
        return round_tasks

    trainer.task_sampler.next_round = recording
    trainer.train(resume_from_checkpoint=resume)
    return trainer, played


def test_resume_plays_the_same_task_sequence(tiny_model_dir, alfworld_tasks, alfworld_pool, tmp_path):
    """Uninterrupted: steps 0,1 play round 0 (num_iterations=2), step 2 plays round 1. Resuming from the
    checkpoint after step 1 (mid-round) replays round 0 and then round 1; from step 2, round 1."""
    common = dict(tasks_per_round=1, num_iterations=2, max_steps=3, save_strategy="steps", save_steps=1)

    def run(out, resume=None):
        return train_recording_rounds(tiny_model_dir, out, alfworld_tasks, alfworld_pool, resume, **common)

    trainer_a, seq_a = run(tmp_path / "a")
    assert len(seq_a) == 2 and trainer_a.task_sampler.round == 2
    assert seq_a == [trainer_a.task_sampler.local_round(0), trainer_a.task_sampler.local_round(1)]
    state1 = json.loads((tmp_path / "a" / "checkpoint-1" / "task_sampler.json").read_text())
    state2 = json.loads((tmp_path / "a" / "checkpoint-2" / "task_sampler.json").read_text())
    assert state1["round"] == 0 and state2["round"] == 1  # checkpoint 1 is mid-round: replay round 0

    trainer_b, seq_b = run(tmp_path / "a", resume=str(tmp_path / "a" / "checkpoint-1"))
    assert seq_b == seq_a and trainer_b.state.global_step == 3
    _, seq_c = run(tmp_path / "a", resume=str(tmp_path / "a" / "checkpoint-2"))
    assert seq_c == seq_a[1:]


def test_checkpoint_from_other_tasks_is_refused(tiny_model_dir, alfworld_tasks, alfworld_pool, tmp_path):
    trainer = make_trainer(
        tiny_model_dir,
        tmp_path,
        alfworld_tasks,
        alfworld_pool,
        tasks_per_round=1,
        max_steps=1,
        save_strategy="steps",
        save_steps=1,
    )
    trainer._generate_turn = scripted_policy(trainer)
    trainer.train()
    other = make_trainer(
        tiny_model_dir, tmp_path, alfworld_tasks[:2], alfworld_pool, tasks_per_round=1, max_steps=2
    )
    with pytest.raises(ValueError, match="task sampler state does not match"):
        other.train(resume_from_checkpoint=str(tmp_path / "checkpoint-1"))


def test_scienceworld_rounds(tiny_model_dir, tmp_path):
    from gcd_trl.envs.scienceworld import variations

    tasks = [
        Task(
            "scienceworld", split="L0/train", task_name=name, variation=variations(name, "train")[0]
        ).to_dict()
        for name in ("find-living-thing", "test-conductivity")
    ]
    pool = SpyPool(EnvSpec("scienceworld", jvm_heap="512m"), 2)
    try:
        trainer = make_trainer(
            tiny_model_dir,
            tmp_path,
            tasks,
            pool,
            environment="scienceworld",
            advantage_estimator="gigpo",
            max_steps=1,
        )
        trainer._generate_turn = scripted_policy(trainer, p_valid=0.5)
        seen = capture_samples(trainer)
        trainer.train()
    finally:
        pool.close()
    check_rounds(trainer, rounds=1, episodes_per_round=4)
    samples = seen[0]
    assert len(pool.sent) == sum(s.record.valid for s in samples), "invalid outputs are never sent"
    assert {s.record.group for s in samples} == {0, 1}
    assert all(s.record.anchor for s in samples)


def test_trainer_rejects_bad_inputs(tiny_model_dir, alfworld_tasks, alfworld_pool, tmp_path):
    with pytest.raises(ValueError, match="environment='scienceworld'"):
        make_trainer(tiny_model_dir, tmp_path, alfworld_tasks, alfworld_pool, environment="scienceworld")
    with pytest.raises(ValueError, match="empty"):
        make_trainer(tiny_model_dir, tmp_path, [], alfworld_pool)


# ------------------------------------------------------------------------------------------ the command


def test_rl_command_fails_fast_before_loading_a_model(tmp_path):
    from gcd_trl.config import ConfigError as InputError
    from gcd_trl.trainers.run import prepare

    games_dir = str(tmp_path / "nope")
    base = dict(environment="alfworld", split="all", use_cpu=True, bf16=False, output_dir=str(tmp_path / "o"))
    cfg = write_config(
        tmp_path / "a.yaml", model_name_or_path=str(tmp_path / "missing-model"), data_dir=games_dir, **base
    )
    with pytest.raises(InputError, match="model_name_or_path"):
        prepare(["--config", cfg])
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    cfg = write_config(tmp_path / "b.yaml", model_name_or_path=str(model_dir), data_dir=games_dir, **base)
    with pytest.raises(InputError, match="nope"):
        prepare(["--config", cfg])
    cfg = write_config(
        tmp_path / "c.yaml", model_name_or_path=str(model_dir), data_dir=games_dir, task_per_round=3, **base
    )
    with pytest.raises(InputError, match="task_per_round"):
        prepare(["--config", cfg])
    with pytest.raises(InputError, match="hub_token"):
        prepare(
            [
                "--config",
                write_config(
                    tmp_path / "d.yaml", model_name_or_path=str(model_dir), data_dir=games_dir, **base
                ),
                "--hub_token",
                "secret",
            ]
        )


def test_rl_command_trains_and_saves(tmp_path, tiny_model_dir, alfworld_tasks, capsys):
    """`gcd-trl rl --config FILE --key value`: a one-round run on generated games, model saved."""
    from pathlib import Path

    from gcd_trl.cli import main

    games_dir = str(Path(alfworld_tasks[0]["game"]).parents[1])
    cfg = tiny_rl_config(tmp_path / "run.yaml", tiny_model_dir, games_dir, tmp_path / "out", max_steps=2)
    with pytest.raises(SystemExit) as exit_info:
        main(["rl", "--config", cfg, "--max_steps", "1"])
    assert exit_info.value.code == 0
    out = tmp_path / "out"
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    card = (out / "README.md").read_text()
    assert "advantage estimator: `grpo` (GRPO)" in card and "environment: ALFWorld, split `all`" in card
    assert "advantage_estimator: grpo" in (out / "run_config.yaml").read_text()


def test_sampling_gap_counts_only_real_tokens_with_vllm_logprobs():
    """The trainer-vs-vLLM log-prob gap skips padding and tokens vLLM gave no log-prob for (NaN)."""
    import torch

    from gcd_trl.trainers.metrics import sampling_gap

    nan = float("nan")
    mb = {
        "completion_mask": torch.tensor([[1, 1, 0], [1, 1, 1]]),
        "old_per_token_logps": torch.tensor([[-1.0, -2.0, -9.0], [-1.0, -1.0, -1.0]]),
        "sampling_per_token_logps": torch.tensor([[-1.5, -2.0, 0.0], [nan, nan, nan]]),
        "importance_sampling_ratio": torch.tensor([[0.5], [1.0]]),
    }
    gap, ratio = sampling_gap(mb)
    assert gap.tolist() == [0.5, 0.0]
    assert ratio.tolist() == [0.5, 0.5]


def test_mini_batches_take_several_optimizer_steps_per_round(
    tiny_model_dir, alfworld_tasks, alfworld_pool, tmp_path
):
    """ppo_mini_batch_size (verl-agent's PPO mini-batches): a round's step samples are cut into several
    optimizer steps with old log-probs taken once, so the ratio moves and clipping acts within a round; the
    LR schedule counts optimizer steps; a resume from mid-round replays that round and keeps counting."""
    common = dict(
        ppo_mini_batch_size=2,
        max_steps=4,
        learning_rate=0.05,
        lr_scheduler_type="linear",
        epsilon=0.02,
        save_strategy="steps",
        save_steps=1,
    )

    def run(out, resume=None):
        return train_recording_rounds(tiny_model_dir, out, alfworld_tasks, alfworld_pool, resume, **common)

    trainer, seq_a = run(tmp_path / "a")
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert [h["step"] for h in logs] == [1, 2, 3, 4]
    per_round = [
        h["batching/optimizer_steps_per_round"] for h in logs if "batching/optimizer_steps_per_round" in h
    ]
    assert per_round and all(k >= 2 for k in per_round)
    assert len(seq_a) < 4, "several optimizer steps came from one round"
    for h in logs:  # linear decay over max_steps optimizer steps (logged: the rate the step used)
        assert h["learning_rate"] == pytest.approx(0.05 * (4 - (h["step"] - 1)) / 4, abs=1e-9)
    clip = [v for h in logs for k, v in h.items() if k.startswith("clip_ratio/") and "mean" in k]
    assert clip and max(clip) > 0, (
        "the ratio never left the clip range: no step used the round's old log-probs"
    )

    state1 = json.loads((tmp_path / "a" / "checkpoint-1" / "task_sampler.json").read_text())
    assert state1["round"] == 0 and state1["round_steps_done"] == 1  # mid-round
    trainer_b, seq_b = run(tmp_path / "a", resume=str(tmp_path / "a" / "checkpoint-1"))
    assert seq_b[0] == seq_a[0] and trainer_b.state.global_step == 4


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


# what a kill, a full disk or a deleted file can leave of the newest checkpoint, and what the warning names
CHECKPOINT_FAULTS = [
    (lambda c: (c / "task_sampler.json").unlink(), "no task_sampler.json"),
    (lambda c: _truncate(c / "model.safetensors"), "model.safetensors is truncated"),
    (lambda c: (c / "optimizer.pt").unlink(), "no optimizer.pt (the optimizer and learning-rate schedule"),
    (lambda c: _truncate(c / "optimizer.pt"), "optimizer.pt does not load"),
    (lambda c: (c / "scheduler.pt").unlink(), "no scheduler.pt"),
    (lambda c: _truncate(c / "trainer_state.json"), "trainer_state.json does not load (half-written?"),
    (lambda c: _truncate(c / "rng_state.pth"), "rng_state.pth does not load"),
]


def test_resume_falls_back_from_a_half_written_checkpoint(
    tiny_model_dir, alfworld_tasks, alfworld_pool, tmp_path, capsys
):
    """A kill while saving leaves the newest checkpoint with a file missing, cut short or half-written:
    `resume_from_checkpoint: true` takes the previous complete one with a warning naming the file, an
    explicit incomplete path is refused by name, and the resumed run restores the optimizer and schedule."""
    from gcd_trl.trainers.checkpoints import resolve_resume

    common = dict(tasks_per_round=1, max_steps=2, lr_scheduler_type="linear")
    trainer = make_trainer(
        tiny_model_dir,
        tmp_path,
        alfworld_tasks,
        alfworld_pool,
        save_strategy="steps",
        save_steps=1,
        **common,
    )
    trainer._generate_turn = scripted_policy(trainer)
    trainer.train()
    lr = {h["step"]: h["learning_rate"] for h in trainer.state.log_history if "learning_rate" in h}
    newest, kept = tmp_path / "checkpoint-2", tmp_path / "kept"
    assert resolve_resume(True, tmp_path) == str(newest)  # complete: every file loads
    shutil.copytree(newest, kept)
    for fault, message in CHECKPOINT_FAULTS:
        fault(newest)
        capsys.readouterr()
        assert resolve_resume(True, tmp_path) == str(tmp_path / "checkpoint-1"), message
        out = capsys.readouterr().out
        assert "warning: skipping" in out and message in out, out
        assert f"resuming from {tmp_path / 'checkpoint-1'}" in out
        with pytest.raises(ValueError, match=f"checkpoint-2 is incomplete: .*{re.escape(message)}"):
            resolve_resume(str(newest), tmp_path)
        shutil.rmtree(newest)
        shutil.copytree(kept, newest)
    shutil.rmtree(kept)
    (newest / "optimizer.pt").unlink()  # the case that used to resume silently with a fresh optimizer
    assert resolve_resume(True, tmp_path / "fresh") is None
    resumed = make_trainer(tiny_model_dir, tmp_path, alfworld_tasks, alfworld_pool, **common)
    resumed._generate_turn = scripted_policy(resumed)
    resumed.train(resume_from_checkpoint=resolve_resume("last", tmp_path))
    assert resumed.state.global_step == 2
    assert "resuming from" in capsys.readouterr().out
    again = {h["step"]: h["learning_rate"] for h in resumed.state.log_history if "learning_rate" in h}
    assert again[2] == pytest.approx(lr[2])  # the schedule went on from checkpoint-1, not from the start


def test_max_rounds_stops_after_the_last_rounds_optimizer_steps(
    tiny_model_dir, alfworld_tasks, alfworld_pool, tmp_path
):
    """max_rounds counts rounds (verl-agent's training steps) when mini-batches make several optimizer
    steps per round: training ends after the last step of round max_rounds - 1."""
    trainer = make_trainer(
        tiny_model_dir,
        tmp_path,
        alfworld_tasks,
        alfworld_pool,
        ppo_mini_batch_size=3,
        max_rounds=2,
        max_steps=-1,
        lr_scheduler_type="constant",
    )
    assert trainer.args.max_steps == 2 * math.ceil(2 * 2 * 3 / 3)  # the derived upper bound
    trainer._generate_turn = scripted_policy(trainer)
    trainer.train()
    per_round = [
        h["batching/optimizer_steps_per_round"]
        for h in trainer.state.log_history
        if "batching/optimizer_steps_per_round" in h
    ]
    assert len(per_round) == 2 and trainer.task_sampler.round == 2
    assert trainer.state.global_step == sum(per_round)


def test_evaluate_hook_plays_the_held_out_tasks_greedily(
    tiny_model_dir, alfworld_tasks, alfworld_pool, tmp_path
):
    """eval_strategy=steps runs gcd_trl.eval on the held-out tasks through the trainer's own (greedy)
    generation, in the training pool, and logs eval/success_rate; greedy means two calls agree."""
    trainer = make_trainer(
        tiny_model_dir,
        tmp_path,
        alfworld_tasks[:2],
        alfworld_pool,
        tasks_per_round=1,
        max_steps=1,
        eval_strategy="steps",
        eval_steps=1,
        eval_tasks=alfworld_tasks[2:],
    )
    trainer.train()
    rows = [h for h in trainer.state.log_history if "eval/success_rate" in h]
    assert len(rows) == 1 and rows[0]["eval/episodes"] == 1
    assert 0 <= rows[0]["eval/success_rate"] <= 1 and rows[0]["eval/mean_steps"] >= 1
    a, b = trainer.evaluate(), trainer.evaluate()
    assert a["eval/mean_steps"] == b["eval/mean_steps"] and a["eval/invalid_rate"] == b["eval/invalid_rate"]
    assert trainer.generation_config.do_sample  # sampling is back for training
