"""`gcd-trl rl` inputs that used to fail late or not at all: no config, an output_dir that cannot be written,
sizes that would start millions of env workers. Each fails with exit 2 and a message naming the problem,
before the model loads, and writes nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gcd_trl.config import ConfigError

REPO = Path(__file__).resolve().parents[1]
# past the parse on a CPU machine, stopping at the model path unless an earlier check fires
CPU = ("--use_cpu", "true", "--bf16", "false")


def run_cli(*args: str, capsys) -> tuple[int, str, str]:
    from gcd_trl.cli import main

    with pytest.raises(SystemExit) as exc:
        main(list(args))
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def run_rl_before_trl(*args: str) -> tuple[str, str]:
    """`gcd-trl rl ARGS` in a fresh interpreter: ("exit CODE trl-imported?", stderr)."""
    code = (
        "import sys\nfrom gcd_trl.cli import main\ntry:\n    main(['rl', *sys.argv[1:]])\n"
        "except SystemExit as e:\n    print('exit', e.code, 'trl' in sys.modules)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    return proc.stdout.strip(), proc.stderr


def test_rl_without_a_config_or_model_says_so_before_importing_trl(tmp_path):
    status, err = run_rl_before_trl()
    assert status == "exit 2 False", status + err
    assert "no run config and no model: give --config FILE" in err and "--model_name_or_path" in err
    config = tmp_path / "run.yaml"
    config.write_text("learning_rate: 1.0e-6\n")
    status, err = run_rl_before_trl("--config", str(config))
    assert status == "exit 2 False", status + err
    assert f"{config}: model_name_or_path is not set" in err
    status, err = run_rl_before_trl("--config", str(tmp_path / "missing.yaml"))
    assert status == "exit 2 False" and "config file not found" in err


def test_output_dir_under_a_file_is_refused_before_the_model_loads(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    code, _, err = run_cli(
        "rl",
        "--model_name_or_path",
        "/no/such/model",
        *CPU,
        "--output_dir",
        str(blocker / "run"),
        capsys=capsys,
    )
    assert code == 2 and f"output_dir {blocker / 'run'}: {blocker} is a file, not a folder" in err, err
    assert blocker.read_text() == "not a folder"


@pytest.mark.skipif(
    os.geteuid() == 0,
    reason="running as root: mode 0555 does not stop root writing, and mounting a read-only file system "
    "needs privileges a test should not take (the under-a-file test covers the check's path here)",
)
def test_read_only_output_dir_is_refused_before_the_model_loads(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        for out in (locked, locked / "new_run"):  # the folder itself, and a folder it would be created in
            code, _, err = run_cli(
                "rl", "--model_name_or_path", "/no/such/model", *CPU, "--output_dir", str(out), capsys=capsys
            )
            assert code == 2 and f"output_dir {out}: cannot write there" in err, err
            assert not list(locked.iterdir())  # the probe left nothing behind
    finally:
        locked.chmod(0o755)


def test_writable_output_dir_passes_and_the_probe_leaves_nothing(tmp_path):
    from gcd_trl.config import check_writable_dir

    check_writable_dir("output_dir", tmp_path)
    check_writable_dir("output_dir", tmp_path / "not" / "yet")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("key", "value", "limit", "why"),
    [
        ("num_envs", 100_000_000, 256, "each env worker is a process"),
        ("max_episode_steps", 100_000_000, 1000, "every step is a training sample"),
    ],
)
def test_env_sizes_are_bounded_with_the_reason(key, value, limit, why):
    from gcd_trl.rollout.settings import EnvArguments

    with pytest.raises(ConfigError) as err:
        EnvArguments(**{key: value})
    assert f"{key}={value} must be <= {limit}: " in str(err.value) and why in str(err.value)
    EnvArguments(**{key: limit})  # the limit itself is fine


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--tasks_per_round", "100000000"), "tasks_per_round=100000000 must be <= 100000: a round keeps"),
        (("--num_envs", "100000000"), "num_envs=100000000 must be <= 256: each env worker is a process"),
        (("--max_episode_steps", "100000000"), "max_episode_steps=100000000 must be <= 1000"),
        (  # the derived default: 64 tasks x G 8 = 512 workers
            ("--tasks_per_round", "64", "--num_generations", "8"),
            "num_envs defaults to tasks per round per process x num_generations = 512 env worker processes",
        ),
    ],
)
def test_rl_sizes_are_bounded_before_the_model_loads(tmp_path, capsys, flags, message):
    out = tmp_path / "run"
    code, _, err = run_cli(
        "rl", "--model_name_or_path", "/no/such/model", *CPU, "--output_dir", str(out), *flags, capsys=capsys
    )
    assert code == 2 and message in err, err
    assert not out.exists()
