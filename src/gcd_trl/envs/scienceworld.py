"""ScienceWorld (scienceworld 1.2.3, a Scala simulator behind py4j) as a `TextEnv`.

Why not just `scienceworld.ScienceWorldEnv`:
- its constructor starts a JVM with no options, whose heap grows to ~3 GB; we launch the gateway
  ourselves with `-Xmx{jvm_heap}` (one JVM per env, a child of this process, killed by `close()`);
- its `step()` rebuilds look/inventory/task/valid actions every call (~20-150 ms, mostly
  `get_valid_action_object_combinations()`); our step asks the server only for the observation, the
  score, the completion flag and the objects in view (~5 ms);
- its `reset()` regenerates the gold path on every reset once one was generated (up to 30 s).

Scores: the server scores 0-100 and reports -100 when the agent made the task impossible (then it does
not always set its completed flag). Such an episode ends with `won=False`, its `score` is clipped to 0
(the usual ScienceWorld convention: a failed task scores 0) and `info["failed"]` is True, so the step
rewards (score deltas / 100) of an episode add up to (final score - initial score) / 100.

The gold path (the simulator's own solution) is generated lazily, the first time `expert_action()` is
asked for a (task, variation, simplifications), then cached for the process (and optionally on disk):
generating costs 0.1-30 s and can give a different (equally winning) path each time. A variation's
world is seeded by its index, so a cached path replays to a win (checked on two variations of all 30
tasks), although details still vary between episodes of one variation: the order in which objects are
listed (Scala hash sets) and some measured values (e.g. a temperature off by a few degrees).
`info["anchor"]` carries `anchor_key(observation)`, an order-free form of the observation for grouping
equal states (GiGPO's anchor states).

Task names and the train/dev/test variation lists come from a JSON asset generated once from the live
simulator (`python -m gcd_trl.envs.scienceworld --write-variations`), so splits need no JVM.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import scienceworld
from py4j.java_gateway import GatewayParameters, JavaGateway, launch_gateway
from py4j.protocol import Py4JError
from scienceworld.constants import BASEPATH, JAR_PATH

from gcd_trl import files
from gcd_trl.envs.base import StepResult, Task, TextEnv

VARIATION_SETS = ("train", "dev", "test")
VARIATIONS_ASSET = Path(__file__).resolve().parents[1] / "assets" / "scienceworld_variations.json"
_HEAP_RE = re.compile(r"^[1-9][0-9]*[kKmMgG]?$")
_WS_RE = re.compile(r"\s+")
FORBIDDEN_ACTIONS = ("reset task",)
_ITEM_SEP_RE = re.compile(r", |: ")

# (task_name, variation, simplifications) -> gold actions; shared by every env in this process
_GOLD_CACHE: dict[tuple[str, int, str], tuple[str, ...]] = {}
_VARIATIONS: dict[str, dict[str, list[int]]] | None = None


class ScienceWorldJVMError(RuntimeError):
    """The env's JVM could not start, died, or stopped answering (the env pool restarts the worker)."""


def _java_path() -> str:
    home = os.environ.get("JAVA_HOME")
    candidate = os.path.join(home, "bin", "java") if home else shutil.which("java")
    if not candidate or not os.path.isfile(candidate):
        raise ScienceWorldJVMError(
            "Java not found (ScienceWorld needs java >= 1.8 on PATH or in $JAVA_HOME/bin)"
        )
    return candidate


def _norm(action: str) -> str:
    return _WS_RE.sub(" ", action.strip().lower())


def state_key(observation: str, objects: list[str], raw_score: int) -> str:
    """What identifies a state for the judge's loop rule: the objects in reach (they change with the room,
    containers and inventory), the score and the order-free observation. ScienceWorld has no cheap full-state
    call, so two states that differ only out of reach can share a key; "Nothing happens." in two rooms
    cannot."""
    text = "\n".join([anchor_key(observation), str(raw_score), *objects])
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def anchor_key(observation: str) -> str:
    """The observation with its lines, and the comma-separated items within each line, sorted.

    Equal states give equal keys whatever order the simulator listed objects in; only a grouping key,
    never shown to the agent.
    """
    lines = (
        ", ".join(sorted(_ITEM_SEP_RE.split(line.strip().rstrip(".")))) for line in observation.splitlines()
    )
    return "\n".join(sorted(line for line in lines if line))


class _CappedScienceWorld(scienceworld.ScienceWorldEnv):
    """The scienceworld wrapper, built on a gateway we launch ourselves with JVM options.

    Only `__init__` and `close` differ from the parent: every other method of the package
    (load, step, get_gold_action_sequence, ...) works unchanged on `self.server`.
    """

    def __init__(self, java_opts: Sequence[str]) -> None:  # no super().__init__(): it launches its own JVM
        try:
            port, proc = launch_gateway(
                classpath=JAR_PATH,
                javaopts=list(java_opts),
                java_path=_java_path(),
                die_on_exit=True,  # the JVM exits when this process dies (its stdin closes)
                cwd=BASEPATH,
                return_proc=True,
            )
        except (OSError, ValueError, Py4JError) as e:
            raise ScienceWorldJVMError(f"could not start the ScienceWorld JVM ({JAR_PATH}): {e}") from e
        self.java_process: subprocess.Popen = proc
        try:
            self._gateway = JavaGateway(
                gateway_parameters=GatewayParameters(port=port, auto_field=True, auto_close=True),
                java_process=proc,
            )
            self.server = self._gateway.jvm.scienceworld.runtime.pythonapi.PythonInterface()
        except Py4JError as e:
            proc.kill()
            proc.wait(timeout=5)
            raise ScienceWorldJVMError(f"could not connect to the ScienceWorld JVM: {e}") from e
        # the parent's state (see scienceworld.ScienceWorldEnv.__init__); no py4j callback server: the
        # simulator never calls back into Python
        self.lastStepScore = 0
        self.taskName = None
        self.simplificationStr = ""
        self.variationIdx = 0
        self.envStepLimit = 10**9  # episode length is the caller's business
        self.runHistories = {}
        self.goldPathGenerated = False
        self._closed = False

    def java_strings(self, java_list: Any) -> list[str]:
        """A java List[String] in one round trip (py4j iterates a list element by element)."""
        return [s for s in str(self._gateway.jvm.java.lang.String.join("\n", java_list)).split("\n") if s]

    def close(self) -> None:
        if getattr(self, "_closed", True):
            return
        self._closed = True
        proc = self.java_process
        try:
            self._gateway.shutdown()
        except Exception:  # a dead JVM: nothing to shut down politely
            pass
        try:
            if proc.poll() is None and proc.stdin is not None:
                proc.stdin.close()  # --die-on-broken-pipe: the gateway server exits on EOF
            proc.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait(timeout=5)


class ScienceWorldEnv(TextEnv):
    """One ScienceWorld simulator (one JVM) playing one task variation at a time.

    `reset(task)` returns the initial look-around; `admissible_actions` is None (the engine only
    enumerates valid actions expensively); `info` has `action_templates` (e.g. "move OBJ to OBJ",
    fetched once per reset) and `objects` (the object names in view, refreshed every step by one
    cheap call) for the prompt. `fast_step=False` uses the package's standard `step()` instead
    (20-150 ms) and also returns its valid action list as `info["valid_actions"]`.

    `gold_cache_dir`, when set, also keeps gold paths on disk (one JSON file per task variation), so
    worker processes and later runs share them instead of regenerating (and replay the same path).
    """

    name = "scienceworld"

    def __init__(
        self,
        jvm_heap: str = "512m",
        simplifications: str = "easy",
        java_opts: Sequence[str] = (),
        fast_step: bool = True,
        gold_cache_dir: str | os.PathLike | None = None,
    ) -> None:
        if not _HEAP_RE.match(str(jvm_heap)):
            raise ValueError(f"jvm_heap must look like '512m' or '2g', got {jvm_heap!r}")
        self.jvm_heap = str(jvm_heap)
        self.simplifications = _check_simplifications(simplifications)
        self.fast_step = fast_step
        self.gold_cache_dir = Path(gold_cache_dir) if gold_cache_dir else None
        self._sw = _CappedScienceWorld([f"-Xmx{self.jvm_heap}", *java_opts])
        self.task: Task | None = None
        self._history: list[str] = []  # actions taken since reset (to replay, and to follow the gold)
        self._score = 0
        self._done = False

    # ----------------------------------------------------------------------------------------- API
    @property
    def pid(self) -> int:
        """The JVM's process id."""
        return self._sw.java_process.pid

    def reset(self, task: Task) -> StepResult:
        if task.env != self.name:
            raise ValueError(f"ScienceWorldEnv cannot play a {task.env!r} task ({task.key})")
        _check_task(task.task_name, task.variation)
        self.task = task
        self._history = []
        self._load(generate_gold=False)
        # the server's score is stale until the first step: the wrapper's reset() also looks around
        observation = self._call(self._sw.server.step, "look around")
        self._sw.lastStepScore = raw = self._raw_score()
        self._score = max(raw, 0)
        self._done = raw >= 100 or raw < 0
        self._task_description = self._call(self._sw.server.getTaskDescription)
        objects = self._objects()
        info = {
            "anchor": anchor_key(observation),
            "state": state_key(observation, objects, raw),
            "action_templates": self._templates(),
            "objects": objects,
            "score_delta": 0,
            "raw_score": raw,
            "failed": raw < 0,
        }
        return StepResult(
            observation=observation,
            task_description=self._task_description,
            admissible_actions=None,
            score=float(self._score),
            won=raw >= 100,
            done=self._done,
            info=info,
        )

    def step(self, action: str) -> StepResult:
        if self.task is None:
            raise RuntimeError("ScienceWorldEnv.step() called before reset()")
        if self._done:
            raise RuntimeError(f"the episode of {self.task.key} is over; call reset()")
        if not isinstance(action, str):
            raise TypeError(f"action must be a str, got {type(action).__name__}")
        info: dict[str, Any] = {}
        if action.strip().lower() in FORBIDDEN_ACTIONS:
            # episodes are reset by the trainer, never by the agent: the state stays as it is
            observation, raw, completed = "Nothing happens.", self._raw_score(), False
            info["refused"] = action
        elif self.fast_step:
            observation = self._call(self._sw.server.step, action)
            raw = self._raw_score()
            completed = bool(self._call(self._sw.server.getCompleted))
        else:
            observation, _, completed, full = self._call(self._sw.step, action)
            raw = int(full["score"])
            info["valid_actions"] = full["valid"]
        self._history.append(action)
        score = max(raw, 0)
        delta = score - self._score
        self._score = score
        won = raw >= 100
        self._done = bool(completed) or won or raw < 0
        objects = self._objects()
        info.update(
            anchor=anchor_key(observation),
            state=state_key(observation, objects, raw),
            score_delta=delta,
            raw_score=raw,
            failed=raw < 0,
            objects=objects,
        )
        return StepResult(
            observation=observation,
            task_description=self._task_description,
            admissible_actions=None,
            reward=delta / 100.0,
            score=float(score),
            done=self._done,
            won=won,
            info=info,
        )

    def expert_action(self) -> str | None:
        """The next gold action while the agent has followed the gold path so far, else None."""
        if self.task is None or self._done:
            return None
        gold = self.gold_path()
        k = len(self._history)
        if k >= len(gold) or [_norm(a) for a in self._history] != [_norm(a) for a in gold[:k]]:
            return None
        return gold[k]

    def gold_path(self) -> list[str]:
        """The current task's gold action sequence (generated once per process, then cached)."""
        if self.task is None:
            raise RuntimeError("ScienceWorldEnv.gold_path() called before reset()")
        key = (self.task.task_name, self.task.variation, self.simplifications)
        if key not in _GOLD_CACHE:
            path = self._gold_file(key)
            if path is not None and path.is_file():
                _GOLD_CACHE[key] = _read_gold_file(path)
            else:
                _GOLD_CACHE[key] = tuple(self._generate_gold())
                if path is not None:
                    _write_gold_file(path, key, _GOLD_CACHE[key])
        return list(_GOLD_CACHE[key])

    def _gold_file(self, key: tuple[str, int, str]) -> Path | None:
        if self.gold_cache_dir is None:
            return None
        name, variation, simplifications = key
        return self.gold_cache_dir / f"{name}-{variation}-{simplifications or 'none'}.json"

    def close(self) -> None:
        sw = getattr(self, "_sw", None)
        if sw is not None:
            sw.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: the JVM dies with us anyway (die_on_exit)
            pass

    # ------------------------------------------------------------------------------------ helpers
    def _call(self, fn: Any, *args: Any) -> Any:
        """Call the simulator; a dead or unreachable JVM becomes ScienceWorldJVMError."""
        proc = self._sw.java_process
        if self._sw._closed:
            raise ScienceWorldJVMError("the ScienceWorld env is closed")
        if proc.poll() is not None:
            raise ScienceWorldJVMError(
                f"the ScienceWorld JVM (pid {proc.pid}) exited with code {proc.returncode}"
            )
        try:
            return fn(*args)
        except Py4JError as e:
            state = "running" if proc.poll() is None else f"exited with code {proc.returncode}"
            raise ScienceWorldJVMError(f"ScienceWorld JVM (pid {proc.pid}, {state}) call failed: {e}") from e

    def _load(self, generate_gold: bool) -> None:
        """Load the current task (the wrapper's load() would also re-list the task names over py4j)."""
        assert self.task is not None
        sw, name, variation = self._sw, self.task.task_name, self.task.variation
        self._call(sw.server.load, name, variation, self.simplifications, generate_gold)
        sw.taskName, sw.variationIdx, sw.simplificationStr = name, variation, self.simplifications
        sw.goldPathGenerated, sw.lastStepScore = generate_gold, 0

    def _raw_score(self) -> int:
        return int(round(100 * self._call(self._sw.server.getScore)))

    def _templates(self) -> list[str]:
        found = json.loads(self._call(self._sw.server.getPossibleActionsWithIDs))
        # "reset task" would let the agent restart its own episode mid-rollout
        return sorted({t["action_example"] for t in found} - set(FORBIDDEN_ACTIONS))

    def _objects(self) -> list[str]:
        # the referent table in one JSON string (~1 ms) rather than getPossibleObjects(), which py4j
        # iterates one round trip per object; both name the same objects
        lut = json.loads(self._call(self._sw.server.getPossibleObjectReferentLUTJSON))
        return sorted(set(lut.values()))

    def _generate_gold(self) -> list[str]:
        """Reload with gold path generation, then replay this episode's actions to restore the state."""
        assert self.task is not None
        self._load(generate_gold=True)
        gold = self._sw.java_strings(self._call(self._sw.server.getGoldActionSequence))
        for action in ["look around", *self._history]:
            self._call(self._sw.server.step, action)
        self._sw.lastStepScore = raw = self._raw_score()
        if max(raw, 0) != self._score:
            raise ScienceWorldJVMError(
                f"replaying {len(self._history)} actions of {self.task.key} gave score {raw}, "
                f"not {self._score}: the simulator is not deterministic here"
            )
        if not gold:
            raise RuntimeError(f"ScienceWorld generated no gold path for {self.task.key}")
        return gold


def _write_gold_file(path: Path, key: tuple[str, int, str], actions: Sequence[str]) -> None:
    name, variation, simplifications = key
    record = {
        "task": name,
        "variation": variation,
        "simplifications": simplifications,
        "actions": list(actions),
    }
    files.write_text_atomic(path, json.dumps(record))  # concurrent workers never read half a file


def _read_gold_file(path: Path) -> tuple[str, ...]:
    try:
        actions = json.loads(path.read_text())["actions"]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path} is not a gold path file ({e}); delete it to regenerate") from e
    if not actions or not all(isinstance(a, str) for a in actions):
        raise ValueError(f"{path}: 'actions' must be a non-empty list of strings; delete it to regenerate")
    return tuple(actions)


# --------------------------------------------------------------------------- tasks and variations
def _check_simplifications(simplifications: str) -> str:
    # the server checks names too (ValueError from scienceworld's load); catch typos before a JVM starts
    known = {
        "easy",
        "teleportAction",
        "selfWateringFlowerPots",
        "openContainers",
        "openDoors",
        "noElectricalAction",
    }
    for part in filter(None, (simplifications or "").split(",")):
        if part not in known:
            raise ValueError(f"unknown ScienceWorld simplification {part!r}; known: {sorted(known)}")
    return simplifications or ""


def _check_task(task_name: str | None, variation: int | None) -> tuple[str, int]:
    if task_name not in _variations():
        raise ValueError(f"unknown ScienceWorld task {task_name!r}; known tasks: {task_names()}")
    n = max_variations(task_name)
    if not isinstance(variation, int) or isinstance(variation, bool) or not 0 <= variation < n:
        raise ValueError(f"ScienceWorld task {task_name!r} has variations 0..{n - 1}, got {variation!r}")
    return task_name, variation


def _variations() -> dict[str, dict[str, list[int]]]:
    global _VARIATIONS
    if _VARIATIONS is None:
        _VARIATIONS = _read_asset(VARIATIONS_ASSET) if VARIATIONS_ASSET.is_file() else query_variations()
    return _VARIATIONS


def _read_asset(path: Path) -> dict[str, dict[str, list[int]]]:
    try:
        data = json.loads(path.read_text())
        tasks = data["tasks"]
        return {t["name"]: {s: list(t[s]) for s in VARIATION_SETS} for t in tasks}
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(
            f"{path} is not a valid variations file ({e}); regenerate it with "
            "`python -m gcd_trl.envs.scienceworld --write-variations`"
        ) from e


def task_names() -> list[str]:
    """The 30 task names, alphabetical: the order of `get_task_names()` that split files index."""
    return sorted(_variations())


def variations(task_name: str, which: str = "train") -> list[int]:
    """The task's official `which` ("train" | "dev" | "test") variation indices."""
    if which not in VARIATION_SETS:
        raise ValueError(f"variation set must be one of {VARIATION_SETS}, got {which!r}")
    if task_name not in _variations():
        raise ValueError(f"unknown ScienceWorld task {task_name!r}; known tasks: {task_names()}")
    return list(_variations()[task_name][which])


def max_variations(task_name: str) -> int:
    """How many variations the task has (indices 0..n-1)."""
    return 1 + max(v for which in VARIATION_SETS for v in variations(task_name, which))


def query_variations(env: ScienceWorldEnv | None = None) -> dict[str, dict[str, list[int]]]:
    """Ask a live simulator (`env`'s, which ends its episode, else a new one) for every task's variations."""
    if env is not None:
        env.task, env._done = None, True
    sw = env._sw if env is not None else _CappedScienceWorld(["-Xmx512m"])
    try:
        out = {}
        for name in sorted(sw.java_strings(sw.server.getTaskNames())):
            sw.server.load(name, 0, "", False)
            out[name] = {
                "train": json.loads(str(sw.server.getVariationsTrain().toString())),
                "dev": json.loads(str(sw.server.getVariationsDev().toString())),
                "test": json.loads(str(sw.server.getVariationsTest().toString())),
            }
        return out
    finally:
        if env is None:
            sw.close()


def write_variations_asset(path: str | os.PathLike = VARIATIONS_ASSET) -> Path:
    """Regenerate the shipped variations file from the installed simulator."""
    data = query_variations()
    lines = [json.dumps({"name": n, **sets}, separators=(",", ":")) for n, sets in data.items()]
    text = (
        '{"scienceworld_version": '
        + json.dumps(scienceworld.__version__)
        + ',\n"tasks": [\n'
        + ",\n".join(lines)
        + "\n]}\n"
    )
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="ScienceWorld helpers")
    parser.add_argument(
        "--write-variations",
        nargs="?",
        const=str(VARIATIONS_ASSET),
        metavar="PATH",
        help=f"write the task/variation lists from the live simulator (default {VARIATIONS_ASSET})",
    )
    args = parser.parse_args(argv)
    if args.write_variations:
        print(write_variations_asset(args.write_variations))
    else:
        parser.print_help()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
