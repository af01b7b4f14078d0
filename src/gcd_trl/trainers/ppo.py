"""`AgentPPOTrainer`: PPO with a critic (`advantage_estimator: gae`), as verl-agent's PPO recipe runs it.

The paper's Table 1 "PPO" rows come from verl-agent's examples/ppo_trainer/run_alfworld.sh: the actor is
trained exactly as in the GRPO recipe (same rollouts, clip, KL loss, token-mean loss), but its advantages
come from a separate critic model:

- the critic is a token-classification copy of the actor's base model (`critic_model_name_or_path`,
  default the actor's; AutoModelForTokenClassification with one label, dropout off, a fresh scalar head, as
  verl builds it) with its own AdamW (lr `critic_learning_rate`, 1e-5 in the reference);
- each step sample is its own sequence: the critic gives a value per completion token (from the hidden
  state before the token, as the actor's log-probs), the step's score (episode reward with its invalid
  penalty, `success_reward x won` by default) sits on its last completion token, and token-level GAE
  (`gae_gamma`, `gae_lambda`, both 1 in verl) runs inside the sample; advantages are whitened over all
  loss-carrying tokens of the round, on all processes (`advantages.gae` states the recurrence);
- the values are computed once per round, before any update (the "old" values); the critic then trains on
  the same micro-batches as the actor, right after them, with verl's clipped value loss
  max((V - R)^2, (clip(V, V_old +- cliprange_value) - R)^2) as a token mean over the optimizer step's tokens
  on all processes (so the cut into micro-batches does not change it), its gradient clipped at
  `critic_max_grad_norm`, one critic optimizer step per actor optimizer step;
- `critic_warmup_rounds`: the first rounds train the critic only (verl's trainer.critic_warmup);
- metrics: critic/value_loss, critic/value_clip_fraction, critic/values_mean, critic/explained_variance,
  critic/returns_mean, critic/grad_norm;
- the critic's weights are part of the model folder (`critic/`), its optimizer part of every checkpoint
  (`critic/optimizer.pt`), both restored on resume.

Distributed: the critic is prepared by accelerate like the actor (DDP: wrapped, gradients synchronised on
the last micro-batch only; every process runs the same number of critic forwards and backwards). DeepSpeed
cannot hold a second trained model in one accelerate run and is refused; FSDP prepares the critic as its own
root module (not verified here). LoRA on the actor leaves the critic a full model, as in verl.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate.utils import DistributedType
from trl.models.utils import disable_gradient_checkpointing

from gcd_trl import dist
from gcd_trl.advantages import records_to_batch
from gcd_trl.advantages.gae import gae_advantages, masked_moments, token_rewards, whiten
from gcd_trl.advantages.grpo import episode_scores
from gcd_trl.rollout.samples import AgentSample
from gcd_trl.trainers import checkpoints
from gcd_trl.trainers.microbatch import Update, pack_microbatches
from gcd_trl.trainers.token import AgentTokenTrainer
from gcd_trl.trainers.value_head import load_pretrained_weights, model_path

CRITIC_DIR = "critic"
CRITIC_OPTIMIZER = "optimizer.pt"


def load_critic(path: str, model_init_kwargs: dict[str, Any] | None = None, seed: int = 0):
    """A one-label token-classification model from a causal LM checkpoint (the LM head is dropped, a fresh
    scalar head added; dropout off, as verl's critic). A fresh head is drawn from `seed` (N(0,
    initializer_range), bias 0), so every process and every rerun starts from the same critic."""
    from transformers import AutoConfig, AutoModelForTokenClassification

    kwargs = dict(model_init_kwargs or {})
    dtype = kwargs.get("dtype", "auto")
    if isinstance(dtype, str) and dtype != "auto":
        dtype = getattr(torch, dtype)
    keep = {k: kwargs[k] for k in ("revision", "attn_implementation", "trust_remote_code") if kwargs.get(k)}
    config = AutoConfig.from_pretrained(path, **{k: v for k, v in keep.items() if k != "attn_implementation"})
    config.num_labels = 1
    config.classifier_dropout = 0.0
    try:
        critic, info = AutoModelForTokenClassification.from_pretrained(
            path, config=config, dtype=dtype, output_loading_info=True, **keep
        )
    except ValueError as err:
        raise ValueError(
            f"critic: cannot build a token-classification model from {path} ({config.model_type}): {err}"
        ) from err
    fresh = set(info.get("missing_keys", []))
    gen = torch.Generator().manual_seed(seed)
    std = float(getattr(config, "initializer_range", 0.02))
    with torch.no_grad():
        for name, param in critic.named_parameters():
            if name in fresh:
                values = torch.randn(param.shape, generator=gen) * std if name.endswith("weight") else 0.0
                param.copy_(torch.as_tensor(values, dtype=param.dtype))
    return critic


class AgentPPOTrainer(AgentTokenTrainer):
    """AgentGRPOTrainer with a critic and token-level GAE advantages (see the module docstring).

    Args: as AgentGRPOTrainer, plus `critic_model` (a ready critic module; default: `load_critic`)."""

    _tag_names = ["trl", "ppo", "gcd-trl", "agent"]
    _name = "AgentPPO"
    _critic_targets = True  # returns, old values and the value mask in every micro-batch

    def __init__(self, model, args, *rest, critic_model=None, **kwargs) -> None:
        if args.advantage_estimator != "gae":
            raise ValueError(
                f"AgentPPOTrainer trains with advantage_estimator=gae, got {args.advantage_estimator!r}"
            )
        super().__init__(model, args, *rest, **kwargs)
        acc = self.accelerator
        if acc.distributed_type == DistributedType.DEEPSPEED:
            raise ValueError(
                "AgentPPOTrainer: DeepSpeed cannot train the critic next to the actor in one accelerate run; "
                "launch PPO with DDP (configs/accelerate/1gpu.yaml, multi-GPU DDP) or FSDP"
            )
        if critic_model is None:
            path = args.critic_model_name_or_path or model_path(model)
            if not path:
                raise ValueError("AgentPPOTrainer: set critic_model_name_or_path (the actor has no path)")
            critic_model = load_critic(path, args.model_init_kwargs, seed=args.seed)
        if args.activation_checkpointing:
            critic_model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs=args.activation_checkpointing_kwargs or {"use_reentrant": False}
            )
        critic_model.config.use_cache = False
        self.critic = acc.prepare_model(critic_model)
        self.critic_optimizer = torch.optim.AdamW(
            self.critic.parameters(),
            lr=args.critic_learning_rate,
            betas=(args.adam_beta1, args.adam_beta2),
            eps=args.adam_epsilon,
            weight_decay=args.critic_weight_decay,
        )
        max_norm = args.critic_max_grad_norm
        self._critic_max_norm = args.max_grad_norm if max_norm is None else max_norm

    # ------------------------------------------------------------------------------------------------
    # Values and advantages

    def _critic_values(self, critic, mb: dict[str, Any]) -> torch.Tensor:
        """(B, C) values of the completion tokens: the critic's output at the position before each token."""
        input_ids = torch.cat([mb["prompt_ids"], mb["completion_ids"]], dim=1)
        attention = torch.cat([mb["prompt_mask"], mb["completion_mask"]], dim=1)
        with self.accelerator.autocast():
            out = critic(input_ids=input_ids, attention_mask=attention)
        width = mb["completion_ids"].size(1)
        return out.logits[:, -width - 1 : -1, 0].float()

    @torch.no_grad()
    def _old_values(self, samples: list[AgentSample]) -> list[np.ndarray]:
        """Each sample's completion-token values under the current critic (eval mode, no grad), every process
        running as many forwards as the busiest."""
        critic = self.accelerator.unwrap_model(self.critic)
        was_training = critic.training
        critic.eval()
        packed = pack_microbatches(
            [len(s.prompt_ids) for s in samples],
            [max(len(s.completion_ids), 1) for s in samples],
            self.args.max_tokens_per_microbatch,
        )
        out: list = [None] * len(samples)
        try:
            with disable_gradient_checkpointing(critic, self.args.activation_checkpointing_kwargs):
                for idx in packed:
                    mb = self._collate([samples[i] for i in idx])  # ids and masks are what is read
                    values = self._critic_values(critic, mb).cpu().numpy()
                    for r, i in enumerate(idx):
                        out[i] = values[r, : len(samples[i].completion_ids)].astype(np.float64)
                pad = self._tokenizer.pad_token_id
                for _ in range(dist.max_over_processes(self.accelerator, len(packed)) - len(packed)):
                    ids = torch.tensor([[pad]], device=self.accelerator.device)
                    critic(input_ids=ids, attention_mask=torch.ones_like(ids))
        finally:
            critic.train(was_training)
        return out

    def _advantages(self, samples: list[AgentSample]) -> list[float]:
        """Token-level GAE from the critic's values, whitened over the round on all processes
        (`advantages.gae`); set as each sample's `token_advantages`, with the critic's targets (`returns`,
        `values`). Returns each sample's mean token advantage (for metrics and rollout files)."""
        t0 = time.perf_counter()
        a, acc = self.args, self.accelerator
        records = [s.record_dict for s in samples]
        scores = episode_scores(records_to_batch(records, config=self.advantage_config), a.invalid_penalty)
        lengths = np.array([len(s.completion_ids) for s in samples], dtype=np.int64)
        width = int(lengths.max(initial=1))
        keep = np.array(
            [s.weight != 0 and not (s.truncated and self.mask_truncated_completions) for s in samples],
            dtype=bool,
        )
        mask = (np.arange(width)[None, :] < lengths[:, None]) & keep[:, None]
        values = np.zeros((len(samples), width))
        for i, v in enumerate(self._old_values(samples)):
            values[i, : len(v)] = v
        values *= mask  # verl's critic: only response tokens have values
        rewards = token_rewards(scores, lengths, width)
        raw, returns = gae_advantages(rewards, values, a.gae_gamma, a.gae_lambda)
        n, total = dist.sum_over_processes(acc, masked_moments(raw, mask))
        mean = total / max(n, 1.0)
        res = returns - values
        sq, ret_sum, ret_sq, val_sum, res_sum, res_sq = dist.sum_over_processes(
            acc,
            [
                masked_moments(raw, mask, mean)[1],
                float(returns[mask].sum()),
                float((returns[mask] ** 2).sum()),
                float(values[mask].sum()),
                float(res[mask].sum()),
                float((res[mask] ** 2).sum()),
            ],
        )
        adv = whiten(raw, mean, sq, n) if n > 1 else raw - mean  # whitened over all processes' tokens
        per_sample = []
        for i, s in enumerate(samples):
            L = int(lengths[i])
            s.token_advantages = adv[i, :L].astype(np.float32)
            s.returns = returns[i, :L].astype(np.float32)
            s.values = values[i, :L].astype(np.float32)
            per_sample.append(float(adv[i, :L][mask[i, :L]].mean()) if mask[i].any() else 0.0)
        m = self._metrics["train"]
        if n:
            var = sq / (n - 1) if n > 1 else 0.0
            ret_var = ret_sq / n - (ret_sum / n) ** 2
            res_var = res_sq / n - (res_sum / n) ** 2
            m["critic/values_mean"].append(val_sum / n)
            m["critic/returns_mean"].append(ret_sum / n)
            m["critic/advantages_raw_mean"].append(mean)
            m["critic/advantages_raw_std"].append(float(np.sqrt(max(var, 0.0))))
            m["critic/explained_variance"].append(1.0 - res_var / ret_var if ret_var > 1e-12 else 0.0)
        m["time/critic_values"].append(time.perf_counter() - t0)
        return per_sample

    # ------------------------------------------------------------------------------------------------
    # The optimizer step: the actor's micro-batches, then the critic's on the same micro-batches

    def _in_critic_warmup(self) -> bool:
        return self._round is not None and self._round.index < self.args.critic_warmup_rounds

    def _accumulate(self, model, update: Update) -> torch.Tensor:
        if self._in_critic_warmup():
            self._metrics["train"]["critic/warmup"].append(1.0)
            loss = torch.zeros((), device=self.accelerator.device)  # no actor gradient: its optimizer skips
        else:
            loss = super()._accumulate(model, update)
        self._train_critic(update)
        return loss

    def _train_critic(self, update: Update) -> None:
        """The clipped value loss over the update's agent tokens (a token mean over all processes), one
        forward/backward per micro-batch (synchronised on the last), then the critic's optimizer step."""
        acc, critic = self.accelerator, self.critic
        P, M = acc.num_processes, len(update.microbatches)
        tokens = max(update.totals["agent"].tokens, 1)
        clip = self.args.cliprange_value
        critic.train()
        stats = torch.zeros(4, dtype=torch.float64, device=acc.device)
        for k, mb in enumerate(update.microbatches):
            mask = mb["value_mask"]
            if P == 1 and not bool(mask.any()):
                continue  # judge or padding rows: nothing to learn, and no other process to keep pace with
            ctx = acc.no_sync(critic) if P > 1 and k < M - 1 else contextlib.nullcontext()
            with ctx:
                vpreds = self._critic_values(critic, mb)
                old, ret = mb["old_values"], mb["returns"]
                clipped = old + (vpreds - old).clamp(-clip, clip)
                unclipped_loss, clipped_loss = (vpreds - ret) ** 2, (clipped - ret) ** 2
                per_token = torch.maximum(unclipped_loss, clipped_loss)
                loss = (per_token * mask).sum() * (P / tokens)
                acc.backward(loss)
            with torch.no_grad():
                stats += torch.stack(
                    [
                        mask.sum(),
                        (per_token * mask).sum(),
                        ((clipped_loss > unclipped_loss).float() * mask).sum(),
                        (vpreds * mask).sum(),
                    ]
                ).double()
        grad_norm = acc.clip_grad_norm_(critic.parameters(), self._critic_max_norm)
        self.critic_optimizer.step()
        self.critic_optimizer.zero_grad(set_to_none=True)
        if P > 1:
            stats = acc.reduce(stats, reduction="sum")
        n, loss_sum, clipped, vsum = stats.tolist()
        m = self._metrics["train"]
        if n:
            m["critic/value_loss"].append(loss_sum / n)
            m["critic/value_clip_fraction"].append(clipped / n)
            m["critic/vpred_mean"].append(vsum / n)
        m["critic/grad_norm"].append(float(grad_norm) if grad_norm is not None else 0.0)
        m["critic/lr"].append(self.critic_optimizer.param_groups[0]["lr"])

    # ------------------------------------------------------------------------------------------------
    # Checkpoints: critic weights in the model folder, its optimizer in the checkpoint

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        super().save_model(output_dir, _internal_call)
        state = self.accelerator.get_state_dict(self.critic)  # collective under sharding: every process
        if self.args.should_save:
            folder = Path(output_dir or self.args.output_dir) / CRITIC_DIR
            self.accelerator.unwrap_model(self.critic).save_pretrained(folder, state_dict=state)

    def _save_checkpoint(self, model, trial):
        if self.args.should_save:
            folder = Path(self._checkpoint_folder(trial)) / CRITIC_DIR
            checkpoints.save_optimizer(folder / CRITIC_OPTIMIZER, self.critic_optimizer)
        super()._save_checkpoint(model, trial)

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None:
            return
        folder = Path(checkpoint) / CRITIC_DIR
        opt = folder / CRITIC_OPTIMIZER
        if not opt.is_file():
            raise FileNotFoundError(
                f"{opt} is missing: this checkpoint holds no critic (not written by AgentPPOTrainer)"
            )
        load_pretrained_weights(self.accelerator.unwrap_model(self.critic), folder)
        checkpoints.load_optimizer(opt, self.critic_optimizer, self.accelerator.device)
