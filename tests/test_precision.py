"""fp32 master weights: the shipped recipes load float32 and compute in bf16; a launch that would train
bf16 parameters with a plain optimizer is refused before any model loads (issue: updates that vanish)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from gcd_trl.config import ConfigError, check_parameter_precision

REPO = Path(__file__).resolve().parents[1]
TRAINING_CONFIGS = sorted(
    p
    for folder in ("rl", "gcd", "ablations", "sft")
    for p in (REPO / "configs" / folder).glob("*.yaml")
    if "qwen2.5" in p.name
)


def _run_cli(capsys, *args):
    from gcd_trl.cli import main

    with pytest.raises(SystemExit) as exc:
        main(list(args))
    return exc.value.code, capsys.readouterr().err


def test_every_shipped_recipe_keeps_fp32_masters():
    assert len(TRAINING_CONFIGS) > 90
    for path in TRAINING_CONFIGS:
        cfg = yaml.safe_load(path.read_text())
        assert cfg.get("dtype") == "float32", path.name
        assert cfg.get("bf16") is True, path.name
        assert not cfg.get("low_precision_parameters"), path.name
        check_parameter_precision(cfg["dtype"], None, None, use_peft=bool(cfg.get("use_peft")), allowed=False)


def test_bf16_parameters_are_refused_unless_sharded_peft_or_opted_in(tmp_path, monkeypatch):
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED", raising=False)
    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    args = type("Args", (), {"deepspeed": None, "fsdp": ""})()
    with pytest.raises(
        ConfigError,
        match=r"dtype: the parameters would be trained in bfloat16 .*dtype: float32.*"
        r"bf16: true.*low_precision_parameters: true",
    ):
        check_parameter_precision("bfloat16", args, None, use_peft=False, allowed=False)
    assert check_parameter_precision("float32", args, None, use_peft=False, allowed=False) == "float32"
    assert check_parameter_precision("bfloat16", args, None, use_peft=True, allowed=False) == "bfloat16"
    assert check_parameter_precision("bfloat16", args, None, use_peft=False, allowed=True) == "bfloat16"
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    assert check_parameter_precision(torch.bfloat16, args, None, use_peft=False, allowed=False) == "bfloat16"
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert check_parameter_precision("float16", args, None, use_peft=False, allowed=False) == "float16"
    monkeypatch.delenv("ACCELERATE_USE_FSDP")
    # dtype auto loads what the checkpoint says: a bf16 checkpoint is refused the same way
    (tmp_path / "config.json").write_text('{"torch_dtype": "bfloat16"}')
    with pytest.raises(ConfigError, match=r"dtype: auto \(the checkpoint's config says bfloat16\)"):
        check_parameter_precision("auto", args, str(tmp_path), use_peft=False, allowed=False)


@pytest.mark.parametrize("command", ["rl", "sft"])
def test_cli_refuses_bf16_parameters_before_the_model_loads(tmp_path, capsys, tiny_model_dir, command):
    cfg = tmp_path / "run.yaml"
    data = tmp_path / "rows.jsonl"
    data.write_text(
        '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]}\n'
    )
    body = (
        f"model_name_or_path: {tiny_model_dir}\ndtype: bfloat16\nbf16: true\nuse_cpu: true\nreport_to: none\n"
    )
    body += f"output_dir: {tmp_path / 'out'}\n"
    body += f"dataset_path: {data}\n" if command == "sft" else "environment: alfworld\ndata_dir: /no/games\n"
    cfg.write_text(body)
    code, err = _run_cli(capsys, command, "--config", str(cfg))
    assert code == 2, err
    assert "dtype: the parameters would be trained in bfloat16" in err and "low_precision_parameters" in err
    assert not (tmp_path / "out").exists()


def test_recipe_precision_moves_weights_like_fp32(tiny_model_dir, tmp_path):
    """20 AdamW steps at lr 1e-6 through transformers' Trainer (the base of the SFT and RL trainers): float32
    weights with bf16 autocast move like the fp32 reference (relative L2 difference of the weight change
    under 5%, nearly every entry moves); bf16 weights barely move at all (the defect the check refuses)."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    gen = torch.Generator().manual_seed(0)
    rows = [{"input_ids": torch.randint(5, 500, (32,), generator=gen).tolist()} for _ in range(40)]
    dataset = Dataset.from_list([{**r, "labels": r["input_ids"]} for r in rows])

    def change(dtype, bf16):
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=dtype)
        start = {k: v.detach().float().clone() for k, v in model.named_parameters()}
        args = TrainingArguments(
            output_dir=str(tmp_path / "out"),
            use_cpu=True,
            bf16=bf16,
            learning_rate=1e-6,
            max_steps=20,
            per_device_train_batch_size=2,
            lr_scheduler_type="constant",
            report_to="none",
            save_strategy="no",
            seed=0,
            disable_tqdm=True,
        )
        Trainer(model=model, args=args, train_dataset=dataset).train()
        return {k: v.detach().float() - start[k] for k, v in model.named_parameters()}

    def flat(d):
        return torch.cat([v.flatten() for v in d.values()])

    reference = change(torch.float32, False)
    recipe = change(torch.float32, True)
    low = change(torch.bfloat16, True)
    ref, rec, bad = flat(reference), flat(recipe), flat(low)
    assert float((rec - ref).norm() / ref.norm()) < 0.05
    assert float((rec != 0).float().mean()) > 0.99 * float((ref != 0).float().mean())
    assert float((bad != 0).float().mean()) < 0.1  # ~2% of the entries move with bf16 parameters
    gains = [k for k in low if "norm" in k]
    assert gains and all(float(low[k].abs().max()) == 0.0 for k in gains)  # RMSNorm gains never move
