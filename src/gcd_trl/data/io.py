"""Writing and reading the builders' outputs.

A dataset folder holds `train.jsonl` (or `train.parquet`): the rows, written with `datasets`, so
`load_dataset("json", data_files=".../train.jsonl")` or `load_dataset(".../folder")` reads it back, plus
`summary.json` (what the builder printed) and, for agent data, `steps/steps.jsonl` (every played step as a
step record, `rollout.records` schema). Files are written to a temporary name and renamed, so a killed
build never leaves a half-written dataset behind.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from gcd_trl import files

FORMATS = ("jsonl", "parquet")
STEPS_FILE = Path("steps") / "steps.jsonl"


def save_rows(rows: Sequence[dict[str, Any]], out_dir: str | os.PathLike, fmt: str = "jsonl") -> Path:
    """Write rows as `out_dir/train.<fmt>` with `datasets`; returns the file path."""
    from datasets import Dataset

    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r} is not one of {FORMATS}")
    if not rows:
        raise ValueError(f"no rows to write to {out_dir}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ds = Dataset.from_list(list(rows))
    if fmt == "jsonl":
        path = files.write_atomic(
            out / "train.jsonl", lambda tmp: ds.to_json(str(tmp), lines=True, force_ascii=False)
        )
    else:
        path = files.write_atomic(out / "train.parquet", lambda tmp: ds.to_parquet(str(tmp)))
    for other in FORMATS:  # a previous build in the other format would be read along with this one
        if other != fmt:
            (out / f"train.{other}").unlink(missing_ok=True)
    return path


def save_steps(steps: Iterable[dict[str, Any]], out_dir: str | os.PathLike) -> Path:
    """Write step records to `out_dir/steps/steps.jsonl` (read them with `rollout.records.read_steps`)."""
    from gcd_trl.rollout.records import write_jsonl_atomic

    return write_jsonl_atomic(Path(out_dir) / STEPS_FILE, steps)


def save_summary(summary: dict[str, Any], out_dir: str | os.PathLike) -> Path:
    return files.write_text_atomic(Path(out_dir) / "summary.json", json.dumps(summary, indent=1) + "\n")


def load_rows(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of a dataset folder or file written by `save_rows` (for tests and tools)."""
    from datasets import load_dataset

    p = Path(path)
    if p.is_dir():
        files = [p / f"train.{fmt}" for fmt in FORMATS if (p / f"train.{fmt}").is_file()]
        if not files:
            raise FileNotFoundError(f"{p}: no train.jsonl or train.parquet")
        p = files[0]
    kind = "parquet" if p.suffix == ".parquet" else "json"
    return list(load_dataset(kind, data_files=str(p), split="train"))


def token_stats(rows: Sequence[dict[str, Any]], tokenizer) -> dict[str, Any]:
    """Tokens of the rows' chat conversations as the SFT trainer sees them (chat template applied)."""
    lengths, completion = [], 0
    for r in rows:
        ids = tokenizer.apply_chat_template(r["messages"], tokenize=True, return_dict=True)["input_ids"]
        lengths.append(len(ids))
        completion += len(tokenizer(r["messages"][-1]["content"], add_special_tokens=False)["input_ids"])
    total = sum(lengths)
    return {
        "tokens": total,
        "completion_tokens": completion,
        "mean_tokens_per_row": round(total / len(lengths), 1) if lengths else 0.0,
        "max_tokens_per_row": max(lengths, default=0),
    }


def word_stats(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Whitespace words, when no tokenizer is given."""
    lengths = [sum(len(m["content"].split()) for m in r["messages"]) for r in rows]
    return {
        "words": sum(lengths),
        "mean_words_per_row": round(sum(lengths) / len(lengths), 1) if lengths else 0.0,
    }


def load_tokenizer(path: str | None):
    """The tokenizer to count tokens with (loaded before a build starts, so a bad path fails first)."""
    if not path:
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except Exception as err:  # offline hub miss, not a tokenizer folder: name it
        raise ValueError(
            f"--tokenizer {path}: cannot load a tokenizer ({type(err).__name__}: {err})"
        ) from None


def add_size_stats(summary: dict[str, Any], rows: Sequence[dict[str, Any]], tokenizer=None) -> None:
    """Token counts with the given tokenizer (e.g. the model to train's), else word counts."""
    if tokenizer is not None:
        summary.update(token_stats(rows, tokenizer), tokenizer=str(getattr(tokenizer, "name_or_path", "")))
    else:
        summary.update(word_stats(rows))


def write_dataset(
    out_dir: str | os.PathLike,
    rows: Sequence[dict[str, Any]],
    summary: dict[str, Any],
    *,
    fmt: str = "jsonl",
    tokenizer=None,
    steps: Iterable[dict[str, Any]] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A builder's output folder: the rows (`save_rows`), its step records when given (`save_steps`), and
    `summary.json` (the builder's summary, size stats, `extra`, where the files are). Returns the summary."""
    path = save_rows(rows, out_dir, fmt)
    add_size_stats(summary, rows, tokenizer)
    summary.update(extra, output=str(path))
    if steps is not None:
        summary["steps_file"] = str(save_steps(steps, out_dir))
    save_summary(summary, out_dir)
    return summary
