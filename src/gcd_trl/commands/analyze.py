"""`gcd-trl analyze`: the paper's diagnostics on a model and saved trajectories (JSON + PNG each).

gcd-trl analyze theory --out DIR
gcd-trl analyze similarity|coupling|tokens --model M --trajectories T... --out DIR
gcd-trl analyze influence|consistency --model M1 --model M2 ... --trajectories T... --out DIR
gcd-trl analyze all --run RUN_DIR [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path
from typing import Any

ANALYSES = ("theory", "similarity", "coupling", "influence", "consistency", "tokens")
HELP = {
    "theory": "Lemma 3.1 by Monte Carlo, Theorem 3.2's sign conditions and GRPO simulation, Figure 4, A.3.",
    "similarity": "Figure 3a: pairwise similarity of agent steps vs single-turn reasoning samples.",
    "coupling": "Figure 3b: change of log p(a_j|x_j) after one SGD step on (x_i, a_i), by action.",
    "influence": "Figure 8 / Eq. 2: same-class minus different-class influence over checkpoints.",
    "consistency": "Figures 1 and 5: how often the model repeats repeated / good / bad actions (10 samples).",
    "tokens": "Figure 9: which completion tokens carry the cross-sample coupling (HTML + PNG).",
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "analyze",
        help="Diagnostics from the paper: gradient coupling, influence, consistency, theory (JSON + PNG).",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    inner = p.add_subparsers(dest="analysis", required=True, metavar="ANALYSIS")
    for name in ANALYSES:
        q = inner.add_parser(name, help=HELP[name], description=HELP[name])
        q.add_argument(
            "--out", required=True, help="Output folder (NAME.json and NAME.png are written there)."
        )
        q.add_argument("--seed", type=int, default=0, help="Seed of sampling and pair selection.")
        if name == "theory":
            q.add_argument("--samples", type=int, default=200_000, help="Monte-Carlo episodes per (p, q, r).")
            q.add_argument(
                "--group-size", type=int, default=8, help="GRPO group size G of the group-baseline check."
            )
        else:
            _model_args(q, several=name in ("influence", "consistency"))
        _specific_args(name, q)
        q.set_defaults(func=run)
    q = inner.add_parser(
        "all",
        help="Every analysis on a training run's checkpoints and rollouts.",
        description="Every analysis on RUN's checkpoints (checkpoint-N folders, then the final "
        "model) and its rollouts; writes RUN/analysis (or --out) with report.md.",
    )
    q.add_argument("--run", required=True, help="A training output_dir (checkpoint-N/, rollouts/).")
    q.add_argument("--out", default=None, help="Output folder (default RUN/analysis).")
    q.add_argument(
        "--base", default=None, help="The model the run started from: the first point of the series."
    )
    q.add_argument(
        "--trajectories",
        nargs="+",
        default=None,
        help="Step records to use instead of RUN/rollouts (and RUN's episodes.jsonl files).",
    )
    q.add_argument("--only", nargs="+", choices=ANALYSES, default=list(ANALYSES), help="Run only these.")
    q.add_argument("--device", default="auto", help="cpu | cuda | auto (cuda when available).")
    q.add_argument("--seed", type=int, default=0, help="Seed of sampling and pair selection.")
    q.add_argument("--quick", action="store_true", help="Smaller samples everywhere (CPU demo sizes).")
    q.set_defaults(func=run)


def _model_args(q: argparse.ArgumentParser, several: bool) -> None:
    q.add_argument(
        "--model",
        required=True,
        action="append" if several else "store",
        help="Model folder or Hub id"
        + (" (repeat for a series of checkpoints, in order)." if several else "."),
    )
    q.add_argument(
        "--trajectories",
        required=True,
        nargs="+",
        help="Step records: rollouts folder/round_*.jsonl files, or eval episodes.jsonl.",
    )
    q.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda:0, ...")
    q.add_argument(
        "--dtype",
        choices=("float32", "bfloat16", "float16"),
        default="float32",
        help="Weights' dtype (float32 keeps `coupling`'s small SGD step exact; bfloat16 halves memory).",
    )
    q.add_argument("--max-prompt-tokens", type=int, default=None, help="Keep only the last N prompt tokens.")


def _specific_args(name: str, q: argparse.ArgumentParser) -> None:
    if name in ("similarity", "coupling"):
        q.add_argument(
            "--grad-dim",
            default="auto",
            help="Per-sample gradients: 0 exact, N a count sketch of N buckets, auto (exact if it fits).",
        )
        q.add_argument("--grad-params", default=None, help="Regex of parameter names to take gradients of.")
        q.add_argument("--max-grad-gb", type=float, default=4.0, help="Memory allowed for exact gradients.")
    if name == "similarity":
        q.add_argument(
            "--reference",
            default="arithmetic",
            help="Single-turn samples: 'arithmetic' (generated), a .json/.jsonl/.csv/.parquet file, or a "
            "datasets name[:config] such as openai/gsm8k:main.",
        )
        q.add_argument("--reference-split", default="test", help="Split of the reference dataset.")
        q.add_argument("--reference-fields", default="question,answer", help="Prompt and completion columns.")
        q.add_argument("--num-samples", type=int, default=48, help="Samples per set.")
        q.add_argument("--pool", choices=("all", "completion"), default="all", help="Positions to mean-pool.")
        q.add_argument(
            "--gradients", action="store_true", help="Also compare per-sample gradient directions."
        )
    if name == "coupling":
        q.add_argument("--num-actions", type=int, default=8, help="Distinct actions (most repeated first).")
        q.add_argument("--per-action", type=int, default=4, help="States per action.")
        q.add_argument("--lr", type=float, default=1e-5, help="SGD learning rate of the one step.")
        q.add_argument(
            "--verify", type=int, default=2, help="Rows checked with a real step (weights restored)."
        )
    if name in ("influence", "consistency", "tokens"):
        q.add_argument(
            "--labels",
            choices=("auto", "records", "rules"),
            default="auto",
            help="Good/bad labels: the files' `label` fields, GCD's rules, or auto (files' if any).",
        )
    if name == "influence":
        q.add_argument("--per-class", type=int, default=16, help="Good and bad steps each.")
        q.add_argument(
            "--max-completion-tokens", type=int, default=None, help="Cap completion tokens per sample."
        )
    if name == "consistency":
        q.add_argument("--num-samples", type=int, default=10, help="Answers sampled per state.")
        q.add_argument("--high", type=int, default=5, help="High consistency: at least this many repeats.")
        q.add_argument("--window", type=int, default=1, help="A repeat matches one of the last N actions.")
        q.add_argument("--max-states", type=int, default=32, help="States per kind (repeat, good, bad).")
        q.add_argument("--temperature", type=float, default=1.0, help="Sampling temperature of the 10 draws.")
        q.add_argument("--max-new-tokens", type=int, default=None, help="Default: longest completion + 16.")
        q.add_argument("--batch-size", type=int, default=64, help="Sequences per generate call.")
    if name == "tokens":
        q.add_argument(
            "--against",
            choices=("all", "other-class"),
            default="all",
            help="Coupling to every other sample, or only to samples of the other label.",
        )
        q.add_argument("--num-samples", type=int, default=24, help="Samples whose tokens are scored.")
        q.add_argument("--top", type=int, default=20, help="Tokens in the ranking.")


def _fields(text: str) -> tuple[str, str]:
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 2 or not all(parts):
        raise ValueError(f"--reference-fields must be QUESTION,ANSWER, got {text!r}")
    return parts[0], parts[1]


def run_one(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Run one analysis from parsed CLI arguments."""
    common: dict[str, Any] = {"seed": args.seed}
    if name == "theory":
        from gcd_trl.analysis.theory import run_theory

        return run_theory(args.out, samples=args.samples, group_size=args.group_size, seed=args.seed)
    common.update(device=args.device, dtype=args.dtype, max_prompt_tokens=args.max_prompt_tokens)
    if name == "similarity":
        from gcd_trl.analysis.similarity import run_similarity

        return run_similarity(
            args.model,
            args.trajectories,
            args.out,
            reference=args.reference,
            reference_split=args.reference_split,
            reference_fields=_fields(args.reference_fields),
            num_samples=args.num_samples,
            pool=args.pool,
            gradients=args.gradients,
            grad_dim=args.grad_dim,
            grad_params=args.grad_params,
            max_grad_gb=args.max_grad_gb,
            **common,
        )
    if name == "coupling":
        from gcd_trl.analysis.coupling import run_coupling

        return run_coupling(
            args.model,
            args.trajectories,
            args.out,
            num_actions=args.num_actions,
            per_action=args.per_action,
            lr=args.lr,
            verify=args.verify,
            grad_dim=args.grad_dim,
            grad_params=args.grad_params,
            max_grad_gb=args.max_grad_gb,
            **common,
        )
    if name == "influence":
        from gcd_trl.analysis.influence import run_influence

        return run_influence(
            args.model,
            args.trajectories,
            args.out,
            labels=args.labels,
            per_class=args.per_class,
            max_completion_tokens=args.max_completion_tokens,
            **common,
        )
    if name == "consistency":
        from gcd_trl.analysis.consistency import run_consistency

        return run_consistency(
            args.model,
            args.trajectories,
            args.out,
            num_samples=args.num_samples,
            high=args.high,
            window=args.window,
            max_states=args.max_states,
            labels=args.labels,
            temperature=args.temperature,
            max_new_tokens=args.max_new_tokens,
            batch_size=args.batch_size,
            **common,
        )
    from gcd_trl.analysis.tokens import run_tokens

    return run_tokens(
        args.model,
        args.trajectories,
        args.out,
        against=args.against,
        labels=args.labels,
        num_samples=args.num_samples,
        top=args.top,
        **common,
    )


def run(args: argparse.Namespace) -> int:
    import torch

    from gcd_trl.analysis.common import AnalysisError
    from gcd_trl.rollout.records import RecordFileError

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))  # shared CPUs: one thread unless told
    if args.analysis == "all":
        from gcd_trl.analysis.suite import run_all

        try:
            summary = run_all(
                args.run,
                out_dir=args.out,
                base=args.base,
                trajectories=args.trajectories,
                only=args.only,
                device=args.device,
                seed=args.seed,
                quick=args.quick,
            )
        except (AnalysisError, RecordFileError) as err:
            print(f"gcd-trl analyze all: error: {err}", file=sys.stderr)
            return 2
        print(f"wrote {summary['report']}")
        for name, entry in summary["analyses"].items():
            print(f"  {name:12s} {entry['status']}{': ' + entry['message'] if entry.get('message') else ''}")
        return 1 if any(e["status"] == "failed" for e in summary["analyses"].values()) else 0
    try:
        run_one(args.analysis, args)
    except (AnalysisError, RecordFileError, ValueError) as err:
        print(f"gcd-trl analyze {args.analysis}: error: {err}", file=sys.stderr)
        if not isinstance(err, AnalysisError | RecordFileError):
            traceback.print_exc(limit=3)
        return 2
    print(f"wrote {Path(args.out) / (args.analysis + '.json')} and .png")
    return 0
