"""Turn a model's text into an env action, or say exactly why it cannot be one.

Format (the paper's and verl-agent's): `<think>...</think><action>...</action>`. Both blocks are
required; the reasoning block must come before the action block, and text after `</action>` is ignored.
With `meta_reasoning=True` (RLVMR) the reasoning block is exactly one of `<planning>`, `<explore>`,
`<reflection>`, `<monitor>` instead; a `<think>` block is then allowed but not needed. Tags match
case-insensitively.

Checks run in this order and the first failure is the reason (one of INVALID_REASONS):
missing_action_tag, multiple_action_tags, missing_think_tag | missing_meta_tag | multiple_meta_tags,
empty_action, not_admissible.

Matching against the admissible list ignores case, repeated whitespace, surrounding quotes or
backticks and a trailing period ("'Go to  Cabinet 1.'" matches "go to cabinet 1"); the action
returned is the admissible list's own spelling. With `admissible=None` (ScienceWorld lists no actions)
any non-empty action is syntactically valid and is returned cleaned the same way, case kept.
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
INVALID_REASONS = (
    MISSING_ACTION_TAG,
    MULTIPLE_ACTION_TAGS,
    MISSING_THINK_TAG,
    MISSING_META_TAG,
    MULTIPLE_META_TAGS,
    EMPTY_ACTION,
    NOT_ADMISSIBLE,
)
META_TAGS = ("planning", "explore", "reflection", "monitor")

# What the agent is told after an invalid output (Episode puts it in the next observation).
REASON_TEXT = {
    MISSING_ACTION_TAG: "no <action>...</action> block",
    MULTIPLE_ACTION_TAGS: "more than one <action> block",
    MISSING_THINK_TAG: "no <think>...</think> block before the action",
    MISSING_META_TAG: "no <planning>, <explore>, <reflection> or <monitor> block before the action",
    MULTIPLE_META_TAGS: "more than one <planning>/<explore>/<reflection>/<monitor> block",
    EMPTY_ACTION: "the <action> block is empty",
    NOT_ADMISSIBLE: "that action is not one of the admissible actions",
}

_ACTION_OPEN = re.compile(r"<action>", re.I)
_ACTION_CLOSE = re.compile(r"</action>", re.I)
_ACTION_BLOCK = re.compile(r"<action>(.*?)</action>", re.I | re.S)
_THINK_BLOCK = re.compile(r"<think>(.*?)</think>", re.I | re.S)
_META_BLOCK = re.compile(r"<(planning|explore|reflection|monitor)>(.*?)</\1>", re.I | re.S)
_SPACES = re.compile(r"\s+")


@dataclass
class ParsedOutput:
    """One parsed model output. `action` is set only when valid; `raw_action` is what was written."""

    action: str | None
    think: str
    tag: str | None
    valid: bool
    reason: str | None
    raw_action: str | None = None


def clean_action(text: str) -> str:
    """Collapse whitespace and strip surrounding quotes/backticks and a trailing period."""
    s = _SPACES.sub(" ", text).strip()
    while len(s) >= 2 and s[0] == s[-1] and s[0] in "'\"`":
        s = s[1:-1].strip()
    return s.rstrip(".").strip()


def normalize_action(text: str) -> str:
    """The key used to compare an action with the admissible list."""
    return clean_action(text).lower()


def parse_output(text: str, admissible: Sequence[str] | None, meta_reasoning: bool = False) -> ParsedOutput:
    """Parse one completion; see the module docstring for the format and the order of checks."""
    blocks = list(_ACTION_BLOCK.finditer(text))
    if not blocks:
        return ParsedOutput(None, "", None, False, MISSING_ACTION_TAG)
    if len(blocks) > 1 or len(_ACTION_OPEN.findall(text)) > 1 or len(_ACTION_CLOSE.findall(text)) > 1:
        return ParsedOutput(None, "", None, False, MULTIPLE_ACTION_TAGS)
    block = blocks[0]
    raw = block.group(1).strip()
    before = text[: block.start()]

    tag: str | None = None
    if meta_reasoning:
        metas = list(_META_BLOCK.finditer(before))
        if not metas:
            return ParsedOutput(None, "", None, False, MISSING_META_TAG, raw)
        if len(metas) > 1:
            return ParsedOutput(None, "", None, False, MULTIPLE_META_TAGS, raw)
        tag, think = metas[0].group(1).lower(), metas[0].group(2).strip()
    else:
        thinks = _THINK_BLOCK.findall(before)
        if not thinks:
            return ParsedOutput(None, "", None, False, MISSING_THINK_TAG, raw)
        think = "\n".join(t.strip() for t in thinks)

    action = clean_action(raw)
    if not action:
        return ParsedOutput(None, think, tag, False, EMPTY_ACTION, raw)
    if admissible is None:
        return ParsedOutput(action, think, tag, True, None, raw)
    key = action.lower()
    for candidate in admissible:
        if normalize_action(candidate) == key:
            return ParsedOutput(candidate, think, tag, True, None, raw)
    return ParsedOutput(None, think, tag, False, NOT_ADMISSIBLE, raw)
