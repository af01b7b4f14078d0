"""`gcd-trl push OUTPUT_DIR [--repo_id ID] [--eval_dir DIR ...] [--rollouts] [--private]`: upload a trained
run to the Hub after the fact (say, once `gcd-trl eval` has scored it): an RL run's card is rebuilt with the
eval results of this checkpoint, then the allow-list of `gcd_trl.hub` goes up in one commit."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gcd_trl.commands._common import add_command


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "push",
        help="Upload a trained run (model, tokenizer, card, config, golden rules) to the Hugging Face Hub.",
        description="Upload a run folder of `gcd-trl rl` or `gcd-trl sft` to the Hub: the model, tokenizer, "
        "README.md, run_config.yaml, summary.json and golden_rules.json; rollouts/ only with --rollouts; never "
        "checkpoints, judge_cache/ or completions/. The token is HF_TOKEN (or `hf auth login`'s); HF_ENDPOINT "
        "chooses another Hub.",
    )
    p.add_argument("output_dir", help="The run folder (the output_dir of the run).")
    p.add_argument(
        "--repo_id", default=None, help="Hub repo, e.g. me/alfworld-gigpo (default: USER/<folder>)."
    )
    p.add_argument(
        "--eval_dir",
        action="append",
        default=[],
        help="A `gcd-trl eval` folder of this checkpoint, for the card's results (repeatable; OUTPUT_DIR/eval/* "
        "are looked in as well).",
    )
    p.add_argument("--rollouts", action="store_true", help="Upload rollouts/ too (large).")
    p.add_argument("--private", action="store_true", help="Create the repo private.")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from gcd_trl.eval.runner import model_fingerprint
    from gcd_trl.hub import HubError, check_hub, push_folder
    from gcd_trl.trainers.card import checkpoint_report, read_run_config, write_rl_card

    out = Path(args.output_dir)
    if not out.is_dir():
        print(f"gcd-trl push: {out}: no such folder", file=sys.stderr)
        return 2
    fingerprint = model_fingerprint(str(out))
    for folder in args.eval_dir:
        report, why = checkpoint_report(folder, fingerprint)
        if report is None:
            print(f"gcd-trl push: note: left out of the card: {why}")
    try:
        repo_id = args.repo_id or f"{check_hub()}/{out.resolve().name}"
        if "env" in read_run_config(out):  # an RL run: the card gains this checkpoint's eval results
            write_rl_card(out, repo_id=repo_id, eval_dirs=args.eval_dir)
        url = push_folder(out, repo_id, push_rollouts=args.rollouts, private=args.private or None)
    except HubError as err:
        print(f"gcd-trl push: {err}", file=sys.stderr)
        return 2
    print(f"gcd-trl push: {url}")
    return 0
