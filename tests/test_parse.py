import pytest

from gcd_trl.rollout.parse import (
    CHINESE_CHARACTERS,
    EMPTY_ACTION,
    EMPTY_META_TAG,
    INVALID_REASONS,
    META_TAG_AFTER_ACTION,
    MISSING_ACTION_TAG,
    MISSING_META_TAG,
    MISSING_THINK_TAG,
    MULTIPLE_ACTION_TAGS,
    MULTIPLE_META_TAGS,
    NOT_ADMISSIBLE,
    REASON_TEXT,
    clean_action,
    parse_output,
    planning_content,
)

ADMISSIBLE = ["go to cabinet 1", "go to countertop 2", "take mug 1 from cabinet 1", "look"]


def test_valid_output_returns_admissible_spelling():
    out = parse_output(
        "<think>The mug may be in a cabinet.</think><action>Go to  Cabinet 1 </action>", ADMISSIBLE
    )
    assert out.valid and out.reason is None
    assert out.action == "go to cabinet 1"
    assert out.think == "The mug may be in a cabinet."
    assert out.tag is None
    assert out.raw_action == "Go to  Cabinet 1"


@pytest.mark.parametrize(
    "written",
    ["'go to cabinet 1'", '"GO TO CABINET 1"', "`go to cabinet 1`", "go to cabinet 1.", "go to\ncabinet 1"],
)
def test_action_normalisation(written):
    out = parse_output(f"<think>x</think><action>{written}</action>", ADMISSIBLE)
    assert out.valid and out.action == "go to cabinet 1"


def test_tags_are_case_insensitive_and_trailing_text_ignored():
    out = parse_output("<THINK>a</THINK>\n<Action>look</Action> and then some chatter", ADMISSIBLE)
    assert out.valid and out.action == "look" and out.admissible is True


def test_think_block_may_follow_the_action():
    """verl-agent's alfworld_projection only checks that <think> and </think> occur somewhere."""
    out = parse_output("<action>look</action><think>after</think>", ADMISSIBLE)
    assert out.valid and out.think == "after"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("<think>I will go</think> go to cabinet 1", MISSING_ACTION_TAG),
        ("<think>a</think><action>go to cabinet 1", MISSING_ACTION_TAG),  # never closed
        ("", MISSING_ACTION_TAG),
        ("<think>a</think><action>look</action><action>go to cabinet 1</action>", MULTIPLE_ACTION_TAGS),
        ("<think>a</think><action>look<action>go to cabinet 1</action>", MULTIPLE_ACTION_TAGS),
        ("<action>look</action>", MISSING_THINK_TAG),
        ("<think>a</think><action>   </action>", EMPTY_ACTION),
        ("<think>a</think><action>''</action>", EMPTY_ACTION),
        ("<think>我想</think><action>look</action>", CHINESE_CHARACTERS),
    ],
)
def test_invalid_reasons(text, reason):
    out = parse_output(text, ADMISSIBLE)
    assert not out.valid
    assert out.action is None
    assert out.reason == reason


def test_inadmissible_action_goes_to_the_env_by_default():
    """The references only check the format (verl-agent's alfworld_projection sets valids=1 once the tags
    are there); the env answers an unknown action itself."""
    out = parse_output("<think>hmm</think><action>Fly to  the moon.</action>", ADMISSIBLE)
    assert out.valid and out.reason is None and out.admissible is False
    assert out.action == "Fly to the moon" and out.raw_action == "Fly to  the moon." and out.think == "hmm"


def test_inadmissible_action_invalid_option_keeps_the_strict_rule():
    out = parse_output(
        "<think>hmm</think><action>fly to the moon</action>", ADMISSIBLE, inadmissible_action="invalid"
    )
    assert not out.valid and out.action is None and out.admissible is False
    assert out.reason == NOT_ADMISSIBLE and out.raw_action == "fly to the moon" and out.think == "hmm"
    assert parse_output(
        "<think>a</think><action>look</action>", [], inadmissible_action="invalid"
    ).reason == (NOT_ADMISSIBLE)
    with pytest.raises(ValueError, match="inadmissible_action"):
        parse_output("<think>a</think><action>look</action>", ADMISSIBLE, inadmissible_action="penalise")


def test_no_admissible_list_accepts_any_nonempty_action():
    out = parse_output("<think>a</think><action> Focus on  Red Wire </action>", None)
    assert out.valid and out.action == "Focus on Red Wire" and out.admissible is None
    assert parse_output("<think>a</think><action> </action>", None).reason == EMPTY_ACTION


@pytest.mark.parametrize("tag", ["planning", "explore", "reflection", "monitor"])
def test_meta_reasoning_tags(tag):
    out = parse_output(
        f"<{tag}>step 1: find the mug</{tag}><action>look</action>", ADMISSIBLE, meta_reasoning=True
    )
    assert out.valid and out.tag == tag and out.think == "step 1: find the mug" and out.action == "look"


def test_meta_reasoning_allows_a_think_block_too():
    out = parse_output("<think>x</think><monitor>go on</monitor><action>look</action>", ADMISSIBLE, True)
    assert out.valid and out.tag == "monitor" and out.think == "go on"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("<think>only think</think><action>look</action>", MISSING_META_TAG),
        ("<action>look</action><monitor>too late</monitor>", META_TAG_AFTER_ACTION),
        ("<planning>a</planning><explore>b</explore><action>look</action>", MULTIPLE_META_TAGS),
        ("<monitor>a</monitor><monitor>b</monitor><action>look</action>", MULTIPLE_META_TAGS),
        ("<monitor>a</monitor><action>look</action><explore>b</explore>", MULTIPLE_META_TAGS),
        ("<planning></planning><action>look</action>", EMPTY_META_TAG),
        ("<planning> <b></b> </planning><action>look</action>", EMPTY_META_TAG),
        ("<planning></planning><monitor>a</monitor><action>look</action>", MULTIPLE_META_TAGS),
        ("<monitor>a</monitor>", MISSING_ACTION_TAG),
        ("<monitor>继续</monitor><action>look</action>", CHINESE_CHARACTERS),
    ],
)
def test_meta_reasoning_invalid_reasons(text, reason):
    """RLVMR's alfworld_projection_rlvmr: exactly one skill tag in the whole output, non-empty, before
    <action>; exactly one <action> block; no Chinese characters."""
    out = parse_output(text, ADMISSIBLE, meta_reasoning=True)
    assert not out.valid and out.reason == reason


def test_meta_reasoning_inadmissible_action():
    out = parse_output("<monitor>a</monitor><action>jump</action>", ADMISSIBLE, meta_reasoning=True)
    assert out.valid and out.admissible is False and out.action == "jump" and out.tag == "monitor"
    strict = parse_output("<monitor>a</monitor><action>jump</action>", ADMISSIBLE, True, "invalid")
    assert not strict.valid and strict.reason == NOT_ADMISSIBLE


def test_planning_content_of_any_output():
    assert planning_content("<planning> step 1: a </planning>") == "step 1: a"
    assert planning_content("<planning></planning><action>x</action>") is None
    assert planning_content("<explore>x</explore>") is None


def test_every_reason_has_feedback_text():
    assert set(REASON_TEXT) == set(INVALID_REASONS)
    assert len(set(INVALID_REASONS)) == 10


def test_clean_action():
    assert clean_action("  ' move mug 1 to  cabinet 1. ' ") == "move mug 1 to cabinet 1"
