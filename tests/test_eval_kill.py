"""An evaluation killed mid-run (SIGINT, SIGKILL) and rerun: finished episodes are kept and not played
again, the final report equals an uninterrupted run's, and no env worker outlives the kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from gcd_trl.eval import RandomPolicy, evaluate
from gcd_trl.eval.runner import EPISODES_FILE
from gcd_trl.rollout.settings import EnvArguments

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")
SAMPLES, STEPS = 2, 20  # long enough that the kill always lands mid-run, even on a loaded machine


@pytest.fixture(scope="module")
def games_dir(tmp_path_factory):
    from gcd_trl.envs.alfworld_gen import generate_games

    out = tmp_path_factory.mktemp("games")
    generate_games(out, 6, seed=5)
    return out


@pytest.fixture(scope="module")
def reference(games_dir, tmp_path_factory):
    """The report of an uninterrupted run (in this process, same settings)."""
    from gcd_trl.envs.splits import split_tasks

    out = tmp_path_factory.mktemp("reference")
    args = EnvArguments(
        environment="alfworld", split="all", part="test", data_dir=str(games_dir), max_episode_steps=STEPS
    )
    tasks = split_tasks("alfworld", "all", "test", games_dir)
    evaluate(RandomPolicy(seed=0), tasks, args, out, num_samples=SAMPLES, num_envs=2, progress=False)
    return json.loads((out / "report.json").read_text())


def _command(games_dir, out_dir, tmp_path) -> list[str]:
    cfg = tmp_path / "eval.yaml"
    cfg.write_text(
        f"policy: random\nenvironment: alfworld\nsplit: all\ndata_dir: {games_dir}\noutput_dir: {out_dir}\n"
        f"num_samples: {SAMPLES}\nmax_episode_steps: {STEPS}\nnum_envs: 2\nprogress: false\n"
    )
    return [sys.executable, "-m", "gcd_trl", "eval", "--config", str(cfg)]


def _lines(path) -> list[str]:
    return path.read_text().splitlines(keepends=True) if path.exists() else []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["sigint", "sigkill"])
def test_killed_eval_resumes_to_the_uninterrupted_report(sig, games_dir, reference, tmp_path):
    out = tmp_path / "eval"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    # a shell starts background jobs with SIGINT ignored, and Python keeps an ignored SIGINT ignored:
    # give the eval the default disposition, as a terminal's Ctrl-C would find it
    proc = subprocess.Popen(
        _command(games_dir, out, tmp_path),
        env=env,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    episodes = out / EPISODES_FILE
    deadline = time.monotonic() + 300
    workers: set[int] = set()
    while len(_lines(episodes)) < 1:  # wait for a finished episode, then kill mid-run
        assert proc.poll() is None, f"eval ended before the kill: {proc.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline, "no episodes written in time"
        workers |= {c.pid for c in psutil.Process(proc.pid).children(recursive=True)}
        time.sleep(0.05)
    workers |= {c.pid for c in psutil.Process(proc.pid).children(recursive=True)}
    assert len(workers) >= 2, "the env pool's workers run as child processes"
    proc.send_signal(sig)
    code = proc.wait(timeout=120)
    err = proc.stderr.read()
    assert code != 0
    if sig == signal.SIGINT:
        assert code == 130 and "rerun the same command to resume" in err
    gone = time.monotonic() + 60
    while any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in workers):
        assert time.monotonic() < gone, f"env workers still running after the kill: {sorted(workers)}"
        time.sleep(0.1)
    before = _lines(episodes)
    whole = [x for x in before if x.endswith("\n")]
    assert 1 <= len(whole) < 6 * SAMPLES, "killed mid-run"

    rerun = subprocess.run(
        _command(games_dir, out, tmp_path), env=env, capture_output=True, text=True, timeout=600
    )
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    after = _lines(episodes)
    assert after[: len(whole)] == whole, "finished episodes are kept as written"
    keys = [(json.loads(x)["task"], json.loads(x)["sample"]) for x in after]
    assert len(keys) == len(set(keys)) == 6 * SAMPLES, "no finished episode was played again"
    assert json.loads((out / "report.json").read_text()) == reference
