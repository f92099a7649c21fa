"""The embedded, deterministic synthetic chest-radiograph generator (the default data source).

Every fresh machine can train and evaluate without downloading anything, so the phantom must look like
a frontal (PA) chest radiograph at 64-256 px: body and soft tissue, two lungs, posterior and anterior rib
arcs, clavicles, spine, mediastinum, a heart shifted to the patient's left (image right), diaphragm domes
(right higher) and lung vessel markings, under a random pose, exposure and noise.

Each structure contributes an attenuation map (a line-integral-like thickness times a density) in
anatomical coordinates; their sum is exponentiated like an X-ray transmission, windowed and gamma
corrected. Rendering happens at twice the output size and is averaged down for smooth edges.

Image ``i`` depends only on ``(seed, i, size)``: its parameters come from
``numpy.random.default_rng([seed, i])`` and the label from ``i`` and ``nodule_fraction``, so any prefix
of a set equals a smaller set. The anatomy of an image does not depend on its label; a ``nodule`` image
is its ``normal`` counterpart plus one to three round opacities inside the lungs
(``render(..., with_nodules=False)`` gives that counterpart).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from .errors import DataError

CLASS_NAMES: tuple[str, str] = ("normal", "nodule")

Params = dict[str, np.ndarray]  # name -> per-image values shaped (batch, 1, 1) for broadcasting

# Images rendered together; keeps the per-call Python overhead small at 64 px and memory flat at 256 px.
_PIXELS_PER_CHUNK = 8 * 128 * 128


@dataclass
class PhantomSet:
    """A rendered set with the ground truth the tests and the data report need."""

    images: np.ndarray  # uint8, (n, size, size)
    labels: np.ndarray  # int64, (n,), 0 = normal, 1 = nodule
    lung_masks: np.ndarray  # bool, (n, size, size): union of both lungs
    mediastinum_masks: np.ndarray  # bool, (n, size, size): heart + mediastinum
    nodules: list[list[tuple[float, float, float]]]  # per image: (cy, cx, radius) in output pixels
    class_names: tuple[str, ...] = field(default=CLASS_NAMES)


def generate(n: int, size: int = 64, seed: int = 0, nodule_fraction: float = 0.5,
             progress: bool = False) -> PhantomSet:
    """Render images ``0 .. n-1`` of the phantom for ``seed`` at ``size`` x ``size`` pixels."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise DataError(f"phantom: n must be an integer >= 1, got {n!r}")
    return render(range(int(n)), size=size, seed=seed, nodule_fraction=nodule_fraction,
                  progress=progress)


def labels_for(indices: range | np.ndarray, nodule_fraction: float) -> np.ndarray:
    """Deterministic, evenly spread labels: any run of ``k`` indices holds ``k * fraction`` +- 1 nodules.

    At ``nodule_fraction=0.5`` this is ``i % 2``.
    """
    i = np.asarray(indices, dtype=np.float64)
    f = float(nodule_fraction)
    return (np.floor((i + 1) * f + 0.25) - np.floor(i * f + 0.25)).astype(np.int64)


def render(indices: range | list[int] | np.ndarray, size: int = 64, seed: int = 0,
           nodule_fraction: float = 0.5, with_nodules: bool = True,
           progress: bool = False) -> PhantomSet:
    """Render the given image indices; ``with_nodules=False`` draws the same anatomy without nodules.

    The ``nodules`` ground truth is still reported when ``with_nodules`` is false, so the pair
    (with, without) shows exactly what a nodule adds.
    """
    size, seed, nodule_fraction = _validate(size, seed, nodule_fraction)
    idx = np.asarray(list(indices), dtype=np.int64)
    if idx.size == 0:
        raise DataError("phantom: no image indices to render")
    if (idx < 0).any():
        raise DataError("phantom: image indices must be >= 0")
    labels = labels_for(idx, nodule_fraction)
    chunk = max(1, _PIXELS_PER_CHUNK // (2 * size) ** 2)
    images = np.empty((idx.size, size, size), np.uint8)
    lungs = np.empty((idx.size, size, size), bool)
    mediastinum = np.empty((idx.size, size, size), bool)
    nodules: list[list[tuple[float, float, float]]] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=idx.size, desc=f"phantom {size}px", unit="img")
    for start in range(0, idx.size, chunk):
        sl = slice(start, start + chunk)
        out = _render_chunk(idx[sl], labels[sl], size, seed, with_nodules)
        images[sl], lungs[sl], mediastinum[sl] = out[0], out[1], out[2]
        nodules.extend(out[3])
        if bar is not None:
            bar.update(len(idx[sl]))
    if bar is not None:
        bar.close()
    return PhantomSet(images, labels, lungs, mediastinum, nodules)


def _validate(size: object, seed: object, nodule_fraction: object) -> tuple[int, int, float]:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not 64 <= size <= 256:
        raise DataError(f"phantom: size must be an integer between 64 and 256, got {size!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DataError(f"phantom: seed must be an integer >= 0, got {seed!r}")
    if (isinstance(nodule_fraction, bool) or not isinstance(nodule_fraction, (int, float, np.floating))
            or not 0.0 <= float(nodule_fraction) <= 1.0):
        raise DataError(f"phantom: nodule_fraction must be a number in [0, 1], got {nodule_fraction!r}")
    return int(size), int(seed), float(nodule_fraction)


# --------------------------------------------------------------------------------------------------
# Per-image parameters


def _sample_params(rng: np.random.Generator) -> dict[str, float]:
    """Anatomy, pose and imaging parameters of one patient, in anatomical units (body half-width ~ 0.9).

    The draw order is fixed and independent of the label, so a nodule image shares its anatomy with
    the normal image of the same index.
    """
    u = rng.uniform
    p: dict[str, float] = {}
    # pose: rotation, shift, zoom
    p["rot"] = np.deg2rad(u(-5, 5))
    p["tx"], p["ty"] = u(-0.05, 0.05), u(-0.05, 0.06)
    p["zoom"] = u(0.9, 1.06)
    # body outline
    p["body_w"] = u(0.88, 1.0)
    p["waist"] = u(-0.05, 0.12)
    p["shoulder_y"] = u(-1.2, -1.02)
    p["shoulder_drop"] = u(0.15, 0.3)
    p["neck_w"] = u(0.26, 0.36)
    p["arm_gap"] = u(-0.12, 0.1)
    p["arm_w"] = u(0.12, 0.18)
    p["tissue"] = u(0.9, 1.1)
    # spine and mediastinum
    p["spine_x"] = u(-0.02, 0.02)
    p["spine_w"] = u(0.09, 0.11)
    p["vert_h"] = u(0.1, 0.125)
    p["vert_phase"] = u(0, 1)
    p["med_w"] = u(0.11, 0.15)
    p["knob_x"], p["knob_y"], p["knob_r"] = u(-0.01, 0.03), u(-0.38, -0.28), u(0.06, 0.085)
    p["carina_y"] = u(-0.32, -0.22)
    # heart: row-wise borders growing out of the mediastinum, the left (image right) one much more
    p["heart_top"] = u(-0.35, -0.2)
    p["heart_r"], p["heart_l"] = u(0.06, 0.12), u(0.34, 0.46)
    p["heart_rt"], p["heart_lt"] = u(0.35, 0.5), u(0.7, 0.9)
    # lungs: upper half of a super-ellipse per side, cut by the dome and the mediastinum
    for side in ("r", "l"):
        p[f"{side}_top"] = u(-0.88, -0.76)
        p[f"{side}_lat"] = u(0.76, 0.88)
        p[f"{side}_cy"] = u(0.2, 0.35)
        p[f"{side}_pow"] = u(2.5, 3.2)
        p[f"{side}_dome_k"] = u(0.35, 0.55)
        p[f"{side}_dome_s"] = u(0.3, 0.42)
    p["r_dome"] = u(0.26, 0.4)
    p["l_dome"] = p["r_dome"] + u(0.03, 0.1)
    p["lung_air"] = u(1.1, 1.4)
    # bones
    p["rib_top"] = u(-0.92, -0.84)
    p["rib_sp"] = u(0.1, 0.12)
    p["rib_grow"] = u(0.2, 0.6)
    p["rib_rise"] = u(0.08, 0.2)
    p["rib_fall"] = u(0.45, 0.6)
    p["rib_fill"] = u(0.42, 0.55)
    p["rib_den"] = u(0.12, 0.18)
    p["clav_y"] = u(-0.72, -0.6)
    p["clav_rise"] = u(0.15, 0.28)
    p["clav_den"] = u(0.35, 0.5)
    p["bone"] = u(0.85, 1.15)
    # extras
    p["bubble"] = float(u(0, 1) < 0.6)
    p["bubble_den"] = u(0.25, 0.6)
    p["breast"] = float(u(0, 1) < 0.3)
    p["breast_den"] = u(0.15, 0.35)
    p["vessel_den"] = u(0.3, 0.5)
    p["vessel_dx"], p["vessel_dy"] = u(0, 1), u(0, 1)
    for k in range(3):  # smooth soft-tissue inhomogeneity
        p[f"wave{k}_fx"], p[f"wave{k}_fy"] = u(-4, 4), u(-4, 4)
        p[f"wave{k}_ph"], p[f"wave{k}_a"] = u(0, 2 * np.pi), u(0, 0.05)
    # exposure and display
    p["expo"] = u(0.4, 0.75)
    p["grad_x"], p["grad_y"] = u(-0.08, 0.08), u(-0.05, 0.1)
    p["lo"], p["hi"] = u(0.0, 0.06), u(0.82, 0.95)
    p["gamma"] = u(0.75, 1.35)
    p["blur"] = u(0.4, 1.0)
    p["noise"] = u(0.001, 0.005)
    return p


def _sample_nodules(rng: np.random.Generator) -> list[dict[str, float]]:
    """Three candidate nodules; the image keeps the first ``count`` of them (drawn for every image)."""
    count = int(rng.choice([1, 2, 3], p=[0.6, 0.3, 0.1]))
    cands = [
        {"radius": rng.uniform(0.03, 0.065),  # fraction of the image size
         "density": rng.uniform(0.45, 1.1),
         "pick": rng.uniform(0, 1)}
        for _ in range(3)
    ]
    return cands[:count]


# --------------------------------------------------------------------------------------------------
# Rendering


def _render_chunk(idx: np.ndarray, labels: np.ndarray, size: int, seed: int, with_nodules: bool
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[list[tuple[float, float, float]]]]:
    """Render a batch at twice ``size`` with broadcasting, then blur, downsample, add noise, quantise."""
    rngs = [np.random.default_rng([seed, int(i)]) for i in idx]
    params = [_sample_params(r) for r in rngs]
    cands = [_sample_nodules(r) for r in rngs]
    P = {k: np.array([q[k] for q in params], np.float32)[:, None, None] for k in params[0]}
    R = 2 * size
    X, Y = _anatomical_grid(P, R)
    edge = np.float32(3.0 / R)
    mu, lung_occ, med_occ = _attenuation(X, Y, P, edge)
    lung_mask = _downsample(lung_occ) > 0.5
    med_mask = _downsample(med_occ) > 0.5
    nodules = []
    for b, (label, cand) in enumerate(zip(labels, cands)):
        found = _place_nodules(lung_mask[b], cand, size) if label == 1 else []
        nodules.append([(cy, cx, r) for cy, cx, r, _ in found])
        if with_nodules and found:
            mu[b] += _nodule_attenuation(found, R)
    img = _to_intensity(mu, X, Y, P)
    out = np.empty((len(idx), size, size), np.float32)
    for b in range(len(idx)):
        out[b] = _downsample(ndimage.gaussian_filter(img[b], float(P["blur"][b, 0, 0]), mode="nearest"))
        out[b] += rngs[b].normal(0, float(P["noise"][b, 0, 0]), (size, size)).astype(np.float32)
    images = np.clip(np.rint(out * 255), 0, 255).astype(np.uint8)
    return images, lung_mask, med_mask, nodules


def _downsample(a: np.ndarray) -> np.ndarray:
    """2x2 box average: the antialiasing step from the render grid to the output grid."""
    return 0.25 * (a[..., ::2, ::2] + a[..., 1::2, ::2] + a[..., ::2, 1::2] + a[..., 1::2, 1::2])


def _to_intensity(mu: np.ndarray, X: np.ndarray, Y: np.ndarray, P: Params) -> np.ndarray:
    """Transmission-like compression, a mild exposure gradient, then window and gamma."""
    expo = P["expo"] * (1 + P["grad_x"] * X + P["grad_y"] * Y)
    i = 1 - np.exp(-expo * np.clip(mu, 0, None))
    i = np.clip((i - P["lo"]) / (P["hi"] - P["lo"]), 0, 1)
    return i ** P["gamma"]


def _anatomical_grid(P: Params, R: int) -> tuple[np.ndarray, np.ndarray]:
    """Image pixel centres in [-1, 1] mapped through the inverse pose to anatomical coordinates."""
    g = ((np.arange(R, dtype=np.float32) + 0.5) / R * 2 - 1)
    x, y = g[None, None, :] - P["tx"], g[None, :, None] - P["ty"]
    c, s = np.cos(P["rot"]), np.sin(P["rot"])
    return (c * x + s * y) / P["zoom"], (c * y - s * x) / P["zoom"]


def _soft(d: np.ndarray, edge: np.float32) -> np.ndarray:
    """Antialiased step of a signed distance (positive inside), ramping over ``edge``."""
    return np.clip(0.5 + d / edge, 0, 1)


def _cyl(d: np.ndarray) -> np.ndarray:
    """Path length through a cylinder (or sphere) at normalised distance ``d`` from its axis."""
    return np.sqrt(np.clip(1 - d * d, 0, 1))


def _ball(d2: np.ndarray) -> np.ndarray:
    """Path length through a sphere from the squared normalised distance (no square root of d)."""
    return np.sqrt(np.clip(1 - d2, 0, 1))


def _ramp(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """0 below ``lo``, 1 above ``hi``, linear between: fades structures in and out."""
    return np.clip((x - lo) / (hi - lo), 0, 1)


def _attenuation(X: np.ndarray, Y: np.ndarray, P: Params, edge: np.float32
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sum of per-structure attenuation maps; also the lung and mediastinum occupancies (0..1)."""
    sx = X - P["spine_x"]
    body = _body(sx, Y, P)
    med, med_dist = _mediastinum(sx, Y, P, edge)
    taper = np.sqrt(np.clip(-med_dist / 0.12, 0, 1))  # lungs thin out in front of and behind the heart
    dome = _dome(sx, P)
    below = _soft(Y - dome, edge)
    above = 1 - below
    lungs_full = np.zeros_like(X)
    lungs_vis = np.zeros_like(X)
    for side, sign in (("r", -1), ("l", 1)):
        depth, inside = _lung(sign * sx, Y, P, side, edge)
        vis = inside * (1 - med) * above
        lungs_vis += vis
        # a little lung remains visible through the heart (retrocardiac lower lobe)
        lungs_full += depth * above * (vis * (0.3 + 0.7 * taper) + 0.1 * (1 - vis))
    lungs_vis = np.minimum(lungs_vis, 1)
    chest = _soft(Y - P["r_top"] + 0.05, edge) * above
    med_occ = med * chest

    waves = sum(P[f"wave{k}_a"] * np.cos(P[f"wave{k}_fx"] * X + P[f"wave{k}_fy"] * Y + P[f"wave{k}_ph"])
                for k in range(3))
    mu = 2.3 * P["tissue"] * body * (1 + waves)
    mu -= P["lung_air"] * lungs_full
    mu -= _airways(sx, Y, P, edge)
    mu += (0.3 - _gastric_bubble(sx, Y, P, dome, edge)) * below * body
    mu += 0.2 * np.clip(med_dist / 0.15, 0, 1) * chest  # the heart is thickest in its middle
    mu += _breasts(sx, Y, P) * body
    # ribs fade where they overlap the dense heart and abdomen, as on real films
    ribs = _ribs(sx, Y, P) * (1 - 0.6 * np.maximum(med, below))
    bones = _spine(sx, Y, P) + ribs + _clavicles(sx, Y, P) + _humeri(sx, Y, P)
    mu += P["bone"] * bones * np.minimum(body * 4, 1)
    mu += _vessels(sx, Y, P, med_dist) * lungs_vis
    return mu, lungs_vis, med_occ


def _body(sx: np.ndarray, Y: np.ndarray, P: Params) -> np.ndarray:
    """Soft-tissue path length: rounded-box torso with sloping shoulders, neck, and arms at the sides."""
    W = P["body_w"] * (1 - P["waist"] * np.clip(Y - 0.2, 0, None) ** 2)
    top = P["shoulder_y"] + P["shoulder_drop"] * np.abs(sx / P["body_w"]) ** 1.5
    t = _ramp(Y - top, 0, 0.3)
    torso = np.clip(1 - np.abs(sx / W) ** 3, 0, 1) ** (1 / 3) * np.sqrt(t * (2 - t))
    neck = 0.85 * _cyl(sx / P["neck_w"])
    arm_c = P["body_w"] + P["arm_gap"] + P["arm_w"] + 0.12 * np.clip(Y + 0.3, 0, None)
    ta = _ramp(Y - P["shoulder_y"] - P["shoulder_drop"], 0, 0.3)
    arm = 0.7 * _cyl((np.abs(sx) - arm_c) / P["arm_w"]) * np.sqrt(ta * (2 - ta))
    return np.maximum(np.maximum(torso, neck), arm)


def _mediastinum(sx: np.ndarray, Y: np.ndarray, P: Params, edge: np.float32
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Occupancy of the mediastinum and heart (one silhouette, borders per row) and the aortic knob.

    Also returns the signed distance to the silhouette (positive inside), which shapes the lungs'
    thinning toward the heart and the hila.
    """
    w = P["med_w"] * (1 + 0.3 * np.clip(Y + 0.5, 0, None))
    t = (Y - P["heart_top"]) / (0.35 - P["heart_top"])
    right = w + P["heart_r"] * _bulge(t, P["heart_rt"])
    left = w + 0.03 + P["heart_l"] * _bulge(t, P["heart_lt"])
    kx, ky = sx - P["knob_x"] - w, Y - P["knob_y"]
    knob = P["knob_r"] - np.sqrt(kx * kx + ky * ky)
    dist = np.maximum(np.minimum(sx + right, left - sx), knob)
    return _soft(dist, edge), dist


def _bulge(t: np.ndarray, tc: np.ndarray) -> np.ndarray:
    """0 above a border's start, a convex rise to 1 at ``tc``, then curving back in: a cardiac bulge."""
    rise = np.sin(0.5 * np.pi * np.clip(t / tc, 0, 1))
    tail = np.clip((t - tc) / (1 - tc), 0, 1)
    return rise * (1 - 0.25 * tail * tail)


def _dome(sx: np.ndarray, P: Params) -> np.ndarray:
    """Height of the diaphragm at each column: two domes, steep toward the costophrenic angles."""
    domes = []
    for side, sign in (("r", -1), ("l", 1)):
        z = (sign * sx - P[f"{side}_dome_s"]) / 0.5
        z = np.where(z < 0, 0.6 * z, z)  # flatter toward the heart than toward the costophrenic angle
        z2 = z * z
        domes.append(P[f"{side}_dome"] + P[f"{side}_dome_k"] * z2 * (0.4 + 0.6 * z2))
    w = np.clip(0.5 + sx / 0.2, 0, 1)
    return (1 - w) * domes[0] + w * domes[1]


def _lung(s: np.ndarray, Y: np.ndarray, P: Params, side: str, edge: np.float32
          ) -> tuple[np.ndarray, np.ndarray]:
    """Air path length through one lung (0..1) and its outline occupancy, before the cuts.

    The outline is the upper half of a super-ellipse that keeps its full width below its centre;
    ``s`` is the lateral distance from the spine on this side.
    """
    top, lat, cy, pw = P[f"{side}_top"], P[f"{side}_lat"], P[f"{side}_cy"], P[f"{side}_pow"]
    sc, a, b = 0.5 * (lat + 0.05), 0.5 * (lat - 0.05), cy - top
    dx = (s - sc) / a
    r = dx * dx + np.clip((cy - Y) / b, 0, None) ** pw
    e = 1 - r
    apex = np.sqrt(_ramp(Y - top, 0, 0.4))  # the apices are thin and under the shoulders
    return np.sqrt(np.clip(2.5 * e, 0, 1)) * (0.4 + 0.6 * apex), _soft(e * 0.5 * a, edge)


def _airways(sx: np.ndarray, Y: np.ndarray, P: Params, edge: np.float32) -> np.ndarray:
    """Trachea down to the carina and the two main bronchi (air, so negative attenuation)."""
    tx = 0.01 + 0.02 * np.clip(Y + 0.6, 0, None)
    d = (sx - tx) / 0.045
    trachea = 0.25 * np.clip(1 - d * d, 0, 1) * _soft(P["carina_y"] - Y, edge)
    rx, ry = sx - 0.01, Y - P["carina_y"]
    bronchi = np.zeros_like(sx)
    for sign, length, ang in ((-1, 0.1, 0.55), (1, 0.14, 0.8)):
        dx, dy = sign * math.sin(ang), math.cos(ang)
        t = np.clip(rx * dx + ry * dy, 0, length)
        ex, ey = (rx - t * dx) / 0.028, (ry - t * dy) / 0.028
        bronchi = np.maximum(bronchi, 0.12 * _ball(ex * ex + ey * ey))
    return trachea + bronchi


def _gastric_bubble(sx: np.ndarray, Y: np.ndarray, P: Params, dome: np.ndarray, edge: np.float32
                    ) -> np.ndarray | int:
    """Air in the stomach fundus under the left dome, with a flat air-fluid level (some patients)."""
    if not P["bubble"].any():
        return 0
    ex, ey = (sx - 0.33) / 0.13, (Y - dome - 0.13) / 0.09
    return P["bubble"] * P["bubble_den"] * _ball(ex * ex + ey * ey) * _soft(-ey * 0.09, edge)


def _breasts(sx: np.ndarray, Y: np.ndarray, P: Params) -> np.ndarray | int:
    """Soft-tissue shadows over the lower lungs (present in some patients)."""
    if not P["breast"].any():
        return 0
    out = 0
    ey = (Y - 0.45) / 0.32
    for sign in (-1, 1):
        ex = (sx - sign * 0.5) / 0.38
        out = out + _ball(ex * ex + ey * ey) * _ramp(Y, 0.35, 0.55)
    return P["breast"] * P["breast_den"] * out


def _spine(sx: np.ndarray, Y: np.ndarray, P: Params) -> np.ndarray:
    """Vertebral column: a bright midline band of vertebral bodies separated by darker disc spaces."""
    d = sx / P["spine_w"]
    col = np.clip(1 - d * d, 0, 1)  # softer edges than a solid cylinder: the bodies are rounded
    ph = (Y - P["vert_phase"] * P["vert_h"]) / (P["vert_h"] * (1 + 0.25 * np.clip(Y, -1, 1)))
    f = ph - np.floor(ph)
    disc = np.clip(np.abs(f - 0.5) * 5 - 1.5, 0, 1)  # 1 in the disc band
    return 0.17 * col * (1 - 0.3 * disc)


def _ribs(sx: np.ndarray, Y: np.ndarray, P: Params) -> np.ndarray:
    """Posterior rib arcs (rise from the spine, curve down laterally) and fainter anterior ribs.

    All ribs of a side come from one warped periodic coordinate: the phase ``t`` counts ribs from
    the first one and grows slowly downward, so spacing widens toward the diaphragm.
    """
    out = np.zeros_like(sx)
    sp, grow = P["rib_sp"], P["rib_grow"]
    for sign in (-1, 1):
        q = sign * sx / P["body_w"]
        qc = np.clip(q, 0, 1.2)
        w = Y - P["rib_top"] - (P["rib_fall"] * qc * qc * np.sqrt(qc) - P["rib_rise"] * qc)
        t = np.log1p(grow * np.clip(w, 0, None)) / (grow * sp)
        f = t - np.floor(t)
        fill = P["rib_fill"] * (0.8 + 0.4 * qc)
        post = np.sqrt(_cyl((f - fill / 2) / (fill / 2))) * (f < fill)
        post *= _ramp(q, 0.1, 0.22) * _ramp(-q, -1.0, -0.85) * (w > 0) * (t < 11)
        # anterior ribs: from the lateral wall downward toward the sternum
        ta = (Y - P["rib_top"] - 0.3 - 0.35 * (1 - qc)) / (sp * 1.05)
        fa = ta - np.floor(ta)
        ant = _cyl((fa - 0.3) / 0.3) * (fa < 0.6)
        ant *= _ramp(q, 0.3, 0.55) * _ramp(-q, -1.0, -0.9) * (ta > 0) * (ta < 7)
        out += P["rib_den"] * (post + 0.45 * ant)
    return out


def _clavicles(sx: np.ndarray, Y: np.ndarray, P: Params) -> np.ndarray:
    """Clavicles: gently S-shaped bars from the sternal notch rising toward the shoulders."""
    out = np.zeros_like(sx)
    for sign in (-1, 1):
        q = sign * sx - 0.1
        cy = P["clav_y"] - P["clav_rise"] * q + 0.04 * np.sin(np.pi * q / 0.4)
        band = _cyl((Y - cy) / 0.05) * _ramp(q, -0.03, 0.01) * _ramp(-q, -0.75, -0.69)
        out += P["clav_den"] * band
    return out


def _humeri(sx: np.ndarray, Y: np.ndarray, P: Params) -> np.ndarray:
    """Humeral heads at the shoulders, where the arms meet the torso."""
    out = np.zeros_like(sx)
    c = P["body_w"] + P["arm_gap"] + P["arm_w"] * 0.6
    ey = (Y - P["shoulder_y"] - P["shoulder_drop"] - 0.12) / 0.13
    for sign in (-1, 1):
        ex = (sx - sign * c) / 0.13
        out += 0.6 * _ball(ex * ex + ey * ey)
    return out


_TABLE_ROWS, _TABLE_COLS = 512, 256  # powers of two: wrap-around indexing is a bit mask


@functools.lru_cache(maxsize=1)
def _vessel_table() -> np.ndarray:
    """Fixed streak texture in (angle, radius): narrow across, long along the radius, like vessels."""
    rng = np.random.default_rng(20240613)
    noise = rng.standard_normal((_TABLE_ROWS, _TABLE_COLS))
    noise = ndimage.gaussian_filter(noise, (2.5, 7.0), mode="wrap")
    noise /= noise.std()
    return np.clip(noise - 0.3, 0, None).astype(np.float32).ravel()


def _vessels(sx: np.ndarray, Y: np.ndarray, P: Params, med_dist: np.ndarray) -> np.ndarray:
    """Pulmonary vessel markings radiating from each hilum, fading toward the periphery."""
    table = _vessel_table()
    out = np.zeros_like(sx)
    for k, sign in enumerate((-1, 1)):
        dx, dy = sign * sx - 0.12, Y + 0.02
        rad = np.sqrt(dx * dx + dy * dy)
        rows = (np.arctan2(dy, dx) / (2 * np.pi) + 1 + P["vessel_dy"] + 0.5 * k) * _TABLE_ROWS
        cols = (rad * 0.6 + P["vessel_dx"]) * _TABLE_COLS
        flat = (rows.astype(np.int32) & (_TABLE_ROWS - 1)) * _TABLE_COLS
        flat += cols.astype(np.int32) & (_TABLE_COLS - 1)
        tex = table[flat]  # nearest lookup; the 2x render and the blur smooth it
        out += P["vessel_den"] * tex * np.exp(-rad / 0.4) * _ramp(rad, 0, 0.2)
    # hila: vessel bundles hugging the mediastinal border around the carina level
    hy = (Y - P["carina_y"] - 0.2) / 0.18
    hila = np.exp(-(med_dist / 0.07) ** 2 - hy * hy)
    return out + 0.6 * P["vessel_den"] * hila


def _place_nodules(lung: np.ndarray, cands: list[dict[str, float]], size: int
                   ) -> list[tuple[float, float, float, float]]:
    """Centres well inside the lung mask and apart from each other, chosen by each ``pick`` in [0, 1).

    Returns ``(cy, cx, radius, density)`` per nodule, in output pixels. The first candidate always
    finds a place (the deepest lung pixel if nothing else fits), so a nodule image has a nodule.
    """
    dist = ndimage.distance_transform_edt(lung)
    free = np.ones_like(lung)
    yy, xx = np.mgrid[0:size, 0:size]
    found = []
    for c in cands:
        r = c["radius"] * size
        ys, xs = np.nonzero((dist >= max(1.5, 1.2 * r)) & free)
        if ys.size:
            j = min(int(c["pick"] * ys.size), ys.size - 1)
            cy, cx = float(ys[j]), float(xs[j])
        elif not found and dist.max() > 0:
            cy, cx = (float(v) for v in np.unravel_index(np.argmax(dist), dist.shape))
        else:
            continue
        found.append((cy, cx, float(r), float(c["density"])))
        free &= (yy - cy) ** 2 + (xx - cx) ** 2 > (2.5 * r) ** 2
    return found


def _nodule_attenuation(found: list[tuple[float, float, float, float]], R: int) -> np.ndarray:
    """Solid spheres on the render grid (twice the output size)."""
    g = np.arange(R, dtype=np.float32)
    out = np.zeros((R, R), np.float32)
    for cy, cx, r, dens in found:
        # output pixel (cy, cx) covers render pixels 2cy and 2cy+1, so its centre is at 2cy + 0.5
        dy2 = ((g - (2 * cy + 0.5)) / (2 * r)) ** 2
        dx2 = ((g - (2 * cx + 0.5)) / (2 * r)) ** 2
        out += dens * _ball(dy2[:, None] + dx2[None, :]) ** 0.7
    return out
