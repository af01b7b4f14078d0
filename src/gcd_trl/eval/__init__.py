"""Evaluation on the benchmark splits: `evaluate(policy, tasks, settings, output_dir)` plays every task with
a model (any `Generator`), the env's expert or a random policy, writes each episode as it ends, resumes,
and reports in the layout of the paper's Table 1. `gcd-trl eval` is its command line."""

from gcd_trl.eval.policies import ExpertPolicy, GeneratorPolicy, Policy, RandomPolicy, as_policy, build_policy
from gcd_trl.eval.report import merge_reports, read_paper, summarize
from gcd_trl.eval.runner import EvalError, check_output_dir, eval_identity, evaluate, read_episodes

__all__ = [
    "EvalError",
    "ExpertPolicy",
    "GeneratorPolicy",
    "Policy",
    "RandomPolicy",
    "as_policy",
    "build_policy",
    "check_output_dir",
    "eval_identity",
    "evaluate",
    "merge_reports",
    "read_episodes",
    "read_paper",
    "summarize",
]
