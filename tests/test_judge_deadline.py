"""The external judge's round deadline, against a real OpenAI-compatible server on 127.0.0.1 that hangs on
some steps: past `round_timeout` the waiting steps fail as `round_deadline`, the rules stand in for them,
the failures are counted, and requests not sent by then are never sent."""

from __future__ import annotations

from gcd_trl.gcd.args import GCDArguments
from gcd_trl.gcd.external import ExternalJudge, label_with_judge, map_with_deadline
from gcd_trl.gcd.labels import label_records
from openai_server import Fault, marked_steps, openai_server_fixture  # noqa: F401 (the fixture)

BAD = "<think>t</think><answer>\\boxed{0}</answer><advise>Do not repeat actions.</advise>"


def steps(markers: list[str]) -> list[dict]:
    """Agent steps the rules call good (valid, the last one won) and the endpoint calls bad."""
    return marked_steps(markers, won_last=True)


def hanging_judge(server, tmp_path, concurrency: int) -> ExternalJudge:
    server.answer = lambda prompt, index: BAD
    server.fault_for = lambda prompt, body: Fault.hang(120.0) if "HANG" in prompt else None
    return ExternalJudge(
        "judge-model",
        server.base_url,
        votes=1,
        min_agree=1,
        timeout=120.0,  # one request alone would hold the round for two minutes
        max_retries=0,
        concurrency=concurrency,
        cache_dir=tmp_path / "cache",
        round_timeout=5.0,
    )


def test_steps_past_the_round_deadline_fall_back_to_the_rules_and_are_counted(openai_server, tmp_path):
    judge = hanging_judge(openai_server, tmp_path, concurrency=2)
    records = steps(["A", "B", "HANG"])  # the last step won: the rules call it good
    try:
        results = judge.judge_records(records)
    finally:
        judge.close()
    by_step = {key[-1]: r for key, r in results.items()}
    assert [by_step[i]["error"] for i in range(3)] == [None, None, "round_deadline"]
    assert by_step[0]["label"] == 0 and by_step[1]["label"] == 0
    assert judge.stats()["failures"] == {"round_deadline": 1}
    assert judge.metrics()["judge/external_failures_round_deadline"] == 1.0
    labelled = label_records(records, results, mode="external")
    assert [(r["label"], r["label_source"]) for r in labelled] == [
        (0, "external"),
        (0, "external"),
        (1, "rule"),
    ]


def test_requests_not_sent_by_the_deadline_are_never_sent(openai_server, tmp_path):
    judge = hanging_judge(openai_server, tmp_path, concurrency=1)
    try:
        results = judge.judge_records(steps(["HANG", "A"]))
    finally:
        judge.close()
    assert [r["error"] for r in results.values()] == ["round_deadline", "round_deadline"]
    assert judge.stats()["failures"] == {"round_deadline": 2}
    assert not any("[A]" in m["content"] for b in openai_server.bodies for m in b["messages"])


def test_map_with_deadline_without_a_limit_and_with_errors():
    assert map_with_deadline(lambda x: x * 2, [1, 2, 3], 2, None) == [(True, 2), (True, 4), (True, 6)]
    assert map_with_deadline(lambda x: x, [], 2, 1.0) == []
    try:
        map_with_deadline(lambda x: 1 / x, [1, 0], 1, None)
    except ZeroDivisionError:
        pass
    else:
        raise AssertionError("an error in fn reaches the caller")


def test_round_timeout_comes_from_the_run_config():
    args = GCDArguments(gcd=True, judge_model="m", judge_base_url="http://127.0.0.1:1/v1")
    assert ExternalJudge.from_args(args).round_timeout == 120.0
    args.judge_round_timeout = None
    assert ExternalJudge.from_args(args).round_timeout is None


def test_offline_labelling_has_no_round_deadline(openai_server, tmp_path):
    """`gcd-trl judge label` is not a training round: a deadline the answers cannot meet changes nothing."""
    openai_server.answer = lambda prompt, index: BAD
    args = GCDArguments(
        gcd=True,
        judge_model="judge-model",
        judge_base_url=openai_server.base_url,
        judge_labels="external",
        judge_votes=1,
        judge_min_agree=1,
        judge_round_timeout=0.001,
    )
    labelled, summary = label_with_judge(steps(["A", "B"]), args, None, tmp_path / "cache")
    assert summary["fallbacks"] == 0 and summary["labelled_by"]["external"] == 2
