"""Numba kernels of the HAADF-STEM renderer (called by :mod:`agglib.stem.render`).

Coordinates are in pixels: pixel (row j, column i) covers [i, i+1) × [j, j+1), so its centre
is (i + ½, j + ½). Thicknesses are in nm.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

__all__ = ["render_particles", "haadf_lookup", "noisy_counts"]

#: Pixels closer than this to a particle's rim [px] are supersampled; deeper ones use their
#: centre (the chord varies slowly there).
RIM_PX = 2.0


@njit(cache=True, inline="always")
def haadf_lookup(curves, slopes, k, t_nm, step_nm):
    """HAADF fraction of curve ``k`` at thickness ``t_nm``: linear interpolation in a table
    with equally spaced thicknesses (0, step, 2·step, …), linear extrapolation beyond."""
    n = curves.shape[1]
    x = t_nm / step_nm
    if x >= n - 1:
        return curves[k, n - 1] + slopes[k] * (t_nm - (n - 1) * step_nm)
    i = int(x)
    f = x - i
    return curves[k, i] * (1.0 - f) + curves[k, i + 1] * f


@njit(cache=True)
def _gaussian_weights(sigma):
    half = int(math.ceil(4.0 * sigma))
    w = np.empty(2 * half + 1)
    total = 0.0
    for k in range(-half, half + 1):
        v = math.exp(-0.5 * (k / sigma) ** 2)
        w[k + half] = v
        total += v
    for k in range(w.size):
        w[k] /= total          # discrete kernel sums to 1: blurring conserves the total
    return w, half


@njit(cache=True)
def render_particles(cx, cy, r_px, sigma_px, curve, channel, curves, slopes, step_nm,
                     pixel_nm, supersample, out, thickness_out, with_thickness=True):
    """Add every particle's blurred HAADF map to ``out[channel]``.

    Parameters
    ----------
    cx, cy : (N,) float
        Projected centres [px].
    r_px : (N,) float
        Radii [px].
    sigma_px : (N,) float
        Defocus blur σ per particle [px] (0 = in focus).
    curve : (N,) int
        Row of ``curves`` (phase × orientation) per particle.
    channel : (N,) int
        Output map per particle (material label).
    curves : (K, T) float
        HAADF fraction vs thickness; ``slopes`` (K,) for extrapolation [1/nm].
    step_nm : float
        Thickness step of ``curves`` [nm].
    pixel_nm : float
        Pixel size [nm].
    supersample : int
        Sub-samples per pixel side for anti-aliasing.
    out : (C, H, W) float64
        Accumulated HAADF fraction per pixel (pixel average).
    thickness_out : (C, H, W) float64
        Accumulated projected thickness [nm] (unblurred); filled only if ``with_thickness``.
    with_thickness : bool
        Also accumulate the thickness maps.

    Returns
    -------
    max_thickness : float
        The largest thickness sampled [nm] (to report extrapolation).
    """
    n_chan, height, width = out.shape
    inv = 1.0 / (supersample * supersample)
    t_max = 0.0
    for p in range(cx.size):
        r = r_px[p]
        r2 = r * r
        if sigma_px[p] > 0.05:
            w, half = _gaussian_weights(sigma_px[p])
        else:
            w = np.ones(1)
            half = 0
        i0 = int(math.floor(cx[p] - r))
        j0 = int(math.floor(cy[p] - r))
        ni = int(math.ceil(cx[p] + r)) - i0
        nj = int(math.ceil(cy[p] + r)) - j0
        # Patch with room for the blur kernel on every side.
        patch = np.zeros((nj + 2 * half, ni + 2 * half))
        # Pixels whose every point is more than RIM_PX inside the rim are smooth: one sample at
        # the centre. Pixels near or across the rim get supersample² samples.
        inner = r - RIM_PX
        inner2 = inner * inner if inner > 0 else -1.0
        outer = r + 0.7072
        outer2 = outer * outer
        for jj in range(nj):
            yc = j0 + jj + 0.5 - cy[p]
            for ii in range(ni):
                xc = i0 + ii + 0.5 - cx[p]
                dc2 = xc * xc + yc * yc
                if dc2 >= outer2:
                    continue
                acc = 0.0
                tacc = 0.0
                if dc2 < inner2:
                    t = 2.0 * math.sqrt(r2 - dc2) * pixel_nm
                    acc = haadf_lookup(curves, slopes, curve[p], t, step_nm)
                    tacc = t
                    if t > t_max:
                        t_max = t
                else:
                    for sj in range(supersample):
                        y = j0 + jj + (sj + 0.5) / supersample - cy[p]
                        for si in range(supersample):
                            x = i0 + ii + (si + 0.5) / supersample - cx[p]
                            d2 = x * x + y * y
                            if d2 < r2:
                                t = 2.0 * math.sqrt(r2 - d2) * pixel_nm
                                acc += haadf_lookup(curves, slopes, curve[p], t, step_nm)
                                tacc += t
                    acc *= inv
                    tacc *= inv
                patch[jj + half, ii + half] = acc
                if with_thickness:
                    j = j0 + jj
                    i = i0 + ii
                    if 0 <= j < height and 0 <= i < width:
                        thickness_out[channel[p], j, i] += tacc
        if half > 0:
            tmp = np.zeros_like(patch)
            for jj in range(patch.shape[0]):           # blur along rows
                for ii in range(half, patch.shape[1] - half):
                    v = patch[jj, ii]
                    if v != 0.0:
                        for k in range(-half, half + 1):
                            tmp[jj, ii + k] += v * w[k + half]
            patch[:, :] = 0.0
            for jj in range(half, tmp.shape[0] - half):  # then along columns
                for ii in range(tmp.shape[1]):
                    v = tmp[jj, ii]
                    if v != 0.0:
                        for k in range(-half, half + 1):
                            patch[jj + k, ii] += v * w[k + half]
        c = channel[p]
        for jj in range(patch.shape[0]):
            j = j0 - half + jj
            if j < 0 or j >= height:
                continue
            for ii in range(patch.shape[1]):
                i = i0 - half + ii
                if 0 <= i < width:
                    out[c, j, i] += patch[jj, ii]
    return t_max


@njit(cache=True)
def noisy_counts(signal, scale, shifts_px, seed, out):
    """Scan noise and shot noise in one pass: ``out[j, i] ~ Poisson(scale · signal(j, i + shift_j))``.

    ``signal`` is the noise-free HAADF fraction per pixel, ``scale`` the electrons per pixel,
    ``shifts_px`` the beam displacement of each scan line [px] (linear interpolation, zero
    outside the image). Rows without signal are skipped. ``seed`` seeds numba's generator, so
    the counts depend only on it.
    """
    np.random.seed(seed)
    height, width = signal.shape
    for j in range(height):
        empty = True
        for i in range(width):
            if signal[j, i] != 0.0:
                empty = False
                break
        if empty:
            continue
        s = shifts_px[j]
        for i in range(width):
            x = i + s
            i0 = int(math.floor(x))
            f = x - i0
            v = 0.0
            if 0 <= i0 < width:
                v += signal[j, i0] * (1.0 - f)
            if 0 <= i0 + 1 < width:
                v += signal[j, i0 + 1] * f
            if v > 0.0:
                out[j, i] = np.random.poisson(v * scale)
