"""`AgentGRPOTrainer`: TRL's GRPOTrainer trained on transitions of multi-turn text-env episodes.

One optimizer step = one round (per `num_iterations` pass). A round plays `tasks_per_round` tasks x G
episodes in the env pool, generating for every live env at once each turn; every env step becomes one
sample (prompt = task + recent history + observation, completion = the model's think + action). The
round's samples get advantages from `gcd_trl.advantages`, are cut into token-budget micro-batches (the same
count on every process) and go through TRL's own `_compute_loss` (clipping, KL, loss types), scaled so the
round's gradient is the loss type's formula over the whole round, however it was cut.

How it maps onto TRL / transformers hooks:
- `get_train_dataloader`: yields one "ticket" per optimizer step (the tasks come from `RoundTaskSampler`,
  whose cursor is checkpointed), so `max_steps` counts optimizer steps = rounds x num_iterations.
- `training_step`: builds a round when needed (generation through TRL's `_generate_single_turn`, i.e.
  transformers `generate` under `unwrap_model_for_generation`, or TRL's vLLM backend), then runs
  forward/backward over its micro-batches with gradient sync only on the last one; Trainer then clips
  and steps the optimizer as usual (gradient_accumulation_steps = 1).
- `_save_checkpoint` / `_load_optimizer_and_scheduler`: also save / restore the task sampler (rng states
  are the Trainer's own `rng_state.pth`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import DistributedType
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl import GRPOTrainer
from trl.models.utils import disable_gradient_checkpointing
from trl.trainer.utils import identity, pad, use_adapter

from gcd_trl import files
from gcd_trl.advantages import AdvantageConfig, compute_advantage_terms
from gcd_trl.dist import sum_over_processes
from gcd_trl.envs.base import Task
from gcd_trl.envs.tasks import task_type_name
from gcd_trl.gcd.task import JudgeTask
from gcd_trl.generation import Generation, to_chat
from gcd_trl.rollout.collector import RolloutCollector, StepSample
from gcd_trl.rollout.records import write_jsonl_atomic
from gcd_trl.trainers.checkpoints import JUDGE_STATE_NAME, SAMPLER_STATE_NAME
from gcd_trl.trainers.grpo_config import derive_max_steps
from gcd_trl.trainers.microbatch import (
    LOSS_TYPES,
    RoundTotals,
    equalize_microbatches,
    microbatch_loss_scale,
    pack_microbatches,
    padded_tokens,
)
from gcd_trl.trainers.sampler import RoundTaskSampler, tasks_fingerprint

SAMPLE_KINDS = ("agent", "judge")


def _chunk(items: list, parts: int, k: int) -> list:
    """The k-th of `parts` contiguous, near-equal slices of `items` (sizes differ by at most one)."""
    n = len(items)
    return items[k * n // parts : (k + 1) * n // parts]


def _env_reward(prompts=None, completions=None, **kwargs):
    """Placeholder reward function: rewards come from the environment, through `gcd_trl.advantages`."""
    raise RuntimeError(
        "AgentGRPOTrainer takes its rewards from the environment; this function is never called"
    )


class _Tickets(TorchDataset):
    """One item per optimizer step of an epoch (an epoch = one pass over the tasks)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, int]:
        return {"ticket": i}


@dataclass
class _Update:
    """One optimizer step's samples: micro-batches (model inputs), each one's loss scale and entropy scale."""

    microbatches: list[dict[str, Any]]
    factors: list[float]
    entropy_scales: list[float]  # multiplies a micro-batch's summed token entropy (0: padding)
    plan: list[list[int]]  # sample indices of each micro-batch
    totals: dict[str, RoundTotals]  # per sample kind ("agent", "judge")
    padded_tokens: int  # what the micro-batches cost once padded (this process)


@dataclass
class _Round:
    """A built round: its optimizer steps (one without mini-batches) and bookkeeping."""

    updates: list[_Update]
    index: int  # the round's number (task sampler cursor)
    time_logps: float = 0.0


class _CallableGenerator:
    """A `generate(prompts)` function as a `Generator` object."""

    def __init__(self, fn) -> None:
        self.generate = fn


class TrainerGenerator:
    """TRL's generation machinery behind the `gcd_trl.generation.Generator` protocol.

    Every call into TRL's private generation API lives here (`_tokenize_prompts`, `_generate_single_turn`:
    transformers `generate` under `unwrap_model_for_generation`, or TRL's vLLM colocate/server backend with
    its weight sync), so a TRL upgrade touches one class. With several processes, calls are made in
    lockstep (the collector syncs its turn loop): backends whose generate is collective (vLLM server/TP
    colocate, ZeRO-3/FSDP) see the same number of calls, and vLLM, which slices its outputs by an equal
    per-process count, gets equal-size prompt lists.
    """

    def __init__(self, trainer: GRPOTrainer) -> None:
        self.trainer = trainer
        self._eos_and_pad = {*trainer.eos_token_ids, trainer._tokenizer.pad_token_id}

    @contextlib.contextmanager
    def max_new_tokens(self, limit: int | None):
        """Cap completions at `limit` tokens inside the block (GCD judge answers); None keeps the default."""
        t = self.trainer
        if limit is None:
            yield
            return
        saved = t.max_completion_length
        vllm = getattr(t, "vllm_generation", None) if t.use_vllm else None
        config = getattr(t, "generation_config", None)
        try:
            if vllm is not None:
                vllm.max_completion_length = limit
            if config is not None:
                config.max_new_tokens = limit
                t.generation_kwargs["max_new_tokens"] = limit
            yield
        finally:
            if vllm is not None:
                vllm.max_completion_length = saved
            if config is not None:
                config.max_new_tokens = saved
                t.generation_kwargs["max_new_tokens"] = saved

    @contextlib.contextmanager
    def greedy(self):
        """Greedy decoding inside the block (evaluation), for the HF and the vLLM backends."""
        t = self.trainer
        vllm = getattr(t, "vllm_generation", None) if t.use_vllm else None
        config = getattr(t, "generation_config", None)
        saved = (
            vllm.temperature if vllm is not None else None,
            config.do_sample if config is not None else None,
        )
        try:
            if vllm is not None:
                vllm.temperature = 0.0
            if config is not None:
                config.do_sample = False
                t.generation_kwargs["do_sample"] = False
            yield
        finally:
            if vllm is not None:
                vllm.temperature = saved[0]
            if config is not None:
                config.do_sample = saved[1]
                t.generation_kwargs["do_sample"] = saved[1]

    def generate(self, prompts: list[str]) -> list[Generation]:
        t = self.trainer
        n = len(prompts)
        prompt_ids = t._tokenize_prompts([to_chat(p) for p in prompts])[0] if prompts else []
        prompt_ids = [list(ids) for ids in prompt_ids]
        target = n
        if t.accelerator.num_processes > 1:
            if t.use_vllm:
                target = t._sync_max(n)
            elif n == 0:
                target = 1  # sharded models (ZeRO-3/FSDP) need every process in each forward
        tok = t._tokenizer
        dummy = [tok.pad_token_id if tok.bos_token_id is None else tok.bos_token_id]
        padded = prompt_ids + [list(prompt_ids[0]) if prompt_ids else dummy] * (target - n)
        if not padded:
            return []
        completion_ids, logprobs = t._generate_single_turn(padded, None, {}, 1)
        completion_ids = [list(c) for c in completion_ids[:n]]
        texts = t.processing_class.batch_decode(completion_ids, skip_special_tokens=True) if n else []
        out = []
        for i in range(n):
            ids = completion_ids[i]
            truncated = not ids or ids[-1] not in self._eos_and_pad
            out.append(
                Generation(prompt_ids[i], ids, texts[i], truncated, None if logprobs is None else logprobs[i])
            )
        return out


class AgentGRPOTrainer(GRPOTrainer):
    """GRPOTrainer over env transitions. See the module docstring for the round structure.

    Args:
        model: a model id/path or a `PreTrainedModel` (as GRPOTrainer).
        args: `gcd_trl.config.AgentGRPOConfig`.
        train_dataset: one row per task (`Task.to_dict()` fields).
        env_args: `gcd_trl.config.EnvArguments` (the env, episode length, prompt, pool size).
        env_pool: an `EnvPool` to use instead of building one from `env_args` (it is not closed by us).
        gcd_args: `gcd_trl.config.GCDArguments` (named in the model card).
        processing_class, callbacks, optimizers, peft_config, quantization_config: as GRPOTrainer.
    """

    _tag_names = ["trl", "grpo", "gcd-trl", "agent"]
    _name = "AgentGRPO"
    # the model card credits the paper this project implements (TRL's GRPOTrainer names DeepSeekMath)
    _paper = {
        "title": "Rethinking Reward Miscalibration of GRPO in Agentic RL",
        "citation": "@misc{liu_gcd,\n"
        "    title  = {{Rethinking Reward Miscalibration of GRPO in Agentic RL}},\n"
        "    author = {Jingyu Liu and Xiaopeng Wu and Jingquan Peng and Kehan Chen and Chuan Yu and "
        "Lizhong Ding and Yong Liu},\n"
        "}",
    }

    def __init__(
        self,
        model,
        args,
        train_dataset,
        env_args,
        env_pool=None,
        processing_class=None,
        callbacks=None,
        optimizers=(None, None),
        peft_config=None,
        gcd_args=None,
        quantization_config=None,
        eval_dataset=None,
    ) -> None:
        if args.gradient_accumulation_steps != 1:
            raise ValueError(
                "AgentGRPOTrainer: gradient_accumulation_steps must be 1 (a round is one optimizer step, "
                "cut into micro-batches by max_tokens_per_microbatch)"
            )
        if args.loss_type not in LOSS_TYPES:
            raise ValueError(f"AgentGRPOTrainer: loss_type={args.loss_type!r} is not one of {LOSS_TYPES}")
        if train_dataset is None or len(train_dataset) == 0:
            raise ValueError("AgentGRPOTrainer: train_dataset (one row per task) is empty")
        rows = [dict(r) for r in train_dataset]
        # one dataset interleaves episode tasks and (optionally) static GCD judge rows: `kind` tells them apart
        kinds = sorted({r.get("kind") or "episode" for r in rows} - {"episode", "judge"})
        if kinds:
            raise ValueError(
                f"AgentGRPOTrainer: train_dataset has rows of kind {kinds[0]!r} (episode | judge)"
            )
        judge_rows = [r for r in rows if r.get("kind") == "judge"]
        self.tasks = [Task.from_dict(r) for r in rows if (r.get("kind") or "episode") == "episode"]
        if not self.tasks:
            raise ValueError("AgentGRPOTrainer: train_dataset has judge rows but no episode tasks")
        if judge_rows and not (gcd_args is not None and gcd_args.gcd):
            raise ValueError("AgentGRPOTrainer: train_dataset has judge rows (kind=judge) but gcd is off")
        bad = sorted({t.env for t in self.tasks} - {env_args.environment})
        if bad:
            raise ValueError(
                f"AgentGRPOTrainer: train_dataset has tasks of env {bad[0]!r} "
                f"but environment={env_args.environment!r}"
            )
        self.env_args, self.gcd_args = env_args, gcd_args
        self.meta_reasoning = env_args.meta_reasoning_for(args.advantage_estimator)
        # held-out tasks for the `eval_steps` hook (gcd_trl.eval, greedy, every task once)
        self.eval_tasks = [Task.from_dict(dict(r)) for r in eval_dataset] if eval_dataset is not None else []
        derive_max_steps(args, env_args)
        # built (and validated) before the model loads; reused every round
        self.advantage_config = AdvantageConfig.from_args(args)  # incl. success_reward, gigpo_step_reward
        super().__init__(
            model=model,
            reward_funcs=[_env_reward],
            args=args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            callbacks=callbacks,
            optimizers=optimizers,
            peft_config=peft_config,
            quantization_config=quantization_config,
        )
        self.task_sampler = RoundTaskSampler(
            len(self.tasks),
            args.tasks_per_round,
            seed=args.seed,
            shuffle=bool(args.shuffle_dataset),
            num_processes=self.accelerator.num_processes,
            process_index=self.accelerator.process_index,
            fingerprint=tasks_fingerprint(rows),
        )
        self._env_pool = env_pool
        self._owns_pool = env_pool is None
        self._collector: RolloutCollector | None = None
        self._round: _Round | None = None
        self._queue: deque[_Update] = deque()  # the current round's optimizer steps still to take
        self._round_steps = 0  # optimizer steps of the current round, num_iterations passes included
        self._skip_updates = 0  # set on resume: steps of the replayed round the checkpoint already took
        self._need_old_logps = self.num_iterations > 1
        # TRL's entropy bonus is a per-micro-batch mean; ours is a token mean over each optimizer step
        self._entropy_coef = float(args.entropy_coef)
        self._entropy_bonus_enabled = False
        self._last_entropies: torch.Tensor | None = None
        self._gcd_coef = float(gcd_args.gcd_coef) if gcd_args is not None and gcd_args.gcd else 0.0
        self.generator = TrainerGenerator(self)
        self.judge_task: JudgeTask | None = None
        if gcd_args is not None and gcd_args.gcd:
            self.judge_task = JudgeTask(
                gcd_args,
                args.output_dir,
                seed=args.seed,
                judge_rows=judge_rows,
                process_index=self.accelerator.process_index,
                num_processes=self.accelerator.num_processes,
                scale_rewards=args.scale_rewards,
            )

    # ------------------------------------------------------------------------------------------------
    # Data: one ticket per optimizer step; the tasks come from the sampler

    def get_train_dataloader(self) -> DataLoader:
        rounds_per_epoch = math.ceil(len(self.tasks) / self.args.tasks_per_round)
        return DataLoader(_Tickets(rounds_per_epoch * self.num_iterations), batch_size=1, collate_fn=identity)

    # ------------------------------------------------------------------------------------------------
    # Env pool and rollouts

    @property
    def env_pool(self):
        if self._env_pool is None:
            ea = self.env_args
            num_envs = (
                ea.num_envs
                or self.task_sampler.tasks_per_round // self.accelerator.num_processes * self.num_generations
            )
            self._env_pool = ea.make_pool(num_envs)
        return self._env_pool

    def close(self) -> None:
        """Shut down the env pool if we built it."""
        if self._env_pool is not None and self._owns_pool:
            self._env_pool.close()
            self._env_pool = None
        self._collector = None

    @property
    def collector(self) -> RolloutCollector:
        if self._collector is None:
            self._collector = RolloutCollector(
                self.env_pool,
                self.env_args,
                generate=self._generate_turn,
                sync_max=self._sync_max if self.accelerator.num_processes > 1 else None,
                meta_reasoning=self.meta_reasoning,
                progress=self.accelerator.is_main_process and not self.args.disable_tqdm,
            )
            self._collector.suggestions = self._suggestions()
        return self._collector

    def _suggestions(self) -> str | list[str]:
        """The agent prompt's {suggestions}: the configured text, then the current golden rules."""
        rules = self.judge_task.suggestions() if self.judge_task is not None else []
        if not rules:
            return self.env_args.suggestions
        return ([self.env_args.suggestions] if self.env_args.suggestions else []) + rules

    def _sync_max(self, value: int) -> int:
        t = torch.tensor([value], device=self.accelerator.device)
        return int(self.accelerator.reduce(t, reduction="max").item())

    def _generate_turn(self, prompts: list[str]) -> list[Generation]:
        """The collector's `generate`: this trainer's `TrainerGenerator` (tests swap in scripted policies)."""
        return self.generator.generate(prompts)

    # ------------------------------------------------------------------------------------------------
    # Round building

    def _advantages(self, samples: list[StepSample]) -> list[float]:
        records = [s.record.to_dict() for s in samples]
        return compute_advantage_terms(records, self.advantage_config).total.tolist()

    def _build_round(self) -> _Round:
        """Play the next round's tasks, score the steps, and cut the samples into micro-batches."""
        t_round = time.perf_counter()
        index = self.task_sampler.round
        local = self.task_sampler.next_round()
        per_process = self.task_sampler.tasks_per_round // self.accelerator.num_processes
        rollout = self.collector.collect(
            [self.tasks[i] for i in local],
            self.num_generations,
            group_offset=self.accelerator.process_index * per_process,
            round_index=index,
        )
        samples = rollout.samples
        for s, a in zip(samples, self._advantages(samples) if samples else []):
            s.advantage = float(a)
        judge = self._judge_round(samples, index) if self.judge_task is not None else []
        # gcd_coef = 0: the judge still answers (its metrics are logged) but is not trained
        rnd = self._make_round(samples + judge if self._gcd_coef > 0 else samples, index)
        self._log_round(rollout, samples, rnd, time.perf_counter() - t_round)
        if self.log_completions:
            self._log_completion_rows(samples, index)
        if self.args.save_rollouts:
            self._write_rollout(index, samples, judge)
        return rnd

    def _write_rollout(self, index: int, samples: list[StepSample], judge: list[StepSample] = ()) -> None:
        """One JSON line per sample (schema: `gcd_trl.rollout.records`): agent steps with their advantage,
        then judge answers (kind "judge", the judged step's ids, label and reward)."""
        rows = []
        for s in samples:
            row = s.record.to_dict()
            row.update(kind="agent", advantage=s.advantage, truncated=s.truncated, round=index)
            rows.append(row)
        for s in judge:
            info, src = s.judge, s.judge["source"] or {}
            rows.append(
                {
                    "kind": "judge",
                    "group": src.get("group", -1),
                    "traj": src.get("traj", -1),
                    "step": src.get("step", -1),
                    "anchor": src.get("anchor") or "",
                    "prompt": info["prompt"],
                    "completion": info["completion"],
                    "valid": info["score"] is not None,
                    "label": info["label"],
                    "label_source": info["label_source"],
                    "judge_score": info["score"],
                    "judge_reward": info["reward"],
                    "advantage": s.advantage,
                    "truncated": s.truncated,
                    "round": index,
                }
            )
        path = (
            Path(self.args.output_dir)
            / "rollouts"
            / f"round_{index:05d}_rank{self.accelerator.process_index}.jsonl"
        )
        write_jsonl_atomic(path, rows)

    # ------------------------------------------------------------------------------------------------
    # GCD: the policy as a generative judge of its own steps (gcd/task.py holds the model-free half)

    def _judge_round(self, samples: list[StepSample], index: int) -> list[StepSample]:
        """Label the round's steps, ask the policy to judge a class-balanced set of them (G answers each, one
        batched call through the agent's generation backend), score the answers against the labels, and
        return them as judge samples with group advantages. Every few rounds, renew the golden rules."""
        task, g = self.judge_task, self.gcd_args
        t0 = time.perf_counter()
        records = [{**s.record.to_dict(), "round": index} for s in samples]
        labelled = task.label(records, index)
        t_external = time.perf_counter() - t0
        prompts = task.prompts(labelled, index)
        t1 = time.perf_counter()
        with self.generator.max_new_tokens(g.judge_max_completion_length):
            gens = self._generate_turn([p.prompt for p in prompts for _ in range(g.judge_num_generations)])
        t_generate = time.perf_counter() - t1
        judged = task.score(prompts, [x.text for x in gens], labelled, index)
        out = []
        for gen, adv, info in zip(gens, judged.advantages, judged.infos):
            info["completion"] = gen.text
            out.append(
                StepSample(
                    gen.prompt_ids,
                    gen.completion_ids,
                    None,
                    gen.truncated,
                    False,
                    gen.logprobs,
                    advantage=float(adv),
                    kind="judge",
                    judge=info,
                )
            )
        self._log_judge(samples, out, judged.counts, task.label_counts(labelled), t_external, t_generate)
        self._update_rules(index)
        return out

    def _update_rules(self, index: int) -> None:
        """Golden rules every `correction_every` rounds, the same on every process: advice is gathered from all
        processes, every process takes part in generation (it may be collective), process 0's book wins."""
        task = self.judge_task
        if task.rules is None:
            return
        acc = self.accelerator
        if acc.num_processes > 1:
            from accelerate.utils import broadcast_object_list, gather_object

            pending = gather_object([task.rules.pending])
            task.rules.pending = [a for part in pending for a in part][-task.rules.max_advice :]
        if not task.rules.due(index):
            return
        generator, source = task.rules_generator(_CallableGenerator(self._generate_turn))
        if source == "external" and not acc.is_main_process:
            task.rules.last_update_round = index  # process 0 asks the endpoint; its book is broadcast
        else:
            task.rules.maybe_update(index, generator, source=source)
        if acc.num_processes > 1:
            state = [task.rules.state_dict()]
            broadcast_object_list(state, from_process=0)
            task.rules.load_state_dict(state[0])
        if self._collector is not None:
            self._collector.suggestions = self._suggestions()
        for name, value in task.rules.metrics("gcd/").items():
            self._metrics["train"][name].append(value)

    def _log_judge(self, samples, judge, counts, labels, t_external, t_generate) -> None:
        keys = sorted(counts) + sorted(labels)
        agent_tokens = sum(len(s.prompt_ids) + len(s.completion_ids) for s in samples)
        judge_tokens = sum(len(s.prompt_ids) + len(s.completion_ids) for s in judge)
        values = [counts[k] for k in sorted(counts)] + [labels[k] for k in sorted(labels)]
        values += [agent_tokens, judge_tokens, t_generate, t_external]
        t = torch.tensor(values, dtype=torch.float64, device=self.accelerator.device)
        if self.accelerator.num_processes > 1:
            t = self.accelerator.reduce(t, reduction="sum")
        v = dict(zip(keys + ["agent_tokens", "judge_tokens", "t_generate", "t_external"], t.tolist()))
        m = self._metrics["train"]
        m["judge/prompts"].append(v["prompts"])
        m["judge/answers"].append(v["answers"])
        if v["good_answers"]:
            m["judge/accuracy_good"].append(v["good_hits"] / v["good_answers"])
        if v["bad_answers"]:
            m["judge/accuracy_bad"].append(v["bad_hits"] / v["bad_answers"])
        # answers per label class: the majority-class rate (what a judge that always says one label scores)
        m["judge/answers_good"].append(v["good_answers"])
        m["judge/answers_bad"].append(v["bad_answers"])
        m["judge/format_failure_rate"].append(v["unparsable"] / max(v["answers"], 1))
        m["judge/reward_mean"].append(v["reward_sum"] / max(v["answers"], 1))
        m["judge/labelled_share"].append((v["good"] + v["bad"]) / max(v["steps"], 1))
        m["judge/labelled_good"].append(v["good"])
        m["judge/labelled_bad"].append(v["bad"])
        m["judge/labelled_by_rule_share"].append(v["rule"] / max(v["good"] + v["bad"], 1))
        m["judge/labelled_by_external_share"].append(v["external"] / max(v["good"] + v["bad"], 1))
        m["judge/token_share"].append(v["judge_tokens"] / max(v["agent_tokens"] + v["judge_tokens"], 1))
        m["time/judge_generation"].append(v["t_generate"] / self.accelerator.num_processes)
        m["time/judge_labels"].append(v["t_external"] / self.accelerator.num_processes)
        self.state.num_input_tokens_seen += int(v["judge_tokens"]) if self._gcd_coef > 0 else 0
        if self.judge_task.external is not None:
            for name, value in self.judge_task.external.metrics("judge/external_").items():
                m[name].append(value)

    def _make_round(self, samples: list[StepSample], index: int = 0) -> _Round:
        """Cut the round into optimizer steps (`ppo_mini_batch_size` agent samples each, judge samples spread
        evenly over them), then each step into micro-batches. Old log-probs are computed here, once, before
        any step changes the weights."""
        t_logps = time.perf_counter()
        agent = [s for s in samples if s.kind == "agent"]
        judge = [s for s in samples if s.kind == "judge"]
        num_updates = 1
        if self.args.ppo_mini_batch_size:
            total = self._sum_over_processes([len(agent)])[0]
            num_updates = max(1, math.ceil(total / self.args.ppo_mini_batch_size))
        self._need_old_logps = num_updates > 1 or self.num_iterations > 1
        gaps: list = []
        updates = []
        for k in range(num_updates):
            part = _chunk(agent, num_updates, k) + _chunk(judge, num_updates, k)
            updates.append(self._make_update(part, gaps))
        if gaps:
            self._log_sampling_gap(gaps)
        return _Round(updates, index, time.perf_counter() - t_logps)

    def _make_update(self, samples: list[StepSample], gaps: list | None = None) -> _Update:
        """Micro-batches under the token budget, one sample kind each, the same count on every process, each
        with the loss scale that makes the step's loss L_agent + gcd_coef x L_judge, every term the loss
        type's formula over its own samples (so independent of the cut into micro-batches and processes)."""
        device = self.accelerator.device
        loss_tokens = [
            0 if (s.truncated and self.mask_truncated_completions) or s.weight == 0 else len(s.completion_ids)
            for s in samples
        ]
        prompt_lens = [len(s.prompt_ids) for s in samples]
        completion_lens = [len(s.completion_ids) for s in samples]
        plan: list[list[int]] = []
        counts: list[int] = []
        for kind in SAMPLE_KINDS:
            idx = [i for i, s in enumerate(samples) if s.kind == kind]
            packed = pack_microbatches(
                [prompt_lens[i] for i in idx],
                [completion_lens[i] for i in idx],
                self.args.max_tokens_per_microbatch,
            )
            plan += [[idx[j] for j in mb] for mb in packed]
            counts += [len(idx), sum(loss_tokens[i] for i in idx)]
        num_mb = self._max_over_processes(len(plan))
        counts = self._sum_over_processes(counts)
        num_mb = max(num_mb, 1)
        totals = {
            kind: RoundTotals(
                rows=counts[2 * k],
                tokens=counts[2 * k + 1],
                num_processes=self.accelerator.num_processes,
                num_microbatches=num_mb,
            )
            for k, kind in enumerate(SAMPLE_KINDS)
        }
        plan = equalize_microbatches(plan, num_mb)
        coef = {"agent": 1.0, "judge": self._gcd_coef}
        microbatches, factors, entropy_scales = [], [], []
        for idx in plan:
            mb = self._collate([samples[i] for i in idx])
            kind = samples[idx[0]].kind if idx else "agent"
            mb_tokens = sum(loss_tokens[i] for i in idx)
            num_items, factor = microbatch_loss_scale(
                self.loss_type, totals[kind], mb_rows=max(len(idx), 1), mb_tokens=mb_tokens
            )
            mb["num_items_in_batch"] = torch.tensor(num_items, device=device)
            self._add_old_and_ref_logps(mb)
            if gaps is not None and "old_per_token_logps" in mb and "sampling_per_token_logps" in mb:
                gaps.append(self._sampling_gap(mb))
            microbatches.append(mb)
            factors.append(factor * coef[kind])
            # entropy bonus: a token mean over the kind's tokens of this step, on every process's share
            entropy_scales.append(
                coef[kind] * self.accelerator.num_processes / totals[kind].tokens
                if idx and totals[kind].tokens
                else 0.0
            )
        padded = sum(padded_tokens(idx, prompt_lens, completion_lens) for idx in plan)
        return _Update(microbatches, factors, entropy_scales, plan, totals, padded)

    def _max_over_processes(self, value: int) -> int:
        if self.accelerator.num_processes == 1:
            return value
        t = torch.tensor([value], device=self.accelerator.device, dtype=torch.long)
        return int(self.accelerator.reduce(t, reduction="max").item())

    def _sum_over_processes(self, values: list[int]) -> list[int]:
        if self.accelerator.num_processes == 1:
            return list(values)
        t = torch.tensor(values, device=self.accelerator.device, dtype=torch.long)
        return [int(v) for v in self.accelerator.reduce(t, reduction="sum").tolist()]

    def _collate(self, samples: list[StepSample]) -> dict[str, Any]:
        """Left-pad prompts, right-pad completions; no samples -> one zero-weight padding row."""
        device = self.accelerator.device
        pad_id = self._tokenizer.pad_token_id
        if not samples:
            one = torch.tensor([[pad_id]], device=device)
            return {
                "prompt_ids": one,
                "prompt_mask": torch.ones_like(one),
                "completion_ids": one.clone(),
                "completion_mask": torch.zeros_like(one),
                "advantages": torch.zeros(1, device=device),
                **({"sampling_per_token_logps": torch.zeros(1, 1, device=device)} if self.use_vllm else {}),
            }
        prompts = [torch.tensor(s.prompt_ids) for s in samples]
        completions = [torch.tensor(s.completion_ids if s.completion_ids else [pad_id]) for s in samples]
        mask_rows = []
        for s, c in zip(samples, completions):
            keep = (
                bool(s.completion_ids)
                and not (s.truncated and self.mask_truncated_completions)
                and s.weight != 0
            )
            mask_rows.append(torch.full_like(c, int(keep)))
        mb = {
            "prompt_ids": pad(prompts, padding_value=pad_id, padding_side="left").to(device),
            "prompt_mask": pad(
                [torch.ones_like(p) for p in prompts], padding_value=0, padding_side="left"
            ).to(device),
            "completion_ids": pad(completions, padding_value=pad_id, padding_side="right").to(device),
            "completion_mask": pad(mask_rows, padding_value=0, padding_side="right").to(device),
            "advantages": torch.tensor(
                [s.advantage * s.weight for s in samples], dtype=torch.float32, device=device
            ),
        }
        if self.use_vllm:
            logps = [
                torch.tensor([math.nan if x is None else x for x in (s.logprobs or [math.nan] * len(c))])
                for s, c in zip(samples, completions)
            ]
            mb["sampling_per_token_logps"] = pad(logps, padding_value=0.0, padding_side="right").to(device)
        return mb

    @torch.no_grad()
    def _add_old_and_ref_logps(self, mb: dict[str, Any]) -> None:
        """Behaviour (old) log-probs when the round is reused or vLLM sampled it; reference log-probs
        when beta > 0."""
        need_old = self._need_old_logps or (self.use_vllm and self.vllm_importance_sampling_correction)
        if not need_old and self.beta == 0.0:
            return
        input_ids = torch.cat([mb["prompt_ids"], mb["completion_ids"]], dim=1)
        attention_mask = torch.cat([mb["prompt_mask"], mb["completion_mask"]], dim=1)
        # padding rows: attend to their one prompt token only
        keep = mb["completion_ids"].size(1)
        with disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs):
            if need_old:
                mb["old_per_token_logps"] = self._get_per_token_logps_and_entropies(
                    self.model, input_ids, attention_mask, keep
                )[0]
            if self.use_vllm and self.vllm_importance_sampling_correction:
                mb["importance_sampling_ratio"] = self._vllm_is_ratio(mb)
            if self.beta != 0.0:
                if self.ref_model is not None:
                    ref = self._get_per_token_logps_and_entropies(
                        self.ref_model, input_ids, attention_mask, keep
                    )[0]
                else:
                    unwrapped = self.accelerator.unwrap_model(self.model)
                    with use_adapter(
                        unwrapped, adapter_name="ref" if "ref" in unwrapped.peft_config else None
                    ):
                        ref = self._get_per_token_logps_and_entropies(
                            self.model, input_ids, attention_mask, keep
                        )[0]
                mb["ref_per_token_logps"] = ref

    @staticmethod
    def _sampling_gap(mb: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """|trainer - vLLM| log-prob per real completion token, and the IS ratio of those tokens."""
        keep = mb["completion_mask"].bool() & ~torch.isnan(mb["sampling_per_token_logps"])
        gap = (mb["old_per_token_logps"] - mb["sampling_per_token_logps"]).abs()[keep]
        ratio = mb.get("importance_sampling_ratio")
        ratio = torch.ones_like(gap) if ratio is None else ratio.expand_as(keep)[keep]
        return gap.float(), ratio.float()

    def _log_sampling_gap(self, gaps: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Round-level gap between the trainer's and vLLM's log-probs (TRL's metric names). It stays near
        zero only while vLLM holds the trainer's current weights: the check that weight sync works."""
        gap = torch.cat([g for g, _ in gaps])
        ratio = torch.cat([r for _, r in gaps])
        if gap.numel() == 0:
            return
        stats = torch.stack([gap.mean(), gap.max(), ratio.min(), ratio.mean(), ratio.max()]).tolist()
        names = ("sampling_logp_difference/mean", "sampling_logp_difference/max")
        names += ("importance_sampling_ratio/min", "importance_sampling_ratio/mean")
        names += ("importance_sampling_ratio/max",)
        for name, value in zip(names, stats):
            self._metrics["train"][f"sampling/{name}"].append(value)

    def _vllm_is_ratio(self, mb: dict[str, Any]) -> torch.Tensor:
        """TRL's vLLM importance-sampling correction (same modes and clipping), for one micro-batch."""
        diff = (mb["old_per_token_logps"] - mb["sampling_per_token_logps"]) * mb["completion_mask"]
        diff = torch.nan_to_num(diff, nan=0.0)
        mode = self.vllm_importance_sampling_mode
        if mode.startswith("sequence"):
            diff = diff.sum(dim=-1, keepdim=True)
        ratio = torch.exp(diff)
        lo, hi = self.vllm_importance_sampling_clip_min, self.vllm_importance_sampling_clip_max
        if mode.endswith("truncate"):
            return torch.clamp(ratio, min=lo, max=hi)
        lo = -math.inf if lo is None else lo
        hi = math.inf if hi is None else hi
        return ratio.masked_fill((ratio < lo) | (ratio > hi), 0.0)

    # ------------------------------------------------------------------------------------------------
    # The optimizer step

    def training_step(self, model, inputs, num_items_in_batch=None) -> torch.Tensor:
        """One call = one optimizer step: the next update of the current round (building the next round when
        the current one is used up: `num_iterations` passes over its updates); Trainer then clips and steps."""
        t0 = time.perf_counter()
        model.train()
        if hasattr(self.optimizer, "train") and callable(self.optimizer.train):
            self.optimizer.train()
        if not self._queue:
            self._round = None  # free the previous round's tensors before building the next
            self._round = self._build_round()
            self._queue = deque(u for _ in range(self.num_iterations) for u in self._round.updates)
            self._round_steps = len(self._queue)
            self._metrics["train"]["batching/optimizer_steps_per_round"].append(len(self._round.updates))
            # resumed mid-round: the round is played again, and the optimizer steps already taken are skipped
            for _ in range(min(self._skip_updates, len(self._queue) - 1)):
                self._queue.popleft()
            self._skip_updates = 0
        update = self._queue.popleft()
        if not self._queue and self.args.max_rounds and self._round.index + 1 >= self.args.max_rounds:
            self.control.should_training_stop = True  # the last round's last optimizer step
        t_bwd = time.perf_counter()
        loss = self._accumulate(model, update)
        self._metrics["train"]["time/backward"].append(time.perf_counter() - t_bwd)
        self._step += 1
        self._metrics["train"]["step_time"].append(time.perf_counter() - t0)
        return loss

    def _accumulate(self, model, update: _Update) -> torch.Tensor:
        """Forward/backward every micro-batch of the update, gradients synchronised on the last one only."""
        num_mb = len(update.microbatches)
        deepspeed = self.accelerator.distributed_type == DistributedType.DEEPSPEED
        kwargs = {"scale_wrt_gas": False} if deepspeed else {}
        saved_ga = getattr(self, "current_gradient_accumulation_steps", 1)
        self.current_gradient_accumulation_steps = num_mb  # TRL's per-micro-batch normalisers read this
        total = torch.zeros((), device=self.accelerator.device)
        try:
            with self._ragged_gather():
                for k, mb in enumerate(update.microbatches):
                    last = k == num_mb - 1
                    if deepspeed:  # the engine accumulates and steps on the boundary (accelerate's wrapper)
                        self.accelerator.gradient_state._set_sync_gradients(last)
                        ctx = contextlib.nullcontext()
                    else:
                        ctx = contextlib.nullcontext() if last else self.accelerator.no_sync(model)
                    with ctx:
                        with self.compute_loss_context_manager():
                            self._last_entropies = None
                            loss = self._compute_loss(model, mb) * update.factors[k]
                            if self._entropy_coef and update.entropy_scales[k]:
                                summed = (self._last_entropies * mb["completion_mask"]).sum()
                                loss = loss - self._entropy_coef * update.entropy_scales[k] * summed
                            aux = self._auxiliary_loss(model, mb)
                            if aux is not None:
                                loss = loss + aux
                        self.accelerator.backward(loss, **kwargs)
                    total += loss.detach()
        finally:
            self.current_gradient_accumulation_steps = saved_ga
            if deepspeed:
                self.accelerator.gradient_state._set_sync_gradients(True)
        return total

    def _auxiliary_loss(self, model, mb: dict[str, Any]) -> torch.Tensor | None:
        """Hook: an extra loss term of this micro-batch, from its loss forward (the value-head classifier of
        gcd_trl.trainers.token), added after the loss scale. None: nothing to add."""
        return None

    def _get_per_token_logps_and_entropies(self, *args, **kwargs):
        """TRL's log-prob pass; keeps the entropies of the loss pass for our entropy bonus (see _accumulate)."""
        out = super()._get_per_token_logps_and_entropies(*args, **kwargs)
        if kwargs.get("compute_entropy") and torch.is_grad_enabled():
            self._last_entropies = out[1]
        return out

    @contextlib.contextmanager
    def _ragged_gather(self):
        """Let TRL's per-row metric gathers work when processes hold micro-batches of different sizes.

        `_compute_loss` gathers per-row values (clip-ratio min/max) with `accelerator.gather`, which needs
        equal shapes on every process; TRL's own batches are equal-sized, ours are cut by a token budget.
        Rows are padded with NaN, which TRL's nanmin/nanmax already skip.
        """
        acc = self.accelerator
        if acc.num_processes == 1:
            yield
            return
        original = acc.gather

        def gather(tensor):
            if isinstance(tensor, torch.Tensor) and tensor.dim() >= 1 and tensor.is_floating_point():
                tensor = acc.pad_across_processes(tensor, dim=0, pad_index=float("nan"))
            return original(tensor)

        acc.gather = gather
        try:
            yield
        finally:
            del acc.gather  # back to the class's method

    # ------------------------------------------------------------------------------------------------
    # Evaluation: the `evaluate` hook (eval_strategy / eval_steps) plays every held-out task once, greedily

    def evaluate(
        self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"
    ) -> dict[str, float]:
        """Success on the held-out tasks with the current weights, through `gcd_trl.eval` and this trainer's
        generation backend (greedy), in the training env pool, sharded over processes. Logs and returns the
        rates `gcd-trl eval` reports (`eval.report.episode_rates`: `eval/success_rate`, `eval/mean_steps`,
        `eval/invalid_rate`, `eval/inadmissible_rate`, `eval/repeated_rate`, ...), and `eval/episodes`."""
        from gcd_trl.eval import evaluate as play
        from gcd_trl.eval.report import COUNT_KEYS, episode_rates

        tasks = (
            [Task.from_dict(dict(r)) for r in eval_dataset] if eval_dataset is not None else self.eval_tasks
        )
        if not tasks:
            raise ValueError(
                "AgentGRPOTrainer.evaluate: no eval tasks (pass eval_dataset, or set eval_split)"
            )
        acc = self.accelerator
        settings = dataclasses.replace(self.env_args, suggestions=self._suggestions())
        t0 = time.perf_counter()
        with self.generator.greedy():
            report = play(
                self._generate_turn,
                tasks,
                settings,
                None,
                pool=self.env_pool,
                sync_max=self._sync_max if acc.num_processes > 1 else None,
                shard=(acc.process_index, acc.num_processes),
                progress=acc.is_main_process and not self.args.disable_tqdm,
                meta_reasoning=self.meta_reasoning,
            )
        totals = sum_over_processes(acc, [report["local"][k] for k in COUNT_KEYS])
        rates = episode_rates(dict(zip(COUNT_KEYS, totals)))
        p = metric_key_prefix
        metrics = {f"{p}/{k}": float(v) for k, v in rates.items() if k != "success" and v is not None}
        metrics[f"{p}/time"] = time.perf_counter() - t0
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    # ------------------------------------------------------------------------------------------------
    # Metrics

    def _log_round(self, rollout, samples: list[StepSample], rnd: _Round, t_round: float) -> None:
        device = self.accelerator.device
        eps = rollout.episodes
        adv = [s.advantage for s in samples]
        stats = torch.tensor(
            [
                len(eps),
                sum(e.won for e in eps),
                sum(e.length for e in eps),
                sum(e.score for e in eps),
                sum(e.aborted for e in eps),
                len(samples),
                sum(not s.record.valid for s in samples),
                sum(s.record.valid and s.record.admissible is False for s in samples),
                sum(s.repeated for s in samples),
                sum(s.truncated for s in samples),
                sum(len(s.prompt_ids) + len(s.completion_ids) for s in samples),
                sum(len(s.completion_ids) for s in samples),
                sum(u.padded_tokens for u in rnd.updates),
                rollout.pool_restarts,
                sum(adv),
                sum(a * a for a in adv),
            ],
            dtype=torch.float64,
            device=device,
        )
        ext = torch.tensor(
            [-min(adv, default=math.inf), max(adv, default=-math.inf)], dtype=torch.float64, device=device
        )
        if self.accelerator.num_processes > 1:
            stats = self.accelerator.reduce(stats, reduction="sum")
            ext = self.accelerator.reduce(ext, reduction="max")
        (
            n_ep,
            wins,
            length,
            score,
            aborted,
            n,
            invalid,
            inadmissible,
            repeated,
            truncated,
            tokens,
            ctokens,
            padded,
            restarts,
            adv_sum,
            adv_sq,
        ) = stats.tolist()
        m = self._metrics["train"]
        m["rollout/episodes"].append(n_ep)
        m["rollout/success_rate"].append(wins / max(n_ep, 1))
        m["rollout/episode_length"].append(length / max(n_ep, 1))
        m["rollout/score"].append(score / max(n_ep, 1))
        m["rollout/aborted_episodes"].append(aborted)
        m["rollout/pool_restarts"].append(restarts)
        m["rollout/samples"].append(n)
        m["rollout/invalid_rate"].append(invalid / max(n, 1))
        m["rollout/inadmissible_rate"].append(inadmissible / max(n, 1))  # well-formed, not on the list
        m["rollout/repeated_action_rate"].append(repeated / max(n, 1))
        m["rollout/truncated_rate"].append(truncated / max(n, 1))
        m["rollout/tokens"].append(tokens)
        m["rollout/completion_tokens"].append(ctokens)
        m["batching/microbatches"].append(sum(len(u.microbatches) for u in rnd.updates))
        m["batching/padding_fraction"].append(1.0 - tokens / padded if padded else 0.0)
        mean = adv_sum / max(n, 1)
        m["advantages/mean"].append(mean)
        m["advantages/std"].append(math.sqrt(max(adv_sq / max(n, 1) - mean * mean, 0.0)))
        neg_lo, hi = ext.tolist()
        m["advantages/min"].append(-neg_lo if n else 0.0)
        m["advantages/max"].append(hi if n else 0.0)
        m["time/generation"].append(rollout.time_generation)
        m["time/env"].append(rollout.time_env)
        m["time/logps"].append(rnd.time_logps)
        m["time/round_build"].append(t_round)
        self._tally_round(eps, n_ep, wins, length, invalid, n)
        self.state.num_input_tokens_seen += int(tokens)
        m["num_tokens"] = [self.state.num_input_tokens_seen]

    # ------------------------------------------------------------------------------------------------
    # Checkpoints

    def _sampler_state(self) -> dict[str, Any]:
        state = self.task_sampler.state_dict()
        mid_round = self._round is not None and bool(self._queue)
        if mid_round:  # the resumed run must replay the round in flight: point the cursor back at it
            state["round"] = self._round.index
            state["round_steps_done"] = self._round_steps - len(self._queue)
        state["global_step"] = self.state.global_step
        state["num_iterations"] = self.num_iterations
        return state

    def _save_checkpoint(self, model, trial):
        """Our state goes in first, Trainer's last: Trainer writes `trainer_state.json` after the weights and
        the optimizer, then prunes older checkpoints, so a checkpoint holding `trainer_state.json` is
        complete and a kill at any moment leaves one (see `find_resumable_checkpoint`)."""
        if self.args.should_save:
            folder = os.path.join(
                self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            )
            os.makedirs(folder, exist_ok=True)
            files.write_json_atomic(os.path.join(folder, SAMPLER_STATE_NAME), self._sampler_state())
            if self.judge_task is not None:  # golden rules, static-row cursor, external judge budget
                files.write_json_atomic(os.path.join(folder, JUDGE_STATE_NAME), self.judge_task.state_dict())
        super()._save_checkpoint(model, trial)

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None:
            return
        path = os.path.join(checkpoint, SAMPLER_STATE_NAME)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{path} is missing: this checkpoint was not written by AgentGRPOTrainer, so the task "
                "sequence cannot be resumed"
            )
        with open(path) as f:
            state = json.load(f)
        self.task_sampler.load_state_dict(state)
        if self.accelerator.is_main_process:
            mid = " (mid-round: the round is played again)" if "round_steps_done" in state else ""
            print(
                f"gcd-trl: resuming from {checkpoint} at optimizer step {state.get('global_step')}, "
                f"round {state['round']}{mid}",
                flush=True,
            )
        self._round = None
        self._queue.clear()
        self._skip_updates = int(state.get("round_steps_done", 0))
        judge_path = os.path.join(checkpoint, JUDGE_STATE_NAME)
        if self.judge_task is not None and os.path.isfile(judge_path):
            with open(judge_path) as f:
                self.judge_task.load_state_dict(json.load(f))
            if self._collector is not None:
                self._collector.suggestions = self._suggestions()

    # ------------------------------------------------------------------------------------------------
    # What a user reads: sampled steps (log_completions), success per task type, the end-of-run summary

    def _log_completion_rows(self, samples: list[StepSample], index: int) -> None:
        """TRL's completions table (console, wandb/trackio, output_dir/completions/*.parquet) for agent steps:
        a seeded sample of each process's steps (as many as TRL logs per generation batch), gathered."""
        import random

        from accelerate.utils import gather_object

        k = self.task_sampler.tasks_per_round // self.accelerator.num_processes * self.num_generations
        rng = random.Random(f"{self.args.seed}:{index}:{self.accelerator.process_index}")
        picked = sorted(rng.sample(range(len(samples)), min(k, len(samples))))
        won = {(s.record.group, s.record.traj) for s in samples if s.record.won}
        rows = [
            (
                s.record.prompt,
                s.record.completion,
                float(s.record.env_reward),
                float((s.record.group, s.record.traj) in won),
                s.advantage,
                "valid" if s.record.valid else f"invalid: {s.record.reason}",
                s.record.action or "",
            )
            for s in (samples[i] for i in picked)
        ]
        if self.accelerator.num_processes > 1:
            rows = gather_object(rows)
        logs = self._logs
        for prompt, completion, env_reward, episode_won, advantage, validity, action in rows:
            logs["prompt"].append(prompt)
            logs["completion"].append(completion)
            logs["rewards"]["env_reward"].append(env_reward)
            logs["rewards"]["episode_won"].append(episode_won)
            logs["advantages"].append(advantage)
            logs["extra"]["validity"].append(validity)
            logs["extra"]["action"].append(action)

    def _tally_round(self, eps, n_ep: float, wins: float, length: float, invalid: float, n: float) -> None:
        """`rollout/success_rate/<task type>` for this round (all processes), and the run's running totals
        for `summary.json`. The type keys come from the full task list, the same on every process."""
        if not hasattr(self, "_run_totals"):
            self._type_of = {t.key: task_type_name(t) for t in self.tasks}
            self._type_keys = sorted(set(self._type_of.values()))
            self._run_totals = {"rounds": 0, "episodes": 0.0, "wins": 0.0, "steps": 0.0, "invalid": 0.0}
            self._run_totals.update(samples=0.0, by_type={k: [0.0, 0.0] for k in self._type_keys})
            self._round_success: list[float] = []
        counts = torch.zeros(2 * len(self._type_keys), dtype=torch.float64, device=self.accelerator.device)
        slot = {k: i for i, k in enumerate(self._type_keys)}
        for e in eps:
            i = slot.get(self._type_of.get(e.task, ""))
            if i is not None:
                counts[2 * i] += 1
                counts[2 * i + 1] += float(e.won)
        if self.accelerator.num_processes > 1:
            counts = self.accelerator.reduce(counts, reduction="sum")
        totals = self._run_totals
        for key, (episodes, won) in zip(self._type_keys, counts.view(-1, 2).tolist()):
            if episodes:
                self._metrics["train"][f"rollout/success_rate/{key}"].append(won / episodes)
                totals["by_type"][key][0] += episodes
                totals["by_type"][key][1] += won
        totals["rounds"] += 1
        totals["episodes"] += n_ep
        totals["wins"] += wins
        totals["steps"] += length
        totals["invalid"] += invalid
        totals["samples"] += n
        self._round_success.append(wins / max(n_ep, 1))

    def train(self, *args, **kwargs):
        """TRL's train, then `output_dir/summary.json` and a short table of the run (main process)."""
        output = super().train(*args, **kwargs)
        self.write_run_summary(output)
        return output

    def write_run_summary(self, output=None) -> dict[str, Any] | None:
        """What the run did, in numbers: success overall, in the first and last rounds and per task type,
        invalid rate, episode length, optimizer steps, runtime. Written to `output_dir/summary.json`."""
        totals = getattr(self, "_run_totals", None)
        if totals is None or not self.is_world_process_zero():
            return None
        a, e = self.args, self.env_args
        episodes = max(totals["episodes"], 1)
        summary = {
            "estimator": a.advantage_estimator,
            "environment": e.environment,
            "split": f"{e.split} ({e.part})",
            "tasks": len(self.tasks),
            "gcd": bool(self.gcd_args is not None and self.gcd_args.gcd),
            "rounds_this_session": totals["rounds"],
            "optimizer_steps": self.state.global_step,
            "episodes": int(totals["episodes"]),
            "success_rate": totals["wins"] / episodes,
            "success_rate_first_round": self._round_success[0],
            "success_rate_last_round": self._round_success[-1],
            "success_rate_by_task_type": {
                k: {"episodes": int(n), "success_rate": w / n} for k, (n, w) in totals["by_type"].items() if n
            },
            "mean_episode_length": totals["steps"] / episodes,
            "invalid_rate": totals["invalid"] / max(totals["samples"], 1),
            "train_runtime_s": round(
                float((output.metrics if output is not None else {}).get("train_runtime", 0)), 1
            ),
            "train_loss": None if output is None else output.training_loss,
            "output_dir": a.output_dir,
        }
        os.makedirs(a.output_dir, exist_ok=True)
        files.write_json_atomic(os.path.join(a.output_dir, "summary.json"), summary)
        lines = [
            f"gcd-trl: run summary ({os.path.join(a.output_dir, 'summary.json')})",
            f"  {summary['estimator']} on {e.environment} {summary['split']}: {summary['rounds_this_session']} rounds, "
            f"{summary['optimizer_steps']} optimizer steps, {summary['episodes']} episodes",
            f"  success rate {summary['success_rate']:.3f} (first round {summary['success_rate_first_round']:.3f}, "
            f"last round {summary['success_rate_last_round']:.3f}); invalid rate {summary['invalid_rate']:.3f}; "
            f"mean episode length {summary['mean_episode_length']:.1f}",
        ]
        for key, v in summary["success_rate_by_task_type"].items():
            lines.append(f"    {key:<34} {v['success_rate']:.3f}  ({v['episodes']} episodes)")
        print("\n".join(lines), flush=True)
        return summary

    def _issue_warnings_after_load(self, load_result: Any) -> None:
        """Tied weights (lm_head = embed_tokens) are not saved, so a resumed checkpoint "misses" them; the
        model re-ties them. Only other missing keys are worth a warning."""
        model = self.accelerator.unwrap_model(self.model)
        tied = set(
            getattr(model, "all_tied_weights_keys", None) or getattr(model, "_tied_weights_keys", None) or ()
        )
        missing = [
            k for k in load_result.missing_keys if not any(k == t or k.endswith("." + t) for t in tied)
        ]
        if len(missing) != len(load_result.missing_keys) and hasattr(load_result, "_replace"):
            model.tie_weights()
            load_result = load_result._replace(missing_keys=missing)
        super()._issue_warnings_after_load(load_result)

    # ------------------------------------------------------------------------------------------------
    # Model card

    def create_model_card(self, model_name=None, dataset_name=None, tags=None):
        super().create_model_card(model_name=model_name, dataset_name=dataset_name, tags=tags)
        if not self.is_world_process_zero():
            return
        a, e = self.args, self.env_args
        lines = [
            "",
            "## Agent RL settings (gcd-trl)",
            "",
            f"- advantage estimator: `{a.advantage_estimator}`"
            + (f" (grpo_level={a.grpo_level})" if a.advantage_estimator == "grpo" else "")
            + (
                f" (gamma={a.gamma}, omega={a.omega}, step_adv_norm={a.step_adv_norm})"
                if a.advantage_estimator == "gigpo"
                else ""
            ),
            f"- environment: `{e.environment}`, split `{e.split}` ({e.part}), {len(self.tasks)} tasks, "
            f"{e.max_episode_steps} steps per episode, "
            f"history {'the template default' if e.history_length is None else e.history_length}",
            f"- round: {a.tasks_per_round} tasks x G={a.num_generations}, loss_type `{a.loss_type}`, "
            f"beta={a.beta}, num_iterations={a.num_iterations}, invalid_penalty={a.invalid_penalty}",
        ]
        g = self.gcd_args
        if g is not None:
            lines.append(
                f"- GCD: {'on' if g.gcd else 'off'}"
                + (
                    f" (gcd_coef={g.gcd_coef}, judge_labels={g.judge_labels}, correction={g.correction})"
                    if g.gcd
                    else ""
                )
            )
        with open(os.path.join(self.args.output_dir, "README.md"), "a") as f:
            f.write("\n".join(lines) + "\n")
