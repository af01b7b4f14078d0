"""`gcd-trl tiny-model`: build the tiny random Qwen2 chat model for tests and the CPU demo (no network)."""

from __future__ import annotations

import argparse
import sys


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tiny-model",
        help="Build a tiny random Qwen2-architecture chat model and tokenizer into a folder.",
        description="Train a byte-level BPE tokenizer on the packaged ALFWorld/ScienceWorld corpus and save "
        "it with a randomly initialised Qwen2 causal LM, loadable by AutoTokenizer / AutoModelForCausalLM. "
        "The same arguments give byte-identical files.",
    )
    p.add_argument("--out", required=True, help="Output folder (created if missing; files are overwritten).")
    p.add_argument("--seed", type=int, default=0, help="Seed of the weight initialisation.")
    p.add_argument("--hidden-size", type=int, default=256, help="Hidden size (a multiple of 64).")
    p.add_argument("--num-layers", type=int, default=4, help="Number of decoder layers.")
    p.add_argument(
        "--vocab-size",
        type=int,
        default=4096,
        help="Upper bound on the tokenizer vocabulary, all tokens included (BPE stops earlier "
        "when the corpus has no more repeated pairs).",
    )
    p.add_argument(
        "--corpus",
        default=None,
        help="Train the tokenizer on this .txt/.txt.gz file instead of the packaged corpus.",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from gcd_trl.tiny_model import build_tiny_model, count_parameters

    torch.set_num_threads(1)
    try:
        out = build_tiny_model(
            args.out,
            seed=args.seed,
            hidden_size=args.hidden_size,
            num_layers=args.num_layers,
            vocab_size=args.vocab_size,
            corpus=args.corpus,
        )
    except (OSError, ValueError) as err:
        print(f"gcd-trl tiny-model: error: {err}", file=sys.stderr)
        return 2
    print(f"tiny model: {count_parameters(out):,} parameters, saved to {out}")
    return 0
