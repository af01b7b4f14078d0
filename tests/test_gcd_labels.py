"""Step labels (paper §4.1): rules on constructed trajectories, on Episode records, on a real ALFWorld game;
external overlays by label mode."""

from __future__ import annotations

import pytest

from gcd_trl.envs.base import StepResult, Task
from gcd_trl.gcd.labels import label_counts, label_records, record_key, rule_labels
from gcd_trl.prompts import load_template
from gcd_trl.rollout.episode import Episode
from gcd_trl.rollout.records import read_steps, write_jsonl_atomic


def traj(anchors, won=False, group=0, traj_id=0, round=None):
    out = []
    for i, a in enumerate(anchors):
        last = i == len(anchors) - 1
        r = {
            "group": group,
            "traj": traj_id,
            "step": i,
            "anchor": a,
            "prompt": f"p{i}",
            "completion": f"c{i}",
            "valid": True,
            "won": won and last,
            "done": last,
        }
        if round is not None:
            r["round"] = round
        out.append(r)
    return out


def test_repeated_observation_is_bad_and_winning_last_step_good():
    # A -> B -> A -> C -> win: the step at A (0) led back to A; B (1) did not recur
    assert rule_labels(traj(["A", "B", "A", "C"], won=True)) == [0, None, None, 1]


def test_every_earlier_visit_of_a_recurring_state_is_bad():
    assert rule_labels(traj(["A", "A", "A", "B"])) == [0, 0, None, None]
    assert rule_labels(traj(["A", "B", "C", "B", "A"])) == [0, 0, None, None, None]


def test_failed_trajectory_has_no_good_step():
    assert rule_labels(traj(["A", "B", "C"], won=False)) == [None, None, None]
    assert rule_labels(traj(["A"], won=True)) == [1]
    assert rule_labels([]) == []


def test_unsorted_steps_are_refused():
    t = traj(["A", "B"])
    with pytest.raises(ValueError, match="sorted"):
        rule_labels(t[::-1])


def _result(obs, won=False, done=False, reward=0.0):
    return StepResult(
        observation=obs,
        task_description="put a mug in cabinet.",
        admissible_actions=["go to desk 1", "go to cabinet 1", "put mug 1 in/on cabinet 1"],
        won=won,
        done=done,
        reward=reward,
    )


def test_invalid_outputs_count_as_steps_through_the_episode_state_machine():
    task = Task(env="alfworld", split="test", game="/g")
    ep = Episode(task, _result("You are in a room."), load_template("alfworld"), max_steps=10)
    script = [
        ("no tags at all", None),  # invalid: env not stepped, anchor stays the room
        ("<think>go</think><action>go to desk 1</action>", _result("On the desk 1, you see a mug 1.")),
        ("<think>go</think><action>go to cabinet 1</action>", _result("The cabinet 1 is open.")),
        ("<think>go</think><action>go to desk 1</action>", _result("On the desk 1, you see a mug 1.")),
        ("<think>go</think><action>go to cabinet 1</action>", _result("The cabinet 1 is open.")),
        ("<think>put</think><action>put mug 1 in/on cabinet 1</action>", _result("Done.", True, True, 10.0)),
    ]
    for completion, result in script:
        action = ep.apply(completion)
        assert (action is None) == (result is None)
        ep.observe(result)
    records = [s.to_dict() for s in ep.steps]
    assert [r["valid"] for r in records] == [False, True, True, True, True, True]
    # step 0 invalid (room recurs at step 1), steps 2 and 3 start at desk / cabinet, seen again later;
    # step 1 is at the room (its last visit): unlabelled; last step won
    assert rule_labels(records) == [0, None, 0, 0, None, 1]


def test_label_records_keeps_order_groups_trajectories_and_passes_judge_rows():
    a = traj(["A", "A", "B"], won=True, group=0, traj_id=0, round=3)
    b = traj(["X", "Y"], won=False, group=0, traj_id=1, round=3)
    judge_row = dict(b[0], kind="judge", step=99)
    mixed = [b[1], a[2], judge_row, a[0], b[0], a[1]]
    out = label_records(mixed)
    assert [r["step"] for r in out] == [1, 2, 99, 0, 0, 1]
    assert [(r.get("label"), r.get("label_source")) for r in out] == [
        (None, "none"),
        (1, "rule"),
        (None, None),
        (0, "rule"),
        (None, "none"),
        (None, "none"),
    ]
    assert "label" not in out[2]  # judge rows untouched
    assert label_counts(out) == {"steps": 5, "good": 1, "bad": 1, "unlabelled": 3, "rule": 2, "external": 0}


def test_external_overlay_by_mode():
    steps = traj(["A", "A", "B", "C"], won=True)  # rules: 0, None, None, 1
    crit = [{"source": "external", "score": 1, "advise": "ok", "think": None, "action": None}]
    ext = {
        record_key(steps[0]): {"label": 1, "critiques": crit, "failed": False},  # overrides the rule in both
        record_key(steps[1]): {"label": 0, "critiques": crit, "failed": False},  # fills a gap
        record_key(steps[2]): {"label": None, "critiques": crit, "failed": False},  # votes disagreed
        record_key(steps[3]): {"label": None, "critiques": [], "failed": True},  # no answer
    }
    both = label_records(steps, ext, mode="both")
    assert [(r["label"], r["label_source"]) for r in both] == [
        (1, "external"),
        (0, "external"),
        (None, "none"),
        (1, "rule"),
    ]
    assert both[0]["critiques"] == crit and "critiques" not in both[3]
    only = label_records(steps, ext, mode="external")
    # disagreement -> unlabelled; failure -> the rules stand in
    assert [(r["label"], r["label_source"]) for r in only] == [
        (1, "external"),
        (0, "external"),
        (None, "none"),
        (1, "rule"),
    ]
    rules = label_records(steps, ext, mode="rules")
    assert [(r["label"], r["label_source"]) for r in rules] == [
        (0, "rule"),
        (None, "none"),
        (None, "none"),
        (1, "rule"),
    ]
    with pytest.raises(ValueError, match="label mode"):
        label_records(steps, mode="judge")


def test_labelled_records_round_trip_through_the_record_schema(tmp_path):
    out = label_records(traj(["A", "A"], won=True, round=0))
    path = write_jsonl_atomic(tmp_path / "labelled.jsonl", out)
    back = read_steps(path)
    assert [(r["label"], r["label_source"]) for r in back] == [(0, "rule"), (1, "rule")]


def test_rules_on_a_real_alfworld_game(tmp_path):
    """A detour (go to A, go to B, back to A) then the planner's plan: the step taken at A first is bad."""
    alfworld_env = pytest.importorskip("gcd_trl.envs.alfworld")
    from gcd_trl.envs.alfworld_gen import generate_games

    (game,) = generate_games(tmp_path / "games", 1, seed=3, task_types=(1,))
    task = Task(env="alfworld", game=game, task_type=1)
    with alfworld_env.AlfWorldEnv(expert="planner") as env:
        ep = Episode(task, env.reset(task), load_template("alfworld"), max_steps=30)
        places = [a for a in ep.state.admissible_actions if a.startswith("go to ")][:2]
        detour = [places[0], places[1], places[0]]
        while not ep.done:
            action = detour.pop(0) if detour else env.expert_action()
            taken = ep.apply(f"<think>plan</think><action>{action}</action>")
            assert taken == action
            ep.observe(env.step(taken))
    records = [s.to_dict() for s in ep.steps]
    assert ep.won, "the planner should finish the game after the detour"
    labels = rule_labels(records)
    # step 1 was taken at places[0] and step 3 starts there again, in the same engine state
    assert records[1]["state"] == records[3]["state"] and records[1]["anchor"] == records[3]["anchor"]
    assert labels[1] == 0
    assert labels[-1] == 1
    assert all(
        (label == 0) == any(r["state"] == s["state"] for s in records[r["step"] + 1 :])
        for label, r in zip(labels[:-1], records)
    )


def test_nothing_happens_in_two_states_does_not_collide(tmp_path):
    """ "Nothing happens." at the start and again after a move: the raw observations are equal, the states
    are not, so the move between them (progress) is not labelled bad; each useless action is."""
    alfworld_env = pytest.importorskip("gcd_trl.envs.alfworld")
    from gcd_trl.envs.alfworld_gen import generate_games

    (game,) = generate_games(tmp_path / "games", 1, seed=3, task_types=(1,))
    task = Task(env="alfworld", game=game, task_type=1)
    with alfworld_env.AlfWorldEnv(expert="planner") as env:
        ep = Episode(task, env.reset(task), load_template("alfworld"), max_steps=30)
        place = next(a for a in ep.state.admissible_actions if a.startswith("go to "))
        for action in ("examine nothing 1", place, "examine nothing 1", "look"):
            taken = ep.apply(f"<think>plan</think><action>{action}</action>")
            ep.observe(env.step(taken))
    records = [s.to_dict() for s in ep.steps]
    assert [r["action"] for r in records] == ["examine nothing 1", place, "examine nothing 1", "look"]
    # steps 1 and 3 were taken right after "Nothing happens.", in different rooms' states
    assert records[1]["anchor"] == records[3]["anchor"] == "Nothing happens."
    assert records[1]["state"] != records[3]["state"]
    assert records[0]["state"] == records[1]["state"] and records[2]["state"] == records[3]["state"]
    assert rule_labels(records) == [0, None, 0, None]
    # records without a state (older files) fall back to the anchor, and the move is mislabelled bad
    legacy = [{k: v for k, v in r.items() if k != "state"} for r in records]
    assert rule_labels(legacy)[1] == 0


def test_state_key_wins_over_anchor():
    t = traj(["A", "N", "B", "N"])
    for r, state in zip(t, ["s0", "s0", "s1", "s1"]):
        r["state"] = state
    assert rule_labels(t) == [0, None, 0, None]
