"""The external judge against a real OpenAI-compatible HTTP server on 127.0.0.1: votes, faults, fallbacks,
counters, the disk cache, budgets, bounded concurrency, and the API key staying out of files and logs."""

from __future__ import annotations

import json
import logging

import pytest

from gcd_trl.gcd.external import ExternalGenerator, ExternalJudge, aggregate_votes, request_key
from gcd_trl.gcd.labels import label_records
from openai_server import Fault, OpenAIServer, marked_steps, openai_server_fixture  # noqa: F401 (the fixture)


def box(score, advise="Explore unvisited receptacles first."):
    return f"<think>t</think><answer>\\boxed{{{score}}}</answer><advise>{advise}</advise>"


def by_marker(prompt: str, index: int) -> str:
    """The server's answers: a function of the step the prompt is about."""
    if "GOOD" in prompt:
        return box(1)
    if "BAD" in prompt:
        return box(0, "Do not repeat actions.")
    if "SPLIT" in prompt:
        return [box(1), box(0), "no verdict"][index % 3]
    if "NOBOX" in prompt:
        return "<think>hmm</think><answer>it is fine</answer>"
    return box(1)


def make_judge(server: OpenAIServer, tmp_path, **kw) -> ExternalJudge:
    kw.setdefault("votes", 3)
    kw.setdefault("min_agree", 2)
    kw.setdefault("timeout", 2.0)
    kw.setdefault("max_retries", 2)
    kw.setdefault("concurrency", 4)
    kw.setdefault("down_after", 1000)
    return ExternalJudge("judge-model", server.base_url, cache_dir=tmp_path / "cache", **kw)


@pytest.fixture
def server(openai_server):
    openai_server.answer = by_marker
    return openai_server


def test_aggregate_votes():
    assert aggregate_votes([1, 1, 0], 2) == 1
    assert aggregate_votes([0, 0, None], 2) == 0
    assert aggregate_votes([1, 0, None], 2) is None
    assert aggregate_votes([1, 1, 0, 0], 2) is None  # a tie is no agreement
    assert aggregate_votes([1, None, None], 1) == 1
    assert aggregate_votes([None, None], 1) is None


def test_votes_agreement_and_a_second_run_makes_no_requests(server, tmp_path):
    records = marked_steps(["GOOD", "BAD", "SPLIT", "NOBOX"])
    judge = make_judge(server, tmp_path)
    results = judge.judge_records(records)
    got = [results[(None, None, 0, 0, i)] for i in range(4)]
    assert [r["label"] for r in got] == [1, 0, None, None]
    assert got[2]["votes"] == [1, 0, None] and got[3]["votes"] == [None, None, None]
    assert got[1]["critiques"][0]["advise"] == "Do not repeat actions."
    assert not any(r["failed"] for r in got)
    stats = judge.stats()
    assert stats["requests"] == server.requests == 4  # one request with n=3 per step
    assert all(b["n"] == 3 and b["model"] == "judge-model" for b in server.bodies)
    assert stats["failures"] == {"no_boxed": 4}  # 1 in the split step, 3 in the NOBOX step
    assert stats["cache_hits"] == 0

    again = make_judge(server, tmp_path)  # a rerun / second process with the same cache
    assert again.judge_records(records) == results
    assert server.requests == 4 and again.stats()["requests"] == 0 and again.stats()["cache_hits"] == 4


def test_fewer_choices_than_votes_are_topped_up_and_repeat_mode(server, tmp_path):
    server.max_choices = 1  # a server that ignores n
    judge = make_judge(server, tmp_path / "a")
    res = judge.judge_records(marked_steps(["GOOD", "BAD"]))
    assert [r["label"] for r in res.values()] == [1, 0]
    assert judge.stats()["requests"] == 6
    server.max_choices = None
    server.reset_counts()
    rep = make_judge(server, tmp_path / "b", vote_mode="repeat")
    res = rep.judge_records(marked_steps(["GOOD", "BAD"]))
    assert [len(r["votes"]) for r in res.values()] == [3, 3]
    assert server.requests == 6 and all("n" not in b for b in server.bodies)


def test_transient_faults_are_retried_by_the_client_and_counted_as_requests(server, tmp_path):
    server.script(Fault.rate_limit(0.01), Fault.server_error(), Fault.hang(5.0))
    judge = make_judge(server, tmp_path, concurrency=1, timeout=0.5, max_retries=3)
    res = judge.judge_records(marked_steps(["GOOD", "BAD", "GOOD"]))
    assert [r["label"] for r in res.values()] == [1, 0, 1]
    assert judge.stats()["requests"] == server.requests == 6  # 3 steps + 3 retries
    assert judge.stats()["failures"] == {}
    assert server.faults == {"rate_limit": 1, "server_error": 1, "hang": 1}


def test_persistent_faults_fall_back_to_the_rules_and_are_counted_by_kind(server, tmp_path, caplog):
    faults = {
        "RATE": Fault.rate_limit(0.01),
        "E500": Fault.server_error(),
        "HANG": Fault.hang(5.0),
        "MALFORMED": Fault.malformed(),
        "EMPTY": Fault.empty(),
        "E400": Fault.bad_request(),
    }
    server.fault_for = lambda prompt, body: next((f for m, f in faults.items() if f"[{m}]" in prompt), None)
    markers = ["GOOD", "RATE", "HANG", "MALFORMED", "EMPTY", "E400", "NOBOX", "BAD", "E500"]
    records = marked_steps(markers, won_last=True)
    judge = make_judge(server, tmp_path, timeout=0.3, max_retries=1)
    with caplog.at_level(logging.WARNING, logger="gcd_trl.gcd.external"):
        results = judge.judge_records(records)
    assert "6 of 9 steps got no answer and fall back to the rules" in caplog.text
    stats = judge.stats()
    assert stats["failures"] == {
        "rate_limit": 1,
        "server_error": 1,
        "timeout": 1,
        "malformed": 2,  # a body that is not JSON, a completion without choices
        "bad_request": 1,
        "no_boxed": 3,
    }
    # 429 / 500 / timeouts are retried once (max_retries=1): 2 requests each; a malformed body and a 400
    # are not retried; a completion without choices is asked again up to votes + 1 times
    assert stats["requests"] == server.requests == 2 + 2 + 1 + 4 + 1 + 1 + 1 + 1 + 2
    labelled = label_records(records, results, mode="both")
    assert [r["label_source"] for r in labelled] == ["external"] + ["none"] * 6 + ["external", "rule"]
    # the failed last step of the won episode keeps its rule label; the BAD verdict is the judge's
    assert (labelled[-1]["label"], labelled[-2]["label"], labelled[0]["label"]) == (1, 0, 1)


def test_second_run_requests_only_what_failed_then_nothing(server, tmp_path):
    down = {"on": True}
    server.fault_for = lambda prompt, body: Fault.server_error() if down["on"] and "[BAD]" in prompt else None
    records = marked_steps(["GOOD", "BAD", "GOOD", "BAD"])
    first = make_judge(server, tmp_path, max_retries=0)
    r1 = first.judge_records(records)
    assert [r["failed"] for r in r1.values()] == [False, True, False, True]
    assert first.stats()["requests"] == 4
    down["on"] = False
    second = make_judge(server, tmp_path, max_retries=0)
    r2 = second.judge_records(records)
    assert [r["label"] for r in r2.values()] == [1, 0, 1, 0]
    assert second.stats()["requests"] == 2 and second.stats()["cache_hits"] == 2
    third = make_judge(server, tmp_path, max_retries=0)
    assert third.judge_records(records) == r2
    assert third.stats()["requests"] == 0 and server.requests == 6


def test_endpoint_down_fails_fast_after_consecutive_connection_errors(tmp_path):
    dead = OpenAIServer().start()
    url = dead.base_url
    dead.stop()  # nothing listens on that port now
    judge = ExternalJudge(
        "judge-model", url, cache_dir=tmp_path, max_retries=1, timeout=1.0, concurrency=1, down_after=2
    )
    res = judge.judge_records(marked_steps(["GOOD"] * 5))
    assert all(r["failed"] for r in res.values())
    stats = judge.stats()
    assert stats["failures"] == {"connection": 2, "endpoint_down": 3}
    assert stats["requests"] == 4  # 2 steps x (1 + 1 retry) attempted, then no more


def test_request_budget_is_exact_under_concurrency(server, tmp_path, caplog):
    judge = make_judge(server, tmp_path, max_requests=3, concurrency=4)
    with caplog.at_level(logging.WARNING, logger="gcd_trl.gcd.external"):
        res = judge.judge_records(marked_steps(["GOOD"] * 8))
    assert server.requests == 3 and judge.stats()["requests"] == 3
    assert sum(not r["failed"] for r in res.values()) == 3
    assert judge.stats()["failures"] == {"budget": 5} and judge.stats()["budget_spent"] == "requests"
    assert "requests budget spent; falling back to the rules" in caplog.text
    # a resumed run keeps the same budget
    resumed = make_judge(server, tmp_path / "other", max_requests=3)
    resumed.load_state_dict(judge.state_dict())
    assert all(r["error"] == "budget" for r in resumed.judge_records(marked_steps(["BAD"] * 2)).values())
    assert server.requests == 3


def test_token_budget(server, tmp_path):
    judge = make_judge(server, tmp_path, max_tokens_budget=1, concurrency=1)
    res = judge.judge_records(marked_steps(["GOOD"] * 3))
    assert [r["failed"] for r in res.values()] == [False, True, True]
    assert judge.stats()["budget_spent"] == "tokens" and server.requests == 1
    assert judge.metrics()["judge/external_budget_spent"] == 1.0


def test_concurrency_is_bounded(server, tmp_path):
    server.fault_for = lambda prompt, body: Fault.hang(0.2)  # slow answers, well within the timeout
    judge = make_judge(server, tmp_path, concurrency=2, timeout=5.0)
    res = judge.judge_records(marked_steps(["GOOD"] * 6))
    assert all(r["label"] == 1 for r in res.values())
    assert server.max_in_flight == 2


def test_api_key_comes_from_the_named_env_var_and_is_written_nowhere(server, tmp_path, monkeypatch, caplog):
    secret = "sk-test-SECRET-0123456789"
    monkeypatch.setenv("MY_JUDGE_KEY", secret)
    judge = make_judge(server, tmp_path, api_key_env="MY_JUDGE_KEY")
    with caplog.at_level(logging.DEBUG):
        judge.judge_records(marked_steps(["GOOD", "BAD"]))
    assert server.headers[0]["authorization"] == f"Bearer {secret}"
    files = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert files and not any(secret in p.read_text() for p in files)
    assert secret not in json.dumps(judge.stats()) + json.dumps(judge.state_dict()) + caplog.text


def test_cache_files_are_per_key_and_a_corrupt_one_is_refetched(server, tmp_path):
    records = marked_steps(["GOOD"])
    judge = make_judge(server, tmp_path)
    judge.judge_records(records)
    (path,) = [p for p in (tmp_path / "cache").rglob("*.json")]
    data = json.loads(path.read_text())
    assert len(data["answers"]) == 3 and data["model"] == "judge-model"
    assert path.stem == request_key(
        "judge-model",
        [{"role": "user", "content": server.bodies[0]["messages"][0]["content"]}],
        judge.sampling,
    )
    path.write_text('{"answers": ["trunc')  # a torn file (cannot happen with atomic writes, but still)
    again = make_judge(server, tmp_path)
    assert again.judge_records(records)[(None, None, 0, 0, 0)]["label"] == 1
    assert server.requests == 2
    # other sampling settings are another key
    hot = make_judge(server, tmp_path, temperature=1.3)
    hot.judge_records(records)
    assert server.requests == 3


def test_external_generator(server, tmp_path):
    server.answer = lambda prompt, i: f"<rule>Rule for {prompt[-5:]}</rule>"
    gen = ExternalGenerator(make_judge(server, tmp_path))
    outs = gen.generate(["one 12345", "two 67890"])
    assert [o.text for o in outs] == ["<rule>Rule for 12345</rule>", "<rule>Rule for 67890</rule>"]
    server.fault_for = lambda prompt, body: Fault.bad_request()
    assert [o.text for o in gen.generate(["three"])] == [""]
