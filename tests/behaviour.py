"""Record what a tiny training run does, so a refactor can be checked to change nothing.

Two runs on the real ALFWorld engine, the tiny model and a seeded scripted policy (the model's sampling
is replaced, everything after it is the trainer's own): GiGPO with GCD (judge samples, rule labels,
golden rules) and PPO with its critic. What is kept: every step record the trainer wrote (actions,
rewards, advantages, judge rewards, labels), every logged metric, and per-tensor sums of the final
weights. `python tests/behaviour.py` rewrites the fixtures (only before a refactor, never to make a
failing comparison pass).
"""

from __future__ import annotations

import json
import random
import re
import sys
from pathlib import Path

FIXTURES = Path(__file__).with_name("fixtures")
_ADMISSIBLE = re.compile(r"admissible actions of the current situation are: \[(.*)\]\.", re.S)
# metrics that measure the machine, not the run
_VOLATILE = re.compile(
    r"^(time/|timing/|step_time|train_runtime|train_samples_per_second|"
    r"train_steps_per_second|total_flos|.*_seconds$|.*per_second$)"
)


def scripted(trainer, seed: int = 0):
    """Agent: an admissible action (60%) or a malformed answer; judge: a boxed verdict or none; rules
    prompt: one rule. Token ids come from the trainer's own chat rendering."""
    from gcd_trl.generation import Generation

    rng = random.Random(seed)
    tok = trainer.processing_class
    eos = trainer.eos_token_ids[0]

    def generate(prompts):
        out = []
        for prompt in prompts:
            if "Critic" in prompt:
                verdict = rng.choice(["0", "1", None])
                box = f"<answer>\\boxed{{{verdict}}}</answer>" if verdict else "<answer>fine</answer>"
                text = f"<think>it loops</think>{box}<advise>Do not repeat useless actions.</advise>"
            elif "Golden Rule" in prompt:
                text = "<think>common pattern</think><rule>Never repeat a useless action.</rule>"
            else:
                found = _ADMISSIBLE.search(prompt)
                actions = re.findall(r"'([^']*)'", found.group(1)) if found else ["look"]
                if rng.random() < 0.6:
                    text = f"<think>go on</think><action>{rng.choice(actions)}</action>"
                else:
                    text = rng.choice(["no tags at all", "<action></action>"])
            ids = tok(text, add_special_tokens=False)["input_ids"][:12] + [eos]
            prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"][-64:]
            out.append(Generation(list(prompt_ids), ids, text, truncated=False))
        return out

    return generate


def _trainer(kind: str, model_dir: str, out_dir: Path, tasks: list[dict], pool):
    from datasets import Dataset

    from gcd_trl.gcd.args import GCDArguments
    from gcd_trl.rollout.settings import EnvArguments
    from gcd_trl.trainers.grpo_config import AgentGRPOConfig
    from gcd_trl.trainers.run import trainer_class
    from helpers import small_run_args

    common = small_run_args(out_dir, lr_scheduler_type="constant", save_strategy="steps", save_steps=1)
    env_args = EnvArguments(environment="alfworld", split="all", max_episode_steps=4, history_length=2)
    gcd_args = None
    if kind == "gigpo_gcd":
        args = AgentGRPOConfig(**common, advantage_estimator="gigpo", beta=0.01)
        gcd_args = GCDArguments(
            gcd=True,
            gcd_coef=0.5,
            judge_prompts_per_round=4,
            judge_num_generations=2,
            judge_class_balance=False,
            correction=True,
            correction_every=1,
            max_rules=2,
        )
    elif kind == "ppo":
        args = AgentGRPOConfig(
            **common, advantage_estimator="gae", critic_learning_rate=1e-3, critic_warmup_rounds=1
        )
    else:
        raise ValueError(kind)
    cls = trainer_class(args)
    extra = {"gcd_args": gcd_args} if gcd_args else {}
    trainer = cls(
        model_dir,
        args=args,
        train_dataset=Dataset.from_list(tasks),
        env_args=env_args,
        env_pool=pool,
        **extra,
    )
    trainer._generate_turn = scripted(trainer)
    return trainer


def _round_floats(x, digits: int = 6):
    if isinstance(x, float):
        return float(f"{x:.{digits}g}")
    if isinstance(x, dict):
        return {k: _round_floats(v, digits) for k, v in x.items()}
    if isinstance(x, list):
        return [_round_floats(v, digits) for v in x]
    return x


def record(kind: str, model_dir: str, work: Path, tasks: list[dict], pool) -> dict:
    """Run one tiny training run and return what it did (JSON-able)."""
    import torch
    from safetensors.torch import load_file

    from gcd_trl.rollout.records import read_steps

    torch.manual_seed(0)
    out = work / kind
    trainer = _trainer(kind, model_dir, out, tasks, pool)
    trainer.train()
    steps = read_steps(out / "rollouts")
    steps.sort(
        key=lambda r: (
            r.get("round", 0),
            r.get("kind", "agent"),
            str(r["group"]),
            str(r["traj"]),
            r["step"],
            r["completion"],
        )
    )
    keep = (
        "round",
        "kind",
        "group",
        "traj",
        "step",
        "anchor",
        "action",
        "valid",
        "reason",
        "admissible",
        "env_reward",
        "done",
        "won",
        "advantage",
        "label",
        "label_source",
        "judge_reward",
        "completion",
    )
    logs = [{k: v for k, v in row.items() if not _VOLATILE.match(k)} for row in trainer.state.log_history]
    final = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))[-1]
    weights = load_file(str(final / "model.safetensors"))
    sums = {
        name: [float(t.double().sum()), float(t.double().abs().sum())] for name, t in sorted(weights.items())
    }
    return _round_floats(
        {
            "steps": [{k: r.get(k) for k in keep} for r in steps],
            "log_history": logs,
            "weights": sums,
        }
    )


def tasks_and_pool(work: Path):
    from gcd_trl.envs.alfworld import task_type_of
    from gcd_trl.envs.alfworld_gen import generate_games
    from gcd_trl.envs.base import EnvSpec, Task
    from gcd_trl.envs.pool import EnvPool

    games = generate_games(work / "games", 2, seed=1, task_types=(1,))
    # the game folder is a temporary path: name tasks by game, keep the path out of the records
    tasks = [Task("alfworld", split="all", game=g, task_type=task_type_of(g)).to_dict() for g in games]
    return tasks, EnvPool(EnvSpec("alfworld"), 2)


def normalise(result: dict, work: Path) -> dict:
    """Temporary paths out of the records (task keys and anchors hold none; prompts are not kept)."""
    text = json.dumps(result).replace(str(work), "<work>")
    return json.loads(text)


if __name__ == "__main__":
    import tempfile

    import torch

    from gcd_trl.tiny_model import build_tiny_model

    torch.set_num_threads(1)
    FIXTURES.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = build_tiny_model(work / "tiny", hidden_size=64, num_layers=2)
        tasks, pool = tasks_and_pool(work)
        try:
            for kind in sys.argv[1:] or ("gigpo_gcd", "ppo"):
                result = normalise(record(kind, str(model), work, tasks, pool), work)
                path = FIXTURES / f"behaviour_{kind}.json"
                path.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
                print(
                    f"wrote {path}: {len(result['steps'])} step records, {len(result['log_history'])} log rows"
                )
        finally:
            pool.close()
