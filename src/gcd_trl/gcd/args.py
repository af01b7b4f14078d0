"""`GCDArguments`: the settings of generative classification disentanglement (the judge task, the
external judge, prompt-based correction), part of the RL run config. docs/gcd.md defines each field."""

from __future__ import annotations

from dataclasses import dataclass, field

from gcd_trl.config import ConfigError, check_at_least, check_choice

JUDGE_LABELS = ("rules", "external", "both")
JUDGE_VOTE_MODES = ("n", "repeat")
CORRECTION_SOURCES = ("auto", "external", "policy")


@dataclass
class GCDArguments:
    """Generative classification disentanglement: the judge task and prompt-based correction (paper §4).

    docs/gcd.md defines what each field does to a round. The external-judge fields only matter when
    `judge_model` is set; the correction fields only when `correction` is on.
    """

    gcd: bool = field(default=False, metadata={"help": "Co-train the actor as a generative judge."})
    gcd_coef: float = field(
        default=1.0,
        metadata={
            "help": "Weight of the judge loss: L = L_agent + gcd_coef * L_judge (each its own token mean)."
        },
    )
    judge_prompts_per_round: int = field(
        default=16, metadata={"help": "Judge prompts built each round from the round's labelled steps."}
    )
    judge_num_generations: int = field(default=4, metadata={"help": "Judge answers per prompt (its group)."})
    judge_format_penalty: float = field(
        default=0.1,
        metadata={"help": "A judge answer without a parsable \\boxed{0} / \\boxed{1} gets reward -this."},
    )
    judge_class_balance: bool = field(
        default=True,
        metadata={
            "help": "Pick as many good as bad steps (a round without good steps has no judge prompts); "
            "false: fill judge_prompts_per_round from whichever class has steps."
        },
    )
    judge_max_completion_length: int | None = field(
        default=None, metadata={"help": "Token cap of a judge answer. Default: max_completion_length."}
    )
    judge_template: str = field(
        default="critic", metadata={"help": "Critic prompt: a built-in template name or a file."}
    )
    static_judge_prompts_per_round: int = field(
        default=0,
        metadata={"help": "Static judge rows (dataset rows with kind=judge) drawn each round, when present."},
    )
    judge_labels: str = field(
        default="both",
        metadata={
            "help": "rules | external | both: where step labels come from (both: the external label wins "
            "where it exists; without judge_model, both = rules)."
        },
    )
    # ---- the external judge (an OpenAI-compatible chat endpoint) ----
    judge_model: str | None = field(default=None, metadata={"help": "External judge model (OpenAI API)."})
    judge_base_url: str | None = field(
        default=None, metadata={"help": "External judge endpoint, e.g. http://127.0.0.1:8000/v1."}
    )
    judge_api_key_env: str = field(
        default="OPENAI_API_KEY",
        metadata={"help": "Env var holding the judge API key (never the key itself)."},
    )
    judge_votes: int = field(default=3, metadata={"help": "External judge answers per step."})
    judge_min_agree: int = field(
        default=2, metadata={"help": "Keep a label when at least this many answers (and a majority) give it."}
    )
    judge_vote_mode: str = field(
        default="n",
        metadata={
            "help": "n: one request with n=judge_votes (topped up if fewer come back); repeat: one each."
        },
    )
    judge_temperature: float = field(default=0.7, metadata={"help": "External judge sampling temperature."})
    judge_top_p: float = field(default=1.0, metadata={"help": "External judge nucleus sampling."})
    judge_max_tokens: int = field(default=1024, metadata={"help": "Token cap of one external judge answer."})
    judge_timeout: float = field(default=60.0, metadata={"help": "Seconds per external judge request."})
    judge_round_timeout: float | None = field(
        default=120.0,
        metadata={
            "help": "Seconds the external judge may take per round, all requests together; then the steps "
            "still waiting fall back to the rules (judge/external_failures_round_deadline). null: no limit. "
            "Training only: `gcd-trl judge label` waits for every answer."
        },
    )
    judge_max_retries: int = field(
        default=2,
        metadata={"help": "The openai client's retries on 429 / 5xx / timeouts / connection errors."},
    )
    judge_concurrency: int = field(default=8, metadata={"help": "External requests in flight at once."})
    judge_cache_dir: str | None = field(
        default=None, metadata={"help": "On-disk answer cache. Default: output_dir/judge_cache."}
    )
    judge_max_requests: int | None = field(
        default=None, metadata={"help": "HTTP requests (retries included) the run may send; then the rules."}
    )
    judge_token_budget: int | None = field(
        default=None, metadata={"help": "Prompt+completion tokens the run may spend; then the rules."}
    )
    judge_external_steps_per_round: int = field(
        default=64, metadata={"help": "Steps per round sent to the external judge (sampled, seeded)."}
    )
    # ---- prompt-based correction (golden rules) ----
    correction: bool = field(default=True, metadata={"help": "Summarise critiques into golden rules."})
    correction_every: int = field(default=10, metadata={"help": "Rounds between golden-rule updates."})
    max_rules: int = field(
        default=5, metadata={"help": "Golden rules kept in {suggestions} (themes per update)."}
    )
    correction_source: str = field(
        default="auto",
        metadata={"help": "auto | external | policy: who writes the rules (auto: external if judge_model)."},
    )
    correction_max_advice: int = field(
        default=256, metadata={"help": "Most recent advice sentences kept for the next rules update."}
    )
    suggestion_template: str = field(
        default="suggestion", metadata={"help": "Golden-rule prompt: a built-in template name or a file."}
    )
    rules_file: str | None = field(
        default=None, metadata={"help": "Versioned golden-rules JSON. Default: output_dir/golden_rules.json."}
    )

    def __post_init__(self) -> None:
        check_choice("judge_labels", self.judge_labels, JUDGE_LABELS)
        check_choice("judge_vote_mode", self.judge_vote_mode, JUDGE_VOTE_MODES)
        check_choice("correction_source", self.correction_source, CORRECTION_SOURCES)
        check_at_least("gcd_coef", self.gcd_coef, 0.0)
        check_at_least("judge_prompts_per_round", self.judge_prompts_per_round, 1)
        check_at_least("judge_num_generations", self.judge_num_generations, 2)
        check_at_least("judge_format_penalty", self.judge_format_penalty, 0.0)
        check_at_least("judge_max_completion_length", self.judge_max_completion_length, 1)
        check_at_least("static_judge_prompts_per_round", self.static_judge_prompts_per_round, 0)
        check_at_least("judge_votes", self.judge_votes, 1)
        check_at_least("judge_min_agree", self.judge_min_agree, 1)
        if self.judge_min_agree > self.judge_votes:
            raise ConfigError(
                f"judge_min_agree={self.judge_min_agree} cannot exceed judge_votes={self.judge_votes}"
            )
        check_at_least("judge_temperature", self.judge_temperature, 0.0)
        if not 0.0 < self.judge_top_p <= 1.0:
            raise ConfigError(f"judge_top_p={self.judge_top_p!r} must lie in (0, 1]")
        check_at_least("judge_max_tokens", self.judge_max_tokens, 1)
        check_at_least("judge_timeout", self.judge_timeout, 0.001)
        check_at_least("judge_round_timeout", self.judge_round_timeout, 0.001)
        check_at_least("judge_max_retries", self.judge_max_retries, 0)
        check_at_least("judge_concurrency", self.judge_concurrency, 1)
        check_at_least("judge_max_requests", self.judge_max_requests, 0)
        check_at_least("judge_token_budget", self.judge_token_budget, 0)
        check_at_least("judge_external_steps_per_round", self.judge_external_steps_per_round, 0)
        check_at_least("correction_every", self.correction_every, 1)
        check_at_least("max_rules", self.max_rules, 1)
        check_at_least("correction_max_advice", self.correction_max_advice, 1)
        if not self.judge_api_key_env.isidentifier() or self.judge_api_key_env.lower().startswith("sk-"):
            # never echo the value: it may be the key itself
            raise ConfigError(
                "judge_api_key_env must name the environment variable that holds the key (e.g. "
                "DEEPSEEK_API_KEY), not the key; put the key in that variable"
            )
        for key in ("judge_template", "suggestion_template"):
            kind = "critic" if key == "judge_template" else "suggestion"
            try:
                from gcd_trl.prompts import TemplateError, load_template

                load_template(getattr(self, key), kind=kind)
            except TemplateError as err:
                raise ConfigError(f"{key}: {err}") from None
        if self.judge_model and not self.judge_base_url:
            raise ConfigError("judge_model is set but judge_base_url is not")
        if self.judge_base_url and not self.judge_model:
            raise ConfigError("judge_base_url is set but judge_model is not")
        if self.judge_labels == "external" and not self.judge_model:
            raise ConfigError(
                "judge_labels=external needs judge_model and judge_base_url (an external judge)"
            )
        if self.correction_source == "external" and not self.judge_model:
            raise ConfigError("correction_source=external needs judge_model and judge_base_url")
