"""One trajectory, as a small state machine: the whole per-step contract lives in this file.

    ep = Episode(task, env.reset(task), template, max_steps=30, history_length=2)
    while not ep.done:
        completion = model(ep.prompt())         # the user message for the current step
        action = ep.apply(completion)           # parse; None when the output is invalid
        ep.observe(env.step(action) if action is not None else None)

Rules:
- An invalid output never reaches the env: `apply` returns None and the caller passes None to
  `observe`. The env state is unchanged, the step still counts toward `max_steps`, and the agent's next
  observation is what the env answers an unknown command (ALFWorld "Nothing happens.", ScienceWorld "No
  known action matches that input."; `invalid_feedback="reason"` adds why), kept in the history like any
  other step. Invalid means a *format* error (rollout/parse.py). A well-formed action that is not on the
  admissible list is sent to the env like the references do (`inadmissible_action="env"`, recorded with
  `admissible=False`), or treated as invalid with `inadmissible_action="invalid"`.
- The episode is done when the env says so, when the env was aborted (`info["aborted"]`, e.g. a dead
  worker in the pool; `aborted` holds the reason), or after `max_steps` steps (`truncated`).
- History holds (observation shown, action) pairs and each full answer; the prompt shows the last
  `history_length` pairs (-1: all; `older_actions`: earlier steps by action) and the last
  `reasoning_history` answers (templates with {reasoning_history}, RLVMR's).
- Info keys in CARRIED_INFO (ScienceWorld's `action_templates`, reported at reset only) carry over
  to later steps that do not report them, so every prompt can list the actions.
- Each step leaves one StepRecord. `anchor` is the raw env observation of the state the action was
  taken in (GiGPO's state key): after an invalid output it stays the previous env observation, because
  the env state did not change. `state` is the env's key of that state (`info["state"]`: ALFWorld a
  digest of the engine's facts), which the judge's loop rule compares: one observation text ("Nothing
  happens.") is said in many states.
- With meta reasoning the plan shown ({plan}) is the latest non-empty <planning> block of any answer,
  valid or not (RLVMR's env_manager keeps every output's planning).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from gcd_trl.envs.base import StepResult, Task
from gcd_trl.prompts import render_agent_prompt
from gcd_trl.rollout.parse import (
    INADMISSIBLE_MODES,
    REASON_TEXT,
    ParsedOutput,
    parse_output,
    planning_content,
)

INVALID_OBSERVATION = "Nothing happens."
# What each env answers a command it cannot parse (what the references' env sends back after an invalid
# output, which they pass to the env as text); ScienceWorld's answer also marks an unknown action.
UNKNOWN_COMMAND = {"alfworld": "Nothing happens.", "scienceworld": "No known action matches that input."}
INVALID_FEEDBACK = ("env", "reason")
# info keys an env may report only at reset (ScienceWorld's action templates): kept for later steps
CARRIED_INFO = ("action_templates",)


def invalid_feedback(reason: str, env: str = "alfworld", mode: str = "reason") -> str:
    """The observation the agent sees after an invalid output: the env's answer to an unknown command,
    plus the reason with mode "reason"."""
    base = UNKNOWN_COMMAND.get(env, INVALID_OBSERVATION)
    if mode == "env":
        return base
    return f"{base} (Invalid output: {REASON_TEXT.get(reason, reason)}.)"


@dataclass
class StepRecord:
    """One agent step: what it saw, wrote and did, and what the env answered.

    `action` is what the env received (None for an invalid output); `raw_action` the text inside the
    action block as written; `admissible` whether the action was on the env's admissible list (False for
    an action sent anyway, or answered "No known action matches that input." by ScienceWorld; None when
    unknown or a format error); `done` means the episode ended after this step (any cause); `won` is the
    env's success flag after this step.
    """

    group: int
    traj: int
    step: int
    anchor: str
    prompt: str
    completion: str
    action: str | None
    valid: bool
    reason: str | None
    tag: str | None
    env_reward: float
    done: bool
    won: bool
    admissible: bool | None = None
    raw_action: str | None = None
    state: str | None = None  # the env's key of the state the action was taken in (the judge's loop rule)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Episode:
    """One trajectory of one task: history window, step count, prompts, parsing and step records."""

    def __init__(
        self,
        task: Task,
        first: StepResult,
        template: str,
        *,
        max_steps: int = 30,
        history_length: int = 2,
        suggestions: str | Sequence[str] = "",
        meta_reasoning: bool = False,
        group: int = 0,
        traj: int = 0,
        inadmissible_action: str = "env",
        invalid_feedback: str = "env",
        reasoning_history: int = 0,
        older_actions: bool = False,
    ) -> None:
        if max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        if history_length < -1:
            raise ValueError(f"history_length must be >= 0, or -1 for all, got {history_length}")
        if reasoning_history < 0:
            raise ValueError(f"reasoning_history must be >= 0, got {reasoning_history}")
        if inadmissible_action not in INADMISSIBLE_MODES:
            raise ValueError(
                f"inadmissible_action must be one of {INADMISSIBLE_MODES}, got {inadmissible_action!r}"
            )
        if invalid_feedback not in INVALID_FEEDBACK:
            raise ValueError(f"invalid_feedback must be one of {INVALID_FEEDBACK}, got {invalid_feedback!r}")
        self.task = task
        self.template = template
        self.max_steps = max_steps
        self.history_length = history_length
        self.reasoning_history = reasoning_history
        self.older_actions = older_actions
        self.suggestions = suggestions
        self.meta_reasoning = meta_reasoning
        self.inadmissible_action = inadmissible_action
        self.invalid_feedback = invalid_feedback
        self.group, self.traj = group, traj
        self.task_description = first.task_description
        self.steps: list[StepRecord] = []
        self.history: list[tuple[str, str]] = []
        self.outputs: list[str] = []  # each step's full answer (RLVMR's reasoning history)
        self.plan = ""  # the latest <planning> content (RLVMR templates show it)
        self.state = first  # the env's latest result: admissible actions, info, raw observation
        self.observation = first.observation  # what the agent sees now (invalid-output feedback included)
        self.score = first.score
        self.won = first.won
        self.aborted: str | None = first.info.get("aborted")
        self.done = bool(first.done or self.aborted)
        self.truncated = False
        self._prompt: str | None = None
        self._pending: tuple[str, ParsedOutput] | None = None  # (completion, parsed) awaiting observe()

    # ---- the per-step contract -------------------------------------------------------------------
    def prompt(self) -> str:
        """The user message for the current step (the same string until the step is observed)."""
        if self.done:
            raise RuntimeError("episode is done: no prompt for a finished episode")
        if self._prompt is None:
            self._prompt = render_agent_prompt(
                self.template,
                task_description=self.task_description,
                observation=self.observation,
                admissible_actions=self.state.admissible_actions,
                history=self.history,
                step_count=len(self.steps),
                history_length=self.history_length,
                suggestions=self.suggestions,
                env_info=self.state.info,
                plan=self.plan,
                outputs=self.outputs,
                reasoning_history=self.reasoning_history,
                older_actions=self.older_actions,
            )
        return self._prompt

    def apply(self, completion: str) -> str | None:
        """Parse the model's output; return the action to send to the env, or None if invalid."""
        if self.done:
            raise RuntimeError("episode is done: apply() after the end")
        if self._pending is not None:
            raise RuntimeError("apply() called twice: call observe() with the env result first")
        self.prompt()  # the record keeps the prompt this output answered
        parsed = parse_output(
            completion, self.state.admissible_actions, self.meta_reasoning, self.inadmissible_action
        )
        self._pending = (completion, parsed)
        return parsed.action if parsed.valid else None

    def observe(self, result: StepResult | None) -> None:
        """Record the env's answer to the applied action (None after an invalid output)."""
        if self._pending is None:
            raise RuntimeError("observe() without apply()")
        completion, parsed = self._pending
        if parsed.valid and result is None:
            raise ValueError("the output was valid: pass the env's StepResult for its action")
        if not parsed.valid and result is not None:
            raise ValueError("the output was invalid and must not reach the env: pass None")
        # ScienceWorld lists objects in varying order: its adapter offers an order-free anchor
        anchor, shown = self.state.info.get("anchor", self.state.observation), self.observation
        state_key = self.state.info.get("state")

        admissible = parsed.admissible
        if result is None:
            self.observation = invalid_feedback(parsed.reason or "", self.task.env, self.invalid_feedback)
            taken = parsed.raw_action or "(invalid output)"
            reward, env_done, won = 0.0, False, self.won
        else:
            carried = {
                k: self.state.info[k] for k in CARRIED_INFO if k in self.state.info and k not in result.info
            }
            if carried:
                result = replace(result, info={**result.info, **carried})
            self.state = result
            self.observation = result.observation
            self.score = result.score
            self.aborted = result.info.get("aborted")
            taken = parsed.action or ""
            reward, env_done, won = float(result.reward), bool(result.done or self.aborted), bool(result.won)
            self.won = won
            if admissible is None and result.observation.strip() == UNKNOWN_COMMAND["scienceworld"]:
                admissible = False  # ScienceWorld lists no actions; its parser's verdict is the signal
        if self.meta_reasoning:
            plan = planning_content(completion)
            if plan is not None:
                self.plan = plan

        self.history.append((shown, taken))
        self.outputs.append(completion)
        step = len(self.steps)
        self.truncated = not env_done and step + 1 >= self.max_steps
        self.done = env_done or self.truncated
        self.steps.append(
            StepRecord(
                group=self.group,
                traj=self.traj,
                step=step,
                anchor=anchor,
                prompt=self._prompt or "",
                completion=completion,
                action=parsed.action if parsed.valid else None,
                valid=parsed.valid,
                reason=parsed.reason,
                tag=parsed.tag,
                env_reward=reward,
                done=self.done,
                won=won,
                admissible=admissible,
                raw_action=parsed.raw_action,
                state=state_key,
            )
        )
        self._pending = None
        self._prompt = None

    # ---- summaries ---------------------------------------------------------------------------------
    @property
    def num_steps(self) -> int:
        return len(self.steps)

    @property
    def num_invalid(self) -> int:
        return sum(not s.valid for s in self.steps)

    @property
    def num_inadmissible(self) -> int:
        """Valid steps whose action was not admissible (sent to the env with inadmissible_action="env")."""
        return sum(s.valid and s.admissible is False for s in self.steps)

    @property
    def repeated_actions(self) -> int:
        """Steps that sent the env the same action as the step just before (a loop signal)."""
        return sum(
            1
            for prev, cur in zip(self.steps, self.steps[1:])
            if cur.action is not None and cur.action == prev.action
        )

    def summary(self) -> dict[str, Any]:
        return {
            "task": self.task.key,
            "group": self.group,
            "traj": self.traj,
            "won": self.won,
            "score": self.score,
            "steps": self.num_steps,
            "invalid": self.num_invalid,
            "inadmissible": self.num_inadmissible,
            "repeated_actions": self.repeated_actions,
            "truncated": self.truncated,
            "aborted": self.aborted,
        }
