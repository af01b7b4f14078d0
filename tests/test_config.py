"""Run configs: TrlParser YAML into our dataclasses, with errors that name the key before any loading."""

import subprocess
import sys
from pathlib import Path

import pytest

from gcd_trl.config import ConfigError
from gcd_trl.gcd.args import GCDArguments
from gcd_trl.rollout.settings import EnvArguments
from gcd_trl.trainers.grpo_config import AgentGRPOConfig, parse_rl_config

REPO = Path(__file__).resolve().parents[1]
BASE = "model_name_or_path: some/model\nuse_cpu: true\nbf16: false\nreport_to: none\n"


def write(tmp_path, text):
    path = tmp_path / "run.yaml"
    path.write_text(BASE + text)
    return str(path)


def parse(tmp_path, text, *overrides):
    return parse_rl_config(["--config", write(tmp_path, text), *overrides])


def test_yaml_values_reach_every_dataclass(tmp_path):
    train, env, gcd, model = parse(
        tmp_path,
        "environment: scienceworld\nsplit: L2\nadvantage_estimator: gigpo\ngamma: 0.9\n"
        "tasks_per_round: 4\nnum_generations: 4\nlearning_rate: 1.0e-6\njudge_timeout: 5\n",
    )
    assert (
        isinstance(train, AgentGRPOConfig) and isinstance(env, EnvArguments) and isinstance(gcd, GCDArguments)
    )
    assert (train.advantage_estimator, train.gamma, train.learning_rate) == ("gigpo", 0.9, 1e-6)
    assert (env.environment, env.split, gcd.judge_timeout) == ("scienceworld", "L2", 5.0)
    assert model.model_name_or_path == "some/model"
    # TRL's batch fields are derived from the round geometry
    assert train.per_device_train_batch_size == 16 and train.steps_per_generation == 1  # 4 tasks x G=4
    assert train.tasks_per_process == 4


def test_command_line_overrides_the_file(tmp_path):
    train, env, _, _ = parse(tmp_path, "gamma: 0.9\n", "--gamma", "0.5", "--max_episode_steps", "7")
    assert train.gamma == 0.5 and env.max_episode_steps == 7


def test_meta_reasoning_defaults_on_for_rlvmr_only(tmp_path):
    assert parse(tmp_path, "advantage_estimator: rlvmr\n")[1].meta_reasoning is True
    assert parse(tmp_path, "advantage_estimator: gigpo\n")[1].meta_reasoning is False


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "advantage_estimaor: gigpo\n",
            "unknown key 'advantage_estimaor' (did you mean 'advantage_estimator'?)",
        ),
        ("gamma: [1, 2]\n", "key 'gamma' (AgentGRPOConfig) expects float, got list"),
        ("max_episode_steps: 3.5\n", "key 'max_episode_steps' (EnvArguments) expects int"),
        ("use_vllm: 'yes'\n", "key 'use_vllm'"),
        ("task_types: [1, x]\n", "key 'task_types'"),
        ("advantage_estimator: ppo\n", "advantage_estimator='ppo' is not one of"),
        ("environment: minecraft\n", "environment='minecraft' is not one of"),
        ("gamma: 1.5\n", "gamma=1.5 must lie in [0, 1]"),
        ("num_generations: 1\n", "num_generations=1"),
        ("gradient_accumulation_steps: 4\n", "gradient_accumulation_steps=4"),
        ("steps_per_generation: 2\n", "derived from tasks_per_round"),
        ("max_completion_length: 512\nmax_tokens_per_microbatch: 256\n", "max_tokens_per_microbatch=256"),
        ("advantage_estimator: rlvmr\nmeta_reasoning: false\n", "needs meta_reasoning=true"),
        ("task_types: [7]\n", "task_types contains 7"),
        ("environment: scienceworld\ntask_types: [1]\n", "task_types applies to environment=alfworld"),
        ("similarity_threshold: 0.9\n", "similarity_threshold applies to advantage_estimator=gigpo"),
        ("num_envs: 2\nnum_generations: 4\n", "num_envs=2 cannot hold one group"),
        ("jvm_heap: lots\n", "jvm_heap='lots'"),
        ("generate_games: 4\n", "generate_games needs data_dir"),
        ("prompt_template: missing/template.txt\n", "prompt_template file not found: missing/template.txt"),
        ("judge_labels: vibes\n", "judge_labels='vibes'"),
        ("inadmissible_action: skip\n", "inadmissible_action='skip' is not one of"),
        ("invalid_feedback: loud\n", "invalid_feedback='loud' is not one of"),
        ("history_length: -2\n", "history_length=-2 must be >= -1"),
        ("reasoning_history: -1\n", "reasoning_history=-1 must be >= 0"),
        ("gigpo_step_reward: score\n", "gigpo_step_reward='score' is not one of"),
        ("success_reward: 0\n", "success_reward=0 must be > 0"),
    ],
)
def test_bad_config_names_the_key(tmp_path, text, message):
    with pytest.raises(ConfigError) as err:
        parse(tmp_path, text)
    assert message in str(err.value)


def test_missing_file_and_non_mapping(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        parse_rl_config(["--config", str(tmp_path / "nope.yaml")])
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        parse_rl_config(["--config", str(path)])


def test_missing_alfworld_data_dir_is_named(tmp_path, monkeypatch):
    monkeypatch.delenv("ALFWORLD_DATA", raising=False)
    env = parse(tmp_path, "environment: alfworld\n")[1]
    with pytest.raises(ConfigError, match=r"\$ALFWORLD_DATA"):
        env.resolved_data_dir()
    monkeypatch.setenv("ALFWORLD_DATA", str(tmp_path))
    assert env.resolved_data_dir() == tmp_path / "json_2.1.1"


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "gcd_trl", "config", "check", *args], capture_output=True, text=True, cwd=REPO
    )


def test_every_shipped_config_passes_config_check(tmp_path, monkeypatch, capsys):
    import argparse

    from gcd_trl.commands.config import run_check

    monkeypatch.setenv("ALFWORLD_DATA", str(tmp_path))
    model = tmp_path / "model"  # config check, like rl, needs the model to exist (offline: a saved folder)
    model.mkdir()
    (model / "config.json").write_text("{}")
    files = sorted((REPO / "configs" / "rl").glob("*.yaml"))
    assert len(files) >= 12 + 4
    for path in files:
        overrides = ["--model_name_or_path", str(model)]
        code = run_check(argparse.Namespace(file=str(path), all=False, overrides=overrides))
        out, err = capsys.readouterr()
        assert code == 0, f"{path.name}: {err}"
        assert out.startswith(f"# {path}: OK")
        assert "advantage_estimator:" in out and "environment:" in out
        assert "\nfidelity:\n" in out and "success_reward:" in out and "invalid_rule:" in out
        assert "mini_batches:" in out and "differs_from_reference:" in out


def test_config_check_cli_reports_errors_and_resolved_values(tmp_path):
    bad = run_cli(write(tmp_path, "omega: -1\n"))
    assert bad.returncode == 2 and "config error: omega=-1 must be >= 0.0" in bad.stderr
    model = tmp_path / "model"  # offline (HF_HUB_OFFLINE=1), the model must be a saved folder
    model.mkdir()
    (model / "config.json").write_text("{}")
    good = run_cli(
        write(tmp_path, "tasks_per_round: 3\n"), "--gamma", "0.8", "--model_name_or_path", str(model)
    )
    assert good.returncode == 0, good.stderr
    assert "tasks_per_round: 3" in good.stdout and "gamma: 0.8" in good.stdout
    assert "hub_token" not in good.stdout
