import pytest

from gcd_trl.envs.base import StepResult, Task
from gcd_trl.prompts import (
    BUILTIN_TEMPLATES,
    TemplateError,
    load_template,
    render_agent_prompt,
    render_critic_prompt,
    render_suggestion_prompt,
)
from gcd_trl.rollout.episode import Episode, StepRecord
from gcd_trl.rollout.parse import MISSING_ACTION_TAG, NOT_ADMISSIBLE

TASK = Task(env="alfworld", split="test", game="/games/pick_and_place_simple-Mug-None-Cabinet-1/trial_1")
DESC = "put a mug in cabinet."


def result(obs, admissible=("go to cabinet 1", "go to desk 1", "look"), **kw):
    return StepResult(observation=obs, task_description=DESC, admissible_actions=list(admissible), **kw)


def think(action):
    return f"<think>next</think><action>{action}</action>"


# ---- templates -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(BUILTIN_TEMPLATES))
def test_builtin_templates_load(name):
    text = load_template(name)
    assert text and text == text.strip()


def test_paper_prompt_wording_is_kept():
    alf = load_template("alfworld")
    assert (
        "You are an expert agent operating in the ALFRED Embodied Environment. Your task is to: {task_description}"
        in alf
    )
    assert "Your admissible actions of the current situation are: [{admissible_actions}]." in alf
    assert "MUST be enclosed within <think> </think> tags" in alf
    sci = load_template("scienceworld")
    assert "Current available actions:\n{available_actions}" in sci
    assert "{problem}" in load_template("critic") and "{advice_list}" in load_template("suggestion")
    for name in ("alfworld_rlvmr", "scienceworld_rlvmr"):
        text = load_template(name)
        assert all(f"<{t}>" in text for t in ("planning", "explore", "reflection", "monitor"))


def first_prompt(template, **kw):
    args = dict(
        task_description=DESC,
        observation="You are in the middle of a room.",
        admissible_actions=["look", "go to desk 1"],
        history=[],
        step_count=0,
        history_length=2,
    )
    args.update(kw)
    return render_agent_prompt(template, **args)


def test_first_step_reads_naturally_and_guideline_line_is_dropped_when_empty():
    text = first_prompt(load_template("alfworld"))
    assert "Prior to this step" not in text
    assert "guidelines below" not in text
    assert "You are now at step 1 and your current observation is: You are in the middle of a room." in text
    assert "['look', 'go to desk 1']" in text
    assert "{" not in text.replace("{{", "")


def test_suggestions_list_is_numbered():
    text = first_prompt(
        load_template("alfworld"), suggestions=["Search receptacles one by one.", "Do not repeat."]
    )
    assert "make better actions: \n" not in text  # trailing spaces are trimmed
    assert "\n1. Search receptacles one by one.\n2. Do not repeat." in text


def test_history_window_shows_the_last_pairs_numbered_by_step():
    history = [(f"obs {i}", f"act {i}") for i in range(1, 6)]
    text = first_prompt(load_template("alfworld"), history=history, step_count=5, history_length=2)
    assert "already taken 5 step(s)" in text and "most recent 2 observations" in text
    assert "[Observation 4: 'obs 4', Action 4: 'act 4']" in text
    assert "[Observation 5: 'obs 5', Action 5: 'act 5']" in text
    assert "obs 3" not in text
    assert "You are now at step 6" in text
    none = first_prompt(load_template("alfworld"), history=history, step_count=5, history_length=0)
    assert "Prior to this step" not in none and "step 6" in none


def test_scienceworld_actions_come_from_env_info():
    info = {"action_templates": ["open OBJ", "go to LOC"], "objects": ["door to kitchen", "red wire"]}
    text = first_prompt(load_template("scienceworld"), admissible_actions=None, env_info=info)
    assert "open OBJ, go to LOC" in text and "door to kitchen, red wire" in text
    with pytest.raises(ValueError, match="action_templates"):
        first_prompt(load_template("scienceworld"), admissible_actions=None, env_info={})


def test_user_template_errors_name_file_and_placeholder(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("Task: {task_description}\nObs: {current_observaton}\n[{admissible_actions}]")
    with pytest.raises(TemplateError, match=r"bad\.txt, line 2: unknown placeholder \{current_observaton\}"):
        load_template(bad)
    missing = tmp_path / "missing.txt"
    missing.write_text("Task: {task_description}\n[{admissible_actions}]")
    with pytest.raises(
        TemplateError, match=r"missing\.txt: missing required placeholder \{current_observation\}"
    ):
        load_template(missing)
    no_actions = tmp_path / "noact.txt"
    no_actions.write_text("Task: {task_description} {current_observation}")
    with pytest.raises(TemplateError, match=r"admissible_actions\} or \{available_actions"):
        load_template(no_actions)
    brace = tmp_path / "brace.txt"
    brace.write_text("Task: {task_description} {current_observation} {admissible_actions}\nuse {json}: {")
    with pytest.raises(TemplateError, match=r"brace\.txt, line 2"):
        load_template(brace)
    attr = tmp_path / "attr.txt"
    attr.write_text("{task_description.upper} {current_observation} {admissible_actions}")
    with pytest.raises(TemplateError, match="not a plain name"):
        load_template(attr)
    with pytest.raises(TemplateError, match="neither a built-in"):
        load_template(tmp_path / "nope.txt")


def test_user_template_file_renders(tmp_path):
    path = tmp_path / "mine.txt"
    path.write_text(
        "Goal: {task_description}\n{{literal}} Now: {current_observation}\nActions: {admissible_actions}\n"
    )
    text = first_prompt(load_template(path))
    assert (
        text
        == "Goal: put a mug in cabinet.\n{literal} Now: You are in the middle of a room.\nActions: 'look', 'go to desk 1'"
    )


def test_critic_and_suggestion_render():
    critic = render_critic_prompt(load_template("critic"), problem="P1", response="R1")
    assert "**Problem:** P1" in critic and "**Agent Response:** R1" in critic and "\\boxed{0/1}" in critic
    rule = render_suggestion_prompt(load_template("suggestion"), advice_list=["a", "b"])
    assert "ADVICE LIST:\n- a\n- b" in rule and "THEME" not in rule
    assert "THEME: search" in render_suggestion_prompt(
        load_template("suggestion"), advice_list="x", theme="search"
    )


# ---- episode ---------------------------------------------------------------------------------------
def test_episode_valid_steps_and_win():
    ep = Episode(TASK, result("You are in the middle of a room."), load_template("alfworld"), group=3, traj=1)
    assert ep.apply(think("Go to Cabinet 1")) == "go to cabinet 1"
    ep.observe(result("You arrive at cabinet 1.", reward=0.0))
    assert not ep.done
    prompt2 = ep.prompt()
    assert "[Observation 1: 'You are in the middle of a room.', Action 1: 'go to cabinet 1']" in prompt2
    assert ep.apply(think("look")) == "look"
    ep.observe(result("You won.", reward=1.0, score=1.0, done=True, won=True))
    assert ep.done and ep.won and not ep.truncated and ep.aborted is None
    assert [s.step for s in ep.steps] == [0, 1]
    last = ep.steps[-1]
    assert isinstance(last, StepRecord) and last.done and last.won and last.env_reward == 1.0
    assert last.anchor == "You arrive at cabinet 1." and last.prompt == prompt2
    assert (last.group, last.traj) == (3, 1)
    assert set(last.to_dict()) >= {
        "group",
        "traj",
        "step",
        "anchor",
        "prompt",
        "completion",
        "action",
        "valid",
        "reason",
        "tag",
        "env_reward",
        "done",
        "won",
    }
    with pytest.raises(RuntimeError):
        ep.prompt()


def test_invalid_output_never_reaches_env_and_counts_toward_max_steps():
    """gcd-trl's strict options: inadmissible actions are invalid, feedback says why."""
    ep = Episode(
        TASK,
        result("Start."),
        load_template("alfworld"),
        max_steps=3,
        inadmissible_action="invalid",
        invalid_feedback="reason",
    )
    assert ep.apply("I go to cabinet 1") is None
    with pytest.raises(ValueError, match="must not reach the env"):
        ep.observe(result("oops"))
    ep.observe(None)
    rec = ep.steps[0]
    assert not rec.valid and rec.action is None and rec.reason == MISSING_ACTION_TAG and rec.env_reward == 0.0
    assert rec.raw_action is None and rec.admissible is None
    assert ep.observation.startswith("Nothing happens.") and "no <action>" in ep.observation
    assert "You are now at step 2 and your current observation is: Nothing happens." in ep.prompt()
    assert ep.apply(think("dance")) is None
    ep.observe(None)
    assert ep.steps[1].reason == NOT_ADMISSIBLE and ep.steps[1].anchor == "Start."  # state did not change
    assert ep.steps[1].raw_action == "dance"
    assert "Action 2: 'dance'" in ep.prompt()
    assert ep.apply(think("look")) == "look"
    ep.observe(result("Still here."))
    assert ep.done and ep.truncated and not ep.won and ep.num_steps == 3 and ep.num_invalid == 2
    assert ep.steps[-1].done


def test_default_rules_send_inadmissible_actions_and_show_the_env_answer():
    """The references' rule: a format error is invalid and answered like an unknown command ("Nothing
    happens."); a well-formed inadmissible action reaches the env, is valid and recorded admissible=False."""
    ep = Episode(TASK, result("Start."), load_template("alfworld"), max_steps=5)
    assert ep.apply("no tags") is None
    ep.observe(None)
    assert ep.observation == "Nothing happens." and ep.steps[0].reason == MISSING_ACTION_TAG
    assert ep.apply(think("Dance wildly.")) == "Dance wildly"
    ep.observe(result("Nothing happens."))
    rec = ep.steps[1]
    assert rec.valid and rec.action == "Dance wildly" and rec.admissible is False and rec.reason is None
    assert rec.raw_action == "Dance wildly." and rec.to_dict()["admissible"] is False
    assert ep.apply(think("look")) == "look"
    ep.observe(result("Room."))
    assert ep.steps[2].admissible is True
    assert ep.num_invalid == 1 and ep.num_inadmissible == 1 and ep.summary()["inadmissible"] == 1


def test_scienceworld_invalid_feedback_and_unknown_action():
    """ScienceWorld lists no actions: its parser's answer marks an unknown action (RLVMR's sciworld env
    checks `action_available`); a format error is answered with the same text."""
    info = {"action_templates": ["open OBJ"], "objects": ["door"]}
    task = Task(env="scienceworld", task_name="boil", variation=0)
    ep = Episode(task, StepResult("Kitchen.", "boil water", None, info=info), load_template("scienceworld"))
    assert ep.apply("<action>dance</action>") is None  # no <think>
    ep.observe(None)
    assert ep.observation == "No known action matches that input."
    assert ep.apply(think("dance")) == "dance"
    ep.observe(
        StepResult("No known action matches that input.", "boil water", None, info={"objects": ["door"]})
    )
    assert ep.steps[1].valid and ep.steps[1].admissible is False
    assert ep.apply(think("open door")) == "open door"
    ep.observe(StepResult("The door is open.", "boil water", None, info={"objects": ["door"]}))
    assert ep.steps[2].admissible is None


def test_apply_observe_order_is_enforced():
    ep = Episode(TASK, result("Start."), load_template("alfworld"))
    with pytest.raises(RuntimeError, match="without apply"):
        ep.observe(None)
    ep.apply(think("look"))
    with pytest.raises(RuntimeError, match="twice"):
        ep.apply(think("look"))
    with pytest.raises(ValueError, match="was valid"):
        ep.observe(None)


def test_history_window_in_episode():
    ep = Episode(TASK, result("obs 0"), load_template("alfworld"), history_length=3, max_steps=50)
    for i in range(1, 6):
        ep.apply(think("look"))
        ep.observe(result(f"obs {i}"))
    prompt = ep.prompt()
    assert "most recent 3 observations" in prompt and "already taken 5 step(s)" in prompt
    assert (
        "[Observation 3: 'obs 2'" in prompt
        and "[Observation 5: 'obs 4'" in prompt
        and "'obs 1'" not in prompt
    )
    assert ep.repeated_actions == 4
    assert len(ep.history) == 5


def test_aborted_episode():
    ep = Episode(TASK, result("Start."), load_template("alfworld"))
    ep.apply(think("look"))
    ep.observe(StepResult("", DESC, None, done=True, won=False, info={"aborted": "worker died"}))
    assert ep.done and ep.aborted == "worker died" and not ep.won and not ep.truncated
    assert ep.steps[-1].done
    dead = Episode(TASK, StepResult("", DESC, None, done=True, info={"aborted": "reset timed out"}), "unused")
    assert dead.done and dead.aborted == "reset timed out" and dead.steps == []
    assert dead.summary()["aborted"] == "reset timed out"


def test_rlvmr_episode_tracks_tags_and_plan():
    ep = Episode(TASK, result("Start."), load_template("alfworld_rlvmr"), meta_reasoning=True)
    assert "Your current plan is" not in ep.prompt()
    assert ep.apply("<planning>step 1: find mug; step 2: put it</planning><action>look</action>") == "look"
    ep.observe(result("Room."))
    assert ep.steps[0].tag == "planning"
    assert "Your current plan is: step 1: find mug; step 2: put it" in ep.prompt()
    assert ep.apply(think("look")) is None  # <think> alone is not a meta tag
    ep.observe(None)
    assert ep.steps[1].reason == "missing_meta_tag"
    # RLVMR's env_manager keeps the planning of every output, even an invalid one (two tags here)
    assert ep.apply("<planning>step 1: new plan</planning><monitor>x</monitor><action>look</action>") is None
    ep.observe(None)
    assert ep.steps[2].reason == "multiple_meta_tags"
    assert "Your current plan is: step 1: new plan" in ep.prompt()


def test_history_all_older_actions_and_reasoning():
    """RLVMR's env_manager.build_text_obs: ALFWorld shows every (observation, action); ScienceWorld every
    action and the last 2 observations; meta_think adds the last 3 full outputs."""
    ep = Episode(
        TASK,
        result("obs 0"),
        load_template("alfworld_rlvmr"),
        history_length=-1,
        reasoning_history=3,
        meta_reasoning=True,
        max_steps=50,
    )
    outputs = [f"<monitor>m{i}</monitor><action>look</action>" for i in range(1, 6)]
    for i, out in enumerate(outputs, start=1):
        ep.apply(out)
        ep.observe(result(f"obs {i}"))
    prompt = ep.prompt()
    assert "most recent 5 observations" in prompt
    assert all(f"[Observation {i}: 'obs {i - 1}', Action {i}: 'look']" in prompt for i in range(1, 6))
    assert "[Observation 3: 'obs 2', output: '<monitor>m3</monitor><action>look</action>']" in prompt
    assert "output: '<monitor>m2</monitor>" not in prompt and "output: '<monitor>m5</monitor>" in prompt

    older = Episode(TASK, result("obs 0"), load_template("alfworld"), history_length=2, older_actions=True)
    for i in range(1, 5):
        older.apply(think(["look", "go to desk 1", "go to cabinet 1", "look"][i - 1]))
        older.observe(result(f"obs {i}"))
    text = older.prompt()
    assert "[Action 1: 'look']\n[Action 2: 'go to desk 1']\n[Observation 3: 'obs 2'" in text
    assert "most recent 2 observations" in text and "output:" not in text
    first = Episode(
        TASK, result("obs 0"), load_template("alfworld_rlvmr"), history_length=-1, reasoning_history=3
    )
    assert "reasoning" not in first.prompt() and "Prior to this step" not in first.prompt()


def test_episode_rejects_bad_settings():
    with pytest.raises(ValueError, match="max_steps"):
        Episode(TASK, result("x"), load_template("alfworld"), max_steps=0)
    with pytest.raises(ValueError, match="history_length"):
        Episode(TASK, result("x"), load_template("alfworld"), history_length=-2)
    with pytest.raises(ValueError, match="inadmissible_action"):
        Episode(TASK, result("x"), load_template("alfworld"), inadmissible_action="skip")
    with pytest.raises(ValueError, match="invalid_feedback"):
        Episode(TASK, result("x"), load_template("alfworld"), invalid_feedback="loud")


def test_reset_only_info_carries_over_to_later_steps():
    info = {"action_templates": ["open OBJ", "look around"], "objects": ["door"]}
    task = Task(env="scienceworld", task_name="boil", variation=0)
    ep = Episode(task, StepResult("Kitchen.", "boil water", None, info=info), load_template("scienceworld"))
    assert ep.apply(think("Open  door")) == "Open door"  # no admissible list: any non-empty action
    ep.observe(StepResult("The door is open.", "boil water", None, info={"objects": ["door", "stove"]}))
    prompt = ep.prompt()
    assert "Valid actions: open OBJ, look around" in prompt and "objects: door, stove" in prompt


def test_help_is_not_shown_among_the_admissible_actions():
    """verl-agent / RLVMR env_manager.py `build_text_obs`: "exclude 'help' in admissible_actions"."""
    text = first_prompt(load_template("alfworld"), admissible_actions=["look", "help", "inventory"])
    assert "['look', 'inventory']" in text
