"""Small-sample statistics for comparing policies on the same tasks.

Two policies evaluated on the same games are paired: each game gives one outcome per policy. Their
success rates' intervals overlap long before the difference is noise, so a comparison counts the
discordant games (won by one policy, lost by the other) and asks how likely that split is under "no
difference" (exact McNemar: the discordant games are fair coin flips).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a success rate (sane at 0 and n, unlike the normal approximation)."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def binomial_tail(k: int, n: int) -> float:
    """P(X >= k) for X ~ Binomial(n, 1/2), exactly (integer arithmetic, then one division)."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    return sum(math.comb(n, i) for i in range(k, n + 1)) / 2**n


def mcnemar_exact(b: int, c: int) -> tuple[float, float]:
    """Exact McNemar test of `b` games won only by the new policy against `c` won only by the old one.

    Returns (one-sided p for "new is better", two-sided p). Under no difference each discordant game is a
    fair coin, so the one-sided p is P(X >= b) with X ~ Binomial(b + c, 1/2).
    """
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, got b={b}, c={c}")
    n = b + c
    one_sided = binomial_tail(b, n)
    two_sided = min(1.0, 2 * min(binomial_tail(b, n), binomial_tail(c, n)))
    return one_sided, two_sided


@dataclass(frozen=True)
class PairedComparison:
    """`new` against `old` on the games both played (one episode a game each)."""

    new: str
    old: str
    games: int
    new_wins: int
    old_wins: int
    both: int  # won by both
    neither: int
    new_only: int  # b: won by new, lost by old
    old_only: int  # c
    p_one_sided: float  # new better than old
    p_two_sided: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def sentence(self) -> str:
        return (
            f"{self.new} vs {self.old} on the same {self.games} games: {self.new} won {self.new_wins}, "
            f"{self.old} won {self.old_wins}; discordant {self.new_only} (only {self.new}) vs {self.old_only} "
            f"(only {self.old}); exact McNemar one-sided p = {self.p_one_sided:.4g} "
            f"(two-sided {self.p_two_sided:.4g})"
        )


def outcomes(episodes: Sequence[Mapping[str, Any]]) -> dict[str, bool]:
    """Game -> won, from episode lines (`task`, `won`). One episode a game: a second one is an error,
    since a paired test needs one outcome per game and policy."""
    out: dict[str, bool] = {}
    for e in episodes:
        key = str(e["task"])
        if key in out:
            raise ValueError(f"task {key!r} has more than one episode: a paired test needs one per policy")
        out[key] = bool(e["won"])
    return out


def paired(
    new: Sequence[Mapping[str, Any]], old: Sequence[Mapping[str, Any]], new_name: str, old_name: str
) -> PairedComparison:
    """The paired comparison of two policies' episode lines, on the games both have (none: an error)."""
    a, b = outcomes(new), outcomes(old)
    games = sorted(set(a) & set(b))
    if not games:
        raise ValueError(f"{new_name} and {old_name} share no game: nothing to compare")
    new_only = sum(a[g] and not b[g] for g in games)
    old_only = sum(b[g] and not a[g] for g in games)
    one, two = mcnemar_exact(new_only, old_only)
    return PairedComparison(
        new=new_name,
        old=old_name,
        games=len(games),
        new_wins=sum(a[g] for g in games),
        old_wins=sum(b[g] for g in games),
        both=sum(a[g] and b[g] for g in games),
        neither=sum(not a[g] and not b[g] for g in games),
        new_only=new_only,
        old_only=old_only,
        p_one_sided=one,
        p_two_sided=two,
    )
