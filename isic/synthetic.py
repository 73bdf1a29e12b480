"""Synthetic dermoscopy data in the official ISIC 2018 layout, so every mode runs without downloads.

Each image shows skin of a random tone seen through a dermatoscope (dark circular vignette,
optical fall-off), a few dark hairs that occlude but are not lesion, and one pigmented lesion
with a smooth random radial-Fourier boundary, a colour gradient darker towards the centre
and texture noise. The diagnosis changes the appearance so that Task 3 is learnable:

    MEL    large, irregular, dark, multicoloured (blue-grey, black, red, white regression areas)
    NV     regular, round, uniform brown
    BCC    pinkish, translucent, with arborising red vessels and blue-grey ovoid nests
    AKIEC  reddish, ill-defined, with white-yellow scales and dotted vessels
    BKL    light brown, waxy and yellowish, sharp border, cerebriform ridges
    DF     small, brownish rim around a central white scar-like patch
    VASC   red and purple lobules separated by lighter septa

Task 2 structures are drawn inside the lesion, each with the mask of the region it covers:
pigment network (dark honeycomb mesh), negative network (light mesh around dark cells),
streaks (radial lines at the border), milia-like cysts (small white dots) and globules (small
brown dots). How often each one appears depends on the diagnosis; the mix over a HAM10000-like
class distribution is close to the real Task 2 frequencies, so most attribute masks are empty.

Dataset layout (split "Training", names from isic.layout):
- Task 1/2: ISIC ids from 0000000, images + lesion masks + all five attribute masks per image.
- Task 3: other images (ids from 0024306, like HAM10000), the one-hot ground-truth CSV, the
  HAM10000 lesion masks and `HAM10000_metadata.csv` (lesion_id,image_id,dx). About 30 % of
  the Task 3 images come in pairs that show the same lesion (same shape, colours and
  structures; another position, rotation, skin, hairs and vignette), so a split that is not
  lesion-disjoint leaks.
- Class counts follow HAM10000's proportions (largest remainder) after giving every class at
  least 2 images when a set has >= 14 images (at least 1 when it has >= 7): `diagnosis_counts`.

Everything is drawn from numpy Generators seeded by (seed, stream, index), so the same
parameters give byte-identical files, and image i of a set does not depend on how the other
images were drawn. `synthetic_manifest.json` is written last and marks a complete folder;
`ensure_synthetic_dataset` keeps one folder per parameter set under
$ISIC_SYNTHETIC_DIR or ~/.cache/isic-mrcnn/synthetic.

Cost: drawing takes about 6 ms per 256x256 image on a loaded 2-core CPU (planar float32,
lesion structures drawn in a crop around the lesion); with JPEG/PNG encoding and the 7 (Task
1/2) or 2 (Task 3) files per image, the default 200 + 200 images take about 5 s.
"""
import argparse
import hashlib
import json
import logging
import math
import os
import pathlib
import sys
import time
from dataclasses import dataclass

import cv2
import numpy as np
from tqdm import tqdm

from isic import layout
from mrcnn.io import atomic

log = logging.getLogger(__name__)

# Bump whenever the drawing changes: it is part of the cache folder name.
GENERATOR_VERSION = 1
DEFAULT_COUNT = 200
DEFAULT_IMAGE_SIZE = (256, 256)  # (height, width)
DEFAULT_SEED = 0
SPLIT = "Training"
JPEG_QUALITY = 95
PNG_COMPRESSION = 3
TASK12_FIRST_ID = 0
TASK3_FIRST_ID = 24306  # the first HAM10000 image id
MIN_SIDE = 32
MANIFEST_NAME = "synthetic_manifest.json"
CACHE_ENV = "ISIC_SYNTHETIC_DIR"
DEFAULT_CACHE_DIR = pathlib.Path("~/.cache/isic-mrcnn/synthetic")

# HAM10000 images per diagnosis (10015 in all).
HAM10000_COUNTS = {"MEL": 1113, "NV": 6705, "BCC": 514, "AKIEC": 327, "BKL": 1099,
                   "DF": 115, "VASC": 142}

# Probability that a lesion of a diagnosis shows each structure. Weighted by HAM10000
# frequencies this gives about 61 % pigment network, 7 % negative network, 4 % streaks,
# 26 % milia-like cysts and 21 % globules (real Task 2: 58.7, 7.3, 3.9, 26.3, 23.2 %).
ATTRIBUTE_PROBABILITY = {
    "MEL": {"pigment_network": 0.70, "negative_network": 0.25, "streaks": 0.22,
            "milia_like_cyst": 0.10, "globules": 0.20},
    "NV": {"pigment_network": 0.75, "negative_network": 0.06, "streaks": 0.03,
           "milia_like_cyst": 0.25, "globules": 0.28},
    "BCC": {"pigment_network": 0.02, "negative_network": 0.0, "streaks": 0.0,
            "milia_like_cyst": 0.10, "globules": 0.0},
    "AKIEC": {"pigment_network": 0.05, "negative_network": 0.0, "streaks": 0.0,
              "milia_like_cyst": 0.05, "globules": 0.0},
    "BKL": {"pigment_network": 0.25, "negative_network": 0.03, "streaks": 0.0,
            "milia_like_cyst": 0.70, "globules": 0.05},
    "DF": {"pigment_network": 0.35, "negative_network": 0.15, "streaks": 0.0,
           "milia_like_cyst": 0.05, "globules": 0.05},
    "VASC": {"pigment_network": 0.0, "negative_network": 0.0, "streaks": 0.0,
             "milia_like_cyst": 0.0, "globules": 0.0},
}

# Per diagnosis: lesion radius as a fraction of half the shorter image side, boundary
# irregularity (std of the 2nd Fourier harmonic), border blur in pixels at 256 px, opacity.
_SHAPE = {
    "MEL": ((0.55, 0.85), 0.12, 1.2, 0.95),
    "NV": ((0.30, 0.55), 0.035, 1.2, 0.92),
    "BCC": ((0.35, 0.60), 0.07, 3.0, 0.70),
    "AKIEC": ((0.35, 0.60), 0.08, 4.0, 0.70),
    "BKL": ((0.35, 0.65), 0.06, 0.8, 0.88),
    "DF": ((0.18, 0.32), 0.04, 3.0, 0.80),
    "VASC": ((0.25, 0.45), 0.06, 1.5, 0.90),
}
# Per diagnosis: lesion colour at the centre and at the border (RGB in [0, 1]).
_COLOURS = {
    "MEL": ((0.28, 0.17, 0.13), (0.48, 0.31, 0.23)),
    "NV": ((0.36, 0.22, 0.14), (0.56, 0.38, 0.26)),
    "BCC": ((0.80, 0.50, 0.54), (0.87, 0.63, 0.64)),
    "AKIEC": ((0.74, 0.36, 0.33), (0.83, 0.53, 0.49)),
    "BKL": ((0.58, 0.43, 0.27), (0.68, 0.53, 0.37)),
    "DF": ((0.52, 0.35, 0.26), (0.60, 0.43, 0.33)),
    "VASC": ((0.68, 0.30, 0.40), (0.78, 0.46, 0.52)),
}
# Skin tones a random mix is drawn from: pinkish, beige, tan, brown, bluish (polarised light).
_SKIN_TONES = np.array([(0.92, 0.77, 0.74), (0.88, 0.74, 0.63), (0.80, 0.62, 0.52),
                        (0.66, 0.49, 0.40), (0.84, 0.82, 0.88)], np.float32)


def diagnosis_counts(total):
    """Images per diagnosis for a set of `total` images, in layout.DIAGNOSES order.

    Every class gets at least 2 images when total >= 14 (so that a stratified split can put
    each class on both sides), at least 1 when total >= 7; the rest follows the HAM10000
    proportions by the largest-remainder method (ties go to the earlier column).
    """
    if total < 0:
        raise ValueError(f"total must be >= 0, got {total}")
    minimum = 2 if total >= 14 else 1 if total >= 7 else 0
    rest = total - minimum * len(layout.DIAGNOSES)
    weights = np.array([HAM10000_COUNTS[dx] for dx in layout.DIAGNOSES], np.float64)
    quotas = rest * weights / weights.sum()
    counts = np.floor(quotas).astype(int)
    order = sorted(range(len(counts)), key=lambda i: (-(quotas[i] - counts[i]), i))
    for i in order[:rest - counts.sum()]:
        counts[i] += 1
    return {dx: int(minimum + c) for dx, c in zip(layout.DIAGNOSES, counts)}


############################################################
#  Drawing primitives
############################################################

@dataclass(frozen=True)
class _Lesion:
    """What stays the same in every photograph of one lesion."""
    diagnosis: str
    attributes: tuple
    size: float  # radius / half the shorter image side
    aspect: float
    amplitudes: np.ndarray  # boundary harmonics k = 2, 3, ...
    phases: np.ndarray
    centre_colour: np.ndarray
    edge_colour: np.ndarray
    blur: float
    opacity: float
    structure_seed: int


class _Frame:
    """Maps lesion-local coordinates (unit = lesion radius) to pixel (x, y) coordinates."""

    def __init__(self, cx, cy, radius, angle, aspect):
        self.cx, self.cy, self.radius, self.angle = cx, cy, radius, angle
        self.cos, self.sin = math.cos(angle), math.sin(angle)
        self.aspect = aspect

    def to_px(self, u, v):
        u = np.asarray(u, np.float64) * self.aspect
        v = np.asarray(v, np.float64) / self.aspect
        return (self.cx + self.radius * (self.cos * u - self.sin * v),
                self.cy + self.radius * (self.sin * u + self.cos * v))


def _radial(theta, amplitudes, phases):
    """Radius of a radial-Fourier outline at angles theta (1 = mean radius)."""
    k = np.arange(2, 2 + len(amplitudes))
    r = 1.0 + (amplitudes * np.cos(np.multiply.outer(theta, k) + phases)).sum(-1)
    return np.clip(r, 0.45, 1.6)


def _random_outline(rng, irregularity, harmonics=8):
    """Amplitudes and phases of a random smooth outline; higher harmonics fade."""
    k = np.arange(2, 2 + harmonics)
    amplitudes = irregularity * rng.standard_normal(harmonics) / (k / 2.0) ** 1.3
    return amplitudes, rng.uniform(0, 2 * np.pi, harmonics)


def _fill(shape, xs, ys):
    """Binary uint8 mask (0/255) of the polygon with pixel vertices (xs, ys)."""
    mask = np.zeros(shape, np.uint8)
    pts = np.round(np.stack([xs, ys], -1) * 16).astype(np.int32)
    cv2.fillPoly(mask, [pts], 255, lineType=cv2.LINE_8, shift=4)
    return mask


def _blob(shape, frame, centre, radius, outline, n=64):
    """Mask of a radial-Fourier blob given in lesion-local coordinates."""
    theta = np.linspace(0, 2 * np.pi, n, endpoint=False)
    r = radius * _radial(theta, *outline)
    return _fill(shape, *frame.to_px(centre[0] + r * np.cos(theta), centre[1] + r * np.sin(theta)))


def _soft(mask, sigma):
    """float32 copy of a 0/255 mask in [0, 1], Gaussian-blurred by sigma pixels."""
    out = mask.astype(np.float32) * np.float32(1 / 255)
    if sigma > 0.3:
        out = cv2.GaussianBlur(out, (0, 0), sigma)
    return out


def _noise(rng, shape, cell):
    """Smooth zero-mean noise (std about 0.5..1) with features about `cell` pixels wide."""
    h, w = shape
    cell = max(1, int(cell))
    small = rng.random((h // cell + 3, w // cell + 3), dtype=np.float32)
    small = (small - np.float32(0.5)) * np.float32(3.4)
    interpolation = cv2.INTER_CUBIC if cell >= 4 else cv2.INTER_LINEAR
    return cv2.resize(small, (w, h), interpolation=interpolation)


def _paint(planes, alpha, colour):
    """Blend `colour` over planar RGB `planes` [3, h, w] in place with per-pixel alpha [h, w].

    colour: RGB triple or planar [3, h, w]. Planar float32 keeps every step a fast 2-D op.
    """
    for c in range(3):
        planes[c] += alpha * (colour[c] - planes[c])


def _points_in_blob(rng, centre, radius, outline, n):
    """n random lesion-local points inside a radial-Fourier blob."""
    theta = rng.uniform(0, 2 * np.pi, n)
    r = radius * _radial(theta, *outline) * np.sqrt(rng.uniform(0, 0.9, n))
    return centre[0] + r * np.cos(theta), centre[1] + r * np.sin(theta)


_ROUND = (np.zeros(1), np.zeros(1))  # outline of a circle


def _voronoi_edges(shape, xs, ys):
    """uint8 0/1 map of the borders between Voronoi cells of pixel points: a honeycomb mesh."""
    h, w = shape
    seeds = np.full(shape, 255, np.uint8)
    xi, yi = np.round(xs).astype(int), np.round(ys).astype(int)
    keep = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
    if not keep.any():
        return np.zeros(shape, np.uint8)
    seeds[yi[keep], xi[keep]] = 0
    _, labels = cv2.distanceTransformWithLabels(seeds, cv2.DIST_L2, 5,
                                                labelType=cv2.DIST_LABEL_PIXEL)
    edges = np.zeros(shape, np.uint8)
    edges[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    edges[1:, :] |= labels[1:, :] != labels[:-1, :]
    return edges


def _crop_box(mask, margin):
    """(y1, y2, x1, x2) around the nonzero pixels of a mask, or None when it is empty."""
    x, y, w, h = cv2.boundingRect(mask)
    if w == 0 or h == 0:
        return None
    return (max(0, y - margin), min(mask.shape[0], y + h + margin),
            max(0, x - margin), min(mask.shape[1], x + w + margin))


def _polyline(canvas, points, thickness, closed=False):
    """Anti-aliased polyline of pixel points [n, 2] (sub-pixel precise) on a uint8 canvas."""
    pts = np.round(np.asarray(points) * 16).astype(np.int32)
    cv2.polylines(canvas, [pts], closed, 255, max(1, int(round(thickness))), cv2.LINE_AA,
                  shift=4)


############################################################
#  Sampling a lesion
############################################################

def _check_attributes(attributes):
    if isinstance(attributes, str):
        attributes = (attributes,)
    unknown = sorted(set(attributes) - set(layout.ATTRIBUTES))
    if unknown:
        raise ValueError(f"unknown attribute(s) {unknown}; expected names from {layout.ATTRIBUTES}")
    return tuple(a for a in layout.ATTRIBUTES if a in set(attributes))


def _sample_lesion(rng, diagnosis=None, attributes=None):
    """Draw the shape, colours and structures of one lesion."""
    if diagnosis is None:
        p = np.array([HAM10000_COUNTS[dx] for dx in layout.DIAGNOSES], np.float64)
        diagnosis = layout.DIAGNOSES[rng.choice(len(p), p=p / p.sum())]
    elif diagnosis not in layout.DIAGNOSES:
        raise ValueError(f"unknown diagnosis {diagnosis!r}; expected one of {layout.DIAGNOSES}")
    if attributes is None:
        probability = ATTRIBUTE_PROBABILITY[diagnosis]
        draws = rng.uniform(size=len(layout.ATTRIBUTES))
        attributes = tuple(a for a, u in zip(layout.ATTRIBUTES, draws) if u < probability[a])
    else:
        attributes = _check_attributes(attributes)
    (lo, hi), irregularity, blur, opacity = _SHAPE[diagnosis]
    amplitudes, phases = _random_outline(rng, irregularity)
    centre, edge = (np.array(c, np.float32) for c in _COLOURS[diagnosis])
    shade, saturation = np.float32(rng.uniform(0.85, 1.12)), np.float32(rng.uniform(0.85, 1.15))
    tint = rng.normal(0, 0.006, 3).astype(np.float32)
    max_aspect = 1.35 if diagnosis == "MEL" else 1.15
    return _Lesion(
        diagnosis=diagnosis, attributes=attributes, size=float(rng.uniform(lo, hi)),
        aspect=float(rng.uniform(1 / max_aspect, max_aspect)),
        amplitudes=amplitudes, phases=phases,
        centre_colour=np.clip((centre.mean() + saturation * (centre - centre.mean())) * shade
                              + tint, 0, 1),
        edge_colour=np.clip((edge.mean() + saturation * (edge - edge.mean())) * shade
                            + tint, 0, 1),
        blur=blur, opacity=opacity * float(rng.uniform(0.92, 1.0)),
        structure_seed=int(rng.integers(2 ** 63)))


############################################################
#  Rendering one photograph
############################################################

class _Scene:
    """One photograph while it is drawn.

    The image is planar RGB float32 [3, H, W] in [0, 1]. Everything that belongs to the lesion
    is drawn in a crop around it (`sub`, `local` shape, `frame` in crop pixels), which keeps
    the cost per image at a few milliseconds.
    """

    def __init__(self, lesion, view_rng, shape):
        self.lesion = lesion
        self.rng = view_rng
        self.structure_rng = np.random.default_rng(lesion.structure_seed)
        self.shape = shape
        self.h, self.w = shape
        self.px = min(shape) / 256.0  # pixels per pixel of the 256 px reference
        self.image = None
        self.attribute_masks = {}  # crop-sized

    # -- background -------------------------------------------------------------------------
    def draw_skin(self):
        rng = self.rng
        weights = rng.dirichlet(np.full(len(_SKIN_TONES), 0.6))
        tone = (weights @ _SKIN_TONES) * rng.uniform(0.9, 1.04)
        shading = 1 + 0.05 * _noise(rng, self.shape, self.h / 3)
        shading += 0.025 * _noise(rng, self.shape, 2.5 * self.px)  # skin lines and pores
        redness = np.maximum(_noise(rng, self.shape, 24 * self.px), 0) * np.float32(0.012)
        self.image = np.empty((3,) + self.shape, np.float32)
        self.image[0] = tone[0] * shading
        self.image[1] = tone[1] * shading - redness
        self.image[2] = tone[2] * shading - redness

    # -- the lesion -------------------------------------------------------------------------
    def place_lesion(self):
        lesion, rng = self.lesion, self.rng
        theta = np.linspace(0, 2 * np.pi, 180, endpoint=False)
        r = _radial(theta, lesion.amplitudes, lesion.phases)
        reach = float(r.max()) * max(lesion.aspect, 1 / lesion.aspect)
        half = min(self.shape) / 2
        radius = min(half * lesion.size * rng.uniform(0.9, 1.1), 0.9 * half / reach)
        slack = max(0.0, 0.9 * half - radius * reach)
        cx = self.w / 2 + slack * rng.uniform(-0.8, 0.8)
        cy = self.h / 2 + slack * rng.uniform(-0.8, 0.8)
        angle = rng.uniform(0, 2 * np.pi)
        full = _Frame(cx, cy, radius, angle, lesion.aspect)
        self.lesion_mask = _fill(self.shape, *full.to_px(r * np.cos(theta), r * np.sin(theta)))
        y1, y2, x1, x2 = _crop_box(self.lesion_mask, int(3 * lesion.blur * self.px) + 4)
        self.box = (y1, y2, x1, x2)
        self.local = (y2 - y1, x2 - x1)
        self.frame = _Frame(cx - x1, cy - y1, radius, angle, lesion.aspect)
        self.sub = self.image[:, y1:y2, x1:x2]
        self.mask = self.lesion_mask[y1:y2, x1:x2]
        self.inside = _soft(self.mask, 0.7 * self.px)

    def boundary_px(self, theta, scale=1.0):
        """Crop pixel points at `scale` times the boundary radius at lesion-local angles."""
        r = scale * _radial(theta, self.lesion.amplitudes, self.lesion.phases)
        return self.frame.to_px(r * np.cos(theta), r * np.sin(theta))

    def draw_lesion_body(self):
        lesion, rng = self.lesion, self.rng
        depth = cv2.distanceTransform(self.mask, cv2.DIST_L2, 3)
        depth *= np.float32(1.0 / max(float(depth.max()), 1.0))
        wobble = 0.3 if lesion.diagnosis == "MEL" else 0.15
        depth = np.clip(depth * 1.4 + wobble * _noise(rng, self.local, 12 * self.px), 0, 1)
        ramp = depth * depth * (3 - 2 * depth)
        texture = 1 + (0.04 if lesion.diagnosis in ("BKL", "VASC") else 0.08) * _noise(
            rng, self.local, 6 * self.px)
        texture += 0.04 * _noise(rng, self.local, 1.5 * self.px)
        edge, step = lesion.edge_colour, lesion.centre_colour - lesion.edge_colour
        colour = (edge[:, None, None] + ramp[None] * step[:, None, None]) * texture[None]
        alpha = _soft(self.mask, lesion.blur * self.px) * np.float32(lesion.opacity)
        _paint(self.sub, alpha, colour)

    def region(self, radius_range, max_offset=0.35):
        """A random blob inside the lesion (lesion-local centre, radius, outline) and its
        crop mask."""
        rng = self.structure_rng
        angle, dist = rng.uniform(0, 2 * np.pi), max_offset * math.sqrt(rng.uniform())
        centre = (dist * math.cos(angle), dist * math.sin(angle))
        radius = rng.uniform(*radius_range)
        outline = _random_outline(rng, 0.12)
        return centre, radius, outline, _blob(self.local, self.frame, centre, radius, outline)

    def patch(self, colour, radius_range, strength, max_offset=0.5, blur=3.0):
        """A soft-edged coloured area inside the lesion (colour variation, not an attribute)."""
        *_, mask = self.region(radius_range, max_offset)
        alpha = _soft(mask, blur * self.px) * self.inside * np.float32(strength)
        alpha *= np.clip(1 + 0.3 * _noise(self.rng, self.local, 8 * self.px), 0, 1.3)
        _paint(self.sub, alpha, colour)

    def dots(self, centre, radius, outline, n, size_range, values=(255, 255)):
        """uint8 crop canvas of n filled anti-aliased discs at random points of a blob."""
        rng = self.structure_rng
        canvas = np.zeros(self.local, np.uint8)
        xs, ys = self.frame.to_px(*_points_in_blob(rng, centre, radius, outline, n))
        radii = np.maximum(rng.uniform(*size_range, n) * self.frame.radius, 1.2 * self.px)
        shades = rng.integers(values[0], values[1] + 1, n)
        for x, y, r, s in zip(xs, ys, radii, shades):
            cv2.circle(canvas, (int(round(x * 16)), int(round(y * 16))), int(round(r * 16)),
                       int(s), -1, cv2.LINE_AA, shift=4)
        return canvas

    # -- diagnosis-specific appearance -------------------------------------------------------
    def draw_diagnosis_features(self):
        getattr(self, "_features_" + self.lesion.diagnosis.lower())()

    def _features_mel(self):
        rng = self.structure_rng
        self.patch((0.42, 0.48, 0.60), (0.3, 0.5), rng.uniform(0.6, 0.85))  # blue-grey veil
        self.patch((0.07, 0.05, 0.06), (0.15, 0.35), rng.uniform(0.6, 0.85))  # black blotch
        if rng.uniform() < 0.6:
            self.patch((0.45, 0.50, 0.62), (0.15, 0.3), rng.uniform(0.4, 0.7))
        if rng.uniform() < 0.5:
            self.patch((0.72, 0.32, 0.30), (0.15, 0.3), rng.uniform(0.35, 0.6))  # red area
        if rng.uniform() < 0.4:
            self.patch((0.86, 0.80, 0.80), (0.12, 0.25), rng.uniform(0.45, 0.7))  # regression

    def _features_nv(self):
        if self.structure_rng.uniform() < 0.5:
            self.patch(self.lesion.centre_colour * 0.8, (0.3, 0.5), 0.5, max_offset=0.1, blur=6)

    def _features_bcc(self):
        rng = self.structure_rng
        canvas = np.zeros(self.local, np.uint8)
        for _ in range(rng.integers(2, 5)):
            x, y = self.frame.to_px(*_points_in_blob(rng, (0, 0), 0.7, _ROUND, 1))
            length = self.frame.radius * rng.uniform(0.35, 0.6)
            angle = self.frame.angle + rng.uniform(0, 2 * np.pi)
            self._vessel(canvas, rng, x[0], y[0], angle, length,
                         max(1.0, 2.0 * self.px), 3)
        alpha = _soft(canvas, 0.4 * self.px) * self.inside * np.float32(0.85)
        _paint(self.sub, alpha, (0.70, 0.08, 0.14))
        for _ in range(rng.integers(0, 3)):  # blue-grey ovoid nests
            self.patch((0.38, 0.42, 0.55), (0.08, 0.15), rng.uniform(0.6, 0.85), blur=1.5)

    def _vessel(self, canvas, rng, x, y, angle, length, thickness, depth):
        """A branching vessel: a slightly bent segment and two thinner children."""
        bend = angle + rng.normal(0, 0.35)
        mid = (x + 0.5 * length * math.cos(angle), y + 0.5 * length * math.sin(angle))
        end = (mid[0] + 0.5 * length * math.cos(bend), mid[1] + 0.5 * length * math.sin(bend))
        _polyline(canvas, [(x, y), mid, end], thickness)
        if depth > 0:
            for side in (-1, 1):
                self._vessel(canvas, rng, end[0], end[1], bend + side * rng.uniform(0.3, 0.8),
                             length * rng.uniform(0.5, 0.7), thickness * 0.7, depth - 1)

    def _features_akiec(self):
        rng = self.structure_rng
        flakes = np.clip(_noise(rng, self.local, 5 * self.px) - 0.9, 0, 0.6) * np.float32(1 / 0.6)
        _paint(self.sub, flakes * self.inside * np.float32(0.75), (0.95, 0.90, 0.80))
        centre, radius, outline, _ = self.region((0.5, 0.8), 0.2)
        red = self.dots(centre, radius, outline, int(rng.integers(15, 40)), (0.015, 0.03))
        _paint(self.sub, _soft(red, 0.5 * self.px) * self.inside * np.float32(0.8),
               (0.72, 0.12, 0.16))

    def _features_bkl(self):
        rng = self.structure_rng
        field = _noise(rng, self.local, 9 * self.px)
        ridges = np.clip(1 - np.abs(field) * np.float32(1 / 0.12), 0, 1)
        _paint(self.sub, ridges * self.inside * np.float32(0.35), self.lesion.centre_colour * 0.6)
        _paint(self.sub, self.inside * np.float32(0.08), (0.86, 0.74, 0.52))  # waxy sheen

    def _features_df(self):
        pass  # the central white patch goes on top of the structures: _late_features_df

    def _features_vasc(self):
        rng = self.structure_rng
        for colour in ((0.62, 0.07, 0.16), (0.42, 0.10, 0.33), (0.30, 0.05, 0.16)):
            lobes = self.dots((0, 0), 0.75, _ROUND, int(rng.integers(2, 6)), (0.15, 0.3),
                              values=(170, 255))
            _paint(self.sub, _soft(lobes, 1.5 * self.px) * self.inside * np.float32(0.9), colour)

    def draw_late_features(self):
        if self.lesion.diagnosis == "DF":
            self.patch((0.94, 0.90, 0.87), (0.35, 0.55), 0.88, max_offset=0.12, blur=3.5)

    # -- Task 2 structures -------------------------------------------------------------------
    def draw_attributes(self):
        for name in self.lesion.attributes:
            mask = getattr(self, "_attribute_" + name)()
            self.attribute_masks[name] = np.minimum(mask, self.mask)

    def _network(self, radius_range, cell_range):
        """Region crop mask and a soft honeycomb line map [0, 1] inside it.

        cell_range: mesh width in pixels at 256 px (a physical size, whatever the lesion's)."""
        rng = self.structure_rng
        centre, radius, outline, mask = self.region(radius_range)
        cell = rng.uniform(*cell_range) * self.px / self.frame.radius
        extent = radius * 1.7
        grid = np.arange(-extent, extent + 1e-9, cell)
        us, vs = np.meshgrid(centre[0] + grid, centre[1] + grid)
        us = us.ravel() + rng.uniform(-0.35, 0.35, us.size) * cell
        vs = vs.ravel() + rng.uniform(-0.35, 0.35, vs.size) * cell
        lines = np.zeros(self.local, np.float32)
        box = _crop_box(mask, int(4 * self.px) + 2)
        if box is None:
            return mask, lines
        y1, y2, x1, x2 = box
        xs, ys = self.frame.to_px(us, vs)
        edges = _voronoi_edges((y2 - y1, x2 - x1), xs - x1, ys - y1)
        if self.px > 1.5:
            k = int(round(self.px))
            edges = cv2.dilate(edges, np.ones((k, k), np.uint8))
        lines[y1:y2, x1:x2] = cv2.GaussianBlur(edges.astype(np.float32), (0, 0), 0.7 * self.px)
        lines *= _soft(mask, 2 * self.px) * self.inside
        lines *= np.clip(1.1 + 0.4 * _noise(self.rng, self.local, 6 * self.px), 0.3, 1.5)
        return mask, np.minimum(lines, 1)

    def _attribute_pigment_network(self):
        mask, lines = self._network((0.5, 1.0), (5.0, 7.5))
        strength = np.float32(self.structure_rng.uniform(0.35, 0.55))
        self.sub *= (1 - strength * lines)[None]
        return mask

    def _attribute_negative_network(self):
        mask, lines = self._network((0.3, 0.6), (7.0, 10.0))
        cells = _soft(mask, 2 * self.px) * self.inside * (1 - lines)
        self.sub *= (1 - np.float32(0.35) * cells)[None]
        _paint(self.sub, lines * np.float32(0.7), (0.88, 0.80, 0.72))
        return mask

    def _attribute_streaks(self):
        rng = self.structure_rng
        start, width = rng.uniform(0, 2 * np.pi), rng.uniform(0.8, 2.2)
        canvas = np.zeros(self.local, np.uint8)
        n = int(width / rng.uniform(0.10, 0.16)) + 1
        for theta in start + np.linspace(0, width, n) + rng.normal(0, 0.03, n):
            xs, ys = self.boundary_px(np.array([theta, theta]),
                                      np.array([rng.uniform(0.55, 0.72), 0.99]))
            _polyline(canvas, np.stack([xs, ys], -1), 1.2 * self.px)
            if rng.uniform() < 0.5:  # bulbous tip (pseudopod)
                cv2.circle(canvas, (int(round(xs[1] * 16)), int(round(ys[1] * 16))),
                           int(16 * 1.2 * self.px), 255, -1, cv2.LINE_AA, shift=4)
        alpha = _soft(canvas, 0.5 * self.px) * self.inside * np.float32(0.75)
        _paint(self.sub, alpha, (0.22, 0.13, 0.09))
        theta = np.linspace(start - 0.05, start + width + 0.05, 48)
        outer, inner = self.boundary_px(theta, 1.0), self.boundary_px(theta[::-1], 0.5)
        return _fill(self.local, np.concatenate([outer[0], inner[0]]),
                     np.concatenate([outer[1], inner[1]]))

    def _attribute_milia_like_cyst(self):
        centre, radius, outline, mask = self.region((0.25, 0.5), 0.45)
        n = int(self.structure_rng.integers(4, 12))
        canvas = self.dots(centre, radius, outline, n, (0.03, 0.05))
        alpha = _soft(canvas, 0.6 * self.px) * self.inside * np.float32(0.9)
        _paint(self.sub, alpha, (0.97, 0.95, 0.84))
        return mask

    def _attribute_globules(self):
        centre, radius, outline, mask = self.region((0.3, 0.6), 0.4)
        n = int(self.structure_rng.integers(8, 25))
        canvas = self.dots(centre, radius, outline, n, (0.035, 0.07), values=(170, 255))
        alpha = _soft(canvas, 0.5 * self.px) * self.inside * np.float32(0.9)
        _paint(self.sub, alpha, (0.22, 0.12, 0.08))
        return mask

    # -- the photograph ----------------------------------------------------------------------
    def draw_hairs(self):
        """Dark curved hairs anywhere in the field; they occlude but are not lesion."""
        rng = self.rng
        if rng.uniform() < 0.35:
            return
        canvas = np.zeros(self.shape, np.uint8)
        m = min(self.shape)
        t = np.linspace(0, 1, 24)[:, None]
        for _ in range(int(min(rng.geometric(0.3), 10))):
            p0 = np.array([rng.uniform(-0.1, 1.1) * self.w, rng.uniform(-0.1, 1.1) * self.h])
            angle, length = rng.uniform(0, 2 * np.pi), rng.uniform(0.3, 1.2) * m
            direction = np.array([math.cos(angle), math.sin(angle)])
            p2 = p0 + length * direction
            p1 = (p0 + p2) / 2 + rng.normal(0, 0.25) * length * direction[::-1] * (-1, 1)
            curve = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t ** 2 * p2
            _polyline(canvas, curve, rng.uniform(0.8, 2.0) * self.px)
        ys, xs = np.nonzero(canvas)
        alpha = canvas[ys, xs].astype(np.float32) * np.float32(rng.uniform(0.75, 0.95) / 255)
        colour = np.array([0.10, 0.07, 0.05], np.float32) * np.float32(rng.uniform(0.6, 1.6))
        for c in range(3):
            plane = self.image[c]
            plane[ys, xs] += alpha * (colour[c] - plane[ys, xs])

    def draw_optics(self):
        """Dermatoscope field: fall-off towards the rim and, usually, a dark circular vignette.

        Ground truth is cut to the visible field (what an annotator could see)."""
        rng = self.rng
        cx = self.w / 2 + rng.normal(0, 0.03) * self.w
        cy = self.h / 2 + rng.normal(0, 0.03) * self.h
        yy = ((np.arange(self.h, dtype=np.float32) - cy) ** 2)[:, None]
        xx = ((np.arange(self.w, dtype=np.float32) - cx) ** 2)[None, :]
        dist = np.sqrt(yy + xx)
        half_diagonal = 0.5 * math.hypot(self.h, self.w)
        vignette = rng.uniform() < 0.7
        field_radius = (rng.uniform(0.72, 1.0) if vignette else 1.5) * half_diagonal
        softness = rng.uniform(0.01, 0.03) * min(self.shape) + 1
        visible = np.clip((np.float32(field_radius) - dist) * np.float32(1 / softness) + 0.5, 0, 1)
        ratio = np.minimum(dist * np.float32(1 / field_radius), 1)
        ratio *= ratio
        factor = (1 - np.float32(rng.uniform(0.05, 0.3)) * ratio * ratio) * visible
        self.image *= factor[None]
        if vignette:
            keep = np.zeros(self.shape, np.uint8)
            cv2.circle(keep, (int(round(cx * 16)), int(round(cy * 16))),
                       int(round(field_radius * 16)), 255, -1, cv2.LINE_8, shift=4)
            self.lesion_mask = np.minimum(self.lesion_mask, keep)
            y1, y2, x1, x2 = self.box
            for name, mask in self.attribute_masks.items():
                self.attribute_masks[name] = np.minimum(mask, keep[y1:y2, x1:x2])
        self.black_level = rng.uniform(2, 10)

    def finish(self):
        """RGB uint8 [H, W, 3]: white balance, sensor grain, slight optical blur."""
        rng = self.rng
        balance = rng.uniform(0.95, 1.05, 3).astype(np.float32)
        grain = (rng.random(self.shape, dtype=np.float32) - np.float32(0.5)) * np.float32(0.05)
        image = cv2.merge([self.image[c] * balance[c] + grain for c in range(3)])
        image = cv2.GaussianBlur(image, (0, 0), 0.5 * self.px)
        return cv2.convertScaleAbs(image, alpha=255, beta=self.black_level)

    def full_masks(self):
        """All five attribute masks at full image size (empty for absent attributes)."""
        y1, y2, x1, x2 = self.box
        out = {}
        for name in layout.ATTRIBUTES:
            out[name] = np.zeros(self.shape, np.uint8)
            if name in self.attribute_masks:
                out[name][y1:y2, x1:x2] = self.attribute_masks[name]
        return out


def _render(lesion, view_rng, shape):
    """Draw one photograph of `lesion`: (RGB uint8 image, lesion mask, attribute masks)."""
    scene = _Scene(lesion, view_rng, shape)
    scene.draw_skin()
    scene.place_lesion()
    scene.draw_lesion_body()
    scene.draw_diagnosis_features()
    scene.draw_attributes()
    scene.draw_late_features()
    scene.draw_hairs()
    scene.draw_optics()
    image = scene.finish()
    return image, scene.lesion_mask, scene.full_masks()


def _shape_of(size):
    if isinstance(size, (int, np.integer)):
        size = (size, size)
    try:
        h, w = (int(s) for s in size)
    except (TypeError, ValueError):
        raise ValueError(f"image size must be an int or (height, width), got {size!r}") from None
    if h < MIN_SIDE or w < MIN_SIDE:
        raise ValueError(f"image size must be at least {MIN_SIDE}x{MIN_SIDE}, got {h}x{w}")
    return h, w


def render_sample(rng, size=DEFAULT_IMAGE_SIZE, diagnosis=None, attributes=None):
    """One synthetic dermoscopy image with its ground truth, in memory.

    rng: numpy Generator (drives everything; same state, same output).
    size: int or (height, width).
    diagnosis: one of layout.DIAGNOSES, or None to draw one with HAM10000 frequencies.
    attributes: names from layout.ATTRIBUTES to draw (exactly these), or None to draw them
        with the diagnosis' probabilities (ATTRIBUTE_PROBABILITY).
    Returns (image RGB uint8 [H, W, 3], lesion mask uint8 [H, W] in {0, 255},
    {attribute: mask uint8 [H, W] in {0, 255}} for all five attributes, diagnosis).
    """
    shape = _shape_of(size)
    lesion = _sample_lesion(rng, diagnosis, attributes)
    image, lesion_mask, masks = _render(lesion, rng, shape)
    return image, lesion_mask, masks, lesion.diagnosis


############################################################
#  Writing a dataset
############################################################

def _write_atomic(path, data):
    """Write bytes through a temporary file in the same folder, then rename over `path`
    (regenerable cache files: no fsync)."""
    with atomic.atomic_open(path, "wb", durable=False) as f:
        f.write(data)


def _encode_jpeg(image_rgb):
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise RuntimeError("OpenCV could not encode a JPEG")
    return buf.tobytes()


def _encode_png(mask):
    ok, buf = cv2.imencode(".png", mask, [cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESSION])
    if not ok:
        raise RuntimeError("OpenCV could not encode a PNG")
    return buf.tobytes()


class _Writer:
    """Writes files under the dataset root atomically and records them for the manifest."""

    def __init__(self, root):
        self.root = root
        self.files = {}
        self._empty_png = {}

    def write(self, relpath, data):
        path = self.root / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(path, data)
        self.files[relpath] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}

    def write_mask(self, relpath, mask):
        if mask.any():
            self.write(relpath, _encode_png(mask))
        else:
            if mask.shape not in self._empty_png:
                self._empty_png[mask.shape] = _encode_png(mask)
            self.write(relpath, self._empty_png[mask.shape])


def _shuffled(rng, counts):
    """A list of diagnoses with the given counts, in random order."""
    labels = [dx for dx in layout.DIAGNOSES for _ in range(counts[dx])]
    return [labels[i] for i in rng.permutation(len(labels))]


def _task3_lesions(seed, total):
    """[(lesion index, diagnosis, number of images)] and the shuffled (lesion, view) order."""
    rng = np.random.default_rng([seed, 3, 1])
    lesions = []
    for dx, n in diagnosis_counts(total).items():
        pairs = int(round(0.15 * n)) if n >= 4 else 0
        lesions += [(dx, 2)] * pairs + [(dx, 1)] * (n - 2 * pairs)
    lesions = [lesions[i] for i in rng.permutation(len(lesions))]
    views = [(j, k) for j, (_, n) in enumerate(lesions) for k in range(n)]
    views = [views[i] for i in rng.permutation(len(views))]
    return lesions, views


def _check_params(count, task3_count, seed):
    if not isinstance(count, (int, np.integer)) or count < 1:
        raise ValueError(f"count must be a positive integer, got {count!r}")
    if count > TASK3_FIRST_ID - TASK12_FIRST_ID:
        raise ValueError(f"count must be <= {TASK3_FIRST_ID - TASK12_FIRST_ID} so that Task 1/2 "
                         f"ids stay below the Task 3 ids, got {count}")
    most = 10 ** 7 - TASK3_FIRST_ID  # ids have 7 digits
    if not isinstance(task3_count, (int, np.integer)) or not 0 <= task3_count <= most:
        raise ValueError(f"task3_count must be an integer in [0, {most}], got {task3_count!r}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")


def generate_dataset(root, count=DEFAULT_COUNT, image_size=DEFAULT_IMAGE_SIZE, seed=DEFAULT_SEED,
                     task3_count=None, progress=True):
    """Write a complete synthetic dataset in the official ISIC 2018 layout under `root`.

    count: Task 1/2 images (ids from ISIC_0000000). task3_count: Task 3 images (ids from
    ISIC_0024306), default `count`. image_size: int or (height, width) of every image.
    The same arguments always give byte-identical files. Files are written atomically and
    MANIFEST_NAME last, so a folder with a valid manifest is complete.
    Returns a summary dict (counts per class and attribute, files, timing).
    """
    shape = _shape_of(image_size)
    task3_count = count if task3_count is None else task3_count
    _check_params(count, task3_count, seed)
    root = pathlib.Path(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / MANIFEST_NAME).unlink(missing_ok=True)
    writer = _Writer(root)
    started = time.perf_counter()
    render_seconds = 0.0
    task12_dirs = [layout.TASK12_INPUT_DIR.format(split=SPLIT), layout.TASK1_GT_DIR.format(split=SPLIT),
                   layout.task2_gt_dir(SPLIT)]
    task3_input = layout.TASK3_INPUT_DIR.format(split=SPLIT)
    attribute_counts = dict.fromkeys(layout.ATTRIBUTES, 0)
    without_attributes = 0
    task12_dx = _shuffled(np.random.default_rng([seed, 3, 0]), diagnosis_counts(count))
    lesions, views = _task3_lesions(seed, task3_count)
    lesion_specs = {}
    rows, metadata = [], []
    with tqdm(total=count + task3_count, desc="synthetic ISIC 2018", unit="img",
              disable=not progress) as bar:
        for i, dx in enumerate(task12_dx):
            image_id = f"ISIC_{TASK12_FIRST_ID + i:07d}"
            rng = np.random.default_rng([seed, 0, i])
            tic = time.perf_counter()
            image, lesion_mask, masks = _render(_sample_lesion(rng, dx), rng, shape)
            render_seconds += time.perf_counter() - tic
            writer.write(f"{task12_dirs[0]}/{image_id}.jpg", _encode_jpeg(image))
            writer.write_mask(f"{task12_dirs[1]}/{layout.segmentation_name(image_id)}", lesion_mask)
            present = 0
            for name, mask in masks.items():
                writer.write_mask(f"{task12_dirs[2]}/{layout.attribute_name(image_id, name)}", mask)
                if mask.any():
                    attribute_counts[name] += 1
                    present += 1
            without_attributes += present == 0
            bar.update()
        for i, (j, k) in enumerate(views):
            image_id = f"ISIC_{TASK3_FIRST_ID + i:07d}"
            dx = lesions[j][0]
            if j not in lesion_specs:
                lesion_specs[j] = _sample_lesion(np.random.default_rng([seed, 1, j]), dx)
            tic = time.perf_counter()
            image, lesion_mask, _ = _render(lesion_specs[j], np.random.default_rng([seed, 2, j, k]),
                                            shape)
            render_seconds += time.perf_counter() - tic
            writer.write(f"{task3_input}/{image_id}.jpg", _encode_jpeg(image))
            writer.write_mask(f"{layout.HAM10000_MASK_DIR}/{layout.segmentation_name(image_id)}",
                              lesion_mask)
            rows.append([image_id] + ["1.0" if dx == c else "0.0" for c in layout.DIAGNOSES])
            metadata.append((f"HAM_{j:07d}", image_id, dx.lower()))
            bar.update()
    if task3_count:
        csv = ",".join(layout.TASK3_CSV_HEADER) + "\n" + "".join(",".join(r) + "\n" for r in rows)
        gt_dir = layout.TASK3_GT_DIR.format(split=SPLIT)
        writer.write(f"{gt_dir}/{layout.TASK3_GT_CSV.format(split=SPLIT)}", csv.encode())
        meta = "lesion_id,image_id,dx\n" + "".join(",".join(r) + "\n" for r in sorted(metadata))
        writer.write(layout.HAM10000_METADATA_CSV, meta.encode())
    seconds = time.perf_counter() - started
    summary = {
        "generator_version": GENERATOR_VERSION,
        "count": int(count), "task3_count": int(task3_count), "image_size": list(shape),
        "seed": int(seed),
        "task12_diagnosis_counts": diagnosis_counts(count),
        "task3_diagnosis_counts": diagnosis_counts(task3_count),
        "task3_lesions": len(lesions),
        "attribute_counts": attribute_counts,
        "images_without_attributes": int(without_attributes),
    }
    manifest = dict(summary, files=dict(sorted(writer.files.items())))
    writer.write(MANIFEST_NAME, (json.dumps(manifest, indent=1) + "\n").encode())
    images = count + task3_count
    summary.update(root=str(root), files=len(writer.files), seconds=round(seconds, 3),
                   ms_per_image=round(1000 * seconds / images, 2),
                   render_ms_per_image=round(1000 * render_seconds / images, 2))
    log.info("Wrote %d synthetic images (%d Task 1/2, %d Task 3) to %s in %.1f s (%.1f ms/image, "
             "%.1f of them drawing)", images, count, task3_count, root, seconds,
             summary["ms_per_image"], summary["render_ms_per_image"])
    return summary


############################################################
#  The cached default dataset
############################################################

def dataset_folder_name(count, image_size, seed, task3_count=None):
    """The cache folder name, which encodes every parameter and the generator version."""
    h, w = _shape_of(image_size)
    task3_count = count if task3_count is None else task3_count
    return f"isic2018_synthetic_v{GENERATOR_VERSION}_n{count}_t{task3_count}_{h}x{w}_seed{seed}"


def default_cache_dir():
    """$ISIC_SYNTHETIC_DIR if set, else ~/.cache/isic-mrcnn/synthetic."""
    return pathlib.Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR).expanduser()


def is_complete(root, count, image_size, seed, task3_count=None):
    """True when `root` has a manifest for these parameters and every file it lists,
    with the recorded size."""
    root = pathlib.Path(root)
    task3_count = count if task3_count is None else task3_count
    try:
        manifest = json.loads((root / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return False
    expected = {"generator_version": GENERATOR_VERSION, "count": count, "task3_count": task3_count,
                "image_size": list(_shape_of(image_size)), "seed": seed}
    if any(manifest.get(k) != v for k, v in expected.items()):
        return False
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        return False
    for relpath, info in files.items():
        try:
            if (root / relpath).stat().st_size != info["bytes"]:
                return False
        except (OSError, KeyError, TypeError):
            return False
    return True


def ensure_synthetic_dataset(cache_dir=None, count=DEFAULT_COUNT, image_size=DEFAULT_IMAGE_SIZE,
                             seed=DEFAULT_SEED, task3_count=None, progress=True):
    """Path of a complete synthetic dataset for these parameters, generating it only when
    its folder is missing or incomplete (no manifest, a listed file missing or resized).

    cache_dir: parent folder; default `default_cache_dir()`.
    """
    folder = pathlib.Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    root = folder / dataset_folder_name(count, image_size, seed, task3_count)
    if is_complete(root, count, image_size, seed, task3_count):
        log.info("Using the synthetic dataset in %s", root)
        return root
    log.info("Generating the synthetic dataset in %s", root)
    generate_dataset(root, count=count, image_size=image_size, seed=seed,
                     task3_count=task3_count, progress=progress)
    return root


############################################################
#  Command line
############################################################

def _parse_size(text):
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be N or HxW, got {text!r}") from None
    if len(parts) == 1:
        return parts[0], parts[0]
    if len(parts) == 2:
        return tuple(parts)
    raise argparse.ArgumentTypeError(f"size must be N or HxW, got {text!r}")


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m isic.synthetic",
        description="Write a synthetic dermoscopy dataset in the official ISIC 2018 layout.")
    parser.add_argument("out", help="output folder (created; files in it are overwritten)")
    parser.add_argument("--count", type=int, default=DEFAULT_COUNT,
                        help=f"Task 1/2 images (default {DEFAULT_COUNT})")
    parser.add_argument("--task3-count", type=int, default=None,
                        help="Task 3 images (default: the same as --count)")
    parser.add_argument("--size", type=_parse_size, default=DEFAULT_IMAGE_SIZE,
                        help="image size, N (square) or HxW (default 256)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="random seed (default 0)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        summary = generate_dataset(args.out, count=args.count, image_size=args.size, seed=args.seed,
                                   task3_count=args.task3_count, progress=not args.quiet)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=1))
    print(f"Wrote the synthetic dataset to {summary['root']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
