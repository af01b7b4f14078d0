"""Careless and hostile input, one class per test (table-driven where the cases share a shape): each fails
with an error that names the problem, before expensive work, and leaves nothing half-written."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import run_cli

REPO = Path(__file__).resolve().parents[1]


# ---- gcd-trl advantages ----------------------------------------------------------------------------------
def _steps(tmp_path: Path, rows: list[dict] | str, name: str = "steps.jsonl") -> str:
    path = tmp_path / name
    path.write_text(rows if isinstance(rows, str) else "".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _pair(reward_a: float = 1.0, reward_b: float = 0.0, step_b: int = 0) -> list[dict]:
    return [
        {"group": 0, "traj": 0, "step": 0, "episode_reward": reward_a, "valid": True, "anchor": "a"},
        {"group": 0, "traj": 1, "step": step_b, "episode_reward": reward_b, "valid": True, "anchor": "a"},
    ]


@pytest.mark.parametrize(
    ("rows", "flags", "message"),
    [
        (_pair(1e308, -1e308), [], "episode_reward 1e+308 is too large to normalise"),
        (_pair(1e308, 1e308), [], "too large to normalise"),
        (_pair(), ["--omega", "nan"], "argument --omega: must be a finite number, got 'nan'"),
        (_pair(), ["--invalid_penalty", "nan"], "argument --invalid_penalty: must be a finite number"),
        (_pair(), ["--invalid-penalty", "inf"], "must be a finite number, got 'inf'"),  # the old spelling
        (_pair(), ["--gamma=-inf"], "argument --gamma: must be a finite number"),
        (_pair(), ["--success_reward", "1e999"], "argument --success_reward: must be a finite number"),
        (_pair(step_b=2**63), [], "step 9223372036854775808 is out of range"),  # beyond int64
        (_pair(step_b=2**62), [], "step 4611686018427387904 is out of range"),  # GiGPO's sort key overflows
        (_pair(step_b=-1), [], "step -1 is out of range"),
        (
            '{"group": 0, "traj": 0, "step": 0, "episode_reward": NaN, "valid": true, "anchor": "a"}\n',
            [],
            "not a finite",
        ),
    ],
)
def test_advantages_rejects_non_finite_and_out_of_range(tmp_path, capsys, rows, flags, message):
    out = tmp_path / "adv.jsonl"
    code, stdout, err = run_cli(
        "advantages", "--advantage_estimator", "gigpo", "--input", _steps(tmp_path, rows), "--output", str(out),
        *flags, capsys=capsys,
    )  # fmt: skip
    assert code == 2 and message in err, err
    assert not out.exists() and "NaN" not in stdout  # nothing written, no invalid JSON anywhere


def test_advantages_output_paths(tmp_path, capsys):
    src = _steps(tmp_path, _pair())
    code, _, err = run_cli(
        "advantages",
        "--advantage_estimator",
        "grpo",
        "--input",
        src,
        "--output",
        str(tmp_path),
        capsys=capsys,
    )
    assert code == 2 and f"--output {tmp_path}: is a directory; give a file path" in err
    code, _, err = run_cli(
        "advantages", "--advantage_estimator", "grpo", "--input", str(tmp_path), capsys=capsys
    )
    assert code == 2 and "is a directory" in err
    # a missing folder is created; the file is written whole (atomically), valid JSON
    out = tmp_path / "new" / "folder" / "adv.jsonl"
    code, _, err = run_cli(
        "advantages", "--estimator", "grpo", "--input", src, "--output", str(out), capsys=capsys
    )
    assert code == 0, err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [round(r["advantage"], 6) for r in rows] == [0.707106, -0.707106]
    assert not [p for p in out.parent.iterdir() if p.name != "adv.jsonl"]  # no temporary file left
    code, _, err = run_cli("advantages", "--input", src, capsys=capsys)
    assert code == 2 and "--advantage_estimator is required" in err


# ---- games folders: env generate-alfworld and rl's generate_games ------------------------------------
@pytest.fixture(scope="module")
def one_game(tmp_path_factory):
    """A folder with one generated game (seed 3, task type 2)."""
    from gcd_trl.envs.alfworld_gen import generate_games

    root = tmp_path_factory.mktemp("one_game")
    generate_games(root, 1, seed=3, task_types=(2,))
    return root


def test_generate_refuses_a_folder_with_other_games(one_game, tmp_path, capsys):
    games = tmp_path / "games"
    shutil.copytree(one_game, games)
    before = sorted(p.relative_to(games) for p in games.rglob("*"))
    # the same games: used as they are, nothing written
    code, out, err = run_cli(
        "env", "generate-alfworld", "--data_dir", str(games), "--generate_games", "1", "--generate_seed", "3",
        "--task_types", "2", capsys=capsys,
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["generated"] == 0 and "already there, nothing written" in err
    # other games (another seed): refused, naming what is there, nothing written
    code, out, err = run_cli(
        "env", "generate-alfworld", "--data_dir", str(games), "--generate_games", "1", "--generate_seed", "4",
        "--task_types", "2", capsys=capsys,
    )  # fmt: skip
    assert code == 2
    assert f"{games} already holds 1 games (1 generated with seed 3)" in err and "--add" in err
    assert sorted(p.relative_to(games) for p in games.rglob("*")) == before
    # --add: added on purpose; the summary says how many the folder holds now
    code, out, err = run_cli(
        "env", "generate-alfworld", "--data_dir", str(games), "--generate_games", "1", "--generate_seed", "4",
        "--task_types", "2", "--add", capsys=capsys,
    )  # fmt: skip
    assert code == 0, err
    summary = json.loads(out)
    assert summary["generated"] == 1 and summary["total_games"] == 2


def test_rl_generate_games_refuses_a_folder_with_other_games(one_game, tmp_path):
    from gcd_trl.config import ConfigError as InputError
    from gcd_trl.rollout.settings import EnvArguments, build_tasks

    games = tmp_path / "games"
    shutil.copytree(one_game, games)
    env = EnvArguments(
        environment="alfworld", data_dir=str(games), split="all", generate_games=3, generate_seed=0
    )
    with pytest.raises(InputError) as err:
        build_tasks(env)
    text = str(err.value)
    assert f"data_dir: {games} already holds 1 games (1 generated with seed 3)" in text
    assert "set generate_games: 0" in text
    # the same games are found and used, not regenerated
    same = EnvArguments(
        environment="alfworld",
        data_dir=str(games),
        split="all",
        generate_games=1,
        generate_seed=3,
        task_types=[2],
    )
    assert len(build_tasks(same)) == 1


# ---- YAML values as TrlParser reads them ------------------------------------------------------------
def test_yaml_float_written_without_a_dot_is_accepted_as_trl_accepts_it(tmp_path):
    from gcd_trl.config import ConfigError
    from gcd_trl.trainers.grpo_config import parse_rl_config

    base = "model_name_or_path: some/model\nuse_cpu: true\nbf16: false\nreport_to: none\n"
    path = tmp_path / "run.yaml"
    path.write_text(base + "learning_rate: 1e-4\nomega: 5e-1\n")  # PyYAML reads both as strings
    train, *_ = parse_rl_config(["--config", str(path)])
    assert train.learning_rate == pytest.approx(1e-4) and train.omega == pytest.approx(0.5)
    path.write_text(base + "learning_rate: fast\n")
    with pytest.raises(ConfigError, match="key 'learning_rate' \\(AgentGRPOConfig\\) expects float, got str"):
        parse_rl_config(["--config", str(path)])


# ---- env replay: settings and game files checked before any env starts -------------------------------
def _corrupt(game_root: Path, problem: str) -> None:
    (game_file,) = game_root.rglob("game.tw-pddl")
    game = json.loads(game_file.read_text())
    game["pddl_problem"] = problem
    game_file.write_text(json.dumps(game))


def test_replay_names_unplayable_games_and_fails_when_nothing_ran(one_game, tmp_path, capsys):
    bad = tmp_path / "mixed" / "bad"
    shutil.copytree(one_game, bad)
    _corrupt(bad, "(define (problem p) (:domain alfred) (:objects) (:init) (:goal (nosuch x)))")
    code, _, err = run_cli("env", "replay", "--environment", "alfworld", "--games", str(bad), capsys=capsys)
    assert code == 2
    assert "none of the 1 games can be played" in err and "Undeclared predicate: nosuch" in err
    # one good game beside it: the good one is played, the bad one listed by id
    shutil.copytree(one_game, tmp_path / "mixed" / "good")
    proc = subprocess.run(
        [sys.executable, "-m", "gcd_trl", "env", "replay", "--environment", "alfworld", "--games", str(tmp_path / "mixed")],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout)
    assert summary["episodes"] == 1 and summary["success"] == 1.0 and summary["episodes_skipped"] == 1
    ((failed),) = summary["failed"]
    assert (
        failed["task"].startswith("bad/look_at_obj_in_light") and "the PDDL does not parse" in failed["fault"]
    )
    assert "replay: 100%" in proc.stderr and "success=1/1" in proc.stderr  # the progress bar


def test_replay_bad_jvm_heap_fails_before_any_jvm_starts(capsys):
    code, _, err = run_cli(
        "env", "replay", "--environment", "scienceworld", "--split", "L0", "--jvm-heap", "abc", capsys=capsys
    )
    assert code == 2 and "--jvm_heap 'abc' must look like 512m or 2g" in err


# ---- tiny-model, config check ---------------------------------------------------------------------------
def test_tiny_model_refuses_a_non_empty_folder(tmp_path, capsys):
    out = tmp_path / "model"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    code, _, err = run_cli("tiny-model", "--output_dir", str(out), capsys=capsys)
    assert code == 2 and f"--output_dir {out} is not empty (notes.txt)" in err and "--overwrite" in err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    code, _, err = run_cli(
        "tiny-model",
        "--out",
        str(out),
        "--overwrite",
        "--hidden_size",
        "64",
        "--num_hidden_layers",
        "1",
        capsys=capsys,
    )
    assert code == 0, err
    assert (out / "model.safetensors").is_file() and (out / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "config file not found"), ("a: [1\n", "not valid YAML"), ("- 1\n- 2\n", "must hold a mapping")],
)
def test_config_check_reads_the_file_before_importing_torch(tmp_path, content, message):
    path = tmp_path / "run.yaml"
    if content is not None:
        path.write_text(content)
    code = (
        "import sys\nfrom gcd_trl.cli import main\ntry:\n    main(['config', 'check', sys.argv[1]])\n"
        "except SystemExit as e:\n    print('exit', e.code, 'torch' in sys.modules)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(path)], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.stdout.strip() == "exit 2 False", proc.stdout + proc.stderr
    assert message in proc.stderr


# ---- before the model loads: report_to packages, the launcher's config name ----------------------------
def test_report_to_package_missing_is_named_before_the_model_loads(tmp_path, capsys):
    import importlib.util

    if importlib.util.find_spec("trackio") is not None:
        pytest.skip("trackio is installed here")
    path = tmp_path / "run.yaml"
    path.write_text("model_name_or_path: /no/such/model\nuse_cpu: true\nbf16: false\nreport_to: [trackio]\n")
    code, _, err = run_cli("rl", "--config", str(path), capsys=capsys)
    assert code == 2
    assert "report_to=trackio: the 'trackio' package is not installed (pip install 'gcd-trl[trackio]')" in err


def test_rl_runs_without_a_config_file_when_the_values_are_given(capsys):
    code, _, err = run_cli(
        "rl", "--model_name_or_path", "/no/such/model", "--use_cpu", "true", "--bf16", "false", capsys=capsys
    )
    assert code == 2 and "model_name_or_path /no/such/model: no such directory" in err  # got past the parse


def test_unknown_accelerate_config_is_named(capsys):
    code, _, err = run_cli("rl", "--accelerate_config", "zero9", "--model_name_or_path", "x", capsys=capsys)
    assert code == 2 and "--accelerate_config zero9: neither a file nor a known config name" in err
    code, _, err = run_cli("rl", "--num_processes", "0", capsys=capsys)
    assert code == 2 and "--num_processes must be >= 1" in err
    code, _, err = run_cli("rl", "--config", "/no/such.yaml", "--accelerate_config", "cpu", capsys=capsys)
    assert code == 2 and "config file not found: /no/such.yaml" in err  # before any process is launched


# ---- the loaded-model warning about tied weights ----------------------------------------------------------
def test_resume_does_not_warn_about_the_tied_lm_head(tiny_model_dir):
    from types import SimpleNamespace

    from transformers import AutoModelForCausalLM

    from gcd_trl.trainers.grpo import AgentGRPOTrainer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    state = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}  # as a checkpoint holds it
    trainer = object.__new__(AgentGRPOTrainer)  # only what the hook reads
    trainer.model = model
    trainer.accelerator = SimpleNamespace(unwrap_model=lambda m: m)
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    logger = logging.getLogger("transformers.trainer")
    logger.addHandler(handler)
    try:
        trainer._issue_warnings_after_load(model.load_state_dict(state, strict=False))
        assert not records  # the tied lm_head is not "missing"
        del state["model.norm.weight"]
        trainer._issue_warnings_after_load(model.load_state_dict(state, strict=False))
    finally:
        logger.removeHandler(handler)
    assert len(records) == 1 and "model.norm.weight" in records[0] and "lm_head" not in records[0]
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


def test_tests_leave_the_environment_alone():
    assert "ACCELERATE_USE_CPU" not in os.environ
