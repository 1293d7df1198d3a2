"""Numpy rasteriser of the synthetic world: pinhole cameras, ray-cast table/floor, depth-sorted sprites.

No 3D engine: the table and floor are ray-cast per pixel (exo backgrounds once per take, since those
cameras are static), and objects, hands, arms and the actor are screen-aligned sprites whose size
falls with depth, painted far to near. Every frame carries its index in binary as a strip of black
and white blocks (bottom-left corner) that survives H.264, read back with `read_frame_index`.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from exo2ego_jax.synthetic import scene

COUNTER_BLOCK = 4  # pixels per frame-counter bit (a multiple of H.264's 4x4 transform: stays crisp)
COUNTER_BITS = 11  # up to 2047 frames (68 s at 30 fps)


@dataclasses.dataclass(frozen=True)
class Camera:
    pos: np.ndarray  # [3]
    look: np.ndarray  # [3] point the optical axis goes through
    focal: float  # pixels
    width: int
    height: int

    def basis(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        fwd = self.look - self.pos
        fwd = fwd / np.linalg.norm(fwd)
        right = np.cross(fwd, [0.0, 0.0, 1.0])
        right = right / max(np.linalg.norm(right), 1e-9)
        up = np.cross(right, fwd)
        return right, up, fwd

    def project(self, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """[K, 3] world points -> pixel x, pixel y, depth (depth <= 0: behind the camera)."""
        r, u, f = self.basis()
        d = np.asarray(pts, np.float64) - self.pos
        xc, yc, zc = d @ r, d @ u, d @ f
        safe = np.where(zc > 1e-6, zc, 1e-6)
        return (self.width / 2 + self.focal * xc / safe, self.height / 2 - self.focal * yc / safe, zc)


def exo_cameras(cfg) -> dict[str, Camera]:
    """The four static exo cameras (one per side, different heights/angles) looking at the table."""
    cams = {}
    for i, (az, elev, dist) in enumerate(cfg.exo_poses):
        a, e = np.deg2rad(az), np.deg2rad(elev)
        pos = np.array([dist * np.cos(e) * np.cos(a), dist * np.cos(e) * np.sin(a), dist * np.sin(e)])
        cams[f"cam{i + 1:02d}"] = Camera(pos, np.array([0.0, 0.0, cfg.exo_look_height]), cfg.exo_focal * cfg.exo_size[0],
                                         int(cfg.exo_size[0]), int(cfg.exo_size[1]))
    return cams


def ego_camera(state: scene.TakeState, f: int, cfg) -> Camera:
    """Head-mounted camera: above the actor, leaning towards what the actor looks at."""
    head = np.array([*(state.body_xy + 0.1 * state.facing), cfg.ego_head_height])
    look = state.gaze[f]
    pos = head + cfg.ego_lean * np.array([*(look[:2] - head[:2]), 0.0])
    return Camera(pos, look, cfg.ego_focal * cfg.ego_size, int(cfg.ego_size), int(cfg.ego_size))


_WALL = np.array([185, 190, 200], np.uint8)
_WOOD = np.array([170, 130, 90], np.uint8)
_WOOD_LINE = np.array([120, 85, 55], np.uint8)


def background(cam: Camera, floor_tint: np.ndarray) -> np.ndarray:
    """Ray-cast table (wood with a grid), floor (checker) and wall, uint8 [H, W, 3]."""
    r, u, f = (v.astype(np.float32) for v in cam.basis())
    xs = (np.arange(cam.width, dtype=np.float32) + 0.5 - cam.width / 2) / cam.focal
    ys = (cam.height / 2 - np.arange(cam.height, dtype=np.float32) - 0.5) / cam.focal
    # Ray direction per pixel = f + xs * r + ys * u; only its x, y, z components are needed.
    dx = f[0] + xs[None, :] * r[0] + ys[:, None] * u[0]
    dy = f[1] + xs[None, :] * r[1] + ys[:, None] * u[1]
    dz = f[2] + xs[None, :] * r[2] + ys[:, None] * u[2]
    hit = dz < -1e-6
    t = -np.float32(cam.pos[2]) / np.where(hit, dz, np.float32(-1.0))
    hit &= t < 12.0
    x = np.float32(cam.pos[0]) + t * dx
    y = np.float32(cam.pos[1]) + t * dy
    img = np.empty((cam.height, cam.width, 3), np.uint8)
    img[:] = _WALL
    checker = ((np.floor(x * 2) + np.floor(y * 2)) % 2).astype(bool)
    tint = np.asarray(floor_tint, np.float32)
    img[hit & checker] = tint.astype(np.uint8)
    img[hit & ~checker] = (tint * 0.85).astype(np.uint8)
    hx, hy = scene.TABLE_HALF
    on_table = hit & (np.abs(x) <= hx) & (np.abs(y) <= hy)
    line = (np.abs(x) > hx - 0.03) | (np.abs(y) > hy - 0.03) \
        | (np.abs(((x + 0.125) % 0.25) - 0.125) < 0.006) | (np.abs(((y + 0.125) % 0.25) - 0.125) < 0.006)
    img[on_table & ~line] = _WOOD
    img[on_table & line] = _WOOD_LINE
    return img


def _shade(rgb, k: float) -> np.ndarray:
    return np.clip(np.asarray(rgb, np.float32) * k, 0, 255)


def _draw(img: np.ndarray, cx: float, cy: float, rad: float, layers) -> None:
    """Paints a sprite centred at (cx, cy) of radius `rad` pixels; layers = [(mask_fn(dx, dy), rgb)]."""
    if rad < 0.35:
        return
    h, w, _ = img.shape
    ext = 1.5 * rad + 1
    x0, x1 = max(0, int(np.floor(cx - ext))), min(w, int(np.ceil(cx + ext)) + 1)
    y0, y1 = max(0, int(np.floor(cy - ext))), min(h, int(np.ceil(cy + ext)) + 1)
    if x0 >= x1 or y0 >= y1:
        return
    dx = (np.arange(x0, x1) + 0.5 - cx)[None, :] / rad
    dy = (np.arange(y0, y1) + 0.5 - cy)[:, None] / rad
    patch = img[y0:y1, x0:x1]
    for mask_fn, rgb in layers:
        m = mask_fn(dx, dy)
        patch[m] = np.asarray(rgb, np.uint8)


def _disc(k: float = 1.0, ox: float = 0.0, oy: float = 0.0):
    return lambda dx, dy: (dx - ox) ** 2 + (dy - oy) ** 2 <= k * k


def _rect(x0: float, x1: float, y0: float, y1: float):
    return lambda dx, dy: (dx >= x0) & (dx <= x1) & (dy >= y0) & (dy <= y1)


def _object_layers(o: scene.Obj, is_open: bool, filled: bool):
    rgb = scene.COLOURS[o.colour]
    dark = _shade(rgb, 0.45)
    liquid = (70, 140, 230) if o.colour != "blue" else (150, 200, 255)
    mark_rgb = (0, 0, 0) if o.marking_colour == "black" else (255, 255, 255)
    if o.shape == "cup":
        body = _disc(0.8)
        layers = [(_rect(0.6, 1.05, -0.25, 0.25), _shade(rgb, 0.8)), (body, rgb),
                  (_disc(0.5), liquid if filled else dark)]
        region = lambda dx, dy: ((dx ** 2 + dy ** 2 <= 0.64) & (dx ** 2 + dy ** 2 > 0.3))
    elif o.shape == "bowl":
        layers = [(_disc(1.0), rgb), (_disc(0.62), liquid if filled else dark)]
        region = lambda dx, dy: ((dx ** 2 + dy ** 2 <= 1.0) & (dx ** 2 + dy ** 2 > 0.45))
    elif o.shape == "box":
        layers = [(_rect(-0.85, 0.85, -0.85, 0.85), _shade(rgb, 0.75)), (_rect(-0.75, 0.75, -0.75, 0.75), rgb)]
        if is_open:
            layers.append((_rect(-0.55, 0.55, -0.55, 0.55), (30, 25, 20)))
        region = _rect(-0.75, 0.75, -0.75, 0.75)
    else:  # bottle
        layers = [(_rect(-0.45, 0.45, -0.55, 1.0), rgb), (_rect(-0.2, 0.2, -0.95, -0.55), _shade(rgb, 0.8))]
        if not is_open:
            layers.append((_rect(-0.28, 0.28, -1.2, -0.9), (235, 235, 235)))
        region = _rect(-0.45, 0.45, -0.55, 1.0)
    ay = {"cup": 0.66, "bowl": 0.81}.get(o.shape, 0.25)  # marking centre: on the rim of open shapes
    if o.marking == "stripe":
        mark = lambda dx, dy: (np.abs(dy - 0.2) <= 0.08) & region(dx, dy)
    elif o.marking == "dot":
        mark = lambda dx, dy: (dx ** 2 + (dy - ay) ** 2 <= 0.16 ** 2) & region(dx, dy)
    elif o.marking == "cross":
        mark = lambda dx, dy: ((np.abs(dx) <= 0.06) | (np.abs(dy - ay) <= 0.06)) & (np.abs(dx) <= 0.3) \
            & (np.abs(dy - ay) <= 0.3) & region(dx, dy)
    else:
        mark = None
    if mark is not None and not (is_open and o.shape == "box"):
        layers.append((mark, mark_rgb))
    return layers


def render(state: scene.TakeState, f: int, cam: Camera, bg: np.ndarray, *, ego: bool) -> np.ndarray:
    """One frame of the take from `cam` (ego=True: no actor body, the camera is in its head)."""
    img = bg.copy()
    cache = state.layer_cache  # masks per (object, open, filled)
    sprites = []  # (world point, world radius, layers, min depth)
    for k, o in enumerate(state.objects):
        if not state.obj_visible[f, k]:
            continue
        centre = state.obj_pos[f, k] + np.array([0.0, 0.0, o.radius * 0.6])
        key = (k, bool(state.obj_open[f, k]), bool(state.obj_filled[f, k]))
        if key not in cache:
            cache[key] = _object_layers(o, key[1], key[2])
        sprites.append((centre, o.radius, cache[key], 0.05))
    skin, sleeve = scene.SKIN, state.shirt
    for hi in range(2):
        shoulder = np.array([*(state.body_xy + (0.17 if hi else -0.17) * state.right), 0.45])
        hand = state.hand_pos[f, hi]
        for t in (0.2, 0.45, 0.7):
            sprites.append((shoulder + t * (hand - shoulder), 0.04, [(_disc(1.0), sleeve)], 0.25))
        rgb = state.hand_rgb[hi]
        sprites.append((hand, 0.045, [(_disc(1.0), rgb), (_disc(0.55, 0.0, 0.25), _shade(rgb, 0.9))], 0.05))
    if not ego:
        sprites.append((np.array([*state.body_xy, 0.3]), 0.22, [(_rect(-0.8, 0.8, -1.0, 1.3), state.shirt)], 0.0))
        sprites.append((np.array([*state.body_xy, 0.72]), 0.11, [(_disc(1.0), skin), (_disc(0.9, 0, -0.25), (50, 35, 25))], 0.0))
    src, dst = state.pour[f]
    if src >= 0:
        a = state.obj_pos[f, src] + np.array([0, 0, 0.06])
        b = state.obj_pos[f, dst] + np.array([0, 0, 0.05])
        for t in ((np.arange(6) / 6 + f * 0.11) % 1.0):
            sprites.append((a + t * (b - a), 0.012, [(_disc(1.0), (70, 140, 230))], 0.05))
    pts = np.stack([s[0] for s in sprites])
    xs, ys, zs = cam.project(pts)
    for i in np.argsort(-zs, kind="stable"):
        if zs[i] <= sprites[i][3] or zs[i] <= 1e-3:
            continue
        _draw(img, xs[i], ys[i], cam.focal * sprites[i][1] / zs[i], sprites[i][2])
    write_frame_index(img, f)
    return img


def write_frame_index(img: np.ndarray, index: int, block: int = COUNTER_BLOCK, bits: int = COUNTER_BITS) -> None:
    """Stamps `index` in binary (LSB first, white = 1) as blocks along the bottom-left edge."""
    if index >= 1 << bits:
        raise ValueError(f"frame index {index} does not fit the {bits}-bit frame counter; "
                         f"make takes shorter than {(1 << bits) / 30:.0f} s")
    h = img.shape[0]
    for b in range(bits):
        img[h - block:h, b * block:(b + 1) * block] = 255 if (index >> b) & 1 else 0


def read_frame_index(frame: np.ndarray, block: int | None = None, bits: int = COUNTER_BITS,
                     base_height: int | None = None) -> int:
    """Reads the frame counter of a decoded frame [H, W, 3] (block defaults to COUNTER_BLOCK px,
    scaled by H / base_height when the frame was resized from base_height rows)."""
    frame = np.asarray(frame)
    if block is None:
        block = COUNTER_BLOCK * (frame.shape[0] / base_height if base_height else 1)
    h = frame.shape[0]
    luma = frame[..., :3].astype(np.float32).mean(-1)
    value = 0
    for b in range(bits):
        cy, cx = h - block / 2, (b + 0.5) * block
        half = max(1, int(block // 4))
        patch = luma[int(cy) - half:int(cy) + half, int(cx) - half:int(cx) + half]
        if patch.mean() > 127:
            value |= 1 << b
    return value
