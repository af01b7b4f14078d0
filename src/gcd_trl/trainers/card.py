"""The model card (README.md) of a run, written by gcd-trl rather than TRL's template: TRL's card credits
the trainer's paper whatever the run did, links local dataset paths as Hub datasets and shows a generic
chat example. This one says what the model is (base model, environment and split, estimator, GCD on or
off, rounds, the full resolved config), shows one real agent prompt, carries the `gcd-trl eval` results of
this very checkpoint as the Hub's `model-index`, and cites exactly the methods the run used.

It is built from files in the run folder (`run_config.yaml`, `summary.json`, eval reports), so
`gcd-trl push` can rebuild it after an evaluation.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import yaml

RUN_CONFIG = "run_config.yaml"
EVAL_SUBDIR = "eval"  # output_dir/eval/*/ : eval directories the card looks in by default
ENV_TITLES = {"alfworld": "ALFWorld", "scienceworld": "ScienceWorld"}

# key: (what the card calls it, BibTeX). Every entry has its year and arXiv id (or URL).
CITATIONS: dict[str, tuple[str, str]] = {
    "grpo": (
        "GRPO (Shao et al. 2024, DeepSeekMath)",
        "@article{shao2024deepseekmath,\n"
        "  title   = {{DeepSeekMath: Pushing the Limits of Mathematical Reasoning in Open Language Models}},\n"
        "  author  = {Zhihong Shao and Peiyi Wang and Qihao Zhu and Runxin Xu and Junxiao Song and Xiao Bi "
        "and Haowei Zhang and Mingchuan Zhang and Y. K. Li and Y. Wu and Daya Guo},\n"
        "  year    = {2024},\n"
        "  eprint  = {2402.03300},\n"
        "  archivePrefix = {arXiv},\n"
        "  url     = {https://arxiv.org/abs/2402.03300}\n"
        "}",
    ),
    "gigpo": (
        "GiGPO (Feng et al. 2025)",
        "@article{feng2025gigpo,\n"
        "  title   = {{Group-in-Group Policy Optimization for LLM Agent Training}},\n"
        "  author  = {Lang Feng and Zhenghai Xue and Tingcong Liu and Bo An},\n"
        "  year    = {2025},\n"
        "  eprint  = {2505.10978},\n"
        "  archivePrefix = {arXiv},\n"
        "  url     = {https://arxiv.org/abs/2505.10978}\n"
        "}",
    ),
    "rlvmr": (
        "RLVMR (Zhang et al. 2025)",
        "@article{zhang2025rlvmr,\n"
        "  title   = {{RLVMR: Reinforcement Learning with Verifiable Meta-Reasoning Rewards for Robust "
        "Long-Horizon Agents}},\n"
        "  author  = {Zijing Zhang and Ziyang Chen and Mingxiao Li and Zhaopeng Tu and Xiaolong Li},\n"
        "  year    = {2025},\n"
        "  eprint  = {2507.22844},\n"
        "  archivePrefix = {arXiv},\n"
        "  url     = {https://arxiv.org/abs/2507.22844}\n"
        "}",
    ),
    "ppo": (
        "PPO (Schulman et al. 2017)",
        "@article{schulman2017ppo,\n"
        "  title   = {{Proximal Policy Optimization Algorithms}},\n"
        "  author  = {John Schulman and Filip Wolski and Prafulla Dhariwal and Alec Radford and Oleg Klimov},\n"
        "  year    = {2017},\n"
        "  eprint  = {1707.06347},\n"
        "  archivePrefix = {arXiv},\n"
        "  url     = {https://arxiv.org/abs/1707.06347}\n"
        "}",
    ),
    "nthr": (
        "GRPO_nthr (Deng et al. 2025)",
        "@article{deng2025negative,\n"
        "  title   = {{On the Effect of Negative Gradient in Group Relative Deep Reinforcement Optimization}},\n"
        "  author  = {Wenlong Deng and Yi Ren and Muchen Li and Danica J. Sutherland and Xiaoxiao Li and "
        "Christos Thrampoulidis},\n"
        "  year    = {2025},\n"
        "  eprint  = {2505.18830},\n"
        "  archivePrefix = {arXiv},\n"
        "  url     = {https://arxiv.org/abs/2505.18830}\n"
        "}",
    ),
    "gcd": (
        "GCD (Liu et al. 2025)",
        "@article{liu2025gcd,\n"
        "  title   = {{Rethinking Reward Miscalibration of GRPO in Agentic RL}},\n"
        "  author  = {Jingyu Liu and Xiaopeng Wu and Jingquan Peng and Kehan Chen and Chuan Yu and "
        "Lizhong Ding and Yong Liu},\n"
        "  year    = {2025},\n"
        "  eprint  = {2509.23870},\n"
        "  archivePrefix = {arXiv},\n"
        "  url     = {https://arxiv.org/abs/2509.23870}\n"
        "}",
    ),
    "trl": (
        "TRL (von Werra et al. 2020)",
        "@software{vonwerra2020trl,\n"
        "  title   = {{TRL: Transformers Reinforcement Learning}},\n"
        "  author  = {Leandro von Werra and Younes Belkada and Lewis Tunstall and Edward Beeching and "
        "Tristan Thrush and Nathan Lambert and Shengyi Huang and Kashif Rasul and Quentin Gallou{\\'e}dec},\n"
        "  year    = {2020},\n"
        "  url     = {https://github.com/huggingface/trl}\n"
        "}",
    ),
}
ESTIMATOR_CITATION = {"grpo": "grpo", "gigpo": "gigpo", "rlvmr": "rlvmr", "gae": "ppo"}

# an illustrative first step for the quick start, rendered with the run's own prompt template
EXAMPLE_STEP = {
    "alfworld": {
        "task_description": "put a clean mug in coffeemachine.",
        "observation": "You are in the middle of a room. Looking quickly around you, you see a cabinet 1, a "
        "coffeemachine 1, a countertop 1, a fridge 1, a microwave 1, and a sinkbasin 1.",
        "admissible_actions": [
            "go to cabinet 1",
            "go to coffeemachine 1",
            "go to countertop 1",
            "go to fridge 1",
            "go to microwave 1",
            "go to sinkbasin 1",
            "inventory",
            "look",
        ],
    },
    "scienceworld": {
        "task_description": "Your task is to boil water. For compounds without a boiling point, combusting "
        "the substance is also acceptable. First, focus on the substance. Then, take actions that will cause "
        "it to change its state of matter.",
        "observation": "This room is called the kitchen. In it, you see: a stove, which is turned off. a sink, "
        "which is turned off. a metal pot. a cupboard. You also see: A door to the hallway (that is open)",
        "admissible_actions": [
            "look around",
            "focus on water",
            "pick up metal pot",
            "move metal pot to sink",
            "activate sink",
            "activate stove",
            "go to hallway",
        ],
    },
}


def cited_methods(config: dict[str, Any]) -> list[str]:
    """The CITATIONS keys an RL run used: its estimator, NTHR when on, GCD only with `gcd: true`, TRL."""
    trainer, gcd = config.get("trainer", {}), config.get("gcd", {})
    keys = [ESTIMATOR_CITATION.get(trainer.get("advantage_estimator"), "grpo")]
    if trainer.get("advantage_estimator") in ("gigpo", "rlvmr"):
        keys.insert(0, "grpo")  # both build on GRPO's group-relative advantage
    if trainer.get("nthr"):
        keys.append("nthr")
    if gcd.get("gcd"):
        keys.append("gcd")
    return [*dict.fromkeys(keys), "trl"]


def citations_markdown(keys: list[str]) -> str:
    lines = ["## Citations", "", "This run used " + ", ".join(CITATIONS[k][0] for k in keys) + ".", ""]
    for key in keys:
        lines += [f"{CITATIONS[key][0]}:", "", "```bibtex", CITATIONS[key][1], "```", ""]
    return "\n".join(lines)


# ---- results of `gcd-trl eval` for this checkpoint ------------------------------------------------------
def checkpoint_report(folder: str | os.PathLike, fingerprint: str) -> tuple[dict | None, str]:
    """A `gcd-trl eval` folder's report when it is a complete evaluation of the model with this fingerprint,
    else None and why not."""
    folder = Path(folder)
    try:
        report = json.loads((folder / "report.json").read_text())
        identity = json.loads((folder / "eval_config.json").read_text())["identity"]
    except (OSError, ValueError, KeyError, TypeError):
        return None, f"{folder}: no readable report.json and eval_config.json (not a gcd-trl eval folder)"
    if identity.get("model_fingerprint") != fingerprint:
        return None, f"{folder}: evaluates another model (or an older save of this one)"
    if not report.get("complete", True):
        return None, f"{folder}: the evaluation is incomplete (rerun the same gcd-trl eval to finish it)"
    return report, ""


def eval_reports(model_dir: str | os.PathLike, eval_dirs: list[str | os.PathLike] = ()) -> list[dict]:
    """Complete `gcd-trl eval` reports of this very checkpoint, from `model_dir/eval/*/` and `eval_dirs`
    (`checkpoint_report`), sorted by environment and split."""
    from gcd_trl.eval.runner import model_fingerprint

    fingerprint = model_fingerprint(str(model_dir))
    candidates = [*sorted((Path(model_dir) / EVAL_SUBDIR).glob("*/")), *map(Path, eval_dirs)]
    found = [r for r in (checkpoint_report(c, fingerprint)[0] for c in candidates) if r is not None]
    return sorted(found, key=lambda r: (r.get("environment", ""), str(r.get("split")), str(r.get("part"))))


def card_metadata(
    model_name: str, base_model: str | None, tags: list[str], reports: list[dict], datasets: list[str] = ()
) -> str:
    """The card's YAML front matter (huggingface_hub's ModelCardData): success rate per split as
    `model-index`."""
    from huggingface_hub import EvalResult, ModelCardData

    results = [
        EvalResult(
            task_type="text-generation",
            task_name=f"{ENV_TITLES.get(r['environment'], r['environment'])} agent",
            dataset_type=r["environment"],
            dataset_name=ENV_TITLES.get(r["environment"], r["environment"]),
            dataset_split=f"{r['split']}/{r['part']}",
            metric_type="success_rate",
            metric_name="success rate",
            metric_value=round(float(r["success_rate"]), 4),
        )
        for r in reports
    ]
    data = ModelCardData(
        base_model=base_model,
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=tags,
        datasets=list(datasets) or None,
        model_name=model_name,
        eval_results=results or None,
    )
    return data.to_yaml()


def results_markdown(reports: list[dict]) -> str:
    if not reports:
        return ""
    lines = [
        "## Results (`gcd-trl eval`)",
        "",
        "| environment | split | episodes | success rate |",
        "| --- | --- | --- | --- |",
    ]
    for r in reports:
        lines.append(
            f"| {ENV_TITLES.get(r['environment'], r['environment'])} | {r['split']} ({r['part']}) | "
            f"{r['episodes']} | {100 * float(r['success_rate']):.1f}% |"
        )
    return "\n".join(lines) + "\n"


# ---- what the model is ----------------------------------------------------------------------------------
def hub_base_model(name: str | None) -> str | None:
    """A base model that is a Hub id (org/name, not a local folder), else None: a card links only those."""
    if not name or Path(name).expanduser().exists() or name.startswith((".", "/", "~")):
        return None
    return name if re.fullmatch(r"[\w.-]+/[\w.-]+", name) else None


def describe_base(name: str | None) -> str:
    hub = hub_base_model(name)
    if hub:
        return f"[{hub}](https://huggingface.co/{hub})"
    return f"a local model (`{Path(name).name}`)" if name else "an unnamed model"


def history_words(length: int | None, template: str) -> str:
    """The history a prompt shows, in words (never the internal -1)."""
    from gcd_trl.prompts import history_defaults

    if length is None:
        try:
            length = history_defaults(template).history_length
        except Exception:  # a user template that is gone: say what the config said
            return "the template's default history"
    return "the whole episode's history" if length < 0 else f"the last {length} steps of history"


def example_prompt(env: dict[str, Any]) -> str:
    """One agent prompt as the run renders it (its template, meta-reasoning), for an illustrative first
    step of the environment."""
    from gcd_trl.prompts import agent_template_name, load_template, render_agent_prompt

    environment = env.get("environment", "alfworld")
    name = agent_template_name(env.get("prompt_template"), environment, bool(env.get("meta_reasoning")))
    try:
        template = load_template(name, "agent")
    except Exception:  # the run's own template file is not here: the environment's built-in one
        template = load_template(agent_template_name(None, environment, bool(env.get("meta_reasoning"))))
    step = EXAMPLE_STEP.get(environment, EXAMPLE_STEP["alfworld"])
    return render_agent_prompt(
        template,
        task_description=step["task_description"],
        observation=step["observation"],
        admissible_actions=step["admissible_actions"],
        history=[],
        step_count=0,
        history_length=2,
    )


def quick_start(repo_id: str, prompt: str, note: str) -> str:
    quoted = prompt.replace("\\", "\\\\").replace('"""', '\\"\\"\\"')
    return (
        "## Quick start\n\n"
        f"{note}\n\n"
        "```python\n"
        "from transformers import pipeline\n\n"
        f'agent = pipeline("text-generation", model="{repo_id}", device_map="auto")\n'
        f'prompt = """{quoted}"""\n'
        'out = agent([{"role": "user", "content": prompt}], max_new_tokens=512, return_full_text=False)\n'
        'print(out[0]["generated_text"])  # its reasoning, then the action to send to the environment\n'
        "```\n"
    )


def versions_markdown() -> str:
    import torch
    import transformers
    import trl

    from gcd_trl import __version__

    return (
        "## Framework versions\n\n"
        f"- gcd-trl: {__version__}\n- TRL: {trl.__version__}\n- Transformers: {transformers.__version__}\n"
        f"- PyTorch: {torch.__version__}\n"
    )


def config_markdown(config: dict[str, Any]) -> str:
    text = yaml.safe_dump(config, sort_keys=False)
    return (
        "## Training config\n\n"
        f"The full resolved config (also in `{RUN_CONFIG}`):\n\n"
        "<details><summary>run_config.yaml</summary>\n\n```yaml\n" + text + "```\n\n</details>\n"
    )


def write_run_config(output_dir: str | os.PathLike, config: dict[str, Any]) -> Path:
    from gcd_trl import files

    return files.write_text_atomic(Path(output_dir) / RUN_CONFIG, yaml.safe_dump(config, sort_keys=False))


def read_run_config(output_dir: str | os.PathLike) -> dict[str, Any]:
    path = Path(output_dir) / RUN_CONFIG
    return yaml.safe_load(path.read_text()) if path.is_file() else {}


def rl_card(
    config: dict[str, Any],
    *,
    model_name: str,
    repo_id: str,
    reports: list[dict] = (),
    played: dict[str, Any] | None = None,
) -> str:
    """The README.md of an RL run, from its resolved config (`grpo_config.resolved_dict`)."""
    trainer, env, gcd = config["trainer"], config["env"], config.get("gcd", {})
    base = config.get("model", {}).get("model_name_or_path")
    environment = env["environment"]
    title = ENV_TITLES.get(environment, environment)
    estimator = trainer["advantage_estimator"]
    method = {"gae": "PPO"}.get(estimator, estimator.upper() if estimator != "gigpo" else "GiGPO")
    gcd_on = bool(gcd.get("gcd"))
    template = agent_name(env)
    played = played or {}
    rounds = trainer.get("max_rounds")
    rounds_text = f"{rounds} rounds" if rounds else f"{trainer.get('max_steps')} optimizer steps"
    if played.get("rounds") is not None:
        rounds_text += f" ({played['rounds']} played, {played.get('optimizer_steps')} optimizer steps)"
    tags = ["gcd-trl", "trl", "agent", "reinforcement-learning", environment, estimator]
    tags += ["gcd"] if gcd_on else []
    tags += ["nthr"] if trainer.get("nthr") else []
    what = [
        f"- base model: {describe_base(base)}",
        f"- environment: {title}, split `{env['split']}` ({env['part']} part), {env['max_episode_steps']} "
        f"steps per episode, prompt template `{template}` with "
        f"{history_words(env.get('history_length'), template)}",
        f"- advantage estimator: `{estimator}` ({method})"
        + ("; NTHR token weights on" if trainer.get("nthr") else ""),
        "- GCD: "
        + ("on" if gcd_on else "off")
        + (
            f" (gcd_coef {gcd.get('gcd_coef')}, judge labels `{gcd.get('judge_labels')}`, golden rules "
            f"{'on' if gcd.get('correction') else 'off'})"
            if gcd_on
            else ""
        ),
        f"- training: {rounds_text}; each round {trainer['tasks_per_round']} tasks x "
        f"{trainer['num_generations']} episodes, loss `{trainer['loss_type']}`, beta {trainer['beta']}, "
        f"learning rate {trainer['learning_rate']}",
    ]
    sections = [
        "---\n" + card_metadata(model_name, hub_base_model(base), tags, list(reports)) + "\n---\n",
        f"# {model_name}\n",
        f"An LLM agent for {title}, trained from {describe_base(base)} by reinforcement learning with "
        f"{method}{' and GCD' if gcd_on else ''} in gcd-trl, on "
        "[TRL](https://github.com/huggingface/trl).\n",
        "\n".join(what) + "\n",
        results_markdown(list(reports)),
        quick_start(
            repo_id,
            example_prompt(env),
            f"The model answers one {title} step at a time: the user message is the task, the recent "
            "history, the observation and the admissible actions, rendered with the run's prompt template. "
            "To play whole episodes, use `gcd-trl eval --policy model --model_name_or_path "
            f"{repo_id} --environment {environment} --split {env['split']}`.",
        ),
        config_markdown(config),
        versions_markdown(),
        citations_markdown(cited_methods(config)),
    ]
    return "\n".join(s for s in sections if s)


def agent_name(env: dict[str, Any]) -> str:
    from gcd_trl.prompts import agent_template_name

    return agent_template_name(
        env.get("prompt_template"), env["environment"], bool(env.get("meta_reasoning"))
    )


def write_rl_card(
    output_dir: str | os.PathLike,
    repo_id: str | None = None,
    eval_dirs: list[str | os.PathLike] = (),
    played: dict[str, Any] | None = None,
) -> Path:
    """README.md of a run folder, from its run_config.yaml and the eval reports of its checkpoint."""
    from gcd_trl import files

    root = Path(output_dir)
    config = read_run_config(root)
    if not config:
        raise FileNotFoundError(f"{root}: no {RUN_CONFIG} (not a gcd-trl run folder)")
    repo = repo_id or config["trainer"].get("hub_model_id") or f"YOUR_NAME/{root.resolve().name}"
    text = rl_card(
        config,
        model_name=repo.split("/")[-1],
        repo_id=repo,
        reports=eval_reports(root, eval_dirs),
        played=played,
    )
    return files.write_text_atomic(root / "README.md", text)


# ---- the SFT cold start ---------------------------------------------------------------------------------
def sft_card(
    config: dict[str, Any],
    *,
    model_name: str,
    repo_id: str,
    mixture: list[dict[str, Any]],
    example: str | None,
) -> str:
    """The README.md of an SFT cold start: the data mixture (Hub links only for Hub datasets)."""
    base = config.get("model", {}).get("model_name_or_path")
    hub_datasets = [s["path"] for s in mixture if hub_base_model(s["path"])]
    data = []
    for s in mixture:
        name = s["path"]
        shown = (
            f"[{name}](https://huggingface.co/datasets/{name})"
            if name in hub_datasets
            else f"`{Path(name).name}` (local)"
        )
        data.append(f"- {shown}: weight {s['weight']}, {s['used']} of {s['rows']} rows")
    sections = [
        "---\n"
        + card_metadata(
            model_name,
            hub_base_model(base),
            ["gcd-trl", "trl", "sft", "cold-start", "agent"],
            [],
            hub_datasets,
        )
        + "\n---\n",
        f"# {model_name}\n",
        f"The supervised cold start of an LLM agent: {describe_base(base)} fine-tuned with TRL's SFTTrainer on "
        "chat conversations built by `gcd-trl data` (agent steps, and critic judgements for GCD), before RL.\n",
        "## Data\n\n" + "\n".join(data) + "\n",
        quick_start(
            repo_id,
            example or "",
            "The prompt below is the first user message of the training data, so it is the kind of message "
            "the model was trained to answer.",
        )
        if example
        else "",
        config_markdown(config),
        versions_markdown(),
        citations_markdown(["trl"]),
    ]
    return "\n".join(s for s in sections if s)
