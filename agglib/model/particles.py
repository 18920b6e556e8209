"""The model's particles: radius laws per material and the law of the aggregate size N.

The paper fixes both (§2.1.1–2.1.2): radii log-normal with mean 12 nm and SD 3 nm for WO3 and
TiO2 alike, N uniform on {20, …, 80}. Real samples differ — the measured TiO2–WO3 particles of
Gerken et al. (2023) have radii near 6 nm and aggregates of 9–657 particles — and the paper says
(§5) that the model must then be adapted. A :class:`ParticleModel` holds those choices as data: a
profile carries one (``particles:`` in a profile file), the dataset builder, the calibration
checks and the digital shadows draw from it, and the paper's is the default everywhere.

A measured law is a *smoothed bootstrap* in log space: a value is one of the measured ones,
multiplied by exp(h Z) with Z standard normal and h Silverman's bandwidth of the log values. It
reproduces the measured distribution (its two-sample KS distance to the measurements is what the
book shows) without inventing radii outside the measured scale.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from agglib.core.validation import check_range

__all__ = ["RadiusDistribution", "ParticleCount", "ParticleModel", "PAPER_PARTICLES", "N_PARTICLES_RANGE",
           "log_bandwidth"]


def log_bandwidth(values) -> float:
    """Silverman's rule-of-thumb bandwidth of ``log(values)`` [-] (0 for fewer than two values)."""
    logs = np.log(np.asarray(values, dtype=np.float64))
    if logs.size < 2:
        return 0.0
    sd = float(np.std(logs, ddof=1))
    iqr = float(np.subtract(*np.percentile(logs, [75, 25]))) / 1.349
    spread = min(sd, iqr) if iqr > 0 else sd
    return 0.9 * spread * logs.size ** -0.2


def _measured(name: str, values, *, integer: bool = False, unit: str = "") -> tuple:
    values = tuple(float(v) for v in values)
    if len(values) < 2:
        raise ValueError(f"{name}: {len(values)} measured value(s); give at least 2")
    for v in values:
        check_range(name, v, low=0.0, low_inclusive=False, integer=integer, unit=unit)
    return tuple(int(v) for v in values) if integer else values


@dataclass(frozen=True)
class RadiusDistribution:
    """Law of the particle radii of one material [nm].

    The paper (§2.1.1) gives "log-normally distributed with parameters μ = 12 nm and σ = 3 nm".
    Parameters of a log-normal law are dimensionless when they are those of log R, so a value in
    nm can only mean the *mean and standard deviation of the radius itself*: E[R] = 12 nm,
    SD[R] = 3 nm. This gives log R ~ Normal(μ_ln, σ_ln) with σ_ln² = ln(1 + (3/12)²) and
    μ_ln = ln 12 − σ_ln²/2, i.e. a geometric mean of 11.642 nm and a geometric standard deviation
    of 1.2792.

    Parameters
    ----------
    mean_nm : float
        Mean radius [nm] of the log-normal law.
    sd_nm : float
        Standard deviation of the radius [nm] of the log-normal law.
    measured_nm : tuple of float, optional
        Measured radii [nm]; when given, radii are drawn from them by a smoothed bootstrap in log
        space (see the module) and ``mean_nm``/``sd_nm`` are their mean and SD (use
        :meth:`from_measured`).
    """

    mean_nm: float = 12.0
    sd_nm: float = 3.0
    measured_nm: tuple = ()

    def __post_init__(self):
        check_range("mean_nm", self.mean_nm, low=0.0, low_inclusive=False, unit="nm")
        check_range("sd_nm", self.sd_nm, low=0.0, unit="nm")
        if self.measured_nm:
            object.__setattr__(self, "measured_nm", _measured("measured radius", self.measured_nm, unit="nm"))

    @classmethod
    def from_measured(cls, radii_nm) -> "RadiusDistribution":
        """The smoothed-bootstrap law of measured radii [nm] (at least two, each > 0)."""
        radii = np.asarray(_measured("measured radius", radii_nm, unit="nm"))
        return cls(float(radii.mean()), float(radii.std(ddof=1)), tuple(radii.tolist()))

    @property
    def sigma_ln(self) -> float:
        """Standard deviation of log R of the log-normal law [-]."""
        return math.sqrt(math.log1p((self.sd_nm / self.mean_nm) ** 2))

    @property
    def mu_ln(self) -> float:
        """Mean of log R of the log-normal law [log nm]."""
        return math.log(self.mean_nm) - 0.5 * self.sigma_ln ** 2

    def log_centres(self) -> np.ndarray:
        """Centres of the law in log space [log nm]: μ_ln alone, or the log of each measured radius."""
        if self.measured_nm:
            return np.log(np.asarray(self.measured_nm, dtype=np.float64))
        return np.array([self.mu_ln])

    def log_spread(self) -> float:
        """The normal spread around each centre in log space [-]: σ_ln, or the smoothing bandwidth."""
        return log_bandwidth(self.measured_nm) if self.measured_nm else self.sigma_ln

    def sample(self, rng: np.random.Generator, size) -> np.ndarray:
        """Draw radii [nm] (the aggregation kernel draws the same law particle by particle)."""
        centres = self.log_centres()
        if centres.size == 1:
            return np.exp(rng.normal(centres[0], self.log_spread(), size))
        picked = centres[rng.integers(0, centres.size, size)]
        return np.exp(picked + self.log_spread() * rng.standard_normal(size))

    def to_dict(self) -> dict:
        """``{"mean": …, "sd": …}`` or ``{"measured": […]}`` [nm] (the form of a profile file)."""
        if self.measured_nm:
            return {"measured": list(self.measured_nm)}
        return {"mean": float(self.mean_nm), "sd": float(self.sd_nm)}

    @classmethod
    def from_dict(cls, d, name: str = "radius") -> "RadiusDistribution":
        if isinstance(d, RadiusDistribution):
            return d
        if not isinstance(d, dict) or not (set(d) == {"measured"} or set(d) <= {"mean", "sd"} and d):
            raise ValueError(f"{name}={d!r}; accepted: {{mean: <nm>, sd: <nm>}} or {{measured: [<nm>, …]}}")
        if "measured" in d:
            return cls.from_measured(d["measured"])
        mean, sd = d.get("mean", 12.0), d.get("sd", 3.0)
        check_range("mean", mean, low=0.0, low_inclusive=False, unit="nm")
        check_range("sd", sd, low=0.0, unit="nm")
        return cls(float(mean), float(sd))

    def describe(self) -> str:
        """One line [nm]."""
        kind = f"{len(self.measured_nm)} measured radii, smoothed" if self.measured_nm else "log-normal"
        return f"{kind}: mean {self.mean_nm:.2f} nm, SD {self.sd_nm:.2f} nm"


#: Range of aggregate sizes N of the paper (§2.1.2: uniform on {20, ..., 80}).
N_PARTICLES_RANGE = (20, 80)


@dataclass(frozen=True)
class ParticleCount:
    """Law of the number N of primary particles of an aggregate.

    Parameters
    ----------
    low, high : int
        N uniform on {low, …, high} (the paper: 20, 80).
    measured : tuple of int, optional
        Measured particle counts; when given, N is drawn from them by a smoothed bootstrap in log
        space, rounded and kept within [min, max] of the measurements (``low``/``high`` become
        those; use :meth:`from_measured`).
    """

    low: int = N_PARTICLES_RANGE[0]
    high: int = N_PARTICLES_RANGE[1]
    measured: tuple = ()

    def __post_init__(self):
        if isinstance(self.low, (int, float)) and isinstance(self.high, (int, float)) and self.high < self.low:
            raise ValueError(f"range [{self.low}, {self.high}]: the low end exceeds the high end")
        check_range("n_particles low", self.low, low=1, high=10_000, integer=True)
        check_range("n_particles high", self.high, low=self.low, high=10_000, integer=True)
        object.__setattr__(self, "low", int(self.low))
        object.__setattr__(self, "high", int(self.high))
        if self.measured:
            object.__setattr__(self, "measured", _measured("measured particle count", self.measured, integer=True))

    @classmethod
    def from_measured(cls, counts) -> "ParticleCount":
        """The smoothed-bootstrap law of measured particle counts (at least two, each ≥ 1)."""
        counts = _measured("measured particle count", counts, integer=True)
        return cls(min(counts), max(counts), counts)

    def sample(self, rng: np.random.Generator) -> int:
        """Draw one N."""
        if not self.measured:
            return int(rng.integers(self.low, self.high + 1))
        logs = np.log(np.asarray(self.measured, dtype=np.float64))
        value = math.exp(logs[rng.integers(0, logs.size)] + log_bandwidth(self.measured) * rng.standard_normal())
        return int(min(max(round(value), self.low), self.high))

    def to_dict(self) -> dict:
        """``{"range": [low, high]}`` or ``{"measured": […]}`` (the form of a profile file)."""
        return {"measured": list(self.measured)} if self.measured else {"range": [self.low, self.high]}

    @classmethod
    def from_dict(cls, d, name: str = "n_particles") -> "ParticleCount":
        if isinstance(d, ParticleCount):
            return d
        if isinstance(d, dict) and set(d) == {"measured"}:
            return cls.from_measured(d["measured"])
        if isinstance(d, dict) and set(d) == {"range"} and len(d["range"]) == 2:
            return cls(*d["range"])
        raise ValueError(f"{name}={d!r}; accepted: {{range: [<low>, <high>]}} or {{measured: [<N>, …]}}")

    def describe(self) -> str:
        if self.measured:
            return f"{len(self.measured)} measured counts, smoothed: N {self.low}–{self.high} (median {int(np.median(self.measured))})"
        return f"uniform on {self.low}–{self.high}"


@dataclass(frozen=True)
class ParticleModel:
    """The particles of the model: a radius law per material and the law of N.

    Parameters
    ----------
    radius_wo3 : RadiusDistribution
        Radii of WO3 particles (label 0) [nm].
    radius_tio2 : RadiusDistribution
        Radii of TiO2 particles (label 1) [nm].
    n_particles : ParticleCount
        Particles per aggregate.
    """

    radius_wo3: RadiusDistribution = RadiusDistribution()
    radius_tio2: RadiusDistribution = RadiusDistribution()
    n_particles: ParticleCount = ParticleCount()

    @classmethod
    def same_radii(cls, radii: RadiusDistribution, n_particles: ParticleCount | None = None) -> "ParticleModel":
        """One radius law for both materials (the paper's model has one)."""
        return cls(radii, radii, n_particles or ParticleCount())

    @property
    def is_paper(self) -> bool:
        """Whether these are the paper's particles (stores and estimators of it keep their identity)."""
        return self == PAPER_PARTICLES

    def to_dict(self) -> dict:
        """The form of a profile file's ``particles:`` entry."""
        return {"radius_wo3_nm": self.radius_wo3.to_dict(), "radius_tio2_nm": self.radius_tio2.to_dict(),
                "n_particles": self.n_particles.to_dict()}

    @classmethod
    def from_dict(cls, d) -> "ParticleModel":
        """From :meth:`to_dict`'s form; a missing entry keeps the paper's."""
        if isinstance(d, ParticleModel):
            return d
        if d is None:
            return cls()
        known = {"radius_wo3_nm", "radius_tio2_nm", "n_particles"}
        if not isinstance(d, dict) or set(d) - known:
            raise ValueError(f"particles={d!r}; accepted entries: {sorted(known)}")
        paper = PAPER_PARTICLES.to_dict()
        laws = {}
        for key, kind in (("radius_wo3_nm", RadiusDistribution), ("radius_tio2_nm", RadiusDistribution),
                          ("n_particles", ParticleCount)):
            try:
                laws[key] = kind.from_dict(d.get(key, paper[key]), key)
            except ValueError as err:
                raise ValueError(f"{key}: {err}") from None
        return cls(laws["radius_wo3_nm"], laws["radius_tio2_nm"], laws["n_particles"])

    def describe(self) -> str:
        return (f"WO3 radii {self.radius_wo3.describe()}; TiO2 radii {self.radius_tio2.describe()}; "
                f"N {self.n_particles.describe()}")


#: The paper's particles: radii log-normal, mean 12 nm, SD 3 nm, for both materials; N uniform on 20–80.
PAPER_PARTICLES = ParticleModel()
