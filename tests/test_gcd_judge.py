"""The judge task: critic prompt, parsing, rewards, class-balanced selection, round scoring, advantages,
and GCDRound without an external judge (rules + policy answers + golden rules)."""

from __future__ import annotations

import random
import statistics

import pytest

from gcd_trl.gcd.judge import (
    JudgePrompt,
    build_judge_prompts,
    judge_advantages,
    judge_prompt_from_row,
    judge_reward,
    parse_judgement,
    render_judge_prompt,
    score_judge_answers,
    select_balanced,
)
from gcd_trl.generation import Generation
from gcd_trl.prompts import load_template, render_agent_prompt

AGENT_PROMPT = render_agent_prompt(
    load_template("alfworld"),
    task_description="put a mug in cabinet.",
    observation="On the desk 1, you see a mug 1.",
    admissible_actions=["take mug 1 from desk 1", "go to cabinet 1"],
    history=[("You are in a room.", "go to desk 1")],
    step_count=1,
    history_length=2,
)
RESPONSE = "<think>The mug is here, take it.</think><action>take mug 1 from desk 1</action>"


def answer(score, advise="Pick up the target object as soon as you see it."):
    return f"<think>reasoning</think>\n<answer>\\boxed{{{score}}}</answer>\n<advise>{advise}</advise>"


def test_critic_prompt_holds_task_history_observation_actions_and_response():
    text = render_judge_prompt({"prompt": AGENT_PROMPT, "completion": RESPONSE})
    for part in (
        "put a mug in cabinet.",
        "go to desk 1",
        "On the desk 1, you see a mug 1.",
        "'go to cabinet 1'",
    ):
        assert part in text
    assert RESPONSE in text
    assert "\\boxed{0/1}" in text  # the template's literal braces survive rendering
    assert text.startswith("Role: You are an expert evaluator")
    custom = render_judge_prompt({"prompt": "P", "completion": "R"}, template="Q: {problem}\nA: {response}")
    assert custom == "Q: P\nA: R"
    with pytest.raises(ValueError, match="completion"):
        render_judge_prompt({"prompt": "P"})


@pytest.mark.parametrize(
    ("text", "score"),
    [
        (answer(1), 1),
        (answer(0), 0),
        ("<answer>\\boxed{ 1 }</answer>", 1),
        ("no answer block, finally \\boxed{0}", 0),
        ("<think>maybe \\boxed{1}</think><answer>\\boxed{0}</answer>", 0),  # the answer block wins
        ("<answer>\\boxed{0/1}</answer>", None),  # copied the template
        ("<answer>1</answer>", None),  # no \boxed
        ("<answer>boxed{1}</answer>", None),  # no backslash
        ("\\boxed{2}", None),
        ("", None),
    ],
)
def test_parse_judgement_scores(text, score):
    assert parse_judgement(text).score == score


def test_parse_judgement_blocks():
    j = parse_judgement(
        "<think>loops</think><answer>\\boxed{0}</answer><action>go to cabinet 1</action><advise>Do not loop.</advise>"
    )
    assert (j.score, j.think, j.action, j.advise) == (0, "loops", "go to cabinet 1", "Do not loop.")
    assert parse_judgement(answer(1)).action is None


def test_judge_reward():
    assert judge_reward(answer(1), 1, 0.5) == 1.0
    assert judge_reward(answer(0), 1, 0.5) == 0.0
    assert judge_reward("I think it is fine.", 0, 0.5) == -0.5
    assert judge_reward("I think it is fine.", 1, 0.0) == 0.0
    with pytest.raises(ValueError, match="label"):
        judge_reward(answer(1), None, 0.5)


def _steps(n_good, n_bad, n_none=3):
    out = []
    for i, label in enumerate([1] * n_good + [0] * n_bad + [None] * n_none):
        out.append(
            {
                "group": 0,
                "traj": i,
                "step": 0,
                "anchor": "a",
                "prompt": f"p{i}",
                "completion": f"c{i}",
                "label": label,
            }
        )
    return out


def test_select_balanced_takes_as_many_good_as_bad():
    picked = select_balanced(_steps(3, 20), k=16, seed=0)
    assert sorted(r["label"] for r in picked) == [0, 0, 0, 1, 1, 1]
    picked = select_balanced(_steps(30, 30), k=16, seed=0)
    assert [r["label"] for r in picked].count(1) == 8 and len(picked) == 16
    assert select_balanced(_steps(0, 20), k=16, seed=0) == []  # no good step: no judge prompt
    assert len(select_balanced(_steps(30, 30), k=7, seed=0)) == 6  # odd k: equal classes


def test_select_balanced_fill_and_determinism():
    filled = select_balanced(_steps(3, 20), k=16, seed=1, balance=False)
    assert sorted(r["label"] for r in filled).count(1) == 3 and len(filled) == 16
    assert len(select_balanced(_steps(0, 5), k=16, seed=1, balance=False)) == 5
    steps = _steps(10, 10)
    assert select_balanced(steps, 8, seed=5) == select_balanced(steps, 8, seed=5)
    assert select_balanced(steps, 8, seed=5) != select_balanced(steps, 8, seed=6)
    judge_rows = [dict(s, kind="judge") for s in _steps(5, 5)]
    assert select_balanced(judge_rows, 8, seed=0) == []


def test_build_judge_prompts_refers_back_to_the_records():
    steps = _steps(4, 9)
    prompts = build_judge_prompts(steps, k=6, seed=0)
    assert len(prompts) == 6
    for p in prompts:
        rec = steps[p.record_ref]
        assert p.label == rec["label"]
        assert f"**Agent Response:** {rec['completion']}" in p.prompt
    short = build_judge_prompts(steps, k=6, seed=0, template="{problem} => {response}")
    assert {p.prompt for p in short} == {
        f"{steps[p.record_ref]['prompt']} => {steps[p.record_ref]['completion']}" for p in short
    }


def test_static_judge_rows():
    ready = judge_prompt_from_row({"kind": "judge", "prompt": "critic prompt", "label": 0})
    assert ready == JudgePrompt(prompt="critic prompt", label=0, record_ref=None, label_source="static")
    rendered = judge_prompt_from_row({"prompt": AGENT_PROMPT, "completion": RESPONSE, "label": 1})
    assert RESPONSE in rendered.prompt and rendered.label == 1
    for bad in ({"prompt": "x", "label": 2}, {"prompt": "x", "label": True}, {"prompt": "", "label": 1}):
        with pytest.raises(ValueError, match="row 7"):
            judge_prompt_from_row(bad, where="row 7")


def test_score_judge_answers_rewards_metrics_and_advice():
    prompts = [JudgePrompt("g", 1, 0), JudgePrompt("b", 0, 1)]
    answers = [
        [answer(1, "Good: finish the task."), answer(0), "garbage", answer(1, "")],
        [answer(0, "Avoid loops."), answer(0, "Avoid loops."), answer(1), answer(0, "Check first.")],
    ]
    s = score_judge_answers(prompts, answers, format_penalty=0.25)
    assert s.rewards == [[1.0, 0.0, -0.25, 1.0], [1.0, 1.0, 0.0, 1.0]]
    assert s.advice == ["Good: finish the task.", "Avoid loops.", "Avoid loops.", "Check first."]
    assert s.metrics["judge/accuracy_good"] == 0.5
    assert s.metrics["judge/accuracy_bad"] == 0.75
    assert s.metrics["judge/format_failures"] == 1 / 8
    assert s.metrics["judge/prompts"] == 2 and s.metrics["judge/good_prompts"] == 1
    with pytest.raises(ValueError, match="answer groups"):
        score_judge_answers(prompts, answers[:1], 0.0)


def test_judge_advantages_match_trl_group_normalisation():
    rewards = [[1.0, 0.0, -0.25, 1.0], [1.0, 1.0, 1.0, 1.0]]
    adv = judge_advantages(rewards, "group")
    g = rewards[0]
    mean, std = statistics.mean(g), statistics.stdev(g)  # unbiased, as TRL's nanstd
    assert adv[0] == pytest.approx([(x - mean) / (std + 1e-4) for x in g])
    assert adv[1] == [0.0, 0.0, 0.0, 0.0]  # all answers equal: no signal
    flat = [x for grp in rewards for x in grp]
    batch = judge_advantages(rewards, "batch")
    assert batch[0] == pytest.approx([(x - mean) / (statistics.stdev(flat) + 1e-4) for x in g])
    assert judge_advantages(rewards, "none")[0] == pytest.approx([x - mean for x in g])
    assert judge_advantages(rewards, True) == adv
    with pytest.raises(ValueError, match="scale_rewards"):
        judge_advantages(rewards, "token")


class ScriptedPolicy:
    """A Generator: answers every prompt with a fixed text (stands in for the policy's backend)."""

    def __init__(self, text):
        self.text = text
        self.prompts = []

    def generate(self, prompts):
        self.prompts += prompts
        return [
            Generation(prompt_ids=[], completion_ids=[], text=self.text, truncated=False) for _ in prompts
        ]


def _round_records(round_index, seed):
    """Two groups of 3 episodes; some loops, some wins."""
    rng = random.Random(seed)
    records = []
    for group in range(2):
        for t in range(3):
            anchors = [rng.choice("ABCD") for _ in range(5)]
            won = t != 2
            for i, a in enumerate(anchors):
                records.append(
                    {
                        "round": round_index,
                        "group": group,
                        "traj": t,
                        "step": i,
                        "anchor": a,
                        "prompt": f"task {group}: at {a}, step {i}",
                        "completion": f"<think>x</think><action>go {i}</action>",
                        "valid": True,
                        "won": won and i == 4,
                        "done": i == 4,
                    }
                )
    return records


def test_rounds_through_the_trainer_facing_judge_task(tmp_path):
    """The model-free round the trainer runs (gcd.task.JudgeTask) on these modules: rules labels, balanced
    prompts, scores and advantages, policy advice -> golden rules, checkpoint round trip."""
    from gcd_trl.gcd.args import GCDArguments
    from gcd_trl.gcd.task import JudgeTask

    args = GCDArguments(
        gcd=True, judge_prompts_per_round=4, judge_num_generations=4, correction_every=2, max_rules=2
    )
    task = JudgeTask(args, tmp_path, seed=1)
    assert task.external is None
    policy = ScriptedPolicy("<think>t</think><rule>Never revisit a place without a reason.</rule>")
    for r in range(2):
        labelled = task.label(_round_records(r, seed=r), r)
        prompts = task.prompts(labelled, r)
        assert sum(p.label for p in prompts) * 2 == len(prompts) == 4
        for p in prompts:
            assert labelled[p.record_ref]["label"] == p.label
        answers = [
            a for p in prompts for a in [answer(p.label, "Avoid revisiting places.")] * 3 + ["bad format"]
        ]
        judged = task.score(prompts, answers, labelled, r)
        assert [i["reward"] for i in judged.infos[:4]] == [1.0, 1.0, 1.0, -0.1]
        assert judged.advantages[:4] == pytest.approx(judge_advantages([[1.0, 1.0, 1.0, -0.1]])[0])
        if task.rules.due(r):
            generator, source = task.rules_generator(policy)
            assert source == "policy"
            assert task.rules.maybe_update(r, generator, source=source) == (r == 1)
    assert task.suggestions() == ["Never revisit a place without a reason."]
    assert (tmp_path / "golden_rules.json").is_file()
    assert "Avoid revisiting places." in policy.prompts[0]

    resumed = JudgeTask(args, tmp_path / "resumed", seed=1)
    resumed.load_state_dict(task.state_dict())
    assert resumed.suggestions() == task.suggestions()
