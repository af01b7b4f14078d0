"""Evaluation configuration: one YAML file parsed by TRL's `TrlParser` into `EvalArguments` (the policy,
its sampling and where results go) and the RL run's own `EnvArguments` (environment, split, episode rules),
so an evaluation plays by exactly the rules the policy was trained with. Any key can be overridden on the
command line as `--key value`. `part` defaults to `test` here.

Everything is checked before a model or an env loads; errors name the key (`ConfigError`).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path

from gcd_trl.config import ConfigError, check_at_least, check_choice, parse_dataclasses
from gcd_trl.rollout.settings import EnvArguments

POLICIES = ("model", "openai", "expert", "random")
BACKENDS = ("hf", "vllm")


@dataclass
class EvalArguments:
    """Which policy is evaluated, how it samples, and where the results go."""

    policy: str = field(default="model", metadata={"help": "model | openai | expert | random"})
    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "policy=model: a saved model directory or hub id; policy=openai: the served name."},
    )
    backend: str = field(default="hf", metadata={"help": "policy=model: hf (transformers) | vllm (offline)."})
    output_dir: str | None = field(
        default=None, metadata={"help": "Eval directory: episodes.jsonl, report.json, report.md."}
    )
    label: str | None = field(
        default=None, metadata={"help": "Row name in report tables. Default: the policy / model name."}
    )
    num_samples: int = field(
        default=1, metadata={"help": "Episodes per task (k of pass@k; use temperature > 0 with k > 1)."}
    )
    max_new_tokens: int = field(default=512, metadata={"help": "Completion tokens per step."})
    temperature: float = field(default=0.0, metadata={"help": "0 = greedy (the default)."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling (temperature > 0)."})
    top_k: int = field(default=0, metadata={"help": "Top-k sampling, 0 = off (temperature > 0)."})
    seed: int = field(default=0, metadata={"help": "Seed of sampling and of the random policy."})
    golden_rules: str | None = field(
        default=None,
        metadata={"help": "A golden-rules JSON file (gcd-trl's RuleBook) shown as {suggestions}."},
    )
    dtype: str = field(
        default="auto", metadata={"help": "Local model dtype: auto | bfloat16 | float16 | float32."}
    )
    device: str | None = field(
        default=None, metadata={"help": "HF backend device. Default: cuda if present."}
    )
    batch_size: int | None = field(
        default=None, metadata={"help": "HF backend: prompts per generate call (default: every live env)."}
    )
    attn_implementation: str | None = field(default=None, metadata={"help": "HF backend attention kernel."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow model code from the hub."})
    vllm_gpu_memory_utilization: float = field(default=0.9, metadata={"help": "vLLM's GPU memory share."})
    vllm_tensor_parallel_size: int = field(default=1, metadata={"help": "vLLM tensor parallel GPUs."})
    vllm_max_model_len: int | None = field(default=None, metadata={"help": "vLLM context length cap."})
    base_url: str | None = field(
        default=None, metadata={"help": "policy=openai: the endpoint, e.g. http://127.0.0.1:8000/v1."}
    )
    api_key_env: str = field(
        default="OPENAI_API_KEY", metadata={"help": "Env var holding the API key (never the key itself)."}
    )
    concurrency: int = field(default=8, metadata={"help": "policy=openai: requests in flight."})
    request_timeout: float = field(default=120.0, metadata={"help": "policy=openai: seconds per request."})
    max_retries: int = field(default=3, metadata={"help": "policy=openai: client retries per request."})
    progress: bool = field(default=True, metadata={"help": "Show a progress bar."})

    def __post_init__(self) -> None:
        check_choice("policy", self.policy, POLICIES)
        check_choice("backend", self.backend, BACKENDS)
        check_at_least("num_samples", self.num_samples, 1)
        check_at_least("max_new_tokens", self.max_new_tokens, 1)
        check_at_least("temperature", self.temperature, 0.0)
        check_at_least("top_k", self.top_k, 0)
        check_at_least("seed", self.seed, 0)
        check_at_least("batch_size", self.batch_size, 1)
        check_at_least("vllm_tensor_parallel_size", self.vllm_tensor_parallel_size, 1)
        check_at_least("concurrency", self.concurrency, 1)
        check_at_least("request_timeout", self.request_timeout, 0.001)
        check_at_least("max_retries", self.max_retries, 0)
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"top_p={self.top_p!r} must lie in (0, 1]")
        if not 0.0 < self.vllm_gpu_memory_utilization <= 1.0:
            raise ConfigError(
                f"vllm_gpu_memory_utilization={self.vllm_gpu_memory_utilization!r} must lie in (0, 1]"
            )
        if self.dtype not in ("auto", "bfloat16", "float16", "float32"):
            raise ConfigError(f"dtype={self.dtype!r} is not one of 'auto', 'bfloat16', 'float16', 'float32'")

    @property
    def row_label(self) -> str:
        """The row name of this policy in report tables."""
        if self.label:
            return self.label
        if self.policy in ("model", "openai") and self.model_name_or_path:
            return Path(self.model_name_or_path.rstrip("/")).name or self.model_name_or_path
        return self.policy


EVAL_DATACLASSES = (EvalArguments, EnvArguments)


def parse_eval_config(argv: list[str]) -> tuple[EvalArguments, EnvArguments]:
    """Parse `--config FILE` plus `--key value` overrides into (EvalArguments, EnvArguments) and check the
    rules that span keys. Nothing is loaded."""
    ev, env = parse_dataclasses(argv, EVAL_DATACLASSES, {"part": "test"})  # the held-out part, unless told
    env = env.resolved()  # meta_reasoning: as given, else off
    check_eval_combination(ev, env)
    return ev, env


def check_eval_combination(ev: EvalArguments, env: EnvArguments) -> None:
    """Rules that span keys, and inputs that can be checked without loading anything (files, the endpoint's
    key variable, vLLM's presence)."""
    if not ev.output_dir:
        raise ConfigError("output_dir is not set (the eval directory for episodes.jsonl and the report)")
    if ev.policy in ("model", "openai") and not ev.model_name_or_path:
        raise ConfigError(f"policy={ev.policy} needs model_name_or_path")
    if ev.policy == "openai" and not ev.base_url and not os.environ.get(ev.api_key_env):
        raise ConfigError(
            f"policy=openai without base_url talks to api.openai.com: export {ev.api_key_env} "
            "(api_key_env names the variable), or set base_url to your endpoint"
        )
    if ev.policy == "model" and ev.backend == "vllm" and importlib.util.find_spec("vllm") is None:
        raise ConfigError("backend=vllm but vllm is not installed: pip install -e '.[vllm]' (needs CUDA)")
    if ev.num_samples > 1 and ev.temperature == 0 and ev.policy in ("model", "openai"):
        raise ConfigError(
            f"num_samples={ev.num_samples} with temperature=0: greedy samples are identical; set temperature > 0"
        )
    if env.split == "all" and env.environment != "alfworld":
        raise ConfigError("split=all (every game in data_dir) applies to environment=alfworld only")
    if ev.golden_rules:
        if not Path(ev.golden_rules).is_file():
            raise ConfigError(f"golden_rules file not found: {ev.golden_rules}")
        if env.suggestions:
            raise ConfigError("set either golden_rules (a file) or suggestions (text), not both")
    if env.prompt_template and Path(env.prompt_template).suffix and not Path(env.prompt_template).is_file():
        raise ConfigError(f"prompt_template file not found: {env.prompt_template}")


def eval_config_dict(ev: EvalArguments, env: EnvArguments) -> dict:
    """The resolved values, by section (no secrets live in either dataclass)."""
    return {"eval": dataclasses.asdict(ev), "env": dataclasses.asdict(env)}
