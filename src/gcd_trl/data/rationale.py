"""The text around an expert's action: the agent's completion and the judge's critique.

Experts give actions only. The reasoning written before an action comes from one of:
- `template`: the paper-style sentence of `rollout.expert.expert_think` (what `gcd-trl env expert` writes);
- `short`: a few words per action (`short_think`), for tiny CPU models where every token costs;
- `endpoint`: an OpenAI-compatible chat model asked for the reasoning that leads to the action (as RLVMR
  made its cold-start data), through `gcd.external.ExternalJudge` (disk cache, budget, faults counted);
  a failed request falls back to the template and is counted.

The RLVMR variant writes the reasoning inside a meta tag: <planning> at the first step, <reflection>
right after an action that did nothing (the env answered an unknown command), else <explore> while
searching and <monitor> otherwise (`rollout.expert.expert_tag`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from gcd_trl.rollout.expert import expert_completion, expert_tag, expert_think

THINK_STYLES = ("template", "short", "endpoint")
_TAGS = re.compile(r"</?[a-zA-Z_]+>")


def short_think(action: str) -> str:
    """A few words that say what the action is for (the `short` style): "check drawer 2".

    Measured: prefixing the current place ("at sidetable 1: check drawer 2") made the tiny model copy
    that place into a "go to" of where it already stands (inadmissible), so the think names the target only.
    """
    a = " ".join(action.split())
    low = a.lower()
    words = low.split(" ")
    if low.startswith("go to "):
        return f"check {a[6:]}"
    if words[0] == "open":
        return f"look inside {a[5:]}"
    if words[0] == "take" and " from " in low:
        return f"take {a[5:].split(' from ')[0]}"
    if words[0] == "put" and " in/on " in low:
        obj, recep = a[4:].split(" in/on ", 1)
        return f"put {obj} in {recep}"
    if words[0] == "move" and " to " in low:
        obj, recep = a[5:].split(" to ", 1)
        return f"put {obj} in {recep}"
    if words[0] in ("heat", "cool", "clean") and " with " in low:
        return f"{words[0]} {a.split(' ', 1)[1].split(' with ')[0]}"
    if low == "look" or low == "look around":
        return "look around"
    if low == "inventory":
        return "check inventory"
    return a


PREMATURE_FINISH_THINK = "The task is already complete, so nothing is left to do; I just look around."


@dataclass
class Rationales:
    """Writes completions for expert actions in one style; counts endpoint use and fallbacks."""

    style: str = "template"
    meta_reasoning: bool = False
    endpoint: Any = None  # an ExternalJudge (its `complete`), needed for style "endpoint"
    stats: dict[str, int] = field(default_factory=lambda: {"endpoint": 0, "endpoint_fallback": 0})

    def __post_init__(self) -> None:
        if self.style not in THINK_STYLES:
            raise ValueError(f"think style {self.style!r} is not one of {THINK_STYLES}")
        if self.style == "endpoint" and self.endpoint is None:
            raise ValueError("think style 'endpoint' needs an endpoint (model and base URL)")

    def tag(self, action: str, step: int, after_mistake: bool) -> str:
        if not self.meta_reasoning:
            return "think"
        if after_mistake and step > 0:
            return "reflection"
        return expert_tag(action, step)

    def completion(
        self,
        action: str,
        *,
        task_description: str,
        step: int,
        after_mistake: bool = False,
        prompt: str = "",
    ) -> str:
        """The completion that writes `action` (a prompt is needed for the endpoint style)."""
        tag = self.tag(action, step, after_mistake)
        text = None
        if self.style == "endpoint":
            text = self._ask(prompt, action, tag)
        elif self.style == "short":
            text = ("that did nothing; " if after_mistake else "") + short_think(action)
        if text is None:  # the template style, or the endpoint failed
            if not after_mistake:
                return expert_completion(
                    action, task_description=task_description, step=step, meta_reasoning=self.meta_reasoning
                )
            text = "My last action did nothing, so I change course. " + expert_think(
                action, task_description, step
            )
        return f"<{tag}>{text}</{tag}><action>{action}</action>"

    def premature_finish(self, action: str) -> str:
        """A completion claiming the task is done, then a no-op action."""
        tag = "monitor" if self.meta_reasoning else "think"
        return f"<{tag}>{PREMATURE_FINISH_THINK}</{tag}><action>{action}</action>"

    def _ask(self, prompt: str, action: str, tag: str) -> str | None:
        question = (
            f"{prompt}\n\nThe correct next action is: {action}\n"
            f"Write the short reasoning (one or two sentences) that leads to this action"
            + (" (a plan of the whole task, step by step)" if tag == "planning" else "")
            + ". Answer with the reasoning only, without tags and without naming other actions."
        )
        answers = self.endpoint.complete([question], n=1)[0]
        text = _TAGS.sub("", answers[0]).strip() if answers else ""
        if not text:
            self.stats["endpoint_fallback"] += 1
            return None
        self.stats["endpoint"] += 1
        return " ".join(text.split())
