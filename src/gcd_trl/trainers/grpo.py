"""`AgentGRPOTrainer`: TRL's GRPOTrainer trained on transitions of multi-turn text-env episodes.

One optimizer step = one round (per `num_iterations` pass). A round plays `tasks_per_round` tasks x G
episodes in the env pool, generating for every live env at once each turn; every env step becomes one
sample (prompt = task + recent history + observation, completion = the model's think + action). The
round's samples get advantages from `gcd_trl.advantages`, are cut into token-budget micro-batches (the same
count on every process, `trainers.microbatch`) and go through TRL's own `_compute_loss` (clipping, KL, loss
types), scaled so the round's gradient is the loss type's formula over the whole round, however it was cut.
With GCD on, the policy also judges its own steps (`gcd.cotrain`) and the judge samples join the step.

How it maps onto TRL / transformers hooks:
- `get_train_dataloader`: yields one "ticket" per optimizer step (the tasks come from `RoundTaskSampler`,
  whose cursor is checkpointed), so `max_steps` counts optimizer steps = rounds x num_iterations.
- `training_step`: builds a round when needed (generation through `generation.TrainerGenerator`: TRL's
  `_generate_single_turn`, i.e. transformers `generate` under `unwrap_model_for_generation`, or TRL's vLLM
  backend), then runs forward/backward over its micro-batches with gradient sync only on the last one;
  Trainer then clips and steps the optimizer as usual (gradient_accumulation_steps = 1).
- `_save_checkpoint` / `_load_optimizer_and_scheduler`: also save / restore the task sampler and the GCD
  state (`trainers.checkpoints`; rng states are the Trainer's own `rng_state.pth`).
- metrics, the run summary and the model card: `trainers.metrics`, `trainers.card`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from collections import deque
from typing import Any

import torch
from accelerate.utils import DistributedType
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl import GRPOTrainer
from trl.trainer.utils import identity

from gcd_trl import dist
from gcd_trl.envs.base import Task
from gcd_trl.gcd.cotrain import CoTraining, label_samples
from gcd_trl.generation import Generation, TrainerGenerator
from gcd_trl.rollout.collector import RolloutCollector
from gcd_trl.rollout.records import KINDS, write_jsonl_atomic
from gcd_trl.rollout.samples import AgentSample, Sample
from gcd_trl.trainers import checkpoints, metrics
from gcd_trl.trainers.card import read_run_config, write_rl_card, write_run_config
from gcd_trl.trainers.grpo_config import check_advantage_fields, derive_max_steps, resolved_dict
from gcd_trl.trainers.logps import add_old_and_ref_logps, score_completions_only
from gcd_trl.trainers.microbatch import LOSS_TYPES, Round, Update, chunk, collate, cut_update
from gcd_trl.trainers.sampler import RoundTaskSampler, split_rows, tasks_fingerprint


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


class AgentGRPOTrainer(GRPOTrainer):
    """GRPOTrainer over env transitions. See the module docstring for the round structure.

    Args:
        model: a model id/path or a `PreTrainedModel` (as GRPOTrainer).
        args: `trainers.grpo_config.AgentGRPOConfig`.
        train_dataset: one row per task (`Task.to_dict()` fields; GCD judge rows with kind=judge).
        env_args: `rollout.settings.EnvArguments` (the env, episode length, prompt, pool size).
        env_pool: an `EnvPool` to use instead of building one from `env_args` (it is not closed by us).
        gcd_args: `gcd.args.GCDArguments` (GCD on: `gcd.cotrain`; named in the model card).
        processing_class, callbacks, optimizers, peft_config, quantization_config: as GRPOTrainer.
    """

    _tag_names = ["trl", "grpo", "gcd-trl", "agent"]
    _name = "AgentGRPO"
    card_repo_id: str | None = None  # the Hub repo the card's quick start names (set before a push)
    _critic_targets = False  # micro-batches carry the critic's targets (trainers.ppo)

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
        gcd_on = gcd_args is not None and gcd_args.gcd
        rows = [dict(r) for r in train_dataset] if train_dataset is not None else []
        self.tasks, judge_rows = split_rows(rows, env_args, gcd_on)
        self.env_args, self.gcd_args = env_args, gcd_args
        self.meta_reasoning = env_args.meta_reasoning_for(args.advantage_estimator)
        # held-out tasks for the `eval_steps` hook (gcd_trl.eval, greedy, every task once)
        self.eval_tasks = [Task.from_dict(dict(r)) for r in eval_dataset] if eval_dataset is not None else []
        derive_max_steps(args, env_args)
        # built (and validated) before the model loads; reused every round
        self.advantage_config = check_advantage_fields(args)  # incl. success_reward, gigpo_step_reward
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
        acc = self.accelerator
        self.task_sampler = RoundTaskSampler(
            len(self.tasks),
            args.tasks_per_round,
            seed=args.seed,
            shuffle=bool(args.shuffle_dataset),
            num_processes=acc.num_processes,
            process_index=acc.process_index,
            fingerprint=tasks_fingerprint(rows),
        )
        self._env_pool = env_pool
        self._owns_pool = env_pool is None
        self._collector: RolloutCollector | None = None
        self._round: Round | None = None
        self._queue: deque[Update] = deque()  # the current round's optimizer steps still to take
        self._round_steps = 0  # optimizer steps of the current round, num_iterations passes included
        self._skip_updates = 0  # set on resume: steps of the replayed round the checkpoint already took
        self._need_old_logps = self.num_iterations > 1
        # TRL's entropy bonus is a per-micro-batch mean; ours is a token mean over each optimizer step
        self._entropy_coef = float(args.entropy_coef)
        self._entropy_bonus_enabled = False
        self._last_entropies: torch.Tensor | None = None
        self.generator = TrainerGenerator(self)
        self.run_summary = metrics.RunSummary(self.tasks)
        self.cotrain: CoTraining | None = None
        if gcd_on:
            self.cotrain = CoTraining(
                gcd_args,
                args.output_dir,
                accelerator=acc,
                generate=lambda prompts: self._generate_turn(prompts),
                max_new_tokens=self.generator.max_new_tokens,
                seed=args.seed,
                judge_rows=judge_rows,
                scale_rewards=args.scale_rewards,
            )
        # L = L_agent + gcd_coef x L_judge (gcd_coef = 0: the judge answers and is logged, not trained)
        self.gcd_coef = self.cotrain.coef if self.cotrain is not None else 0.0

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
            per_process = self.task_sampler.tasks_per_round // self.accelerator.num_processes
            self._env_pool = ea.make_pool(ea.num_envs or per_process * self.num_generations)
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
                suggestions=self._suggestions,
            )
        return self._collector

    def _suggestions(self) -> str | list[str]:
        """The agent prompt's {suggestions}: the configured text, then the current golden rules."""
        rules = self.cotrain.suggestions() if self.cotrain is not None else []
        if not rules:
            return self.env_args.suggestions
        return ([self.env_args.suggestions] if self.env_args.suggestions else []) + rules

    def _sync_max(self, value: int) -> int:
        return dist.max_over_processes(self.accelerator, value)

    def _generate_turn(self, prompts: list[str]) -> list[Generation]:
        """The collector's `generate`: this trainer's `TrainerGenerator` (tests swap in scripted policies)."""
        return self.generator.generate(prompts)

    # ------------------------------------------------------------------------------------------------
    # Round building

    def _advantages(self, samples: list[AgentSample]) -> list[float]:
        from gcd_trl.advantages import compute_advantage_terms

        records = [s.record_dict for s in samples]
        return compute_advantage_terms(records, self.advantage_config).total.tolist()

    def _wants_labels(self) -> bool:
        """Whether the round's steps need their GCD rule labels (the judge task; the value head)."""
        return self.cotrain is not None

    def _build_round(self) -> Round:
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
        if self._wants_labels():
            label_samples(samples, index)  # once per round, for every consumer
        m = self._metrics["train"]
        judge = []
        if self.cotrain is not None:
            judge, judge_tokens = self.cotrain.judge_round(samples, index, m)
            self.state.num_input_tokens_seen += judge_tokens
            self.cotrain.update_rules(index, m)
        rnd = self._make_round(samples + judge if self.gcd_coef > 0 else samples, index)
        totals = metrics.log_round(m, self.accelerator, rollout, samples, rnd, time.perf_counter() - t_round)
        self.run_summary.tally(m, self.accelerator, rollout.episodes, totals)
        self.state.num_input_tokens_seen += int(totals["tokens"])
        m["num_tokens"] = [self.state.num_input_tokens_seen]
        if self.log_completions:
            k = per_process * self.num_generations
            seed = f"{self.args.seed}:{index}:{self.accelerator.process_index}"
            metrics.log_completions(self._logs, self.accelerator, samples, k, seed)
        if self.args.save_rollouts:
            name = f"round_{index:05d}_rank{self.accelerator.process_index}.jsonl"
            rows = [s.row(index) for s in samples + judge]
            write_jsonl_atomic(os.path.join(self.args.output_dir, "rollouts", name), rows)
        return rnd

    def _make_round(self, samples: list[Sample], index: int = 0) -> Round:
        """Cut the round into optimizer steps (`ppo_mini_batch_size` agent samples each, judge samples spread
        evenly over them), then each step into micro-batches. Old log-probs are computed here, once, before
        any step changes the weights."""
        t_logps = time.perf_counter()
        agent = [s for s in samples if s.kind == "agent"]
        judge = [s for s in samples if s.kind == "judge"]
        num_updates = 1
        if self.args.ppo_mini_batch_size:
            total = dist.sum_over_processes(self.accelerator, [len(agent)], torch.long)[0]
            num_updates = max(1, math.ceil(total / self.args.ppo_mini_batch_size))
        self._need_old_logps = num_updates > 1 or self.num_iterations > 1
        gaps: list = []
        updates = [
            self._make_update(chunk(agent, num_updates, k) + chunk(judge, num_updates, k), gaps)
            for k in range(num_updates)
        ]
        if gaps:
            metrics.log_sampling_gap(self._metrics["train"], gaps)
        return Round(updates, index, time.perf_counter() - t_logps)

    def _make_update(self, samples: list[Sample], gaps: list | None = None) -> Update:
        """Micro-batches under the token budget, one sample kind each, the same count on every process, each
        with the loss scale that makes the step's loss L_agent + gcd_coef x L_judge, every term the loss
        type's formula over its own samples (so independent of the cut into micro-batches and processes)."""
        acc = self.accelerator
        cut = cut_update(
            samples,
            self.args.max_tokens_per_microbatch,
            mask_truncated=self.mask_truncated_completions,
            kinds=KINDS,
            num_processes=acc.num_processes,
            max_over_processes=self._sync_max,
            sum_over_processes=lambda v: [int(x) for x in dist.sum_over_processes(acc, v, torch.long)],
        )
        coef = {"agent": 1.0, "judge": self.gcd_coef}
        update = Update([], [], [], cut.plan, cut.totals, cut.padded_tokens)
        for k, idx in enumerate(cut.plan):
            mb = self._collate([samples[i] for i in idx])
            num_items, factor, entropy_scale = cut.scale(k, self.loss_type, coef[cut.kinds[k]])
            mb["num_items_in_batch"] = torch.tensor(num_items, device=acc.device)
            add_old_and_ref_logps(self, mb, self._need_old_logps)
            if gaps is not None and "old_per_token_logps" in mb and "sampling_per_token_logps" in mb:
                gaps.append(metrics.sampling_gap(mb))
            update.microbatches.append(mb)
            update.factors.append(factor)
            update.entropy_scales.append(entropy_scale)
        return update

    def _collate(self, samples: list[Sample]) -> dict[str, Any]:
        """A micro-batch's model inputs (`microbatch.collate`; with a critic, its targets too)."""
        return collate(
            samples,
            self._tokenizer.pad_token_id,
            self.accelerator.device,
            mask_truncated=self.mask_truncated_completions,
            sampling_logps=self.use_vllm,
            critic_targets=self._critic_targets,
        )

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

    def _accumulate(self, model, update: Update) -> torch.Tensor:
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
        `trainers.token`), added after the loss scale. None: nothing to add."""
        return None

    def _get_per_token_logps_and_entropies(self, *args, **kwargs):
        """TRL's log-prob pass; keeps the entropies of the loss pass for our entropy bonus (see _accumulate)."""
        with score_completions_only():
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
        totals = dist.sum_over_processes(acc, [report["local"][k] for k in COUNT_KEYS])
        rates = episode_rates(dict(zip(COUNT_KEYS, totals)))
        p = metric_key_prefix
        out = {f"{p}/{k}": float(v) for k, v in rates.items() if k != "success" and v is not None}
        out[f"{p}/time"] = time.perf_counter() - t0
        self.log(out)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, out)
        return out

    # ------------------------------------------------------------------------------------------------
    # Checkpoints (trainers.checkpoints): our state goes in first, Trainer's last

    def _checkpoint_folder(self, trial) -> str:
        return os.path.join(
            self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        )

    def _sampler_state(self) -> dict[str, Any]:
        state = self.task_sampler.state_dict()
        if self._round is not None and self._queue:  # mid-round: the resumed run replays the round in flight
            state["round"] = self._round.index
            state["round_steps_done"] = self._round_steps - len(self._queue)
        state["global_step"] = self.state.global_step
        state["num_iterations"] = self.num_iterations
        return state

    def _save_checkpoint(self, model, trial):
        """Trainer writes `trainer_state.json` after the weights and the optimizer, then prunes older
        checkpoints, so a checkpoint holding it is complete (`checkpoints.find_resumable_checkpoint`)."""
        if self.args.should_save:
            judge = self.cotrain.state_dict() if self.cotrain is not None else None
            checkpoints.save_run_state(self._checkpoint_folder(trial), self._sampler_state(), judge)
        super()._save_checkpoint(model, trial)

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None:
            return
        state = checkpoints.load_sampler_state(checkpoint)
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
        judge = checkpoints.load_judge_state(checkpoint) if self.cotrain is not None else None
        if judge is not None:
            self.cotrain.load_state_dict(judge)

    def _issue_warnings_after_load(self, load_result: Any) -> None:
        model = self.accelerator.unwrap_model(self.model)
        super()._issue_warnings_after_load(checkpoints.without_tied_keys(model, load_result))

    # ------------------------------------------------------------------------------------------------
    # What a user reads at the end: summary.json (trainers.metrics), the model card (trainers.card)

    def train(self, *args, **kwargs):
        """TRL's train, then `output_dir/summary.json` and a short table of the run (main process)."""
        output = super().train(*args, **kwargs)
        self.write_run_summary(output)
        return output

    def write_run_summary(self, output=None) -> dict[str, Any] | None:
        if not self.is_world_process_zero():
            return None
        return self.run_summary.write(
            self.args, self.env_args, self.gcd_args, len(self.tasks), self.state.global_step, output
        )

    def create_model_card(self, model_name=None, dataset_name=None, tags=None):
        """gcd-trl's card (`trainers.card`), not TRL's, from output_dir/run_config.yaml (written by
        `trainers.run`; from this trainer's own arguments when it was built another way)."""
        if not self.is_world_process_zero():
            return
        out = self.args.output_dir
        if not read_run_config(out):
            from trl import ModelConfig

            from gcd_trl.gcd.args import GCDArguments

            base = ModelConfig(model_name_or_path=getattr(self.model.config, "_name_or_path", None))
            write_run_config(
                out, resolved_dict(self.args, self.env_args, self.gcd_args or GCDArguments(), base, full=True)
            )
        played = {"rounds": self.task_sampler.round, "optimizer_steps": self.state.global_step}
        write_rl_card(out, repo_id=self.card_repo_id, played=played)
