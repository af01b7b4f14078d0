"""The test OpenAI server itself, driven by the real `openai` client: answers, n choices, faults, counts."""

from __future__ import annotations

import json
import urllib.request

import openai
import pytest

from openai_server import Fault, OpenAIServer, openai_server_fixture  # noqa: F401 (the fixture)


def _client(server: OpenAIServer, **kw) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="test-key", **kw)


def _ask(client: openai.OpenAI, prompt: str = "hello", **kw):
    return client.chat.completions.create(
        model="judge-model", messages=[{"role": "user", "content": prompt}], **kw
    )


def test_answers_are_a_function_of_the_prompt_with_n_choices(openai_server):
    openai_server.answer = lambda prompt, i: f"{prompt.upper()} #{i}"
    out = _ask(_client(openai_server), "abc", n=3)
    assert [c.message.content for c in out.choices] == ["ABC #0", "ABC #1", "ABC #2"]
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens
    assert openai_server.requests == 1 and openai_server.bodies[0]["n"] == 3


def test_scripted_items_come_first_then_the_answer_function(openai_server):
    openai_server.script("first", ["a", "b"])
    client = _client(openai_server)
    assert _ask(client).choices[0].message.content == "first"
    assert [c.message.content for c in _ask(client, n=3).choices] == ["a", "b"]  # fewer than n
    assert "boxed{1}" in _ask(client).choices[0].message.content
    assert openai_server.pending == 0


def test_rate_limit_is_retried_by_the_client_and_counted(openai_server):
    openai_server.script(Fault.rate_limit(0.01), Fault.server_error())
    out = _ask(_client(openai_server, max_retries=2))
    assert out.choices[0].message.content
    assert openai_server.requests == 3
    assert openai_server.faults == {"rate_limit": 1, "server_error": 1}


def test_faults_surface_as_client_errors(openai_server):
    client = _client(openai_server, max_retries=0, timeout=0.3)
    openai_server.script(Fault.rate_limit(0.01))
    with pytest.raises(openai.RateLimitError):
        _ask(client)
    openai_server.script(Fault.server_error())
    with pytest.raises(openai.InternalServerError):
        _ask(client)
    openai_server.script(Fault.hang(3.0))
    with pytest.raises(openai.APITimeoutError):
        _ask(client)
    openai_server.script(Fault.malformed())
    with pytest.raises(Exception) as err:
        _ask(client)
    assert not isinstance(err.value, openai.APIStatusError)
    openai_server.script(Fault.empty())
    assert _ask(client).choices == []
    assert openai_server.requests == 5


def test_fault_for_prompt_and_models_route(openai_server):
    openai_server.fault_for = lambda prompt, body: Fault.bad_request() if "bad" in prompt else None
    client = _client(openai_server, max_retries=0)
    with pytest.raises(openai.BadRequestError):
        _ask(client, "a bad prompt")
    assert _ask(client, "fine").choices
    with urllib.request.urlopen(f"{openai_server.base_url}/models") as resp:
        assert json.load(resp)["data"][0]["id"] == "judge-model"


def test_logprobs_when_asked(openai_server):
    openai_server.answer = lambda prompt, i: "go to desk 1"
    out = _ask(_client(openai_server), logprobs=True)
    assert [t.logprob for t in out.choices[0].logprobs.content] == [-0.5] * 4


def test_context_manager_stops_a_hanging_handler():
    with OpenAIServer() as server:
        server.script(Fault.hang(30.0))
        with pytest.raises(openai.APITimeoutError):
            _ask(_client(server, max_retries=0, timeout=0.2))
    # stop() released the hanging handler; nothing left running that blocks the test
