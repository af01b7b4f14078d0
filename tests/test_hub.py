"""The Hub push: the check before any model loads (no token, unreachable, refused, offline) and the
round trip with the real huggingface_hub client against a local Hub (tests/hub_server.py): the allow-list
arrives, rollouts, checkpoints, the judge cache and training_args.bin do not, and no secret travels."""

from __future__ import annotations

import socket

import pytest

from gcd_trl.hub import HubError, check_hub, files_to_push, push_folder
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
