"""`gcd-trl analyze theory`: the paper's section 3 / appendix A results against their closed forms."""

import json
import math

import numpy as np
import pytest

from gcd_trl.analysis import theory as T
from gcd_trl.cli import main


def test_lemma_3_1_monte_carlo_matches_closed_form():
    rows = T.lemma_3_1_grid(samples=100_000, seed=1)
    assert len(rows) >= 20
    for r in rows:
        assert r["closed_form"] == pytest.approx(r["q"] * r["r"] * (r["q"] - 1))
        assert r["closed_form"] < 0  # a risky action that is not certain is punished on average
        # within Monte-Carlo error (4 standard errors: ~45 points never all pass by luck otherwise)
        assert abs(r["monte_carlo"] - r["closed_form"]) <= 4 * r["stderr"]
        # GRPO's group-mean baseline scales the expectation by 1 - 1/G
        assert abs(r["monte_carlo_group"] - r["closed_form_group"]) <= 4 * r["stderr_group"]
        assert r["closed_form_group"] == pytest.approx((1 - 1 / r["group_size"]) * r["closed_form"])


def test_lemma_3_1_monte_carlo_detects_a_wrong_formula():
    # the check has power: at these sizes a formula off by 10% is rejected
    rng = np.random.default_rng(0)
    mc, se = T.lemma_3_1_monte_carlo(0.3, 0.5, 0.4, 200_000, rng)
    assert abs(mc - 1.1 * T.lemma_3_1_closed_form(0.5, 0.4)) > 4 * se


def test_lemma_3_1_rejects_impossible_probabilities():
    with pytest.raises(ValueError, match="p and p \\+ r"):
        T.lemma_3_1_monte_carlo(0.8, 0.5, 0.4, 1000, np.random.default_rng(0))
    with pytest.raises(ValueError, match="q must be"):
        T.lemma_3_1_monte_carlo(0.1, 1.5, 0.1, 1000, np.random.default_rng(0))


def test_theorem_3_2_sign_conditions_on_a_grid():
    rows = T.theorem_3_2_grid()
    assert len(rows) >= 100
    for r in rows:
        adv = r["advantages"]
        assert sum(adv) == pytest.approx(0.0, abs=1e-12)  # advantages of a softmax policy sum to zero
        assert adv[0] < 0  # the flawed action is always punished (Lemma 3.1)
        # the closed-form margin predicts the sign of the measured change of p1 under z += C*A
        assert (r["p1_rise_margin"] > 0) == r["p1_rises"]
        assert r["p1_change"] / 1e-4 == pytest.approx(r["q"] * r["p1_rise_margin"], rel=1e-2, abs=1e-7)
        # ... but log(p3/p1) always grows, by exactly C*(A3 - A1) = C*((2-2q-qh)qr + qh*rh) > 0
        assert r["gap_margin"] > 0 and r["gap_widens"]
        assert r["log_gap_change"] == pytest.approx(1e-4 * r["gap_margin"], rel=1e-9)
    # squeezing happens: somewhere the punished flawed action still gains probability
    assert 0 < sum(r["p1_rises"] for r in rows) < len(rows)


def test_theorem_3_2_margin_matches_the_definition():
    for q, qh, r, rh in [(0.1, 0.8, 0.04, 0.2), (0.3, 0.3, 0.1, 0.5), (0.5, 0.45, 0.01, 0.5)]:
        pi = np.array([q, qh, 1 - q - qh])
        adv = T.three_action_advantages(q, qh, r, rh)
        assert T.p1_rise_margin(q, qh, r, rh) == pytest.approx(adv[0] - pi @ adv)
        assert T.gap_margin(q, qh, r, rh) == pytest.approx(adv[2] - adv[0])


def test_sampled_grpo_follows_the_expected_dynamics_and_p1_rises_then_falls():
    out = T.grpo_three_action((0.85, 0.9, 0.1), (0.1, 0.8, 0.1), lr=0.5, steps=200, seed=0)
    exp, smp = np.array(out["expected"]), np.array(out["sampled"])
    assert np.abs(exp - smp).max() < 0.05  # the sampled GRPO path tracks the expected one
    peak = int(np.argmax(exp[:, 0]))
    assert 0 < peak < 200 and exp[peak, 0] > exp[0, 0] + 0.02  # the flawed action first gains...
    assert exp[-1, 0] < exp[0, 0] and exp[-1, 2] > 0.95  # ...then loses, and the good one wins
    # the theorem's margin, evaluated along the path, changes sign where p1 peaks
    margins = np.array(out["p1_rise_margin"])
    assert margins[0] > 0 and margins[-1] < 0
    assert abs(int(np.argmax(margins < 0)) - peak) <= 1


def test_push_dynamics_safe_regime_and_danger_zone():
    lo, hi = T.push_fixed_points(0.3, 0.05)
    assert lo < 0.5 < hi and lo * 0.3 * (1 - lo) == pytest.approx(0.05)
    assert T.simulate_push(lo * 0.5, 0.3, 0.05)[-1] == pytest.approx(lo, abs=1e-3)  # pushed up, held at q-
    assert T.simulate_push(hi - 0.05, 0.3, 0.05)[-1] == pytest.approx(lo, abs=1e-3)  # below q+: corrected
    assert T.simulate_push(hi + 0.05, 0.3, 0.05)[-1] > 0.99  # above q+: runaway
    assert T.push_fixed_points(0.15, 0.05) is None  # c > r/4: no balance anywhere
    assert T.simulate_push(0.01, 0.15, 0.05, steps=5000)[-1] > 0.99


def test_coupled_samples_flawed_action_rises_until_eq19_holds():
    for xi in (2.0, 4.0, 8.0):
        run = T.simulate_coupled(0.3, 0.2, r=0.2, xi=xi, delta=0.5, lr=0.05, steps=20000)
        assert run["p2_rises_first"] and run["p2_final"] < run["p2_peak"]
        assert run["eq19_ratio_at_peak"] == pytest.approx(xi * 0.5, rel=0.02)  # eq. 19 at the turning point
    weak = T.simulate_coupled(0.3, 0.2, r=0.2, xi=1.0, delta=0.5, lr=0.05, steps=2000)
    assert not weak["p2_rises_first"]  # xi*delta below q2(1-q2)/(q1(1-q1)): no rise at all
    strong = [T.simulate_coupled(0.3, 0.2, r=0.2, xi=x, delta=0.5, lr=0.05, steps=20000) for x in (2.0, 8.0)]
    assert strong[1]["p1_at_peak"] > strong[0]["p1_at_peak"]  # more leak: the good action must saturate more


def test_cli_writes_theory_json_and_png(tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["analyze", "theory", "--out", str(tmp_path), "--samples", "20000"])
    assert exit_info.value.code == 0
    data = json.loads((tmp_path / "theory.json").read_text())
    rows = data["lemma_3_1"]
    assert len(rows) >= 20
    for r in rows:
        assert {"p", "q", "r", "closed_form", "monte_carlo", "stderr"} <= set(r)
        assert all(isinstance(r[k], float) and math.isfinite(r[k]) for k in ("monte_carlo", "stderr"))
    assert data["theorem_3_2"]["summary"]["gap_always_widens"] is True
    assert (tmp_path / "theory.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_rejects_too_few_samples(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["analyze", "theory", "--out", str(tmp_path), "--samples", "5"])
    assert exit_info.value.code == 2
    assert "samples must be >= 100" in capsys.readouterr().err
    assert not (tmp_path / "theory.json").exists()
