"""The value-SFT cold start (paper Table 3 "value SFT") on the tiny model: agent rows train the LM, labelled
steps train the value head on the shared hidden state; the output folder is a plain model plus its head,
which an RL run with value_head_coef picks up; bad inputs fail naming the problem."""

from __future__ import annotations

import math

import pytest

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def _data(tmp_path):
    from gcd_trl.data.io import save_rows, save_steps

    agent = [
        {
            "messages": [
                {"role": "user", "content": f"You are in room {i}. Your task is to: find the key."},
                {"role": "assistant", "content": "<think>look</think><action>go to desk 1</action>"},
            ]
        }
        for i in range(6)
    ]
    judge = [
        {
            "messages": [{"role": "user", "content": "critic"}, {"role": "assistant", "content": "ok"}],
            "agent_prompt": f"You are in room {i}. Your task is to: find the key.",
            "agent_completion": "<action>take key 1</action>" if i % 2 else "<action>look</action>",
            "label": i % 2,
        }
        for i in range(8)
    ]
    save_rows(agent, tmp_path / "agent")
    save_rows(judge, tmp_path / "judge")
    steps = [  # one episode that comes back to its first state: step 0 is bad by the rules
        {
            "group": 0,
            "traj": 0,
            "step": s,
            "anchor": a,
            "prompt": f"obs {a}",
            "completion": "<action>x</action>",
            "valid": True,
            "won": False,
        }
        for s, a in enumerate(["A", "B", "A"])
    ]
    save_steps(steps, tmp_path / "rollout")
    return tmp_path / "agent", tmp_path / "judge", tmp_path / "rollout" / "steps" / "steps.jsonl"


def _argv(model_dir, out, agent, judge, *extra):
    return [
        "--model_name_or_path",
        str(model_dir),
        "--output_dir",
        str(out),
        "--agent_data",
        str(agent),
        "--value_data",
        str(judge),
        "--use_cpu",
        "true",
        "--per_device_train_batch_size",
        "4",
        "--learning_rate",
        "1e-2",
        "--max_steps",
        "12",
        "--logging_steps",
        "4",
        "--save_strategy",
        "steps",
        "--save_steps",
        "6",
        "--report_to",
        "none",
        "--disable_tqdm",
        "true",
        "--seed",
        "0",
        *extra,
    ]


def test_value_sft_trains_lm_and_head_and_feeds_rl(tiny_model_dir, tmp_path):
    import torch

    from gcd_trl.trainers.value_head import ValueHead
    from gcd_trl.trainers.value_sft import build_trainer, labelled_steps, parse_config

    agent, judge, steps = _data(tmp_path)
    assert labelled_steps(str(steps)) == [("obs A", "<action>x</action>", 0)]
    train, args, model_args = parse_config(_argv(tiny_model_dir, tmp_path / "out", agent, judge))
    trainer = build_trainer(train, args, model_args)
    assert trainer.data_summary == {"lm_rows": 6, "value_rows": 8, "good": 4, "bad": 4, "dropped_too_long": 0}
    trainer.train()
    trainer.save_model(train.output_dir)
    logs = [h for h in trainer.state.log_history if "lm_loss" in h]
    assert len(logs) == 3
    for h in logs:
        assert math.isfinite(h["loss"]) and math.isfinite(h["lm_loss"]) and math.isfinite(h["value_loss"])
        assert 0.0 <= h["value_accuracy"] <= 1.0
    assert logs[-1]["lm_loss"] < logs[0]["lm_loss"]
    # the head learns the toy classes (the good answer takes the key)
    assert logs[-1]["value_loss"] < logs[0]["value_loss"]
    out = tmp_path / "out"
    assert (out / "config.json").is_file() and (out / "value_head.safetensors").is_file()
    assert (out / "checkpoint-6" / "value_head.safetensors").is_file()
    # resume from the checkpoint: the weights and head load back, training finishes
    resumed = build_trainer(*parse_config(_argv(tiny_model_dir, tmp_path / "out", agent, judge)))
    resumed.train(resume_from_checkpoint=str(out / "checkpoint-6"))
    assert resumed.state.global_step == 12
    # RL picks the head up from the model folder
    from datasets import Dataset

    from gcd_trl.envs.base import Task
    from gcd_trl.rollout.settings import EnvArguments
    from gcd_trl.trainers.grpo_config import AgentGRPOConfig
    from gcd_trl.trainers.run import trainer_class

    rl_args = AgentGRPOConfig(
        output_dir=str(tmp_path / "rl"),
        use_cpu=True,
        bf16=False,
        report_to="none",
        num_generations=2,
        tasks_per_round=1,
        value_head_coef=1.0,
    )
    rl = trainer_class(rl_args)(
        str(out),
        args=rl_args,
        env_args=EnvArguments(environment="scienceworld"),
        train_dataset=Dataset.from_list([Task("scienceworld", task_name="boil", variation=0).to_dict()]),
    )
    head = ValueHead(rl.value_head.hidden_size)
    head.load(out)
    torch.testing.assert_close(rl.value_head.score.weight.detach(), head.score.weight)


def test_value_sft_rejects_bad_inputs(tiny_model_dir, tmp_path):
    from gcd_trl.data.io import save_rows
    from gcd_trl.trainers.value_sft import ValueSFTError, build_trainer, parse_config

    agent, judge, _ = _data(tmp_path)
    with pytest.raises(ValueSFTError, match="value_data is empty"):
        parse_config(["--model_name_or_path", str(tiny_model_dir), "--output_dir", str(tmp_path / "o")])
    save_rows([{"agent_prompt": "p", "label": 1}], tmp_path / "broken")
    with pytest.raises(ValueSFTError, match="missing field 'agent_completion'"):
        build_trainer(*parse_config(_argv(tiny_model_dir, tmp_path / "o", agent, tmp_path / "broken")))
    with pytest.raises(ValueSFTError, match="use_peft"):
        parse_config(_argv(tiny_model_dir, tmp_path / "o", agent, judge, "--use_peft", "true"))
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("value_head_cof: 1.0\n")
    with pytest.raises(ValueSFTError, match="unknown key 'value_head_cof'"):
        parse_config(["--config", str(cfg)])
