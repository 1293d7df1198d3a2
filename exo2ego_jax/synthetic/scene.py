"""The synthetic tabletop world: object catalogue, tasks, and the per-frame simulation of one take.

World frame: table centre at the origin, x east, y north, z up (table top at z = 0, metres-ish).
An actor stands at one side of the table and performs a task made of keysteps, each keystep a few
atomic actions done with one hand while the other hand does something else. `simulate_take` turns
a seeded script into per-frame positions (`TakeState`) that the renderer draws from any camera.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

TABLE_HALF = (0.8, 0.5)  # table half-extent in x, y
COLOURS = {  # name -> RGB
    "red": (205, 40, 40), "green": (40, 160, 60), "blue": (40, 80, 210), "yellow": (230, 200, 40),
    "purple": (140, 60, 170), "orange": (240, 130, 30), "pink": (235, 120, 170), "cyan": (40, 190, 200),
}
LIGHT_COLOURS = ("yellow", "orange", "pink", "cyan")  # get black markings, the others white
SHAPES = ("cup", "bowl", "box", "bottle")
LIDDED = ("box", "bottle")  # shapes that can be opened / closed
POURERS = ("cup", "bottle")  # shapes that can be poured from
CONTAINERS = ("cup", "bowl")  # shapes that can be poured into
MARKINGS = ("stripe", "dot", "cross", "none")  # small pattern only resolvable in the ego close-up
SIDES = {  # actor side -> (body xy, facing direction)
    "south": ((0.0, -0.78), (0.0, 1.0)), "north": ((0.0, 0.78), (0.0, -1.0)),
    "east": ((1.08, 0.0), (-1.0, 0.0)), "west": ((-1.08, 0.0), (1.0, 0.0)),
}
OTHER_HAND = ("rests on the table", "waves", "taps the table", "scratches the head")
SHIRTS = ((60, 60, 70), (150, 40, 40), (40, 110, 60), (200, 200, 200), (90, 60, 30))
SKIN = (225, 180, 150)

# Keystep taxonomy: unique step ids of every step name of every task (stable across worlds).
TASKS = {
    "Making a Drink": {"task_id": 10001, "slug": "drink", "steps": ["Open the bottle", "Pick up the bottle", "Pour the drink",
                                                   "Put the bottle down", "Close the bottle"]},
    "Tidying the Table": {"task_id": 10002, "slug": "tidying", "steps": ["Relocate an object"]},
    "Packing a Box": {"task_id": 10003, "slug": "packing", "steps": ["Open the box", "Put an object in the box", "Close the box"]},
}
PARENT_TASK = ("Tabletop", 10000)  # synthetic scenario (task_id // 1000 == 10: not a real Ego-Exo4D scenario)


def step_unique_id(task: str, step: str) -> int:
    return TASKS[task]["task_id"] * 10 + TASKS[task]["steps"].index(step) + 1


@dataclasses.dataclass
class Obj:
    colour: str
    shape: str
    marking: str
    xy: tuple[float, float]
    radius: float

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"

    @property
    def marking_colour(self) -> str:
        return "black" if self.colour in LIGHT_COLOURS else "white"

    def describe_marking(self) -> str:
        return "no marking" if self.marking == "none" else f"a {self.marking_colour} {self.marking}"


@dataclasses.dataclass
class Action:
    verb: str  # pick_up, put_down, move, open, close, pour, shake
    obj: int
    hand: str  # "left" / "right"
    other_hand: str  # what the other hand does meanwhile (one of OTHER_HAND)
    target: int | None = None  # object poured into / placed next to / box put into
    dest: tuple[float, float] | None = None  # where the object ends up (put_down, move)
    into_box: bool = False
    t0: int = 0  # first frame
    t1: int = 0  # one past the last frame
    t_narr: int = 0  # frame of the narration timestamp (contact / release / state change)
    step: int = 0  # keystep index
    start: np.ndarray | None = None  # position of the acting hand when the action starts
    grasp: np.ndarray | None = None  # where the hand grasps the object


@dataclasses.dataclass
class TakeState:
    """Per-frame state of a take (T frames), everything a camera needs to draw it."""
    objects: list[Obj]
    side: str
    shirt: tuple[int, int, int]
    obj_pos: np.ndarray  # [T, K, 3] object base positions
    obj_visible: np.ndarray  # [T, K] bool (False once inside a box)
    obj_open: np.ndarray  # [T, K] bool
    obj_filled: np.ndarray  # [T, K] bool
    hand_pos: np.ndarray  # [T, 2, 3] left, right
    gaze: np.ndarray  # [T, 3] smoothed point the head looks at
    pour: np.ndarray  # [T, 2] int (from obj, to obj) or -1
    body_xy: np.ndarray  # [2]
    facing: np.ndarray  # [2]
    right: np.ndarray  # [2] actor's right direction
    actions: list[Action]
    steps: list[tuple[str, str, list[int]]]  # (step name, description, action indices)
    task: str
    layer_cache: dict = dataclasses.field(default_factory=dict)  # renderer's sprite table of the take
    hand_rgb: tuple = (SKIN, SKIN)  # colour of the (left, right) hand: skin, or a glove (cfg.hand_rgb)

    @property
    def num_frames(self) -> int:
        return self.obj_pos.shape[0]


def _smooth(a: float) -> float:
    a = min(max(a, 0.0), 1.0)
    return a * a * (3 - 2 * a)


def _free_spot(rng: np.random.Generator, taken: list[tuple[float, float]], min_dist: float,
               near: tuple[float, float] | None = None) -> tuple[float, float]:
    """A table position at least min_dist from the others (next to `near` if given)."""
    hx, hy = TABLE_HALF[0] - 0.12, TABLE_HALF[1] - 0.12
    for _ in range(200):
        if near is not None:
            ang = rng.uniform(0, 2 * np.pi)
            p = (near[0] + 0.2 * np.cos(ang), near[1] + 0.2 * np.sin(ang))
        else:
            p = (rng.uniform(-hx, hx), rng.uniform(-hy, hy))
        if abs(p[0]) <= hx and abs(p[1]) <= hy and all(np.hypot(p[0] - q[0], p[1] - q[1]) >= min_dist for q in taken):
            return float(p[0]), float(p[1])
    return float(rng.uniform(-hx, hx)), float(rng.uniform(-hy, hy))  # crowded table: overlap a little


def make_script(rng: np.random.Generator, cfg: Any) -> tuple[str, str, list[Obj], list[Action],
                                                               list[tuple[str, str, list[int]]]]:
    """Samples the task, actor side, objects, and the ordered actions grouped into keysteps."""
    task = list(TASKS)[int(rng.integers(len(TASKS)))]
    side = list(SIDES)[int(rng.integers(len(SIDES)))]
    n_obj = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    colours = [str(c) for c in rng.permutation(list(cfg.colours))]
    need = {"Making a Drink": ["bottle", "cup"], "Packing a Box": ["box"], "Tidying the Table": []}[task]
    shapes = need + [str(s) for s in rng.choice(list(cfg.shapes), size=max(0, n_obj - len(need)))]
    objects: list[Obj] = []
    taken: list[tuple[float, float]] = []
    for i, shape in enumerate(shapes):
        scale = float(getattr(cfg, "object_scale", 1.0))  # 1.0: the catalogue sizes
        xy = _free_spot(rng, taken, 0.22 * scale)
        taken.append(xy)
        radius = {"cup": 0.065, "bowl": 0.085, "box": 0.08, "bottle": 0.06}[shape] * scale
        objects.append(Obj(colour=colours[i % len(colours)], shape=shape,
                           marking=str(rng.choice(list(cfg.markings))), xy=xy, radius=radius))

    body, facing = (np.asarray(v, np.float64) for v in SIDES[side])
    right_dir = np.array([facing[1], -facing[0]])
    p_near = float(getattr(cfg, "p_hand_near_object", 0.0))

    def hand(obj: int | None = None) -> str:
        # One draw either way, so p_hand_near_object=0 keeps every world bit-for-bit.
        u = rng.random()
        if p_near > 0 and obj is not None:
            if u < p_near:  # reach with the hand on the object's side of the body
                return "right" if float((np.asarray(objects[obj].xy) - body) @ right_dir) >= 0 else "left"
            u = (u - p_near) / (1.0 - p_near) if p_near < 1 else 0.0
        return "left" if u < 0.5 else "right"

    def other() -> str:
        return str(rng.choice(OTHER_HAND))

    actions: list[Action] = []
    steps: list[tuple[str, str, list[int]]] = []

    def step(name: str, desc: str, acts: list[Action]) -> None:
        steps.append((name, desc, list(range(len(actions), len(actions) + len(acts)))))
        for a in acts:
            a.step = len(steps) - 1
        actions.extend(acts)

    def pick_other(exclude: set[int], shapes_ok: tuple[str, ...] = SHAPES) -> int | None:
        cands = [i for i, o in enumerate(objects) if i not in exclude and o.shape in shapes_ok]
        return int(rng.choice(cands)) if cands else None

    if task == "Making a Drink":
        b, c = 0, 1
        h = hand(b)
        step("Open the bottle", f"Open the {objects[b].name}", [Action("open", b, hand(b), other())])
        step("Pick up the bottle", f"Pick up the {objects[b].name}", [Action("pick_up", b, h, other())])
        pour = [Action("pour", b, h, other(), target=c)]
        if rng.random() < 0.5:
            pour.insert(0, Action("shake", b, h, other()))
        step("Pour the drink", f"Pour the drink from the {objects[b].name} into the {objects[c].name}", pour)
        near = pick_other({b, c})
        step("Put the bottle down", f"Put the {objects[b].name} down",
             [Action("put_down", b, h, other(), target=near)])
        step("Close the bottle", f"Close the {objects[b].name}", [Action("close", b, hand(b), other())])
    elif task == "Packing a Box":
        k = 0
        step("Open the box", f"Open the {objects[k].name}", [Action("open", k, hand(k), other())])
        # Cups and bottles fit in the box; other shapes only if the table has none of those.
        small = [i for i in range(1, len(objects)) if objects[i].shape in POURERS]
        items = (small or list(range(1, len(objects))))[: int(rng.integers(1, 3))]
        for i in items:
            h = hand(i)
            step("Put an object in the box", f"Put the {objects[i].name} in the {objects[k].name}",
                 [Action("pick_up", i, h, other()), Action("put_down", i, h, other(), target=k, into_box=True)])
        step("Close the box", f"Close the {objects[k].name}", [Action("close", k, hand(k), other())])
    else:
        for _ in range(int(rng.integers(cfg.min_relocations, cfg.max_relocations + 1))):
            i = int(rng.integers(len(objects)))
            j = pick_other({i})
            h = hand(i)
            acts = [Action("pick_up", i, h, other()), Action("move", i, h, other(), target=j),
                    Action("put_down", i, h, other())]
            if rng.random() < 0.3:
                acts.insert(2, Action("shake", i, h, other()))
            desc = f"Move the {objects[i].name}" + (f" next to the {objects[j].name}" if j is not None else "")
            step("Relocate an object", desc, acts)
    return task, side, objects, actions, steps


def simulate_take(rng: np.random.Generator, cfg: Any) -> TakeState:
    """Scripts a take and rolls it out frame by frame at cfg.fps."""
    task, side, objects, actions, steps = make_script(rng, cfg)
    fps = cfg.fps
    body_xy, facing = (np.asarray(v, np.float64) for v in SIDES[side])
    right = np.array([facing[1], -facing[0]])
    # Timing: lead-in, then each action with a short pause before it, then lead-out.
    t = int(round(cfg.lead_seconds * fps))
    for a in actions:
        t += int(round(rng.uniform(*cfg.pause_seconds) * fps))
        dur = int(round(rng.uniform(*cfg.action_seconds) * fps))
        a.t0, a.t1 = t, t + dur
        t += dur
    num_frames = t + int(round(cfg.lead_seconds * fps))

    K = len(objects)
    obj_pos = np.zeros((num_frames, K, 3))
    obj_visible = np.ones((num_frames, K), bool)
    obj_open = np.zeros((num_frames, K), bool)
    obj_filled = np.zeros((num_frames, K), bool)
    hand_pos = np.zeros((num_frames, 2, 3))
    target = np.zeros((num_frames, 3))
    pour = -np.ones((num_frames, 2), np.int64)

    rest = {h: np.array([*(body_xy + 0.3 * facing + s * 0.2 * right), 0.03]) for h, s in (("left", -1), ("right", 1))}
    hidx = {"left": 0, "right": 1}
    cur_obj = np.array([[*o.xy, 0.0] for o in objects])
    cur_hand = {h: rest[h].copy() for h in hidx}
    visible = np.ones(K, bool)
    is_open = np.zeros(K, bool)
    filled = np.zeros(K, bool)
    held: dict[str, int | None] = {"left": None, "right": None}
    front = np.array([*(body_xy + 0.55 * facing), 0.0])
    look = front.copy()
    lift = 0.3
    ai = 0
    look_w = float(getattr(cfg, "ego_look_hand", 1.0))

    def grip(o: int) -> np.ndarray:
        """Hand position relative to a held object: at its near side, so the ego view sees the object."""
        return np.array([*(-(objects[o].radius + 0.03) * facing), 0.08])

    def other_hand_pos(h: str, act: str, f: int) -> np.ndarray:
        base = rest[h].copy()
        ph = 2 * np.pi * f / fps
        if act == "waves":
            return base + np.array([*(0.06 * np.sin(3 * ph) * right), 0.42]) - np.array([*(0.1 * facing), 0])
        if act == "taps the table":
            return base + np.array([0.0, 0.0, 0.05 * (1 + np.sin(4 * ph))])
        if act == "scratches the head":
            side_sign = -1 if h == "left" else 1
            return np.array([*(body_xy + side_sign * 0.08 * right + 0.05 * facing), 0.8 + 0.02 * np.sin(5 * ph)])
        return base

    for f in range(num_frames):
        while ai < len(actions) and f >= actions[ai].t1:
            ai += 1
        a = actions[ai] if ai < len(actions) and f >= actions[ai].t0 else None
        if a is not None:
            p = (f - a.t0) / max(1, a.t1 - a.t0 - 1)
            h, o = a.hand, a.obj
            oh = "right" if h == "left" else "left"
            if f == a.t0:
                a.start = (hand_pos[f - 1, hidx[h]] if f > 0 else rest[h]).copy()
                a.grasp = cur_obj[o] + (grip(o) if a.verb == "pick_up" else np.array([0, 0, 0.13]))
            start_hand = a.start
            held_pos = lambda: np.array([*(body_xy + 0.45 * facing + (0.12 if h == "right" else -0.12) * right), lift])
            if a.verb == "pick_up":
                grasp = a.grasp
                if p < 0.5:
                    cur_hand[h] = start_hand + (grasp - start_hand) * _smooth(p / 0.5)
                else:
                    cur_hand[h] = grasp + (held_pos() - grasp) * _smooth((p - 0.5) / 0.5)
                    held[h] = o
                a.t_narr = a.t0 + (a.t1 - a.t0) // 2
            elif a.verb in ("put_down", "move"):
                if a.dest is None:
                    others = [tuple(cur_obj[i, :2]) for i in range(K) if i != o and visible[i]]
                    if a.into_box and a.target is not None:
                        a.dest = tuple(cur_obj[a.target, :2])
                    else:
                        near = tuple(cur_obj[a.target, :2]) if a.target is not None else None
                        a.dest = _free_spot(rng, others, 0.18, near=near)
                z_end = 0.0 if a.verb == "put_down" else lift * 0.8 - 0.08
                dest = np.array([*a.dest, z_end + (0.1 if a.into_box else 0.0)]) + grip(o)
                release = 0.7 if a.verb == "put_down" else 1.0
                if p < release or a.verb == "move":
                    cur_hand[h] = start_hand + (dest - start_hand) * _smooth(min(p / release, 1.0))
                else:
                    if held[h] is not None:
                        held[h] = None
                        cur_obj[o] = np.array([*a.dest, 0.0])
                        if a.into_box:
                            visible[o] = False
                    cur_hand[h] = dest + (rest[h] - dest) * _smooth((p - release) / (1 - release))
                a.t_narr = a.t0 + int(round(release * (a.t1 - a.t0 - 1))) if a.verb == "put_down" else \
                    a.t0 + (a.t1 - a.t0) // 2
            elif a.verb in ("open", "close"):
                grasp = a.grasp
                if p < 0.5:
                    cur_hand[h] = start_hand + (grasp - start_hand) * _smooth(p / 0.5)
                else:
                    is_open[o] = a.verb == "open"
                    cur_hand[h] = grasp + (rest[h] - grasp) * _smooth((p - 0.5) / 0.5)
                a.t_narr = a.t0 + (a.t1 - a.t0) // 2
            elif a.verb == "pour":
                above = cur_obj[a.target] + np.array([*(-0.09 * facing), 0.28])
                if p < 0.35:
                    cur_hand[h] = start_hand + (above - start_hand) * _smooth(p / 0.35)
                elif p < 0.8:
                    cur_hand[h] = above
                    pour[f] = (o, a.target)
                    if p >= 0.55:
                        filled[a.target] = True
                else:
                    cur_hand[h] = above + (held_pos() - above) * _smooth((p - 0.8) / 0.2)
                a.t_narr = a.t0 + int(round(0.55 * (a.t1 - a.t0 - 1)))
            elif a.verb == "shake":
                base = start_hand
                amp = 0.05 * np.sin(np.pi * p)
                cur_hand[h] = base + np.array([*(amp * np.sin(2 * np.pi * 5 * p) * right), amp * np.cos(2 * np.pi * 5 * p)])
                a.t_narr = a.t0 + (a.t1 - a.t0) // 2
            cur_hand[oh] = other_hand_pos(oh, a.other_hand, f)
            want_look = cur_hand[h] if a.verb != "pour" else cur_obj[a.target]
            if look_w != 1.0:  # the head turns only part of the way towards the acting hand
                want_look = front + look_w * (np.asarray(want_look) - front)
        else:
            for hh in hidx:
                prev = hand_pos[f - 1, hidx[hh]] if f > 0 else rest[hh]
                cur_hand[hh] = prev + (rest[hh] - prev) * 0.2 if held[hh] is None else prev
            nxt = actions[ai] if ai < len(actions) else None
            want_look = cur_obj[nxt.obj] if nxt is not None and held[nxt.hand] is None else front
            if look_w != 1.0:
                want_look = front + look_w * (np.asarray(want_look) - front)
        for hh, o in held.items():
            if o is not None:
                cur_obj[o] = cur_hand[hh] - grip(o)
        look = look + (np.asarray(want_look) - look) * cfg.ego_gaze_smoothing
        obj_pos[f], obj_visible[f], obj_open[f], obj_filled[f] = cur_obj, visible, is_open, filled
        hand_pos[f, 0], hand_pos[f, 1] = cur_hand["left"], cur_hand["right"]
        target[f] = look
    shirt = SHIRTS[int(rng.integers(len(SHIRTS)))]
    return TakeState(objects=objects, side=side, shirt=shirt, obj_pos=obj_pos, obj_visible=obj_visible,
                     obj_open=obj_open, obj_filled=obj_filled, hand_pos=hand_pos, gaze=target, pour=pour,
                     body_xy=body_xy, facing=facing, right=right, actions=actions, steps=steps, task=task,
                     hand_rgb=hand_colours(cfg))


def hand_colours(cfg) -> tuple:
    """(left, right) hand RGB: `cfg.hand_rgb` entries, '' / () = bare skin (the default for both)."""
    given = tuple(getattr(cfg, "hand_rgb", ()) or ())
    if len(given) > 2:
        raise ValueError(f"world config hand_rgb: expected at most 2 colours (left, right), got {given!r}")
    given = given + ((),) * (2 - len(given))
    return tuple(tuple(int(c) for c in rgb) if rgb else SKIN for rgb in given)
