"""Generative classification disentanglement (paper §4): step labels, the judge task, the external judge
and prompt-based correction. Plain functions over step records (`gcd_trl.rollout.records`); no trainer
imports. `gcd.task.JudgeTask` is what the trainer calls each round; docs/gcd.md defines it all.
"""

from gcd_trl.gcd.correction import RuleBook, group_advice, parse_rule, read_rules
from gcd_trl.gcd.external import ExternalGenerator, ExternalJudge, aggregate_votes
from gcd_trl.gcd.judge import (
    Judgement,
    JudgePrompt,
    JudgeScores,
    build_judge_prompts,
    judge_advantages,
    judge_prompt_from_row,
    judge_reward,
    parse_judgement,
    render_judge_prompt,
    score_judge_answers,
    select_balanced,
)
from gcd_trl.gcd.labels import label_counts, label_records, record_key, rule_labels

__all__ = [
    "ExternalGenerator",
    "ExternalJudge",
    "JudgePrompt",
    "JudgeScores",
    "Judgement",
    "RuleBook",
    "aggregate_votes",
    "build_judge_prompts",
    "group_advice",
    "judge_advantages",
    "judge_prompt_from_row",
    "judge_reward",
    "label_counts",
    "label_records",
    "parse_judgement",
    "parse_rule",
    "read_rules",
    "record_key",
    "render_judge_prompt",
    "rule_labels",
    "score_judge_answers",
    "select_balanced",
]
