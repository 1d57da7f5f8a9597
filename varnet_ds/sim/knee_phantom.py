"""Procedural coronal knee phantom (proton density, with and without fat suppression).

Anatomy is built from smooth 2D signed-distance shapes whose size depends on the slice position ``z``
(anterior-posterior, mm; negative = posterior), so a stack of slices sweeps plausibly from the posterior
condyles (gastrocnemius, popliteal vessels, fibula, PCL) through the notch (ACL, menisci, collateral
ligaments) to the patella and its tendons. Local coordinates: ``u`` lateral (+) / medial (-), ``v`` superior
(+), in mm, joint line at ``v = 0``. Every volume draws its own size, pose, joint space, fat, effusion, ...
Dtype rules as in :mod:`varnet_ds.sim.phantom_shapes` (float32 images, no ``np.float64`` scalars, transcendental
functions of arrays in float64).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Tuple

import numpy as np

from varnet_ds.sim.phantom_shapes import (
    Canvas,
    ap_factor,
    capsule,
    cos32,
    ellipse,
    exp32,
    inside,
    ramp,
    sigmoid_profile,
    sin32,
    smin,
    smooth_noise,
    tanh32,
)

CONTRASTS = ("PD", "PDFS")

# relative signal of each tissue in proton density (PD) and fat-suppressed PD (PDFS) turbo spin echo
TISSUE_SIGNAL: Dict[str, Tuple[float, float]] = {
    "skin": (0.50, 0.22),
    "fat": (0.92, 0.08),
    "muscle": (0.34, 0.28),
    "marrow": (0.80, 0.10),
    "cortex": (0.025, 0.02),
    "cartilage": (0.58, 0.50),
    "fluid": (0.70, 1.00),
    "meniscus": (0.045, 0.04),
    "ligament": (0.06, 0.05),
    "acl": (0.30, 0.26),
    "artery": (0.03, 0.03),
    "vein": (0.42, 0.38),
    "scar": (0.40, 0.05),
    "edema": (0.55, 0.65),
}


@dataclass(frozen=True)
class KneeParams:
    """Per-volume random anatomy and pose (all lengths in mm, angles in rad)."""

    scale: float
    shift: Tuple[float, float]
    angle: float
    mirror: int  # +1: lateral side on +x (right knee), -1: left knee
    cartilage: float
    film: float  # fluid film between the cartilage layers
    fat: float  # subcutaneous fat thickness
    leg: float  # leg width factor
    condyle: float  # condyle radius
    notch: float  # intercondylar notch half width
    valgus: float
    effusion: float  # 0 (none) .. 1 (large)
    baker: bool  # popliteal (Baker's) cyst
    bruise: Tuple[float, float, float, float]  # (u, v, z, radius); radius 0 = none
    z_span: Tuple[float, float]  # slice positions covered by the volume
    texture_seed: int

    @property
    def gap(self) -> float:
        """Bone-to-bone joint space (two cartilage layers and the fluid film)."""
        return 2 * self.cartilage + self.film


def sample_knee_params(rng: np.random.Generator) -> KneeParams:
    """Draw the anatomy and pose of one knee volume."""
    span = rng.uniform(55.0, 75.0)
    centre = rng.uniform(-8.0, 6.0)
    bruise_r = rng.uniform(6.0, 14.0) if rng.uniform() < 0.2 else 0.0
    return KneeParams(
        scale=float(rng.uniform(0.88, 1.12)),
        shift=(float(rng.uniform(-8, 8)), float(rng.uniform(-12, 12))),
        angle=math.radians(rng.uniform(-7, 7)),
        mirror=int(rng.choice([-1, 1])),
        cartilage=float(rng.uniform(1.8, 2.8)),
        film=float(rng.uniform(0.4, 1.2)),
        fat=float(rng.uniform(4.0, 14.0)),
        leg=float(rng.uniform(0.92, 1.08)),
        condyle=float(rng.uniform(20.0, 24.0)),
        notch=float(rng.uniform(8.0, 11.0)),
        valgus=math.radians(rng.uniform(-3, 4)),
        effusion=float(rng.uniform(0.0, 1.0) ** 2),
        baker=bool(rng.uniform() < 0.25),
        bruise=(float(rng.choice([-1, 1]) * rng.uniform(10, 28)), float(rng.choice([1, -1]) * rng.uniform(8, 25)),
                float(rng.uniform(-15, 15)), float(bruise_r)),
        z_span=(centre - span / 2, centre + span / 2),
        texture_seed=int(rng.integers(0, 2**31 - 1)),
    )


# ---------------------------------------------------------------------------------------------- the slice
# muscle bellies: (centre u, centre v, half width, half height, tilt deg, AP centre, AP half extent)
MUSCLES = (
    (-30, 74, 27, 56, 8, 8, 38),  # vastus medialis
    (33, 94, 23, 66, -5, 6, 36),  # vastus lateralis
    (0, 125, 22, 55, 0, 22, 25),  # vastus intermedius / rectus femoris
    (-44, 62, 13, 70, 4, -24, 20),  # semimembranosus / sartorius / gracilis
    (43, 62, 12, 72, -4, -24, 20),  # biceps femoris
    (-23, -62, 19, 66, -6, -26, 26),  # gastrocnemius, medial head
    (23, -66, 17, 64, 6, -26, 26),  # gastrocnemius, lateral head
    (2, -36, 28, 8, -22, -20, 11),  # popliteus
    (0, -115, 34, 52, 0, -18, 22),  # soleus
    (32, -88, 12, 56, -4, 14, 20),  # tibialis anterior
    (44, -84, 10, 56, -3, 0, 22),  # peroneus / extensor digitorum
)
BIG = 400.0  # "infinite" extent in mm (the grid clips it)


def knee_slice(p: KneeParams, x: np.ndarray, y: np.ndarray, z: float, contrast: str, pixel_mm: float,
               slice_index: int = 0) -> np.ndarray:
    """Render one coronal slice.

    Args:
        p: volume parameters.
        x: ``[1, W]`` column coordinates (mm) of the (fine) grid.
        y: ``[H, 1]`` row coordinates (mm, up = superior).
        z: slice position (mm, anterior > 0).
        contrast: ``"PD"`` or ``"PDFS"``.
        pixel_mm: grid pixel size (anti-aliasing width).
        slice_index: index used to seed the per-slice texture.

    Returns:
        ``[H, W]`` float32 magnitude image (about 0..1).
    """
    if contrast not in CONTRASTS:
        raise ValueError(f"knee contrast must be one of {CONTRASTS}, got {contrast!r}")
    sig = {k: np.float32(val[CONTRASTS.index(contrast)]) for k, val in TISSUE_SIGNAL.items()}
    rng = np.random.default_rng([p.texture_seed, slice_index])
    cv = Canvas(x, y, pixel_mm, p.shift, p.angle, p.scale, p.mirror)
    w, g2, shape = cv.w, p.gap / 2, cv.shape
    _soft_tissue(cv, p, z, sig, rng)

    # joint fluid: film in the joint space, gutters, suprapatellar recess, Baker's cyst
    plateau = 38.0 * max(0.55, ap_factor(z, -2.0, 34.0))
    k = plateau / 38.0
    if ap_factor(z, -4.0, 32.0) > 0 and ap_factor(z, -6.0, 34.0) + ap_factor(z, 4.0, 24.0) > 0:
        cv.paint(lambda u, v: np.maximum(np.abs(v) - np.float32(g2), np.abs(u) - np.float32(plateau - 2)),
                 sig["fluid"], (-plateau, plateau, -g2 - 1, g2 + 1))
    e = p.effusion
    if e > 0.25 and z < 26:
        for side in (-1, 1):
            cu_, cv_, a, b = side * (plateau + 3), g2 + 10, 1.2 + 1.5 * e, 3 + 7 * e
            cv.paint(lambda u, v, c=(cu_, cv_, a, b): ellipse(u, v, *c), sig["fluid"],
                 (cu_ - a, cu_ + a, cv_ - b, cv_ + b))
        if z > 10:
            a, b = 25 + 10 * e, 2 + 8 * e
            cv.paint(lambda u, v: ellipse(u, v, 0, g2 + 62, a, b), sig["fluid"], (-a, a, g2 + 62 - b, g2 + 62 + b))
    if p.baker and z < -24:
        b = 12 * ap_factor(z, -34, 12) + 0.1
        cv.paint(lambda u, v: ellipse(u, v, -22, g2 + 18, 7, b), sig["fluid"], (-29, -15, g2 + 18 - b, g2 + 18 + b))

    # bones: signal-void cortex around fatty marrow with a subtle trabecular pattern
    tex_a = smooth_noise(rng, shape, (0.45 / w, 0.45 / w))
    tex_b = smooth_noise(rng, shape, (3.0 / w, 3.0 / w))
    trabeculae = exp32(-((tex_a / 0.3) ** 2)) * (0.6 + 0.4 * ramp(tex_b, -1.0, 1.0))
    marrow = sig["marrow"] * (1 - 0.13 * trabeculae) * (1 + 0.04 * tex_b)
    if contrast == "PDFS":  # fat suppression degrades away from the isocentre
        marrow = marrow * (1 + 0.8 * (cv.v / 120) ** 2)

    def bone(dist, box, cortex, scar_v=None):
        win, u, v = cv.local(box)
        if u.size == 0:
            return None
        d = dist(u, v)
        cv.blend(win, inside(d, w), sig["cortex"])
        m = marrow[win]
        if scar_v is not None:  # epiphyseal scar
            line = exp32(-(((v - scar_v - 2.0 * sin32(u / 7) - 1.0 * sin32(u / 3.1)) / 0.5) ** 2))
            m = m + (sig["scar"] - m) * line * 0.5
        if p.bruise[3] > 0 and ap_factor(z, p.bruise[2], p.bruise[3]) > 0:
            b = np.float32(ap_factor(z, p.bruise[2], p.bruise[3]))
            ed = exp32(-(((u - p.bruise[0]) ** 2 + (v - p.bruise[1]) ** 2) / (np.float32(p.bruise[3]) * b) ** 2))
            m = m + (sig["edema"] - m) * ed * b
        cv.blend(win, inside(d + cortex(u, v), w), m)
        return win, d

    # fibula (lateral, posterior half)
    ff = ap_factor(z, -18.0, 15.0)
    uh = 35.0 * k
    if ff > 0:
        bone(lambda u, v: smin(ellipse(u, v, uh, -34 - g2, 8.5 * ff + 0.5, 9.5 * ff + 0.5),
                               capsule(u, v, (uh + 1, -40 - g2), (uh + 6, -BIG), 5.5 * ff + 0.3), 4.0),
             (uh - 10, uh + 20, -BIG, -20 - g2), lambda u, v: np.float32(1.2))
    # tibia: plateau with concave compartments and the tibial spines, flaring into the shaft
    ft = ap_factor(z, -4.0, 32.0)
    if ft > 0:
        shaft = 15.0 * (0.15 + 0.85 * ap_factor(z, 2.0, 22.0))
        spine = 6.0 * ap_factor(z, 0.0, 12.0)
        tan_v = np.float32(math.tan(p.valgus))

        def d_tib(u, v):
            hw = sigmoid_profile(-v, shaft, 39.0 * k * max(ft, 0.45), 40.0, 9.0)
            au = np.abs(u)
            top = -g2 - 1.2 * exp32(-(((au - 21) / 10) ** 2)) + spine * exp32(-(((au - 5) / 3) ** 2))
            return np.maximum(np.abs(u - v * tan_v) - hw, v - top)

        out = bone(d_tib, (-45, 45, -BIG, -g2 + 8), lambda u, v: np.clip(0.8 + (-v - 30) / 10, 0.8, 4.5),
                   scar_v=-g2 - 19)
        if out is not None:
            win, d = out
            u, v = cv.u[win], cv.v[win]
            cart = inside(np.maximum(d - np.float32(p.cartilage), -d), w) * ramp(np.abs(u), 8, 10) \
                * ramp(v, -g2 - 4, -g2 - 2)
            cv.blend(win, cart, sig["cartilage"])
        # menisci: triangular wedges on the peripheral plateau, thick outer rim, thin inner edge
        fm = ap_factor(z, -4.0, 30.0)
        if fm > 0:
            outer, inner, height = plateau + 1.0, plateau - 8.0 - 5.0 * fm, 5.5 * fm + 1.0
            slope = height / (outer - inner)
            norm = np.float32(math.hypot(1, slope))

            def d_men(u, v):
                au = np.abs(u)
                return np.maximum.reduce([au - np.float32(outer), -g2 - 0.3 - v,
                                          (v + g2 - (au - np.float32(inner)) * np.float32(slope)) / norm])

            cv.paint(d_men, sig["meniscus"], (-outer - 1, outer + 1, -g2 - 1, -g2 + height + 1))
    # femur: condyles + distal metaphysis + shaft, minus the intercondylar notch
    fc, fb, fs = ap_factor(z, -6.0, 34.0), ap_factor(z, 4.0, 24.0), ap_factor(z, 6.0, 22.0)
    vb = g2 + 14
    if fc > 0 or fb > 0:
        a, b = p.condyle * (0.55 + 0.45 * fc), p.condyle * 1.05 * (0.6 + 0.4 * fc)
        nh = 22.0 + 30.0 * float(np.clip((-z - 10) / 14, 0, 1))
        notch_w = p.notch * (0.7 + 0.3 * fc)

        def d_fem(u, v):
            hw = sigmoid_profile(v, 15.0 * fs, 40.0 * fb, vb + 32.0, 9.0)
            d = np.maximum(np.abs(u) - hw, np.float32(vb) - v)
            if fc > 0:
                for cu_, sc in ((-21.0, 1.04), (20.0, 1.0)):
                    d = smin(d, ellipse(u, v, cu_ * (0.8 + 0.2 * fc), g2 + b * sc, a * sc, b * sc), 6.0)
            if z < 18:
                d = np.maximum(d, -ellipse(u, v, 0.0, g2, notch_w, nh))
            return d

        out = bone(d_fem, (-50, 50, g2 - 1, BIG), lambda u, v: np.clip(0.8 + (v - 40) / 10, 0.8, 4.0), scar_v=g2 + 24)
        if out is not None:
            win, d = out
            u, v = cv.u[win], cv.v[win]
            cart = inside(np.maximum(d - np.float32(p.cartilage), -d), w)
            cart = cart * ramp(np.float32(g2 + b * (0.9 + 0.6 * (z < -12))) - v, 0, 3)
            if z < 18:
                cart = cart * ramp(ellipse(u, v, 0.0, g2, notch_w, nh), 0.5, 1.5)
            cv.blend(win, cart, sig["cartilage"])
    # patella with its cartilage, quadriceps and patellar tendons (anterior slices)
    fp = ap_factor(z, 40.0, 10.0)  # anterior to the femur (which ends at z = 28)
    vp = g2 + 32
    if fp > 0:
        if z < 38:  # retropatellar cartilage is on the posterior surface
            cv.paint(lambda u, v: ellipse(u, v, 0, vp, 23 * fp + 2.0, 25 * fp + 2.0), sig["cartilage"],
                     (-27, 27, vp - 29, vp + 29), weight=float(np.clip((38 - z) / 3, 0, 1)))
        bone(lambda u, v: ellipse(u, v, 0, vp, 21 * fp + 0.5, 23 * fp + 0.5), (-26, 26, vp - 28, vp + 28),
             lambda u, v: np.float32(1.0))
    if z > 28:  # tendons taper from the patella towards the tibial tuberosity / the quadriceps
        cv.paint(lambda u, v: np.maximum(np.abs(u) - (9.0 + 4.0 * ramp(v, -g2 - 45, vp - 20)),
                                         np.abs(v - (vp - g2 - 63) / 2) - (vp + g2 + 27) / 2),
                 sig["ligament"], (-14, 14, -g2 - 46, vp - 12))
        cv.paint(lambda u, v: np.maximum(np.abs(u) - (8.0 + 6.0 * ramp(-v, -vp - 90, -vp - 30)), vp + 18 - v),
                 sig["ligament"], (-15, 15, vp + 16, BIG))

    # ligaments
    if abs(z) < 14:  # medial collateral ligament hugging the medial joint line
        top_u = -float(sigmoid_profile(np.float32(g2 + 40), 15.0 * fs, 40.0 * fb, vb + 32.0, 9.0)) - 2.0
        bottom_u = -float(sigmoid_profile(np.float32(g2 + 50), 15.0, 39.0 * k, 40.0, 9.0)) - 1.8
        cv.paint(lambda u, v: smin(capsule(u, v, (top_u, g2 + 40), (-plateau - 2.2, 0), 1.1),
                                   capsule(u, v, (-plateau - 2.2, 0), (bottom_u, -g2 - 50), 1.1), 1.0),
                 sig["ligament"], (-plateau - 5, -10, -g2 - 52, g2 + 42))
    if -24 < z < 0:  # lateral collateral ligament to the fibular head
        cv.paint(lambda u, v: capsule(u, v, (plateau + 3, g2 + 28), (uh + 4, -g2 - 30), 1.8), sig["ligament"],
                 (plateau - 2, uh + 8, -g2 - 33, g2 + 31))
    if -8 < z < 14:  # ACL, striated, intermediate signal
        cv.paint(lambda u, v: capsule(u, v, (7, g2 + 16), (-3, -g2 + 1), 2.6),
                 lambda u, v: sig["acl"] * (0.7 + 0.3 * cos32((u + 0.8 * v) * 2.2)), (-7, 11, -g2 - 3, g2 + 20))
    if -26 < z < -6:  # PCL, uniformly dark
        cv.paint(lambda u, v: capsule(u, v, (-7, g2 + 15), (3, -g2 - 10), 3.6), sig["ligament"],
                 (-12, 8, -g2 - 15, g2 + 20))
    if 4 < z < 26:  # iliotibial band
        cv.paint(lambda u, v: capsule(u, v, (plateau + 8, 70), (plateau + 3, -g2 - 14), 0.9), sig["ligament"],
                 (plateau, plateau + 10, -g2 - 16, 72))

    img = cv.img
    # slowly varying tissue heterogeneity and a little fine texture
    img *= 1 + 0.06 * smooth_noise(rng, shape, (25.0 / w, 25.0 / w))
    img *= 1 + 0.02 * smooth_noise(rng, shape, (1.5 / w, 1.5 / w))
    return img


def _soft_tissue(cv: Canvas, p: KneeParams, z: float, sig: Dict[str, np.float32], rng: np.random.Generator) -> None:
    """Skin, subcutaneous fat, deep fat, muscle bellies (with fibre texture) and popliteal vessels."""
    w, shape = cv.w, cv.shape
    fz = 0.72 + 0.28 * ap_factor(z, 0.0, 75.0)
    wobble = smooth_noise(rng, (shape[0], 8), (shape[0] / 24, 2.0))[:, :1] * np.float32(1.5)
    half = np.interp(cv.v.astype(np.float64), [-BIG, -100, -40, 0, 50, 120, BIG],
                     [48, 50, 51, 54, 55, 58, 60]).astype(np.float32)
    half *= np.float32(p.leg * fz)
    d_body = np.maximum(cv.u - half * np.float32(0.97), -cv.u - half * np.float32(1.04)) + wobble
    cv.paint(lambda u, v: d_body, sig["skin"])
    cv.paint(lambda u, v: d_body + 1.6, sig["fat"])
    fat_t = np.float32(p.fat) * (1 + 0.25 * tanh32(-cv.u / 30)) + 1.6
    deep = inside(d_body + fat_t, w)
    fibres = smooth_noise(rng, shape, (22.0 / w, 0.8 / w))
    muscle = sig["muscle"] * (1 + 0.07 * fibres) + (sig["fat"] - sig["muscle"]) * exp32(-((fibres / 0.08) ** 2)) * 0.4
    for cu_, cv_, au, av, tilt, zc, zh in MUSCLES:
        f = ap_factor(z, zc, zh)
        if f <= 0.05:
            continue
        a, b = au * (0.4 + 0.6 * f), av * (0.6 + 0.4 * f)
        r = max(a, b)
        cv.paint(lambda u, v, c=(cu_, cv_, a, b, tilt): ellipse(u, v, *c) + 0.6, muscle,
                 (cu_ - r, cu_ + r, cv_ - r, cv_ + r), weight=deep)
    if z < -22:  # popliteal artery (flow void) and vein
        cv.paint(lambda u, v: capsule(u, v, (-3, BIG), (1, -BIG), 3.0), sig["artery"], (-8, 6, -BIG, BIG))
        cv.paint(lambda u, v: capsule(u, v, (5, BIG), (7, -BIG), 3.8), sig["vein"], (0, 12, -BIG, BIG))
