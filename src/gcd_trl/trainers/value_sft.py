"""Cold start with the value-head classifier (paper Table 3 "value SFT"): agent SFT plus a scalar head.

    gcd-trl value-sft --config configs/ablations/value_sft_alfworld_qwen2.5-1.5b.yaml [--key value]
    python -m gcd_trl.trainers.value_sft --config FILE                  # the same

The paper's alternatives to the generative judge at cold start: "vanilla SFT" trains on agent data only,
"generative SFT" adds critic conversations (judge data, `gcd-trl sft` with a judge dataset), "value SFT"
(this) trains the same agent data with the LM loss while a scalar head (`value_head.ValueHead`) on the
shared final hidden state learns the same labelled steps by binary cross-entropy:

    L = token-mean LM loss over the agent rows' assistant tokens + value_head_coef x BCE over the labelled steps

- agent data (`agent_data`): chat rows (`messages`, the last turn the assistant's), as `gcd-trl data agent`
  writes them; the loss is on the last (assistant) turn.
- labelled steps (`value_data`): judge SFT folders (`gcd-trl data judge`: rows with `agent_prompt`,
  `agent_completion`, `label`), or step-record files / rollout folders (`rollout.records`), labelled by the
  GCD rules (`gcd.labels`). The head reads the hidden state at the last token of the agent's answer to its
  prompt, exactly as in RL (`value_head_coef` in the RL config), where the head is picked up from the model
  folder this writes (`value_head.safetensors` next to the weights).
- BCE is class-balanced by default (`value_head_class_balance`: each class weighs half, counted over the
  whole dataset) and averaged over a batch's labelled rows; rows longer than `max_length` are dropped
  (counted). The config is TRL-style: transformers `TrainingArguments` fields, these arguments, and TRL's
  `ModelConfig` (full-parameter only: a LoRA cold start is not supported here).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import Trainer, TrainingArguments
from trl import ModelConfig

from gcd_trl.config import ConfigError, check_training_precision, low_precision_field
from gcd_trl.hub import HubError, check_push_settings, push_folder
from gcd_trl.trainers.value_head import (
    ValueHead,
    accuracy_counts,
    accuracy_metrics,
    backbone_and_lm_head,
    class_weights,
    hidden_size_of,
    last_hidden,
    load_pretrained_weights,
    weighted_bce,
)


class ValueSFTError(ValueError):
    """A bad value-SFT config or dataset, named by key, file or row."""


@dataclass
class ValueSFTArguments:
    """What the value SFT trains on and how the head's loss is weighed."""

    agent_data: list[str] = field(
        default_factory=list,
        metadata={"help": "Agent SFT datasets (folders or .jsonl/.parquet with messages)."},
    )
    low_precision_parameters: bool = low_precision_field()
    value_data: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Labelled steps: judge SFT folders, or step-record files / rollout folders (rules)."
        },
    )
    value_head_coef: float = field(default=1.0, metadata={"help": "L = L_LM + coef x BCE."})
    value_head_class_balance: bool = field(
        default=True, metadata={"help": "Weigh good and bad steps equally (over the whole dataset)."}
    )
    max_length: int = field(
        default=4096, metadata={"help": "Longer rows (prompt + answer tokens) are dropped."}
    )
    num_threads: int | None = field(
        default=None, metadata={"help": "CPU torch threads (default: min(2, CPUs))."}
    )

    def __post_init__(self) -> None:
        if isinstance(self.agent_data, str):
            self.agent_data = [self.agent_data]
        if isinstance(self.value_data, str):
            self.value_data = [self.value_data]
        if not self.value_data:
            raise ValueSFTError("value_data is empty: give the labelled steps the head learns")
        if self.value_head_coef < 0:
            raise ValueSFTError(f"value_head_coef={self.value_head_coef!r} must be >= 0")
        if self.max_length < 8:
            raise ValueSFTError(f"max_length={self.max_length!r} must be >= 8")


VALUE_SFT_DATACLASSES = (TrainingArguments, ValueSFTArguments, ModelConfig)


# ---------------------------------------------------------------------------------------------------------
# Data


def _read_rows(path: str) -> list[dict[str, Any]]:
    from gcd_trl.data.io import load_rows

    try:
        return load_rows(path)
    except FileNotFoundError as err:
        raise ValueSFTError(str(err)) from None


def labelled_steps(path: str) -> list[tuple[str, str, int]]:
    """(agent prompt, agent answer, label) of a judge SFT folder, or of step records labelled by the rules."""
    p = Path(path)
    if p.is_dir() and any((p / f"train.{fmt}").is_file() for fmt in ("jsonl", "parquet")):
        rows = _read_rows(path)
        out = []
        for i, r in enumerate(rows):
            missing = [k for k in ("agent_prompt", "agent_completion", "label") if k not in r]
            if missing:
                raise ValueSFTError(
                    f"{path} row {i}: missing field {missing[0]!r} (a judge SFT dataset has it)"
                )
            if r["label"] is not None:
                out.append((r["agent_prompt"], r["agent_completion"], int(r["label"])))
        return out
    from gcd_trl.gcd.labels import label_records
    from gcd_trl.rollout.records import RecordFileError, read_steps

    try:
        records = read_steps([path], kind="agent")
    except (RecordFileError, FileNotFoundError) as err:
        raise ValueSFTError(f"value_data {path}: {err}") from None
    return [
        (r["prompt"], r["completion"], int(r["label"]))
        for r in label_records(records)
        if r["label"] is not None
    ]


def _answer_ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


def encode(tokenizer, args: ValueSFTArguments) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Token rows: LM rows (labels on the answer) and value rows (a label and the answer's last position)."""
    from gcd_trl.generation import chat_prompt_ids

    rows, dropped = [], 0
    for path in args.agent_data:
        for i, r in enumerate(_read_rows(path)):
            msgs = r.get("messages")
            if not msgs or msgs[-1].get("role") != "assistant":
                raise ValueSFTError(f"{path} row {i}: `messages` must end with the assistant's turn")
            prompt = tokenizer.apply_chat_template(
                msgs[:-1], add_generation_prompt=True, tokenize=True, return_dict=True
            )["input_ids"]
            answer = _answer_ids(tokenizer, msgs[-1]["content"])
            if len(prompt) + len(answer) > args.max_length:
                dropped += 1
                continue
            rows.append({"input_ids": prompt + answer, "n_prompt": len(prompt), "value_label": -1})
    steps = [s for path in args.value_data for s in labelled_steps(path)]
    if not steps:
        raise ValueSFTError(f"value_data {args.value_data}: no labelled step")
    for prompt_text, answer_text, label in steps:
        ids = chat_prompt_ids(tokenizer, prompt_text) + _answer_ids(tokenizer, answer_text)
        if len(ids) > args.max_length:
            dropped += 1
            continue
        rows.append({"input_ids": ids, "n_prompt": len(ids), "value_label": label})
    labels = [r["value_label"] for r in rows if r["value_label"] >= 0]
    weights = class_weights(labels, args.value_head_class_balance)
    for r in rows:
        r["value_weight"] = weights.get(r["value_label"], 0.0)
    summary = {
        "lm_rows": sum(r["value_label"] < 0 for r in rows),
        "value_rows": len(labels),
        "good": labels.count(1),
        "bad": labels.count(0),
        "dropped_too_long": dropped,
    }
    return rows, summary


class _Rows(torch.utils.data.Dataset):
    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.rows[i]


def collate(rows: list[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ids, attention, LM labels (-100 off the answer), and the value targets."""
    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.full((len(rows), width), pad_id)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), -100)
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        ids[i, :n] = torch.tensor(r["input_ids"])
        attention[i, :n] = 1
        labels[i, r["n_prompt"] : n] = ids[i, r["n_prompt"] : n]
    return {
        "input_ids": ids,
        "attention_mask": attention,
        "labels": labels,
        "value_labels": torch.tensor([float(r["value_label"]) for r in rows]),
        "value_pos": torch.tensor([len(r["input_ids"]) - 1 for r in rows]),
        "value_weights": torch.tensor([float(r["value_weight"]) for r in rows]),
    }


# ---------------------------------------------------------------------------------------------------------
# Model and trainer


class LMWithValueHead(nn.Module):
    """A causal LM and a value head on its final hidden state; forward returns the combined loss."""

    def __init__(self, lm: nn.Module, head: ValueHead, coef: float) -> None:
        super().__init__()
        self.lm, self.head, self.coef = lm, head, coef
        self.config = lm.config  # Trainer reads it

    def forward(self, input_ids, attention_mask, labels, value_labels, value_pos, value_weights):
        body, lm_head = backbone_and_lm_head(self.lm)
        hidden = last_hidden(body(input_ids=input_ids, attention_mask=attention_mask, use_cache=False))
        targets = labels[:, 1:]
        keep = targets != -100
        lm_loss = hidden.new_zeros((), dtype=torch.float32)
        if keep.any():
            logits = lm_head(hidden[:, :-1][keep]).float()
            lm_loss = nn.functional.cross_entropy(logits, targets[keep])
        rows = torch.nonzero(value_labels >= 0).squeeze(-1)
        value_logits = self.head(hidden[rows, value_pos[rows]])
        w = value_weights[rows]
        bce = weighted_bce(value_logits, value_labels[rows], w) / w.sum().clamp(min=1e-12)
        return {
            "loss": lm_loss + self.coef * bce,
            "lm_loss": lm_loss.detach(),
            "value_loss": bce.detach(),
            "value_counts": accuracy_counts(value_logits, value_labels[rows]),
        }


class ValueSFTTrainer(Trainer):
    """transformers Trainer for `LMWithValueHead`: logs LM and value losses and accuracies; saves the LM as a
    plain model folder plus value_head.safetensors (what the RL trainer reads)."""

    def __init__(self, *args, processing_class=None, **kwargs) -> None:
        super().__init__(*args, processing_class=processing_class, **kwargs)
        self._sums = torch.zeros(7, dtype=torch.float64)  # batches, lm, value, 4 accuracy counts

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        out = model(**inputs)
        self._sums += torch.cat(
            [torch.tensor([1.0, float(out["lm_loss"]), float(out["value_loss"])]), out["value_counts"].cpu()]
        )
        return (out["loss"], out) if return_outputs else out["loss"]

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        n, lm, value, *counts = self._sums.tolist()
        if n and "loss" in logs:
            logs["lm_loss"] = lm / n
            logs["value_loss"] = value / n
            logs.update(accuracy_metrics(counts, prefix="value_"))
            self._sums.zero_()
        super().log(logs, *args, **kwargs)

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        output_dir = output_dir or self.args.output_dir
        os.makedirs(output_dir, exist_ok=True)
        model = self.accelerator.unwrap_model(self.model)
        model.lm.save_pretrained(output_dir, safe_serialization=True)
        model.head.save(output_dir)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, "training_args.bin"))

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None) -> None:
        model = self.accelerator.unwrap_model(model or self.model)
        load_pretrained_weights(model.lm, resume_from_checkpoint)
        model.head.load(resume_from_checkpoint)


def parse_config(argv: list[str]):
    """`--config FILE` plus `--key value` overrides -> (TrainingArguments, ValueSFTArguments, ModelConfig)."""
    import yaml
    from trl import TrlParser

    classes = VALUE_SFT_DATACLASSES
    if "--config" in argv:
        path = Path(argv[argv.index("--config") + 1])
        if not path.is_file():
            raise ValueSFTError(f"config file not found: {path}")
        data = yaml.safe_load(path.read_text()) or {}
        known = {f.name for cls in classes for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(set(data) - known - {"env"})
        if unknown:
            raise ValueSFTError(f"{path}: unknown key {unknown[0]!r}")
    try:
        train, args, model = TrlParser(classes).parse_args_and_config(argv)
    except SystemExit as err:
        raise ValueSFTError(f"invalid command-line or config value (see above): exit {err.code}") from err
    if not model.model_name_or_path:
        raise ValueSFTError("model_name_or_path is not set")
    if model.use_peft:
        raise ValueSFTError("use_peft: the value SFT trains the full model (the paper's cold start)")
    try:
        check_training_precision(train, model, args.low_precision_parameters)
    except ConfigError as err:
        raise ValueSFTError(str(err)) from err
    try:
        check_push_settings(train)
    except HubError as err:
        raise ValueSFTError(str(err)) from None
    train.remove_unused_columns = False
    return train, args, model


def build_trainer(train: TrainingArguments, args: ValueSFTArguments, model_args) -> ValueSFTTrainer:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if train.use_cpu or not torch.cuda.is_available():
        torch.set_num_threads(args.num_threads or max(1, min(2, os.cpu_count() or 1)))
    tokenizer = AutoTokenizer.from_pretrained(model_args.model_name_or_path)
    rows, summary = encode(tokenizer, args)
    dtype = model_args.dtype
    dtype = getattr(torch, dtype) if isinstance(dtype, str) and dtype != "auto" else dtype
    lm = AutoModelForCausalLM.from_pretrained(
        model_args.model_name_or_path,
        dtype=dtype,
        attn_implementation=model_args.attn_implementation,
        revision=model_args.model_revision,
    )
    if train.activation_checkpointing:
        lm.gradient_checkpointing_enable(train.activation_checkpointing_kwargs or {"use_reentrant": False})
    head = ValueHead(hidden_size_of(lm), seed=train.seed)
    trainer = ValueSFTTrainer(
        model=LMWithValueHead(lm, head, args.value_head_coef),
        args=train,
        train_dataset=_Rows(rows),
        data_collator=lambda batch: collate(batch, tokenizer.pad_token_id),
        processing_class=tokenizer,
    )
    trainer.data_summary = summary
    return trainer


def run(train: TrainingArguments, args: ValueSFTArguments, model_args) -> dict[str, Any]:
    """Build the trainer, train (resuming when asked), save the model and its head; returns the data summary
    (printed before training starts). ValueSFTError names a bad config or dataset."""
    push = train.push_to_hub
    train.push_to_hub = False  # Trainer would upload output_dir at every save: hub.push_folder's allow-list
    trainer = build_trainer(train, args, model_args)
    if trainer.accelerator.is_main_process:
        print(f"value-sft: {trainer.data_summary}", file=sys.stderr)
    resume = train.resume_from_checkpoint
    trainer.train(resume_from_checkpoint=True if resume in ("true", "last") else resume or None)
    trainer.save_model(train.output_dir)
    if push and trainer.accelerator.is_main_process:
        url = push_folder(train.output_dir, train.hub_model_id, private=train.hub_private_repo)
        print(f"value-sft: pushed to {url}", file=sys.stderr)
    return trainer.data_summary


def main(argv: list[str] | None = None) -> int:
    """`python -m gcd_trl.trainers.value_sft --config FILE` (also `gcd-trl value-sft`)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        run(*parse_config(list(sys.argv[1:] if argv is None else argv)))
    except ValueSFTError as err:
        print(f"value-sft: {err}", file=sys.stderr)
        return 2
    except HubError as err:  # after training: the model is saved, only the upload failed
        print(f"value-sft: {err} (the model is saved: `gcd-trl push OUTPUT_DIR` uploads it)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
