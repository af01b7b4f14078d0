"""What several test modules share: calling the CLI in this process, writing a run config, and the settings
of the tiny CPU runs (`from helpers import run_cli, ...`; pytest puts tests/ on the path)."""

from __future__ import annotations

from pathlib import Path

import pytest


def run_cli(*args: str, capsys) -> tuple[int, str, str]:
    """`gcd-trl ARGS` in this process: (exit code, stdout, stderr)."""
    from gcd_trl.cli import main

    with pytest.raises(SystemExit) as exc:
        main(list(args))
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def write_config(path: Path, **values) -> str:
    """`values` as a YAML run config at `path`; its path as a string."""
    import yaml

    path.write_text(yaml.safe_dump(values))
    return str(path)


def tiny_rl_config(path: Path, model_dir, games_dir, out, **overrides) -> str:
    """A `gcd-trl rl` config of one round on generated ALFWorld games, on the CPU, saving only the model."""
    values = dict(
        model_name_or_path=str(model_dir),
        output_dir=str(out),
        environment="alfworld",
        data_dir=str(games_dir),
        split="all",
        max_episode_steps=2,
        num_envs=2,
        tasks_per_round=1,
        num_generations=2,
        max_completion_length=8,
        max_steps=1,
        use_cpu=True,
        bf16=False,
        report_to="none",
        activation_checkpointing=False,
        save_strategy="no",
        logging_steps=1,
    )
    values.update(overrides)
    return write_config(path, **values)


def small_run_args(out_dir, **overrides) -> dict:
    """AgentGRPOConfig keywords of a two-step CPU run of two tasks, two generations each, short completions
    (no checkpoints unless `overrides` ask for them)."""
    values = dict(
        output_dir=str(out_dir),
        use_cpu=True,
        bf16=False,
        report_to="none",
        num_generations=2,
        tasks_per_round=2,
        max_completion_length=16,
        max_tokens_per_microbatch=2048,
        learning_rate=1e-3,
        logging_steps=1,
        save_strategy="no",
        activation_checkpointing=False,
        seed=0,
        max_steps=2,
        disable_tqdm=True,
    )
    values.update(overrides)
    return values
