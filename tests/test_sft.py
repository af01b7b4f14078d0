"""`gcd-trl sft`: TRL's SFTTrainer on the tiny model: assistant-only loss checked on token ids, datasets
mixed by weight, bad configs refused before the model loads, a short real run saves a model and a card."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from gcd_trl.data.io import save_rows
from gcd_trl.trainers.sft import (
    SFTDataArguments,
    SFTDatasetSpec,
    SFTInputError,
    build_mixture,
    build_trainer,
    parse_sft_config,
    weighted_indices,
)


def _rows(n: int, tag: str = "a") -> list[dict]:
    return [
        {
            "messages": [
                {
                    "role": "user",
                    "content": f"Task: put a mug {i} in the sink.\nActions: 'go to sink 1', 'look'",
                },
                {
                    "role": "assistant",
                    "content": f"<think>check sink {tag}</think><action>go to sink 1</action>",
                },
            ],
            "source": tag,
        }
        for i in range(n)
    ]


def _config(tmp_path: Path, model_dir: Path, datasets: list[dict], **extra) -> Path:
    cfg = {
        "model_name_or_path": str(model_dir),
        "output_dir": str(tmp_path / "out"),
        "datasets": datasets,
        "assistant_only_loss": True,
        "max_length": 256,
        "per_device_train_batch_size": 4,
        "learning_rate": 1.0e-3,
        "max_steps": 3,
        "logging_steps": 1,
        "save_strategy": "no",
        "use_cpu": True,
        "bf16": False,
        "activation_checkpointing": False,
        "report_to": "none",
        "num_threads": 1,
        "seed": 0,
        **extra,
    }
    path = tmp_path / "sft.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_collator_masks_everything_but_the_assistant_turn(tiny_model_dir, tmp_path):
    """The labels are -100 on the user turn and the chat markup, and equal the input ids exactly on the
    assistant's content and its end-of-turn token."""
    from transformers import AutoTokenizer

    save_rows(_rows(4), tmp_path / "d")
    train, data, model = parse_sft_config(
        ["--config", str(_config(tmp_path, tiny_model_dir, [{"path": str(tmp_path / "d")}]))]
    )
    trainer, _ = build_trainer(train, data, model)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch["input_ids"].shape[0] == 4
    for ids, labels, mask in zip(
        batch["input_ids"].tolist(), batch["labels"].tolist(), batch["attention_mask"].tolist()
    ):
        n = sum(mask)
        ids, labels = ids[:n], labels[:n]  # right padding
        text = tok.decode(ids)
        user, assistant = text.split("<|im_start|>assistant\n")
        messages = [
            {"role": "user", "content": user.split("<|im_start|>user\n")[1].split("<|im_end|>")[0]},
            {"role": "assistant", "content": assistant.split("<|im_end|>")[0]},
        ]
        full = tok.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
        prefix = tok.apply_chat_template(
            messages[:1], tokenize=True, add_generation_prompt=True, return_dict=True
        )["input_ids"]
        content = tok(messages[1]["content"], add_special_tokens=False)["input_ids"]
        assert ids == full
        start, end = len(prefix), len(prefix) + len(content) + 1  # + <|im_end|>
        assert ids[end - 1] == tok.convert_tokens_to_ids("<|im_end|>")
        assert all(lab == -100 for lab in labels[:start])
        assert labels[start:end] == ids[start:end]
        assert all(lab == -100 for lab in labels[end:])  # the newline after <|im_end|>


def test_datasets_mix_by_weight(tmp_path):
    save_rows(_rows(10, "a"), tmp_path / "a")
    save_rows(_rows(4, "b"), tmp_path / "b")
    data = SFTDataArguments(
        datasets=[
            {"path": str(tmp_path / "a"), "weight": 0.5},
            {"path": str(tmp_path / "b" / "train.jsonl"), "weight": 2.0},
        ],
        mix_seed=1,
    )
    mixed, summary = build_mixture(data)
    assert [s["used"] for s in summary] == [5, 8]
    assert mixed.column_names == ["messages"]
    texts = [m[1]["content"] for m in mixed["messages"]]
    assert sum("check sink b" in t for t in texts) == 8 and sum("check sink a" in t for t in texts) == 5
    again, _ = build_mixture(data)
    assert again["messages"] == mixed["messages"]
    import random

    idx = weighted_indices(3, 2.5, random.Random(0))
    assert len(idx) == 8 and sorted(set(idx)) == [0, 1, 2]


@pytest.mark.parametrize(
    "datasets, extra, message",
    [
        ([{"path": "/no/such/data"}], {}, "/no/such/data: no such file or directory"),
        ([{"path": "DATA", "weight": 0}], {}, "weight must be a number > 0"),
        ([{"path": "DATA", "wieght": 1}], {}, "unknown key 'wieght'"),
        (
            [{"path": "DATA"}],
            {"learning_rte": 1.0},
            "unknown key 'learning_rte' (did you mean 'learning_rate'?)",
        ),
        ([], {}, "no data"),
        ([{"path": "NOMSG"}], {}, "no 'messages' column"),
    ],
)
def test_bad_configs_fail_before_the_model_loads(datasets, extra, message, tmp_path, tiny_model_dir, capsys):
    from gcd_trl.cli import main

    save_rows(_rows(2), tmp_path / "data")
    save_rows([{"prompt": "p", "completion": "c"}], tmp_path / "nomsg")
    for d in datasets:
        d["path"] = {"DATA": str(tmp_path / "data"), "NOMSG": str(tmp_path / "nomsg")}.get(
            d["path"], d["path"]
        )
    path = _config(tmp_path, tiny_model_dir, datasets, **extra)
    with pytest.raises(SystemExit) as exc:
        main(["sft", "--config", str(path)])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_tiny_sft_run_saves_a_model_with_a_card(tiny_model_dir, tmp_path, capsys):
    """A few real optimizer steps through the CLI (with a command-line override): the loss is finite, the
    model and tokenizer are saved, loadable, and the card names the data."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gcd_trl.cli import main

    save_rows(_rows(12, "a"), tmp_path / "agent")
    save_rows(_rows(6, "j"), tmp_path / "judge")
    path = _config(
        tmp_path,
        tiny_model_dir,
        [{"path": str(tmp_path / "agent")}, {"path": str(tmp_path / "judge"), "weight": 0.5}],
    )
    with pytest.raises(SystemExit) as exc:
        main(["sft", "--config", str(path), "--max_steps", "2"])
    assert exc.value.code == 0
    out = capsys.readouterr().out  # the trainer's log lines come first, the JSON summary last
    summary = json.loads(out[out.rfind("\n{\n") + 1 :] if not out.startswith("{\n") else out)
    assert summary["global_steps"] == 2 and summary["rows"] == 15
    assert summary["train_loss"] == summary["train_loss"]  # not NaN
    out = tmp_path / "out"
    AutoModelForCausalLM.from_pretrained(out)
    assert AutoTokenizer.from_pretrained(out).chat_template
    card = (out / "README.md").read_text()
    assert "`agent` (local): weight 1.0" in card and "`judge` (local): weight 0.5" in card
    assert "huggingface.co/datasets" not in card and 'prompt = """' in card  # no local path as a Hub link
    assert "learning_rate:" in (out / "run_config.yaml").read_text()
    state = json.loads((out / "trainer_state.json").read_text())  # the whole run's log, for provenance
    assert state["global_step"] == 2 and any("train_runtime" in row for row in state["log_history"])


def test_unknown_model_path_is_refused(tmp_path):
    save_rows(_rows(2), tmp_path / "d")
    train, data, model = parse_sft_config(
        ["--config", str(_config(tmp_path, tmp_path / "no-model", [{"path": str(tmp_path / "d")}]))]
    )
    with pytest.raises(SFTInputError, match="no-model"):
        build_trainer(train, data, model)
    assert SFTDatasetSpec(path="x").weight == 1.0


@pytest.mark.parametrize("path", sorted(Path(__file__).resolve().parents[1].glob("configs/sft/*.yaml")))
def test_shipped_configs_parse(path):
    """Every shipped SFT config parses (no unknown keys, valid values); GPU ones checked with bf16 off."""
    train, data, model = parse_sft_config(["--config", str(path), "--bf16", "false"])
    assert model.model_name_or_path and data.datasets
    assert all(d.path.startswith("data/") and d.weight > 0 for d in data.datasets)
    if "qwen" in path.name:  # the paper's cold start (appendix B)
        assert train.learning_rate == 1e-5 and train.num_train_epochs == 5
        assert train.per_device_train_batch_size == 2
        assert train.assistant_only_loss
