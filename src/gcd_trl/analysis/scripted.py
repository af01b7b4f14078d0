"""Step records with known mistakes, played through the real env: test data for the analyses.

An expert plays each game; in the odd-numbered episodes two steps of every `mistake_every` are
mistakes: the previous action again when it is still admissible, else "look" (so the second mistake
repeats the first, as in the echo trap), else a random admissible action. The expert replans from wherever the mistake led. Records come
from the same `Episode` code as the trainer's, in the step-record schema (one group per game, one traj
per episode, `won` from the env), so GCD's label rules and every analysis read them unchanged.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from gcd_trl.envs.base import Task
from gcd_trl.prompts import default_agent_template, load_template
from gcd_trl.rollout.episode import Episode
from gcd_trl.rollout.expert import expert_completion


def scripted_records(
    games: Sequence[str],
    *,
    episodes_per_game: int = 2,
    mistake_every: int = 4,
    max_steps: int = 20,
    history_length: int = 2,
    template: str | None = None,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Episode e of a game plays the expert with mistakes when e is odd; returns every step record."""
    from gcd_trl.envs.alfworld import AlfWorldEnv, task_type_of

    text = template if template is not None else load_template(default_agent_template("alfworld"))
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    with AlfWorldEnv() as env:
        for g, game in enumerate(games):
            task = Task(env="alfworld", split="scripted", game=str(game), task_type=task_type_of(game))
            for e in range(episodes_per_game):
                first = env.reset(task)
                ep = Episode(
                    task, first, text, max_steps=max_steps, history_length=history_length, group=g, traj=e
                )
                while not ep.done:
                    ep.prompt()
                    admissible = ep.state.admissible_actions or []
                    action = env.expert_action()
                    prev = ep.steps[-1].action if ep.steps else None
                    if e % 2 == 1 and ep.num_steps % mistake_every >= mistake_every - 2 and admissible:
                        fallback = "look" if "look" in admissible else rng.choice(admissible)
                        action = prev if prev in admissible else fallback
                    if action is None:
                        break
                    completion = expert_completion(
                        action, task_description=ep.task_description, step=ep.num_steps
                    )
                    sent = ep.apply(completion)
                    ep.observe(env.step(sent) if sent is not None else None)
                for s in ep.steps:
                    out.append({**s.to_dict(), "task": task.key})
    return out
