"""What the networks learn from an image: where each label comes from and how it is transformed.

One table of label sources and transforms, read by the paper's networks (:mod:`agglib.paper_training`:
their targets and the descriptors their feature extractors pretrain on) and by the image encoder
(:mod:`agglib.encoder`: its heads). A label source is

* ``"descriptor:<name>"`` — a per-aggregate descriptor of the dataset (``df``, ``rho``, ``s_wo3``,
  ``s_tio2``, ``z_hetero``, ``z_total``, ``n_particles``, ``rg`` [nm] …; paper Eqs. 3–5, 17–19);
* ``"homogeneous"`` — 1 where the aggregate holds one material only (ρ(A) ∈ {0, 1}), else 0;
* ``"theta:<index>"`` — the model parameter θ_index of the sample the aggregate was drawn from
  (0: θ_Df, 1: θ_ρ, 2: θ0, 3: θ1).

A descriptor can be undefined for an aggregate — the mean cluster size S of a material the
aggregate lacks. Each method says what it learns there (``absent``): the paper's pretraining
regresses 0 (``"zero"``), the encoder masks the label out of its loss (``"nan"``).
"""

from __future__ import annotations

import numpy as np

__all__ = ["TRANSFORMS", "LOG_FLOOR", "ABSENT", "label_values", "transformed_labels", "to_natural"]

#: Floor of the ``log`` transform (counts and radii are ≥ 1 in every dataset: it only guards log 0).
LOG_FLOOR = 1e-9
#: Transform name → (forward, inverse).
TRANSFORMS = {"identity": (lambda v: v, lambda v: v),
              "log": (lambda v: np.log(np.maximum(v, LOG_FLOOR)), np.exp),
              "log1p": (np.log1p, np.expm1)}
#: What an undefined descriptor becomes: NaN (masked by the loss) or 0.
ABSENT = ("nan", "zero")


def label_values(source: str, theta, descriptors) -> np.ndarray:
    """The untransformed label of every sample (n,) [float64] from θ (n, 4) and a descriptor
    DataFrame; NaN where a descriptor is undefined."""
    kind, _, arg = source.partition(":")
    if kind == "descriptor":
        return descriptors[arg].to_numpy(dtype=np.float64)
    if kind == "homogeneous":
        return np.isin(descriptors["rho"].to_numpy(dtype=np.float64), (0.0, 1.0)).astype(np.float64)
    if kind == "theta":
        return np.asarray(theta, dtype=np.float64)[:, int(arg)]
    raise ValueError(f"label source {source!r}; accepted: 'descriptor:<name>', 'homogeneous', 'theta:<index>'")


def transformed_labels(source: str, transform: str, theta, descriptors, absent: str = "nan") -> np.ndarray:
    """:func:`label_values` with ``transform`` applied (n,) [float64]; undefined values NaN or 0
    (``absent``, before the transform)."""
    if transform not in TRANSFORMS:
        raise ValueError(f"transform {transform!r}; accepted: {', '.join(TRANSFORMS)}")
    if absent not in ABSENT:
        raise ValueError(f"absent={absent!r}; accepted: {', '.join(ABSENT)}")
    v = label_values(source, theta, descriptors)
    if absent == "zero":
        v = np.nan_to_num(v, nan=0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return TRANSFORMS[transform][0](v)


def to_natural(values, transform: str) -> np.ndarray:
    """Transformed labels (or predictions) back in natural units."""
    return TRANSFORMS[transform][1](values)
