"""`gcd-trl judge label`: rules only, an external judge on a real 127.0.0.1 server with faults, the summary,
the cache across runs, eval episode files, --config, and bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gcd_trl.cli import main
from gcd_trl.rollout.records import read_steps
from openai_server import Fault, openai_server_fixture  # noqa: F401 (the fixture)

REPO = Path(__file__).resolve().parents[1]
SUMMARY_KEYS = {"steps", "good", "bad", "unlabelled", "requests", "cache_hits", "failures"}


def box(score):
    return f"<think>t</think><answer>\\boxed{{{score}}}</answer><advise>Advice {score}.</advise>"


def answer_by_marker(prompt, index):
    if "[GOOD]" in prompt:
        return box(1)
    if "[NOBOX]" in prompt:
        return "<answer>looks fine</answer>"
    return box(0)


def rollout_steps(markers, round_index=0):
    """Two episodes of a round: episode 0 loops (A, B, A) and wins; episode 1 fails."""
    rows = []
    for traj, (anchors, won) in enumerate([(["A", "B", "A", "C"], True), (["X", "Y"], False)]):
        for i, a in enumerate(anchors):
            rows.append(
                {
                    "round": round_index,
                    "group": 0,
                    "traj": traj,
                    "step": i,
                    "anchor": a,
                    "prompt": f"Task: put a mug in cabinet. At {a} ({traj}.{i}) [{markers.pop(0) if markers else 'BAD'}]",
                    "completion": "<think>x</think><action>go to desk 1</action>",
                    "action": "go to desk 1",
                    "valid": True,
                    "reason": None,
                    "tag": None,
                    "env_reward": 10.0 if won and i == len(anchors) - 1 else 0.0,
                    "done": i == len(anchors) - 1,
                    "won": won and i == len(anchors) - 1,
                    "advantage": 0.5,
                    "truncated": False,
                }
            )
    return rows


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def run_cli(capsys, *argv):
    with pytest.raises(SystemExit) as exit_info:
        main(["judge", "label", *map(str, argv)])
    out, err = capsys.readouterr()
    summary = json.loads(out.strip().splitlines()[-1]) if exit_info.value.code == 0 else None
    return exit_info.value.code, summary, err


def test_rules_only(tmp_path, capsys):
    src = write_jsonl(tmp_path / "round_00000_rank0.jsonl", rollout_steps([]))
    code, summary, _ = run_cli(capsys, "--input", src, "--output", tmp_path / "out.jsonl")
    assert code == 0
    assert SUMMARY_KEYS <= set(summary)
    assert {k: summary[k] for k in SUMMARY_KEYS} == {
        "steps": 6,
        "good": 1,
        "bad": 1,
        "unlabelled": 4,
        "requests": 0,
        "cache_hits": 0,
        "failures": {},
    }
    out = read_steps(tmp_path / "out.jsonl")
    assert [(r["label"], r["label_source"]) for r in out][:4] == [
        (0, "rule"),
        (None, "none"),
        (None, "none"),
        (1, "rule"),
    ]
    assert out[0]["advantage"] == 0.5  # the rest of the record is kept


def test_external_judge_with_faults_fallbacks_counts_and_cache(openai_server, tmp_path, capsys, caplog):
    openai_server.answer = answer_by_marker
    markers = ["GOOD", "NOBOX", "GOOD", "BAD", "GOOD", "BAD"]
    src = write_jsonl(tmp_path / "steps.jsonl", rollout_steps(markers))
    # the first requests meet a 429, a 500, a hang past the timeout (all retried by the client) and one
    # malformed body (not retried: that step falls back to the rules)
    openai_server.script(Fault.rate_limit(0.01), Fault.server_error(), Fault.hang(5.0), Fault.malformed())
    common = [
        "--base-url", openai_server.base_url, "--model", "judge-model", "--votes", "3", "--min-agree", "2",
        "--cache-dir", tmp_path / "cache", "--timeout", "0.5", "--max-retries", "3", "--concurrency", "1",
    ]  # fmt: skip
    code, s1, err = run_cli(capsys, "--input", src, "--output", tmp_path / "out1.jsonl", *common)
    assert code == 0
    assert s1["requests"] == openai_server.requests == 6 + 3  # 6 steps + 3 retries (malformed: no retry)
    assert s1["failures"] == {"malformed": 1, "no_boxed": 3}
    assert s1["cache_hits"] == 0 and s1["fallbacks"] == 1
    assert "1 of 6 steps got no answer and fall back to the rules" in caplog.text
    out = read_steps(tmp_path / "out1.jsonl")
    # with concurrency 1 the steps go in order: the 4th request (step 0's 3rd retry) got the malformed body
    assert (out[0]["label"], out[0]["label_source"]) == (0, "rule")  # fell back to the rule
    assert [(r["label"], r["label_source"]) for r in out[1:]] == [
        (None, "none"),  # NOBOX: no verdict, no rule
        (1, "external"),
        (0, "external"),  # overrides the rule's "good" for the winning step
        (1, "external"),
        (0, "external"),
    ]
    assert out[2]["critiques"][0]["advise"] == "Advice 1." and "critiques" not in out[0]
    assert (s1["good"], s1["bad"], s1["unlabelled"]) == (2, 3, 1)

    code, s2, _ = run_cli(capsys, "--input", src, "--output", tmp_path / "out2.jsonl", *common)
    assert (s2["requests"], s2["cache_hits"]) == (1, 5)  # only the step that failed is asked again
    code, s3, _ = run_cli(capsys, "--input", src, "--output", tmp_path / "out3.jsonl", *common)
    assert (s3["requests"], s3["cache_hits"], s3["failures"]) == (0, 6, {"no_boxed": 3})
    assert openai_server.requests == 10
    assert read_steps(tmp_path / "out3.jsonl") == read_steps(tmp_path / "out2.jsonl")


def test_eval_episode_files_and_config_file(openai_server, tmp_path, capsys):
    openai_server.answer = answer_by_marker
    rows = rollout_steps(["GOOD"] * 6)
    episodes = [
        {
            "task": "game-a",
            "won": True,
            "steps": 4,
            "trajectory": [{k: v for k, v in r.items() if k != "round"} for r in rows[:4]],
        },
        {
            "task": "game-b",
            "won": False,
            "steps": 2,
            "trajectory": [{k: v for k, v in r.items() if k != "round"} for r in rows[4:]],
        },
    ]
    src = write_jsonl(tmp_path / "episodes.jsonl", episodes)
    config = tmp_path / "gcd.yaml"
    config.write_text(
        f"model_name_or_path: some/model\nlearning_rate: 1.0e-6\ngcd: true\njudge_model: judge-model\n"
        f"judge_base_url: {openai_server.base_url}\njudge_votes: 1\njudge_min_agree: 1\njudge_labels: external\n"
        f"judge_cache_dir: {tmp_path / 'cache'}\n"
    )
    code, summary, _ = run_cli(capsys, "--input", src, "--output", tmp_path / "out.jsonl", "--config", config)
    assert code == 0
    assert (summary["steps"], summary["good"], summary["requests"]) == (6, 6, 6)
    assert all(b["model"] == "judge-model" and "n" not in b for b in openai_server.bodies)  # votes=1: no n
    out = read_steps(tmp_path / "out.jsonl")
    assert [r["task"] for r in out] == ["game-a"] * 4 + ["game-b"] * 2
    assert all(r["label_source"] == "external" for r in out)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--input", "{tmp}/missing.jsonl"], "no such file"),
        (["--input", "{tmp}/bad.jsonl"], "missing field 'anchor'"),
        (
            ["--input", "{tmp}/ok.jsonl", "--votes", "2", "--min-agree", "3"],
            "judge_min_agree=3 cannot exceed",
        ),
        (["--input", "{tmp}/ok.jsonl", "--model", "m"], "judge_model is set but judge_base_url is not"),
        (["--input", "{tmp}/ok.jsonl", "--template", "{tmp}/nope.txt"], "nor an existing file"),
        (["--input", "{tmp}/ok.jsonl", "--config", "{tmp}/typo.yaml"], "unknown key 'judge_vote'"),
        (["--input", "{tmp}/ok.jsonl", "--output", "{tmp}/ok.jsonl"], "is also an --input"),
    ],
)
def test_bad_input_is_refused_with_a_clear_message(tmp_path, capsys, argv, message):
    write_jsonl(tmp_path / "ok.jsonl", rollout_steps([]))
    write_jsonl(tmp_path / "bad.jsonl", [{"group": 0, "traj": 0, "step": 0}])
    (tmp_path / "typo.yaml").write_text("judge_vote: 3\n")
    argv = [a.format(tmp=tmp_path) for a in argv]
    if "--output" not in argv:
        argv += ["--output", str(tmp_path / "out.jsonl")]
    code, _, err = run_cli(capsys, *argv)
    assert code == 2 and message in err
    assert not (tmp_path / "out.jsonl").exists()


def test_command_line_end_to_end_with_the_key_from_the_environment(openai_server, tmp_path):
    openai_server.answer = answer_by_marker
    src = write_jsonl(tmp_path / "steps.jsonl", rollout_steps(["GOOD"] * 6))
    env = dict(os.environ, JUDGE_KEY="sk-cli-secret-42", HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, "-m", "gcd_trl", "judge", "label", "--input", src, "--output", tmp_path / "o.jsonl",
         "--base-url", openai_server.base_url, "--model", "judge-model", "--api-key-env", "JUDGE_KEY",
         "--cache-dir", tmp_path / "cache"],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (summary["steps"], summary["good"], summary["requests"]) == (6, 6, 6)
    assert openai_server.headers[0]["authorization"] == "Bearer sk-cli-secret-42"
    written = (tmp_path / "o.jsonl").read_text() + proc.stdout + proc.stderr
    written += "".join(p.read_text() for p in (tmp_path / "cache").rglob("*.json"))
    assert "sk-cli-secret-42" not in written


def test_progress_of_the_requests_on_stderr(openai_server, tmp_path, capsys):
    openai_server.answer = answer_by_marker
    src = write_jsonl(tmp_path / "steps.jsonl", rollout_steps(["GOOD", "BAD", "GOOD", "BAD", "GOOD", "BAD"]))
    common = ["--input", src, "--base-url", openai_server.base_url, "--model", "judge-model"]
    code, summary, err = run_cli(
        capsys, *common, "--output", tmp_path / "a.jsonl", "--cache-dir", tmp_path / "a"
    )
    assert code == 0 and summary["requests"] == 6
    assert (
        "judge: 100%" in err and "6/6" in err
    )  # steps judged / total, on stderr; stdout is the JSON summary
    code, _, err = run_cli(
        capsys, *common, "--output", tmp_path / "b.jsonl", "--cache-dir", tmp_path / "b", "--quiet"
    )
    assert code == 0 and "judge:" not in err
