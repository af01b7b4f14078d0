"""What every model-based analysis shares: loading a model, turning step records into token samples,
batched forward passes that return what Eq. 2 needs, and per-sample gradients.

A sample is one (prompt, completion) pair tokenized the way the trainer sees it: the prompt as one user
turn through the tokenizer's chat template with the generation prompt, the completion's tokens and the
end-of-turn token (unless the record says the completion was truncated). Log-probabilities are summed
over completion tokens (the sequence log-likelihood). Hidden states are the readout's input (the final
norm's output: `h_{x, y<k}` of Eq. 2), taken from the model's decoder; `load_model` checks that the
readout applied to them reproduces the model's own logits.
"""

from __future__ import annotations

import filecmp
import json
import math
import os
import random
import re
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gcd_trl import files
from gcd_trl.generation import chat_prompt_ids
from gcd_trl.rollout.parse import normalize_action, parse_output
from gcd_trl.rollout.records import read_steps


class AnalysisError(ValueError):
    """Bad input to an analysis (a path, a field, an empty selection): the message names it."""


# ---- files ---------------------------------------------------------------------------------------------
def _clean(obj: Any) -> Any:
    """JSON-safe: NaN/inf become null, tuples lists, numpy/torch scalars plain numbers."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    if hasattr(obj, "tolist"):
        return _clean(obj.tolist())
    if hasattr(obj, "item"):
        return _clean(obj.item())
    return obj


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write through a temporary file then rename, so a killed run never leaves half a JSON file."""
    return files.write_text_atomic(path, json.dumps(_clean(obj), indent=1, allow_nan=False) + "\n")


def load_records(paths: str | os.PathLike | Sequence[str | os.PathLike], kind: str = "agent") -> list[dict]:
    """Step records of `kind` from rollout step files, eval episodes.jsonl or directories of them."""
    if isinstance(paths, str | os.PathLike):
        paths = [paths]
    if not paths:
        raise AnalysisError(
            "no trajectories given (--trajectories PATH: a rollouts folder or episodes.jsonl)"
        )
    records = read_steps(list(paths), kind=kind)
    if not records:
        raise AnalysisError(f"no {kind} step records in {', '.join(map(str, paths))}")
    return records


def written_action(text: str) -> str | None:
    """The action a completion writes in its <action> block, admissible or not (None: no such block)."""
    for meta in (False, True):
        parsed = parse_output(text, None, meta)
        if parsed.valid and parsed.action:
            return parsed.action
    return None


def action_text(record: Mapping[str, Any]) -> str | None:
    """The action a step took: what the env received, else what the completion wrote (an inadmissible
    action is still an attempt: repeating it is the echo trap too)."""
    return record.get("action") or written_action(str(record.get("completion", "")))


def action_key(record: Mapping[str, Any]) -> str:
    """What counts as "the same action": the action normalised, else the whole completion."""
    action = action_text(record)
    if action:
        return normalize_action(action)
    return " ".join(str(record.get("completion", "")).split())[:200] or "(empty)"


def record_id(record: Mapping[str, Any]) -> dict[str, Any]:
    return {k: record[k] for k in ("round", "task", "group", "traj", "step") if record.get(k) is not None}


# ---- models --------------------------------------------------------------------------------------------
def resolve_device(device: str | None = "auto"):
    import torch

    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_model(name_or_path: str | os.PathLike, device: str | None = "auto", dtype: str = "float32"):
    """(model, tokenizer) in eval mode from a local folder or a Hub id; checks the readout (see module doc)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name = str(name_or_path)
    local = Path(name).expanduser()
    looks_local = local.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1
    if looks_local:
        if not local.is_dir():
            raise AnalysisError(f"model folder not found: {name}")
        if not (local / "config.json").is_file():
            raise AnalysisError(f"{name} holds no config.json: not a saved model (or checkpoint) folder")
        name = str(local)
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(dtype)
    if torch_dtype is None:
        raise AnalysisError(f"dtype must be float32, bfloat16 or float16, got {dtype!r}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
        model = AutoModelForCausalLM.from_pretrained(name, dtype=torch_dtype)
    except OSError as err:
        raise AnalysisError(f"cannot load model {name!r}: {err}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.to(resolve_device(device)).eval()
    _check_readout(model)
    return model, tokenizer


def _decoder(model):
    get = getattr(model, "get_decoder", None)
    dec = get() if callable(get) else None
    return dec if dec is not None and dec is not model else None


def hidden_states(model, input_ids, attention_mask):
    """The readout's input at every position: (B, T, d)."""
    dec = _decoder(model)
    if dec is not None:
        return dec(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    out = model(
        input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, logits_to_keep=1
    )
    return out.hidden_states[-1]


def _check_readout(model) -> None:
    import torch

    vocab = model.get_output_embeddings().weight.shape[0]
    ids = torch.arange(1, 9, device=model.device).remainder(vocab).unsqueeze(0)
    with torch.no_grad():
        mine = model.get_output_embeddings()(hidden_states(model, ids, torch.ones_like(ids)))
        theirs = model(input_ids=ids).logits
    tol = 1e-3 if mine.dtype == torch.float32 else 5e-2
    if not torch.allclose(mine.float(), theirs.float(), atol=tol, rtol=tol):
        raise AnalysisError(
            f"{type(model).__name__}: the readout of the decoder's last hidden state does not reproduce the "
            "model's logits (a final soft-cap or scaling?); Eq. 2 analyses need the readout's input"
        )


# ---- samples -------------------------------------------------------------------------------------------
@dataclass
class Sample:
    """One (prompt, completion) as token ids, with the record (or reference row) it came from."""

    prompt_ids: list[int]
    completion_ids: list[int]
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def length(self) -> int:
        return len(self.prompt_ids) + len(self.completion_ids)


def encode(
    tokenizer,
    prompt: str,
    completion: str,
    record: dict[str, Any] | None = None,
    *,
    max_prompt_tokens: int | None = None,
    max_completion_tokens: int | None = None,
    end_of_turn: bool = True,
) -> Sample:
    """Tokenize like the trainer; a long prompt keeps its end (the current observation)."""
    prompt_ids = chat_prompt_ids(tokenizer, prompt)
    if max_prompt_tokens and len(prompt_ids) > max_prompt_tokens:
        prompt_ids = prompt_ids[-max_prompt_tokens:]
    completion_ids = list(tokenizer(completion, add_special_tokens=False)["input_ids"])
    if end_of_turn and tokenizer.eos_token_id is not None:
        completion_ids.append(tokenizer.eos_token_id)
    if max_completion_tokens:
        completion_ids = completion_ids[:max_completion_tokens]
    if not completion_ids:
        raise AnalysisError(f"empty completion for {record_id(record or {}) or prompt[:60]!r}")
    return Sample(prompt_ids, completion_ids, dict(record or {}))


def encode_records(tokenizer, records: Iterable[Mapping[str, Any]], **kwargs: Any) -> list[Sample]:
    return [
        encode(
            tokenizer,
            r["prompt"],
            r["completion"],
            dict(r),
            end_of_turn=not r.get("truncated", False),
            **kwargs,
        )
        for r in records
    ]


def pick(items: Sequence[Any], n: int | None, seed: int) -> list[Any]:
    """n items drawn without replacement (all of them, in order, when n is None or >= len)."""
    if n is None or n >= len(items):
        return list(items)
    idx = sorted(random.Random(seed).sample(range(len(items)), n))
    return [items[i] for i in idx]


def distinct_prompts(records: Iterable[Mapping[str, Any]]) -> list[dict]:
    """One record per (prompt, completion): repeated identical samples would inflate similarity."""
    seen, out = set(), []
    for r in records:
        key = (r["prompt"], r["completion"])
        if key not in seen and str(r["completion"]).strip():
            seen.add(key)
            out.append(dict(r))
    return out


# ---- forward passes ------------------------------------------------------------------------------------
def progress(
    items: Iterable[Any], desc: str, total: int | None = None, unit: str = "sample"
) -> Iterable[Any]:
    """`items` with a progress bar on stderr (as `gcd-trl eval` shows one): the analyses run one forward or
    backward pass per sample for minutes on a CPU. The bar is dropped when done."""
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, total=total, unit=unit, file=sys.stderr, leave=False, dynamic_ncols=True)


def _batches(samples: Sequence[Sample], max_tokens: int) -> list[list[int]]:
    """Indices grouped (by length, so padding stays small) into batches of at most max_tokens padded tokens."""
    order = sorted(range(len(samples)), key=lambda i: samples[i].length)
    out, cur, longest = [], [], 0
    for i in order:
        longest_new = max(longest, samples[i].length)
        if cur and longest_new * (len(cur) + 1) > max_tokens:
            out.append(cur)
            cur, longest_new = [], samples[i].length
        cur.append(i)
        longest = longest_new
    if cur:
        out.append(cur)
    return out


def _pad(samples: Sequence[Sample], pad_id: int, device):
    import torch

    width = max(s.length for s in samples)
    ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(samples), width), dtype=torch.long)
    for row, s in enumerate(samples):
        seq = s.prompt_ids + s.completion_ids
        ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
    return ids.to(device), mask.to(device)


@dataclass
class Forward:
    """Per-sample outputs of one forward pass (tensors on the model's device, float32)."""

    h: Any = None  # (C, d) readout input before each completion token
    logp: Any = None  # (C,) log-prob of each completion token
    probs: Any = None  # (C, V) predicted distribution at each completion token
    targets: Any = None  # (C,) the completion token ids
    pooled: Any = None  # (d,) mean of the last hidden state over the pooled positions


def forward_samples(
    model,
    samples: Sequence[Sample],
    *,
    pad_id: int,
    want: Iterable[str] = ("h", "logp"),
    pool: str = "all",
    max_batch_tokens: int = 8192,
) -> list[Forward]:
    """Batched forward passes (right padding; causal attention never sees it). `want` picks from h, logp,
    probs, pooled; `pool` is "all" (prompt and completion) or "completion" for `pooled`."""
    import torch

    want = set(want)
    if pool not in ("all", "completion"):
        raise AnalysisError(f"pool must be 'all' or 'completion', got {pool!r}")
    readout = model.get_output_embeddings()
    out: list[Forward] = [Forward() for _ in samples]
    with torch.no_grad():
        batches = _batches(samples, max_batch_tokens)
        for idx in progress(batches, "forward", unit="batch"):
            batch = [samples[i] for i in idx]
            ids, mask = _pad(batch, pad_id, model.device)
            hs = hidden_states(model, ids, mask).float()
            for row, (i, s) in enumerate(zip(idx, batch)):
                p, c = len(s.prompt_ids), len(s.completion_ids)
                f = out[i]
                if "pooled" in want:
                    f.pooled = hs[row, : p + c].mean(0) if pool == "all" else hs[row, p : p + c].mean(0)
                if want & {"h", "logp", "probs"}:
                    h = hs[row, p - 1 : p + c - 1]
                    logits = readout(h.to(readout.weight.dtype)).float()
                    logprobs = torch.log_softmax(logits, dim=-1)
                    target = ids[row, p : p + c]
                    f.targets = target
                    if "h" in want:
                        f.h = h
                    if "logp" in want:
                        f.logp = logprobs.gather(1, target[:, None])[:, 0]
                    if "probs" in want:
                        f.probs = logprobs.exp()
    return out


def sequence_logprob(model, sample: Sample):
    """log p(completion | prompt) with gradients (one sample, no padding)."""
    import torch

    ids = torch.tensor([sample.prompt_ids + sample.completion_ids], device=model.device)
    p, c = len(sample.prompt_ids), len(sample.completion_ids)
    h = hidden_states(model, ids, torch.ones_like(ids))[0, p - 1 : p + c - 1]
    logprobs = torch.log_softmax(model.get_output_embeddings()(h).float(), dim=-1)
    return logprobs.gather(1, ids[0, p:, None])[:, 0].sum()


def sequence_logprobs(model, samples: Sequence[Sample], *, pad_id: int, max_batch_tokens: int = 8192):
    import torch

    fw = forward_samples(model, samples, pad_id=pad_id, want=("logp",), max_batch_tokens=max_batch_tokens)
    return torch.stack([f.logp.sum() for f in fw])


# ---- per-sample gradients ------------------------------------------------------------------------------
_PRIME = 2_147_483_647  # 2^31 - 1


class GradientSketch:
    """Per-sample gradients of log p(completion | prompt), flattened over the selected parameters.

    `dim=None` keeps them exactly; otherwise a count sketch (each coordinate hashed to one of `dim`
    buckets with a random sign) keeps inner products unbiased at O(dim) memory per sample, which is what
    a 1.5B model needs. Rows are float32 on the model's device.
    """

    def __init__(self, model, *, params: str | None = None, dim: int | None = None, seed: int = 0) -> None:
        import torch

        pattern = re.compile(params) if params else None
        self.model = model
        self.named = [
            (n, p)
            for n, p in model.named_parameters()
            if p.requires_grad and (pattern is None or pattern.search(n))
        ]
        if not self.named:
            raise AnalysisError(f"no trainable parameter name matches --grad-params {params!r}")
        self.params = [p for _, p in self.named]
        self.num_params = sum(p.numel() for p in self.params)
        self.dim = dim
        if dim is not None and dim < 1:
            raise AnalysisError(f"gradient sketch dimension must be >= 1, got {dim}")
        gen = random.Random(seed)
        self._hash = [gen.randrange(1, _PRIME) for _ in range(4)]
        self._cache: list[tuple[Any, Any]] | None = None
        if dim is not None and self.num_params <= 50_000_000:
            self._cache = []
            offset = 0
            for p in self.params:
                self._cache.append(self._buckets(offset, p.numel(), p.device))
                offset += p.numel()
        self._torch = torch

    @property
    def width(self) -> int:
        return self.num_params if self.dim is None else self.dim

    def _buckets(self, offset: int, n: int, device):
        import torch

        a1, b1, a2, b2 = self._hash
        idx = torch.arange(offset, offset + n, device=device, dtype=torch.long)
        bucket = ((idx * a1 + b1) % _PRIME) % self.dim
        sign = (((idx * a2 + b2) % _PRIME) % 2).float() * 2 - 1
        return bucket, sign

    def flat_grad(self, sample: Sample):
        """The exact flattened gradient of log p for one sample."""
        torch = self._torch
        self.model.zero_grad(set_to_none=True)
        grads = torch.autograd.grad(sequence_logprob(self.model, sample), self.params, allow_unused=True)
        return torch.cat(
            [
                (g if g is not None else torch.zeros_like(p)).reshape(-1).float()
                for g, p in zip(grads, self.params)
            ]
        )

    def __call__(self, sample: Sample):
        torch = self._torch
        if self.dim is None:
            return self.flat_grad(sample)
        grads = torch.autograd.grad(sequence_logprob(self.model, sample), self.params, allow_unused=True)
        out = torch.zeros(self.dim, device=self.params[0].device)
        offset = 0
        for k, (g, p) in enumerate(zip(grads, self.params)):
            n = p.numel()
            if g is not None:
                bucket, sign = (
                    self._cache[k] if self._cache is not None else self._buckets(offset, n, p.device)
                )
                out.index_add_(0, bucket, g.reshape(-1).float() * sign)
            offset += n
        return out

    def matrix(self, samples: Sequence[Sample]):
        """(N, width) per-sample gradient rows: one forward+backward per sample."""
        torch = self._torch
        return torch.stack([self(s) for s in progress(samples, "gradients", total=len(samples))])


def choose_sketch_dim(
    num_samples: int, num_params: int, grad_dim: str | int | None, max_gb: float
) -> int | None:
    """`auto`: exact gradients when N x P floats fit in max_gb, else a 16384-bucket sketch; 0 means exact."""
    if grad_dim in (None, "auto"):
        return None if num_samples * num_params * 4 <= max_gb * 2**30 else 16384
    dim = int(grad_dim)
    if dim == 0:
        need = num_samples * num_params * 4 / 2**30
        if need > max_gb:
            raise AnalysisError(
                f"exact gradients need {need:.1f} GiB for {num_samples} samples x {num_params:,} parameters "
                f"(limit {max_gb} GiB): pass --grad-dim N for a sketch, --grad-params to select layers, "
                "or raise --max-grad-gb"
            )
        return None
    return dim


def cosine_matrix(x):
    """Pairwise cosine similarity of the rows of x (N, D)."""
    import torch

    x = torch.nn.functional.normalize(x.float(), dim=1, eps=1e-12)
    return x @ x.T


def off_diagonal(m):
    import torch

    n = m.shape[0]
    return m[~torch.eye(n, dtype=torch.bool, device=m.device)]


def stats(values) -> dict[str, float]:
    """mean, std, median, 10th and 90th percentile, count of a 1-D tensor."""
    import torch

    v = values.detach().float().reshape(-1).cpu()
    if v.numel() == 0:
        return {"count": 0}
    q = torch.quantile(v, torch.tensor([0.1, 0.5, 0.9])) if v.numel() > 1 else v.repeat(3)
    return {
        "count": int(v.numel()),
        "mean": float(v.mean()),
        "std": float(v.std()) if v.numel() > 1 else 0.0,
        "p10": float(q[0]),
        "median": float(q[1]),
        "p90": float(q[2]),
    }


class Timer:
    """Wall-clock seconds per named phase."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def __call__(self, name: str):
        timer = self

        class _Phase:
            def __enter__(self):
                self.start = time.perf_counter()

            def __exit__(self, *exc):
                timer.seconds[name] = round(
                    timer.seconds.get(name, 0.0) + time.perf_counter() - self.start, 4
                )

        return _Phase()


# ---- runs and checkpoints ------------------------------------------------------------------------------
_CHECKPOINT = re.compile(r"checkpoint-(\d+)$")


def checkpoint_step(path: str | os.PathLike) -> int | None:
    m = _CHECKPOINT.search(str(Path(path).name))
    return int(m.group(1)) if m else None


def _same_weights(a: Path, b: Path) -> bool:
    files = sorted(p.name for p in a.glob("*.safetensors"))
    if not files or files != sorted(p.name for p in b.glob("*.safetensors")):
        return False
    return all(filecmp.cmp(a / f, b / f, shallow=False) for f in files)  # stops at the first difference


def find_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """A run's model folders in training order: checkpoint-N (by N), then the final model at the run root
    (left out when its weights equal the last checkpoint's)."""
    run = Path(run_dir)
    if not run.is_dir():
        raise AnalysisError(f"run folder not found: {run}")
    found = sorted(
        (
            p
            for p in run.iterdir()
            if p.is_dir() and checkpoint_step(p) is not None and (p / "config.json").is_file()
        ),
        key=checkpoint_step,
    )
    if (run / "config.json").is_file() and not (found and _same_weights(found[-1], run)):
        found.append(run)
    return found


def model_labels(paths: Sequence[str | os.PathLike]) -> list[str]:
    """Plot names for a series; checkpoints of different runs are prefixed with their run's folder."""
    labels = [model_label(p, i) for i, p in enumerate(paths)]
    runs = {Path(p).parent.name for p in paths if checkpoint_step(p) is not None}
    if len(runs) > 1:
        labels = [
            f"{Path(p).parent.name}/{x}" if checkpoint_step(p) is not None else x
            for p, x in zip(paths, labels)
        ]
    return labels


def model_label(path: str | os.PathLike, index: int) -> str:
    """A short name for a model in plots: checkpoint-N -> "step N", else the folder name."""
    step = checkpoint_step(path)
    if step is not None:
        return f"step {step}"
    if (Path(path) / "trainer_state.json").is_file() or (Path(path) / "training_args.bin").is_file():
        return "final"
    return Path(str(path)).name or str(path) or f"model {index}"
