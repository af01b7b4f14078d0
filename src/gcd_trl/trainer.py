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
import json
import math
import os
import time
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

from gcd_trl.advantages import AdvantageConfig, compute_advantage_terms
from gcd_trl.envs.base import Task
from gcd_trl.rollout.batching import (
    LOSS_TYPES,
    RoundTaskSampler,
    RoundTotals,
    equalize_microbatches,
    microbatch_loss_scale,
    pack_microbatches,
    padded_tokens,
    tasks_fingerprint,
)
from gcd_trl.rollout.collector import Generation, RolloutCollector, StepSample

SAMPLER_STATE_NAME = "task_sampler.json"


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
class _Round:
    """A built round: its micro-batches (model inputs) and how each one's loss is scaled."""

    microbatches: list[dict[str, Any]]
    factors: list[float]
    index: int  # the round's number (task sampler cursor)
    plan: list[list[int]]  # sample indices of each micro-batch
    totals: RoundTotals
    time_logps: float = 0.0


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
        self.tasks = [Task.from_dict(r) for r in rows]
        bad = sorted({t.env for t in self.tasks} - {env_args.environment})
        if bad:
            raise ValueError(
                f"AgentGRPOTrainer: train_dataset has tasks of env {bad[0]!r} "
                f"but environment={env_args.environment!r}"
            )
        self.env_args, self.gcd_args = env_args, gcd_args
        # built (and validated) before the model loads; reused every round
        self.advantage_config = AdvantageConfig(
            estimator=args.advantage_estimator,
            gamma=args.gamma,
            omega=args.omega,
            norm=args.step_adv_norm,
            invalid_penalty=args.invalid_penalty,
            similarity_threshold=args.similarity_threshold,
            grpo_level=args.grpo_level,
        )
        super().__init__(
            model=model,
            reward_funcs=[_env_reward],
            args=args,
            train_dataset=train_dataset,
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
        self._eos_and_pad = {*self.eos_token_ids, self._tokenizer.pad_token_id}

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
            from gcd_trl.envs.base import EnvSpec
            from gcd_trl.envs.pool import EnvPool

            ea = self.env_args
            spec = EnvSpec(
                ea.environment,
                jvm_heap=ea.jvm_heap,
                simplifications=ea.simplifications,
                alfworld_expert=ea.alfworld_expert,
            )
            num_envs = (
                ea.num_envs
                or self.task_sampler.tasks_per_round // self.accelerator.num_processes * self.num_generations
            )
            self._env_pool = EnvPool(
                spec, num_envs, step_timeout=ea.step_timeout, reset_timeout=ea.reset_timeout
            )
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
                meta_reasoning=bool(self.env_args.meta_reasoning),
                progress=self.accelerator.is_main_process and not self.args.disable_tqdm,
            )
        return self._collector

    def _sync_max(self, value: int) -> int:
        t = torch.tensor([value], device=self.accelerator.device)
        return int(self.accelerator.reduce(t, reduction="max").item())

    def _generate_turn(self, prompts: list[str]) -> list[Generation]:
        """One batched generation for every live env of this process (TRL's generation backends).

        With several processes this is called in lockstep (the collector syncs the turn loop): backends
        whose generate is collective (vLLM server/TP colocate, ZeRO-3/FSDP) see the same number of calls,
        and vLLM, which slices its outputs by an equal per-process count, gets equal-size prompt lists.
        """
        n = len(prompts)
        conversations = [[{"role": "user", "content": p}] for p in prompts]
        prompt_ids = self._tokenize_prompts(conversations)[0] if conversations else []
        prompt_ids = [list(ids) for ids in prompt_ids]
        target = n
        if self.accelerator.num_processes > 1:
            if self.use_vllm:
                target = self._sync_max(n)
            elif n == 0:
                target = 1  # sharded models (ZeRO-3/FSDP) need every process in each forward
        dummy = [
            self._tokenizer.pad_token_id
            if self._tokenizer.bos_token_id is None
            else self._tokenizer.bos_token_id
        ]
        padded = prompt_ids + [list(prompt_ids[0]) if prompt_ids else dummy] * (target - n)
        if not padded:
            return []
        completion_ids, logprobs = self._generate_single_turn(padded, None, {}, 1)
        completion_ids = [list(c) for c in completion_ids[:n]]
        texts = self.processing_class.batch_decode(completion_ids, skip_special_tokens=True) if n else []
        out = []
        for i in range(n):
            ids = completion_ids[i]
            truncated = not ids or ids[-1] not in self._eos_and_pad
            out.append(
                Generation(prompt_ids[i], ids, texts[i], truncated, None if logprobs is None else logprobs[i])
            )
        return out

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
        rnd = self._make_round(samples, index)
        self._log_round(rollout, samples, rnd, time.perf_counter() - t_round)
        if self.args.save_rollouts:
            self._write_rollout(index, samples)
        return rnd

    def _write_rollout(self, index: int, samples: list[StepSample]) -> None:
        """One JSON line per step (the step record plus its advantage): `gcd-trl advantages` reads these."""
        folder = Path(self.args.output_dir) / "rollouts"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"round_{index:05d}_rank{self.accelerator.process_index}.jsonl"
        with path.open("w") as f:
            for s in samples:
                row = s.record.to_dict()
                row.update(advantage=s.advantage, truncated=s.truncated, round=index)
                f.write(json.dumps(row) + "\n")

    def _make_round(self, samples: list[StepSample], index: int = 0) -> _Round:
        """Micro-batches under the token budget, the same count on every process, each with its loss scale."""
        device = self.accelerator.device
        loss_tokens = [
            0 if (s.truncated and self.mask_truncated_completions) or s.weight == 0 else len(s.completion_ids)
            for s in samples
        ]
        plan = pack_microbatches(
            [len(s.prompt_ids) for s in samples],
            [len(s.completion_ids) for s in samples],
            self.args.max_tokens_per_microbatch,
        )
        num_mb, rows, tokens = self._round_counts(len(plan), len(samples), sum(loss_tokens))
        totals = RoundTotals(
            rows=rows,
            tokens=tokens,
            num_processes=self.accelerator.num_processes,
            num_microbatches=max(num_mb, 1),
        )
        plan = equalize_microbatches(plan, totals.num_microbatches)
        microbatches, factors, gaps = [], [], []
        t_logps = time.perf_counter()
        for idx in plan:
            mb = self._collate([samples[i] for i in idx])
            num_items, factor = microbatch_loss_scale(
                self.loss_type, totals, mb_rows=max(len(idx), 1), mb_tokens=sum(loss_tokens[i] for i in idx)
            )
            mb["num_items_in_batch"] = torch.tensor(num_items, device=device)
            self._add_old_and_ref_logps(mb)
            if "old_per_token_logps" in mb and "sampling_per_token_logps" in mb:
                gaps.append(self._sampling_gap(mb))
            microbatches.append(mb)
            factors.append(factor)
        if gaps:
            self._log_sampling_gap(gaps)
        return _Round(microbatches, factors, index, plan, totals, time.perf_counter() - t_logps)

    def _round_counts(self, num_microbatches: int, rows: int, tokens: int) -> tuple[int, int, int]:
        """(max micro-batches, total rows, total loss tokens) over all processes."""
        t = torch.tensor([num_microbatches, rows, tokens], device=self.accelerator.device, dtype=torch.long)
        if self.accelerator.num_processes > 1:
            t = torch.cat(
                [self.accelerator.reduce(t[:1], reduction="max"), self.accelerator.reduce(t[1:], "sum")]
            )
        return int(t[0]), int(t[1]), int(t[2])

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
        need_old = self.num_iterations > 1 or (self.use_vllm and self.vllm_importance_sampling_correction)
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
        """One call = one round (one `num_iterations` pass of it); Trainer then clips and steps."""
        t0 = time.perf_counter()
        model.train()
        if hasattr(self.optimizer, "train") and callable(self.optimizer.train):
            self.optimizer.train()
        if self._round is None or self.state.global_step % self.num_iterations == 0:
            self._round = None  # free the previous round's tensors before building the next
            self._round = self._build_round()
        t_bwd = time.perf_counter()
        loss = self._accumulate(model, self._round)
        self._metrics["train"]["time/backward"].append(time.perf_counter() - t_bwd)
        self._step += 1
        self._metrics["train"]["step_time"].append(time.perf_counter() - t0)
        return loss

    def _accumulate(self, model, rnd: _Round) -> torch.Tensor:
        """Forward/backward every micro-batch of the round, gradients synchronised on the last one only."""
        num_mb = len(rnd.microbatches)
        deepspeed = self.accelerator.distributed_type == DistributedType.DEEPSPEED
        kwargs = {"scale_wrt_gas": False} if deepspeed else {}
        saved_ga = getattr(self, "current_gradient_accumulation_steps", 1)
        self.current_gradient_accumulation_steps = num_mb  # TRL's per-micro-batch normalisers read this
        total = torch.zeros((), device=self.accelerator.device)
        try:
            with self._ragged_gather():
                for k, (mb, factor) in enumerate(zip(rnd.microbatches, rnd.factors)):
                    last = k == num_mb - 1
                    if deepspeed:  # the engine accumulates and steps on the boundary (accelerate's wrapper)
                        self.accelerator.gradient_state._set_sync_gradients(last)
                        ctx = contextlib.nullcontext()
                    else:
                        ctx = contextlib.nullcontext() if last else self.accelerator.no_sync(model)
                    with ctx:
                        with self.compute_loss_context_manager():
                            loss = self._compute_loss(model, mb) * factor
                        self.accelerator.backward(loss, **kwargs)
                    total += loss.detach()
        finally:
            self.current_gradient_accumulation_steps = saved_ga
            if deepspeed:
                self.accelerator.gradient_state._set_sync_gradients(True)
        return total

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
    # Metrics

    def _log_round(self, rollout, samples: list[StepSample], rnd: _Round, t_round: float) -> None:
        plan, totals = rnd.plan, rnd.totals
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
                sum(s.repeated for s in samples),
                sum(s.truncated for s in samples),
                sum(len(s.prompt_ids) + len(s.completion_ids) for s in samples),
                sum(len(s.completion_ids) for s in samples),
                sum(
                    padded_tokens(
                        idx, [len(s.prompt_ids) for s in samples], [len(s.completion_ids) for s in samples]
                    )
                    for idx in plan
                ),
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
        m["rollout/repeated_action_rate"].append(repeated / max(n, 1))
        m["rollout/truncated_rate"].append(truncated / max(n, 1))
        m["rollout/tokens"].append(tokens)
        m["rollout/completion_tokens"].append(ctokens)
        m["batching/microbatches"].append(totals.num_microbatches)
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
        self.state.num_input_tokens_seen += int(tokens)
        m["num_tokens"] = [self.state.num_input_tokens_seen]

    # ------------------------------------------------------------------------------------------------
    # Checkpoints

    def _sampler_state(self) -> dict[str, Any]:
        state = self.task_sampler.state_dict()
        mid_round = self._round is not None and self.state.global_step % self.num_iterations != 0
        if mid_round:  # the resumed run must replay the round in flight: point the cursor back at it
            state["round"] = self._round.index
        state["global_step"] = self.state.global_step
        state["num_iterations"] = self.num_iterations
        return state

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        if self.args.should_save:
            folder = os.path.join(
                self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            )
            with open(os.path.join(folder, SAMPLER_STATE_NAME), "w") as f:
                json.dump(self._sampler_state(), f, indent=2)

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
        self._round = None

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
            f"{e.max_episode_steps} steps per episode, history {e.history_length}",
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
