"""A calibrated posterior over θ from any number of images of one sample (neural posterior estimation).

The images of a sample are exchangeable, so the posterior p(θ | I_1 … I_M) is computed from a
permutation-invariant summary of their encoder embeddings (:mod:`agglib.encoder`), DeepSets-style
(Zaheer et al. 2017): each embedding passes through a small network φ, the M results are pooled
by their mean and standard deviation (0 for M = 1) together with log M, and a second network maps
the pooled summary to the posterior. Any M ≥ 1 works.

**The prior and the posterior family.** The posterior is trained on the *continuous* dataset of a
profile (:func:`agglib.dataset.plan.make_plan` with ``design="continuous"``): θ_Df and θ_ρ uniform
over θ_Df ∈ [1.5, 2.5] (the paper's range) and θ_ρ ∈ [0, 1], θ0 and θ1 uniform
on their integers, each configuration drawn anew — so it cannot learn the grid's configurations
by heart, and the encoder never saw its images. Each parameter's marginal posterior is a
categorical distribution over cells (trained with cross-entropy: neural posterior estimation
with a categorical family, Papamakarios & Murray 2016). The discreteness is handled deliberately:

* θ_Df and θ_ρ are continuous: cells of width 0.01, the density uniform within each (a
  histogram density; with wider cells, 0.05 or 0.02, the within-cell uniformity made the central
  intervals of θ_Df over-cover at M = 12 on the quick profile). Point estimate: the posterior mean; intervals: quantiles of this
  piecewise-uniform density.
* θ0 and θ1 are integers: one cell per value; point estimate the posterior mode; credible sets
  are runs of integers. Calibration checks dequantise them (θ + U(−½, ½)), the randomised
  probability integral transform for discrete parameters.

The four marginals are learned, not their joint; joint draws (for digital shadows) take them as
independent.

This needs no flow library: with four parameters on small grids a categorical family is exact
and trains in seconds on cached embeddings (the ``sbi`` package would add ~20 dependencies and
model the integer parameters with a continuous flow).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

__all__ = ["PARAMETERS", "ThetaGrid", "SetPosterior", "PosteriorEstimate", "pit_values", "coverage"]

#: The parameters, in the order of θ.
PARAMETERS = ("df", "rho", "theta0", "theta1")
#: Parameters whose point estimate is the posterior mean (the others: the mode).
CONTINUOUS = ("df", "rho")


@dataclass(frozen=True)
class ThetaGrid:
    """The cells of each parameter over which the posterior is a categorical distribution.

    Parameters
    ----------
    edges : dict
        Parameter name → increasing cell edges (n + 1,): θ_Df [-], θ_ρ [-], θ0 and θ1
        [particles] (integer parameters: cells of width 1 centred on their values).
    """

    edges_: dict

    @classmethod
    def from_profile(cls, profile, bin_width: float = 0.01) -> "ThetaGrid":
        """Cells of ``bin_width`` over the continuous prior of θ_Df and θ_ρ
        (:func:`agglib.dataset.plan.prior_ranges`), unit cells around the values of θ0 and θ1."""
        from agglib.dataset.plan import prior_ranges

        edges = {}
        for name, (lo, hi) in prior_ranges(profile).items():
            n = max(int(round((hi - lo) / bin_width)), 1)
            edges[name] = np.linspace(lo, hi, n + 1).tolist()
        for name, values in (("theta0", profile.theta0_values), ("theta1", profile.theta1_values)):
            lo, hi = int(min(values)), int(max(values))      # every integer in between is a cell
            edges[name] = [lo - 0.5] + [x + 0.5 for x in range(lo, hi + 1)]
        return cls(edges)

    @property
    def values(self) -> dict:
        """Cell centres of each parameter."""
        return {p: ((np.asarray(e[1:]) + np.asarray(e[:-1])) / 2).tolist() for p, e in self.edges_.items()}

    def support(self) -> dict:
        """The prior's support: ``[low, high]`` of θ_Df and θ_ρ, the integer values of θ0 and θ1."""
        out = {p: [float(self.edges(p)[0]), float(self.edges(p)[-1])] for p in CONTINUOUS}
        out.update({p: [int(round(v)) for v in self.values[p]] for p in PARAMETERS if p not in CONTINUOUS})
        return out

    def sizes(self) -> list[int]:
        return [len(self.edges_[p]) - 1 for p in PARAMETERS]

    def edges(self, name: str) -> np.ndarray:
        return np.asarray(self.edges_[name], dtype=np.float64)

    def index(self, theta: np.ndarray) -> np.ndarray:
        """Cell index (n, 4) of each θ (n, 4) (values outside the support go to the outer cells)."""
        theta = np.atleast_2d(np.asarray(theta, dtype=np.float64))
        return np.stack([np.clip(np.searchsorted(self.edges(p), theta[:, k], side="right") - 1, 0,
                                 len(self.edges_[p]) - 2) for k, p in enumerate(PARAMETERS)], axis=1)

    def to_dict(self) -> dict:
        return {p: [float(v) for v in self.edges_[p]] for p in PARAMETERS}


class SetPosterior(nn.Module):
    """Embeddings of M images (B, M, D) with a mask (B, M) → logits of each parameter's grid.

    Permutation-invariant in the M images and defined for any M ≥ 1 (masked entries ignored).

    Parameters
    ----------
    in_dim : int
        Size of one image's embedding.
    grid_sizes : list of int
        Grid values per parameter (θ_Df, θ_ρ, θ0, θ1).
    hidden : int
        Width of φ and of the pooled network.
    """

    def __init__(self, in_dim: int, grid_sizes, hidden: int = 128):
        super().__init__()
        self.register_buffer("shift", torch.zeros(in_dim))
        self.register_buffer("scale", torch.ones(in_dim))
        self.phi = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU())
        self.pooled = nn.Sequential(nn.Linear(2 * hidden + 1, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU())
        self.heads = nn.ModuleList(nn.Linear(hidden, int(n)) for n in grid_sizes)
        # Post-hoc recalibration (Kuleshov et al. 2018): for each parameter and range of M, the
        # map R from the posterior CDF to the empirical CDF of the PIT on held-out configurations,
        # tabulated at RECAL_KNOTS + 1 equidistant points (identity until fitted; see
        # agglib.training.posterior.fit_recalibration).
        knots = torch.linspace(0, 1, RECAL_KNOTS + 1)
        self.register_buffer("recalibration", knots.repeat(len(grid_sizes), len(RECAL_GROUPS), 1))

    def set_standardisation(self, embeddings: np.ndarray) -> None:
        """Standardise inputs by the mean and SD of ``embeddings`` (of T)."""
        sd = embeddings.std(axis=0)
        self.shift.copy_(torch.as_tensor(embeddings.mean(axis=0), dtype=torch.float32))
        self.scale.copy_(torch.as_tensor(np.where(sd > 1e-6, sd, 1.0), dtype=torch.float32))

    def standardise(self, z: torch.Tensor) -> torch.Tensor:
        return (z - self.shift) / self.scale

    def summary(self, z: torch.Tensor, mask: torch.Tensor | None = None, standardised: bool = False) -> torch.Tensor:
        """The pooled summary (B, hidden) of each set."""
        if not standardised:
            z = self.standardise(z)
        if mask is None:
            mask = torch.ones(z.shape[:2], dtype=torch.bool, device=z.device)
        w = mask.to(z.dtype)[..., None]
        n = w.sum(dim=1).clamp(min=1.0)
        h = self.phi(z)
        mean = (h * w).sum(dim=1) / n
        sd = torch.sqrt(((h - mean[:, None]) ** 2 * w).sum(dim=1) / n + 1e-6)
        return self.pooled(torch.cat([mean, sd, torch.log(n)], dim=1))

    def forward(self, z: torch.Tensor, mask: torch.Tensor | None = None, standardised: bool = False) -> list:
        """Logits of each parameter's cells (before recalibration)."""
        s = self.summary(z, mask, standardised)
        return [head(s) for head in self.heads]

    def probabilities(self, z: torch.Tensor, mask: torch.Tensor | None = None, recalibrate: bool = True,
                      standardised: bool = False) -> list:
        """Recalibrated cell probabilities of each parameter, (B, n_k) float64 arrays."""
        probs = [torch.softmax(lg.double(), dim=1).numpy() for lg in self(z, mask, standardised)]
        if not recalibrate:
            return probs
        m = np.full(z.shape[0], z.shape[1]) if mask is None else mask.sum(dim=1).numpy()
        return [recalibrate_probabilities(p, self.recalibration[k].double().numpy(), m) for k, p in enumerate(probs)]


#: Ranges of M with their own recalibration map: M = 1, 2, … 6 each, then [7, 9), [9, 12), [12, 16), [16, ∞).
RECAL_GROUPS = (1, 2, 3, 4, 5, 6, 7, 9, 12, 16)
RECAL_KNOTS = 40


def recal_group(m) -> np.ndarray:
    """Index into :data:`RECAL_GROUPS` of each set size M."""
    return np.searchsorted(np.asarray(RECAL_GROUPS), np.asarray(m), side="right") - 1


def recalibrate_probabilities(prob: np.ndarray, maps: np.ndarray, m) -> np.ndarray:
    """Cell probabilities (S, n) with their CDF passed through the recalibration map of each
    sample's M (``maps``: (groups, knots + 1), values of R at equidistant points of [0, 1])."""
    cum = np.concatenate([np.zeros((prob.shape[0], 1)), np.cumsum(prob, axis=1)], axis=1)
    cum = np.clip(cum / cum[:, -1:], 0.0, 1.0)
    knots = np.linspace(0.0, 1.0, maps.shape[1])
    groups = recal_group(m)
    out = np.empty_like(cum)
    for g in np.unique(groups):
        rows = groups == g
        out[rows] = np.interp(cum[rows], knots, maps[g])
    return np.clip(np.diff(out, axis=1), 0.0, None)


@dataclass
class PosteriorEstimate:
    """The posterior over θ of one or more samples (the output of ``estimate()``).

    Attributes
    ----------
    probabilities : dict
        Parameter → (S, n_k) posterior probabilities of its grid cells, S samples (sets of images).
    grid : ThetaGrid
    n_images : ndarray (S,)
        Images behind each estimate.
    """

    probabilities: dict
    grid: ThetaGrid
    n_images: np.ndarray

    def __len__(self) -> int:
        return int(self.n_images.size)

    def point(self) -> pd.DataFrame:
        """θ̂ per sample: the posterior mean of θ_Df and θ_ρ, the posterior mode of θ0 and θ1."""
        out = {}
        for p in PARAMETERS:
            prob, v = self.probabilities[p], np.asarray(self.grid.values[p])
            out[p] = prob @ v if p in CONTINUOUS else v[prob.argmax(axis=1)]
        return pd.DataFrame(out)

    def mean(self, name: str) -> np.ndarray:
        """Posterior mean (S,) of one parameter."""
        return self.probabilities[name] @ np.asarray(self.grid.values[name])

    def cdf(self, name: str, x) -> np.ndarray:
        """The piecewise-uniform posterior CDF of ``name`` at ``x`` (S,) (or a scalar for all)."""
        prob, e = self.probabilities[name], self.grid.edges(name)
        x = np.broadcast_to(np.asarray(x, dtype=np.float64), (prob.shape[0],))
        within = np.clip((x[:, None] - e[None, :-1]) / (e[1:] - e[:-1])[None], 0.0, 1.0)
        return (prob * within).sum(axis=1)

    def quantile(self, name: str, q: float) -> np.ndarray:
        """The ``q`` quantile (S,) of the piecewise-uniform posterior of ``name``."""
        prob, e = self.probabilities[name], self.grid.edges(name)
        cum = np.concatenate([np.zeros((prob.shape[0], 1)), np.cumsum(prob, axis=1)], axis=1)
        out = np.empty(prob.shape[0])
        for s in range(prob.shape[0]):
            k = int(np.clip(np.searchsorted(cum[s], q, side="left") - 1, 0, prob.shape[1] - 1))
            frac = (q - cum[s, k]) / max(prob[s, k], 1e-12)
            out[s] = e[k] + np.clip(frac, 0.0, 1.0) * (e[k + 1] - e[k])
        return out

    def interval(self, name: str, level: float = 0.9) -> np.ndarray:
        """Central credible interval (S, 2) at ``level``. Integer parameters: the integers whose cells
        the continuous interval touches (a credible set covering at least ``level``)."""
        lo = self.quantile(name, (1 - level) / 2)
        hi = self.quantile(name, (1 + level) / 2)
        if name in CONTINUOUS:
            return np.stack([lo, hi], axis=1)
        return np.stack([np.floor(lo + 0.5), np.ceil(hi - 0.5)], axis=1)

    def table(self, levels=(0.5, 0.9), sample: int = 0) -> pd.DataFrame:
        """One sample's θ̂ with credible intervals, one row per parameter."""
        point = self.point().iloc[sample]
        rows = {}
        for p in PARAMETERS:
            row = {"estimate": float(point[p]), "posterior SD": float(self.sd(p)[sample])}
            for level in levels:
                lo, hi = self.interval(p, level)[sample]
                row[f"{level:.0%} low"], row[f"{level:.0%} high"] = float(lo), float(hi)
            rows[p] = row
        return pd.DataFrame(rows).T

    def sd(self, name: str) -> np.ndarray:
        """Posterior standard deviation (S,) (cells' own width included)."""
        prob, e = self.probabilities[name], self.grid.edges(name)
        centre, width = (e[1:] + e[:-1]) / 2, e[1:] - e[:-1]
        mean = prob @ centre
        second = prob @ (centre ** 2 + width ** 2 / 12)
        return np.sqrt(np.maximum(second - mean ** 2, 0.0))

    def model_params(self, count: int, seed=None, draws: str = "posterior", which: int = 0) -> list:
        """``count`` model parameters for digital shadows of sample ``which``: each drawn from the
        posterior (``draws="posterior"``) or all the point estimate θ̂ (``"point"``)."""
        from agglib.model.params import params_from_estimate, valid_params

        if draws == "point":
            return [params_from_estimate(self.point().iloc[which])] * int(count)
        if draws != "posterior":
            raise ValueError(f"draws={draws!r}; accepted: 'posterior', 'point'")
        return [valid_params(*theta) for theta in self.sample(int(count), seed=seed, which=which)]

    def sample(self, count: int, seed=None, which: int = 0) -> np.ndarray:
        """``count`` draws (count, 4) of θ from sample ``which``'s posterior (marginals independent;
        θ_Df and θ_ρ uniform within their cells, θ0 and θ1 integers)."""
        rng = np.random.default_rng(seed)
        out = np.empty((int(count), 4))
        for k, p in enumerate(PARAMETERS):
            prob = self.probabilities[p][which]
            cell = rng.choice(prob.size, size=int(count), p=prob / prob.sum())
            if p in CONTINUOUS:
                e = self.grid.edges(p)
                out[:, k] = e[cell] + rng.random(int(count)) * (e[cell + 1] - e[cell])
            else:
                out[:, k] = np.asarray(self.grid.values[p])[cell]
        return out


def pit_values(estimate: PosteriorEstimate, theta: np.ndarray, seed=0) -> pd.DataFrame:
    """Probability integral transform of the truth under each posterior (S rows, one column per parameter).

    Integer parameters are dequantised (θ + U(−½, ½), uniform within their unit cell: the randomised
    PIT for discrete parameters), so for θ drawn from the training prior a calibrated posterior gives
    PIT values uniform on [0, 1] — the basis of simulation-based calibration (Talts et al. 2018).
    """
    rng = np.random.default_rng(seed)
    theta = np.atleast_2d(np.asarray(theta, dtype=np.float64))
    out = {}
    for k, p in enumerate(PARAMETERS):
        truth = theta[:, k]
        if p not in CONTINUOUS:
            truth = truth + rng.random(len(theta)) - 0.5
        out[p] = estimate.cdf(p, truth)
    return pd.DataFrame(out)


def coverage(pit: pd.DataFrame, levels=(0.5, 0.9)) -> pd.DataFrame:
    """Share of central credible intervals at each level that contain the truth (from PIT values)."""
    return pd.DataFrame({f"{level:.0%}": (np.abs(pit - 0.5) <= level / 2).mean() for level in levels})
