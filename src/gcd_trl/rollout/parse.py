"""Turn a model's text into an env action, or say exactly why it cannot be one.

Format (the paper's and verl-agent's): `<think>...</think><action>...</action>`. Exactly one action block
is required and a `<think>` block must appear (verl-agent's `alfworld_projection` looks for it anywhere);
text around the blocks is ignored. With `meta_reasoning=True` (RLVMR) the reasoning block is exactly one
non-empty `<planning>`, `<explore>`, `<reflection>` or `<monitor>` block, placed before the action block
(RLVMR's `alfworld_projection_rlvmr`: a second tag, an empty tag or a tag after `<action>` is invalid); a
`<think>` block is then allowed but not needed. Any Chinese character (U+4E00-U+9FFF) makes an output
invalid, as in both references. Tags match case-insensitively.

These are *format* checks: a format error is invalid (penalised, never sent to the env). Whether the action
is on the admissible list is a separate question, answered by `inadmissible_action`:
- "env" (the references' rule, the default): a well-formed action that is not admissible is still valid;
  it goes to the env, which answers "Nothing happens." (ALFWorld) or "No known action matches that
  input." (ScienceWorld), with no penalty. `ParsedOutput.admissible` is False so it can be counted;
- "invalid" (gcd-trl's stricter rule, an option): it is invalid with reason `not_admissible` and never
  reaches the env.

Checks run in this order and the first failure is the reason (one of INVALID_REASONS):
missing_action_tag, multiple_action_tags, missing_think_tag | missing_meta_tag | multiple_meta_tags |
empty_meta_tag | meta_tag_after_action, chinese_characters, empty_action, not_admissible.

Matching against the admissible list ignores case, repeated whitespace, surrounding quotes or
backticks and a trailing period ("'Go to  Cabinet 1.'" matches "go to cabinet 1"); the action
returned is then the admissible list's own spelling, otherwise the written action cleaned the same way,
case kept. With `admissible=None` (ScienceWorld lists no actions) `admissible` is None and any non-empty
action is sent.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

MISSING_ACTION_TAG = "missing_action_tag"
MULTIPLE_ACTION_TAGS = "multiple_action_tags"
EMPTY_ACTION = "empty_action"
NOT_ADMISSIBLE = "not_admissible"
MISSING_THINK_TAG = "missing_think_tag"
MISSING_META_TAG = "missing_meta_tag"
MULTIPLE_META_TAGS = "multiple_meta_tags"
EMPTY_META_TAG = "empty_meta_tag"
META_TAG_AFTER_ACTION = "meta_tag_after_action"
CHINESE_CHARACTERS = "chinese_characters"
INVALID_REASONS = (
    MISSING_ACTION_TAG,
    MULTIPLE_ACTION_TAGS,
    MISSING_THINK_TAG,
    MISSING_META_TAG,
    MULTIPLE_META_TAGS,
    EMPTY_META_TAG,
    META_TAG_AFTER_ACTION,
    CHINESE_CHARACTERS,
    EMPTY_ACTION,
    NOT_ADMISSIBLE,
)
META_TAGS = ("planning", "explore", "reflection", "monitor")
# What happens to a well-formed action that is not on the admissible list (see the module docstring).
INADMISSIBLE_MODES = ("env", "invalid")

# What the agent is told after an invalid output (Episode puts it in the next observation).
REASON_TEXT = {
    MISSING_ACTION_TAG: "no <action>...</action> block",
    MULTIPLE_ACTION_TAGS: "more than one <action> block",
    MISSING_THINK_TAG: "no <think>...</think> block",
    MISSING_META_TAG: "no <planning>, <explore>, <reflection> or <monitor> block before the action",
    MULTIPLE_META_TAGS: "more than one <planning>/<explore>/<reflection>/<monitor> block",
    EMPTY_META_TAG: "the <planning>/<explore>/<reflection>/<monitor> block is empty",
    META_TAG_AFTER_ACTION: "the <planning>/<explore>/<reflection>/<monitor> block comes after the action",
    CHINESE_CHARACTERS: "the answer contains Chinese characters",
    EMPTY_ACTION: "the <action> block is empty",
    NOT_ADMISSIBLE: "that action is not one of the admissible actions",
}

_ACTION_OPEN = re.compile(r"<action>", re.I)
_ACTION_CLOSE = re.compile(r"</action>", re.I)
_ACTION_BLOCK = re.compile(r"<action>(.*?)</action>", re.I | re.S)
_THINK_BLOCK = re.compile(r"<think>(.*?)</think>", re.I | re.S)
_META_BLOCK = re.compile(r"<(planning|explore|reflection|monitor)>(.*?)</\1>", re.I | re.S)
_PLANNING_BLOCK = re.compile(r"<planning>(.*?)</planning>", re.I | re.S)
_ANY_TAG = re.compile(r"<[^<>]*>")
_CHINESE = re.compile(r"[\u4e00-\u9fff]")
_SPACES = re.compile(r"\s+")


@dataclass
class ParsedOutput:
    """One parsed model output.

    `action` is what to send to the env (set only when `valid`); `raw_action` is the text inside the
    action block as written (stripped; None without exactly one block); `admissible` says whether the
    action is on the admissible list (None when there is no list or the format is invalid).
    """

    action: str | None
    think: str
    tag: str | None
    valid: bool
    reason: str | None
    raw_action: str | None = None
    admissible: bool | None = None


def clean_action(text: str) -> str:
    """Collapse whitespace and strip surrounding quotes/backticks and a trailing period."""
    s = _SPACES.sub(" ", text).strip()
    while len(s) >= 2 and s[0] == s[-1] and s[0] in "'\"`":
        s = s[1:-1].strip()
    return s.rstrip(".").strip()


def normalize_action(text: str) -> str:
    """The key used to compare an action with the admissible list."""
    return clean_action(text).lower()


def planning_content(text: str) -> str | None:
    """The first non-empty `<planning>` block of any output, valid or not (RLVMR updates the plan it
    shows from every output that has one), else None."""
    found = _PLANNING_BLOCK.search(text)
    inner = found.group(1).strip() if found else ""
    return inner or None


def parse_output(
    text: str,
    admissible: Sequence[str] | None,
    meta_reasoning: bool = False,
    inadmissible_action: str = "env",
) -> ParsedOutput:
    """Parse one completion; see the module docstring for the format and the order of checks."""
    if inadmissible_action not in INADMISSIBLE_MODES:
        raise ValueError(f"inadmissible_action={inadmissible_action!r} must be one of {INADMISSIBLE_MODES}")
    blocks = list(_ACTION_BLOCK.finditer(text))
    if not blocks:
        return ParsedOutput(None, "", None, False, MISSING_ACTION_TAG)
    if len(blocks) > 1 or len(_ACTION_OPEN.findall(text)) > 1 or len(_ACTION_CLOSE.findall(text)) > 1:
        return ParsedOutput(None, "", None, False, MULTIPLE_ACTION_TAGS)
    block = blocks[0]
    raw = block.group(1).strip()

    tag: str | None = None
    if meta_reasoning:
        metas = list(_META_BLOCK.finditer(text))
        if not metas:
            return ParsedOutput(None, "", None, False, MISSING_META_TAG, raw)
        if len(metas) > 1:
            return ParsedOutput(None, "", None, False, MULTIPLE_META_TAGS, raw)
        meta = metas[0]
        tag, think = meta.group(1).lower(), meta.group(2).strip()
        if not _ANY_TAG.sub("", think).strip():
            return ParsedOutput(None, "", None, False, EMPTY_META_TAG, raw)
        if meta.start() > block.start():
            return ParsedOutput(None, "", None, False, META_TAG_AFTER_ACTION, raw)
    else:
        thinks = _THINK_BLOCK.findall(text)
        if not thinks:
            return ParsedOutput(None, "", None, False, MISSING_THINK_TAG, raw)
        think = "\n".join(t.strip() for t in thinks)
    if _CHINESE.search(text):
        return ParsedOutput(None, think, tag, False, CHINESE_CHARACTERS, raw)

    action = clean_action(raw)
    if not action:
        return ParsedOutput(None, think, tag, False, EMPTY_ACTION, raw)
    if admissible is None:
        return ParsedOutput(action, think, tag, True, None, raw)
    key = action.lower()
    for candidate in admissible:
        if normalize_action(candidate) == key:
            return ParsedOutput(candidate, think, tag, True, None, raw, admissible=True)
    if inadmissible_action == "env":
        return ParsedOutput(action, think, tag, True, None, raw, admissible=False)
    return ParsedOutput(None, think, tag, False, NOT_ADMISSIBLE, raw, admissible=False)
