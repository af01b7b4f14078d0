"""`gcd-trl rl [--config FILE] [--key value ...]`: train an agent with GRPO / GiGPO / RLVMR / PPO (and GCD).

`gcd-trl rl -h` lists every config field with its help and default, as `trl grpo -h` does. Launching:
`gcd-trl rl --config FILE --accelerate_config zero2 --num_processes 8` relaunches through accelerate
(or: `accelerate launch --config_file configs/accelerate/X.yaml -m gcd_trl rl --config FILE`).
Everything that can be checked without a model is checked first (`gcd_trl.trainers.run.prepare`), so a
bad input fails in seconds with a message naming it.
"""

from __future__ import annotations

import argparse

from gcd_trl.commands._common import add_trl_command, lazy

DESCRIPTION = (
    "Train with AgentGRPOTrainer (TRL's GRPOTrainer over env transitions). Every field below can be set in "
    "the --config YAML file or as --key value (the command line wins)."
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    add_trl_command(
        sub,
        "rl",
        help="Train an agent with RL on ALFWorld or ScienceWorld.",
        description=DESCRIPTION,
        config_help="Run config (YAML), e.g. configs/rl/tiny_alfworld_grpo.yaml. Optional when the required "
        "values (model_name_or_path, ...) are given on the command line.",
        dataclasses=lazy("gcd_trl.trainers.grpo_config", "RL_DATACLASSES"),
        main=main,
        check=lazy("gcd_trl.trainers.run", "check_arguments"),
    )


def main(argv: list[str]) -> int:
    from gcd_trl.config import ConfigError
    from gcd_trl.dist import print_once
    from gcd_trl.hub import HubError
    from gcd_trl.trainers.run import prepare, train

    try:
        parts = prepare(argv)
    except ConfigError as err:
        print_once(f"gcd-trl rl: {err}")  # every rank finds the same problem: say it once
        return 2
    try:
        train(*parts)
    except HubError as err:  # after training: the model is saved, only the upload failed
        print_once(
            f"gcd-trl rl: {err} (the model is saved in {parts[0].output_dir}: `gcd-trl push` uploads it)"
        )
        return 1
    return 0
