"""Argument checks that fail with a message naming the value and its accepted range."""

from __future__ import annotations

import math
import numbers


def _interval(low, high, low_inclusive, high_inclusive) -> str:
    left = "[" if low_inclusive else "("
    right = "]" if high_inclusive else ")"
    lo = "-inf" if low is None else f"{low:g}"
    hi = "inf" if high is None else f"{high:g}"
    if low is None:
        left = "("
    if high is None:
        right = ")"
    return f"{left}{lo}, {hi}{right}"


def check_range(name: str, value, *, low=None, high=None, low_inclusive=True,
                high_inclusive=True, integer=False, unit: str = ""):
    """Check that a scalar lies in an interval.

    Parameters
    ----------
    name : str
        Parameter name used in the error message.
    value : number
        Value to check. NaN and infinities are rejected.
    low, high : float or None
        Bounds of the accepted interval (``None`` for unbounded).
    low_inclusive, high_inclusive : bool
        Whether the bounds belong to the interval.
    integer : bool
        Also require an integral value.
    unit : str
        Unit shown after the value in the message, e.g. ``"nm"``.

    Returns
    -------
    value
        The value, unchanged.

    Raises
    ------
    ValueError
        Naming the parameter, the value and the accepted range.
    """
    rng = _interval(low, high, low_inclusive, high_inclusive)
    u = f" {unit}" if unit else ""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name}={value!r} is not a real number; accepted range {rng}{u}")
    v = float(value)
    bad = not math.isfinite(v)
    if not bad and low is not None:
        bad = v < low or (v == low and not low_inclusive)
    if not bad and high is not None:
        bad = v > high or (v == high and not high_inclusive)
    if bad:
        raise ValueError(f"{name}={value!r}{u} is out of range; accepted range {rng}{u}")
    if integer and not v.is_integer():
        raise ValueError(f"{name}={value!r} must be an integer in {rng}{u}")
    return value


def check_image_stack(images, size_px: int, pixel_size_nm: float, what: str = "this estimator"):
    """Images [counts] as a float32 (M, size, size) array, or a ValueError that names the shape
    given, the size and pixel size accepted, and that NaN or infinite values are refused."""
    import numpy as np

    images = np.asarray(images, dtype=np.float32)
    if images.ndim == 2:
        images = images[None]
    if images.ndim != 3 or images.shape[1:] != (size_px, size_px):
        raise ValueError(f"images of shape {images.shape} given; {what} takes (M, {size_px}, {size_px}) "
                         f"images [counts] at {pixel_size_nm} nm/px (resample them first)")
    if not np.all(np.isfinite(images)):
        raise ValueError("images contain NaN or infinite values")
    return images
