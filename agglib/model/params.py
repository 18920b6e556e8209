"""Model parameters θ = (θ_Df, θ_ρ, θ_0, θ_1) (the particles' laws: :mod:`agglib.model.particles`).

The paper's Table 2 grid (``DF_GRID`` …) lives here too, so that the dataset
builder, the notebooks and the tests share one definition of it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from agglib.core.validation import check_range

#: Fractal prefactor k_f of Eq. (5) and Eq. (8) of the paper [-].
FRACTAL_PREFACTOR = 1.3

#: Two particles are in contact when their centre distance is at most this factor
#: times the sum of their radii (paper Eq. 2).
CONTACT_FACTOR = 1.01

#: The paper's parameter grid (Table 2).
DF_GRID = tuple(round(1.5 + 0.1 * k, 1) for k in range(11))
RHO_GRID = tuple(round(0.1 * k, 1) for k in range(1, 10))
THETA_GRID = (1, 2, 3, 4, 5, 6)

@dataclass(frozen=True)
class ModelParams:
    """Parameters θ of the two-stage hetero-aggregate model (paper §2.1.1).

    Parameters
    ----------
    df : float
        Target fractal dimension θ_Df [-], 1 < df < 3.
    rho : float
        Intended mixing ratio θ_ρ [-], the expected fraction of WO3 (label 0)
        particles, 0 <= rho <= 1.
    theta0 : float
        Size of primary WO3 clusters θ_0 [particles], >= 1. An integer for the
        paper's model; the continuous-size extension (paper §4) takes its mean.
    theta1 : float
        Size of primary TiO2 clusters θ_1 [particles], >= 1.

    Raises
    ------
    ValueError
        If a value lies outside its range; the message names the parameter,
        the value and the accepted range.
    """

    df: float
    rho: float
    theta0: float
    theta1: float

    def __post_init__(self):
        check_range("df", self.df, low=1.0, high=3.0, low_inclusive=False, high_inclusive=False)
        check_range("rho", self.rho, low=0.0, high=1.0)
        check_range("theta0", self.theta0, low=1.0)
        check_range("theta1", self.theta1, low=1.0)
        # store plain Python floats so that equality and JSON round trips are exact
        for name in ("df", "rho", "theta0", "theta1"):
            object.__setattr__(self, name, float(getattr(self, name)))

    @property
    def p_tio2_cluster(self) -> float:
        """Probability that a primary cluster is TiO2 (label 1), paper §2.1.1.

        P(L = 1) = (1 − θ_ρ) θ_0 / ((1 − θ_ρ) θ_0 + θ_ρ θ_1), so that the expected
        fraction of WO3 particles equals θ_ρ.
        """
        num = (1.0 - self.rho) * self.theta0
        return num / (num + self.rho * self.theta1)

    @property
    def has_integer_cluster_sizes(self) -> bool:
        return float(self.theta0).is_integer() and float(self.theta1).is_integer()

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelParams":
        return cls(**{k: d[k] for k in ("df", "rho", "theta0", "theta1")})

    def as_array(self) -> np.ndarray:
        """θ as a float64 array (df, rho, theta0, theta1)."""
        return np.array([self.df, self.rho, self.theta0, self.theta1], dtype=np.float64)

    def __str__(self) -> str:
        return (f"θ(Df={self.df:g}, ρ={self.rho:g}, θ0={self.theta0:g}, "
                f"θ1={self.theta1:g})")


def draw_grid_params(count: int, seed=None, *, df_values=DF_GRID, rho_values=RHO_GRID,
                     theta_values=THETA_GRID) -> list[ModelParams]:
    """``count`` parameter vectors drawn uniformly and independently from the grid (Table 2)."""
    check_range("count", count, low=0, integer=True)
    rng = np.random.default_rng(seed)
    return [ModelParams(float(rng.choice(df_values)), float(rng.choice(rho_values)),
                        int(rng.choice(theta_values)), int(rng.choice(theta_values)))
            for _ in range(int(count))]


def valid_params(df: float, rho: float, theta0: float, theta1: float) -> "ModelParams":
    """The nearest valid θ for the model to an estimate: D_f in [1.05, 2.95], ρ in [0, 1], θ0 and
    θ1 rounded to integers ≥ 1 (digital shadows are drawn from estimates through this)."""
    return ModelParams(float(np.clip(df, 1.05, 2.95)), float(np.clip(rho, 0.0, 1.0)),
                       max(1, int(np.rint(theta0))), max(1, int(np.rint(theta1))))


def params_from_estimate(estimate) -> "ModelParams":
    """:func:`valid_params` of an estimate given as a mapping with keys df, rho, theta0, theta1."""
    return valid_params(estimate["df"], estimate["rho"], estimate["theta0"], estimate["theta1"])
