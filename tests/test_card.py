"""The model card: it cites what the run used (each entry with its year and arXiv id or URL), says what the
model is, shows a real agent prompt, carries this checkpoint's `gcd-trl eval` results as `model-index`
(and not another model's), and shows no internal values or made-up Hub dataset links."""

from __future__ import annotations

import json
import re

import pytest
from huggingface_hub import ModelCard

from gcd_trl.rollout.settings import EnvArguments
from gcd_trl.trainers.card import (
    CITATIONS,
    cited_methods,
    read_run_config,
    rl_card,
    sft_card,
    write_rl_card,
    write_run_config,
)


def _config(estimator="grpo", gcd=False, nthr=False, history_length=None, environment="alfworld"):
    """A resolved RL config as `grpo_config.resolved_dict` writes it (the sections the card reads)."""
    env = EnvArguments(environment=environment, split="L0", history_length=history_length)
    return {
        "trainer": {
            "advantage_estimator": estimator,
            "nthr": nthr,
            "max_rounds": 200,
            "max_steps": 200,
            "tasks_per_round": 16,
            "num_generations": 8,
            "loss_type": "grpo",
            "beta": 0.0,
            "learning_rate": 1e-6,
            "hub_model_id": None,
            "output_dir": "outputs/run",
        },
        "env": env.__dict__ | {"meta_reasoning": estimator == "rlvmr"},
        "gcd": {"gcd": gcd, "gcd_coef": 0.5, "judge_labels": "rules", "correction": True},
        "model": {"model_name_or_path": "Qwen/Qwen2.5-1.5B-Instruct"},
    }


@pytest.mark.parametrize(
    "estimator, gcd, nthr, expected",
    [
        ("grpo", False, False, ["grpo", "trl"]),
        ("grpo", True, False, ["grpo", "gcd", "trl"]),
        ("gigpo", False, False, ["grpo", "gigpo", "trl"]),
        ("rlvmr", True, False, ["grpo", "rlvmr", "gcd", "trl"]),
        ("gae", False, False, ["ppo", "trl"]),
        ("grpo", False, True, ["grpo", "nthr", "trl"]),
    ],
)
def test_the_card_cites_what_the_run_used(estimator, gcd, nthr, expected):
    config = _config(estimator, gcd, nthr)
    assert cited_methods(config) == expected
    card = rl_card(config, model_name="agent", repo_id="me/agent")
    cites = card[card.index("## Citations") :]
    for key, (_, bibtex) in CITATIONS.items():
        assert (bibtex in cites) == (key in expected), key
    if not gcd:
        assert "2509.23870" not in card and "Rethinking Reward Miscalibration" not in card


def test_every_citation_has_a_year_and_an_arxiv_id_or_url():
    for key, (_, bibtex) in CITATIONS.items():
        assert re.search(r"year\s*=\s*\{20\d\d\}", bibtex), key
        assert "url" in bibtex, key
        if key != "trl":
            assert re.search(r"eprint\s*=\s*\{\d{4}\.\d{5}\}", bibtex), key
    assert "2402.03300" in CITATIONS["grpo"][1] and "2505.18830" in CITATIONS["nthr"][1]


def test_the_card_says_what_the_model_is_and_shows_an_agent_prompt():
    card = rl_card(_config("gigpo", gcd=True, history_length=-1), model_name="agent", repo_id="me/agent")
    assert "[Qwen/Qwen2.5-1.5B-Instruct](https://huggingface.co/Qwen/Qwen2.5-1.5B-Instruct)" in card
    assert "ALFWorld, split `L0` (train part)" in card and "`gigpo` (GiGPO)" in card
    assert "GCD: on (gcd_coef 0.5" in card and "200 rounds" in card
    summary = card.split("## Training config")[0]
    assert "the whole episode's history" in summary and not re.search(r"history:? -1|last -1", summary)
    assert "put a clean mug in coffeemachine" in card and 'model="me/agent"' in card  # the agent prompt
    assert "time machine" not in card  # not TRL's generic example
    assert "huggingface.co/datasets" not in card
    assert "advantage_estimator: gigpo" in card  # the full resolved config, as YAML
    meta = ModelCard(card).data
    assert meta.base_model == "Qwen/Qwen2.5-1.5B-Instruct" and "gcd" in meta.tags
    assert meta.eval_results is None  # no evaluation yet


def test_a_local_base_model_is_named_not_linked(tmp_path):
    config = _config()
    config["model"]["model_name_or_path"] = str(tmp_path)
    card = rl_card(config, model_name="agent", repo_id="me/agent")
    assert f"a local model (`{tmp_path.name}`)" in card and "huggingface.co/" + str(tmp_path) not in card
    assert ModelCard(card).data.base_model is None


def _eval_dir(folder, fingerprint, split, rate, environment="alfworld"):
    folder.mkdir(parents=True)
    identity = {"policy": "model", "split": split, "model_fingerprint": fingerprint}
    (folder / "eval_config.json").write_text(json.dumps({"identity": identity}))
    report = {"environment": environment, "split": split, "part": "test", "episodes": 140, "success": 100}
    report |= {"success_rate": rate, "complete": True}
    (folder / "report.json").write_text(json.dumps(report))
    return folder


def test_eval_results_of_this_checkpoint_become_model_index(tmp_path):
    from gcd_trl.eval.runner import model_fingerprint

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text('{"model_type": "qwen2"}')
    (run / "model.safetensors").write_bytes(b"weights")
    write_run_config(run, _config())
    mine = model_fingerprint(str(run))
    _eval_dir(run / "eval" / "L0", mine, "L0", 0.75)
    elsewhere = _eval_dir(tmp_path / "evals" / "L2", mine, "L2", 0.5)
    _eval_dir(tmp_path / "evals" / "other", "another-model", "L1", 0.99)  # another model's: left out

    write_rl_card(run, "me/agent", eval_dirs=[elsewhere, tmp_path / "evals" / "other"])
    card = (run / "README.md").read_text()
    results = ModelCard(card).data.eval_results
    assert [(r.dataset_split, r.metric_type, r.metric_value) for r in results] == [
        ("L0/test", "success_rate", 0.75),
        ("L2/test", "success_rate", 0.5),
    ]
    assert "| ALFWorld | L0 (test) | 140 | 75.0% |" in card and "99.0%" not in card
    assert read_run_config(run)["trainer"]["advantage_estimator"] == "grpo"


def test_the_sft_card_links_hub_datasets_only(tmp_path):
    local = tmp_path / "data" / "alfworld" / "agent_sft"
    local.mkdir(parents=True)
    mixture = [
        {"path": str(local), "weight": 1.0, "rows": 10, "used": 10},
        {"path": "someone/alfworld-sft", "weight": 0.5, "rows": 8, "used": 4},
    ]
    config = {"trainer": {"learning_rate": 1e-5}, "data": {}, "model": {"model_name_or_path": str(tmp_path)}}
    card = sft_card(
        config, model_name="cold", repo_id="me/cold", mixture=mixture, example="Your task is to: x"
    )
    assert "huggingface.co/datasets/someone/alfworld-sft" in card
    assert "`agent_sft` (local)" in card and "huggingface.co/datasets/" + str(local) not in card
    assert "huggingface.co/datasets/data" not in card
    assert 'prompt = """Your task is to: x"""' in card
    assert ModelCard(card).data.datasets == ["someone/alfworld-sft"]
