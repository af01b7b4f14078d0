"""NTHR token weights (Deng et al. 2025a, Eqs. 7-9) and the value-head classifier's loss, weights, metrics and
file format, on constructed examples; the body/LM-head split they rely on, on the tiny model."""

from __future__ import annotations

import math

import pytest
import torch

from gcd_trl.advantages.nthr import eta_value, nthr_weights, parse_eta, prediction_errors
from gcd_trl.trainers.value_head import (
    ValueHead,
    accuracy_counts,
    accuracy_metrics,
    backbone_and_lm_head,
    class_weights,
    find_head_file,
    weighted_bce,
)


def t(rows):
    return torch.tensor(rows, dtype=torch.float64)


def test_nthr_selects_negative_tokens_coupled_to_the_positive_sample():
    # one positive token: h+ = (1, 0), error g+ = (1, -1)  ->  s-bar+ = <g+,g+><h+,h+> = 2 = tau (beta = 1)
    pos_h, pos_g = [t([[1.0, 0.0]])], [t([[1.0, -1.0]])]
    neg_h = [t([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])]
    neg_g = [t([[1.0, -1.0], [1.0, -1.0], [-1.0, 1.0], [1.0, -1.0]])]
    res = nthr_weights(pos_h, pos_g, neg_h, neg_g, p=0.5)
    # scores: same error, twice the hidden state: 4 > tau; orthogonal state: 0; opposite error: -2;
    # exactly tau: not above it
    torch.testing.assert_close(res.scores[0], t([4.0, 0.0, -2.0, 2.0]))
    assert res.tau == pytest.approx(2.0) and res.positive_means == [pytest.approx(2.0)]
    assert res.eta == 0.0  # 2|0.5 - p| at p = 0.5: a selected token gets no penalty at all
    torch.testing.assert_close(res.weights[0], t([0.0, 1.0, 1.0, 1.0]))
    assert (res.selected, res.tokens) == (1, 4)
    # beta scales the threshold: beta = -1 puts tau at -2, so all but the opposite-error token are damped
    res = nthr_weights(pos_h, pos_g, neg_h, neg_g, p=0.25, beta=-1.0)
    torch.testing.assert_close(res.weights[0], t([0.5, 0.5, 1.0, 0.5]))


def test_nthr_scores_are_the_papers_double_sums():
    gen = torch.Generator().manual_seed(0)
    d, v = 5, 7
    pos_h = [torch.randn(n, d, generator=gen, dtype=torch.float64) for n in (3, 4)]
    neg_h = [torch.randn(n, d, generator=gen, dtype=torch.float64) for n in (2, 5)]

    def errors(n):
        probs = torch.softmax(torch.randn(n, v, generator=gen, dtype=torch.float64), -1)
        return prediction_errors(probs, torch.randint(0, v, (n,), generator=gen))

    pos_g = [errors(len(h)) for h in pos_h]
    neg_g = [errors(len(h)) for h in neg_h]
    res = nthr_weights(pos_h, pos_g, neg_h, neg_g, p=0.5, beta=1.0)

    def eq7(h, g):  # sum over every positive response i and token k of alpha_{k,k'} <h+_{i,k}, h>
        return sum(
            float(gi[k] @ g) * float(hi[k] @ h) for hi, gi in zip(pos_h, pos_g) for k in range(len(hi))
        )

    for hn, gn, s in zip(neg_h, neg_g, res.scores):
        assert s.tolist() == pytest.approx([eq7(hn[k], gn[k]) for k in range(len(hn))], rel=1e-9)
    means = [sum(eq7(h[k], g[k]) for k in range(len(h))) / len(h) for h, g in zip(pos_h, pos_g)]  # Eq. 9
    assert res.positive_means == pytest.approx(means, rel=1e-9)
    assert res.tau == pytest.approx(min(means), rel=1e-9)
    # an error row sums to 0 and has +1 - p at the token's own column
    g = prediction_errors(t([[0.2, 0.5, 0.3]]), torch.tensor([1]))
    torch.testing.assert_close(g, t([[-0.2, 0.5, -0.3]]))


def test_eta_rules():
    assert eta_value("2|0.5-p|", 0.25) == pytest.approx(0.5)
    assert eta_value("2|0.5-p|", 0.9) == pytest.approx(0.8)
    assert eta_value("1-p", 0.25) == pytest.approx(0.75)
    assert eta_value("p", 0.25) == pytest.approx(0.25)
    assert eta_value("0.3", 0.9) == pytest.approx(0.3)
    assert parse_eta("2 |0.5-p|") == "2|0.5-p|"
    for bad in ("half", "1.5", -0.1):
        with pytest.raises(ValueError):
            parse_eta(bad)
    with pytest.raises(ValueError, match="positive and one negative"):
        nthr_weights([], [], [t([[1.0]])], [t([[1.0]])], p=0.0)


def test_value_head_loss_weights_and_metrics():
    w = class_weights([1, 0, 0, 0], balance=True)
    assert w == {1: pytest.approx(0.5), 0: pytest.approx(1 / 6)}  # both classes weigh 1/2 in total
    assert class_weights([0, 0], balance=True) == {0: pytest.approx(0.5), 1: 0.0}
    # unbalanced: a plain mean over the labelled steps (17 steps weigh 1 in total, not 17)
    assert class_weights([1] * 5 + [0] * 12, balance=False) == {
        0: pytest.approx(1 / 17),
        1: pytest.approx(1 / 17),
    }
    assert class_weights([], balance=False) == {0: 0.0, 1: 0.0}
    for balance in (True, False):
        labels = [1] * 5 + [0] * 12
        w = class_weights(labels, balance)
        assert sum(w[x] for x in labels) == pytest.approx(1.0)
    logits = torch.tensor([0.0, 0.0, 3.0, -2.0])
    labels = torch.tensor([1.0, 0.0, 1.0, 1.0])
    weights = torch.tensor([0.5, 0.5, 0.0, 0.0])
    assert float(weighted_bce(logits, labels, weights)) == pytest.approx(math.log(2))
    full = weighted_bce(logits, labels, torch.ones(4))
    expected = 2 * math.log(2) + math.log1p(math.exp(-3.0)) + math.log1p(math.exp(2.0))
    assert float(full) == pytest.approx(expected)
    counts = accuracy_counts(logits, labels)  # logit 0 means bad
    assert counts.tolist() == [3.0, 1.0, 1.0, 1.0]
    m = accuracy_metrics(counts)
    assert m["value_head/accuracy_good"] == pytest.approx(1 / 3)
    assert m["value_head/accuracy_bad"] == 1.0
    assert m["value_head/accuracy"] == pytest.approx(0.5)
    assert m["value_head/balanced_accuracy"] == pytest.approx(2 / 3)


def test_value_head_file_round_trip(tmp_path):
    head = ValueHead(8)
    with torch.no_grad():
        head.score.weight.fill_(0.25)
    path = head.save(tmp_path / "run")
    assert find_head_file(tmp_path / "run") == path and find_head_file(tmp_path) is None
    other = ValueHead(8)
    other.load(tmp_path / "run")
    torch.testing.assert_close(other.score.weight, head.score.weight)
    with pytest.raises(ValueError, match="hidden size 8"):
        ValueHead(4).load(path)
    with pytest.raises(FileNotFoundError):
        ValueHead(8).load(tmp_path / "nothing")


@pytest.mark.parametrize("peft", [False, True])
def test_body_and_lm_head_give_the_models_logits(tiny_model_dir, peft):
    """The hidden state NTHR and the value head read is the LM head's input, also through a LoRA wrapper."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    if peft:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(
            model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
        )
    body, head = backbone_and_lm_head(model)
    ids = torch.tensor([[5, 9, 13, 17, 21]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits
        again = head(body(input_ids=ids).last_hidden_state)
    torch.testing.assert_close(again, logits)
