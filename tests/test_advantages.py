"""Advantage estimators: hand-computed examples (arithmetic in the comments), the verl-agent GiGPO numbers,
RLVMR's tag rules, a loop-based cross-check of the vectorised code, and the `gcd-trl advantages` CLI."""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
from collections import defaultdict
from difflib import SequenceMatcher
from pathlib import Path

import numpy as np
import pytest

from gcd_trl.advantages import (
    AdvantageConfig,
    RecordError,
    StepBatch,
    compute_advantage_terms,
    compute_advantages,
    records_to_batch,
)
from gcd_trl.advantages.gigpo import discounted_returns, step_group_keys
from gcd_trl.advantages.rlvmr import mr_rewards

EPS = 1e-6


def rec(group, traj, step, *, ep=0.0, r=0.0, anchor="s", invalid=False, tag="planning", action="a"):
    return dict(
        group=group,
        traj=traj,
        step=step,
        anchor=anchor,
        episode_reward=ep,
        step_reward=r,
        invalid=invalid,
        tag=tag,
        action=action,
    )


def terms(records, estimator, **kw):
    return compute_advantage_terms(
        records_to_batch(records, estimator), AdvantageConfig(estimator=estimator, **kw)
    )


# --------------------------------------------------------------------------------------------- GRPO


def _grpo_group():
    # One group: trajectory X wins (reward 1) in 2 steps, trajectory Y fails (0) in 4 steps.
    return [rec("g", "X", s, ep=1.0) for s in range(2)] + [rec("g", "Y", s, ep=0.0) for s in range(4)]


def test_grpo_over_step_samples():
    # Scores over the 6 step samples: [1, 1, 0, 0, 0, 0]; mean = 1/3.
    # Deviations 2/3 (x2) and -1/3 (x4): sum of squares = 2*4/9 + 4*1/9 = 4/3; unbiased var = (4/3)/5 = 4/15,
    # std = sqrt(4/15) = 0.5163978. X: (2/3)/(std+1e-6) = 1.2909919; Y: (-1/3)/(std+1e-6) = -0.6454960.
    adv = compute_advantages(_grpo_group(), "grpo", grpo_level="steps")
    std = math.sqrt(4 / 15)
    np.testing.assert_allclose(adv, [(2 / 3) / (std + EPS)] * 2 + [(-1 / 3) / (std + EPS)] * 4, rtol=1e-12)
    assert adv[0] == pytest.approx(1.2909919, abs=1e-6) and adv[2] == pytest.approx(-0.6454960, abs=1e-6)


def test_grpo_over_trajectories():
    # One value per trajectory: [1, 0]; mean 0.5, unbiased std = sqrt(0.5) = 0.7071068.
    # X: 0.5/(0.7071068+1e-6) = 0.7071058; Y: -0.7071058. Every step of a trajectory gets its value.
    adv = compute_advantages(_grpo_group(), "grpo", grpo_level="trajectories")
    a = 0.5 / (math.sqrt(0.5) + EPS)
    np.testing.assert_allclose(adv, [a, a, -a, -a, -a, -a], rtol=1e-12)


def test_grpo_mean_only():
    # norm="mean": steps -> 1 - 1/3 = 2/3 and 0 - 1/3 = -1/3; trajectories -> 1 - 0.5 and 0 - 0.5.
    np.testing.assert_allclose(
        compute_advantages(_grpo_group(), "grpo", norm="mean"), [2 / 3] * 2 + [-1 / 3] * 4
    )
    np.testing.assert_allclose(
        compute_advantages(_grpo_group(), "grpo", norm="mean", grpo_level="trajectories"),
        [0.5] * 2 + [-0.5] * 4,
    )


def test_grpo_invalid_penalty_lowers_the_step_score():
    # Y's step 1 is invalid: its score is 0 - 0.1 = -0.1. Steps level, norm="mean":
    # scores [1, 1, 0, -0.1, 0, 0], mean = 1.9/6 = 0.3166667; X: 0.6833333, Y: -0.3166667, Y1: -0.4166667.
    records = _grpo_group()
    records[3]["invalid"] = True
    adv = compute_advantages(records, "grpo", norm="mean", invalid_penalty=0.1)
    np.testing.assert_allclose(adv, np.array([1, 1, 0, -0.1, 0, 0]) - 1.9 / 6, rtol=1e-12)
    # Trajectories level (verl-agent's choice): the trajectory's value is its *first* step sample's score,
    # [1, 0] -> mean 0.5; each step is centred with it: Y1 = -0.1 - 0.5 = -0.6.
    adv = compute_advantages(records, "grpo", norm="mean", grpo_level="trajectories")
    np.testing.assert_allclose(adv, [0.5, 0.5, -0.5, -0.6, -0.5, -0.5], rtol=1e-12)


def test_groups_are_independent_and_all_equal_group_gives_zero():
    # Group h: all trajectories fail with the same score -> every advantage is exactly 0 (std 0 -> 0/(0+eps)).
    records = _grpo_group() + [rec("h", t, s, ep=0.0) for t in ("X", "Y") for s in range(3)]
    for level in ("steps", "trajectories"):
        for norm in ("mean_std", "mean"):
            adv = compute_advantages(records, "grpo", grpo_level=level, norm=norm)
            assert np.all(adv[6:] == 0.0)
            assert adv[0] > 0 > adv[2]
    for estimator in ("gigpo", "rlvmr"):
        same = [
            rec("g", t, s, ep=1.0, r=0.0, anchor=f"s{s}", tag="monitor", action=f"a{s}")
            for t in range(4)
            for s in range(3)
        ]
        assert np.all(compute_advantages(same, estimator) == 0.0)


def test_single_sample_group_keeps_its_raw_score():
    # verl-agent: a group with one sample gets mean 0, std 1 -> (x - 0) / (1 + 1e-6).
    adv = compute_advantages([rec("g", 0, 0, ep=1.0)], "grpo")
    assert adv[0] == pytest.approx(1 / (1 + EPS), rel=1e-12)


# -------------------------------------------------------------------------------------------- GiGPO


def _gigpo_example():
    """Hand-made batch: one group, three trajectories (the verl-agent match below uses it).

    A wins: s0 -> s1 -> s2, env reward 1 at its last step (episode reward 1)
    B fails: s0 -> s1 (invalid action, so the observation stays s1) -> s1   (episode reward 0)
    C wins: s0 -> s3, env reward 1 at its last step (episode reward 1)
    """
    return [
        rec("g", "A", 0, ep=1, r=0, anchor="s0"),
        rec("g", "A", 1, ep=1, r=0, anchor="s1"),
        rec("g", "A", 2, ep=1, r=1, anchor="s2"),
        rec("g", "B", 0, ep=0, r=0, anchor="s0"),
        rec("g", "B", 1, ep=0, r=0, anchor="s1", invalid=True),
        rec("g", "B", 2, ep=0, r=0, anchor="s1"),
        rec("g", "C", 0, ep=1, r=0, anchor="s0"),
        rec("g", "C", 1, ep=1, r=1, anchor="s3"),
    ]


def test_gigpo_matches_verl_agent_numbers():
    """verl-agent's compute_gigpo_outcome_advantage (mode="mean_std_norm", step_advantage_w=1) with the inputs
    its trainer builds: token_level_rewards = episode reward with apply_invalid_action_penalty's -0.1 on
    invalid steps; step_rewards = compute_step_discounted_returns(gamma) with the same -0.1 applied to the
    invalid step's *return*; index = the group; anchor_obs = the raw observation. Derivation, gamma = 0.5:

    Episode level (episode_norm_reward, statistics over all 8 step samples):
      scores A: 1, 1, 1   B: 0, -0.1, 0   C: 1, 1   -> sum 4.9, mean 0.6125
      deviations 0.3875 (x5), -0.6125 (x2), -0.7125: squares 5*0.15015625 + 2*0.37515625 + 0.50765625 = 2.00875
      torch.std (Bessel): sqrt(2.00875 / 7) = 0.5356905
      A, C: 0.3875/(0.5356905+1e-6) = 0.7233641;  B0, B2: -0.6125/... = -1.1433820;  B1: -0.7125/... = -1.3300566
    Step returns R_t = r_t + 0.5 R_{t+1}:  A: 0.25, 0.5, 1   B: 0, 0, 0   C: 0.5, 1
      then the penalty on the invalid step's return: B1 = 0 - 0.1 = -0.1 (B0 stays 0: applied after discounting)
    Step groups (identical anchors in the group): s0 {A0 .25, B0 0, C0 .5}, s1 {A1 .5, B1 -.1, B2 0},
      s2 {A2} and s3 {C1} are singletons -> 0 (step_norm_reward: mean = the value, std 1).
      s0: mean 0.25, std sqrt((0 + .0625 + .0625)/2) = 0.25: A0 0, B0 -0.25/0.250001 = -0.9999960, C0 +0.9999960
      s1: mean 0.4/3 = 0.1333333, std sqrt((.1344444 + .0544444 + .0177778)/2) = 0.3214550:
          A1 0.3666667/0.3214560 = 1.1406433, B1 -0.2333333/... = -0.7258639, B2 -0.1333333/... = -0.4147794
    Total = episode + 1.0 * step.
    """
    out = terms(_gigpo_example(), "gigpo", gamma=0.5, omega=1.0, norm="mean_std", invalid_penalty=0.1)
    episode = [0.7233641, 0.7233641, 0.7233641, -1.1433820, -1.3300566, -1.1433820, 0.7233641, 0.7233641]
    step = [0.0, 1.1406433, 0.0, -0.9999960, -0.7258639, -0.4147794, 0.9999960, 0.0]
    np.testing.assert_allclose(out.episode, episode, atol=1e-6)
    np.testing.assert_allclose(out.step, step, atol=1e-6)
    np.testing.assert_allclose(out.step_signal, [0.25, 0.5, 1, 0, -0.1, 0, 0.5, 1], atol=1e-12)
    np.testing.assert_allclose(
        out.total,
        [0.7233641, 1.8640074, 0.7233641, -2.1433780, -2.0559205, -1.5581614, 1.7233601, 0.7233641],
        atol=1e-6,
    )


def test_gigpo_mean_norm():
    # mode "mean_norm": episode x - 0.6125 (A, C: 0.3875; B0/B2: -0.6125; B1: -0.7125);
    # step s0: R - 0.25 -> 0, -0.25, 0.25; s1: R - 0.1333333 -> 0.3666667, -0.2333333, -0.1333333; singletons 0.
    out = terms(_gigpo_example(), "gigpo", gamma=0.5, norm="mean")
    np.testing.assert_allclose(
        out.episode, [0.3875] * 3 + [-0.6125, -0.7125, -0.6125] + [0.3875] * 2, atol=1e-12
    )
    m = 0.4 / 3
    np.testing.assert_allclose(out.step, [0, 0.5 - m, 0, -0.25, -0.1 - m, -m, 0.25, 0], atol=1e-12)


def test_gigpo_omega_weights_the_step_advantage():
    a = terms(_gigpo_example(), "gigpo", gamma=0.5, omega=0.0)
    b = terms(_gigpo_example(), "gigpo", gamma=0.5, omega=2.0)
    np.testing.assert_allclose(a.total, a.episode)
    np.testing.assert_allclose(b.total, b.episode + 2.0 * b.step)


def test_discounted_returns_follow_step_order_not_record_order():
    # Trajectory t: steps 0..3 with rewards 1, 0, 0, 2, records shuffled. gamma = 0.5:
    # R3 = 2; R2 = 0 + 0.5*2 = 1; R1 = 0 + 0.5*1 = 0.5; R0 = 1 + 0.5*0.5 = 1.25. Trajectory u: one step, r=3.
    records = [
        rec("g", "t", 2, r=0),
        rec("g", "u", 0, r=3),
        rec("g", "t", 0, r=1),
        rec("g", "t", 3, r=2),
        rec("g", "t", 1, r=0),
    ]
    np.testing.assert_allclose(
        discounted_returns(records_to_batch(records, "gigpo"), 0.5), [1, 3, 1.25, 2, 0.5]
    )
    np.testing.assert_allclose(discounted_returns(records_to_batch(records, "gigpo"), 1.0), [2, 3, 3, 2, 2])


def test_gigpo_singleton_step_group_gets_zero():
    records = [rec("g", t, 0, ep=float(t), r=float(t), anchor=f"only-{t}") for t in range(3)]
    out = terms(records, "gigpo")
    assert np.all(out.step == 0.0)
    np.testing.assert_allclose(out.total, out.episode)


def test_gigpo_identical_anchors_group_within_episode_group_only():
    # Same anchor text in two episode groups: separate step groups. In g the two "room" steps pool together
    # (returns 1 and 0 -> +0.5/-0.5 with norm="mean"); in h "room" is alone -> 0.
    records = [
        rec("g", 0, 0, r=1, anchor="room"),
        rec("g", 1, 0, r=0, anchor="room"),
        rec("h", 0, 0, r=5, anchor="room"),
    ]
    out = terms(records, "gigpo", norm="mean", invalid_penalty=0.0)
    np.testing.assert_allclose(out.step, [0.5, -0.5, 0.0])
    keys, n = step_group_keys(records_to_batch(records, "gigpo"))
    assert n == 2 and keys[0] == keys[1] != keys[2]


def test_gigpo_similarity_threshold_groups_like_verl_agent():
    # difflib ratios: ratio("aaab", "aaaa") = 2*3/8 = 0.75, ratio("aabb", "aaaa") = 0.5, ratio("aabb", "aaab")
    # = 0.75. Walking (trajectory, step) order, a step joins the first cluster whose representative (first
    # member) is similar enough: at 0.7, "aaaa" founds cluster 0, "aaab" joins it (0.75 vs "aaaa"), "aabb"
    # is only 0.5 from the representative "aaaa" and founds cluster 1, although 0.75 from "aaab".
    assert SequenceMatcher(None, "aaab", "aaaa").ratio() == 0.75
    assert SequenceMatcher(None, "aabb", "aaaa").ratio() == 0.5
    records = [
        rec("g", 0, 0, anchor="aaaa"),
        rec("g", 1, 0, anchor="aaab"),
        rec("g", 2, 0, anchor="aabb"),
        rec("g", 3, 0, anchor="aaab"),
    ]
    batch = records_to_batch(records, "gigpo")
    keys, n = step_group_keys(batch, 0.7)
    assert n == 2 and keys.tolist() == [0, 0, 1, 0]
    keys, n = step_group_keys(batch, 0.8)  # nothing is 0.8-similar: only the identical "aaab"s pool
    assert n == 3 and keys[1] == keys[3] and len({keys[0], keys[1], keys[2]}) == 3
    keys, n = step_group_keys(batch, 1.0)  # 1.0 = identical anchors only
    assert n == 3
    # Advantages with similarity: returns 1, 0, 0, 0 (r of each one-step trajectory) at threshold 0.7:
    # cluster {aaaa, aaab, aaab} -> mean 1/3 -> 2/3, -1/3, -1/3 (norm="mean"); "aabb" alone -> 0.
    for i, r in enumerate((1, 0, 0, 0)):
        records[i]["step_reward"] = r
    out = terms(records, "gigpo", norm="mean", similarity_threshold=0.7)
    np.testing.assert_allclose(out.step, [2 / 3, -1 / 3, 0.0, -1 / 3])


def test_invalid_penalty_enters_gigpo_after_discounting():
    # One trajectory s0 -> s1 -> s2 with step 1 invalid, r = [0, 0, 1], gamma 0.5, penalty 0.1:
    # before discounting the returns would be 0.25-0.05, 0.5-0.1, 1; after (verl-agent): 0.25, 0.4, 1.
    records = [
        rec("g", 0, 0, anchor="s0"),
        rec("g", 0, 1, anchor="s1", invalid=True),
        rec("g", 0, 2, r=1, anchor="s2"),
    ]
    out = terms(records, "gigpo", gamma=0.5, invalid_penalty=0.1)
    np.testing.assert_allclose(out.step_signal, [0.25, 0.4, 1.0])
    out = terms(records, "gigpo", gamma=0.5, invalid_penalty=0.0)
    np.testing.assert_allclose(out.step_signal, [0.25, 0.5, 1.0])


# -------------------------------------------------------------------------------------------- RLVMR


def _rlvmr_trajectories():
    """(tag, action, invalid) per step of two trajectories of one group, and the expected MR reward."""
    won = [  # episode reward 1
        ("planning", "go to desk 1", False, 1),  # planning in a successful episode -> 1
        ("explore", "open drawer 1", False, 1),  # action not taken before -> 1
        ("explore", "go to desk 1", False, 0),  # step 0 (valid) took it already -> 0
        ("explore", "fly", True, 0),  # invalid -> tag "none", 0
        ("reflection", "take pen", False, 1),  # previous step invalid and a different action -> 1
        ("reflection", "take pen", False, 0),  # previous step valid -> 0
        ("monitor", "put pen", False, 0),  # monitor -> 0
        ("explore", "fly", False, 1),  # only an *invalid* step took "fly" before -> new -> 1
    ]
    lost = [  # episode reward 0
        ("reflection", "look", False, 1),  # first step: RLVMR compares with an empty invalid step -> 1
        ("planning", "go to desk 1", False, 0),  # planning in a failed episode -> 0
        (None, "go to desk 1", False, 0),  # no valid tag -> counted invalid, "none", 0
        ("reflection", "go to desk 1", False, 0),  # previous invalid but the same action -> 0
        ("explore", "look", False, 0),  # step 0 (valid) took "look" -> 0
    ]
    return won, lost


def _rlvmr_records():
    won, lost = _rlvmr_trajectories()
    records = [
        rec("g", "won", i, ep=1.0, tag=t, action=a, invalid=bad) for i, (t, a, bad, _) in enumerate(won)
    ]
    records += [
        rec("g", "lost", i, ep=0.0, tag=t, action=a, invalid=bad) for i, (t, a, bad, _) in enumerate(lost)
    ]
    return records, [x[3] for x in won] + [x[3] for x in lost]


def test_rlvmr_tag_rewards():
    records, expected = _rlvmr_records()
    random.Random(0).shuffle(records)  # the rules follow step order, not record order
    batch = records_to_batch(records, "rlvmr")
    reward, tag, invalid = mr_rewards(batch)
    got = {(r["traj"], r["step"]): v for r, v in zip(records, reward.tolist())}
    want_records, want = _rlvmr_records()
    assert [got[(r["traj"], r["step"])] for r in want_records] == want
    # the untagged step counts as invalid
    untagged = next(i for i, r in enumerate(records) if r["tag"] is None)
    assert invalid[untagged] and not batch.invalid[untagged]


def test_rlvmr_advantage_normalises_within_group_and_tag():
    # Two trajectories, norm "mean", no invalid steps, omega 1:
    #   w (won, ep 1): planning, explore "a", explore "a"(repeat)   MR rewards 1, 1, 0
    #   l (lost, ep 0): planning, explore "b", monitor              MR rewards 0, 1, 0
    # Episode: scores [1,1,1,0,0,0] - mean 0.5 -> +0.5 / -0.5.
    # (g, planning): [1, 0] -> mean 0.5 -> +0.5, -0.5; (g, explore): [1, 0, 1] -> mean 2/3 -> 1/3, -2/3, 1/3;
    # (g, monitor): a single step -> RLVMR keeps its raw value (mean 0) -> 0.
    records = [
        rec("g", "w", 0, ep=1, tag="planning", action="p"),
        rec("g", "w", 1, ep=1, tag="explore", action="a"),
        rec("g", "w", 2, ep=1, tag="explore", action="a"),
        rec("g", "l", 0, ep=0, tag="planning", action="p"),
        rec("g", "l", 1, ep=0, tag="explore", action="b"),
        rec("g", "l", 2, ep=0, tag="monitor", action="m"),
    ]
    out = terms(records, "rlvmr", norm="mean")
    np.testing.assert_allclose(out.step_signal, [1, 1, 0, 0, 1, 0])
    np.testing.assert_allclose(out.episode, [0.5] * 3 + [-0.5] * 3)
    np.testing.assert_allclose(out.step, [0.5, 1 / 3, -2 / 3, -0.5, 1 / 3, 0.0])
    np.testing.assert_allclose(out.total, out.episode + out.step)
    # mean_std: (g, planning) [1, 0] -> std sqrt(0.5): +-0.5/(0.7071068+1e-6) = +-0.7071058.
    out = terms(records, "rlvmr", norm="mean_std", omega=0.5)
    assert out.step[0] == pytest.approx(0.5 / (math.sqrt(0.5) + EPS), rel=1e-12)
    np.testing.assert_allclose(out.total, out.episode + 0.5 * out.step)


def test_rlvmr_singleton_tag_group_keeps_raw_reward():
    # RLVMR's step_norm_reward_by_tag: a (group, tag) with one step has mean 0, std 1 -> reward/(1+1e-6).
    records = [rec("g", 0, 0, ep=1, tag="planning"), rec("g", 1, 0, ep=1, tag="monitor")]
    out = terms(records, "rlvmr")
    assert out.step[0] == pytest.approx(1 / (1 + EPS), rel=1e-12) and out.step[1] == 0.0


def test_rlvmr_untagged_step_is_penalised_like_an_invalid_one():
    # Two one-step trajectories with the same outcome; one has no tag -> score 1 - 0.1; norm "mean":
    # mean 0.95 -> +0.05 / -0.05.
    records = [rec("g", 0, 0, ep=1, tag="monitor"), rec("g", 1, 0, ep=1, tag=None)]
    out = terms(records, "rlvmr", norm="mean")
    np.testing.assert_allclose(out.episode, [0.05, -0.05])


# ------------------------------------------------------------------------ loop-based cross-check


def _reference(records, estimator, gamma, omega, norm, penalty, level):
    """Slow dict-of-lists version of the same rules (the shape of verl-agent's / RLVMR's loops)."""

    def stats(values, singleton):
        if len(values) == 1:
            return (values[0] if singleton == "zero" else 0.0), 1.0
        return float(np.mean(values)), float(np.std(values, ddof=1))

    def norm_(x, m, s):
        return x - m if norm == "mean" else (x - m) / (s + EPS)

    n = len(records)
    trajs = defaultdict(list)
    for i, r in enumerate(records):
        trajs[(r["group"], r["traj"])].append(i)
    for idx in trajs.values():
        idx.sort(key=lambda i: records[i]["step"])
    bad = [r["invalid"] or (estimator == "rlvmr" and r["tag"] is None) for r in records]
    score = [r["episode_reward"] - penalty * b for r, b in zip(records, bad)]
    pool = defaultdict(list)
    for (g, _), idx in trajs.items():
        for i in idx if level == "steps" else idx[:1]:
            pool[g].append(score[i])
    gstats = {g: stats(v, "raw") for g, v in pool.items()}
    episode = [norm_(score[i], *gstats[records[i]["group"]]) for i in range(n)]
    step = [0.0] * n
    if estimator == "gigpo":
        ret = [0.0] * n
        for idx in trajs.values():
            running = 0.0
            for i in reversed(idx):
                running = records[i]["step_reward"] + gamma * running
                ret[i] = running
        ret = [x - penalty * b for x, b in zip(ret, bad)]
        sg = defaultdict(list)
        for i, r in enumerate(records):
            sg[(r["group"], r["anchor"])].append(ret[i])
        sstats = {k: stats(v, "zero") for k, v in sg.items()}
        step = [norm_(ret[i], *sstats[(r["group"], r["anchor"])]) for i, r in enumerate(records)]
    elif estimator == "rlvmr":
        mr = [0.0] * n
        for idx in trajs.values():
            for j, i in enumerate(idx):
                r, tag = records[i], (None if bad[i] else records[i]["tag"])
                if tag == "planning":
                    mr[i] = float(r["episode_reward"] > 0)
                elif tag == "explore":
                    mr[i] = float(
                        not any(records[k]["action"] == r["action"] and not bad[k] for k in idx[:j])
                    )
                elif tag == "reflection" and j == 0:
                    mr[i] = 1.0  # RLVMR pays a first-step reflection
                elif tag == "reflection":
                    p = idx[j - 1]
                    mr[i] = float(bad[p] and records[p]["action"] != r["action"])
        tg = defaultdict(list)
        key = [(r["group"], None if bad[i] else r["tag"]) for i, r in enumerate(records)]
        for i in range(n):
            tg[key[i]].append(mr[i])
        tstats = {k: stats(v, "raw") for k, v in tg.items()}
        step = [norm_(mr[i], *tstats[key[i]]) for i in range(n)]
    return np.array(episode) + omega * np.array(step)


@pytest.mark.parametrize("estimator", ["grpo", "gigpo", "rlvmr"])
def test_vectorised_matches_loop_reference(estimator):
    rng = random.Random(1)
    records = []
    for g in range(5):
        for t in range(rng.randint(1, 5)):
            length = rng.randint(1, 7)
            won = rng.random() < 0.4
            for s in rng.sample(range(length), length):  # shuffled record order
                records.append(
                    rec(
                        f"g{g}",
                        t,
                        s,
                        ep=float(won) * 10,
                        r=(10.0 if won and s == length - 1 else rng.choice([0, 0, 1])),
                        anchor=f"obs{rng.randint(0, 3)}",
                        invalid=rng.random() < 0.2,
                        tag=rng.choice(["planning", "explore", "reflection", "monitor", None]),
                        action=f"act{rng.randint(0, 3)}",
                    )
                )
    rng.shuffle(records)
    for norm in ("mean_std", "mean"):
        for level in ("steps", "trajectories"):
            got = compute_advantages(
                records, estimator, gamma=0.9, omega=0.7, norm=norm, invalid_penalty=0.3, grpo_level=level
            )
            want = _reference(records, estimator, 0.9, 0.7, norm, 0.3, level)
            np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)


# ------------------------------------------------------------------------------- input handling


def test_step_record_dicts_are_accepted():
    # StepRecord.to_dict() fields: valid instead of invalid, won (at the last step) instead of episode_reward,
    # env_reward instead of step_reward.
    def step_record(traj, step, won, valid=True):
        return dict(
            group="task",
            traj=traj,
            step=step,
            anchor=f"obs{step}",
            prompt="p",
            completion="c",
            action="look",
            valid=valid,
            reason="",
            tag=None,
            env_reward=float(won),
            done=won,
            won=won,
        )

    records = [
        step_record(0, 0, False),
        step_record(0, 1, True),
        step_record(1, 0, False, valid=False),
        step_record(1, 1, False),
    ]
    batch = records_to_batch(records, "gigpo")  # the references' scale: 10 * won, on the last step
    assert batch.episode_reward.tolist() == [10.0, 10.0, 0.0, 0.0]
    assert batch.invalid.tolist() == [False, False, True, False]
    assert batch.step_reward.tolist() == [0.0, 10.0, 0.0, 0.0]
    assert compute_advantages(batch, "gigpo").shape == (4,)
    one = records_to_batch(records, config=AdvantageConfig("gigpo", success_reward=1.0, step_reward="dense"))
    assert one.episode_reward.tolist() == [1.0, 1.0, 0.0, 0.0] and one.step_reward.tolist() == [0, 1, 0, 0]


def test_from_columns_and_empty_batch():
    batch = StepBatch.from_columns(
        group=np.array([7, 7]),
        traj=np.array([0, 1]),
        step=[0, 0],
        episode_reward=[1.0, 0.0],
        invalid=[False, False],
        anchor=["x", "x"],
    )
    np.testing.assert_allclose(compute_advantages(batch, "grpo", norm="mean"), [0.5, -0.5])
    assert compute_advantages([], "grpo").shape == (0,)


@pytest.mark.parametrize(
    "estimator, mutate, index, message",
    [
        ("grpo", lambda rs: rs[1].pop("group"), 1, "missing field 'group'"),
        ("grpo", lambda rs: rs[2].pop("invalid"), 2, "missing field 'invalid' or 'valid'"),
        ("gigpo", lambda rs: rs[3].pop("anchor"), 3, "missing field 'anchor' (needed by estimator gigpo)"),
        ("gigpo", lambda rs: rs[0].update(step_reward="1"), 0, "must be int or float"),
        ("grpo", lambda rs: rs[2].pop("episode_reward"), 2, "'episode_reward' (or 'won'"),
        ("grpo", lambda rs: rs[1].update(episode_reward="high"), 1, "must be int or float"),
        ("grpo", lambda rs: rs[1].update(step=1.5), 1, "'step' must be int"),
        ("grpo", lambda rs: rs[1].update(step=0), 1, "two records with step 0"),
        ("grpo", lambda rs: rs[1].update(episode_reward=0.5), 1, "differs between steps"),
        ("rlvmr", lambda rs: rs[2].update(tag="dance"), 2, "unknown tag 'dance'"),
        ("rlvmr", lambda rs: rs[2].pop("action"), 2, "missing field 'raw_action' or 'action'"),
        ("rlvmr", lambda rs: rs[1].update(admissible="no"), 1, "'admissible' must be bool or NoneType"),
        ("grpo", lambda rs: rs[3].update(episode_reward=float("nan")), 3, "not a finite number"),
    ],
)
def test_bad_records_name_the_record_and_field(estimator, mutate, index, message):
    records = [rec("g", 0, s, ep=1.0) for s in range(4)]
    mutate(records)
    with pytest.raises(RecordError) as info:
        records_to_batch(records, estimator)
    assert info.value.index == index
    assert message in str(info.value)


def test_bad_config_and_missing_columns():
    with pytest.raises(ValueError, match="estimator"):
        AdvantageConfig(estimator="ppo")
    with pytest.raises(ValueError, match="similarity_threshold"):
        AdvantageConfig(estimator="gigpo", similarity_threshold=1.5)
    with pytest.raises(ValueError, match="gigpo only"):
        AdvantageConfig(estimator="grpo", similarity_threshold=0.9)
    with pytest.raises(ValueError, match="norm"):
        AdvantageConfig(norm="std")
    with pytest.raises(ValueError, match="grpo_level"):
        AdvantageConfig(grpo_level="episodes")
    with pytest.raises(ValueError, match="step_reward"):
        AdvantageConfig(step_reward="score")
    with pytest.raises(ValueError, match="success_reward"):
        AdvantageConfig(success_reward=0)
    records = [rec("g", 0, s, ep=1.0) for s in range(2)]
    for r in records:
        r.pop("step_reward")
    with pytest.raises(RecordError, match="'step_reward' or 'env_reward'"):
        records_to_batch(records, config=AdvantageConfig("gigpo", step_reward="dense"))
    batch = StepBatch.from_columns(group=[0], traj=[0], step=[0], episode_reward=[1.0], invalid=[False])
    with pytest.raises(ValueError, match="anchor"):
        compute_advantages(batch, "gigpo")
    with pytest.raises(ValueError, match="tag"):
        compute_advantages(batch, "rlvmr")


# ---------------------------------------------------------------------------------------------- CLI

PY = str(Path(sys.executable))


def _cli(*args, stdin=None):
    return subprocess.run(
        [PY, "-m", "gcd_trl", "advantages", *args], input=stdin, capture_output=True, text=True, timeout=120
    )


def test_cli_round_trip(tmp_path):
    records = _gigpo_example()
    src = tmp_path / "steps.jsonl"
    src.write_text(
        "\n".join(json.dumps(r) for r in records[:4])
        + "\n\n"
        + "\n".join(json.dumps(r) for r in records[4:])
        + "\n"
    )
    out = tmp_path / "adv.jsonl"
    res = _cli(
        "--advantage_estimator",
        "gigpo",
        "--input",
        str(src),
        "--output",
        str(out),
        "--gamma",
        "0.5",
        "--omega",
        "1.0",
        "--step_adv_norm",
        "mean_std",
        "--invalid_penalty",
        "0.1",
    )
    assert res.returncode == 0, res.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["anchor"] for r in rows] == [r["anchor"] for r in records]  # same records, same order
    expected = terms(records, "gigpo", gamma=0.5)
    np.testing.assert_allclose([r["advantage"] for r in rows], expected.total, rtol=1e-12)
    np.testing.assert_allclose([r["episode_advantage"] for r in rows], expected.episode, rtol=1e-12)
    np.testing.assert_allclose([r["step_advantage"] for r in rows], expected.step, rtol=1e-12)
    assert rows[1]["advantage"] == pytest.approx(1.8640074, abs=1e-6)

    # stdout by default, stdin with "-", other options
    res = _cli(
        "--advantage_estimator",
        "grpo",
        "--input",
        "-",
        "--grpo_level",
        "trajectories",
        "--step_adv_norm",
        "mean",
        stdin=src.read_text(),
    )
    assert res.returncode == 0, res.stderr
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert len(rows) == 8 and all(r["step_advantage"] == 0.0 for r in rows)
    # A's first score 1, B's 0, C's 1 -> mean 2/3
    assert rows[0]["advantage"] == pytest.approx(1 / 3) and rows[4]["advantage"] == pytest.approx(
        -0.1 - 2 / 3
    )


def test_cli_bad_input_names_line_and_field(tmp_path):
    src = tmp_path / "steps.jsonl"
    lines = [json.dumps(r) for r in _gigpo_example()]
    bad = json.loads(lines[2])
    del bad["anchor"]
    lines[2] = json.dumps(bad)
    src.write_text("\n" + "\n".join(lines) + "\n")  # a blank first line: the bad record is on line 4
    res = _cli("--advantage_estimator", "gigpo", "--input", str(src))
    assert res.returncode == 2
    assert f"{src}:4: missing field 'anchor'" in res.stderr
    # GRPO does not need anchors
    assert _cli("--advantage_estimator", "grpo", "--input", str(src)).returncode == 0

    src.write_text(lines[0] + "\n{not json\n")
    res = _cli("--advantage_estimator", "grpo", "--input", str(src))
    assert res.returncode == 2 and f"{src}:2: not valid JSON" in res.stderr
    src.write_text("[1, 2]\n")
    res = _cli("--advantage_estimator", "grpo", "--input", str(src))
    assert res.returncode == 2 and f"{src}:1: expected a JSON object" in res.stderr
    res = _cli("--advantage_estimator", "grpo", "--input", str(tmp_path / "missing.jsonl"))
    assert res.returncode == 2 and "missing.jsonl" in res.stderr
    res = _cli("--advantage_estimator", "gigpo", "--input", str(src), "--similarity_threshold", "2")
    assert res.returncode == 2 and "similarity_threshold" in res.stderr
