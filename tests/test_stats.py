"""The paired test the demo and `gcd-trl eval compare` use, against cases computed by hand."""

from __future__ import annotations

import pytest

from gcd_trl.eval.stats import binomial_tail, mcnemar_exact, paired, wilson


def test_mcnemar_hand_computed():
    # 6 discordant games, all won by the new policy: P(X >= 6 | n=6) = 1/64
    assert mcnemar_exact(6, 0) == (pytest.approx(1 / 64), pytest.approx(2 / 64))
    # b=8, c=2 (n=10): P(X >= 8) = (C(10,8) + C(10,9) + C(10,10)) / 1024 = (45 + 10 + 1) / 1024
    one, two = mcnemar_exact(8, 2)
    assert one == pytest.approx(56 / 1024) and two == pytest.approx(112 / 1024)
    # the other direction: P(X >= 2 | n=10) = 1 - (1 + 10) / 1024
    assert mcnemar_exact(2, 8)[0] == pytest.approx(1013 / 1024)
    assert mcnemar_exact(0, 0) == (1.0, 1.0)  # no discordant game: no evidence either way
    assert mcnemar_exact(3, 3)[1] == 1.0
    assert binomial_tail(0, 5) == 1.0 and binomial_tail(6, 5) == 0.0
    with pytest.raises(ValueError, match="discordant"):
        mcnemar_exact(-1, 2)


def test_paired_counts_discordant_games_only():
    old = [{"task": f"g{i}", "won": w} for i, w in enumerate([1, 1, 0, 0, 0, 0, 1, 0])]
    new = [{"task": f"g{i}", "won": w} for i, w in enumerate([1, 0, 1, 1, 1, 0, 1, 1])]
    new.append({"task": "only-new", "won": True})  # a game the other policy did not play is left out
    cmp = paired(new, old, "RL", "SFT")
    assert (cmp.games, cmp.new_wins, cmp.old_wins) == (8, 6, 3)
    assert (cmp.both, cmp.neither, cmp.new_only, cmp.old_only) == (2, 1, 4, 1)
    assert cmp.p_one_sided == pytest.approx(6 / 32)  # P(X >= 4 | n=5) = (5 + 1) / 32
    assert "exact McNemar one-sided p = 0.1875" in cmp.sentence()
    with pytest.raises(ValueError, match="more than one episode"):
        paired(old + old[:1], old, "a", "b")
    with pytest.raises(ValueError, match="share no game"):
        paired([{"task": "x", "won": True}], old, "a", "b")


def test_wilson_interval():
    lo, hi = wilson(0, 30)
    assert lo == 0.0 and hi == pytest.approx(0.1135, abs=1e-4)
    lo, hi = wilson(15, 30)
    assert lo == pytest.approx(0.3315, abs=1e-4) and hi == pytest.approx(0.6685, abs=1e-4)
