"""Prompt-based correction: grouping advice into themes, golden rules through a Generator (scripted, and
the external endpoint on a real HTTP server), the versioned rules file, checkpoints, failures."""

from __future__ import annotations

import json

import pytest

from gcd_trl.gcd.correction import RuleBook, group_advice, parse_rule, read_rules
from gcd_trl.gcd.external import ExternalGenerator, ExternalJudge
from gcd_trl.generation import Generation
from openai_server import Fault, openai_server_fixture  # noqa: F401 (the fixture)

ADVICE = [
    "Avoid repeating the same action when it produced no change.",
    "Do not repeat an action that already failed; try something different.",
    "Never repeat actions that do nothing.",
    "Search receptacles systematically and remember which ones were visited.",
    "Check every receptacle systematically before revisiting one.",
    "Heat the object with the microwave before placing it.",
    "Use the microwave to heat food, then put it in the target.",
]


class Echo:
    """A Generator whose rule names the theme it was asked about (so tests can tell rules apart)."""

    def __init__(self, fail=False, text=None):
        self.fail, self.text, self.prompts = fail, text, []

    def generate(self, prompts):
        if self.fail:
            raise RuntimeError("backend died")
        self.prompts += prompts
        outs = []
        for p in prompts:
            theme = p.split("THEME: ", 1)[1].split("\n", 1)[0]
            text = (
                self.text if self.text is not None else f"<think>...</think><rule>Rule about {theme}.</rule>"
            )
            outs.append(Generation(prompt_ids=[], completion_ids=[], text=text, truncated=False))
        return outs


def test_group_advice_finds_the_themes_deterministically():
    groups, names = group_advice(ADVICE, 3)
    assert sorted(map(sorted, groups)) == [[0, 1, 2], [3, 4], [5, 6]]
    assert any("repeat" in n for n in names) and any("microwave" in n for n in names)
    assert group_advice(ADVICE, 3) == (groups, names)
    assert len(group_advice(ADVICE, 1)[0]) == 1 and len(group_advice(ADVICE, 1)[0][0]) == 7
    assert group_advice(["the", "a"], 3) == ([], [])  # nothing but stop words
    assert group_advice(["Same advice."] * 4, 3)[0] == [[0, 1, 2, 3]]  # duplicates make one theme


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("<think>x</think><rule> Always explore first. </rule>", "Always explore first."),
        ('<think>x</think>\n**Golden Rule:** "Check before you act."', "Check before you act."),
        ("<think>x</think>\n\n", None),
        ("<think>only thinking</think><rule></rule>", None),
    ],
)
def test_parse_rule(text, rule):
    assert parse_rule(text) == rule


def test_rulebook_updates_every_n_rounds_and_round_trips(tmp_path):
    path = tmp_path / "run" / "golden_rules.json"
    book = RuleBook(path, max_rules=3, every=2)
    gen = Echo()
    book.add_advice(ADVICE[:4], round=0, source="policy")
    assert not book.maybe_update(0, gen) and book.suggestions() == []
    book.add_advice(ADVICE[4:] + ["", "  "], round=1, source="external")
    assert book.maybe_update(1, gen)
    rules = book.suggestions()
    assert len(rules) == 3 and all(r.startswith("Rule about ") for r in rules)
    assert "Avoid repeating the same action" in "".join(gen.prompts)
    data = json.loads(path.read_text())
    v1 = data["versions"][0]
    assert (data["format"], v1["version"], v1["round"], v1["advice_count"]) == (
        "gcd-trl golden rules",
        1,
        1,
        7,
    )
    assert sorted(a for r in v1["rules"] for a in r["advice"]) == sorted(ADVICE)
    assert {s for r in v1["rules"] for s in r["advice_sources"]} == {"policy", "external"}
    assert read_rules(path) == rules
    assert not book.maybe_update(2, gen)  # not due yet
    assert not book.maybe_update(3, gen)  # due, but no new advice: the rules stay
    assert book.suggestions() == rules

    # checkpoint / resume
    state = json.loads(json.dumps(book.state_dict()))
    resumed = RuleBook(tmp_path / "other.json", max_rules=3, every=2)
    resumed.load_state_dict(state)
    assert resumed.suggestions() == rules and resumed.last_update_round == 3
    resumed.add_advice(["Turn on the lamp before examining objects."], round=4, source="policy")
    assert resumed.maybe_update(5, gen)
    assert len(resumed.suggestions()) == 1 and "lamp" in resumed.suggestions()[0]
    assert [v["version"] for v in RuleBook.from_file(tmp_path / "other.json").versions] == [1, 2]


def test_advice_is_capped_and_failures_keep_the_previous_rules(tmp_path, caplog):
    book = RuleBook(tmp_path / "r.json", max_rules=2, every=1, max_advice=3)
    book.add_advice(ADVICE, round=0, source="policy")
    assert [a["text"] for a in book.pending] == ADVICE[-3:]
    assert book.update(0, Echo())
    before = book.suggestions()
    book.add_advice(ADVICE, round=1, source="policy")
    assert not book.update(1, Echo(fail=True))
    assert "generation failed" in caplog.text
    assert not book.update(2, Echo(text="no rule here <oops>"))
    assert book.suggestions() == before and len(book.pending) == 3  # kept for the next try
    assert book.metrics()["gcd/rule_generation_failures"] > 0


def test_from_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        RuleBook.from_file(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text('{"versions": 3}')
    with pytest.raises(ValueError, match="not a golden rules file"):
        RuleBook.from_file(tmp_path / "bad.json")


def test_rules_through_the_external_endpoint(openai_server, tmp_path):
    openai_server.answer = lambda prompt, i: "<think>t</think><rule>Do not loop; vary your actions.</rule>"
    judge = ExternalJudge("judge-model", openai_server.base_url, cache_dir=tmp_path / "cache", max_retries=0)
    book = RuleBook(tmp_path / "rules.json", max_rules=2, every=1)
    book.add_advice(ADVICE, round=0, source="external")
    assert book.update(0, ExternalGenerator(judge), source="external")
    assert book.suggestions() == ["Do not loop; vary your actions."]  # both themes gave the same rule
    assert openai_server.requests == 2
    openai_server.fault_for = lambda prompt, body: Fault.server_error()
    book.add_advice(["Open containers before searching them."], round=1, source="external")
    assert not book.update(1, ExternalGenerator(judge))  # endpoint down: rules kept, training goes on
    assert book.suggestions() == ["Do not loop; vary your actions."]
