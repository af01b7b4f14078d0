"""What acts in an evaluation. A policy answers every live episode of a turn at once (one batched
generation per turn), with one `Generation` each, in order:

- `GeneratorPolicy`: a model behind any `Generator` (HF, vLLM, an OpenAI-compatible endpoint, or the
  trainer's own generation): the episodes' prompts in, completions out.
- `ExpertPolicy`: the env's expert (ALFWorld: the handcoded expert handing over to the planner when the
  step budget runs short; ScienceWorld: the gold path), asked in the env pool's worker processes and
  written as the model would write it.
- `RandomPolicy`: uniform over the admissible actions the prompt shows (ALFWorld); ScienceWorld lists no admissible
  actions, so a uniform action template is filled with uniform objects in view (RLVMR's action space).
  Seeded per (seed, task, sample): an episode's draws do not depend on which others share its turns.
"""

from __future__ import annotations

import random
import re
import weakref
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from gcd_trl.generation import Generation, Generator
from gcd_trl.rollout.episode import Episode
from gcd_trl.rollout.expert import expert_completion

_SLOT = re.compile(r"\b(OBJ|LOC)\b")


@runtime_checkable
class Policy(Protocol):
    """Answers the live episodes of one turn (`slots` are their env pool slots)."""

    name: str

    def act(self, episodes: list[Episode], slots: list[int], pool: Any) -> list[Generation]: ...


def _text(action: str, meta_reasoning: bool, why: str) -> str:
    tag = "explore" if meta_reasoning else "think"
    return f"<{tag}>{why}</{tag}><action>{action}</action>"


class GeneratorPolicy:
    """A model: prompts through `generate` (a `Generator`'s method or any prompts -> Generations callable)."""

    def __init__(self, generate: Callable[[list[str]], list[Generation]], name: str = "model") -> None:
        self.generate, self.name = generate, name

    def act(self, episodes: list[Episode], slots: list[int], pool: Any) -> list[Generation]:
        return self.generate([ep.prompt() for ep in episodes])


class ExpertPolicy:
    """The env's expert, asked for every live slot in one pool call."""

    name = "expert"
    budgeted_envs = True  # the pool's envs must keep the expert within the episode's step budget

    def __init__(self, meta_reasoning: bool = False) -> None:
        self.meta_reasoning = meta_reasoning
        self.no_action = 0  # turns the expert had nothing to say (written as an invalid output)

    def act(self, episodes: list[Episode], slots: list[int], pool: Any) -> list[Generation]:
        actions = pool.expert_action(slots)
        out = []
        for ep, slot in zip(episodes, slots):
            action = actions.get(slot)
            if action is None:
                self.no_action += 1
                text = ""
            else:
                text = expert_completion(
                    action,
                    task_description=ep.task_description,
                    step=ep.num_steps,
                    meta_reasoning=self.meta_reasoning,
                )
            out.append(Generation([], [], text, False))
        return out


class RandomPolicy:
    """Uniform over the admissible actions; see the module docstring for ScienceWorld."""

    name = "random"

    def __init__(self, seed: int = 0, meta_reasoning: bool = False) -> None:
        self.seed, self.meta_reasoning = seed, meta_reasoning
        self._rngs: weakref.WeakKeyDictionary[Episode, random.Random] = weakref.WeakKeyDictionary()

    def _rng(self, ep: Episode) -> random.Random:
        if ep not in self._rngs:
            self._rngs[ep] = random.Random(f"{self.seed}|{ep.task.seed_key}|{ep.traj}")
        return self._rngs[ep]

    def choose(self, ep: Episode) -> str:
        rng, state = self._rng(ep), ep.state
        # the actions the prompt lists (ALFWorld's "help" is not shown, as in verl-agent and RLVMR)
        shown = [a for a in state.admissible_actions or [] if a != "help"]
        if shown:
            return rng.choice(shown)
        templates = state.info.get("action_templates") or ["look around"]
        objects = state.info.get("objects") or []
        template = rng.choice(templates)
        if not objects:
            return _SLOT.sub("", template).strip() or "look around"
        return _SLOT.sub(lambda _: rng.choice(objects), template)

    def act(self, episodes: list[Episode], slots: list[int], pool: Any) -> list[Generation]:
        why = "I pick an action at random."
        return [
            Generation([], [], _text(self.choose(ep), self.meta_reasoning, why), False) for ep in episodes
        ]


def as_policy(policy: Policy | Generator | Callable[[list[str]], list[Generation]]) -> Policy:
    """A Policy for whatever `evaluate` was given: a Policy, a Generator, or a generate callable."""
    if isinstance(policy, Policy):
        return policy
    if isinstance(policy, Generator):
        return GeneratorPolicy(policy.generate, name=type(policy).__name__)
    if callable(policy):
        return GeneratorPolicy(policy)
    raise TypeError(f"expected a Policy, a Generator or a generate callable, got {type(policy).__name__}")


def build_policy(ev: Any, meta_reasoning: bool = False) -> Policy:
    """The policy an `EvalArguments` names (loads the model here)."""
    from gcd_trl.generation import HFGenerator, OpenAIGenerator, SamplingSettings, VLLMGenerator

    if ev.policy == "expert":
        return ExpertPolicy(meta_reasoning)
    if ev.policy == "random":
        return RandomPolicy(ev.seed, meta_reasoning)
    sampling = SamplingSettings(
        max_new_tokens=ev.max_new_tokens,
        temperature=ev.temperature,
        top_p=ev.top_p,
        top_k=ev.top_k,
        seed=ev.seed,
    )
    if ev.policy == "openai":
        gen: Any = OpenAIGenerator(
            ev.base_url,
            ev.model_name_or_path,
            ev.api_key_env,
            sampling,
            concurrency=ev.concurrency,
            max_retries=ev.max_retries,
            timeout=ev.request_timeout,
        )
    elif ev.backend == "vllm":
        llm_kwargs: dict[str, Any] = dict(
            tensor_parallel_size=ev.vllm_tensor_parallel_size,
            gpu_memory_utilization=ev.vllm_gpu_memory_utilization,
            dtype=ev.dtype,
            trust_remote_code=ev.trust_remote_code,
        )
        if ev.vllm_max_model_len:
            llm_kwargs["max_model_len"] = ev.vllm_max_model_len
        gen = VLLMGenerator(ev.model_name_or_path, sampling, **llm_kwargs)
    else:
        gen = HFGenerator.from_pretrained(
            ev.model_name_or_path,
            sampling,
            dtype=ev.dtype,
            device=ev.device,
            attn_implementation=ev.attn_implementation,
            trust_remote_code=ev.trust_remote_code,
            batch_size=ev.batch_size,
        )
    return GeneratorPolicy(gen.generate, name=ev.policy)
