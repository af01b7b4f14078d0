"""ALFWorld (alfworld 0.4.2, TextWorld PDDL engine) as a `TextEnv`, plus game discovery helpers.

One `AlfWorldEnv` plays one game at a time and is reused across many `reset()` calls (the env pool
keeps one per worker process). The engine is alfworld's: textworld's `PddlEnv` wrapped in alfworld's
`AlfredDemangler` (so objects read "mug 1"), loaded straight from a game directory of the official
json_2.1.1 layout (`game.tw-pddl` + `traj_data.json`).

Two experts give the next action in the current state, whatever the agent did before:
- "planner": the game's walkthrough (stored in game.tw-pddl, else planned by fast-downward at the
  start), followed step by step; replanned from the current state as soon as the agent leaves it.
  Omniscient: it walks straight to objects it has not seen.
- "handcoded": alfworld's `HandCodedTWAgent`, which searches receptacles like a player would (use it
  for imitation data). We translate between its vocabulary and the game's grammar ("move X to Y" vs
  "put X in/on Y"), map "go to" a receptacle sharing the agent's location to "examine" it, and skip
  stale steps from its backlog; with that it wins all 134 valid_unseen games on its own. It still
  falls back to the planner for the rest of the episode when it proposes an inadmissible action,
  fails, or repeats a (world state, action) pair while being followed (a loop).

Speed: textworld builds the PDDL state twice per new game (load and reset) and re-parses grammar
strings with tatsu on every step; `_load_once_env_class` and `_memoize_grammar_parsing` remove both
without changing what the engine says (about 2x faster resets and steps).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import os
import random
import sys
import zlib
from contextlib import contextmanager
from typing import Any

from gcd_trl.envs.base import StepResult, Task, TextEnv

# alfworld's numbering (alfworld.agents.environment.alfred_tw_env.TASK_TYPES); kept here so the
# helpers below do not import textworld (~1.5 s). A test checks both stay equal.
TASK_TYPES: dict[int, str] = {
    1: "pick_and_place_simple",
    2: "look_at_obj_in_light",
    3: "pick_clean_then_place_in_recep",
    4: "pick_heat_then_place_in_recep",
    5: "pick_cool_then_place_in_recep",
    6: "pick_two_obj_and_place",
}
TASK_TYPE_IDS: dict[str, int] = {name: idx for idx, name in TASK_TYPES.items()}


@functools.cache
def type_names() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """ALFWorld's receptacle types and its other object types, lower case as the game text writes them."""
    import alfworld.gen.constants as constants

    receptacles = tuple(sorted({r.lower() for r in constants.RECEPTACLES}))
    objects = tuple(sorted({o.lower() for o in constants.OBJECTS} - set(receptacles)))
    return receptacles, objects


EXPERTS = ("handcoded", "planner")
GAME_FILE = "game.tw-pddl"
TRAJ_FILE = "traj_data.json"
_BANNER = "-= Welcome to TextWorld, ALFRED! =-"
_TASK_MARK = "Your task is to: "
_HANDCODED_REASKS = 3
_START_PLAN_CACHE = 4096
_HANDCODED_MAX_STEPS = 10_000  # we detect loops ourselves; alfworld's own cap would raise mid-episode


def default_data_dir() -> str:
    """alfworld's data root ($ALFWORLD_DATA, else ~/.cache/alfworld) joined with json_2.1.1."""
    root = os.environ.get("ALFWORLD_DATA") or os.path.expanduser("~/.cache/alfworld")
    return os.path.join(os.path.expandvars(root), "json_2.1.1")


def _read_json(path: str) -> dict[str, Any]:
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e


def _game_dir(game: str | os.PathLike) -> str:
    """Accepts a game directory (or its game.tw-pddl) and checks the files alfworld needs are there."""
    path = os.path.abspath(os.fspath(game))
    if os.path.basename(path) == GAME_FILE and os.path.isfile(path):
        path = os.path.dirname(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"alfworld game directory not found: {path}")
    for name in (GAME_FILE, TRAJ_FILE):
        if not os.path.isfile(os.path.join(path, name)):
            raise FileNotFoundError(f"alfworld game {path} has no {name}")
    return path


def task_type_of(game_dir: str | os.PathLike) -> int:
    """The game's task type, 1-6 as alfworld numbers them, read from its traj_data.json."""
    traj_path = os.path.join(_game_dir(game_dir), TRAJ_FILE)
    name = _read_json(traj_path).get("task_type")
    if name not in TASK_TYPE_IDS:
        raise ValueError(f"{traj_path}: unknown task_type {name!r} (expected one of {list(TASK_TYPE_IDS)})")
    return TASK_TYPE_IDS[name]


def list_games(
    data_dir: str | os.PathLike, task_types: tuple[int, ...] | list[int] | None = None
) -> list[str]:
    """Playable game directories under `data_dir`, sorted, with alfworld's loader rules.

    Like `AlfredTWEnv.collect_game_files`: a game is a directory holding traj_data.json; paths
    containing "movable" or "Sliced" are skipped, as are games without game.tw-pddl or whose
    game.tw-pddl lacks `"solvable": true`, and task types not asked for.
    """
    root = os.fspath(data_dir)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"alfworld data directory not found: {root}")
    wanted = set(TASK_TYPES) if task_types is None else set(task_types)
    unknown = wanted - set(TASK_TYPES)
    if unknown:
        raise ValueError(f"unknown alfworld task types {sorted(unknown)}; valid: {sorted(TASK_TYPES)}")
    games = []
    for dirpath, _dirs, files in os.walk(root):
        if TRAJ_FILE not in files or GAME_FILE not in files:
            continue
        if "movable" in dirpath or "Sliced" in dirpath:
            continue
        traj = _read_json(os.path.join(dirpath, TRAJ_FILE))
        if TASK_TYPE_IDS.get(traj.get("task_type")) not in wanted:
            continue
        if _read_json(os.path.join(dirpath, GAME_FILE)).get("solvable") is not True:
            continue
        games.append(os.path.abspath(dirpath))
    return sorted(games)


def split_intro(feedback: str) -> tuple[str, str]:
    """Split the engine's intro text into (room description, task description), banner dropped."""
    text = feedback.replace(_BANNER, "").strip()
    room, mark, task = text.partition(_TASK_MARK)
    if not mark:
        return room.strip(), ""
    return room.strip(), task.strip()


@contextmanager
def _argv_kept():
    """fast-downward's PDDL translator overwrites sys.argv; give the caller's back."""
    saved = list(sys.argv)
    try:
        yield
    finally:
        sys.argv[:] = saved


class AlfWorldEnv(TextEnv):
    """One ALFWorld game at a time on alfworld's TextWorld engine; reusable across resets."""

    name = "alfworld"

    def __init__(self, expert: str = "handcoded", seed: int = 0) -> None:
        if expert not in EXPERTS:
            raise ValueError(f"AlfWorldEnv expert must be one of {EXPERTS}, got {expert!r}")
        self.expert = expert
        self.seed = seed
        self._engine: Any = None  # AlfredDemangler(PddlEnv), built on first reset
        self._state: Any = None  # the engine's last GameState
        self._game: str | None = None
        self._task_type: int | None = None
        self._task_description = ""
        self._done = True
        self._won = False
        self.num_steps = 0
        # planner expert: a plan and how far the agent has followed it
        self._plan: list[str] | None = None
        self._plan_idx = 0
        self._walkthrough: list[str] | None = None
        self._start_plans: dict[str, list[str]] = {}
        # handcoded expert: alfworld's agent, the steps it has not seen yet, loop detection
        self._handcoded: Any = None
        self._handcoded_pending: list[tuple[dict[str, Any], str]] = []
        self._handcoded_proposal: str | None = None
        self._handcoded_seen: set[tuple[frozenset, str]] = set()
        self._rng = random.Random(seed)
        self.use_planner = expert == "planner"  # handcoded switches this on when it falls back
        self.fallback_reason: str | None = None

    # -- engine ---------------------------------------------------------------------------------
    def _build_engine(self) -> Any:
        import textworld
        from alfworld.agents.environment.alfred_tw_env import AlfredDemangler
        from textworld.envs.pddl import PddlEnv

        _memoize_grammar_parsing()
        infos = textworld.EnvInfos(won=True, admissible_commands=True)
        return AlfredDemangler(shuffle=False)(_load_once_env_class(PddlEnv)(infos))

    def _load(self, game_dir: str) -> dict[str, Any]:
        data = _read_json(os.path.join(game_dir, GAME_FILE))
        if data.get("solvable") is not True:
            raise ValueError(f"alfworld game {game_dir} is not marked solvable in its {GAME_FILE}")
        missing = [k for k in ("pddl_domain", "grammar", "pddl_problem") if k not in data]
        if missing:
            raise ValueError(f"{os.path.join(game_dir, GAME_FILE)} lacks field(s) {missing}")
        if self._engine is None:
            self._engine = self._build_engine()
        with _argv_kept():
            self._engine.load(data)
        return data

    # -- TextEnv --------------------------------------------------------------------------------
    def reset(self, task: Task) -> StepResult:
        if task.env != "alfworld":
            raise ValueError(f"AlfWorldEnv cannot play a {task.env!r} task")
        game_dir = _game_dir(task.game)
        self._state, self._done = None, True  # a failed load must not leave the old game playable
        self._task_type = task_type_of(game_dir)
        data = self._load(game_dir)
        with _argv_kept():
            self._state = self._engine.reset()
        self._game = game_dir
        self._done = self._won = False
        self.num_steps = 0
        room, self._task_description = split_intro(self._state.feedback)
        self._walkthrough = data.get("walkthrough") or None
        self._plan, self._plan_idx = None, 0
        self.use_planner = self.expert == "planner"
        self.fallback_reason = None
        self._rng.seed(zlib.crc32(f"{self.seed}:{game_dir}".encode()))
        self._handcoded = None
        self._handcoded_pending = [(_snapshot(self._state), "")]
        self._handcoded_proposal = None
        self._handcoded_seen = set()
        return StepResult(
            observation=room,
            task_description=self._task_description,
            admissible_actions=list(self._state["admissible_commands"]),
            info={"game": game_dir, "task_type": self._task_type, "state": state_digest(self._state)},
        )

    def step(self, action: str) -> StepResult:
        if self._state is None:
            raise RuntimeError("AlfWorldEnv.step() called before reset()")
        if self._done:
            raise RuntimeError("AlfWorldEnv.step() called after the episode ended; call reset()")
        with _argv_kept():
            self._state, _, _ = self._engine.step(action)
        self.num_steps += 1
        self._won = bool(self._state["won"])
        self._done = self._won
        self._advance_plan(action)
        self._handcoded_pending.append((_snapshot(self._state), action))
        return StepResult(
            observation=self._state.feedback.strip(),
            task_description=self._task_description,
            admissible_actions=list(self._state["admissible_commands"]),
            reward=1.0 if self._won else 0.0,
            score=1.0 if self._won else 0.0,
            done=self._done,
            won=self._won,
            info={"state": state_digest(self._state)},
        )

    def expert_action(self) -> str | None:
        if self._state is None or self._done:
            return None
        if not self.use_planner:
            action = self._handcoded_action()
            if action is not None:
                return action
        return self._planner_action()

    def close(self) -> None:
        """Release the engine and the planner's memory; a later reset builds a new engine.

        fast-downward's library copy is not unloaded (dlclose): unloading it and loading another
        copy later crashes the interpreter at exit. textworld never unloads it either.
        """
        engine, self._engine = self._engine, None
        self._state, self._handcoded, self._handcoded_pending = None, None, []
        self._done = True
        lib = getattr(engine.unwrapped, "downward_lib", None) if engine is not None else None
        if lib is not None:
            lib.cleanup()

    # -- planner expert ---------------------------------------------------------------------------
    def _replan(self) -> list[str]:
        pddl = self._engine.unwrapped
        with _argv_kept():
            return list(pddl._pddl_state.replan(pddl._entity_infos))

    def _advance_plan(self, action: str) -> None:
        if self._plan is None:
            return
        if self._plan_idx < len(self._plan) and self._plan[self._plan_idx] == action.strip():
            self._plan_idx += 1
        else:
            self._plan = None  # the agent left the plan: replan when asked

    def _planner_action(self) -> str | None:
        admissible = self._state["admissible_commands"]
        if self._plan is None and self.num_steps == 0:
            # planning the start can take seconds (30 s on one pick_two game): keep it per game
            if self._game not in self._start_plans:
                if len(self._start_plans) >= _START_PLAN_CACHE:
                    self._start_plans.pop(next(iter(self._start_plans)))
                self._start_plans[self._game] = self._walkthrough or self._replan()
            self._plan, self._plan_idx = list(self._start_plans[self._game]), 0
        if (
            self._plan is None
            or self._plan_idx >= len(self._plan)
            or self._plan[self._plan_idx] not in admissible
        ):
            self._plan, self._plan_idx = self._replan(), 0
        if self._plan_idx < len(self._plan) and self._plan[self._plan_idx] in admissible:
            return self._plan[self._plan_idx]
        return None

    # -- handcoded expert -------------------------------------------------------------------------
    def _fall_back(self, reason: str) -> None:
        self.use_planner = True
        self.fallback_reason = reason
        self._handcoded = None
        self._handcoded_pending = []

    def _handcoded_action(self) -> str | None:
        """Feed alfworld's handcoded agent every step since it last spoke, then take its proposal."""
        from alfworld.agents.expert import HandCodedTWAgent
        from alfworld.agents.expert import handcoded_expert as hc

        pending, self._handcoded_pending = self._handcoded_pending, []
        if not pending:  # asked again in the same state: same answer
            return self._handcoded_proposal
        if self._handcoded is None:
            self._handcoded = HandCodedTWAgent(max_steps=_HANDCODED_MAX_STEPS)
            self._handcoded.reset(os.path.join(self._game, GAME_FILE))  # reads traj_data.json beside it
        # the agent followed the expert's last word (or we are at the start): loops are ours to catch
        followed = len(pending) == 1 and pending[0][1] in ("", self._handcoded_proposal)
        proposal = None
        saved_rng = hc.random
        hc.random = self._rng  # its random choices become reproducible per (seed, game)
        try:
            for i, (state, action) in enumerate(pending):
                if not action:  # the intro lists the receptacles; alfworld only observes it
                    self._handcoded.observe(state["feedback"])
                    if i < len(pending) - 1:
                        continue
                said = _as_expert_said(action, self._handcoded.policy)
                proposal = self._handcoded.act(_expert_view(state), 0, state["won"], said)
            admissible = self._state["admissible_commands"]
            proposal = _in_engine_words(proposal, admissible)
            for _ in range(_HANDCODED_REASKS):
                if proposal in admissible:
                    break
                # a stale step from its backlog (e.g. "close cabinet 4" after walking away): alfworld
                # would play "look" instead; asking its policy again skips the step without moving
                proposal = _in_engine_words(
                    self._handcoded.policy.act(_expert_view(_snapshot(self._state)), "look"), admissible
                )
        except Exception as e:  # HandCodedAgentFailed/Timeout, or its bookkeeping tripping on a state
            self._fall_back(f"handcoded expert raised {type(e).__name__}: {e}")
            return None
        finally:
            hc.random = saved_rng
        if proposal not in self._state["admissible_commands"]:
            self._fall_back(f"handcoded expert proposed an inadmissible action {proposal!r}")
            return None
        if followed:
            key = (frozenset(self._state["_facts"]), proposal)
            if key in self._handcoded_seen:
                self._fall_back(f"handcoded expert looped on {proposal!r}")
                return None
            self._handcoded_seen.add(key)
        self._handcoded_proposal = proposal
        return proposal


def _in_engine_words(proposal: str | None, admissible: list[str]) -> str | None:
    """The handcoded expert's proposal as the engine accepts it.

    The expert speaks 0.4.2's "move X to Y"; games made with the older grammar (the official
    json_2.1.1 download) say "put X in/on Y". And receptacles sharing a location (drawer 2 and
    drawer 3 at loc 1) cannot be "gone to" from each other, which the expert does not know:
    examining the other one is the same visit.
    """
    if not proposal or proposal in admissible:
        return proposal
    if proposal.startswith("move ") and " to " in proposal:
        obj, recep = proposal[len("move ") :].split(" to ", 1)
        if f"put {obj} in/on {recep}" in admissible:
            return f"put {obj} in/on {recep}"
    if proposal.startswith("go to ") and "examine " + proposal[len("go to ") :] in admissible:
        return "examine " + proposal[len("go to ") :]
    return proposal


def _in_expert_words(command: str) -> str:
    """An admissible command as the handcoded expert's predicates expect it ("move X to Y")."""
    if command.startswith("put ") and " in/on " in command:
        obj, recep = command[len("put ") :].split(" in/on ", 1)
        return f"move {obj} to {recep}"
    return command


def _as_expert_said(action: str, policy: Any) -> str:
    """An executed action in the words alfworld's handcoded expert tracks its memory with.

    It spots what it holds by "put" in the last action, the pre-0.4 grammar; the 0.4.2 grammar says
    "move X to Y" (without this it never drops the first object of a pick_two task and loops). And
    examining another receptacle at the same location is its "go to" (see `_in_engine_words`).
    """
    if action.startswith("move ") and " to " in action:
        obj, recep = action[len("move ") :].split(" to ", 1)
        return f"put {obj} in/on {recep}"
    target = action[len("examine ") :] if action.startswith("examine ") else ""
    if target in policy.receptacles and target != policy.curr_recep:
        return "go to " + target
    return action


# facts that record history, not the world: textworld keeps `not_<fact>` for every fact an action
# removed, and the domain marks receptacles the agent has looked into as `checked`
_HISTORY_FACTS = ("not_", "checked")


def state_digest(state: Any) -> str:
    """The engine's physical state (where the agent is, what it holds, what is open, where each object
    lies and what was done to it: every PDDL fact but the history ones) as a short digest: equal exactly
    when the game is back in the same state, whatever the observation says ("Nothing happens." is said in
    many states)."""
    facts = sorted(str(f) for f in state["_facts"] if not f.name.startswith(_HISTORY_FACTS))
    return hashlib.sha1("\n".join(facts).encode()).hexdigest()[:16]


def _snapshot(state: Any) -> dict[str, Any]:
    """What the handcoded expert may need later from a GameState (not its heavy action objects)."""
    return {key: state[key] for key in ("feedback", "admissible_commands", "_facts", "_entity_infos", "won")}


def _expert_view(state: dict[str, Any]) -> dict[str, Any]:
    """The slice of a GameState the handcoded expert reads; facts made human-readable only here."""
    from textworld.logic import Proposition, Variable

    infos = state["_entity_infos"]
    facts = [
        Proposition(
            f.name, [Variable(infos[v.name].name if v.name in infos else v.name, v.type) for v in f.arguments]
        )
        for f in state["_facts"]
    ]
    return {
        "feedback": state["feedback"],
        "admissible_commands": [_in_expert_words(c) for c in state["admissible_commands"]],
        "facts": facts,
        "won": state["won"],
    }


@functools.cache
def _load_once_env_class(pddl_env_cls: type) -> type:
    """textworld's PddlEnv builds the PDDL state (two fast-downward translations) in load() and again
    in reset(). Right after a load nothing has moved, so reset() can reuse the loaded state: this
    halves the cost of starting an episode on a new game."""
    from textworld.envs.pddl import logic as pddl_logic

    class LoadOncePddlEnv(pddl_env_cls):
        _fresh_state = None

        def load(self, filename_or_data):
            super().load(filename_or_data)
            self._fresh_state = self._pddl_state

        def reset(self):
            fresh, self._fresh_state = self._fresh_state, None
            if fresh is None:
                return super().reset()
            build = pddl_logic.PddlState
            pddl_logic.PddlState = lambda *args, **kwargs: fresh
            try:
                return super().reset()
            finally:
                pddl_logic.PddlState = build

        def step(self, command):
            self._fresh_state = None
            return super().step(command)

    return LoadOncePddlEnv


_original_parse: Any = None


def _memoize_grammar_parsing() -> None:
    """textworld's text grammar re-parses the same short strings (command templates, "#intro#",
    feedback rules) with tatsu on every derivation: about half of each step's cost. Parsing is a pure
    function of the string, so we memoize it process-wide and hand out deep copies (callers mutate
    the symbols). Observations and admissible commands are unchanged (tested)."""
    global _original_parse
    from textworld.envs.pddl import textgen

    if _original_parse is not None:
        return
    _original_parse = textgen._parse_and_convert

    @functools.lru_cache(maxsize=16384)
    def parsed(text: str, rule_name: str | None, trace: bool) -> Any:
        return _original_parse(text, rule_name=rule_name, trace=trace)

    def parse_and_convert(text: str, rule_name: str | None = None, trace: bool = False) -> Any:
        if trace:  # TW_CSG_TRACE debugging wants to see the parse happen
            return _original_parse(text, rule_name=rule_name, trace=trace)
        return copy.deepcopy(parsed(text, rule_name, False))

    textgen._parse_and_convert = parse_and_convert


# ---- checks of a game's files, before any env starts ------------------------------------------------------
def pddl_error(domain: str, problem: str) -> str | None:
    """Parse a game's PDDL with the parser the engine uses (fast-downward's, through textworld), which
    exits the process on an error: caught here, before any env starts. None when it parses."""
    import contextlib
    import io

    saved = sys.argv
    sys.argv = ["translate.py", "domain", "task"]  # fast-downward's options module parses sys.argv on import
    try:
        from fast_downward.translate.pddl_parser import lisp_parser, parsing_functions
    except ImportError:
        return None  # no parser to ask: the env will tell
    finally:
        sys.argv = saved
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # its warnings about repeated facts
            parsing_functions.parse_task(
                lisp_parser.parse_nested_list(domain.split("\n")),
                lisp_parser.parse_nested_list(problem.split("\n")),
            )
    except (SystemExit, Exception) as err:
        return f"{type(err).__name__ if not isinstance(err, SystemExit) else 'parse error'}: {err}"
    return None


def game_problem(game_dir: str) -> str | None:
    """Why an ALFWorld game cannot be played (unreadable files, PDDL that does not parse), or None."""
    path = os.path.join(game_dir, GAME_FILE)
    try:
        with open(path) as f:
            game = json.load(f)
    except (OSError, ValueError) as err:
        return f"game.tw-pddl unreadable: {err}"
    if not isinstance(game, dict):
        return "game.tw-pddl is not a JSON object"
    for key in ("pddl_domain", "pddl_problem", "grammar"):
        if not isinstance(game.get(key), str) or not game[key].strip():
            return f"game.tw-pddl: {key} is missing"
    error = pddl_error(game["pddl_domain"], game["pddl_problem"])
    return f"game.tw-pddl: the PDDL does not parse ({error})" if error else None
