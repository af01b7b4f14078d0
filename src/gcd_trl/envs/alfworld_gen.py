"""Generate solvable ALFWorld games offline, in the official json_2.1.1 layout.

`alfworld-download` needs internet, but the alfworld wheel ships everything a game is made of: the
PDDL domain and text grammar (alfworld/data), the goal templates (gen/goal_library.py), the object
and receptacle rules (gen/constants.py) and 120 real floor plans (gen/layouts/: the object types of
each scene and its receptacles with the pose the agent stands at). A game here is one floor plan with
its receptacles, pickable objects of the scene's types placed where constants.py allows them, and a
goal from the goal library. It is kept only when fast-downward, through textworld's PDDL engine (the
one that plays the game), finds a plan; that plan is the walkthrough. The planner is given the goal's
part of the game (whole kitchens make its search blow up), and the walkthrough is then replayed on the
full game's state before the files are written.

Games are built from (seed, index, attempt) alone, with every set iterated in sorted order, so the
same arguments give byte-identical files in any process.
"""

from __future__ import annotations

import functools
import json
import os
import random
import re
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from gcd_trl.envs.alfworld import TASK_TYPES  # one numbering for the whole project

GAME_FILE = "game.tw-pddl"
TRAJ_FILE = "traj_data.json"

# Task type -> (appliance receptacle type, constants.VAL_ACTION_OBJECTS key) for the state-change tasks.
_APPLIANCE = {3: ("SinkBasin", "Cleanable"), 4: ("Microwave", "Heatable"), 5: ("Fridge", "Coolable")}
# Parents the real data never uses for a task type (the appliance itself, or a basin for cleaning).
_NO_PARENT = {3: {"SinkBasin", "BathtubBasin"}, 4: {"Microwave"}, 5: {"Fridge"}}
_LAMPS = ("DeskLamp", "FloorLamp")
# Surfaces a lamp stands on (it must sit in a receptacle: the domain's ToggleObject needs one).
_LAMP_SURFACES = {
    "DeskLamp": (
        "Desk",
        "SideTable",
        "Dresser",
        "Shelf",
        "CoffeeTable",
        "DiningTable",
        "TVStand",
        "CounterTop",
    ),
    "FloorLamp": (
        "SideTable",
        "Dresser",
        "ArmChair",
        "Sofa",
        "CoffeeTable",
        "Desk",
        "TVStand",
        "Shelf",
        "Ottoman",
    ),
}
# Receptacle types a scene lists among its objects but whose floor-plan pose file may miss; added with a
# made-up pose (poses are only names to the text engine). Value: how many to add.
_EXTRA_RECEPTACLE_COUNT = {"StoveBurner": 4}
_INSIDE = {
    "Drawer",
    "Cabinet",
    "Fridge",
    "Microwave",
    "Safe",
    "GarbageCan",
    "SinkBasin",
    "BathtubBasin",
    "LaundryHamper",
    "Box",
}
_READABLE = {
    "CD": "CD",
    "TVStand": "TV stand",
    "CounterTop": "counter",
    "SinkBasin": "sink",
    "BathtubBasin": "bathtub",
    "Glassbottle": "glass bottle",
    "BasketBall": "basketball",
    "KeyChain": "keychain",
    "SoapBar": "soap bar",
    "ToiletPaperHanger": "toilet paper hanger",
}
_HUMAN_TEMPLATES = {  # {ao}: "a mug" / "an apple"
    1: (
        "Put {ao} {p} the {r}.",
        "Move {ao} to the {r}.",
        "Place the {o} {p} the {r}.",
        "Take {ao} and put it {p} the {r}.",
        "Pick up the {o} and set it {p} the {r}.",
    ),
    2: (
        "Look at {ao} under the {t}.",
        "Examine the {o} by the light of the {t}.",
        "Pick up {ao} and turn on the {t}.",
        "Hold the {o} and switch on the {t}.",
        "Inspect {ao} in the light of the {t}.",
    ),
    3: (
        "Put a clean {o} {p} the {r}.",
        "Wash {ao} in the sink and put it {p} the {r}.",
        "Rinse off {ao} and place it {p} the {r}.",
        "Clean the {o}, then put it {p} the {r}.",
        "Rinse the {o} and set it {p} the {r}.",
    ),
    4: (
        "Put a hot {o} {p} the {r}.",
        "Heat {ao} in the microwave and put it {p} the {r}.",
        "Warm up {ao} and place it {p} the {r}.",
        "Cook the {o} in the microwave, then put it {p} the {r}.",
        "Microwave {ao} and set it {p} the {r}.",
    ),
    5: (
        "Put a cold {o} {p} the {r}.",
        "Chill {ao} in the fridge and put it {p} the {r}.",
        "Cool down {ao} and place it {p} the {r}.",
        "Put a chilled {o} {p} the {r}.",
        "Cool the {o} in the fridge, then set it {p} the {r}.",
    ),
    6: (
        "Put two {os} {p} the {r}.",
        "Move two {os} to the {r}.",
        "Find two {os} and place them {p} the {r}.",
        "Place a pair of {os} {p} the {r}.",
        "Take two {os} and put them {p} the {r}.",
    ),
}
_GRID = 0.25  # metres per agent step: floor-plan poses are multiples of it


# ----------------------------------------------------------------------------------------------- wheel data
@functools.lru_cache(maxsize=1)
def _wheel() -> dict[str, Any]:
    """What the alfworld wheel ships: domain, grammar, constants, goal library, layout folder."""
    import alfworld.gen.constants as constants
    import alfworld.gen.goal_library as goal_library

    pkg = os.path.dirname(os.path.dirname(os.path.abspath(constants.__file__)))
    with open(os.path.join(pkg, "data", "alfred.pddl")) as f:
        domain = f.read()
    with open(os.path.join(pkg, "data", "alfred.twl2")) as f:
        grammar = f.read()
    if "UNKNOWN GOAL" not in grammar:
        raise RuntimeError(
            "alfworld's alfred.twl2 has no 'UNKNOWN GOAL' task placeholder; unsupported alfworld"
        )
    movable = set(constants.MOVABLE_RECEPTACLES)
    holds = {
        r: sorted(o for o in objs if "Sliced" not in o)
        for r, objs in constants.VAL_RECEPTACLE_OBJECTS.items()
        if r not in movable
    }
    static_rtypes = (set(constants.RECEPTACLES) | set(holds)) - movable
    otypes = set(constants.OBJECTS_SET) - static_rtypes
    pickable = sorted({o for objs in holds.values() for o in objs})
    return {
        "constants": constants,
        "gdict": goal_library.gdict,
        "domain": domain,
        "grammar": grammar,
        "layouts": os.path.join(pkg, "gen", "layouts"),
        "holds": holds,  # static receptacle type -> object types it can contain
        "rtypes": sorted(static_rtypes),
        "otypes": sorted(otypes),
        "pickable": pickable,
        "openable": set(constants.OPENABLE_CLASS_SET),
        "actions": {k: set(v) for k, v in constants.VAL_ACTION_OBJECTS.items()},
        "movable": movable,
        "rooms": {room: set(nums) for room, nums in constants.SCENE_TYPE.items()},
        "goal_rooms": constants.GOALS_VALID,
    }


@dataclass(frozen=True)
class _Recep:
    id: str  # ALFRED object id, e.g. "Cabinet|+00.68|+00.50|-02.20" or "Sink|...|SinkBasin"
    rtype: str
    xyz: tuple[float, float, float]
    pose: tuple[int, int, int, int]  # grid x, grid z, rotation/90, camera horizon: the location's name


@dataclass(frozen=True)
class _Scene:
    num: int
    room: str
    object_types: tuple[str, ...]
    receptacles: tuple[_Recep, ...]

    def rtypes(self) -> set[str]:
        return {r.rtype for r in self.receptacles}


def _parse_id(key: str) -> tuple[str, tuple[float, float, float]]:
    parts = key.split("|")
    if len(parts) not in (4, 5):
        raise ValueError(f"unexpected receptacle id {key!r} in a floor-plan layout")
    rtype = parts[4] if len(parts) == 5 else parts[0]
    return rtype, (float(parts[1]), float(parts[2]), float(parts[3]))


def _unique_pose(pose: tuple[int, int, int, int], used: set) -> tuple[int, int, int, int]:
    """Two receptacles at one location would merge their 'go to' and 'look' texts: keep names distinct."""
    x, z, rot, hor = pose
    for dx in range(0, 50):
        for h in (hor, 0, 15, 45, 60, -15, -30):
            cand = (x + dx, z, rot, h)
            if cand not in used:
                return cand
    raise RuntimeError(f"no free location near {pose}")


@functools.cache
def _scene(num: int) -> _Scene:
    """One floor plan: its object types and receptacles (with a distinct location each)."""
    w = _wheel()
    base = os.path.join(w["layouts"], f"FloorPlan{num}")
    with open(base + "-objects.json") as f:
        object_types = tuple(sorted(set(json.load(f))))
    with open(base + "-openable.json") as f:
        poses = json.load(f)
    room = next((r for r, nums in w["rooms"].items() if num in nums), "")
    receps: list[_Recep] = []
    used: set = set()
    for key in sorted(poses):
        rtype, xyz = _parse_id(key)
        if rtype not in w["holds"]:
            continue
        x, z, rot, hor = poses[key]
        pose = _unique_pose((round(x / _GRID), round(z / _GRID), int(rot) // 90 % 4, int(hor)), used)
        used.add(pose)
        receps.append(_Recep(key, rtype, xyz, pose))
    # Receptacle types the scene has but the pose file lacks (coffee machines, toasters, stove burners...).
    present = {r.rtype for r in receps}
    missing = [t for t in object_types if t in w["holds"] and t not in present]
    if receps and missing:
        rng = random.Random(f"alfworld_gen:scene:{num}")
        xs = [r.xyz[0] for r in receps]
        zs = [r.xyz[2] for r in receps]
        for rtype in missing:
            for _ in range(_EXTRA_RECEPTACLE_COUNT.get(rtype, 1)):
                xyz = (
                    round(rng.uniform(min(xs), max(xs)), 2),
                    round(rng.uniform(0.0, 1.0), 2),
                    round(rng.uniform(min(zs), max(zs)), 2),
                )
                head = "Sink" if rtype == "SinkBasin" else "Bathtub" if rtype == "BathtubBasin" else rtype
                key = _make_id(head, xyz) + ("|" + rtype if head != rtype else "")
                pose = _unique_pose(
                    (round(xyz[0] / _GRID), round(xyz[2] / _GRID), rng.randrange(4), 30), used
                )
                used.add(pose)
                receps.append(_Recep(key, rtype, xyz, pose))
    return _Scene(num, room, object_types, tuple(receps))


@functools.lru_cache(maxsize=1)
def _scene_numbers() -> tuple[int, ...]:
    names = os.listdir(_wheel()["layouts"])
    nums = {int(m.group(1)) for n in names if (m := re.fullmatch(r"FloorPlan(\d+)-openable\.json", n))}
    return tuple(sorted(nums))


def _make_id(otype: str, xyz: Sequence[float]) -> str:
    return otype + "".join(f"|{v:+06.2f}" for v in xyz)


def _mangle(name: str) -> str:
    """ALFRED ids to PDDL names, exactly as alfworld's planned_game_state does it."""
    for a, b in (("-", "_minus_"), ("|", "_bar_"), ("+", "_plus_"), (".", "_dot_"), (",", "_comma_")):
        name = name.replace(a, b)
    return name


def _loc(pose: tuple[int, int, int, int]) -> str:
    return _mangle("loc|" + "|".join(str(int(v)) for v in pose))


# ------------------------------------------------------------------------------------------------ sampling
@dataclass
class _Game:
    task_type: int
    scene: _Scene
    obj: str
    parent: str  # "" for look_at_obj_in_light
    toggle: str  # "" except for look_at_obj_in_light
    placements: list[tuple[str, _Recep]] = field(default_factory=list)  # (object id, receptacle)
    start: tuple[int, int, int, int] = (0, 0, 0, 30)
    goal_text: str = ""
    human: list[str] = field(default_factory=list)


def _holders(scene: _Scene, otype: str, exclude: Iterable[str] = ()) -> list[_Recep]:
    holds, ex = _wheel()["holds"], set(exclude)
    return [r for r in scene.receptacles if r.rtype not in ex and otype in holds[r.rtype]]


def _lamp_of(scene: _Scene) -> str | None:
    """The scene's lamp that can stand on one of its surfaces (desk lamps first, as in the real data)."""
    present = scene.rtypes()
    for lamp in _LAMPS:
        if lamp in scene.object_types and present & set(_LAMP_SURFACES[lamp]):
            return lamp
    return None


def _forbidden_for_target(task_type: int, parent: str) -> set[str]:
    """Where the target may not start: already in the goal receptacle (trivial), or in the appliance."""
    out = {parent} if parent else set()
    if task_type in _APPLIANCE:
        out.add(_APPLIANCE[task_type][0])
    return out


def _candidates(scene: _Scene, task_type: int) -> list[tuple[str, str]]:
    """All (object type, parent or toggle type) goals this scene supports for the task type."""
    w = _wheel()
    if scene.room not in w["goal_rooms"][TASK_TYPES[task_type]] or not scene.receptacles:
        return []
    present = scene.rtypes()
    pickable = set(w["pickable"])
    objs = [o for o in scene.object_types if o in pickable and o not in _LAMPS]
    if task_type == 2:
        lamp = _lamp_of(scene)
        if lamp is None:
            return []
        return [(o, lamp) for o in objs if _holders(scene, o)]
    if task_type in _APPLIANCE:
        appliance, prop = _APPLIANCE[task_type]
        if appliance not in present:
            return []
        objs = [o for o in objs if o in w["actions"][prop]]
    out = []
    for o in objs:
        for parent in sorted(present - _NO_PARENT.get(task_type, set())):
            if o in w["holds"][parent] and _holders(scene, o, _forbidden_for_target(task_type, parent)):
                out.append((o, parent))
    return out


@functools.cache
def _eligible_scenes(task_type: int) -> tuple[int, ...]:
    return tuple(n for n in _scene_numbers() if _candidates(_scene(n), task_type))


def _readable(otype: str) -> str:
    return _READABLE.get(otype) or re.sub(r"(?<=[a-z])(?=[A-Z])", " ", otype).lower()


def _plural(words: str) -> str:
    special = {"knife": "knives", "shelf": "shelves", "glass": "glasses", "CD": "CDs"}
    head, _, last = words.rpartition(" ")
    if last in special:
        last = special[last]
    elif re.search(r"(s|x|ch|sh)$", last):
        last += "es"
    elif re.search(r"[^aeiou]y$", last):
        last = last[:-1] + "ies"
    else:
        last += "s"
    return f"{head} {last}".strip()


def _descriptions(rng: random.Random, g: _Game) -> tuple[str, list[str]]:
    """The templated goal (as alfworld writes it into the grammar) and three human-like task texts."""
    w = _wheel()
    name = TASK_TYPES[g.task_type]
    template = rng.choice(w["gdict"][name]["templates"])
    goal = template.format(obj=g.obj.lower(), recep=g.parent.lower(), toggle=g.toggle.lower(), mrecep="")
    o, r, t = (
        _readable(g.obj),
        _readable(g.parent) if g.parent else "",
        _readable(g.toggle) if g.toggle else "",
    )
    p = "in" if g.parent in _INSIDE else "on"
    ao = ("an " if o[0] in "aeiou" else "a ") + o
    human = [
        s.format(o=o, ao=ao, os=_plural(o), r=r, t=t, p=p)
        for s in rng.sample(_HUMAN_TEMPLATES[g.task_type], 3)
    ]
    return goal, human


MIN_RECEPTACLES = 3  # the most receptacles a task needs: a holder of the target, an appliance, the goal


def _task_receptacles(
    rng: random.Random, scene: _Scene, task_type: int, obj: str, second: str
) -> list[_Recep]:
    """One receptacle of each kind the task needs: a holder the target can start in, the goal receptacle
    (or a surface for the lamp) and the appliance; drawn among the scene's receptacles of that kind."""
    parent = "" if task_type == 2 else second
    need: list[_Recep] = []
    if parent:
        need.append(rng.choice([r for r in scene.receptacles if r.rtype == parent]))
    if task_type in _APPLIANCE:
        appliance = _APPLIANCE[task_type][0]
        need.append(rng.choice([r for r in scene.receptacles if r.rtype == appliance]))
    if task_type == 2:
        need.append(rng.choice([r for r in scene.receptacles if r.rtype in _LAMP_SURFACES[second]]))
    holders = [r for r in _holders(scene, obj, _forbidden_for_target(task_type, parent)) if r not in need]
    if task_type == 2 and need[0] in _holders(scene, obj):
        holders.append(need[0])  # the lamp's surface may hold the target too
    need.append(rng.choice(holders))
    return list(dict.fromkeys(need))


def _cut_scene(rng: random.Random, g: _Game, max_receptacles: int) -> _Scene:
    """The scene with only `max_receptacles` receptacles: the task's, then others drawn with the game's rng."""
    scene = g.scene
    if len(scene.receptacles) <= max_receptacles:
        return scene
    keep = _task_receptacles(rng, scene, g.task_type, g.obj, g.toggle or g.parent)
    rest = [r for r in scene.receptacles if r not in keep]
    keep += rng.sample(rest, max(0, max_receptacles - len(keep)))
    order = {r.id: i for i, r in enumerate(scene.receptacles)}
    return _Scene(scene.num, scene.room, scene.object_types, tuple(sorted(keep, key=lambda r: order[r.id])))


def _sample_game(rng: random.Random, task_type: int, max_receptacles: int | None = None) -> _Game:
    """Draw a scene, a goal it supports (the same for any `max_receptacles`: both are drawn first), the
    room's receptacles when it is cut to `max_receptacles`, and a placement of the scene's objects."""
    w = _wheel()
    scene = _scene(rng.choice(_eligible_scenes(task_type)))
    obj, second = rng.choice(_candidates(scene, task_type))
    g = _Game(
        task_type,
        scene,
        obj,
        parent="" if task_type == 2 else second,
        toggle=second if task_type == 2 else "",
    )
    if max_receptacles is not None:
        g.scene = scene = _cut_scene(rng, g, max_receptacles)
    used_ids: set[str] = set()

    def place(otype: str, holders: list[_Recep]) -> None:
        recep = rng.choice(holders)
        while True:
            xyz = [c + rng.uniform(-0.3, 0.3) for c in recep.xyz]
            oid = _make_id(otype, xyz)
            if oid not in used_ids:
                break
        used_ids.add(oid)
        g.placements.append((oid, recep))

    forbidden = _forbidden_for_target(task_type, g.parent)
    for otype in scene.object_types:
        if otype not in w["pickable"]:
            continue
        if otype == obj:
            holders = _holders(scene, otype, forbidden)
            count = rng.randint(2, 3) if task_type == 6 else rng.randint(1, 3)
        else:
            holders = _holders(scene, otype)
            count = rng.randint(1, 2)
        if not holders:
            continue
        for _ in range(count):
            place(otype, holders)
    lamp = g.toggle or ("DeskLamp" if "DeskLamp" in scene.object_types else "")
    if lamp:
        surfaces = [r for r in scene.receptacles if r.rtype in _LAMP_SURFACES[lamp]]
        if surfaces:
            place(lamp, surfaces)
    used = {r.pose for r in scene.receptacles}
    xs = [r.pose[0] for r in scene.receptacles]
    zs = [r.pose[1] for r in scene.receptacles]
    start = (rng.randint(min(xs), max(xs)), rng.randint(min(zs), max(zs)), rng.randrange(4), 30)
    g.start = _unique_pose(start, used)
    g.goal_text, g.human = _descriptions(rng, g)
    return g


# ------------------------------------------------------------------------------------------------- writing
def _problem(g: _Game, name: str, relevant_only: bool = False) -> str:
    """The PDDL problem, laid out like the official game files (sorted, so deterministic).

    `relevant_only` gives the planner the goal's part of the game: the target objects (and lamp), the
    receptacles holding them, the appliance, and one receptacle of the goal type (all of that type are
    alike: same cost to reach and open, none holds a target at the start). Every other object or
    receptacle only multiplies the states the search visits (a kitchen has up to 40 drawers and
    cabinets, each open or closed); no precondition or goal needs them, so a plan here is a plan of the
    full game (`generate_games` replays it there to be sure).
    """
    w = _wheel()
    receps = sorted(g.scene.receptacles, key=lambda r: r.id)
    objects = sorted(g.placements, key=lambda p: p[0])
    if relevant_only:
        objects = [p for p in objects if p[0].split("|")[0] in (g.obj, g.toggle)]
        keep = {r.id for _, r in objects}
        keep |= {r.id for r in receps if r.rtype == _APPLIANCE.get(g.task_type, ("",))[0]}
        if g.parent:
            keep.add(next(r.id for r in receps if r.rtype == g.parent))
        receps = [r for r in receps if r.id in keep]
    locs = sorted({_loc(r.pose) for r in receps} | {_loc(g.start)})
    present_otypes = sorted({oid.split("|")[0] for oid, _ in objects})
    declared = ["agent1 - agent"]
    declared += [f"{t}Type - otype" for t in w["otypes"]]
    declared += [f"{t}Type - rtype" for t in w["rtypes"]]
    declared += [f"{_mangle(oid)} - object" for oid, _ in objects]
    declared += [f"{_mangle(r.id)} - receptacle" for r in receps]
    declared += [f"{loc} - location" for loc in locs]

    facts = [f"(atLocation agent1 {_loc(g.start)})"]
    for r in receps:
        facts.append(f"(receptacleType {_mangle(r.id)} {r.rtype}Type)")
        facts.append(f"(receptacleAtLocation {_mangle(r.id)} {_loc(r.pose)})")
        if r.rtype in w["openable"]:
            facts.append(f"(openable {_mangle(r.id)})")
    for oid, r in objects:
        otype, m = oid.split("|")[0], _mangle(oid)
        facts.append(f"(objectType {m} {otype}Type)")
        facts.append(f"(inReceptacle {m} {_mangle(r.id)})")
        facts.append(f"(objectAtLocation {m} {_loc(r.pose)})")
        if otype in _LAMPS:
            facts.append(f"(toggleable {m})")
            continue
        facts.append(f"(pickupable {m})")
        if otype in w["movable"]:
            facts.append(f"(isReceptacleObject {m})")
        for key, pred in (
            ("Cleanable", "cleanable"),
            ("Heatable", "heatable"),
            ("Coolable", "coolable"),
            ("Sliceable", "sliceable"),
        ):
            if otype in w["actions"][key]:
                facts.append(f"({pred} {m})")
    for rtype in sorted({r.rtype for r in receps}):
        facts += [f"(canContain {rtype}Type {o}Type)" for o in present_otypes if o in w["holds"][rtype]]

    goal = w["gdict"][TASK_TYPES[g.task_type]]["pddl"]
    goal = goal.format(obj=g.obj, recep=g.parent, toggle=g.toggle, mrecep="").replace("#", "-")
    sep = "\n        "
    return (
        f"\n(define (problem {name})\n(:domain alfred)\n(:objects{sep}{sep.join(declared)}\n        )\n"
        f"(:init{sep}{sep.join(facts)}\n        )\n{goal}"
    )


def _entity_ids(g: _Game) -> list[str]:
    """The game's object and receptacle names as the engine sees them (its PDDL parser lowercases)."""
    return sorted(
        _mangle(i).lower() for i in [oid for oid, _ in g.placements] + [r.id for r in g.scene.receptacles]
    )


def _dir_name(g: _Game) -> str:
    return f"{TASK_TYPES[g.task_type]}-{g.obj}-None-{g.parent or g.toggle}-{g.scene.num}"


def _traj_data(g: _Game, trial: str, seed: int, index: int, max_receptacles: int | None) -> dict[str, Any]:
    return {
        "task_id": trial,
        "task_type": TASK_TYPES[g.task_type],
        "pddl_params": {
            "object_target": g.obj,
            "parent_target": g.parent,
            "mrecep_target": "",
            "toggle_target": g.toggle,
            "object_sliced": False,
        },
        "scene": {"scene_num": g.scene.num, "floor_plan": f"FloorPlan{g.scene.num}"},
        "turk_annotations": {"anns": [{"task_desc": d} for d in g.human]},
        "generator": {"name": "gcd_trl.envs.alfworld_gen", "seed": seed, "index": index}
        | ({} if max_receptacles is None else {"max_receptacles": max_receptacles}),
    }


GRAMMARS = ("dataset", "wheel")

# The wheel's grammar (alfworld 0.4.2) reworded as ALFWorld's released json_2.1.1 games say it, which is
# what evaluation plays and what the paper trained on: "put X in/on Y" instead of "move X to Y", and
# "You arrive at loc N." instead of "You arrive at <receptacle>.".
_DATASET_EDITS = (
    ('template :: "move {o} to {r}";', 'template :: "put {o} in/on {r}";'),
    ('"You move the {o.name} to the {r.name}."', '"You put the {o.name} in/on the {r.name}."'),
    (
        '"You arrive at {r.name}. #examineReceptacle.feedback#"',
        '"You arrive at {lend.name}. #examineReceptacle.feedback#"',
    ),
    ("move (object) to (receptacle):  place", "put (object) in/on (receptacle): place"),
)


def game_grammar(style: str = "dataset") -> str:
    """The text grammar generated games are written with: `dataset` (json_2.1.1 wording) or `wheel`."""
    if style not in GRAMMARS:
        raise ValueError(f"grammar must be one of {GRAMMARS}, got {style!r}")
    grammar = _wheel()["grammar"]
    if style == "wheel":
        return grammar
    for old, new in _DATASET_EDITS:
        if old not in grammar:
            raise RuntimeError(
                f"alfworld's alfred.twl2 no longer contains {old!r}; unsupported alfworld version"
            )
        grammar = grammar.replace(old, new)
    return grammar


# ------------------------------------------------------------------------------------------------- planning
class _Planner:
    """fast-downward through textworld's PDDL state: the planner behind the engine's `policy_commands`."""

    def __init__(self, grammar: str) -> None:
        import fast_downward
        from textworld.envs.pddl import logic as pddl_logic

        self._pddl = pddl_logic
        self._lib = fast_downward.load_lib()
        # The grammar's task line does not change any command: one parsed logic serves every game.
        self._logic = pddl_logic.GameLogic(domain=_wheel()["domain"], grammar=grammar)

    def _load(self, problem: str, game_ids: Iterable[str] = ()) -> tuple[Any, dict[str, Any]]:
        """The initial state and its entities, named as alfworld's demangler names them in the game.

        `game_ids`: every entity of the full game, when `problem` is a part of it ("cabinet 3" depends
        on how many cabinets the game has).
        """
        from alfworld.agents.utils.misc import Demangler
        from textworld.generator.game import EntityInfo

        argv = sys.argv[:]
        try:
            state = self._pddl.PddlState(self._lib, problem, self._logic)
        finally:
            sys.argv[:] = argv  # fast_downward's translator overwrites sys.argv
        infos = {v.name: EntityInfo(v.name, v.type) for fact in state.facts for v in fact.arguments}
        named = {**infos, **{i: EntityInfo(i, "") for i in game_ids}}
        demangler = Demangler(game_infos=named, shuffle=False)
        for info in infos.values():
            info.name = demangler.demangle_alfred_name(info.id)
            if info.type in ("object", "receptacle") and not re.fullmatch(r"[a-z]+ \d+", info.name):
                raise ValueError(f"entity {info.id!r} would be named {info.name!r} in the game")
        return state, infos

    def plan(self, problem: str, game_ids: Iterable[str] = ()) -> list[str]:
        """An optimal walkthrough as game commands ([] when there is no plan or nothing to do)."""
        state, infos = self._load(problem, game_ids)
        if state.check_goal():
            return []
        return list(state.replan(infos))

    def replay(self, problem: str, walkthrough: Sequence[str]) -> str | None:
        """Play the walkthrough on the full game state; None when it wins, else what went wrong."""
        state, infos = self._load(problem)
        for step, command in enumerate(walkthrough):
            by_command = {}
            for action in state.all_applicable_actions():
                names = {ph.name: infos[var.name].name for ph, var in action.mapping.items()}
                template = (
                    "go to {r}"
                    if action.name == "gotolocation"
                    else self._logic.actions[action.name].template
                )
                by_command.setdefault(template.format(**names), action)
            if command not in by_command:
                return f"walkthrough step {step} {command!r} is not admissible"
            state.apply(by_command[command])
        return None if state.check_goal() else "the walkthrough ends without winning"


def _normalize_task_types(task_types: Iterable[int]) -> tuple[int, ...]:
    if isinstance(task_types, (str, bytes, int)):
        raise TypeError(
            f"task_types must be a sequence of ints from {sorted(TASK_TYPES)}, got {task_types!r}"
        )
    out = []
    for t in task_types:
        if isinstance(t, bool) or not isinstance(t, int) or t not in TASK_TYPES:
            raise ValueError(
                f"unknown ALFWorld task type {t!r}: expected one of {sorted(TASK_TYPES)} "
                f"({', '.join(f'{k}={v}' for k, v in TASK_TYPES.items())})"
            )
        out.append(t)
    if not out:
        raise ValueError("task_types is empty: give at least one of 1-6")
    return tuple(sorted(set(out)))


def _dump(path: str, data: Any, indent: int | None) -> None:
    with open(path, "w") as f:
        json.dump(data, f, sort_keys=True, indent=indent)
        f.write("\n")


def generate_games(
    out_dir: str | os.PathLike,
    num: int,
    seed: int,
    task_types: Iterable[int] = (1, 2, 3, 4, 5, 6),
    *,
    max_attempts: int = 20,
    verify: bool = True,
    grammar: str = "dataset",
    stats: dict[str, Any] | None = None,
    add: bool = False,
    progress: bool = False,
    max_receptacles: int | None = None,
) -> list[str]:
    """Write `num` planner-checked games under `out_dir`; return their directories in index order.

    Game i has task type `sorted(task_types)[i % len]` (so types are balanced) and lives in
    `out_dir/<task>-<Obj>-None-<Parent|Toggle>-<scene>/trial_gen_<seed>_<i>/` with `game.tw-pddl` and
    `traj_data.json`, as in alfworld's json_2.1.1. A draw the planner cannot solve is discarded and
    redrawn, up to `max_attempts` per game. `verify` also replays each walkthrough on the full game
    state (fast-downward's, as the engine steps it) before keeping the game. `grammar`: `dataset`
    words commands and feedback as the released json_2.1.1 games do ("put X in/on Y", "You arrive at
    loc N."), so training on generated games matches evaluation on real ones; `wheel` keeps alfworld
    0.4.2's own wording ("move X to Y"). `stats`, when given, receives counts and timings.
    `max_receptacles` cuts each room to that many receptacles (the task's always kept, the others drawn
    with the game's seed; scene and goal are the ones the full room gets): short games for a curriculum.
    Each game's traj_data.json records it (`generator.max_receptacles`; absent for full rooms).

    A folder that already holds exactly these games (same seed, count, task types and grammar) is used as
    it is (`stats["reused"]`); one holding other games is refused with `GamesFolderError` naming what is
    there, unless `add` (then these games are added and the folder holds both). `progress` shows a bar.
    """
    types = _normalize_task_types(task_types)
    if isinstance(num, bool) or not isinstance(num, int) or num < 0:
        raise ValueError(f"num must be a non-negative int, got {num!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if max_attempts < 1:
        raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
    check_max_receptacles(max_receptacles)
    for t in types:
        if not _eligible_scenes(t):
            raise RuntimeError(
                f"no floor plan in the alfworld wheel supports task type {t} ({TASK_TYPES[t]})"
            )
    out_dir = os.fspath(out_dir)
    if "movable" in os.path.abspath(out_dir) or "Sliced" in os.path.abspath(out_dir):
        raise ValueError(
            f"out_dir {out_dir!r} contains 'movable' or 'Sliced': alfworld's loader skips such paths"
        )
    text_grammar = game_grammar(grammar)
    found = folder_games(out_dir)
    mine = _requested_games(found, num, seed, types, grammar, max_receptacles)
    if mine is not None and (len(found) == num or add):
        if stats is not None:
            stats.update(games=0, reused=True, total_games=len(found))
        return mine  # exactly these games are there already (generation is deterministic)
    sizes = {game_max_receptacles(d) for d in found}
    if found and sizes != {max_receptacles}:
        raise GamesFolderError(
            f"{out_dir} already holds {describe_games(found)}; asked for games with "
            f"{_rooms(max_receptacles)}: one folder holds one room size. Use another folder"
        )
    others = [d for d in found if not _is_requested(d, num, seed, types)]
    if others and not add:
        raise GamesFolderError(
            f"{out_dir} already holds {describe_games(found)}; asked for {num} games of seed {seed} "
            f"(task types {list(types)}), which would be mixed with them. Use an empty folder, or add "
            "them on purpose (add=True, `--add`)"
        )
    w = _wheel()
    planner = _Planner(text_grammar) if num else None
    counts = {
        "games": 0,
        "draws": 0,
        "planner_failures": 0,
        "seconds": 0.0,
        "cpu_seconds": 0.0,
        "plan_lengths": [],
    }
    start, cpu_start = time.perf_counter(), time.process_time()
    dirs = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=num, desc="games", unit="game", dynamic_ncols=True)
    for i in range(num):
        task_type = types[i % len(types)]
        trial = f"trial_gen_{seed}_{i:05d}"
        last_error = ""
        for attempt in range(max_attempts):
            rng = random.Random(f"alfworld_gen:{seed}:{i}:{attempt}")
            g = _sample_game(rng, task_type, max_receptacles)
            problem = _problem(g, f"plan_{trial}")
            counts["draws"] += 1
            try:
                walkthrough = planner.plan(_problem(g, f"plan_{trial}", relevant_only=True), _entity_ids(g))
                error = None if walkthrough else f"the planner found no plan for {_dir_name(g)}"
                if walkthrough and verify:
                    error = planner.replay(problem, walkthrough)
            except ValueError as e:
                error = str(e)
            if error is None:
                break
            counts["planner_failures"] += 1
            last_error = error
        else:
            raise RuntimeError(
                f"could not generate a solvable {TASK_TYPES[task_type]} game (seed={seed}, "
                f"index={i}) in {max_attempts} attempts; last failure: {last_error}"
            )
        game_dir = os.path.join(out_dir, _dir_name(g), trial)
        os.makedirs(game_dir, exist_ok=True)
        game = {
            "pddl_domain": w["domain"],
            "grammar": text_grammar.replace("UNKNOWN GOAL", g.goal_text),
            "pddl_problem": problem,
            "solvable": True,
            "walkthrough": walkthrough,
        }
        _dump(os.path.join(game_dir, GAME_FILE), game, None)
        _dump(os.path.join(game_dir, TRAJ_FILE), _traj_data(g, trial, seed, i, max_receptacles), 2)
        counts["games"] += 1
        counts["plan_lengths"].append(len(walkthrough))
        dirs.append(game_dir)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    counts["seconds"] = time.perf_counter() - start
    counts["cpu_seconds"] = time.process_time() - cpu_start
    if stats is not None:
        stats.update(counts, reused=False, total_games=len(folder_games(out_dir)))
    return dirs


# ---------------------------------------------------------------------------------------------------------
# What a games folder holds (generate_games refuses to mix other games with the ones asked for)

_TRIAL_NAME = re.compile(r"^trial_gen_(\d+)_(\d+)$")
_DATASET_TEMPLATE = 'template :: "put {o} in/on {r}";'


class GamesFolderError(ValueError):
    """The output folder holds games other than the ones asked for."""


def folder_games(out_dir: str | os.PathLike) -> list[str]:
    """Game directories (holding game.tw-pddl) under `out_dir`, sorted; [] when it does not exist."""
    root = os.fspath(out_dir)
    if not os.path.isdir(root):
        return []
    return sorted(d for d, _, files in os.walk(root) if GAME_FILE in files)


def _trial(game_dir: str) -> tuple[int, int] | None:
    m = _TRIAL_NAME.match(os.path.basename(game_dir))
    return (int(m.group(1)), int(m.group(2))) if m else None


def _is_requested(game_dir: str, num: int, seed: int, types: Sequence[int]) -> bool:
    """Is this the game `generate_games(num, seed, types)` writes (by its trial name and task type)?"""
    trial = _trial(game_dir)
    if trial is None or trial[0] != seed or trial[1] >= num:
        return False
    try:
        with open(os.path.join(game_dir, TRAJ_FILE)) as f:
            kind = json.load(f).get("task_type")
    except (OSError, ValueError):
        return True  # a game cut short by a kill: regenerated in place
    return kind == TASK_TYPES[types[trial[1] % len(types)]]


def _requested_games(
    found: list[str], num: int, seed: int, types: Sequence[int], grammar: str, max_receptacles: int | None
) -> list[str] | None:
    """The requested games in index order when all of them are there, complete and in `grammar`; else None."""
    by_index: dict[int, str] = {}
    for d in found:
        if _is_requested(d, num, seed, types):
            by_index[_trial(d)[1]] = d  # type: ignore[index]
    if len(by_index) != num or not num:
        return None
    try:
        for d in by_index.values():
            with open(os.path.join(d, TRAJ_FILE)) as f:
                json.load(f)
        with open(os.path.join(by_index[0], GAME_FILE)) as f:
            text = json.load(f)["grammar"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if (_DATASET_TEMPLATE in text) != (grammar == "dataset"):
        return None
    if any(game_max_receptacles(d) != max_receptacles for d in by_index.values()):
        return None
    return [by_index[i] for i in range(num)]


def check_max_receptacles(value: int | None) -> None:
    """None (full rooms) or an int >= MIN_RECEPTACLES, else ValueError naming the key."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < MIN_RECEPTACLES:
        raise ValueError(
            f"max_receptacles must be an int >= {MIN_RECEPTACLES} (a task needs up to {MIN_RECEPTACLES} "
            f"receptacles) or null for full rooms, got {value!r}"
        )


def game_max_receptacles(game_dir: str) -> int | None:
    """The room size a generated game was cut to (None: full rooms, or not generated by gcd-trl)."""
    try:
        with open(os.path.join(game_dir, TRAJ_FILE)) as f:
            gen = json.load(f).get("generator") or {}
    except (OSError, ValueError, AttributeError):
        return None
    return gen.get("max_receptacles") if isinstance(gen, dict) else None


def folder_max_receptacles(game_dirs: Iterable[str]) -> int | None:
    """The one room size of a set of games; GamesFolderError when they mix room sizes."""
    sizes = {game_max_receptacles(d) for d in game_dirs}
    if len(sizes) > 1:
        raise GamesFolderError(
            "the games mix room sizes ("
            + ", ".join(_rooms(k) for k in sorted(sizes, key=lambda k: k or 1e9))
            + "): keep one room size a folder (generate-alfworld --max_receptacles)"
        )
    return next(iter(sizes), None)


def _rooms(k: int | None) -> str:
    return "full rooms" if k is None else f"rooms cut to {k} receptacles"


def describe_games(found: list[str]) -> str:
    """E.g. "14 games (12 generated with seed 0, 2 not generated by gcd-trl)"."""
    seeds: dict[int, int] = {}
    other = 0
    for d in found:
        trial = _trial(d)
        if trial is None:
            other += 1
        else:
            seeds[trial[0]] = seeds.get(trial[0], 0) + 1
    parts = [f"{n} generated with seed {s}" for s, n in sorted(seeds.items())]
    if other:
        parts.append(f"{other} not generated by gcd-trl")
    sizes = sorted({game_max_receptacles(d) for d in found}, key=lambda k: k or 1e9)
    if sizes != [None]:
        parts.append(", ".join(_rooms(k) for k in sizes))
    return f"{len(found)} games ({', '.join(parts)})"
