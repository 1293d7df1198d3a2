"""Numpy rasteriser of the synthetic world: pinhole cameras, ray-cast table/floor, depth-sorted sprites.

No 3D engine: the table and floor are ray-cast per pixel (exo backgrounds once per take, since those
cameras are static), and objects, hands, arms and the actor are screen-aligned sprites whose size
falls with depth, painted far to near (`render`: one frame; `render_views`: every frame of every
view of a take in a few numpy passes, the same bytes). Every frame carries its index in binary as a
strip of black and white blocks (bottom-left corner) that survives H.264, read back with
`read_frame_index`.
"""
from __future__ import annotations

import dataclasses
import functools

import numpy as np

from exo2ego_jax.synthetic import scene

COUNTER_BLOCK = 4  # pixels per frame-counter bit (a multiple of H.264's 4x4 transform: stays crisp)
COUNTER_BITS = 11  # up to 2047 frames (68 s at 30 fps)


def _cross(a, b) -> tuple[float, float, float]:
    """a x b of two 3-vectors, rounded as np.cross rounds (each product, then the difference)."""
    a0, a1, a2 = (float(v) for v in a)
    b0, b1, b2 = (float(v) for v in b)
    return a1 * b2 - a2 * b1, a2 * b0 - a0 * b2, a0 * b1 - a1 * b0


@dataclasses.dataclass(frozen=True)
class Camera:
    pos: np.ndarray  # [3]
    look: np.ndarray  # [3] point the optical axis goes through
    focal: float  # pixels
    width: int
    height: int

    def basis(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self._basis

    @functools.cached_property
    def _basis(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # Once per camera (render and background both need it); np.cross's call overhead was a
        # tenth of the world's rendering time, so the products are done here with the same roundings.
        fwd = self.look - self.pos
        fwd = fwd / np.linalg.norm(fwd)
        right = np.array(_cross(fwd, (0.0, 0.0, 1.0)))
        right = right / max(np.linalg.norm(right), 1e-9)
        up = np.array(_cross(right, fwd))
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
    return backgrounds([cam], floor_tint)[0]


def backgrounds(cams: list[Camera], floor_tint: np.ndarray) -> np.ndarray:
    """`background` of N cameras of one size and focal length at once, uint8 [N, H, W, 3] (the
    ego camera moves every frame: one numpy pass over all of a take's frames)."""
    c0 = cams[0]
    if any((c.width, c.height, c.focal) != (c0.width, c0.height, c0.focal) for c in cams):
        raise ValueError("render.backgrounds: every camera needs the same width, height and focal; "
                         "call it once per camera geometry")
    # Per camera [N, 1, 1] float32: the same float32 operations per pixel as one camera at a time.
    r, u, f = (np.stack([c.basis()[i] for c in cams]).astype(np.float32)[:, None, None, :] for i in range(3))
    pos = np.stack([c.pos for c in cams])[:, None, None, :]
    xs = ((np.arange(c0.width, dtype=np.float32) + 0.5 - c0.width / 2) / c0.focal)[None, None, :]
    ys = ((c0.height / 2 - np.arange(c0.height, dtype=np.float32) - 0.5) / c0.focal)[None, :, None]
    # Ray direction per pixel = f + xs * r + ys * u; only its x, y, z components are needed.
    dx = f[..., 0] + xs * r[..., 0] + ys * u[..., 0]
    dy = f[..., 1] + xs * r[..., 1] + ys * u[..., 1]
    dz = f[..., 2] + xs * r[..., 2] + ys * u[..., 2]
    hit = dz < -1e-6
    t = -pos[..., 2].astype(np.float32) / np.where(hit, dz, np.float32(-1.0))
    hit &= t < 12.0
    x = pos[..., 0].astype(np.float32) + t * dx
    y = pos[..., 1].astype(np.float32) + t * dy
    hx, hy = scene.TABLE_HALF
    on_table = hit & (np.abs(x) <= hx) & (np.abs(y) <= hy)
    # Palette index per pixel: wall 0, floor checker 1 / 2, wood 3, wood grid line 4. The checker
    # and the grid are computed only where they show.
    index = np.zeros(x.shape, np.uint8)
    floor = np.flatnonzero(hit & ~on_table)
    xf, yf = x.reshape(-1)[floor], y.reshape(-1)[floor]
    index.reshape(-1)[floor] = np.where(_mod_exact(np.floor(xf * 2) + np.floor(yf * 2), 2).astype(bool), 1, 2)
    table = np.flatnonzero(on_table)
    xt, yt = x.reshape(-1)[table], y.reshape(-1)[table]
    line = (np.abs(xt) > hx - 0.03) | (np.abs(yt) > hy - 0.03) \
        | (np.abs(_mod_exact(xt + 0.125, 0.25) - 0.125) < 0.006) \
        | (np.abs(_mod_exact(yt + 0.125, 0.25) - 0.125) < 0.006)
    index.reshape(-1)[table] = np.where(line, 4, 3)
    tint = np.asarray(floor_tint, np.float32)
    palette = np.stack([_WALL, tint.astype(np.uint8), (tint * 0.85).astype(np.uint8), _WOOD, _WOOD_LINE])
    return palette[index]


def _mod_exact(a: np.ndarray, m: float) -> np.ndarray:
    """``a % m`` for a power of two m, bit for bit (both are exact: a / m, floor and the difference
    round nothing), without np.remainder's per-element libm call (~100x slower than floor)."""
    return a - m * np.floor(a * (1.0 / m))


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


def _bounded(mask_fn, ex: float, ey: float):
    """Tags a mask with its extent: it is False wherever |dx| > ex or |dy| > ey (`_paint` then
    evaluates it only on the pixels near the sprite)."""
    mask_fn.extent = (float(ex), float(ey))
    return mask_fn


def _disc(k: float = 1.0, ox: float = 0.0, oy: float = 0.0):
    return _bounded(lambda dx, dy: (dx - ox) ** 2 + (dy - oy) ** 2 <= k * k, abs(ox) + k, abs(oy) + k)


def _rect(x0: float, x1: float, y0: float, y1: float):
    return _bounded(lambda dx, dy: (dx >= x0) & (dx <= x1) & (dy >= y0) & (dy <= y1),
                    max(abs(x0), abs(x1)), max(abs(y0), abs(y1)))


def _object_layers(o: scene.Obj, is_open: bool, filled: bool):
    rgb = scene.COLOURS[o.colour]
    dark = _shade(rgb, 0.45)
    liquid = (70, 140, 230) if o.colour != "blue" else (150, 200, 255)
    mark_rgb = (0, 0, 0) if o.marking_colour == "black" else (255, 255, 255)
    if o.shape == "cup":
        body = _disc(0.8)
        layers = [(_rect(0.6, 1.05, -0.25, 0.25), _shade(rgb, 0.8)), (body, rgb),
                  (_disc(0.5), liquid if filled else dark)]
        region = _bounded(lambda dx, dy: ((dx ** 2 + dy ** 2 <= 0.64) & (dx ** 2 + dy ** 2 > 0.3)), 0.8, 0.8)
    elif o.shape == "bowl":
        layers = [(_disc(1.0), rgb), (_disc(0.62), liquid if filled else dark)]
        region = _bounded(lambda dx, dy: ((dx ** 2 + dy ** 2 <= 1.0) & (dx ** 2 + dy ** 2 > 0.45)), 1.0, 1.0)
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
        layers.append((_bounded(mark, *region.extent), mark_rgb))  # inside the region
    return layers


@dataclasses.dataclass(frozen=True)
class _Sprites:
    """Every sprite of every frame of a take, frame-major, in paint-list order within a frame (the
    order breaks depth ties). Camera-independent: built once per take, drawn from every view."""
    frame: np.ndarray  # [S] int64 frame index
    centre: np.ndarray  # [S, 3] world point
    radius: np.ndarray  # [S] world radius
    min_depth: np.ndarray  # [S] not drawn at depths <= this
    layer_set: np.ndarray  # [S] int64 index into `layer_sets`
    exo_only: np.ndarray  # [S] bool: the actor's body and head (the ego camera is in the head)
    layer_sets: tuple  # each a list [(mask_fn(dx, dy), rgb)], painted in order
    starts: np.ndarray  # [T + 1] frame f's sprites are rows starts[f]:starts[f + 1]


def _sprites(state: scene.TakeState) -> _Sprites:
    """The take's sprite table (cached on the state): what `render` used to build frame by frame."""
    cache = state.layer_cache
    if "sprites" in cache:
        return cache["sprites"]
    T = state.num_frames
    frames = np.arange(T)
    sets, parts = [], []  # parts: (frame [n], centre [n, 3], radius, layer set [n], min depth, exo only)

    def add(frame, centre, radius, set_ids, min_depth, exo_only=False):
        frame = np.asarray(frame, np.int64)
        parts.append((frame, np.broadcast_to(centre, (len(frame), 3)), np.full(len(frame), float(radius)),
                      np.broadcast_to(np.asarray(set_ids, np.int64), frame.shape), np.full(len(frame), min_depth),
                      np.full(len(frame), exo_only)))

    def layer_set(layers) -> int:
        sets.append(layers)
        return len(sets) - 1

    for k, o in enumerate(state.objects):
        vis = np.flatnonzero(state.obj_visible[:, k])
        state_code = 2 * state.obj_open[vis, k].astype(np.int64) + state.obj_filled[vis, k]
        ids = np.empty(4, np.int64)
        for code in np.unique(state_code):
            ids[code] = layer_set(_object_layers(o, bool(code // 2), bool(code % 2)))
        add(vis, state.obj_pos[vis, k] + np.array([0.0, 0.0, o.radius * 0.6]), o.radius, ids[state_code], 0.05)
    skin, sleeve = scene.SKIN, state.shirt
    arm = layer_set([(_disc(1.0), sleeve)])
    for hi in range(2):
        shoulder = np.array([*(state.body_xy + (0.17 if hi else -0.17) * state.right), 0.45])
        hand = state.hand_pos[:, hi]
        for t in (0.2, 0.45, 0.7):
            add(frames, shoulder + t * (hand - shoulder), 0.04, arm, 0.25)
        rgb = state.hand_rgb[hi]
        add(frames, hand, 0.045, layer_set([(_disc(1.0), rgb), (_disc(0.55, 0.0, 0.25), _shade(rgb, 0.9))]), 0.05)
    add(frames, np.array([*state.body_xy, 0.3]), 0.22, layer_set([(_rect(-0.8, 0.8, -1.0, 1.3), state.shirt)]), 0.0,
        exo_only=True)
    add(frames, np.array([*state.body_xy, 0.72]), 0.11,
        layer_set([(_disc(1.0), skin), (_disc(0.9, 0, -0.25), (50, 35, 25))]), 0.0, exo_only=True)
    pouring = np.flatnonzero(state.pour[:, 0] >= 0)
    src, dst = state.pour[pouring, 0], state.pour[pouring, 1]
    a = state.obj_pos[pouring, src] + np.array([0, 0, 0.06])
    b = state.obj_pos[pouring, dst] + np.array([0, 0, 0.05])
    ts = (np.arange(6) / 6 + pouring[:, None] * 0.11) % 1.0  # [n, 6] droplets flowing from a to b
    drop = layer_set([(_disc(1.0), (70, 140, 230))])
    for j in range(6):
        add(pouring, a + ts[:, j, None] * (b - a), 0.012, drop, 0.05)
    frame, centre, radius, set_ids, min_depth, exo_only = (np.concatenate(c) for c in zip(*parts))
    order = np.argsort(frame, kind="stable")  # frame-major, paint-list order within a frame
    table = _Sprites(frame[order], centre[order], radius[order], min_depth[order], set_ids[order], exo_only[order],
                     tuple(sets), np.searchsorted(frame[order], np.arange(T + 1)))
    cache["sprites"] = table
    return table


def render(state: scene.TakeState, f: int, cam: Camera, bg: np.ndarray, *, ego: bool) -> np.ndarray:
    """One frame of the take from `cam` (ego=True: no actor body, the camera is in its head);
    sprites painted one by one, far to near (`render_views` draws whole takes at once)."""
    img = bg.copy()
    sp = _sprites(state)
    rows = np.arange(sp.starts[f], sp.starts[f + 1])
    if ego:
        rows = rows[~sp.exo_only[rows]]
    xs, ys, zs = cam.project(sp.centre[rows])
    for i in np.argsort(-zs, kind="stable"):
        r = rows[i]
        if zs[i] <= sp.min_depth[r] or zs[i] <= 1e-3:
            continue
        _draw(img, xs[i], ys[i], cam.focal * sp.radius[r] / zs[i], sp.layer_sets[sp.layer_set[r]])
    write_frame_index(img, f)
    return img


def render_views(state: scene.TakeState, views) -> list[np.ndarray]:
    """Every frame of one take from several views -> uint8 [T, H, W, 3] per view. A view is
    (cams, bgs, ego): one static Camera or cams[f] per frame, bgs [H, W, 3] or [T, H, W, 3].

    Equal to `render` frame by frame (the same float operations per pixel), but every sprite of
    every frame of the views of one size is painted in a few numpy passes: per-sprite numpy calls
    on patches of a few pixels were most of the world's writing time.
    """
    sp = _sprites(state)
    T = state.num_frames
    out: list[np.ndarray | None] = [None] * len(views)
    by_size: dict[tuple[int, int], list[int]] = {}
    for v, (cams, _, _) in enumerate(views):
        cam = cams if isinstance(cams, Camera) else cams[0]
        by_size.setdefault((cam.height, cam.width), []).append(v)
    for (h, w), group in by_size.items():
        img = np.empty((len(group) * T, h, w, 3), np.uint8)  # the group's views one after the other
        draws = []
        for g, v in enumerate(group):
            cams, bgs, ego = views[v]
            img[g * T:(g + 1) * T] = bgs
            draws.append(_view_draws(sp, T, cams, ego, g * T))
        frame, cx, cy, rad, rank, layer_set = (np.concatenate(c) for c in zip(*draws))
        _paint(img, frame, cx, cy, rad, rank, layer_set, sp.layer_sets)
        write_frame_indices(img, np.tile(np.arange(T), len(group)))
        for g, v in enumerate(group):
            out[v] = img[g * T:(g + 1) * T]
    return out


def _view_draws(sp: _Sprites, T: int, cams: Camera | list[Camera], ego: bool, frame_offset: int):
    """The sprites one view draws: (frame, centre x, centre y, radius px, paint rank, layer set)."""
    per_frame = not isinstance(cams, Camera)
    keep = ~sp.exo_only if ego else np.ones(len(sp.frame), bool)
    # Projection one frame at a time: the same matrix-vector products as `render`, bit for bit.
    xs, ys, zs, focal = (np.empty(len(sp.frame)) for _ in range(4))
    for f in range(T):
        cam = cams[f] if per_frame else cams
        rows = np.arange(sp.starts[f], sp.starts[f + 1])
        rows = rows[keep[rows]]
        xs[rows], ys[rows], zs[rows] = cam.project(sp.centre[rows])
        focal[rows] = cam.focal
    rows = np.flatnonzero(keep)
    # Paint order: per frame far to near, ties in list order (np.lexsort is stable).
    rows = rows[np.lexsort((-zs[rows], sp.frame[rows]))]
    frame = sp.frame[rows]
    rank = np.arange(len(rows)) - np.searchsorted(frame, frame)  # position in its frame's paint order
    z = zs[rows]
    drawn = (z > sp.min_depth[rows]) & (z > 1e-3)
    rows, frame, rank, z = rows[drawn], frame[drawn], rank[drawn], z[drawn]
    return frame + frame_offset, xs[rows], ys[rows], focal[rows] * sp.radius[rows] / z, rank, sp.layer_set[rows]


def _ragged_arange(counts: np.ndarray) -> np.ndarray:
    """[sum(counts)] position of each element within its run: 0..counts[0]-1, 0..counts[1]-1, ..."""
    return np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)


def _paint(img: np.ndarray, frame: np.ndarray, cx: np.ndarray, cy: np.ndarray, rad: np.ndarray, rank: np.ndarray,
           layer_set: np.ndarray, layer_sets) -> None:
    """`_draw` of D sprites at once into img [F, H, W, 3]; sprite i goes to frame[i], above every sprite
    of its frame with a lower rank[i]. Offsets and masks are computed per pixel as `_draw` computes
    them; then each pixel takes the colour of the last (rank, layer) whose mask covers it."""
    F, h, w, _ = img.shape
    ext = 1.5 * rad + 1
    x0, x1 = np.maximum(0, np.floor(cx - ext).astype(np.int64)), np.minimum(w, np.ceil(cx + ext).astype(np.int64) + 1)
    y0, y1 = np.maximum(0, np.floor(cy - ext).astype(np.int64)), np.minimum(h, np.ceil(cy + ext).astype(np.int64) + 1)
    # `_draw`'s patch, cut to where the masks can be True: a pixel 1.5 px beyond a set's extent has
    # |dx| or |dy| over it by far more than rounding, so every mask is False there.
    extent = np.array([np.max([getattr(fn, "extent", (np.inf, np.inf)) for fn, _ in layers], axis=0)
                       for layers in layer_sets])[layer_set]  # [D, 2]
    near = np.isfinite(extent)
    ex, ey = np.where(near, extent, 0.0).T * rad
    x0 = np.where(near[:, 0], np.maximum(x0, np.floor(cx - ex).astype(np.int64) - 1), x0)
    x1 = np.where(near[:, 0], np.minimum(x1, np.ceil(cx + ex).astype(np.int64) + 2), x1)
    y0 = np.where(near[:, 1], np.maximum(y0, np.floor(cy - ey).astype(np.int64) - 1), y0)
    y1 = np.where(near[:, 1], np.minimum(y1, np.ceil(cy + ey).astype(np.int64) + 2), y1)
    keep = np.flatnonzero((rad >= 0.35) & (x0 < x1) & (y0 < y1))
    # Sprites grouped by layer set: each set's pixels are then one slice of the pixel arrays.
    order = keep[np.argsort(layer_set[keep], kind="stable")]
    frame, cx, cy, rad, rank, layer_set = (a[order] for a in (frame, cx, cy, rad, rank, layer_set))
    x0, y0, pw, ph = x0[order], y0[order], (x1 - x0)[order], (y1 - y0)[order]
    # Patch columns and rows of every sprite, then its pixels row by row.
    col_sprite, row_sprite = np.repeat(np.arange(len(order)), pw), np.repeat(np.arange(len(order)), ph)
    dx_col = (x0[col_sprite] + _ragged_arange(pw) + 0.5 - cx[col_sprite]) / rad[col_sprite]
    row_y = y0[row_sprite] + _ragged_arange(ph)
    dy_row = (row_y + 0.5 - cy[row_sprite]) / rad[row_sprite]
    row_len = pw[row_sprite]
    row_start = np.cumsum(row_len) - row_len  # first pixel of each row
    col_start = np.cumsum(pw) - pw  # first column of each sprite in dx_col
    n = int(row_len.sum())
    dx = dx_col[np.arange(n) + np.repeat(col_start[row_sprite] - row_start, row_len)]
    dy = np.repeat(dy_row, row_len)
    # Into img viewed as [F * H * W, 3].
    pixel = np.arange(n) + np.repeat((frame[row_sprite] * h + row_y) * w + x0[row_sprite] - row_start, row_len)
    max_layers = max(len(layers) for layers in layer_sets)
    if (int(rank.max(initial=0)) + 1) * max_layers >= 1 << 15:
        raise ValueError(f"render: {int(rank.max()) + 1} sprites in one frame is more than the painter handles")
    step_base = np.repeat((rank[row_sprite] * max_layers).astype(np.int16), row_len)
    palette = [np.asarray(rgb, np.uint8) for layers in layer_sets for _, rgb in layers]
    sprite_end = np.cumsum(pw * ph)
    bounds = np.concatenate([[0], sprite_end])[np.searchsorted(layer_set, np.arange(len(layer_sets) + 1))]
    hits, steps, colours = [], [], []
    colour = 0
    for s, layers in enumerate(layer_sets):
        a, b = bounds[s], bounds[s + 1]
        for li, (mask_fn, _) in enumerate(layers):
            if a < b:
                m = np.flatnonzero(mask_fn(dx[a:b], dy[a:b])) + a
                hits.append(pixel[m])
                steps.append(step_base[m] + np.int16(li))  # paint step of a frame: (rank, layer)
                colours.append(np.full(len(m), colour, np.int16))
            colour += 1
    if not hits:
        return
    # One paint step of every frame at a time, in order: within a step the pixels are distinct (one
    # sprite layer per frame), so each step is a plain assignment and later steps paint over earlier.
    steps = np.concatenate(steps)
    order = np.argsort(steps, kind="stable")  # radix sort of int16
    steps, hits = steps[order], np.concatenate(hits)[order]
    # Whole RGB pixels as 3-byte items: one copy per pixel instead of three strided ones.
    rgb = np.stack(palette).view("V3")[np.concatenate(colours)[order], 0]
    out = img.reshape(-1, 3).view("V3")[:, 0]
    edges = np.flatnonzero(np.diff(steps)) + 1
    for a, b in zip(np.concatenate([[0], edges]), np.concatenate([edges, [len(steps)]])):
        out[hits[a:b]] = rgb[a:b]


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


def write_frame_indices(frames: np.ndarray, indices: np.ndarray, block: int = COUNTER_BLOCK,
                        bits: int = COUNTER_BITS) -> None:
    """`write_frame_index` of frames [T, H, W, 3] with indices [T] at once."""
    indices = np.asarray(indices, np.int64)
    if len(indices) and indices.max() >= 1 << bits:
        write_frame_index(frames[int(np.argmax(indices))], int(indices.max()), block, bits)  # raises
    h = frames.shape[1]
    for b in range(bits):
        frames[:, h - block:h, b * block:(b + 1) * block] = np.where((indices >> b) & 1, 255, 0).astype(
            np.uint8)[:, None, None, None]
