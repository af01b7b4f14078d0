"""`gcd-trl tiny-model`: build the tiny random Qwen2 chat model for tests and the CPU demo (no network)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gcd_trl.commands._common import add_alias, add_command
from gcd_trl.tiny_model import SHAPES


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "tiny-model",
        help="Build a tiny random Qwen2-architecture chat model and tokenizer into a folder.",
        description="Train a byte-level BPE tokenizer on the packaged ALFWorld/ScienceWorld corpus and save "
        "it with a randomly initialised Qwen2 causal LM, loadable by AutoTokenizer / AutoModelForCausalLM. "
        "The same arguments give byte-identical files.",
    )
    p.add_argument(
        "--output_dir",
        help="Output folder (required; created if missing). A folder that is not empty is refused "
        "unless --overwrite.",
    )
    add_alias(p, "--out", dest="output_dir")
    p.add_argument(
        "--overwrite", action="store_true", help="Write into a non-empty folder, replacing the model's files."
    )
    p.add_argument("--seed", type=int, default=0, help="Seed of the weight initialisation.")
    p.add_argument("--hidden_size", type=int, default=256, help="Hidden size (a multiple of 64).")
    add_alias(p, "--hidden-size", dest="hidden_size", type=int)
    p.add_argument("--num_hidden_layers", type=int, default=4, help="Number of decoder layers.")
    add_alias(p, "--num-layers", "--num_layers", dest="num_hidden_layers", type=int)
    p.add_argument("--intermediate_size", type=int, default=0, help="MLP width (0: 4 x hidden size).")
    add_alias(p, "--intermediate-size", dest="intermediate_size", type=int)
    p.add_argument(
        "--vocab_size",
        type=int,
        default=4096,
        help="Upper bound on the tokenizer vocabulary, all tokens included (BPE stops earlier "
        "when the corpus has no more repeated pairs).",
    )
    add_alias(p, "--vocab-size", dest="vocab_size", type=int)
    p.add_argument(
        "--corpus",
        default=None,
        help="Train the tokenizer on this .txt/.txt.gz file instead of the packaged corpus.",
    )
    p.add_argument(
        "--entity_tokens",
        action="store_true",
        help="One token per ALFWorld entity (' shelf 1', ' pen 2'): shorter prompts, and a tiny model "
        "learns to copy admissible actions sooner (docs/sft.md).",
    )
    add_alias(p, "--entity-tokens", dest="entity_tokens", action="store_true")
    p.add_argument(
        "--shape",
        choices=sorted(SHAPES),
        default=None,
        help="Build a real architecture instead (layers, hidden and MLP sizes, heads, KV heads, vocabulary "
        "of the Hub model), random init, bfloat16, the project's tokenizer: GPU memory and speed without a "
        "hub. It learns nothing. --hidden_size, --num_hidden_layers and --intermediate_size are ignored.",
    )
    p.set_defaults(func=run)


def _error(message: str) -> int:
    print(f"gcd-trl tiny-model: error: {message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    if not args.output_dir:
        return _error("--output_dir is required (the folder the model is written to)")
    out = Path(args.output_dir)
    if out.exists() and not out.is_dir():
        return _error(f"--output_dir {out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not args.overwrite:
        names = sorted(p.name for p in out.iterdir())
        shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
        return _error(
            f"--output_dir {out} is not empty ({shown}); pass --overwrite to write the model there anyway, "
            "or choose an empty folder"
        )
    import torch

    from gcd_trl.tiny_model import build_tiny_model, count_parameters

    torch.set_num_threads(1)
    try:
        out = build_tiny_model(
            out,
            seed=args.seed,
            hidden_size=args.hidden_size,
            num_layers=args.num_hidden_layers,
            vocab_size=args.vocab_size,
            corpus=args.corpus,
            with_entity_tokens=args.entity_tokens,
            intermediate_size=args.intermediate_size,
            shape=args.shape,
        )
    except (OSError, ValueError) as err:
        return _error(str(err))
    print(f"tiny model: {count_parameters(out):,} parameters, saved to {out}")
    return 0
