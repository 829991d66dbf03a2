"""The embedded data set: synthetic B-mode breast-ultrasound images with masses that follow BI-RADS cues.

Taught in ``book/02_data.md``.

How an image is made (all vectorised numpy/scipy, a few milliseconds at 128 px):

1. **Tissue** (mean echogenicity): a dark gel band, the bright skin line, hypoechoic subcutaneous fat cut into
   lobules by bright Cooper's ligaments, the brighter glandular layer with a patchy texture, thin retromammary
   fat, striated pectoral muscle and, deeper, a rib (bright arc with an acoustic shadow) or the pleural line.
   Layer boundaries are wavy and drawn per patient.
2. **Mass** (benign or malignant images): a hypoechoic region whose shape and surroundings follow the BI-RADS
   lexicon. Benign: oval, wider than tall (parallel to the skin), circumscribed (sharp, smooth margin, thin
   echogenic capsule), sometimes an anechoic cyst, posterior acoustic enhancement. Malignant: irregular,
   microlobulated or spiculated margin, taller than wide (not parallel), indistinct edge with an echogenic
   halo, heterogeneous interior, posterior acoustic shadowing. ``cue_strength`` scales how far each lesion
   moves from a class-neutral shape towards its prototype, so the classes overlap when it is small.
3. **Distractors** in every image, normal ones included: hypoechoic fat lobules, focal hypoechoic areas in
   the gland, small cysts and refractive edge shadows; ``distractor_similarity`` makes them more mass-like.
4. **Image formation**: multiplicative speckle (magnitude of low-pass filtered complex Gaussian noise, i.e.
   Rayleigh amplitude with a grain set by ``speckle_size``), depth attenuation partly undone by the
   time-gain compensation, a Gaussian point-spread function (``blur``, ``resolution``), electronic noise,
   receive gain and log compression to 8 bits. Scanner presets (:data:`SCANNERS`) bundle these settings so
   that domain shift between "scanners" can be simulated.

Every image depends only on ``(seed, i)`` and the knobs: ``make_phantom(10)[:5] == make_phantom(5)``.
Images of one patient (1-3 images, ids ``P0007``) share the lesion (seen in different views) and the tissue.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from functools import lru_cache
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from scipy import fft as sp_fft
from scipy.ndimage import gaussian_filter, gaussian_filter1d

from .formats import Sample

#: Scanner presets: grain of the speckle (x1 = reference), electronic noise (amplitude relative to the
#: display's white level), receive gain, resolution (the PSF width divides by it), residual depth gain left
#: by the time-gain compensation (amplitude factor exp(tgc * depth)), and the displayed dynamic range in dB.
SCANNERS: Dict[str, Dict[str, float]] = {
    "A": dict(speckle_size=1.0, noise=0.012, gain=1.0, resolution=1.0, tgc=0.0, dynamic_range=35.0),
    "B": dict(speckle_size=1.6, noise=0.03, gain=0.8, resolution=0.6, tgc=-0.8, dynamic_range=30.0),
    "C": dict(speckle_size=0.7, noise=0.006, gain=1.25, resolution=1.5, tgc=0.4, dynamic_range=45.0),
}


@dataclass(frozen=True)
class PhantomConfig:
    """Knobs of :func:`make_phantom` (pass them as keyword arguments). Defaults give the standard phantom.

    Attributes
    ----------
    proportions : image-label probabilities (normal, benign, malignant), drawn per patient.
    mass_size : range of a mass's mean radius as a fraction of the image's shorter side.
    contrast : how much darker a solid mass is than gland, 0 (invisible) .. 1 (black).
    speckle : speckle strength, 0 (no speckle) .. 1 (fully developed Rayleigh speckle).
    n_distractors : mean number of mass-like distractors per image (Poisson).
    distractor_similarity : 0 (distractors small and faint) .. 1 (as large and dark as masses, in the gland).
    cue_strength : 0 (benign and malignant masses drawn from the same shapes) .. 1 (textbook cues).
    blur : width of the point-spread function in pixels at 128 px (scaled with the image size).
    gain : overall brightness factor, multiplied with the scanner's gain.
    scanner : a preset name of :data:`SCANNERS` or a mapping overriding some of preset ``"A"``'s entries.
    speckle_size, noise, resolution, tgc, dynamic_range : override the scanner preset's entry when not None.
    images_per_patient : inclusive range of the number of images of one patient.

    Taught in ``book/02_data.md``.
    """

    proportions: Tuple[float, float, float] = (0.2, 0.45, 0.35)
    mass_size: Tuple[float, float] = (0.07, 0.15)
    contrast: float = 0.6
    speckle: float = 1.0
    n_distractors: float = 3.0
    distractor_similarity: float = 0.6
    cue_strength: float = 0.7
    blur: float = 0.7
    gain: float = 1.0
    scanner: Union[str, Mapping[str, float]] = "A"
    speckle_size: Optional[float] = None
    noise: Optional[float] = None
    resolution: Optional[float] = None
    tgc: Optional[float] = None
    dynamic_range: Optional[float] = None
    images_per_patient: Tuple[int, int] = (1, 3)

    def __post_init__(self) -> None:
        p = np.asarray(self.proportions, dtype=float)
        if p.shape != (3,) or np.any(p < 0) or not np.isclose(p.sum(), 1.0):
            raise ValueError(f"proportions must be 3 non-negative numbers summing to 1, got {self.proportions}")
        lo, hi = self.mass_size
        if not 0 < lo <= hi <= 0.3:
            raise ValueError(f"mass_size must satisfy 0 < low <= high <= 0.3, got {self.mass_size}")
        for name in ("contrast", "speckle", "distractor_similarity", "cue_strength"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {getattr(self, name)}")
        if self.n_distractors < 0 or self.blur < 0 or self.gain <= 0:
            raise ValueError("n_distractors and blur must be >= 0 and gain > 0")
        a, b = self.images_per_patient
        if not 1 <= a <= b:
            raise ValueError(f"images_per_patient must satisfy 1 <= low <= high, got {self.images_per_patient}")
        if isinstance(self.scanner, str) and self.scanner not in SCANNERS:
            raise ValueError(f"unknown scanner preset {self.scanner!r}; choose one of {sorted(SCANNERS)} or pass a dict")
        if not isinstance(self.scanner, str):
            unknown = set(self.scanner) - set(SCANNERS["A"])
            if unknown:
                raise ValueError(f"unknown scanner setting(s) {sorted(unknown)}; known: {sorted(SCANNERS['A'])}")
        s = self.scanner_settings()
        if s["speckle_size"] <= 0 or s["resolution"] <= 0 or s["noise"] < 0 or s["dynamic_range"] <= 0 or s["gain"] <= 0:
            raise ValueError(f"invalid scanner settings {s}")

    def scanner_settings(self) -> Dict[str, float]:
        """The effective scanner settings: the preset, then the individual overrides (gain multiplies).
        """
        base = dict(SCANNERS[self.scanner] if isinstance(self.scanner, str) else {**SCANNERS["A"], **self.scanner})
        for key in base:
            value = getattr(self, key, None)
            if value is not None and key != "gain":
                base[key] = float(value)
        base["gain"] = base["gain"] * self.gain
        return base


# --------------------------------------------------------------------------------------------- random fields
@lru_cache(maxsize=256)
def _transfer(h: int, w: int, sy: float, sx: float) -> np.ndarray:
    """Gaussian low-pass transfer function of std (sy, sx) pixels on an h x (w//2+1) real-FFT grid."""
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    return np.exp(-2 * np.pi ** 2 * ((fy * sy) ** 2 + (fx * sx) ** 2)).astype(np.float32)


def _filtered(rng: np.random.Generator, h: int, w: int, sy: float, sx: float) -> np.ndarray:
    """White noise low-pass filtered by a Gaussian of std (sy, sx) pixels (periodic, via real FFTs).

    The white noise is uniform (several times cheaper to draw than Gaussian); the filter sums enough pixels
    that the result is Gaussian for all practical purposes (central limit theorem).
    """
    spectrum = sp_fft.rfft2(rng.random((h, w), dtype=np.float32) - np.float32(0.5))
    return sp_fft.irfft2(spectrum * _transfer(h, w, round(sy, 3), round(sx, 3)), s=(h, w))


def _smooth_field(rng: np.random.Generator, h: int, w: int, sy: float, sx: float) -> np.ndarray:
    """Zero-mean, unit-variance Gaussian random field with correlation lengths (sy, sx) pixels."""
    field = _filtered(rng, h, w, sy, sx)
    return (field - field.mean()) / (field.std() + 1e-12)


def _speckle(rng: np.random.Generator, h: int, w: int, sy: float, sx: float) -> np.ndarray:
    """Rayleigh-distributed amplitude with E[R^2] = 1 and a speckle grain of (sy, sx) pixels.

    The magnitude of a low-pass filtered complex Gaussian field: the envelope of fully developed speckle.
    """
    field = np.hypot(_filtered(rng, h, w, sy, sx), _filtered(rng, h, w, sy, sx))
    return field / np.sqrt(np.mean(field ** 2))


def _wave(rng: np.random.Generator, x: np.ndarray, amplitude: float) -> np.ndarray:
    """A smooth random curve over the columns x in [0, 1], of roughly the given amplitude."""
    out = np.zeros_like(x)
    for k in range(3):
        out += rng.uniform(0.3, 1.0) / (k + 1) * np.sin(2 * np.pi * (rng.uniform(0.4, 1.6) * (k + 1) * x + rng.uniform()))
    return amplitude * out


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


# --------------------------------------------------------------------------------------------- shapes
@dataclass
class _Shape:
    """A star-shaped blob: centre, semi-axes (pixels), tilt, radial harmonics and spicules, edge width."""

    cy: float
    cx: float
    ay: float
    ax: float
    angle: float
    harmonics: Sequence[Tuple[int, float, float]] = ()  # (order, relative amplitude, phase)
    spicules: Sequence[Tuple[float, float, float]] = ()  # (angle, relative length, relative width)
    edge: float = 1.0  # width of the soft margin in pixels

    def extent(self) -> float:
        grow = 1.0 + sum(abs(a) for _, a, _ in self.harmonics) + max([s[1] for s in self.spicules], default=0.0)
        return max(self.ay, self.ax) * grow + 3 * self.edge + 2

    def render(self, h: int, w: int, margin: float = 0.0):
        """Soft mask in [0, 1] (1 inside) and the signed distance past the boundary, on a window around the blob.

        Returns ``(mask, outside, (y0, y1, x0, x1))`` where ``outside`` is the distance past the boundary in
        pixels (negative inside), both of the window's shape; the window reaches ``margin`` pixels further out.
        """
        r = self.extent() + margin
        y0, y1 = max(0, int(self.cy - r)), min(h, int(np.ceil(self.cy + r)) + 1)
        x0, x1 = max(0, int(self.cx - r)), min(w, int(np.ceil(self.cx + r)) + 1)
        dy = np.arange(y0, y1, dtype=np.float32)[:, None] + np.float32(0.5 - self.cy)
        dx = np.arange(x0, x1, dtype=np.float32)[None, :] + np.float32(0.5 - self.cx)
        c, s = np.cos(self.angle), np.sin(self.angle)
        u = (dx * c + dy * s) / self.ax
        v = (-dx * s + dy * c) / self.ay
        rho = np.hypot(u, v)
        theta = np.arctan2(v, u)
        radius = np.ones_like(rho)
        for order, amp, phase in self.harmonics:
            radius += amp * np.cos(order * theta + phase)
        for angle, length, width in self.spicules:
            d = (theta - angle + np.pi) % (2 * np.pi) - np.pi  # angular distance to the spicule
            radius += length * np.exp(-0.5 * (d / width) ** 2)
        scale = np.sqrt(self.ax * self.ay)
        outside = (rho - radius) * scale  # approximately pixels
        return _sigmoid(-outside / max(self.edge, 1e-3) * 2.0), outside, (y0, y1, x0, x1)


# --------------------------------------------------------------------------------------------- patients
def _patient_of(seed: int, n: int, per_patient: Tuple[int, int]) -> List[int]:
    """Patient index of each image 0..n-1; patient p has a size drawn from (seed, p) only."""
    out: List[int] = []
    p = 0
    while len(out) < n:
        size = int(np.random.default_rng([seed, 2, p]).integers(per_patient[0], per_patient[1] + 1))
        out.extend([p] * size)
        p += 1
    return out[:n]


def _patient_traits(seed: int, p: int, cfg: PhantomConfig) -> dict:
    """Everything shared by the images of patient p: label, tissue layout, lesion shape and echo."""
    rng = np.random.default_rng([seed, 0, p])
    t: dict = {"label": int(rng.choice(3, p=np.asarray(cfg.proportions, dtype=float)))}
    t["skin"] = rng.uniform(0.03, 0.05)
    t["fat"] = rng.uniform(0.10, 0.22)
    t["gland"] = rng.uniform(0.30, 0.42)
    t["gland_echo"] = rng.uniform(0.45, 0.75)  # mean backscattered intensity
    t["fat_echo"] = rng.uniform(0.045, 0.08)
    t["rib"] = bool(rng.uniform() < 0.6)
    t["layer_seed"] = int(rng.integers(2 ** 31))
    # lesion: a class-neutral shape moved towards the class prototype by c = cue * U(0.2, 1); small c = atypical
    c = cfg.cue_strength * rng.uniform(0.2, 1.0)
    t["radius"] = rng.uniform(*cfg.mass_size)
    aspect = np.exp(rng.normal(0.0, 0.22))  # width / height of the class-neutral shape
    irregular = rng.uniform(0.03, 0.07)
    orders = np.sort(rng.choice(np.arange(2, 15), size=7, replace=False))
    t["harmonics"] = [(int(k), irregular * rng.uniform(0.4, 1.0) * (2.0 / k) ** 0.5, rng.uniform(0, 2 * np.pi))
                      for k in orders]
    t["spicules"] = []
    t["echo"] = t["gland_echo"] * 10 ** (-2.5 * cfg.contrast * rng.uniform(0.6, 1.0))  # -7.5..-12.5 dB by default
    t["cyst"] = False
    t["heterogeneity"] = 0.3
    t["halo"] = t["capsule"] = 0.0
    t["posterior"] = 0.0
    t["edge"] = 1.2
    if t["label"] == 1:  # benign: oval, parallel, circumscribed, enhancement; sometimes a simple cyst
        aspect *= 1.0 + 0.6 * c
        t["harmonics"] = [(k, a * (1.0 - 0.8 * c), ph) for k, a, ph in t["harmonics"][:3]]
        t["edge"] *= 1.0 - 0.5 * c
        t["capsule"] = 1.2 * c
        t["posterior"] = 2.5 * c
        t["heterogeneity"] *= 1.0 - 0.5 * c
        t["cyst"] = bool(rng.uniform() < 0.35 * c)
        t["tilt"] = rng.normal(0.0, 0.12)
    elif t["label"] == 2:  # malignant: irregular/spiculated, not parallel, halo, shadowing
        aspect /= 1.0 + 0.5 * c
        t["harmonics"] = [(k, a * (1.0 + 2.5 * c), ph) for k, a, ph in t["harmonics"]]
        n_spic = int(rng.integers(0, 1 + int(round(12 * c))))
        t["spicules"] = [(rng.uniform(0, 2 * np.pi), rng.uniform(0.15, 0.5) * c, rng.uniform(0.025, 0.06))
                         for _ in range(n_spic)]
        t["edge"] *= 1.0 + 1.2 * c
        t["halo"] = 2.0 * c * t["gland_echo"]
        t["posterior"] = -min(0.95, 1.3 * c)
        t["heterogeneity"] *= 1.0 + 1.5 * c
        t["tilt"] = rng.normal(0.0, 0.3)
    else:
        t["tilt"] = 0.0
    t["aspect"] = aspect
    return t


# --------------------------------------------------------------------------------------------- rendering
# Echogenicity is a mean backscattered *intensity*; the gland is ~0.6, fat ~0.06, a mass ~0.02 (-15 dB re gland).
_GEL, _A_REF = 0.002, 3.0


def _line(echo: np.ndarray, depth: np.ndarray, strength: float, width: float, columns=slice(None)) -> None:
    """Add a bright line following depth(x) (pixels, per column) to echo, touching only the rows it covers."""
    h = echo.shape[0]
    d = depth[columns]
    if d.size == 0:
        return
    r0 = max(0, int(np.floor(d.min() - 4 * width)))
    r1 = min(h, int(np.ceil(d.max() + 4 * width)) + 1)
    if r1 <= r0:
        return
    y = np.arange(r0, r1, dtype=np.float32)[:, None] + 0.5
    echo[r0:r1, columns] += strength * np.exp(-0.5 * ((y - d[None, :]) / width) ** 2)


def _tissue(rng: np.random.Generator, t: dict, h: int, w: int, scale: float):
    """Mean echogenicity of the layered breast, and the layer depths (pixels) per column."""
    x = (np.arange(w, dtype=np.float32) + 0.5) / w
    y = (np.arange(h, dtype=np.float32) + 0.5)[:, None]
    lrng = np.random.default_rng(t["layer_seed"])  # layer geometry shared by the patient's images
    shift = rng.uniform(-0.03, 0.03)  # the probe moves a little between views
    skin = (t["skin"] + 0.004 * np.sin(2 * np.pi * (x + lrng.uniform()))) * h
    fat_bottom = skin + (t["fat"] + _wave(lrng, x + shift, 0.035)) * h
    gland_bottom = fat_bottom + (t["gland"] + _wave(lrng, x + shift, 0.045)) * h
    muscle_top = gland_bottom + lrng.uniform(0.02, 0.05) * h
    muscle_bottom = muscle_top + lrng.uniform(0.08, 0.12) * h
    lobules = _smooth_field(rng, h, w, 4 * scale, 8 * scale)
    coarse = _smooth_field(rng, h, w, 2.5 * scale, 6 * scale)
    fine = _smooth_field(rng, h, w, 1.0 * scale, 2.5 * scale)
    fat = t["fat_echo"] * np.exp(0.5 * np.tanh(lobules)) + 0.5 * np.exp(-(lobules / 0.15) ** 2)  # + ligaments
    gland = t["gland_echo"] * np.exp(1.1 * np.tanh(1.4 * coarse + 0.8 * fine))
    muscle = 0.1 * np.exp(0.7 * np.sin(2 * np.pi * (y / (3.2 * scale) + 0.5 * coarse)))
    deep = 0.03 * np.exp(0.5 * fine)
    layer = ((y >= skin) + (y >= fat_bottom).astype(np.int8) + (y >= gland_bottom) + (y >= muscle_top)
             + (y >= muscle_bottom)).astype(np.int8)
    echo = np.choose(layer, [np.float32(_GEL), fat, gland, np.float32(t["fat_echo"] * 0.8), muscle, deep])
    echo = echo.astype(np.float32)
    _line(echo, skin, 3.0, 0.8 * scale)
    _line(echo, skin + 1.8 * scale, 1.0, 0.6 * scale)
    _line(echo, muscle_top, 0.5, 0.8 * scale)
    if t["rib"]:  # a rib: bright curved surface, strong acoustic shadow below
        xr = lrng.uniform(0.25, 0.75) + shift
        half = lrng.uniform(0.08, 0.16)
        arc = muscle_bottom + (lrng.uniform(0.01, 0.03) + 1.2 * (x - xr) ** 2) * h
        inside = _sigmoid((half - np.abs(x - xr)) * w / (1.5 * scale))
        cols = np.flatnonzero(inside > 0.02)
        if len(cols):
            c0, c1 = cols[0], cols[-1] + 1
            under = _sigmoid((y - arc[None, c0:c1] - 1.5 * scale) / (1.0 * scale))
            echo[:, c0:c1] *= 1 - 0.97 * inside[None, c0:c1] * under
            _line(echo, arc, 2.5, 1.2 * scale, slice(c0, c1))
    pleura = muscle_bottom + 0.03 * h
    _line(echo, pleura, 0.8, 1.0 * scale)  # pleural line and one faint reverberation
    _line(echo, pleura + 0.07 * h, 0.12, 1.2 * scale)
    return echo, {"skin": skin, "fat_bottom": fat_bottom, "gland_bottom": gland_bottom}


def _posterior(echo: np.ndarray, mask: np.ndarray, window, strength: float, soften: float) -> None:
    """Scale the tissue below a blob by 1 + strength (enhancement > 0, shadowing < 0), fading with depth."""
    h, w = echo.shape
    y0, y1, x0, x1 = window
    inside = mask >= 0.5
    has = inside.any(axis=0)
    if not has.any():
        return
    pad = int(np.ceil(3 * soften))
    cx0, cx1 = max(0, x0 - pad), min(w, x1 + pad)
    profile = np.zeros(cx1 - cx0, np.float32)
    profile[x0 - cx0:x1 - cx0] = mask.max(axis=0)
    if soften > 0:
        profile = gaussian_filter1d(profile, soften, mode="constant")
    last = (y0 + mask.shape[0] - np.argmax(inside[::-1], axis=0)).astype(np.float32)  # edge under the blob
    bottom = np.full(cx1 - cx0, last[has].mean(), np.float32)
    bottom[x0 - cx0:x1 - cx0] = np.where(has, last, bottom[x0 - cx0:x1 - cx0])
    dist = np.arange(h, dtype=np.float32)[:, None] + 0.5 - bottom[None, :]
    fade = _sigmoid(dist / 1.2) * np.exp(-np.clip(dist, 0, None) / (0.45 * h))
    echo[:, cx0:cx1] *= 1.0 + strength * profile[None, :] * fade


def _apply_blob(echo: np.ndarray, shape: _Shape, level: float, heterogeneity: float, rng: np.random.Generator,
                posterior: float = 0.0, halo: float = 0.0, capsule: float = 0.0, scale: float = 1.0):
    """Replace tissue by a (hypo)echoic blob with margin features and a posterior effect.

    Returns the blob's soft mask on its window and the window ``(y0, y1, x0, x1)``.
    """
    h, w = echo.shape
    size = np.sqrt(shape.ax * shape.ay)
    mask, outside, window = shape.render(h, w, margin=size if halo > 0 else 0.0)  # room for the halo
    y0, y1, x0, x1 = window
    win = echo[y0:y1, x0:x1]
    inner = np.full(win.shape, level, np.float32)
    if heterogeneity > 0:
        inner *= np.exp(heterogeneity * _smooth_field(rng, y1 - y0, x1 - x0, 1.5 * scale, 1.5 * scale))
    win = win * (1 - mask) + inner * mask
    if halo > 0:  # thick, blurred echogenic rim just outside the margin
        win = win + halo * np.exp(-0.5 * ((outside - 0.3 * size) / (0.2 * size)) ** 2) * (outside > 0)
    if capsule > 0:  # thin echogenic capsule on the margin
        win = win + capsule * np.exp(-0.5 * (outside / (0.6 * scale)) ** 2)
    echo[y0:y1, x0:x1] = win
    if posterior != 0:
        _posterior(echo, mask, window, posterior, soften=1.5 * scale)
    return mask, window


def _distractors(rng: np.random.Generator, echo: np.ndarray, t: dict, cfg: PhantomConfig, layers: dict, avoid,
                 scale: float, count: int) -> None:
    """Mass-like structures that are not masses: fat lobules, focal hypoechoic areas, cysts, edge shadows."""
    h, w = echo.shape
    s = cfg.distractor_similarity
    side = min(h, w)
    lo, hi = cfg.mass_size
    for _ in range(count):
        kind = rng.choice(["lobule", "hypo", "cyst", "shadow"], p=[0.3, 0.35, 0.15, 0.2])
        for _attempt in range(8):
            cx = rng.uniform(0.06, 0.94) * w
            col = min(int(cx), w - 1)
            if kind == "lobule":
                top, bottom = layers["skin"][col] + 3 * scale, layers["fat_bottom"][col]
            else:
                top, bottom = layers["fat_bottom"][col], layers["gland_bottom"][col]
            if bottom - top < 3:
                continue
            cy = rng.uniform(top, bottom)
            if avoid is None or not (avoid[0] - 3 < cx < avoid[2] + 3 and avoid[1] - 3 < cy < avoid[3] + 3):
                break
        else:
            continue
        if kind == "shadow":  # refractive edge shadow: a narrow dark column starting at an interface
            width = rng.uniform(0.8, 2.0) * scale
            x = np.arange(w, dtype=np.float32) + 0.5
            column = np.exp(-0.5 * ((x - cx) / width) ** 2)[None, :]
            start = _sigmoid((np.arange(h, dtype=np.float32)[:, None] + 0.5 - cy) / (1.5 * scale))
            echo *= 1 - (0.4 + 0.5 * s) * column * start
            continue
        if kind == "cyst":
            r = side * lo * rng.uniform(0.3, 0.5 + 0.4 * s)
            shape = _Shape(cy, cx, r, r * rng.uniform(1.0, 1.3), 0.0, edge=0.6 * scale)
            _apply_blob(echo, shape, 0.0005, 0.0, rng, posterior=1.0, capsule=0.3, scale=scale)
            continue
        size = side * rng.uniform(lo, hi) * (0.4 + 0.6 * s)
        flat = rng.uniform(0.35, 0.7) if kind == "lobule" else rng.uniform(0.55, 1.0)
        harmonics = [(int(k), rng.uniform(0.02, 0.06 + 0.1 * s), rng.uniform(0, 2 * np.pi))
                     for k in rng.integers(2, 7, 2)]
        shape = _Shape(cy, cx, size * flat, size, rng.normal(0, 0.15), harmonics, edge=rng.uniform(1.0, 2.5) * scale)
        if kind == "lobule":
            level = t["fat_echo"] * 10 ** (-0.5 * s * rng.uniform(0.6, 1.0))
        else:
            level = t["gland_echo"] * 10 ** (-2.5 * cfg.contrast * (0.25 + 0.65 * s) * rng.uniform(0.7, 1.0))
        _apply_blob(echo, shape, level, 0.3, rng, scale=scale)


def _form_image(rng: np.random.Generator, echo: np.ndarray, cfg: PhantomConfig, settings: dict,
                scale: float) -> np.ndarray:
    """Speckle, PSF, attenuation/TGC, noise, gain and log compression: echogenicity -> uint8 B-mode."""
    h, w = echo.shape
    grain = settings["speckle_size"] * scale
    rayleigh = _speckle(rng, h, w, 0.45 * grain, 0.9 * grain)
    amplitude = np.sqrt(np.clip(echo, 0, None)) * ((1.0 - cfg.speckle) + cfg.speckle * rayleigh)
    psf = cfg.blur * scale / settings["resolution"]
    if psf > 0:
        amplitude = gaussian_filter(amplitude, (0.6 * psf, 1.0 * psf), mode="nearest")
    depth = (np.arange(h, dtype=np.float32)[:, None] + 0.5) / h
    amplitude = amplitude * np.exp(settings["tgc"] * depth)
    noise = np.sqrt(-np.log1p(-rng.random((h, w), dtype=np.float32)))  # Rayleigh, E[noise^2] = 1
    signal = settings["gain"] * amplitude / _A_REF + settings["noise"] * noise
    image = 1.0 + 20.0 * np.log10(np.maximum(signal, 1e-6)) / settings["dynamic_range"]
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)


def _render(seed: int, i: int, traits: dict, cfg: PhantomConfig, settings: dict, h: int, w: int):
    rng = np.random.default_rng([seed, 1, i])
    scale = min(h, w) / 128.0
    echo, layers = _tissue(rng, traits, h, w, scale)
    label = traits["label"]
    box = None
    if label > 0:
        side = min(h, w)
        r = traits["radius"] * side * np.exp(rng.normal(0.0, 0.06))  # the same lesion, seen in another view
        ax = r * np.sqrt(traits["aspect"])
        ay = r / np.sqrt(traits["aspect"])
        reach = max(ax, ay) * 1.35 + 2
        cx = rng.uniform(reach, w - reach) if w > 2 * reach else w / 2
        col = min(max(int(cx), 0), w - 1)
        top = max(layers["fat_bottom"][col] + 0.3 * ay, 0.15 * h + ay)
        bottom = min(layers["gland_bottom"][col] - 0.3 * ay, 0.68 * h - ay)
        cy = rng.uniform(top, bottom) if bottom > top else (top + bottom) / 2
        cy = float(np.clip(cy, reach, h - reach)) if h > 2 * reach else h / 2
        shape = _Shape(cy, cx, ay, ax, traits["tilt"] + rng.normal(0, 0.05), traits["harmonics"],
                       traits["spicules"], edge=traits["edge"] * scale)
        level = traits["echo"] if not traits["cyst"] else 0.0005
        mask, (y0, y1, x0, x1) = _apply_blob(echo, shape, level, traits["heterogeneity"], rng,
                                             posterior=traits["posterior"], halo=traits["halo"],
                                             capsule=traits["capsule"], scale=scale)
        inside = mask >= 0.5
        rows, cols = np.flatnonzero(inside.any(axis=1)), np.flatnonzero(inside.any(axis=0))
        if len(rows) == 0:  # a mass too small to reach 0.5 anywhere: take its peak pixel
            yy, xx = np.unravel_index(np.argmax(mask), mask.shape)
            rows, cols = np.array([yy]), np.array([xx])
        box = (float(x0 + cols[0]), float(y0 + rows[0]), float(x0 + cols[-1] + 1), float(y0 + rows[-1] + 1))
    count = int(rng.poisson(cfg.n_distractors))
    _distractors(rng, echo, traits, cfg, layers, box, scale, count)
    return _form_image(rng, echo, cfg, settings, scale), box


def make_phantom(n: int, seed: int = 0, size: Union[int, Tuple[int, int]] = 128, **knobs) -> List[Sample]:
    """Make ``n`` synthetic breast-ultrasound images with boxed masses (the embedded data set).

    Parameters
    ----------
    n : number of images.
    seed : the data set's seed; image ``i`` depends only on ``(seed, i)`` and the knobs, so a shorter data set is a
        prefix of a longer one.
    size : image side in pixels, or ``(height, width)``; at least 32.
    **knobs : the fields of :class:`PhantomConfig` (class ``proportions``, ``mass_size``, ``contrast``,
        ``speckle``, ``n_distractors``, ``distractor_similarity``, ``cue_strength``, ``blur``, ``gain``,
        ``scanner`` and its overrides, ``images_per_patient``).

    Returns
    -------
    list of strong :class:`Sample`: ``uint8`` grayscale images, one box per benign/malignant image (tight around
    the mass, pixel edges) and none for normal images; ids ``"ph<seed>-<i:05d>"``, patients ``"P0007"``.

    Examples
    --------
    >>> train = make_phantom(200, seed=0)
    >>> other_scanner = make_phantom(50, seed=1, scanner="B")

    Notes
    -----
    Taught in ``book/02_data.md``.
    """
    if int(n) != n or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    h, w = (int(size), int(size)) if np.isscalar(size) else (int(size[0]), int(size[1]))
    if min(h, w) < 32:
        raise ValueError(f"size must be at least 32 pixels, got {size!r}")
    known = {f.name for f in fields(PhantomConfig)}
    unknown = set(knobs) - known
    if unknown:
        raise TypeError(f"make_phantom() got unknown knob(s) {sorted(unknown)}; known knobs: {sorted(known)}")
    cfg = PhantomConfig(**knobs)
    settings = cfg.scanner_settings()
    patients = _patient_of(seed, int(n), cfg.images_per_patient)
    traits: Dict[int, dict] = {}
    samples = []
    for i, p in enumerate(patients):
        if p not in traits:
            traits[p] = _patient_traits(seed, p, cfg)
        t = traits[p]
        image, box = _render(seed, i, t, cfg, settings, h, w)
        if box is None:
            boxes, labels = np.zeros((0, 4), np.float32), np.zeros(0, np.int64)
        else:
            boxes, labels = np.asarray([box], np.float32), np.asarray([t["label"]], np.int64)
        samples.append(Sample(image, boxes, labels, t["label"], f"ph{seed}-{i:05d}", f"P{p:04d}"))
    return samples
