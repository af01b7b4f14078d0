"""The paper's learning-dynamics results (section 3, appendix A), computed numerically.

Pure numpy, no model: each result is checked against its closed form so a reader can trust the figures.

- Lemma 3.1: an action taken with probability `q` that adds risk `r` to a base failure probability `p`
  has expected (std-free) advantage `q*r*(q-1)`: its indicator times `s - E[s]`, averaged over
  episodes. With GRPO's group-mean baseline over G episodes the expectation is `(1-1/G)*q*r*(q-1)`.
- Theorem 3.2 (three actions, paper eq. 10: each logit moves by C times its expected advantage, which
  is the exact expected policy gradient on softmax logits): the flawed action 1 may gain probability
  (squeezing) while its gap to the good action 3 always widens. The first-order sign conditions are
  derived here from the paper's own model; the inequality printed in the theorem differs (the proof's
  eq. 13 writes 2*q*qh^2*rh where 2*q*qh^2*r follows from the line above it), so both are reported.
- Figure 4: |A| = q*r*(1-q) is a parabola peaking at q = 1/2. Under a constant coupling push c the
  flawed logit moves by lr*(A + c): below q- = (1 - sqrt(1 - 4c/r))/2 it settles at q- (safe regime),
  above q+ = (1 + sqrt(1 - 4c/r))/2 it runs away to 1 (danger zone); with c > r/4 it always runs away.
- Appendix A.3: a good sample (risk -xi*r) and a flawed one (risk r) whose updates leak into each other
  with strength delta: the flawed action keeps rising until q2(1-q2) / (q1(1-q1)) >= xi*delta (eq. 19),
  i.e. until the good action is close to saturation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

DEFAULT_P = (0.1, 0.3, 0.5)
DEFAULT_Q = (0.1, 0.3, 0.5, 0.7, 0.9)
DEFAULT_R = (0.05, 0.2, 0.4)


# ---- Lemma 3.1 -------------------------------------------------------------------------------------
def lemma_3_1_closed_form(q: float, r: float) -> float:
    """E[1{a_i} * (s - E s)] = q*r*(q-1)."""
    return q * r * (q - 1.0)


def _check_pqr(p: float, q: float, r: float) -> None:
    if not (0.0 <= q <= 1.0):
        raise ValueError(f"q must be in [0, 1], got {q}")
    if not (0.0 <= p <= 1.0 and 0.0 <= p + r <= 1.0):
        raise ValueError(f"p and p + r must be probabilities, got p={p}, r={r}")


def lemma_3_1_monte_carlo(
    p: float, q: float, r: float, n: int, rng: np.random.Generator, group_size: int | None = None
) -> tuple[float, float]:
    """Sample n episodes: mistake ~ Bernoulli(q), failure ~ Bernoulli(p + r*mistake), reward 1 on success.

    Returns (mean, standard error) of mistake * advantage. Without `group_size` the advantage is
    s - E[s] as in the lemma; with it, s minus the mean of its group of G episodes (GRPO), and the
    standard error is taken over groups (the episodes of a group are not independent).
    """
    _check_pqr(p, q, r)
    if group_size is None:
        mistake = rng.random(n) < q
        success = rng.random(n) >= p + r * mistake
        values = mistake * (success - (1.0 - p - q * r))
        return float(values.mean()), float(values.std(ddof=1) / math.sqrt(n))
    groups = max(2, n // group_size)
    mistake = rng.random((groups, group_size)) < q
    success = rng.random((groups, group_size)) >= p + r * mistake
    adv = success - success.mean(axis=1, keepdims=True)
    per_group = (mistake * adv).mean(axis=1)
    return float(per_group.mean()), float(per_group.std(ddof=1) / math.sqrt(groups))


def lemma_3_1_grid(
    ps: Sequence[float] = DEFAULT_P,
    qs: Sequence[float] = DEFAULT_Q,
    rs: Sequence[float] = DEFAULT_R,
    *,
    samples: int = 200_000,
    group_size: int = 8,
    seed: int = 0,
) -> list[dict[str, float]]:
    """Closed form vs Monte Carlo (plain and GRPO group baseline) on every valid (p, q, r) of the grid."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in ps:
        for q in qs:
            for r in rs:
                if p + r > 1.0:
                    continue
                mc, se = lemma_3_1_monte_carlo(p, q, r, samples, rng)
                mcg, seg = lemma_3_1_monte_carlo(p, q, r, samples, rng, group_size=group_size)
                closed = lemma_3_1_closed_form(q, r)
                rows.append(
                    {
                        "p": p,
                        "q": q,
                        "r": r,
                        "closed_form": closed,
                        "monte_carlo": mc,
                        "stderr": se,
                        "group_size": group_size,
                        "closed_form_group": (1.0 - 1.0 / group_size) * closed,
                        "monte_carlo_group": mcg,
                        "stderr_group": seg,
                    }
                )
    return rows


# ---- Theorem 3.2 -----------------------------------------------------------------------------------
def three_action_advantages(q: float, qh: float, r: float, rh: float) -> np.ndarray:
    """Expected advantages (A1, A2, A3) of the paper's 3-action scene.

    Action 1: probability q, risk r; action 2: qh, rh; action 3 takes the rest and its risk makes the
    failure probability without action 1 equal p, i.e. r3 = -qh*rh/(1-q-qh). A_k = pi_k*(q*r - r_k)
    (p cancels); they sum to zero.
    """
    s = 1.0 - q - qh
    if not (q > 0 and qh > 0 and s > 0):
        raise ValueError(f"need q > 0, qh > 0 and q + qh < 1, got q={q}, qh={qh}")
    return np.array([q * r * (q - 1.0), qh * (q * r - rh), s * q * r + qh * rh])


def p1_rise_margin(q: float, qh: float, r: float, rh: float) -> float:
    """A1 - sum_k pi_k A_k: the first-order rate of log p1 under z += C*A. Positive: p1 rises.

    Equals qh*rh*(2qh + q - 1) - 2qr(qh^2 + qh*s + s^2) with s = 1 - q - qh.
    """
    s = 1.0 - q - qh
    return qh * rh * (2 * qh + q - 1.0) - 2 * q * r * (qh * qh + qh * s + s * s)


def paper_p1_condition(q: float, qh: float, r: float, rh: float) -> float:
    """The theorem's printed condition for p1 to rise: (2qh - 1)qh*rh + 2(qh + q - 1)qr >= 0."""
    return (2 * qh - 1.0) * qh * rh + 2 * (qh + q - 1.0) * q * r


def gap_margin(q: float, qh: float, r: float, rh: float) -> float:
    """A3 - A1 = (2 - 2q - qh)qr + qh*rh: the per-step change of log(p3/p1) / C. Positive when r, rh > 0."""
    return (2 - 2 * q - qh) * q * r + qh * rh


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def theorem_3_2_grid(
    qs: Sequence[float] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6),
    qhs: Sequence[float] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8),
    rs: Sequence[float] = (0.02, 0.1, 0.3),
    rhs: Sequence[float] = (0.05, 0.2, 0.5),
    step: float = 1e-4,
) -> list[dict[str, Any]]:
    """One small logit step z += step*A at every grid point with q + qh < 1: the measured change of p1 and
    of log(p3/p1) next to the closed-form margins and the printed condition."""
    rows = []
    for q in qs:
        for qh in qhs:
            if q + qh >= 1.0 - 1e-9:
                continue
            for r in rs:
                for rh in rhs:
                    pi = np.array([q, qh, 1.0 - q - qh])
                    adv = three_action_advantages(q, qh, r, rh)
                    new = softmax(np.log(pi) + step * adv)
                    margin = p1_rise_margin(q, qh, r, rh)
                    paper = paper_p1_condition(q, qh, r, rh)
                    d_p1 = float(new[0] - pi[0])
                    d_gap = float(np.log(new[2] / new[0]) - np.log(pi[2] / pi[0]))
                    rows.append(
                        {
                            "q": q,
                            "q_hat": qh,
                            "r": r,
                            "r_hat": rh,
                            "advantages": adv.tolist(),
                            "p1_rise_margin": margin,
                            "p1_change": d_p1,
                            "p1_rises": d_p1 > 0,
                            "paper_condition": paper,
                            "paper_condition_agrees": (paper >= 0) == (d_p1 > 0),
                            "gap_margin": gap_margin(q, qh, r, rh),
                            "log_gap_change": d_gap,
                            "gap_widens": d_gap > 0,
                        }
                    )
    return rows


def grpo_three_action(
    fail: Sequence[float],
    pi0: Sequence[float],
    *,
    lr: float,
    steps: int,
    group_size: int = 8,
    groups: int = 64,
    seed: int = 0,
) -> dict[str, list]:
    """Softmax policy over 3 actions trained by sampled GRPO and by its expected update.

    `fail[k]` is action k's failure probability (fixed: the env does not change). Sampled: each step
    draws `groups` groups of G episodes, advantage = reward - group mean, and ascends the policy
    gradient sum A*(e_a - pi) / (groups*G) on the logits. Expected: z += lr*A_k(pi) with
    A_k = pi_k*(mean failure - fail_k), the population-baseline limit (the sampled version is scaled
    by 1 - 1/G). Also returns the theorem's margins along the expected path.
    """
    f = np.asarray(fail, dtype=float)
    rng = np.random.default_rng(seed)
    z_exp = np.log(np.asarray(pi0, dtype=float))
    z_mc = z_exp.copy()
    out: dict[str, list] = {"step": [], "expected": [], "sampled": [], "p1_rise_margin": []}
    for t in range(steps + 1):
        pe, pm = softmax(z_exp), softmax(z_mc)
        out["step"].append(t)
        out["expected"].append(pe.tolist())
        out["sampled"].append(pm.tolist())
        # the theorem's parametrisation of the current policy: p = failure without action 1
        p_rest = (pe[1] * f[1] + pe[2] * f[2]) / (1.0 - pe[0])
        out["p1_rise_margin"].append(p1_rise_margin(pe[0], pe[1], f[0] - p_rest, f[1] - p_rest))
        if t == steps:
            break
        z_exp = z_exp + lr * pe * (pe @ f - f)
        n = groups * group_size
        actions = rng.choice(3, size=n, p=pm)
        reward = (rng.random(n) >= f[actions]).astype(float).reshape(groups, group_size)
        adv = (reward - reward.mean(axis=1, keepdims=True)).reshape(-1)
        onehot = np.eye(3)[actions]
        z_mc = z_mc + lr * (adv[:, None] * (onehot - pm)).sum(axis=0) / n * group_size / (group_size - 1)
    return out


# ---- Figure 4: the advantage parabola and the coupling push ---------------------------------------
def push_fixed_points(r: float, c: float) -> tuple[float, float] | None:
    """(q-, q+) where q*r*(1-q) = c, or None when c > r/4 (no balance point: runaway from anywhere)."""
    disc = 1.0 - 4.0 * c / r
    if disc < 0:
        return None
    root = math.sqrt(disc)
    return (1.0 - root) / 2.0, (1.0 + root) / 2.0


def simulate_push(q0: float, r: float, c: float, *, lr: float = 1.0, steps: int = 2000) -> np.ndarray:
    """q of a flawed action whose logit moves by lr*(q*r*(q-1) + c) each step (binary softmax)."""
    z = math.log(q0 / (1.0 - q0))
    qs = np.empty(steps + 1)
    for t in range(steps + 1):
        q = 1.0 / (1.0 + math.exp(-z))
        qs[t] = q
        z += lr * (q * r * (q - 1.0) + c)
    return qs


# ---- Appendix A.3: two coupled samples -------------------------------------------------------------
def simulate_coupled(
    q1: float, q2: float, *, r: float, xi: float, delta: float, lr: float = 1.0, steps: int = 4000
) -> dict[str, Any]:
    """Good sample 1 (risk -xi*r, A1 = xi*r*q1(1-q1)) and flawed sample 2 (risk r, A2 = -r*q2(1-q2)).

    Each step z1 += lr*(A1 + delta*A2), z2 += lr*(A2 + delta*A1). Returns both probability paths, where
    q2 peaks, q1 there, and eq. 19's ratio q2(1-q2) / (q1(1-q1)) at the peak (about xi*delta).
    """
    z1, z2 = math.log(q1 / (1 - q1)), math.log(q2 / (1 - q2))
    p1, p2 = np.empty(steps + 1), np.empty(steps + 1)
    for t in range(steps + 1):
        a, b = 1 / (1 + math.exp(-z1)), 1 / (1 + math.exp(-z2))
        p1[t], p2[t] = a, b
        adv1, adv2 = xi * r * a * (1 - a), -r * b * (1 - b)
        z1, z2 = z1 + lr * (adv1 + delta * adv2), z2 + lr * (adv2 + delta * adv1)
    peak = int(np.argmax(p2))
    ratio = p2[peak] * (1 - p2[peak]) / (p1[peak] * (1 - p1[peak]))
    keep = np.unique(np.concatenate([np.geomspace(1, steps + 1, 150).astype(int) - 1, [peak]]))
    return {
        "xi": xi,
        "delta": delta,
        "xi_delta": xi * delta,
        "step": keep.tolist(),  # the paths are stored at these steps (log-spaced, the peak included)
        "p1": p1[keep].tolist(),
        "p2": p2[keep].tolist(),
        "p2_rises_first": bool(p2[1] > p2[0]),
        "peak_step": peak,
        "p2_peak": float(p2[peak]),
        "p1_at_peak": float(p1[peak]),
        "eq19_ratio_at_peak": float(ratio),
        "p2_final": float(p2[-1]),
    }


# ---- the `gcd-trl analyze theory` report -----------------------------------------------------------
def run_theory(out_dir: str, *, samples: int = 200_000, group_size: int = 8, seed: int = 0) -> dict[str, Any]:
    """Compute every result, write OUT/theory.json and OUT/theory.png, return the JSON object."""
    from pathlib import Path

    from gcd_trl.analysis.common import write_json

    if samples < 100:
        raise ValueError(f"samples must be >= 100 for a meaningful Monte-Carlo error, got {samples}")
    if group_size < 2:
        raise ValueError(f"group_size must be >= 2, got {group_size}")
    lemma = lemma_3_1_grid(samples=samples, group_size=group_size, seed=seed)
    z = [abs(r["monte_carlo"] - r["closed_form"]) / max(r["stderr"], 1e-12) for r in lemma]
    zg = [abs(r["monte_carlo_group"] - r["closed_form_group"]) / max(r["stderr_group"], 1e-12) for r in lemma]
    grid = theorem_3_2_grid()
    three = grpo_three_action((0.85, 0.9, 0.1), (0.1, 0.8, 0.1), lr=0.5, steps=200, group_size=group_size)
    e1 = [p[0] for p in three["expected"]]
    r_values, c = (0.15, 0.3, 0.6), 0.05
    q_axis = np.linspace(0.0, 1.0, 101)
    push = []
    for r in r_values:
        fixed = push_fixed_points(r, c)
        starts = (0.05, 0.3, 0.6, 0.9)
        push.append(
            {
                "r": r,
                "c": c,
                "fixed_points": list(fixed) if fixed else None,
                "final_q": {str(q0): float(simulate_push(q0, r, c, lr=1.0, steps=3000)[-1]) for q0 in starts},
            }
        )
    coupled = [
        simulate_coupled(0.3, 0.2, r=0.2, xi=xi, delta=0.5, lr=0.5, steps=3000) for xi in (1.0, 2.0, 4.0, 8.0)
    ]
    result: dict[str, Any] = {
        "lemma_3_1": lemma,
        "lemma_3_1_summary": {
            "points": len(lemma),
            "samples_per_point": samples,
            "max_abs_z": max(z),
            "max_abs_z_group": max(zg),
            "all_negative_closed_form": all(r["closed_form"] < 0 for r in lemma),
        },
        "theorem_3_2": {
            "grid": grid,
            "summary": {
                "points": len(grid),
                "p1_rises": sum(r["p1_rises"] for r in grid),
                "gap_always_widens": all(r["gap_widens"] for r in grid),
                "margin_sign_matches_step": all((r["p1_rise_margin"] > 0) == r["p1_rises"] for r in grid),
                "paper_condition_agrees": sum(r["paper_condition_agrees"] for r in grid),
            },
            "simulation": {
                "fail": [0.85, 0.9, 0.1],
                "pi0": [0.1, 0.8, 0.1],
                "lr": 0.5,
                "group_size": group_size,
                **three,
                "p1_peak_step": int(np.argmax(e1)),
                "p1_peak": float(max(e1)),
            },
        },
        "parabola": {
            "q": q_axis.tolist(),
            "abs_advantage": {str(r): (q_axis * r * (1 - q_axis)).tolist() for r in r_values},
            "peak_q": 0.5,
            "push": push,
        },
        "coupled": coupled,
    }
    out = Path(out_dir)
    write_json(out / "theory.json", result)
    plot_theory(result, out / "theory.png")
    return result


def plot_theory(result: dict[str, Any], path) -> None:
    from gcd_trl.analysis.plotting import pyplot, save_png

    plt = pyplot()
    fig, ax = plt.subplots(2, 2, figsize=(8.4, 6.2))
    lemma = result["lemma_3_1"]
    a = ax[0, 0]
    cf = [r["closed_form"] for r in lemma]
    a.errorbar(
        cf,
        [r["monte_carlo"] for r in lemma],
        yerr=[2 * r["stderr"] for r in lemma],
        fmt="o",
        ms=3,
        label="Monte Carlo, s - E[s]",
    )
    a.errorbar(
        cf,
        [r["monte_carlo_group"] / (1 - 1 / r["group_size"]) for r in lemma],
        yerr=[2 * r["stderr_group"] for r in lemma],
        fmt="x",
        ms=3,
        label="GRPO group mean / (1-1/G)",
    )
    lo = min(cf)
    a.plot([lo, 0], [lo, 0], "k--", lw=0.8, label="q r (q-1)")
    a.set(
        xlabel="closed form q r (q-1)",
        ylabel="estimated E[1{a} A]",
        title=f"Lemma 3.1: {len(lemma)} (p,q,r), bars ±2 s.e.",
    )
    a.legend()

    a = ax[0, 1]
    sim = result["theorem_3_2"]["simulation"]
    exp, smp = np.array(sim["expected"]), np.array(sim["sampled"])
    names = ("action 1 (flawed, r>0)", "action 2 (worse)", "action 3 (good)")
    for k, color in enumerate(("C3", "C1", "C2")):
        a.plot(sim["step"], exp[:, k], color=color, label=names[k])
        a.plot(sim["step"], smp[:, k], color=color, ls=":", lw=1)
    a.axvline(sim["p1_peak_step"], color="grey", lw=0.6)
    s = result["theorem_3_2"]["summary"]
    a.set(
        xlabel="GRPO step (solid: expected, dotted: sampled)",
        ylabel="probability",
        title=f"Thm 3.2: p1 rises in {s['p1_rises']}/{s['points']} grid points, p3/p1 grows in all",
    )
    a.legend()

    a = ax[1, 0]
    par = result["parabola"]
    for r, ys in par["abs_advantage"].items():
        a.plot(par["q"], ys, label=f"|A| = q r (1-q), r={r}")
    c = par["push"][0]["c"]
    a.axhline(c, color="k", ls="--", lw=0.8, label=f"coupling push c={c}")
    a.axvspan(0, 0.5, color="C2", alpha=0.07)
    a.axvspan(0.5, 1, color="C3", alpha=0.07)
    a.text(0.22, a.get_ylim()[1] * 0.92, "safe regime", ha="center")
    a.text(0.78, a.get_ylim()[1] * 0.92, "danger zone", ha="center")
    for entry in par["push"]:
        if entry["fixed_points"]:
            a.plot(entry["fixed_points"], [c, c], "k|", ms=8)
    a.set(
        xlabel="q (probability of the flawed action)",
        ylabel="|expected advantage|",
        title="Figure 4: self-correction vs a constant push",
    )
    a.legend(loc="center right")

    a = ax[1, 1]
    for k, run in enumerate(result["coupled"]):
        t = run["step"]
        a.plot(t, run["p2"], color=f"C{k}", label=f"flawed p2, xi*delta={run['xi_delta']:g}")
        a.plot(t, run["p1"], color=f"C{k}", ls=":", lw=1)
        a.plot(run["peak_step"], run["p2_peak"], "o", color=f"C{k}", ms=3)
    a.set_xscale("symlog", linthresh=10)
    a.set(
        xlabel="step (dotted: good p1)",
        ylabel="probability",
        title="A.3: the flawed action rises until the good one saturates",
    )
    a.legend()
    save_png(fig, path)
