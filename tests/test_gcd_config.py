"""GCDArguments: every field validated with the key named; the shipped configs/gcd ablations pass `config check` and differ from their baselines by GCD keys only."""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gcd_trl.config import ConfigError
from gcd_trl.gcd.args import GCDArguments

REPO = Path(__file__).resolve().parents[1]
GCD_CONFIGS = REPO / "configs" / "gcd"


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"judge_votes": 0}, "judge_votes"),
        ({"judge_votes": 2, "judge_min_agree": 3}, "judge_min_agree"),
        ({"judge_min_agree": 0}, "judge_min_agree"),
        ({"judge_vote_mode": "many"}, "judge_vote_mode"),
        ({"judge_format_penalty": -1.0}, "judge_format_penalty"),
        ({"judge_temperature": -0.1}, "judge_temperature"),
        ({"judge_top_p": 0.0}, "judge_top_p"),
        ({"judge_max_tokens": 0}, "judge_max_tokens"),
        ({"judge_max_retries": -1}, "judge_max_retries"),
        ({"judge_concurrency": 0}, "judge_concurrency"),
        ({"judge_max_requests": -5}, "judge_max_requests"),
        ({"judge_token_budget": -1}, "judge_token_budget"),
        ({"judge_external_steps_per_round": -1}, "judge_external_steps_per_round"),
        ({"static_judge_prompts_per_round": -1}, "static_judge_prompts_per_round"),
        ({"judge_max_completion_length": 0}, "judge_max_completion_length"),
        ({"correction_source": "oracle"}, "correction_source"),
        ({"correction_max_advice": 0}, "correction_max_advice"),
        ({"judge_labels": "human"}, "judge_labels"),
        ({"judge_template": "/no/such/critic.txt"}, "judge_template"),
        ({"suggestion_template": "/no/such/suggestion.txt"}, "suggestion_template"),
        ({"judge_model": "m"}, "judge_base_url"),
        ({"judge_base_url": "http://127.0.0.1:1/v1"}, "judge_model"),
        ({"judge_labels": "external"}, "judge_labels=external"),
        ({"correction_source": "external"}, "correction_source=external"),
    ],
)
def test_bad_values_name_the_key(kwargs, key):
    with pytest.raises(ConfigError, match=key):
        GCDArguments(**kwargs)


def test_every_field_has_help():
    for f in dataclasses.fields(GCDArguments):
        assert f.metadata.get("help"), f.name


def test_api_key_env_must_be_a_name_and_the_value_is_never_echoed():
    with pytest.raises(ConfigError) as err:
        GCDArguments(judge_api_key_env="sk-live-abcdef123456")
    assert "judge_api_key_env" in str(err.value) and "abcdef123456" not in str(err.value)
    assert GCDArguments(judge_api_key_env="DEEPSEEK_API_KEY").judge_api_key_env == "DEEPSEEK_API_KEY"


def test_gcd_true_constructs():
    assert GCDArguments(gcd=True).gcd


def _configs():
    return sorted(GCD_CONFIGS.glob("*.yaml"))


def test_the_ablation_set_is_complete():
    names = {p.stem for p in _configs()}
    for env in ("alfworld", "scienceworld"):
        for est in ("grpo", "gigpo", "rlvmr"):
            for size in ("qwen2.5-1.5b", "qwen2.5-7b"):
                for arm in ("cotrain", "gcd", "judgesft"):
                    assert f"{env}_{est}_{size}_{arm}" in names
    assert {"tiny_alfworld_grpo_gcd", "tiny_alfworld_grpo_cotrain", "tiny_scienceworld_grpo_gcd"} <= names


def test_ablations_differ_from_their_baseline_by_gcd_keys_only():
    """Catches drift: after editing configs/rl/, rerun `python configs/gcd/generate.py`."""
    gcd_keys = {f.name for f in dataclasses.fields(GCDArguments)}
    for path in _configs():
        arm = path.stem.rsplit("_", 1)[1]
        base = yaml.safe_load((REPO / "configs" / "rl" / f"{path.stem.rsplit('_', 1)[0]}.yaml").read_text())
        data = yaml.safe_load(path.read_text())
        differs = {k for k in set(base) | set(data) if base.get(k) != data.get(k)} - gcd_keys
        allowed = {"output_dir", "model_name_or_path"} if arm == "judgesft" else {"output_dir"}
        assert differs == allowed & differs and "output_dir" in differs, (
            f"{path.name} differs from its configs/rl baseline in {sorted(differs)}: rerun configs/gcd/generate.py"
        )
        assert data["gcd"] == (arm != "judgesft")
        if arm in ("gcd", "cotrain"):
            assert data["correction"] == (arm == "gcd")


def test_every_gcd_config_passes_config_check(tmp_path, monkeypatch, capsys):
    from gcd_trl.commands.config import run_check

    monkeypatch.setenv("ALFWORLD_DATA", str(tmp_path))
    model = tmp_path / "model"  # config check, like rl, needs the model (offline: a saved folder)
    model.mkdir()
    (model / "config.json").write_text("{}")
    files = _configs()
    assert len(files) >= 36 + 3
    for path in files:
        code = run_check(
            argparse.Namespace(file=str(path), all=False, overrides=["--model_name_or_path", str(model)])
        )
        out, err = capsys.readouterr()
        assert code == 0, f"{path.name}: {err}"
        resolved = yaml.safe_load(out)
        assert resolved["gcd"]["gcd"] == (not path.stem.endswith("_judgesft"))


def test_generated_files_are_current(tmp_path):
    """The generator reproduces the shipped files byte for byte (run in a copy of the tree)."""
    import shutil

    # the generator writes next to itself: run it on a copy so the test never edits the repo
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    proc = subprocess.run(
        [sys.executable, "configs/gcd/generate.py"], capture_output=True, text=True, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    for path in _configs():
        assert (tmp_path / "configs" / "gcd" / path.name).read_text() == path.read_text(), (
            f"{path.name} is stale: run `python configs/gcd/generate.py`"
        )
