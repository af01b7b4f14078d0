"""The Hub push: the check before any model loads (no token, unreachable, refused, offline) and the
round trip with the real huggingface_hub client against a local Hub (tests/hub_server.py): the allow-list
arrives, rollouts, checkpoints, the judge cache and training_args.bin do not, and no secret travels."""

from __future__ import annotations

import json
import socket

import pytest

from gcd_trl.hub import HubError, check_hub, files_to_push, push_folder
from helpers import tiny_rl_config
from hub_server import USER, hub_server_fixture  # noqa: F401 (the fixture)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_folder(root):
    """A run folder as `gcd-trl rl` leaves it: model, tokenizer, card, config, rules, and the bulk."""
    root.mkdir(parents=True, exist_ok=True)
    files = {
        "config.json": '{"model_type": "qwen2"}',
        "model.safetensors": "weights",
        "tokenizer.json": "{}",
        "tokenizer_config.json": "{}",
        "chat_template.jinja": "{{ messages }}",
        "README.md": "---\nlibrary_name: transformers\n---\n# card\n",
        "run_config.yaml": "trainer: {}\n",
        "summary.json": "{}",
        "golden_rules.json": '{"rules": []}',
        "training_args.bin": "pickle",
        "rollouts/round_00000_rank0.jsonl": '{"step": 0}\n',
        "judge_cache/ab.json": '{"answer": 1}',
        "completions/round_0.parquet": "rows",
        "checkpoint-5/model.safetensors": "old weights",
        "runs/events.out": "tensorboard",
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


KEPT = {
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "README.md",
    "run_config.yaml",
    "summary.json",
    "golden_rules.json",
}


def test_the_allow_list_keeps_the_model_and_leaves_the_bulk(tmp_path):
    root = _run_folder(tmp_path / "run")
    assert {p.relative_to(root).as_posix() for p in files_to_push(root)} == KEPT
    with_rollouts = {p.relative_to(root).as_posix() for p in files_to_push(root, push_rollouts=True)}
    assert with_rollouts == KEPT | {"rollouts/round_00000_rank0.jsonl"}


def test_check_hub_without_a_token_says_what_to_do(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(HubError, match="export HF_TOKEN"):
        check_hub()


def test_check_hub_with_an_unreachable_hub_fails_fast(monkeypatch):
    import time

    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", "hf_sometoken0123456789")
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_free_port()}")  # nothing listens
    t0 = time.monotonic()
    with pytest.raises(HubError, match="does not answer") as info:
        check_hub(timeout=2.0)
    assert time.monotonic() - t0 < 10
    assert "hf_sometoken" not in str(info.value)


def test_check_hub_offline_and_refused(monkeypatch, hub_server):
    import huggingface_hub.constants

    assert check_hub() == USER
    monkeypatch.setenv("HF_TOKEN", "hf_wrongtoken0123456789")
    with pytest.raises(HubError, match="refuses the token"):
        check_hub()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubError, match="HF_HUB_OFFLINE"):
        check_hub()


def test_push_folder_round_trip(tmp_path, hub_server, monkeypatch):
    monkeypatch.setenv("DEEPSEEK_API_KEY", "sk-judge-key-0123456789")
    root = _run_folder(tmp_path / "my-agent")
    url = push_folder(root)
    assert url.startswith(hub_server.url)
    stored = hub_server.repos[f"{USER}/my-agent"]
    assert set(stored) == KEPT
    assert stored["model.safetensors"] == b"weights"
    for body in hub_server.bodies:  # the token travels in a header only, the judge key nowhere
        assert hub_server.token.encode() not in body and b"sk-judge-key" not in body

    push_folder(root, "org/with-rollouts", push_rollouts=True, private=True)
    assert "rollouts/round_00000_rank0.jsonl" in hub_server.repos["org/with-rollouts"]
    assert hub_server.created[-1]["visibility"] == "private"


def test_push_folder_refuses_a_file_holding_a_secret(tmp_path, hub_server, monkeypatch):
    monkeypatch.setenv("DEEPSEEK_API_KEY", "sk-judge-key-0123456789")
    root = _run_folder(tmp_path / "leaky")
    (root / "run_config.yaml").write_text("api_key: sk-judge-key-0123456789\n")
    with pytest.raises(HubError, match="run_config.yaml holds a secret"):
        push_folder(root)
    assert hub_server.repos == {}


# ---- through the commands: the check before a model loads, and the round trip of a real run -----------------


@pytest.fixture(scope="module")
def games_dir(tmp_path_factory):
    from gcd_trl.envs.alfworld_gen import generate_games

    root = tmp_path_factory.mktemp("games")
    generate_games(root, 2, seed=0, task_types=(1,))
    return str(root)


def _no_token(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)


@pytest.mark.parametrize("command", ["rl", "sft"])
def test_push_without_a_token_or_hub_fails_before_the_model_loads(command, tmp_path, monkeypatch, capsys):
    """Exit 2 with one line saying what to do; nothing is written (the model path does not even exist,
    so a check made after loading would have failed on it instead)."""
    from gcd_trl.cli import main

    out = tmp_path / "out"
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    if command == "rl":
        config = tiny_rl_config(tmp_path / "run.yaml", model_dir, str(tmp_path / "games"), out)
    else:
        data = tmp_path / "data.jsonl"
        data.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
        config = tmp_path / "sft.yaml"
        config.write_text(
            f"model_name_or_path: {model_dir}\noutput_dir: {out}\ndataset_path: {data}\nreport_to: none\n"
            "use_cpu: true\nbf16: false\n"
        )
    _no_token(monkeypatch, tmp_path)
    for setup, message in [
        (lambda: None, "export HF_TOKEN"),
        (lambda: _unreachable(monkeypatch), "does not answer"),
    ]:
        setup()
        with pytest.raises(SystemExit) as exc:
            main([command, "--config", str(config), "--push_to_hub", "true"])
        assert exc.value.code == 2
        err = capsys.readouterr()
        assert message in err.err + err.out and "Traceback" not in err.err
        assert not out.exists()


def _unreachable(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_sometoken0123456789")
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_free_port()}")


def test_rl_run_pushes_the_model_card_and_config_but_not_the_bulk(
    tmp_path, tiny_model_dir, games_dir, hub_server, monkeypatch, capsys
):
    """A one-round `gcd-trl rl --push_to_hub true` against the local Hub: the card, config and weights
    arrive; rollouts and the judge cache do not; no token or key is in any uploaded file."""
    import yaml

    from gcd_trl.cli import main

    monkeypatch.setenv("DEEPSEEK_API_KEY", "sk-judge-key-0123456789")
    out = tmp_path / "agent-run"
    (out / "judge_cache").mkdir(parents=True)
    (out / "judge_cache" / "ab.json").write_text('{"answer": 1}')  # as an external judge leaves it
    config = tiny_rl_config(tmp_path / "run.yaml", tiny_model_dir, games_dir, out)
    with pytest.raises(SystemExit) as exc:
        main(["rl", "--config", config, "--push_to_hub", "true", "--hub_model_id", "org/agent"])
    assert exc.value.code == 0, capsys.readouterr()
    assert "pushed to" in capsys.readouterr().out
    assert list((out / "rollouts").glob("round_*.jsonl"))  # written locally ...
    stored = hub_server.repos["org/agent"]
    assert not any(p.startswith(("rollouts/", "judge_cache/", "checkpoint-")) for p in stored)  # ... not sent
    assert "training_args.bin" not in stored
    assert {"README.md", "run_config.yaml", "config.json", "model.safetensors", "tokenizer.json"} <= set(
        stored
    )
    assert stored["model.safetensors"] == (out / "model.safetensors").read_bytes()
    card = stored["README.md"].decode()
    assert 'model="org/agent"' in card and "advantage estimator: `grpo` (GRPO)" in card
    assert yaml.safe_load(stored["run_config.yaml"])["trainer"]["push_to_hub"] is True
    for name, data in stored.items():
        assert hub_server.token.encode() not in data and b"sk-judge-key" not in data, name


def test_push_command_adds_this_checkpoints_eval_results(tmp_path, hub_server, capsys):
    """`gcd-trl push DIR --eval_dir E`: the card is rebuilt with the eval report of this checkpoint."""
    from huggingface_hub import ModelCard

    from gcd_trl.cli import main
    from gcd_trl.eval.runner import model_fingerprint
    from gcd_trl.trainers.card import write_run_config

    root = _run_folder(tmp_path / "run")
    write_run_config(
        root,
        {
            "trainer": {
                "advantage_estimator": "grpo",
                "max_rounds": 2,
                "tasks_per_round": 1,
                "num_generations": 2,
                "loss_type": "grpo",
                "beta": 0.0,
                "learning_rate": 1e-6,
            },
            "env": {"environment": "alfworld", "split": "L0", "part": "train", "max_episode_steps": 30},
            "gcd": {"gcd": False},
            "model": {"model_name_or_path": "Qwen/Qwen2.5-0.5B"},
        },
    )
    ev = tmp_path / "eval"
    ev.mkdir()
    (ev / "eval_config.json").write_text(
        json.dumps({"identity": {"model_fingerprint": model_fingerprint(str(root))}})
    )
    (ev / "report.json").write_text(
        json.dumps(
            {
                "environment": "alfworld",
                "split": "L0",
                "part": "test",
                "episodes": 10,
                "success_rate": 0.3,
                "complete": True,
            }
        )
    )
    other = tmp_path / "other-eval"
    other.mkdir()
    (other / "eval_config.json").write_text(json.dumps({"identity": {"model_fingerprint": "another-model"}}))
    (other / "report.json").write_text((ev / "report.json").read_text())
    with pytest.raises(SystemExit) as exc:
        main(["push", str(root), "--eval_dir", str(ev), "--eval_dir", str(other)])
    assert exc.value.code == 0, capsys.readouterr()
    assert f"left out of the card: {other}: evaluates another model" in capsys.readouterr().out
    card = hub_server.repos[f"{USER}/run"]["README.md"].decode()
    assert ModelCard(card).data.eval_results[0].metric_value == 0.3
    assert "rollouts/round_00000_rank0.jsonl" not in hub_server.repos[f"{USER}/run"]


def test_sft_run_pushes_the_model_and_its_card(tmp_path, tiny_model_dir, hub_server, capsys):
    """`gcd-trl sft --push_to_hub true`: the model, tokenizer, card and config arrive; the card links no
    local folder as a Hub dataset; the checkpoint and training_args.bin stay local."""
    import yaml

    from gcd_trl.cli import main
    from gcd_trl.data.io import save_rows

    rows = [
        {
            "messages": [
                {
                    "role": "user",
                    "content": f"Task: put a mug {i} in the sink.\nActions: 'go to sink 1', 'look'",
                },
                {"role": "assistant", "content": "<think>go</think><action>go to sink 1</action>"},
            ]
        }
        for i in range(4)
    ]
    save_rows(rows, tmp_path / "data" / "alfworld" / "agent_sft")
    out = tmp_path / "cold-start"
    config = dict(
        model_name_or_path=str(tiny_model_dir),
        output_dir=str(out),
        dataset_path=str(tmp_path / "data" / "alfworld" / "agent_sft"),
        max_length=128,
        per_device_train_batch_size=4,
        max_steps=1,
        save_strategy="steps",
        save_steps=1,
        use_cpu=True,
        bf16=False,
        activation_checkpointing=False,
        report_to="none",
        num_threads=1,
    )
    (tmp_path / "sft.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(SystemExit) as exc:
        main(["sft", "--config", str(tmp_path / "sft.yaml"), "--push_to_hub", "true"])
    assert exc.value.code == 0, capsys.readouterr()
    stored = hub_server.repos[f"{USER}/cold-start"]
    assert {"README.md", "run_config.yaml", "config.json", "model.safetensors", "tokenizer.json"} <= set(
        stored
    )
    assert (out / "checkpoint-1").is_dir() and (out / "training_args.bin").is_file()  # kept local ...
    assert not any(p.startswith("checkpoint-") or p == "training_args.bin" for p in stored)  # ... not sent
    card = stored["README.md"].decode()
    assert "huggingface.co/datasets" not in card and "`agent_sft` (local)" in card
    assert "Task: put a mug " in card and 'model="tester/cold-start"' in card
    for name, data in stored.items():
        assert hub_server.token.encode() not in data, name


def test_value_sft_push_without_a_token_fails_before_the_model_loads(tmp_path, monkeypatch):
    from gcd_trl.trainers.value_sft import ValueSFTError, parse_config

    _no_token(monkeypatch, tmp_path)
    argv = ["--model_name_or_path", str(tmp_path / "m"), "--output_dir", str(tmp_path / "out")]
    argv += ["--agent_data", str(tmp_path / "a"), "--value_data", str(tmp_path / "v"), "--use_cpu", "true"]
    argv += ["--bf16", "false", "--report_to", "none", "--push_to_hub", "true"]
    with pytest.raises(ValueSFTError, match="export HF_TOKEN"):
        parse_config(argv)
    assert not (tmp_path / "out").exists()
