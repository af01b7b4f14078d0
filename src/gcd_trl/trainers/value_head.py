"""The value-head classifier (paper Table 3 "value SFT", Figure 10b): a scalar head on the actor's final
hidden state, trained with binary cross-entropy on the GCD step labels (1 good, 0 bad).

It is the alternative the paper argues against: sharing the backbone between the agent task and a
discriminative head makes the two tasks pull the hidden states in different directions (Garcin et al. 2025),
where the generative judge keeps the classification in the language-model head. This module holds the
head, its loss and its file format; it is used at cold start (`gcd_trl.trainers.value_sft`) and during RL
(`value_head_coef` in `gcd_trl.trainers.token`).

The head reads the hidden state at the last completion token of a step (the LM head's input there, after
the final norm): the state that has seen the observation and the whole answer, i.e. the action judged.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gcd_trl import files

HEAD_FILE = "value_head.safetensors"


class ValueHead(nn.Module):
    """logit = w . h + b: the probability that a step is good is sigmoid(logit)."""

    def __init__(self, hidden_size: int, seed: int = 0) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.score = nn.Linear(hidden_size, 1)
        # drawn from `seed`, not the global RNG: every process (and a rerun) starts from the same head
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            self.score.weight.copy_(torch.randn(1, hidden_size, generator=gen) / (hidden_size + 1))
            self.score.bias.zero_()

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.score(hidden.to(self.score.weight.dtype)).squeeze(-1)

    def save(self, folder: str | os.PathLike) -> Path:
        from safetensors.torch import save_file

        state = {k: v.detach().float().cpu().contiguous() for k, v in self.state_dict().items()}
        metadata = {"hidden_size": str(self.hidden_size)}
        return files.write_atomic(
            Path(folder) / HEAD_FILE, lambda tmp: save_file(state, str(tmp), metadata=metadata)
        )

    def load(self, path: str | os.PathLike) -> None:
        """Load weights from a head file or a folder holding one; the hidden size must match."""
        from safetensors import safe_open

        path = Path(path)
        if path.is_dir():
            path = path / HEAD_FILE
        if not path.is_file():
            raise FileNotFoundError(f"value head file not found: {path}")
        with safe_open(str(path), "pt") as f:
            size = int((f.metadata() or {}).get("hidden_size", self.hidden_size))
            state = {k: f.get_tensor(k) for k in f.keys()}
        if size != self.hidden_size:
            raise ValueError(f"{path}: a head for hidden size {size}, the model has {self.hidden_size}")
        self.load_state_dict(state)


def model_path(model: Any) -> str | None:
    """The folder or Hub id a model argument names (a path, or a loaded model's `_name_or_path`)."""
    if isinstance(model, str | os.PathLike):
        return str(model)
    return getattr(getattr(model, "config", None), "_name_or_path", None)


def find_head_file(path: str | os.PathLike | None) -> Path | None:
    """The head file at `path` (a file, or a folder holding value_head.safetensors), or None."""
    if not path:
        return None
    p = Path(path)
    if p.is_file():
        return p
    return p / HEAD_FILE if (p / HEAD_FILE).is_file() else None


def class_weights(labels: list[int] | torch.Tensor, balance: bool) -> dict[int, float]:
    """Per-class weight of one labelled sample, summing to 1 over `labels` (the loss is a weighted mean):
    1 / N, or (with `balance`) 1 / (2 x class count), so both classes weigh the same in total (a class
    that is absent gets no weight)."""
    values = [int(x) for x in (labels.tolist() if isinstance(labels, torch.Tensor) else labels)]
    counts = {c: values.count(c) for c in (0, 1)}
    if not balance:
        n = counts[0] + counts[1]
        return {0: 1.0 / n if n else 0.0, 1: 1.0 / n if n else 0.0}
    present = sum(1 for n in counts.values() if n)
    return {c: (1.0 / (present * n) if n else 0.0) for c, n in counts.items()}


def weighted_bce(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum_i w_i BCE(logit_i, label_i): the caller's weights carry the normalisation."""
    losses = nn.functional.binary_cross_entropy_with_logits(logits.float(), labels.float(), reduction="none")
    return (losses * weights).sum()


def accuracy_counts(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[good, good correct, bad, bad correct] for a batch of predictions (logit > 0 means good)."""
    pred = logits.detach() > 0
    good = labels > 0.5
    return torch.stack([good.sum(), (pred & good).sum(), (~good).sum(), (~pred & ~good).sum()]).to(
        torch.float64
    )


def accuracy_metrics(counts: torch.Tensor | list[float], prefix: str = "value_head/") -> dict[str, float]:
    """accuracy (balanced over the classes present), accuracy_good, accuracy_bad from accuracy_counts."""
    good, good_hit, bad, bad_hit = (float(x) for x in counts)
    out: dict[str, float] = {}
    if good:
        out[f"{prefix}accuracy_good"] = good_hit / good
    if bad:
        out[f"{prefix}accuracy_bad"] = bad_hit / bad
    if good or bad:
        out[f"{prefix}accuracy"] = (good_hit + bad_hit) / (good + bad)
        parts = [v for k, v in out.items() if k.endswith(("_good", "_bad"))]
        out[f"{prefix}balanced_accuracy"] = sum(parts) / len(parts)
    out[f"{prefix}labelled_good"] = good
    out[f"{prefix}labelled_bad"] = bad
    return out


def backbone_and_lm_head(model: Any) -> tuple[nn.Module, nn.Module]:
    """The transformer body (whose output is the final hidden state) and the LM head of a causal LM, through
    PEFT and accelerate wrappers: the modules TRL's fused LM head calls (`model.base_model`, the output
    embeddings)."""
    m = model
    while hasattr(m, "module") and isinstance(m.module, nn.Module):  # DDP / DataParallel wrappers
        m = m.module
    if hasattr(m, "get_base_model"):  # a PeftModel: the causal LM with the adapters injected
        m = m.get_base_model()
    head = m.get_output_embeddings()
    body = m.base_model
    if head is None or body is m:
        raise ValueError(f"{type(m).__name__} is not a causal LM with a separate body and LM head")
    return body, head


def hidden_size_of(model: Any) -> int:
    body, _ = backbone_and_lm_head(model)
    config = body.config.get_text_config() if hasattr(body.config, "get_text_config") else body.config
    return int(config.hidden_size)


def last_hidden(output: Any) -> torch.Tensor:
    """The final hidden states from a transformer body's output (a ModelOutput or a tuple)."""
    h = getattr(output, "last_hidden_state", None)
    return h if h is not None else output[0]


def load_pretrained_weights(module: nn.Module, folder: str | os.PathLike) -> None:
    """Load a save_pretrained folder's weights (one safetensors file or an indexed set of shards) into
    `module`, in place; tied weights may be absent from the files."""
    import json

    from safetensors.torch import load_file

    folder = Path(folder)
    single = folder / "model.safetensors"
    if single.is_file():
        state = load_file(str(single))
    else:
        index = folder / "model.safetensors.index.json"
        if not index.is_file():
            raise FileNotFoundError(f"{folder}: no model.safetensors (or its index)")
        state = {}
        for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
            state.update(load_file(str(folder / shard)))
    missing, unexpected = module.load_state_dict(state, strict=False)
    tied = getattr(module, "_tied_weights_keys", None) or []
    tied = set(tied if isinstance(tied, list | tuple | set) else dict(tied))
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise ValueError(
            f"{folder}: the weights do not fit (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
