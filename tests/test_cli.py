"""The `gcd-trl` surface a TRL user meets first: the full help, --version, every option's help text, and
`-h` of the TrlParser-backed commands listing every config field with its help and default."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PIPELINE = ("data", "sft", "rl", "eval", "analyze")  # then the tools
# command -> (module, attribute) of the dataclasses its -h must list (TrlParser-backed commands)
TRL_COMMANDS = {
    "rl": ("gcd_trl.trainers.grpo_config", "RL_DATACLASSES"),
    "value-sft": ("gcd_trl.trainers.value_sft", "VALUE_SFT_DATACLASSES"),
    "sft": ("gcd_trl.trainers.sft", "SFT_DATACLASSES"),
    "eval": ("gcd_trl.eval.config", "EVAL_DATACLASSES"),
}
# commands written by other helpers, whose help / TrlParser routing the lead wires with commands/_common.py:
# until then their gaps are reported as expected failures, naming what is missing
PENDING_WIRING: set[str] = set()  # every command is wired through commands/_common.py


def _cli(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", COLUMNS="100")
    return subprocess.run(
        [sys.executable, "-m", "gcd_trl", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _leaves(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(command path, parser) of every runnable (sub)command."""
    subs = _subparsers(parser)
    if not subs:
        yield path, parser
    for name, sub in subs.items():
        yield from _leaves(sub, (*path, name))


def _commands() -> dict[str, argparse.ArgumentParser]:
    from gcd_trl.cli import build_parser

    return _subparsers(build_parser())


def test_gcd_trl_alone_prints_the_full_help_and_exits_0():
    proc = _cli()
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.startswith("usage: gcd-trl")
    listed = [name for name in _commands()]
    positions = [
        out.index(f"\n    {name} ") if f"\n    {name} " in out else out.index(f"\n    {name}\n")
        for name in listed
    ]
    assert positions == sorted(positions), "commands are listed in pipeline order"
    present = [c for c in PIPELINE if c in listed]
    assert listed[: len(present)] == present and "rl" in listed
    assert "gcd-trl COMMAND -h" in out and "--accelerate_config" in out


def test_version():
    from importlib.metadata import version

    from gcd_trl import __version__

    proc = _cli("--version")
    assert proc.returncode == 0
    assert f"gcd-trl {__version__}" in proc.stdout and f"trl {version('trl')}" in proc.stdout


def test_unknown_command_fails_with_a_hint():
    proc = _cli("--bogus")
    assert proc.returncode == 2 and "choose a COMMAND" in proc.stderr


@pytest.mark.parametrize("command", sorted(_commands()))
def test_every_option_has_help(command):
    missing = []
    for path, parser in _leaves(_commands()[command], (command,)):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction) or action.help == argparse.SUPPRESS:
                continue
            if not (action.help or "").strip():
                missing.append(f"{' '.join(path)} {'/'.join(action.option_strings) or action.dest}")
    if missing and command in PENDING_WIRING:
        pytest.xfail(f"options without help (to be wired by the lead): {missing}")
    assert not missing, f"options without help text: {missing}"


@pytest.mark.parametrize("command", sorted(_commands()))
def test_every_command_answers_h(command, capsys):
    """`-h` of every (sub)command exits 0 and shows each visible option with its help."""
    from gcd_trl.cli import main

    for path, parser in _leaves(_commands()[command], (command,)):
        with pytest.raises(SystemExit) as exc:
            main([*path, "-h"])
        assert exc.value.code == 0, path
        out = " ".join(capsys.readouterr().out.split())
        assert out.startswith(f"usage: gcd-trl {' '.join(path)}"), out[:200]
        if path[0] in TRL_COMMANDS:
            continue  # the field listing is checked below
        for action in parser._actions:
            if action.help in (None, argparse.SUPPRESS) or not action.option_strings:
                continue
            assert action.option_strings[-1] in out, (path, action.option_strings)
            assert " ".join(action.help.split())[:30].replace("%%", "%") in out, (path, action.help)


def _field_help(cls: type, field: dataclasses.Field) -> str:
    text = " ".join(str(field.metadata.get("help", "")).split())
    return text[:40]


@pytest.mark.parametrize("command", sorted(TRL_COMMANDS))
def test_trl_commands_list_every_config_field_with_help_and_default(command, capsys):
    """As `trl grpo -h`: every dataclass field, its help and its default, plus --config and the launcher."""
    if command not in _commands():
        pytest.skip(f"gcd-trl {command} is not built yet")
    from gcd_trl.cli import main

    with pytest.raises(SystemExit) as exc:
        main([command, "-h"])
    assert exc.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    parser = _commands()[command]
    wired = any("--accelerate_config" in a.option_strings for a in parser._actions)
    if not wired and command in PENDING_WIRING:
        pytest.xfail(
            f"gcd-trl {command} -h is not routed to TrlParser yet (commands/_common.py: add_trl_command)"
        )
    module, attr = TRL_COMMANDS[command]
    classes = getattr(importlib.import_module(module), attr)
    for cls in classes:
        for field in dataclasses.fields(cls):
            if not field.init:
                continue
            assert f"--{field.name}" in out, f"--{field.name} ({cls.__name__}) missing from `{command} -h`"
            helptext = _field_help(cls, field)
            if helptext:
                assert helptext in out, f"help of --{field.name} missing: {helptext!r}"
    assert "(default: " in out
    for flag in ("--config", "--accelerate_config", "--num_processes"):
        assert flag in out


def test_rl_help_shows_our_fields_and_defaults(capsys):
    from gcd_trl.cli import main

    with pytest.raises(SystemExit):
        main(["rl", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert re.search(
        r"--max_episode_steps MAX_EPISODE_STEPS[^-]*(--max-episode-steps MAX_EPISODE_STEPS )?Env steps per "
        r"episode \(paper: 30\)\. \(default: 30\)",
        out,
    )
    assert "1% of it" in out  # a literal % in a field's help is printed, not taken as a format
    assert "--learning_rate" in out and "--model_name_or_path" in out


def test_tool_flags_are_config_keys():
    """The env / advantages flags that mean a config value are spelled as its key, with its default."""
    from gcd_trl.rollout.settings import EnvArguments
    from gcd_trl.trainers.grpo_config import AgentGRPOConfig

    env_fields = {f.name: f for f in dataclasses.fields(EnvArguments)}
    run_fields = {f.name: f for f in dataclasses.fields(AgentGRPOConfig)}
    commands = _commands()
    replay = _subparsers(commands["env"])["replay"]
    generate = _subparsers(commands["env"])["generate-alfworld"]
    shared = {
        replay: (
            "environment part data_dir task_types scienceworld_tasks max_tasks max_episode_steps history_length "
            "meta_reasoning prompt_template alfworld_expert jvm_heap simplifications"
        ),
        generate: "data_dir generate_games generate_seed task_types",
    }
    for parser, names in shared.items():
        flags = _visible(parser)
        for name in names.split():
            assert name in env_fields and f"--{name}" in flags[name].option_strings, name
    same_default = "part jvm_heap simplifications alfworld_expert".split()
    flags = _visible(replay)
    for name in same_default:
        assert flags[name].default == env_fields[name].default, name
    advantages = _visible(commands["advantages"])
    for name in (
        "advantage_estimator gamma omega step_adv_norm invalid_penalty similarity_threshold success_reward "
        "gigpo_step_reward reflection_at_first_step grpo_level"
    ).split():
        assert f"--{name}" in advantages[name].option_strings, name
        if name != "advantage_estimator":
            assert advantages[name].default == run_fields[name].default, name


def _visible(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """dest -> the first visible action writing it (the flag named after the key comes first)."""
    out: dict[str, argparse.Action] = {}
    for a in parser._actions:
        if a.help != argparse.SUPPRESS:
            out.setdefault(a.dest, a)
    return out


def test_docs_command_reference_matches_the_help():
    """docs/cli.md (the README's command reference) names every command and every visible flag of the tool
    commands and of rl's launcher, as `-h` shows them."""
    text = (REPO / "docs" / "cli.md").read_text()
    commands = _commands()
    for name in commands:
        assert f"gcd-trl {name}" in text, name
    for command in ("env", "advantages", "tiny-model", "config"):
        for path, parser in _leaves(commands[command], (command,)):
            assert f"gcd-trl {' '.join(path)}" in text, path
            for action in parser._actions:
                if action.help == argparse.SUPPRESS or not action.option_strings or action.dest == "help":
                    continue
                assert action.option_strings[-1] in text, (path, action.option_strings)
    for flag in ("--config", "--accelerate_config", "--num_processes"):
        assert flag in text
    for name in ("cpu", "single_gpu", "multi_gpu", "zero2", "zero3", "fsdp2"):
        assert (REPO / "configs" / "accelerate" / f"{name}.yaml").is_file() and f"`{name}`" in text
