"""`make demo`, shortened (`--small`, as DEMO_SMALL=1): every stage runs for real (tiny model, `make data`,
SFT, RL with and without GCD, the evaluations) and the report has its table, verdicts and plots; a second
run reuses every stage."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    cmd = [sys.executable, "-m", "gcd_trl.demo", "--small", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc.stdout


def test_small_demo_writes_the_report(small_demo):
    out, stdout = small_demo
    report = (out / "report.md").read_text()
    assert f"Report: {out / 'report.md'}" in stdout
    for heading in ("## What ran", "## Results on the held-out games", "## Learning checks", "## Plots"):
        assert heading in report
    assert "| policy | ALFWorld held-out (generated) success %" in report
    for label in ("random", "expert", "SFT", "RL (GiGPO)", "RL+GCD (GiGPO)"):
        assert f"| {label} |" in report
    assert "within noise" in report or "above" in report or "below" in report
    pngs = sorted((out / "plots").glob("*.png"))
    assert len(pngs) >= 4 and all(p.stat().st_size > 1000 for p in pngs)
    for png in pngs:
        assert f"(plots/{png.name})" in report
    results = json.loads((out / "results.json").read_text())
    assert [r["label"] for r in results["heldout"]] == [
        "random",
        "expert",
        "SFT",
        "RL (GiGPO)",
        "RL+GCD (GiGPO)",
    ]
    assert all(r["episodes"] == 3 for r in results["heldout"])
    gcd_log = json.loads((out / "rl_gigpo_gcd" / "trainer_state.json").read_text())["log_history"]
    assert any("judge/prompts" in row for row in gcd_log), "the GCD run trained with judge samples"


def test_second_demo_run_reuses_every_stage(small_demo):
    out, _ = small_demo
    cmd = [sys.executable, "-m", "gcd_trl.demo", "--small", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("reused") >= 10 and "$ " not in proc.stdout


def test_a_failing_stage_stops_the_demo_with_its_name(tmp_path):
    (tmp_path / "configs").mkdir()
    bad = tmp_path / "tiny-model"
    bad.write_text("not a folder")  # the tiny-model stage cannot write here
    proc = subprocess.run(
        [sys.executable, "-m", "gcd_trl.demo", "--small", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1
    assert "stage '1a tiny model' failed" in proc.stderr
