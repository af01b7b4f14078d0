"""Prompt templates as plain text files, so prompts can be edited without touching code.

A template is Python `str.format` text with plain `{name}` placeholders (write `{{` and `}}` for literal
braces). Each template has a kind that fixes which placeholders it may use and which it must use;
`load_template` checks this when the file is read, so a typo fails at start-up, naming the file and line.

Rendering drops a template line when an optional placeholder on it has nothing to show. That keeps
prompts natural without separate "first step" templates: the guideline line disappears when there are
no suggestions, the "Prior to this step ..." line at the first step (or with history_length=0), and the
"Your current plan is" line before the agent has made a plan (RLVMR).

Built-in templates (files next to this module):
- alfworld, scienceworld: the GCD paper's agent prompts (appendix A.4);
- alfworld_rlvmr, scienceworld_rlvmr: the same with RLVMR's meta-reasoning tags
  (<planning>, <explore>, <reflection>, <monitor>) in place of <think>, and RLVMR's history: its
  `env_manager.build_text_obs` shows every past step (ALFWorld: observation and action; ScienceWorld:
  every action, the last 2 with their observations) plus the last 3 full answers ({reasoning_history});
- critic, suggestion: the paper's critic and golden-rule prompts (used by GCD).

How much history a template shows by default is in HISTORY_DEFAULTS (`history_defaults(name)`); the run
config can override each value (EnvArguments history_length, history_older_actions, reasoning_history).
"""

from __future__ import annotations

import functools
import string
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

BUILTIN_TEMPLATES = {
    "alfworld": "agent",
    "scienceworld": "agent",
    "alfworld_rlvmr": "agent",
    "scienceworld_rlvmr": "agent",
    "critic": "critic",
    "suggestion": "suggestion",
    # compact variants for tiny CPU models (same placeholders, a fraction of the tokens): docs/sft.md
    "alfworld_compact": "agent",
    "alfworld_rlvmr_compact": "agent",
    "scienceworld_compact": "agent",
    "critic_compact": "critic",
}


@dataclass(frozen=True)
class TemplateKind:
    """Placeholders a kind of template may use, must use (all of / one of), and may leave empty."""

    allowed: frozenset[str]
    required: frozenset[str]
    one_of: frozenset[str] = frozenset()
    optional: frozenset[str] = frozenset()


KINDS: dict[str, TemplateKind] = {
    "agent": TemplateKind(
        allowed=frozenset(
            {
                "task_description",
                "suggestions",
                "step_count",
                "history_length",
                "action_history",
                "current_step",
                "current_observation",
                "admissible_actions",
                "available_actions",
                "plan",
                "reasoning_history",
            }
        ),
        required=frozenset({"task_description", "current_observation"}),
        one_of=frozenset({"admissible_actions", "available_actions"}),
        optional=frozenset({"suggestions", "action_history", "plan", "reasoning_history"}),
    ),
    "critic": TemplateKind(
        allowed=frozenset({"problem", "response"}), required=frozenset({"problem", "response"})
    ),
    "suggestion": TemplateKind(
        allowed=frozenset({"advice_list", "theme"}),
        required=frozenset({"advice_list"}),
        optional=frozenset({"theme"}),
    ),
}


class TemplateError(ValueError):
    """A template that cannot be used: the message names the file (or template) and the problem."""


@dataclass(frozen=True)
class HistoryDefaults:
    """How much of the past an agent template shows when the run config does not say.

    `history_length`: (observation, action) pairs shown, -1 for all; `older_actions`: also list the actions
    of the steps before that window; `reasoning_history`: the last N full answers (needs the
    {reasoning_history} placeholder).
    """

    history_length: int = 2
    older_actions: bool = False
    reasoning_history: int = 0


# verl-agent's env.history_length is 2; RLVMR's env_manager shows the full ALFWorld history, every
# ScienceWorld action with the last 2 observations, and (meta_think) the last 3 outputs.
HISTORY_DEFAULTS = {
    "alfworld": HistoryDefaults(2, False, 0),
    "scienceworld": HistoryDefaults(2, False, 0),
    "alfworld_rlvmr": HistoryDefaults(-1, False, 3),
    "scienceworld_rlvmr": HistoryDefaults(2, True, 3),
}


def history_defaults(name_or_path: str | Path, text: str | None = None) -> HistoryDefaults:
    """The history a template shows by default: HISTORY_DEFAULTS for built-ins; for a user file two
    pairs, plus the last 3 answers when it uses {reasoning_history}."""
    name = str(name_or_path)
    if name in HISTORY_DEFAULTS:
        return HISTORY_DEFAULTS[name]
    text = load_template(name) if text is None else text
    uses_reasoning = any("reasoning_history" in names for _, names in _analyse(text, "agent"))
    return HistoryDefaults(2, False, 3 if uses_reasoning else 0)


def default_agent_template(env: str, meta_reasoning: bool = False) -> str:
    """The built-in agent template name for an env ("alfworld" or "scienceworld")."""
    return f"{env}_rlvmr" if meta_reasoning else env


def agent_template_name(prompt_template: str | None, env: str, meta_reasoning: bool = False) -> str:
    """The agent prompt a run uses: `prompt_template` when set, else the env's built-in one (RLVMR's with
    meta-reasoning). Every command and builder resolves the template through this one rule."""
    return prompt_template or default_agent_template(env, meta_reasoning)


def load_template(name_or_path: str | Path, kind: str | None = None) -> str:
    """Read a built-in template by name, or a user template file, and validate its placeholders.

    `kind` ("agent", "critic", "suggestion") is implied for built-in names; for a file it defaults to
    "agent". Built-in names win over files of the same name (write ./alfworld for such a file).
    """
    name = str(name_or_path)
    if name in BUILTIN_TEMPLATES:  # a file named like a built-in: pass it as ./name
        source = f"built-in template {name!r}"
        text = resources.files(__package__).joinpath(f"{name}.txt").read_text(encoding="utf-8")
        kind = kind or BUILTIN_TEMPLATES[name]
    else:
        path = Path(name).expanduser()
        if not path.is_file():
            raise TemplateError(
                f"prompt template {name!r} is neither a built-in template ({', '.join(BUILTIN_TEMPLATES)}) "
                "nor an existing file"
            )
        source = str(path)
        text = path.read_text(encoding="utf-8")
        kind = kind or "agent"
    text = text.strip()
    validate_template(text, kind, source=source)
    return text


def validate_template(text: str, kind: str, source: str = "template") -> None:
    """Raise TemplateError naming `source` if `text` is not a usable template of `kind`."""
    if kind not in KINDS:
        raise TemplateError(f"unknown template kind {kind!r}; expected one of {sorted(KINDS)}")
    _analyse(text, kind, source)


@functools.lru_cache(maxsize=64)
def _analyse(text: str, kind: str, source: str = "template") -> tuple[tuple[str, frozenset[str]], ...]:
    """Split a template into lines with the placeholders each uses, checking every placeholder."""
    spec = KINDS[kind]
    lines: list[tuple[str, frozenset[str]]] = []
    used: set[str] = set()
    for lineno, line in enumerate(text.split("\n"), start=1):
        names: set[str] = set()
        try:
            fields = list(string.Formatter().parse(line))
        except ValueError as err:
            raise TemplateError(
                f"{source}, line {lineno}: {err} (write '{{{{' and '}}}}' for literal braces)"
            ) from None
        for _, field, fmt, conv in fields:
            if field is None:
                continue
            if not field.isidentifier() or fmt or conv:
                shown = "{" + field + (f"!{conv}" if conv else "") + (f":{fmt}" if fmt else "") + "}"
                raise TemplateError(
                    f"{source}, line {lineno}: placeholder {shown} is not a plain name like {{task_description}}"
                )
            if field not in spec.allowed:
                raise TemplateError(
                    f"{source}, line {lineno}: unknown placeholder {{{field}}} for a {kind} template; "
                    f"known: {', '.join('{' + n + '}' for n in sorted(spec.allowed))}"
                )
            names.add(field)
        used |= names
        lines.append((line, frozenset(names)))
    missing = sorted(spec.required - used)
    if missing:
        raise TemplateError(f"{source}: missing required placeholder {{{missing[0]}}} for a {kind} template")
    if spec.one_of and not spec.one_of & used:
        alternatives = " or ".join("{" + n + "}" for n in sorted(spec.one_of))
        raise TemplateError(f"{source}: missing required placeholder {alternatives} for a {kind} template")
    return tuple(lines)


def render_template(template: str, kind: str, **values: Any) -> str:
    """Fill `template`, dropping lines whose optional placeholders are empty (see module docstring)."""
    validate_template(template, kind)
    spec = KINDS[kind]
    lines = _analyse(template, kind)
    kept = []
    for line, names in lines:
        absent = sorted(n for n in names if n not in values)
        if absent:
            raise TemplateError(f"no value given for placeholder {{{absent[0]}}}")
        if any(n in spec.optional and str(values[n]).strip() == "" for n in names):
            continue
        kept.append(line)
    rendered = "\n".join(kept).format(**values)
    return "\n".join(line.rstrip() for line in rendered.split("\n"))


def format_suggestions(suggestions: str | Sequence[str] | None) -> str:
    """Golden rules as prompt text: a list becomes numbered lines; empty gives ""."""
    if not suggestions:
        return ""
    if isinstance(suggestions, str):
        return suggestions.strip()
    rules = [s.strip() for s in suggestions if s and s.strip()]
    return "".join(f"\n{i}. {rule}" for i, rule in enumerate(rules, start=1))


def format_history(
    history: Sequence[tuple[str, str]], history_length: int, older_actions: bool = False
) -> tuple[str, int]:
    """The last `history_length` (observation, action) pairs (-1: all), numbered by their step, and how
    many. With `older_actions` the steps before that window are listed by their action alone (RLVMR's
    ScienceWorld prompt). history_length 0 shows nothing."""
    if history_length == 0 or not history:
        return "", 0
    history = list(history)
    window = history if history_length < 0 else history[-history_length:]
    first = len(history) - len(window) + 1
    older = (
        "".join(f"\n[Action {i}: '{act}']" for i, (_, act) in enumerate(history[: first - 1], start=1))
        if older_actions
        else ""
    )
    text = older + "".join(
        f"\n[Observation {first + i}: '{obs}', Action {first + i}: '{act}']"
        for i, (obs, act) in enumerate(window)
    )
    return text, len(window)


def format_reasoning(history: Sequence[tuple[str, str]], outputs: Sequence[str], count: int) -> str:
    """The last `count` full answers with the observation each answered (RLVMR's "recent reasoning
    process"); `outputs[i]` is the answer given at step i+1, `history[i]` its (observation, action)."""
    if count <= 0 or not outputs:
        return ""
    start = max(len(outputs) - count, 0)
    return "".join(
        f"\n[Observation {i + 1}: '{history[i][0]}', output: '{outputs[i]}']"
        for i in range(start, len(outputs))
    )


def format_actions(admissible_actions: Sequence[str] | None, env_info: dict[str, Any] | None = None) -> str:
    """Admissible actions as a quoted list; for ScienceWorld (None) templates plus objects, as RLVMR does.

    ALFWorld's "help" is left out of the list shown (verl-agent's and RLVMR's `build_text_obs` drop it); it
    stays admissible."""
    if admissible_actions is not None:
        return ", ".join(f"'{a}'" for a in admissible_actions if a != "help")
    info = env_info or {}
    missing = [k for k in ("action_templates", "objects") if k not in info]
    if missing:
        raise ValueError(
            f"admissible_actions is None and env_info has no {missing[0]!r}: an env that does not enumerate "
            "actions must report 'action_templates' and 'objects' in StepResult.info"
        )
    templates = ", ".join(str(t) for t in info["action_templates"])
    objects = ", ".join(str(o) for o in info["objects"])
    return f"Valid actions: {templates}\nReplace OBJ (or LOC) with one of these objects: {objects}"


def render_agent_prompt(
    template: str,
    *,
    task_description: str,
    observation: str,
    admissible_actions: Sequence[str] | None,
    history: Sequence[tuple[str, str]],
    step_count: int,
    history_length: int,
    suggestions: str | Sequence[str] = "",
    env_info: dict[str, Any] | None = None,
    plan: str = "",
    outputs: Sequence[str] = (),
    reasoning_history: int = 0,
    older_actions: bool = False,
) -> str:
    """The user message for one agent step.

    `history` is every (observation shown, action taken) pair so far, oldest first; the last
    `history_length` are shown (-1: all; `older_actions`: the earlier ones by action). `outputs` holds the
    full answers of those steps; the last `reasoning_history` fill {reasoning_history}. `step_count` is
    the number of steps already taken (invalid ones count).
    """
    if len(outputs) > len(history):
        raise ValueError(f"{len(outputs)} outputs for {len(history)} history steps")
    action_history, shown = format_history(history, history_length, older_actions)
    actions = format_actions(admissible_actions, env_info)
    return render_template(
        template,
        "agent",
        task_description=task_description.strip(),
        suggestions=format_suggestions(suggestions),
        step_count=step_count,
        history_length=shown,
        action_history=action_history,
        current_step=step_count + 1,
        current_observation=observation.strip(),
        admissible_actions=actions,
        available_actions=actions,
        plan=plan.strip(),
        reasoning_history=format_reasoning(history, outputs, reasoning_history),
    )


def render_critic_prompt(template: str, *, problem: str, response: str) -> str:
    """The GCD critic (judge) prompt for one agent step."""
    return render_template(template, "critic", problem=problem, response=response)


def render_suggestion_prompt(template: str, *, advice_list: str | Sequence[str], theme: str = "") -> str:
    """The golden-rule prompt for one cluster of critic advice."""
    if not isinstance(advice_list, str):
        advice_list = "".join(f"\n- {a.strip()}" for a in advice_list)
    return render_template(template, "suggestion", advice_list=advice_list, theme=theme)
