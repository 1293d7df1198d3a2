"""Ego-Exo4D-style narrations ("C picks up the red cup with the left hand.") and their ground truth.

Every atomic action gets one narration at its contact / release / state-change frame. Some narrations
also mention a detail that is easy to see only from the ego view (the small marking on the object)
or only from the exo views (where the actor stands, what the other hand does), so text supervises
both transfer directions. The structured attributes behind each sentence go to synthetic_meta.json.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from exo2ego_jax.synthetic import scene

# Camera that faces the actor (opposite side of the table) = the exo view that sees the hands best.
BEST_EXO = {"south": "cam03", "north": "cam01", "east": "cam04", "west": "cam02"}
VERB_3P = {"pick_up": "picks up", "put_down": "puts down", "move": "moves", "open": "opens", "close": "closes",
           "pour": "pours", "shake": "shakes"}


def _obj_phrase(o: scene.Obj, with_marking: bool) -> str:
    if with_marking and o.marking != "none":
        return f"the {o.name} with {o.describe_marking()}"
    return f"the {o.name}"


def narrate(a: scene.Action, objects: list[scene.Obj], *, mention_marking: bool, mention_other: bool,
            mention_side: str | None) -> str:
    o = objects[a.obj]
    obj = _obj_phrase(o, mention_marking)
    tgt = objects[a.target].name if a.target is not None else None
    hand = f"the {a.hand} hand"
    if a.verb == "pick_up":
        text = f"C picks up {obj} with {hand}"
    elif a.verb == "put_down":
        if a.into_box:
            text = f"C puts {obj} into the {tgt}"
        elif tgt is not None:
            text = f"C puts down {obj} next to the {tgt}"
        else:
            text = f"C puts down {obj} on the table"
    elif a.verb == "move":
        text = f"C moves {obj} next to the {tgt}" if tgt else f"C moves {obj} across the table"
    elif a.verb in ("open", "close"):
        text = f"C {VERB_3P[a.verb]} {obj} with {hand}"
    elif a.verb == "pour":
        text = f"C pours the drink from {obj} into the {tgt}"
    elif a.verb == "shake":
        text = f"C shakes {obj} with {hand}"
    else:
        raise ValueError(f"unknown verb {a.verb!r}")
    if mention_other:
        other = "left" if a.hand == "right" else "right"
        text += f" while the {other} hand {a.other_hand}"
    if mention_side:
        text = f"Standing at the {mention_side} side of the table, " + text
    return text + "."


def narrations(state: scene.TakeState, rng: np.random.Generator, cfg: Any) -> list[dict[str, Any]]:
    """One narration per action, in time order: text + ground-truth attributes."""
    out = []
    best = BEST_EXO[state.side]
    fps = cfg.fps
    for i, a in enumerate(state.actions):
        m_mark = rng.random() < cfg.p_mention_marking and state.objects[a.obj].marking != "none"
        m_other = rng.random() < cfg.p_mention_other_hand
        m_side = state.side if rng.random() < cfg.p_mention_side else None
        o = state.objects[a.obj]
        nxt = state.actions[i + 1] if i + 1 < len(state.actions) else None
        out.append({
            "index": i, "frame": int(a.t_narr), "timestamp": round(a.t_narr / fps, 4),
            "start_sec": round(a.t0 / fps, 4), "end_sec": round(a.t1 / fps, 4),
            "text": narrate(a, state.objects, mention_marking=m_mark, mention_other=m_other, mention_side=m_side),
            "verb": a.verb, "object": a.obj, "object_colour": o.colour, "object_shape": o.shape,
            "object_marking": o.marking, "object_marking_colour": o.marking_colour,
            "target_object": a.target,
            "target_colour": state.objects[a.target].colour if a.target is not None else None,
            "target_shape": state.objects[a.target].shape if a.target is not None else None,
            "into_box": a.into_box, "hand": a.hand, "other_hand": "left" if a.hand == "right" else "right",
            "other_hand_activity": a.other_hand, "actor_side": state.side, "best_exo_cam": best,
            "keystep": a.step, "next_verb": nxt.verb if nxt else None,
            "next_object": nxt.obj if nxt else None,
            "mentions": {"marking": bool(m_mark), "other_hand": bool(m_other), "actor_side": m_side is not None},
            # Which view makes each attribute easy to see (for ego- vs exo-favoured questions).
            "ego_favoured": ["hand", "object_marking", "object_colour"],
            "exo_favoured": ["actor_side", "other_hand_activity", "best_exo_cam"],
        })
    return out
