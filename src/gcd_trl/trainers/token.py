"""`AgentTokenTrainer`: AgentGRPOTrainer with per-token advantages and an auxiliary value-head loss.

Two of the paper's ablations (Table 3) change the actor's loss below the sample level; both live here so
that everything else (rollouts, batching, loss types, checkpoints) stays the lead trainer's:

- GRPO_nthr (`nthr: true`, any group-relative estimator): before the round's micro-batches are cut, one
  no-grad forward of the current (old) policy over the group's positive- and negative-advantage step
  samples gives each completion token's final hidden state and prediction error; `advantages.nthr` turns
  them into weights (eta or 1) for the negative samples' tokens, and those samples reach TRL's
  `_compute_loss` with a (B, C) advantage tensor (TRL 1.16 takes per-token advantages as they are).
- The value-head classifier (`value_head_coef > 0`): the round's agent steps get the GCD rule labels
  (`gcd.cotrain.label_samples`, once a round, shared with the judge task); in each micro-batch's loss
  forward a hook on the transformer body keeps the final hidden states, a scalar head
  (`value_head.ValueHead`) reads the last completion token of every labelled step, and coef x BCE (class-balanced, a weighted mean over the optimizer step's labelled steps
  on all processes) joins the actor's loss through `_auxiliary_loss`, so its gradient reaches the shared
  backbone. The head has its own AdamW (its gradient averaged over processes by hand), is written to every
  checkpoint and to the output folder (value_head.safetensors) and restored on resume.

`gcd_trl.trainers.ppo.AgentPPOTrainer` builds on this class for the critic's token-level GAE advantages.
"""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from trl.models.utils import disable_gradient_checkpointing

from gcd_trl import dist
from gcd_trl.advantages.nthr import group_success_rate, nthr_weights, prediction_errors
from gcd_trl.rollout.samples import AgentSample, Sample
from gcd_trl.trainers import checkpoints
from gcd_trl.trainers.grpo import AgentGRPOTrainer
from gcd_trl.trainers.microbatch import Update, carries_loss, pack_microbatches
from gcd_trl.trainers.value_head import (
    ValueHead,
    accuracy_counts,
    accuracy_metrics,
    backbone_and_lm_head,
    class_weights,
    find_head_file,
    hidden_size_of,
    last_hidden,
    model_path,
    weighted_bce,
)

VALUE_HEAD_OPTIMIZER = "value_head_optimizer.pt"


class AgentTokenTrainer(AgentGRPOTrainer):
    """AgentGRPOTrainer plus NTHR token weights and the value-head classifier (see the module docstring).

    Same arguments as AgentGRPOTrainer; the features are switched on by `args.nthr` and
    `args.value_head_coef`."""

    _name = "AgentGRPO-token"

    def __init__(self, model, args, *rest, **kwargs) -> None:
        super().__init__(model, args, *rest, **kwargs)
        self.value_head: ValueHead | None = None
        self._hidden: torch.Tensor | None = None
        self._capture_hidden = False
        if args.value_head_coef > 0:
            self._init_value_head(model_path(model))

    # ------------------------------------------------------------------------------------------------
    # Round building: per-sample data first (sample fields), then the lead trainer's micro-batches

    def _wants_labels(self) -> bool:
        return super()._wants_labels() or self.value_head is not None

    def _make_round(self, samples: list[Sample], index: int = 0):
        if self.args.nthr:
            self._nthr([s for s in samples if s.kind == "agent"])
        return super()._make_round(samples, index)

    def _make_update(self, samples: list[Sample], gaps: list | None = None) -> Update:
        update = super()._make_update(samples, gaps)
        if self.value_head is not None:
            self._add_value_targets(samples, update)
        return update

    # ------------------------------------------------------------------------------------------------
    # Hidden states and prediction errors of completion tokens (NTHR), from one no-grad policy forward

    def _completion_features(
        self, samples: list[AgentSample], vocab: list[int]
    ) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], int]:
        """Per sample: (hidden (T, d), prediction errors on `vocab` (T, |vocab|)) of its completion tokens,
        under the current weights and TRL's sampling temperature; and the number of forwards run."""
        device = self.accelerator.device
        body, head = backbone_and_lm_head(self.model)
        cols = torch.tensor(vocab, device=device)
        col_of = {tok: j for j, tok in enumerate(vocab)}
        packed = pack_microbatches(
            [len(s.prompt_ids) for s in samples],
            [len(s.completion_ids) for s in samples],
            self.args.max_tokens_per_microbatch,
        )
        out: list = [None] * len(samples)
        with (
            torch.no_grad(),
            disable_gradient_checkpointing(self.model, self.args.activation_checkpointing_kwargs),
            self.accelerator.autocast(),
        ):
            for idx in packed:
                mb = self._collate([samples[i] for i in idx])  # ids and masks are what is read
                input_ids = torch.cat([mb["prompt_ids"], mb["completion_ids"]], dim=1)
                attention = torch.cat([mb["prompt_mask"], mb["completion_mask"]], dim=1)
                hidden = last_hidden(body(input_ids=input_ids, attention_mask=attention, use_cache=False))
                width, start = mb["completion_ids"].size(1), mb["prompt_ids"].size(1) - 1
                for r, i in enumerate(idx):
                    ids = samples[i].completion_ids
                    h = hidden[r, start : start + len(ids)]
                    logits = head(h).float() / self.temperature
                    probs = torch.softmax(logits, dim=-1).index_select(1, cols)
                    targets = torch.tensor([col_of[t] for t in ids], device=device)
                    out[i] = (h.float(), prediction_errors(probs, targets))
                del hidden, width
        return out, len(packed)

    def _dummy_forward(self) -> None:
        """A one-token forward, so that every process runs as many forwards as the busiest (sharded models)."""
        body, _ = backbone_and_lm_head(self.model)
        pad = self._tokenizer.pad_token_id
        ids = torch.tensor([[pad]], device=self.accelerator.device)
        with torch.no_grad(), self.accelerator.autocast():
            body(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)

    def _nthr(self, agent: list[AgentSample]) -> None:
        """NTHR weights for the negative samples' tokens of every group holding positive and negative samples
        (`advantages.nthr`), set as the samples' `token_weights`."""
        t0 = time.perf_counter()
        a = self.args
        groups: dict[Any, list[int]] = defaultdict(list)
        won: dict[Any, dict[Any, bool]] = defaultdict(dict)  # group -> episode -> won (Deng et al.'s p)
        for s in agent:
            episodes = won[s.record.group]
            episodes[s.record.traj] = episodes.get(s.record.traj, False) or bool(s.record.won)
        for i, s in enumerate(agent):
            if carries_loss(s, self.mask_truncated_completions) and s.advantage != 0:
                groups[s.record.group].append(i)
        forwards, used, selected, tokens, tau_sum, eta_sum = 0, 0, 0, 0, 0.0, 0.0
        for idx in groups.values():
            pos = [i for i in idx if agent[i].advantage > 0]
            neg = [i for i in idx if agent[i].advantage < 0]
            if not pos or not neg:
                continue
            vocab = sorted({t for i in pos + neg for t in agent[i].completion_ids})
            feats, n = self._completion_features([agent[i] for i in pos + neg], vocab)
            forwards += n
            res = nthr_weights(
                [h for h, _ in feats[: len(pos)]],
                [g for _, g in feats[: len(pos)]],
                [h for h, _ in feats[len(pos) :]],
                [g for _, g in feats[len(pos) :]],
                p=group_success_rate(won.get(agent[idx[0]].record.group)),
                beta=a.nthr_beta,
                eta=a.nthr_eta,
            )
            for i, w in zip(neg, res.weights):
                agent[i].token_weights = w.cpu()
            used += 1
            selected += res.selected
            tokens += res.tokens
            tau_sum += res.tau
            eta_sum += res.eta
        for _ in range(dist.max_over_processes(self.accelerator, forwards) - forwards):
            self._dummy_forward()
        stats = torch.tensor(
            [used, len(groups), selected, tokens, tau_sum, eta_sum, time.perf_counter() - t0],
            dtype=torch.float64,
            device=self.accelerator.device,
        )
        used, n_groups, selected, tokens, tau_sum, eta_sum, seconds = dist.reduce(
            self.accelerator, stats
        ).tolist()
        m = self._metrics["train"]
        m["nthr/groups_mixed"].append(used)
        m["nthr/groups"].append(n_groups)
        m["nthr/selected_token_fraction"].append(selected / tokens if tokens else 0.0)
        m["nthr/selected_tokens"].append(selected)
        if used:
            m["nthr/tau_mean"].append(tau_sum / used)
            m["nthr/eta_mean"].append(eta_sum / used)
        m["time/nthr"].append(seconds / self.accelerator.num_processes)

    # ------------------------------------------------------------------------------------------------
    # The value-head classifier

    def _init_value_head(self, model_path: str | None) -> None:
        a = self.args
        head = ValueHead(hidden_size_of(self.model), seed=a.seed)
        path = find_head_file(a.value_head_path)
        if a.value_head_path and path is None:
            raise FileNotFoundError(
                f"value_head_path={a.value_head_path!r}: no value_head.safetensors there (a value SFT output "
                "folder holds one)"
            )
        path = path or find_head_file(model_path)
        if path is not None:
            head.load(path)
            if self.accelerator.is_main_process:
                print(f"gcd-trl: value head loaded from {path}", flush=True)
        self.value_head = head.to(self.accelerator.device)
        self.value_head_optimizer = torch.optim.AdamW(
            self.value_head.parameters(), lr=a.value_head_learning_rate, weight_decay=0.0
        )
        body, _ = backbone_and_lm_head(self.model)
        body.register_forward_hook(self._keep_hidden)
        self._vh_stats = torch.zeros(5, dtype=torch.float64, device=self.accelerator.device)

    def _keep_hidden(self, module, inputs, output) -> None:
        if self._capture_hidden:
            self._hidden = last_hidden(output)

    @staticmethod
    def _value_label(s: Sample) -> int:
        """An agent step's rule label as the head's target (-1: none; judge samples and dropped steps)."""
        if s.kind != "agent" or s.label is None or not s.completion_ids or s.weight == 0:
            return -1
        return int(s.label)

    def _add_value_targets(self, samples: list[Sample], update: Update) -> None:
        """Per micro-batch row: label (-1: none), the last completion token's position, the class weight that
        makes the update's loss a weighted mean over its labelled steps on all processes."""
        device = self.accelerator.device
        labels = [self._value_label(s) for s in samples]
        good, bad = dist.sum_over_processes(self.accelerator, [labels.count(1), labels.count(0)], torch.long)
        weights = class_weights([1] * int(good) + [0] * int(bad), bool(self.args.value_head_class_balance))
        for idx, mb in zip(update.plan, update.microbatches):
            width = mb["prompt_ids"].size(1)
            rows = [labels[i] for i in idx] or [-1]
            mb["value_labels"] = torch.tensor(rows, dtype=torch.float32, device=device)
            mb["value_pos"] = torch.tensor(
                [width + max(len(samples[i].completion_ids), 1) - 1 for i in idx] or [width],
                device=device,
            )
            mb["value_weights"] = torch.tensor(
                [weights.get(x, 0.0) for x in rows], dtype=torch.float32, device=device
            )

    def _compute_loss(self, model, inputs):
        """TRL's loss; the transformer body's output is kept when the micro-batch has labelled steps."""
        labels = inputs.get("value_labels")
        self._hidden = None
        self._capture_hidden = (
            self.value_head is not None and labels is not None and bool((labels >= 0).any())
        )
        try:
            return super()._compute_loss(model, inputs)
        finally:
            self._capture_hidden = False

    def _auxiliary_loss(self, model, mb: dict[str, Any]) -> torch.Tensor | None:
        """coef x P x sum_i w_i BCE_i over the micro-batch's labelled steps (w: class weights, summing to 1
        over the update on all processes; P undoes DDP's average)."""
        if self._hidden is None:
            return None
        hidden, self._hidden = self._hidden, None
        labels = mb["value_labels"]
        rows = torch.nonzero(labels >= 0).squeeze(-1)
        logits = self.value_head(hidden[rows, mb["value_pos"][rows]])
        bce = weighted_bce(logits, labels[rows], mb["value_weights"][rows])
        self._vh_stats += torch.cat([accuracy_counts(logits, labels[rows]), bce.detach().double().view(1)])
        return self.args.value_head_coef * self.accelerator.num_processes * bce

    def training_step(self, model, inputs, num_items_in_batch=None) -> torch.Tensor:
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self.value_head is not None:
            self._step_value_head()
        return loss

    def _step_value_head(self) -> None:
        """The head's optimizer step (its gradient averaged over processes) and the step's metrics."""
        acc = self.accelerator
        params = list(self.value_head.parameters())
        if acc.num_processes > 1:
            for p in params:
                p.grad = dist.reduce(acc, p.grad if p.grad is not None else torch.zeros_like(p), "mean")
        self.value_head_optimizer.step()
        self.value_head_optimizer.zero_grad(set_to_none=True)
        stats = dist.reduce(acc, self._vh_stats).tolist()
        self._vh_stats.zero_()
        m = self._metrics["train"]
        if stats[0] + stats[2]:
            m["value_head/loss"].append(stats[4])
        for name, value in accuracy_metrics(stats[:4]).items():
            m[name].append(value)

    # ------------------------------------------------------------------------------------------------
    # Checkpoints: the head is part of the model folder, its optimizer part of the checkpoint

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        super().save_model(output_dir, _internal_call)
        if self.value_head is not None and self.args.should_save:
            self.value_head.save(output_dir or self.args.output_dir)

    def _save_checkpoint(self, model, trial):
        if self.value_head is not None and self.args.should_save:
            folder = Path(self._checkpoint_folder(trial))
            checkpoints.save_optimizer(folder / VALUE_HEAD_OPTIMIZER, self.value_head_optimizer)
        super()._save_checkpoint(model, trial)

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None or self.value_head is None:
            return
        path = find_head_file(checkpoint)
        opt = Path(checkpoint) / VALUE_HEAD_OPTIMIZER
        if path is None or not opt.is_file():
            raise FileNotFoundError(
                f"{checkpoint}: no value head state ({VALUE_HEAD_OPTIMIZER}, value_head.safetensors): this "
                "checkpoint was written without value_head_coef"
            )
        self.value_head.load(path)
        checkpoints.load_optimizer(opt, self.value_head_optimizer, self.accelerator.device)
