"""`make demo`, shortened (`--small`, as DEMO_SMALL=1): every stage runs for real (tiny model, `make data`,
SFT, RL with and without GCD, the evaluations) and the report has its table, verdicts and plots; a second
run reuses every stage."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    cmd = [sys.executable, "-m", "demo", "--small", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc.stdout


def test_small_demo_writes_the_report(small_demo):
    out, stdout = small_demo
    report = (out / "report.md").read_text()
    assert f"Report: {out / 'report.md'}" in stdout
    for heading in (
        "## What ran",
        "## Results on the 3 held-out games",
        "## The same policies on 2 held-out games in full rooms",
        "## Learning checks",
        "## The judge, round by round (RL+GCD)",
        "## Plots",
    ):
        assert heading in report, heading
    assert "the shipped warm start" in report  # the default start, named
    assert "| policy | ALFWorld held-out (rooms cut to 5 receptacles) success %" in report
    for label in ("random", "expert", "SFT", "RL (GiGPO)", "RL+GCD (GiGPO)"):
        assert f"| {label} |" in report
    assert "| RL (GiGPO) vs SFT |" in report and "| RL+GCD (GiGPO) vs RL (GiGPO) |" in report
    assert "exact McNemar one-sided p" in report
    pngs = sorted((out / "plots").glob("*.png"))
    assert len(pngs) >= 2 and all(p.stat().st_size > 1000 for p in pngs)
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
    assert [r["label"] for r in results["full_rooms"]] == ["SFT", "RL (GiGPO)"]
    assert all(r["episodes"] == 2 for r in results["full_rooms"])
    first = results["paired"][0]
    assert (first["new"], first["old"], first["games"]) == ("RL (GiGPO)", "SFT", 3)
    assert first["both"] + first["neither"] + first["new_only"] + first["old_only"] == 3
    assert results["judge_rounds"] and results["judge_rounds"][0]["round"] == 1
    assert results["start"] == "warm start"
    gcd_log = json.loads((out / "rl_gigpo_gcd" / "trainer_state.json").read_text())["log_history"]
    assert any("judge/prompts" in row for row in gcd_log), "the GCD run trained with judge samples"
    # every game folder holds one room size, and the RL config names it
    cfg = (out / "configs" / "rl_gigpo.yaml").read_text()
    assert "max_receptacles: 5" in cfg and "dtype" not in cfg or "dtype: float32" in cfg


def test_second_demo_run_reuses_every_stage(small_demo):
    out, _ = small_demo
    cmd = [sys.executable, "-m", "demo", "--small", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("reused") >= 10 and "$ " not in proc.stdout


def test_a_failing_stage_stops_the_demo_with_its_name(tmp_path):
    (tmp_path / "configs").mkdir()
    bad = tmp_path / "data"
    bad.write_text("not a folder")  # the games stages cannot write here
    proc = subprocess.run(
        [sys.executable, "-m", "demo", "--small", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1
    # the games stages run side by side: whichever fails first is named
    assert re.search(r"stage '1 games: (train|heldout|heldout_full)' failed", proc.stderr), proc.stderr


def test_side_by_side_stages_record_each_one_and_name_the_failure(tmp_path):
    from demo.pipeline import Budget, Demo, StageError

    demo = Demo(tmp_path, Budget.small())
    done = tmp_path / "ok.txt"
    ok = [
        sys.executable,
        "-c",
        f"import os, pathlib; pathlib.Path({str(done)!r}).write_text(os.environ['OMP_NUM_THREADS'])",
    ]
    bad = [sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"]
    with pytest.raises(StageError, match="stage 'y bad' failed: exit 3"):
        demo.parallel([("x ok", ok, done), ("y bad", bad, tmp_path / "never")])
    assert done.read_text() == "1"  # one torch thread each
    assert json.loads((tmp_path / "stages" / "x ok.json").read_text())["side_by_side"] is True
    assert not (tmp_path / "stages" / "y bad.json").exists()
    assert "boom" in (tmp_path / "logs" / "y_bad.log").read_text()
    demo2 = Demo(tmp_path, Budget.small())
    demo2.parallel([("x ok", ok, done)])  # finished before: reused, not run again
    assert demo2.ran[0]["reused"] is True and demo2.group_walls == []


def test_side_by_side_stages_wait_for_the_stages_they_need(tmp_path):
    from demo.pipeline import Budget, Demo

    def script(code: str) -> list[str]:
        return [sys.executable, "-c", f"import pathlib, time; d = pathlib.Path({str(tmp_path)!r}); {code}"]

    # "3 rl" ends only once "4 eval other" has run: the queue must pass over "4 eval rl" (not ready yet)
    # to the free core's next stage; a queue that waited in list order would leave rl to time out
    rl = script(
        "t = time.monotonic()\n"
        "while not (d / 'other_eval.txt').exists() and time.monotonic() - t < 60: time.sleep(0.05)\n"
        "(d / 'rl.txt').write_text('trained' if (d / 'other_eval.txt').exists() else 'gave up')"
    )
    demo = Demo(tmp_path, Budget.small())
    demo.parallel(
        [
            ("3 rl", rl, tmp_path / "rl.txt"),
            ("3 other", script("(d / 'other.txt').write_text('x')"), tmp_path / "other.txt"),
            (
                "4 eval rl",
                script("(d / 'eval.txt').write_text((d / 'rl.txt').read_text())"),
                tmp_path / "eval.txt",
                ["3 rl"],
            ),
            ("4 eval other", script("(d / 'other_eval.txt').write_text('x')"), tmp_path / "other_eval.txt"),
        ]
    )
    assert (tmp_path / "eval.txt").read_text() == "trained"  # ran after rl, and rl saw the other eval run
    finish_order = [r["stage"] for r in demo.ran]
    assert finish_order.index("3 rl") < finish_order.index("4 eval rl")
    with pytest.raises(ValueError, match="unknown stages"):
        demo.parallel([("5 x", script("pass"), tmp_path / "x.txt", ["no such stage"])])


def test_new_rounds_forget_rl_and_eval_only(tmp_path):
    from demo.pipeline import _forget_rl_and_eval

    stages = tmp_path / "stages"
    stages.mkdir()
    for name in ("1a tiny model", "2 cold start", "3 RL (GiGPO)", "4 eval SFT"):
        (stages / f"{name}.json").write_text("{}")
    for d in ("sft", "rl_gigpo", "rl_gigpo_gcd", "eval/sft"):
        (tmp_path / d).mkdir(parents=True)
    _forget_rl_and_eval(tmp_path)
    assert sorted(p.stem for p in stages.glob("*.json")) == ["1a tiny model", "2 cold start"]
    assert (
        (tmp_path / "sft").is_dir()
        and not (tmp_path / "rl_gigpo").exists()
        and not (tmp_path / "eval").exists()
    )


def test_from_scratch_plans_the_cold_start_and_refuses_a_mixed_folder(tmp_path, monkeypatch):
    """FROM_SCRATCH=1 keeps the older path (tiny model, make data, a short SFT) and RL starts from that SFT;
    a folder made from the other start is refused, not mixed."""
    from demo import pipeline
    from demo.pipeline import Budget, Demo

    planned = []
    monkeypatch.setattr(
        Demo, "stage", lambda self, name, commands, done_when=None: planned.append((name, commands))
    )
    demo = Demo(tmp_path, Budget.small(from_scratch=True))
    kind, start = demo.start_model()
    assert kind == "cold start" and start == tmp_path / "sft"
    assert [name for name, _ in planned] == [
        "2a tiny model",
        "2b SFT data (make data)",
        "2c cold start: SFT on agent + judge data",
    ]
    assert "--entity_tokens" in planned[0][1][0] and planned[1][1][0][:3] == ["make", "-s", "data"]
    assert Demo(tmp_path, Budget.small()).start_model() == ("warm start", pipeline.WARM_START)
    (tmp_path / "budget.json").write_text(json.dumps({**vars(Budget()), "from_scratch": True}))
    assert pipeline.main(["--out", str(tmp_path)]) == 1  # started from scratch: FRESH=1 to change that
