"""More careless input (issue 21), each refused with one line naming the problem, exit 2, before the
expensive part (an engine, a model, launched processes) and with nothing written."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from gcd_trl.rollout.episode import StepRecord
from helpers import run_cli

REPO = Path(__file__).resolve().parents[1]


def _write_lines(path: Path, lines: list[str]) -> str:
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


def _step(traj: int, step: int, **fields) -> dict:
    record = StepRecord(
        group=0, traj=traj, step=step, anchor="a", prompt="p", completion="c", action="go", valid=True,
        reason=None, tag=None, env_reward=0.0, done=False, won=False,
    ).to_dict()  # fmt: skip
    record.update(fields)
    return record


# ---- gcd-trl advantages: the schema's types, NaN, eval episode files --------------------------------------
def test_advantages_checks_the_type_of_a_field_the_estimator_does_not_read(tmp_path, capsys):
    src = _write_lines(
        tmp_path / "steps.jsonl",
        [json.dumps(_step(0, 0, env_reward="nan", won=True)), json.dumps(_step(1, 0))],
    )
    out = tmp_path / "adv.jsonl"
    code, _, err = run_cli(
        "advantages", "--advantage_estimator", "grpo", "--input", src, "--output", str(out), capsys=capsys
    )
    assert code == 2 and f"{src}:1: field 'env_reward' has the wrong type ('nan')" in err, err
    assert not out.exists()


def test_advantages_names_the_line_and_field_of_a_nan(tmp_path, capsys):
    good = json.dumps(_step(0, 0, won=True))
    src = _write_lines(
        tmp_path / "steps.jsonl",
        [good, json.dumps(_step(1, 0)).replace('"env_reward": 0.0', '"env_reward": NaN')],
    )
    out = tmp_path / "adv.jsonl"
    code, stdout, err = run_cli(
        "advantages", "--advantage_estimator", "grpo", "--input", src, "--output", str(out), capsys=capsys
    )
    assert code == 2 and f"{src}:2: env_reward is nan, not a finite number" in err, err
    assert not out.exists() and stdout == ""


def test_advantages_reads_an_eval_episode_file_as_its_steps(tmp_path, capsys):
    """An eval episodes.jsonl line holds an episode; each is a trajectory of its task's group, scored as the
    same steps written one a line."""
    won = [_step(0, 0), _step(0, 1, won=True, done=True, env_reward=1.0)]
    lost = [_step(0, 0, done=True)]  # eval's own group/traj: positions in a batch, the same for both
    episodes = [
        {"task": "t1", "sample": 0, "won": True, "steps": 2, "trajectory": won},
        {"task": "t1", "sample": 1, "won": False, "steps": 1, "trajectory": lost},
    ]
    src = _write_lines(tmp_path / "episodes.jsonl", [json.dumps(e) for e in episodes])
    code, stdout, err = run_cli("advantages", "--advantage_estimator", "gigpo", "--input", src, capsys=capsys)
    assert code == 0, err
    scored = [json.loads(line) for line in stdout.splitlines()]
    steps = [dict(s, group="t1", traj=1, task="t1") for s in won] + [
        dict(lost[0], group="t1", traj=2, task="t1")
    ]
    flat = _write_lines(tmp_path / "steps.jsonl", [json.dumps(s) for s in steps])
    code, stdout, err = run_cli(
        "advantages", "--advantage_estimator", "gigpo", "--input", flat, capsys=capsys
    )
    assert code == 0, err
    assert scored == [json.loads(line) for line in stdout.splitlines()]
    assert (
        scored[0]["episode_advantage"] > 0 > scored[2]["episode_advantage"]
    )  # the won episode scores higher


# ---- TrlParser-backed commands: unknown flags, trl sft's keys ---------------------------------------------
def test_unknown_flag_is_named_with_the_closest_field(capsys):
    code, _, err = run_cli(
        "rl", "--lerning_rate", "1e-4", "--model_name_or_path", "/no/such/model", capsys=capsys
    )
    assert code == 2 and "unknown option --lerning_rate (did you mean --learning_rate?)" in err, err
    assert "not used by the HfArgumentParser" not in err


def test_sft_dataset_name_says_to_use_datasets(tmp_path, capsys):
    code, _, err = run_cli(
        "sft", "--dataset_name", "trl-lib/Capybara", "--model_name_or_path", "m", capsys=capsys
    )
    assert code == 2 and "unknown option --dataset_name: the data comes from `datasets:`" in err, err
    path = tmp_path / "sft.yaml"
    path.write_text("model_name_or_path: m\ndataset_name: trl-lib/Capybara\n")
    code, _, err = run_cli("sft", "--config", str(path), capsys=capsys)
    assert code == 2 and "unknown key 'dataset_name': the data comes from `datasets:`" in err, err


# ---- gcd-trl config check makes rl's checks -------------------------------------------------------------
def _run_config(tmp_path: Path, **keys: str) -> Path:
    base = (REPO / "configs" / "rl" / "tiny_alfworld_grpo.yaml").read_text()
    lines = [line for line in base.splitlines() if line.split(":")[0] not in keys]
    lines += [f"{key}: {value}" for key, value in keys.items()]
    path = tmp_path / "run.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"model_name_or_path": "/no/such/model"}, "model_name_or_path /no/such/model: no such directory"),
        ({"report_to": "wandb"}, "report_to=wandb: the 'wandb' package is not installed"),
        ({"resume_from_checkpoint": "/no/such/checkpoint-5"}, "resume_from_checkpoint: "),
    ],
)
def test_config_check_makes_the_checks_rl_makes(tmp_path, capsys, keys, message):
    if "report_to" in keys and importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    model = tmp_path / "model"  # what the model check reads: a folder with a config.json
    model.mkdir()
    (model / "config.json").write_text("{}")
    out = tmp_path / "run_out"
    keys = {
        "model_name_or_path": str(model),
        "output_dir": str(out),
        "data_dir": str(tmp_path / "games"),
    } | keys
    path = _run_config(tmp_path, **keys)
    code, stdout, err = run_cli("config", "check", str(path), capsys=capsys)
    assert code == 2 and message in err, err
    assert "OK" not in stdout and not out.exists() and not (tmp_path / "games").exists()


# ---- the launcher ------------------------------------------------------------------------------------------
def test_a_relaunch_checks_once_before_starting_processes(tmp_path, capsys):
    code, _, err = run_cli(
        "rl",
        "--accelerate_config",
        "cpu",
        "--num_processes",
        "2",
        "--model_name_or_path",
        str(tmp_path / "model"),
        "--lerning_rate",
        "1e-4",
        capsys=capsys,
    )
    assert (
        code == 2
        and err.strip() == "gcd-trl rl: unknown option --lerning_rate (did you mean --learning_rate?)"
    )
    path = _run_config(tmp_path, model_name_or_path="/no/such/model", output_dir=str(tmp_path / "out"))
    code, _, err = run_cli(
        "rl", "--config", str(path), "--accelerate_config", "cpu", "--num_processes", "2", capsys=capsys
    )
    assert code == 2 and "model_name_or_path /no/such/model: no such directory" in err, err
    assert "accelerate launch" not in err and "ChildFailedError" not in err


# ---- gcd-trl data ---------------------------------------------------------------------------------------
def test_agent_sft_names_a_missing_games_folder_before_importing_an_engine(tmp_path):
    code = (
        "import sys\nfrom gcd_trl.cli import main\ntry:\n    main(sys.argv[1:])\n"
        "except SystemExit as e:\n"
        "    heavy = [m for m in ('torch', 'trl', 'transformers', 'textworld', 'alfworld') if m in sys.modules]\n"
        "    print('exit', e.code, heavy)\n"
    )
    out = tmp_path / "data"
    args = ["data", "agent-sft", "--games", str(tmp_path / "nonexistent"), "--output_dir", str(out)]
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert proc.stdout.strip() == "exit 2 []", proc.stdout + proc.stderr
    assert f"--games {tmp_path / 'nonexistent'}: no such directory" in proc.stderr
    assert not out.exists()
