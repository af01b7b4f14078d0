"""Single-turn reasoning samples to compare agent steps with (the paper's Figure 3a uses GSM8K).

`load_reference("arithmetic", n)` generates word problems offline (varied names, objects, numbers and
operations, worked answers), so tests and offline machines have a reference set. Anything else is read
with `datasets`: a local .json/.jsonl/.csv/.parquet file, or a dataset name with an optional config
("openai/gsm8k:main"); `fields` names the question and answer columns.
"""

from __future__ import annotations

import random
from pathlib import Path

from gcd_trl.analysis.common import AnalysisError

NAMES = ("Ava", "Ben", "Chloe", "Dev", "Elena", "Farid", "Grace", "Hiro", "Ines", "Jamal", "Kira", "Liam")
ITEMS = ("apples", "marbles", "stickers", "books", "pencils", "cookies", "coins", "shells", "cards", "stamps")
PLACES = ("the market", "school", "the park", "the library", "a fair", "the shop")
FILE_FORMATS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


def arithmetic_problems(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """n (question, worked answer) pairs; deterministic for a seed."""
    rng = random.Random(f"arithmetic:{seed}")
    out = []
    for i in range(n):
        name, other = rng.sample(NAMES, 2)
        item, place = rng.choice(ITEMS), rng.choice(PLACES)
        a, b, c = rng.randint(3, 60), rng.randint(2, 30), rng.randint(2, 9)
        kind = i % 4
        if kind == 0:
            q = f"{name} has {a} {item}. At {place} {name} gets {b} more. How many {item} does {name} have now?"
            ans = f"{name} starts with {a} and adds {b}: {a} + {b} = {a + b}. The answer is {a + b}."
        elif kind == 1:
            a = a + b
            q = f"{name} had {a} {item} and gave {b} of them to {other}. How many {item} are left?"
            ans = f"Giving away {b} of {a} leaves {a} - {b} = {a - b}. The answer is {a - b}."
        elif kind == 2:
            q = f"Each of {c} boxes at {place} holds {b} {item}. How many {item} are there in all?"
            ans = f"{c} boxes of {b} each make {c} * {b} = {b * c}. The answer is {b * c}."
        else:
            total = b * c
            q = f"{name} shares {total} {item} equally among {c} friends. How many {item} does each friend get?"
            ans = f"{total} split into {c} equal parts is {total} / {c} = {b}. The answer is {b}."
        out.append((q, f"<think>{ans}</think>"))
    return out


def load_reference(
    source: str,
    n: int,
    *,
    split: str = "test",
    fields: tuple[str, str] = ("question", "answer"),
    seed: int = 0,
) -> list[tuple[str, str]]:
    """n (prompt, completion) pairs from `source` (see the module docstring)."""
    if n < 2:
        raise AnalysisError(f"need at least 2 reference samples, got {n}")
    if source == "arithmetic":
        return arithmetic_problems(n, seed)
    import datasets

    path = Path(source).expanduser()
    try:
        if path.exists():
            files = (
                sorted(p for p in path.rglob("*") if p.suffix in FILE_FORMATS) if path.is_dir() else [path]
            )
            if not files or files[0].suffix not in FILE_FORMATS:
                raise AnalysisError(f"{source}: no .json/.jsonl/.csv/.parquet file to read")
            ds = datasets.load_dataset(
                FILE_FORMATS[files[0].suffix], data_files=[str(f) for f in files], split="train"
            )
        else:
            name, _, config = source.partition(":")
            ds = datasets.load_dataset(name, config or None, split=split)
    except AnalysisError:
        raise
    except Exception as err:  # datasets raises many types (offline, missing split, bad file)
        raise AnalysisError(
            f"cannot load reference dataset {source!r}: {type(err).__name__}: {err}"
        ) from None
    missing = [f for f in fields if f not in ds.column_names]
    if missing:
        raise AnalysisError(
            f"reference dataset {source!r} has no column {missing[0]!r} (columns: {', '.join(ds.column_names)}); "
            "set --reference-fields QUESTION,ANSWER"
        )
    if len(ds) < 2:
        raise AnalysisError(f"reference dataset {source!r} has {len(ds)} rows; need at least 2")
    rows = random.Random(seed).sample(range(len(ds)), min(n, len(ds)))
    q, a = fields
    return [(str(ds[i][q]), str(ds[i][a])) for i in sorted(rows)]
