"""`gcd-trl sft [--config FILE] [--key value ...]`: the cold start, TRL's SFTTrainer on agent/judge data.

`gcd-trl sft -h` lists every field (TRL's SFTConfig and ModelConfig, and the data mixture of
gcd_trl/trainers/sft.py) with its help and default, as `trl sft -h` does. Launching:
`gcd-trl sft --config FILE --accelerate_config zero2 --num_processes 8` relaunches through accelerate
(or: `accelerate launch --config_file configs/accelerate/X.yaml -m gcd_trl sft --config FILE`).
The config, report_to packages, model path and datasets are checked before the model loads; a JSON
summary of the run is printed last.
"""

from __future__ import annotations

import argparse
import json

from gcd_trl.commands._common import add_trl_command, lazy


def add_parser(sub: argparse._SubParsersAction) -> None:
    add_trl_command(
        sub,
        "sft",
        help="Supervised cold start on agent (and judge) data with TRL's SFTTrainer.",
        description="Supervised cold start with TRL's SFTTrainer on chat datasets mixed by weight. Every field "
        "below can be set in the --config YAML file or as --key value (the command line wins).",
        config_help="SFT config (YAML), e.g. configs/sft/tiny_alfworld.yaml.",
        dataclasses=lazy("gcd_trl.trainers.sft", "SFT_DATACLASSES"),
        main=main,
        check=lazy("gcd_trl.trainers.sft", "check_arguments"),
    )


def main(argv: list[str]) -> int:
    from gcd_trl.dist import is_main_process, print_once
    from gcd_trl.hub import HubError
    from gcd_trl.trainers.sft import SFTInputError, parse_sft_config, run_sft

    try:
        parts = parse_sft_config(argv)
    except SFTInputError as err:
        print_once(f"gcd-trl sft: {err}")  # every rank finds the same problem: say it once
        return 2
    try:
        summary = run_sft(*parts)
    except SFTInputError as err:
        print_once(f"gcd-trl sft: {err}")
        return 2
    except HubError as err:  # after training: the model is saved, only the upload failed
        print_once(
            f"gcd-trl sft: {err} (the model is saved in {parts[0].output_dir}: `gcd-trl push` uploads it)"
        )
        return 1
    if is_main_process():
        print(json.dumps(summary, indent=1))
    return 0
