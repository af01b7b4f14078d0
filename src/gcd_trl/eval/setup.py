"""An evaluation from its config: check everything that needs no model or env, then load the policy and
play. `gcd-trl eval` is `prepare` then `run`.

`prepare` checks config keys and types, the prompt template, the golden-rules file, the model path, the
split and its data directory, and that the output directory holds either nothing or this same evaluation
(a rerun resumes it); a problem raises `ConfigError` naming it.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from gcd_trl.config import ConfigError, check_model_path
from gcd_trl.dist import process_rank, world_size
from gcd_trl.eval.config import parse_eval_config
from gcd_trl.eval.runner import EvalError, check_output_dir, eval_identity, evaluate, model_fingerprint
from gcd_trl.rollout.settings import build_tasks


def prepare(argv: list[str]):
    """Parse and check everything that needs no model. Returns (eval_args, env_args, tasks, identity extras),
    with env_args.suggestions holding the golden rules when a rules file is given."""
    ev, env = parse_eval_config(argv)
    env.load_template()
    if ev.golden_rules:
        from gcd_trl.gcd.correction import read_rules

        try:
            rules = read_rules(ev.golden_rules)
        except (ValueError, OSError, KeyError, TypeError) as err:
            raise ConfigError(f"golden_rules {ev.golden_rules}: {err}") from err
        env = dataclasses.replace(env, suggestions=rules)
    if ev.policy == "model":
        check_model_path(ev.model_name_or_path)
    if world_size() > 1 and ev.policy == "model" and ev.backend == "vllm":
        raise ConfigError(
            "backend=vllm runs in one process: launch without accelerate and use vllm_tensor_parallel_size"
        )
    tasks = build_tasks(env, "gcd-trl eval")
    extra: dict[str, Any] = {}
    if ev.policy in ("model", "openai"):
        extra.update(
            model=ev.model_name_or_path,
            max_new_tokens=ev.max_new_tokens,
            temperature=ev.temperature,
            top_p=ev.top_p,
            top_k=ev.top_k,
            seed=ev.seed,
        )
    if ev.policy == "model":
        extra.update(backend=ev.backend, model_fingerprint=model_fingerprint(ev.model_name_or_path))
    if ev.policy == "random":
        extra["seed"] = ev.seed
    identity = eval_identity(
        env,
        tasks,
        policy=ev.policy,
        num_samples=ev.num_samples,
        meta_reasoning=env.meta_reasoning,
        extra=extra,
    )
    try:
        check_output_dir(ev.output_dir, identity)
    except EvalError as err:
        raise ConfigError(f"output_dir: {err}") from err
    return ev, env, tasks, extra


def run(ev, env, tasks, extra) -> dict:
    """Load the policy and evaluate (the part of `gcd-trl eval` after `prepare`); returns the report."""
    from gcd_trl.eval.policies import build_policy

    rank, world = process_rank(), world_size()
    if ev.policy == "model" and ev.backend == "hf":
        import torch

        if not torch.cuda.is_available() or (ev.device or "").startswith("cpu"):
            # the env workers need CPU too: oversubscribed torch threads made generation ~7x slower on 2 cores
            torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        elif world > 1 and ev.device is None:
            ev = dataclasses.replace(ev, device=f"cuda:{int(os.environ.get('LOCAL_RANK', rank))}")
    policy = build_policy(ev, meta_reasoning=bool(env.meta_reasoning))
    return evaluate(
        policy,
        tasks,
        env,
        ev.output_dir,
        num_samples=ev.num_samples,
        meta_reasoning=bool(env.meta_reasoning),
        label=ev.row_label,
        identity=extra,
        progress=ev.progress and rank == 0,
        shard=(rank, world),
    )
