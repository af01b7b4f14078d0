"""The analysis toolkit on the tiny model (CPU) and real ALFWorld step records.

Trajectories: the expert plays 3 generated games twice; the second episode of each game makes scripted
mistakes (repeats), so the records hold repeated actions, won and lost episodes and GCD-rule labels.
"""

import json
import shlex
import shutil

import pytest
import torch

from gcd_trl.cli import main

PNG = b"\x89PNG\r\n\x1a\n"


def cli(command: str) -> int:
    """Run `gcd-trl analyze COMMAND` in-process; return its exit code."""
    with pytest.raises(SystemExit) as exit_info:
        main(["analyze", *shlex.split(command)])
    return exit_info.value.code


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    from gcd_trl.analysis.scripted import scripted_records
    from gcd_trl.envs.alfworld_gen import generate_games

    games = generate_games(tmp_path_factory.mktemp("games"), 3, seed=0, task_types=(1, 2, 3))
    return scripted_records(games, episodes_per_game=2)


@pytest.fixture(scope="module")
def run_dir(records, tiny_model_dir, tmp_path_factory):
    """A training run's layout: rollouts/round_*.jsonl and two checkpoints (the base model, and one
    fitted to the repeated action so it repeats it when sampled)."""
    from gcd_trl.analysis.common import encode_records, load_model, sequence_logprob
    from gcd_trl.analysis.consistency import repeat_states
    from gcd_trl.rollout.records import write_jsonl_atomic

    run = tmp_path_factory.mktemp("run")
    write_jsonl_atomic(run / "rollouts" / "round_00000_rank0.jsonl", [{**r, "round": 0} for r in records])
    shutil.copytree(tiny_model_dir, run / "checkpoint-1")
    net, tok = load_model(tiny_model_dir, "cpu")
    samples = encode_records(tok, repeat_states(records)[:4])
    net.train()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for step in range(100):
        loss = -sequence_logprob(net, samples[step % len(samples)])
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.save_pretrained(run / "checkpoint-2")
    tok.save_pretrained(run / "checkpoint-2")
    return run


def test_scripted_records_follow_the_schema(records):
    from gcd_trl.analysis.consistency import repeat_states
    from gcd_trl.gcd.labels import label_records
    from gcd_trl.rollout.records import check_step

    for r in records:
        check_step(r, "scripted")
    assert len(repeat_states(records)) >= 3
    labels = [r["label"] for r in label_records(records)]
    assert labels.count(1) >= 2 and labels.count(0) >= 2
    assert {r["won"] for r in records if r["done"]} == {True, False}


def test_batched_forward_matches_single_sequences(records, tiny_model_dir):
    from gcd_trl.analysis.common import encode_records, forward_samples, load_model, sequence_logprob

    net, tok = load_model(tiny_model_dir, "cpu")
    samples = encode_records(tok, records[:5])
    batched = forward_samples(
        net, samples, pad_id=tok.pad_token_id, want=("logp", "h"), max_batch_tokens=10**6
    )
    for s, f in zip(samples, batched):
        with torch.no_grad():
            assert f.logp.sum().item() == pytest.approx(sequence_logprob(net, s).item(), rel=1e-4)
            ids = torch.tensor([s.prompt_ids + s.completion_ids])
            logits = net(input_ids=ids).logits[0, len(s.prompt_ids) - 1 : -1]
            assert torch.allclose(net.get_output_embeddings()(f.h), logits, atol=1e-4)


def test_eq2_is_the_readout_gradient_inner_product(records, tiny_model_dir):
    """Eq. 2 summed over token pairs equals <grad_W log p_i, grad_W log p_j> for the readout W."""
    from gcd_trl.analysis.common import encode_records, forward_samples, load_model
    from gcd_trl.analysis.influence import eq2_terms

    net, tok = load_model(tiny_model_dir, "cpu")
    samples = encode_records(tok, records[:4])
    fw = forward_samples(net, samples, pad_id=tok.pad_token_id, want=("h", "probs"))
    s, s_hidden, per_token = eq2_terms(fw, block_tokens=7)  # odd block size: the blocking must not matter
    w = net.get_output_embeddings().weight.detach()
    grads = []
    for f in fw:
        weight = w.clone().requires_grad_(True)
        logp = torch.log_softmax(f.h @ weight.T, dim=-1).gather(1, f.targets[:, None]).sum()
        grads.append(torch.autograd.grad(logp, weight)[0].reshape(-1))
    sizes = [len(f.targets) for f in fw]
    for i in range(4):
        for j in range(4):
            assert s[i, j].item() * sizes[i] * sizes[j] == pytest.approx(
                (grads[i] @ grads[j]).item(), rel=1e-3
            )
            assert s_hidden[i, j].item() == pytest.approx((fw[i].h @ fw[j].h.T).mean().item(), rel=1e-4)
    assert per_token.shape == (sum(sizes), 4)  # each token's mean influence on each sample
    first = per_token[: sizes[0]].mean(0)
    assert torch.allclose(first, s[0], rtol=1e-4, atol=1e-6)


def test_gradient_sketch_keeps_inner_products(records, tiny_model_dir):
    from gcd_trl.analysis.common import GradientSketch, encode_records, load_model

    net, tok = load_model(tiny_model_dir, "cpu")
    samples = encode_records(tok, records[:3])
    exact = GradientSketch(net).matrix(samples)
    sketch = GradientSketch(net, dim=32768, seed=1).matrix(samples)
    gram, approx = exact @ exact.T, sketch @ sketch.T
    norms = exact.norm(dim=1)
    # count sketch: unbiased, error ~ |g_i||g_j|/sqrt(dim)
    assert ((gram - approx).abs() <= 6 * norms[:, None] * norms[None, :] / 32768**0.5).all()
    subset = GradientSketch(net, params=r"layers\.1\.mlp")
    assert 0 < subset.num_params < exact.shape[1]


def test_similarity_agent_steps_are_more_alike_than_arithmetic(run_dir, tiny_model_dir, tmp_path):
    rollouts = run_dir / "rollouts"
    code = cli(
        f"similarity --model {tiny_model_dir} --trajectories {rollouts} --out {tmp_path} --num-samples 12 --gradients"
    )
    assert code == 0
    data = json.loads((tmp_path / "similarity.json").read_text())
    assert data["num_samples"] == {"agent": 12, "reference": 12}
    assert data["hidden"]["agent"]["count"] == 12 * 11
    assert data["hidden"]["agent"]["mean"] > data["hidden"]["reference"]["mean"] + 0.1  # Figure 3a
    assert data["gradient"]["mode"] == "exact" and -1 <= data["gradient"]["agent"]["mean"] <= 1
    assert (tmp_path / "similarity.png").read_bytes()[:8] == PNG


def test_coupling_first_order_matches_real_sgd_steps(run_dir, tiny_model_dir, tmp_path):
    args = f"coupling --model {tiny_model_dir} --trajectories {run_dir / 'rollouts'} --num-actions 4 --per-action 3"
    assert cli(f"{args} --out {tmp_path} --verify 2") == 0
    data = json.loads((tmp_path / "coupling.json").read_text())
    n = data["num_samples"]
    assert n >= 8 and len(data["delta_logp"]) == n and len(data["action_matrix"]) == len(data["actions"])
    for row in data["verify"]:  # a real step on sample i, then every log p measured: first order holds
        assert row["pearson"] > 0.99 and row["relative_error"] < 0.05
    s = data["summary"]
    assert s["self_mean"] > 0  # a step on a sample raises its own likelihood
    assert s["same_action_mean"] > s["different_action_mean"]  # Figure 3b's diagonal
    assert data["seconds"]["gradients"] > 0
    # the weights were restored after each real step: a second run gives the same matrix
    assert cli(f"{args} --out {tmp_path / 'again'} --verify 0") == 0
    again = json.loads((tmp_path / "again" / "coupling.json").read_text())
    assert torch.allclose(torch.tensor(again["delta_logp"]), torch.tensor(data["delta_logp"]), rtol=1e-5)


def test_influence_over_checkpoints(run_dir, tmp_path):
    models = f"--model {run_dir / 'checkpoint-1'} --model {run_dir / 'checkpoint-2'}"
    code = cli(f"influence {models} --trajectories {run_dir / 'rollouts'} --out {tmp_path} --per-class 4")
    assert code == 0
    data = json.loads((tmp_path / "influence.json").read_text())
    assert data["label_source"] == "rules" and data["num_good"] >= 2 and data["num_bad"] == 4
    assert [c["label"] for c in data["checkpoints"]] == ["step 1", "step 2"]
    for c in data["checkpoints"]:
        e = c["eq2"]
        assert e["gap"] == pytest.approx(e["same_class"] - e["different_class"])
        assert min(e["good_good"], e["bad_bad"]) <= e["same_class"] <= max(e["good_good"], e["bad_bad"])
    # training changed the model, so the influence changed
    assert data["checkpoints"][0]["eq2"]["gap"] != data["checkpoints"][1]["eq2"]["gap"]
    assert (tmp_path / "influence.png").read_bytes()[:8] == PNG


def test_influence_needs_both_classes(records, tiny_model_dir, tmp_path, capsys):
    from gcd_trl.rollout.records import write_jsonl_atomic

    won_only = [r for r in records if r["group"] == 0 and r["traj"] == 0]  # one won episode: no bad step
    write_jsonl_atomic(tmp_path / "won.jsonl", won_only)
    code = cli(
        f"influence --model {tiny_model_dir} --trajectories {tmp_path / 'won.jsonl'} --out {tmp_path / 'out'}"
    )
    assert code == 2
    assert "need at least 2 good and 2 bad" in capsys.readouterr().err
    assert not (tmp_path / "out" / "influence.json").exists()


def test_consistency_rises_when_the_model_learns_to_repeat(run_dir, tmp_path):
    models = f"--model {run_dir / 'checkpoint-1'} --model {run_dir / 'checkpoint-2'}"
    code = cli(f"consistency {models} --trajectories {run_dir / 'rollouts'} --out {tmp_path} --max-states 4")
    assert code == 0
    data = json.loads((tmp_path / "consistency.json").read_text())
    base, trained = (c["repeat"] for c in data["checkpoints"])
    assert base["states"] == trained["states"] == 4
    assert sum(base["histogram"]) == 4 and len(base["histogram"]) == 11
    assert base["high_share"] == 0.0  # a random model never repeats an action 5 times in 10
    assert trained["high_share"] > base["high_share"] and trained["mean_consistency"] >= 0.5
    assert {"good", "bad"} <= set(data["checkpoints"][0])
    assert (tmp_path / "consistency.png").read_bytes()[:8] == PNG


def test_tokens_writes_weights_html_and_png(run_dir, tiny_model_dir, tmp_path):
    rollouts = run_dir / "rollouts"
    code = cli(
        f"tokens --model {tiny_model_dir} --trajectories {rollouts} --out {tmp_path} --num-samples 6 "
        "--against other-class"
    )
    assert code == 0
    data = json.loads((tmp_path / "tokens.json").read_text())
    assert data["num_samples"] == 6 and data["top_tokens"]
    for s in data["samples"]:
        assert len(s["tokens"]) == len(s["weights"]) > 0
        assert s["label"] in (0, 1)
    html = (tmp_path / "tokens.html").read_text()
    assert html.count("<span") == sum(len(s["tokens"]) for s in data["samples"])
    assert (tmp_path / "tokens.png").read_bytes()[:8] == PNG


def test_analyze_all_on_a_run(run_dir, tmp_path):
    out = tmp_path / "report"
    assert cli(f"all --run {run_dir} --out {out} --quick --only theory similarity influence") == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["models"] == [str(run_dir / "checkpoint-1"), str(run_dir / "checkpoint-2")]
    statuses = {k: v["status"] for k, v in summary["analyses"].items()}
    assert statuses == {"theory": "ok", "similarity": "ok", "influence": "ok"}
    report = (out / "report.md").read_text()
    for name in ("theory", "similarity", "influence"):
        assert f"![{name}]({name}.png)" in report and (out / f"{name}.png").is_file()


def test_bad_inputs_are_named(run_dir, tmp_path, tiny_model_dir, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"group": 0, "traj": 0, "step": 0, "anchor": "a", "prompt": "p"}) + "\n")
    assert cli(f"tokens --model {tiny_model_dir} --trajectories {bad} --out {tmp_path}") == 2
    assert "bad.jsonl:1: missing field 'completion'" in capsys.readouterr().err
    rollouts = run_dir / "rollouts"
    assert cli(f"tokens --model {tmp_path / 'nope'} --trajectories {rollouts} --out {tmp_path}") == 2
    assert "model folder not found" in capsys.readouterr().err
    code = cli(
        f"similarity --model {tiny_model_dir} --trajectories {rollouts} --out {tmp_path} --reference {bad}"
    )
    assert code == 2 and "has no column 'question'" in capsys.readouterr().err
    assert cli(f"all --run {tmp_path / 'no_run'}") == 2
    assert "run folder not found" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.png"))


def test_find_checkpoints_orders_steps_and_skips_a_final_copy(tmp_path):
    from gcd_trl.analysis.common import find_checkpoints, model_labels

    def model(folder, weights: bytes):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text("{}")
        (folder / "model.safetensors").write_bytes(weights)

    run = tmp_path / "run"
    model(run / "checkpoint-10", b"ten")
    model(run / "checkpoint-2", b"two")
    (run / "checkpoint-5").mkdir()  # no config.json: not a model folder
    model(run, b"ten")  # the final save repeats the last checkpoint
    (run / "training_args.bin").write_bytes(b"")
    assert find_checkpoints(run) == [run / "checkpoint-2", run / "checkpoint-10"]
    model(run, b"end")
    found = find_checkpoints(run)
    assert found[-1] == run
    assert model_labels(found) == ["step 2", "step 10", "final"]
    model(tmp_path / "rl" / "checkpoint-2", b"rl")
    assert model_labels([run / "checkpoint-10", tmp_path / "rl" / "checkpoint-2"]) == [
        "run/step 10",
        "rl/step 2",
    ]
