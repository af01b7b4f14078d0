"""The shipped baseline/ablation configs (configs/ablations, docs/baselines.md): complete for the paper's
Tables 1-3 and appendix B, each passing `gcd-trl config check` (the value-SFT ones the value-SFT parser),
each differing from its baseline only by its own keys, and the generator reproducing them."""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
ABL = REPO / "configs" / "ablations"
ENVS, SIZES, ESTIMATORS = (
    ("alfworld", "scienceworld"),
    ("qwen2.5-1.5b", "qwen2.5-7b"),
    ("grpo", "gigpo", "rlvmr"),
)
PPO_KEYS = {"advantage_estimator", "gae_gamma", "gae_lambda", "critic_learning_rate", "critic_weight_decay"}
PPO_KEYS |= {"cliprange_value", "critic_warmup_rounds", "step_adv_norm", "grpo_level"}
NTHR_KEYS = {"nthr", "nthr_beta", "nthr_eta"}
VALUE_KEYS = {"value_head_coef", "value_head_learning_rate", "value_head_class_balance", "model_name_or_path"}


def _rl_configs():
    return sorted(p for p in ABL.glob("*.yaml") if "value_sft" not in p.name)


def test_the_set_is_complete():
    names = {p.stem for p in ABL.glob("*.yaml")}
    for env in ENVS:
        for size in SIZES:
            assert {f"{env}_ppo_{size}", f"{env}_grpo_nthr_{size}", f"{env}_grpo_valuehead_{size}"} <= names
            assert {f"value_sft_{env}_{size}", f"{env}_ppo_{size}_nocold"} <= names
            for est in ESTIMATORS:
                assert {f"{env}_{est}_{size}_nocold", f"{env}_{est}_{size}_gcd_nocold"} <= names
    assert {"tiny_alfworld_ppo", "tiny_alfworld_grpo_nthr", "tiny_alfworld_grpo_valuehead"} <= names
    assert "tiny_value_sft_alfworld" in names


def _differs(a: dict, b: dict) -> set[str]:
    return {k for k in set(a) | set(b) if a.get(k) != b.get(k)} - {"output_dir"}


def test_arms_differ_from_their_baselines_by_their_own_keys_only():
    """Catches drift: after editing configs/rl/ or configs/gcd/, rerun configs/ablations/generate.py."""
    load = lambda p: yaml.safe_load(p.read_text())  # noqa: E731
    for env in ENVS:
        for size in SIZES:
            base = load(REPO / "configs" / "rl" / f"{env}_grpo_{size}.yaml")
            ppo = load(ABL / f"{env}_ppo_{size}.yaml")
            assert _differs(base, ppo) <= PPO_KEYS and ppo["advantage_estimator"] == "gae"
            nthr = load(ABL / f"{env}_grpo_nthr_{size}.yaml")
            assert _differs(base, nthr) == NTHR_KEYS and nthr["nthr"] is True
            vh = load(ABL / f"{env}_grpo_valuehead_{size}.yaml")
            assert _differs(base, vh) == VALUE_KEYS and vh["model_name_or_path"].endswith("_value")
            for est in ESTIMATORS:
                for src, name in (
                    (REPO / "configs" / "rl" / f"{env}_{est}_{size}.yaml", f"{env}_{est}_{size}_nocold"),
                    (
                        REPO / "configs" / "gcd" / f"{env}_{est}_{size}_gcd.yaml",
                        f"{env}_{est}_{size}_gcd_nocold",
                    ),
                ):
                    arm = load(ABL / f"{name}.yaml")
                    assert _differs(load(src), arm) <= {"model_name_or_path"}, name
                    assert (
                        arm["model_name_or_path"].startswith("Qwen/Qwen2.5-")
                        and "Instruct" in arm["model_name_or_path"]
                    )
                    assert arm["output_dir"].endswith("_nocold")


def test_every_rl_config_passes_config_check(tmp_path, monkeypatch, capsys):
    from gcd_trl.commands.config import run_check
    from gcd_trl.trainers.ppo import AgentPPOTrainer
    from gcd_trl.trainers.run import trainer_class
    from gcd_trl.trainers.token import AgentTokenTrainer

    monkeypatch.setenv("ALFWORLD_DATA", str(tmp_path))
    model = tmp_path / "model"  # config check, like rl, needs the model (offline: a saved folder)
    model.mkdir()
    (model / "config.json").write_text("{}")
    files = _rl_configs()
    assert len(files) >= 4 * 3 + 4 * 7 + 3
    for path in files:
        code = run_check(
            argparse.Namespace(file=str(path), all=False, overrides=["--model_name_or_path", str(model)])
        )
        out, err = capsys.readouterr()
        assert code == 0, f"{path.name}: {err}"
        cls = trainer_class(argparse.Namespace(**yaml.safe_load(out)["trainer"]))
        if "_ppo_" in path.name or path.stem.endswith("_ppo"):
            assert cls is AgentPPOTrainer
        elif "nthr" in path.name or "valuehead" in path.name:
            assert cls is AgentTokenTrainer


def test_value_sft_configs_parse(tmp_path):
    from gcd_trl.trainers.value_sft import parse_config

    for path in sorted(ABL.glob("*value_sft*.yaml")):
        argv = ["--config", str(path), "--output_dir", str(tmp_path / path.stem), "--bf16", "false"]
        train, args, model = parse_config(argv + ["--use_cpu", "true"])
        assert args.value_data and args.agent_data and model.model_name_or_path
        assert train.remove_unused_columns is False


def test_generated_files_are_current(tmp_path):
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    proc = subprocess.run(
        [sys.executable, "configs/ablations/generate.py"], capture_output=True, text=True, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    for path in sorted(ABL.glob("*.yaml")):
        assert (tmp_path / "configs" / "ablations" / path.name).read_text() == path.read_text(), (
            f"{path.name} is stale: run `python configs/ablations/generate.py`"
        )


def test_tiny_ppo_config_runs_through_the_cli_parser():
    from gcd_trl.trainers.grpo_config import parse_rl_config

    train, env, gcd, model = parse_rl_config(["--config", str(ABL / "tiny_alfworld_ppo.yaml")])
    assert train.advantage_estimator == "gae" and train.critic_learning_rate == pytest.approx(1e-4)
    assert dataclasses.is_dataclass(train)
