"""`gcd-trl value-sft [--config FILE] [--key value ...]`: the value-SFT cold start (paper Table 3): agent SFT
plus a scalar value head on the shared hidden state (`gcd_trl.trainers.value_sft`).

`gcd-trl value-sft -h` lists every field (transformers' TrainingArguments, ValueSFTArguments, TRL's
ModelConfig). Launching: `--accelerate_config NAME --num_processes N` relaunches through accelerate.
"""

from __future__ import annotations

import argparse

from gcd_trl.commands._common import add_trl_command, lazy


def add_parser(sub: argparse._SubParsersAction) -> None:
    add_trl_command(
        sub,
        "value-sft",
        help="Cold start with a value-head classifier (the paper's value-SFT baseline).",
        description="Value SFT: the LM loss on agent data plus value_head_coef x BCE of a scalar head on "
        "labelled steps. Every field below can be set in the --config YAML file or as --key value.",
        config_help="Value-SFT config (YAML), e.g. configs/ablations/tiny_value_sft_alfworld.yaml.",
        dataclasses=lazy("gcd_trl.trainers.value_sft", "VALUE_SFT_DATACLASSES"),
        main=main,
    )


def main(argv: list[str]) -> int:
    from gcd_trl.dist import print_once
    from gcd_trl.trainers.value_sft import ValueSFTError, parse_config, run

    try:
        run(*parse_config(argv))
    except ValueSFTError as err:
        print_once(f"gcd-trl value-sft: {err}")  # every rank finds the same problem: say it once
        return 2
    return 0
