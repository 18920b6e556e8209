"""Does a sample look like anything the model makes? An out-of-model (misspecification) warning.

The estimators answer for any images they are given — also for images the model Ψ cannot make
(particles of another size, an EDX map mistaken for a HAADF image), where the answer means
nothing. :class:`SummaryReference` compares what the encoder reads from a sample's M images with
what it reads from simulated in-model samples.

**Features.** Per image, the encoder's 13 head outputs (:attr:`agglib.encoder.Encoded.outputs`:
standardised predictions of D_f, ρ, S, R_g, … and θ — what the set-level posterior reads) by
default, or its 128-d embedding (:data:`FEATURES`). ``benchmarks/out_of_model.py`` measured both
with the shipped default estimator (``benchmarks/results/out_of_model.txt``): with the head
outputs every sample of 12 images of half-radius particles and of EDX-like W and Ti maps is
flagged; with the embedding — about half of whose units never fire on in-model images — 78 % of
the W maps and 93 % of the Ti maps.

**Model of in-model features.** The images of one sample share θ and the acquisition, so their
feature vectors x scatter around a sample-specific centre. A Gaussian random-effects model
describes this: x = μ + b + e, with b ~ N(0, Σ_b) shared by the sample's images (between samples)
and e ~ N(0, Σ_w) per image (within a sample). Fitted on simulated configurations:

* μ, the mean of all images;
* Σ_w, the pooled covariance of the images about their configuration's mean, and Σ_m, the
  covariance of the configuration means, each shrunk toward its diagonal with the Ledoit–Wolf-type
  intensity of Schäfer & Strimmer (2005, target "D": variances kept, correlations shrunk;
  :func:`shrunk_covariance`); variances of Σ_w below ``min_variance`` × their mean are raised to it;
* Σ_b = Σ_m − Σ_w · mean(1/n_c) (method of moments, n_c images per configuration), its negative
  eigenvalues (relative to Σ_w) set to 0.

Stored: μ and the matrix T with T Σ_w Tᵀ = I and T Σ_b Tᵀ = diag(λ)
(:attr:`SummaryReference.transform`, :attr:`SummaryReference.between`). With z = T (x − μ) and z̄
the mean of z over the set, the set statistics (:data:`STATISTICS`, all dimensionless) are

``"set_mean"``
    the squared Mahalanobis distance of the set's mean feature vector under its in-model law
    N(μ, Σ_b + Σ_w / M): Σ_k z̄_k² / (λ_k + 1/M). Images that are each a little off in the same
    direction — one in which in-model samples hardly differ, e.g. few particles with a small
    radius of gyration at once — stand out more with every image;
``"mean_d2"``
    the mean over the images of the squared Mahalanobis distance under the total covariance
    Σ_b + Σ_w: mean_i Σ_k z_ik² / (λ_k + 1) — large when the images lie far out one by one or
    scatter more than in-model ones, even around an in-model centre;
``"combined"`` (the default)
    the larger of ``"set_mean"`` and ``"mean_d2"``, each divided by its own ``level`` quantile
    for that M (:attr:`SummaryReference.scales`): a shifted set and a too widely scattered one are
    both caught (``"set_mean"`` alone misses the second, ``"mean_d2"`` alone detects the measured
    out-of-model kinds far less often);
``"mean_vector"``
    M Σ_k z̄_k² / (λ_k + 1), the set mean's distance as if the images were independent.

**Thresholds.** The simulated configurations are split in halves; the model fitted on one half
scores random subsets of M images of one configuration of the other half — and, with
``crossfit`` (the default), the other way round — so no threshold comes from sets the scoring
model was fitted on. For every M = 1 … ``max_images`` the threshold is the ``level`` quantile of
these statistics. A sample whose statistic exceeds the threshold of its M is out of model;
M > ``max_images`` uses the threshold of ``max_images``. At ``level`` = 0.99 about 1 % of in-model
samples like the simulated ones are flagged; the benchmark measures 0–1.7 % on fresh ones
(M = 1, 4, 12, 24; the paper's acquisition and randomised ones).

The reference is plain numbers (:meth:`SummaryReference.to_dict`, JSON-serialisable: D² + 2D +
``max_images`` floats, ~5 kB of JSON for the 13 head outputs, ~330 kB for the 128-d embedding),
made for a checkpoint's metadata. Every trained :class:`agglib.estimate.SampleEstimator` carries one,
fitted on its posterior's training images (:mod:`agglib.sets_training.pipeline`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from agglib.core.validation import check_range

__all__ = ["SummaryReference", "FEATURES", "STATISTICS", "COMBINED_PARTS", "REFERENCE_FORMAT", "shrunk_covariance"]

#: Per-image feature vectors an encoder gives (:class:`agglib.encoder.Encoded`): its 13 head outputs
#: (standardised descriptor and θ predictions, the posterior's inputs; the default) or its 128-d embedding.
FEATURES = ("outputs", "embedding")

#: Set statistics of :class:`SummaryReference` (see the module docstring).
STATISTICS = ("combined", "set_mean", "mean_d2", "mean_vector")

#: The two statistics ``"combined"`` joins, in the order of :attr:`SummaryReference.scales`.
COMBINED_PARTS = ("set_mean", "mean_d2")

#: Written into :meth:`SummaryReference.to_dict`; :meth:`SummaryReference.from_dict` refuses others.
REFERENCE_FORMAT = "agglib-summary-reference/1"


def shrunk_covariance(x: np.ndarray) -> tuple[np.ndarray, float]:
    """Covariance of the rows of ``x`` shrunk toward its diagonal.

    The sample correlations r_ij (i ≠ j) are multiplied by 1 − λ and the variances kept, with
    the estimated optimal λ of Schäfer & Strimmer (2005, target "D"; the Ledoit–Wolf lemma on
    standardised data): λ = Σ_{i≠j} Var(r_ij) / Σ_{i≠j} r_ij², clipped to [0, 1].

    Parameters
    ----------
    x : ndarray (n, D)
        Observations in rows, n ≥ 2.

    Returns
    -------
    (ndarray (D, D), float)
        The shrunk covariance [units of x, squared] and λ. Constant columns get a tiny variance
        (1e-10 × the largest, at least 1e-12) so that the result is positive definite.
    """
    x = np.asarray(x, dtype=np.float64)
    n, d = x.shape
    if n < 2:
        raise ValueError(f"a covariance needs n ≥ 2 observations; got n={n} (accepted range [2, inf))")
    xc = x - x.mean(axis=0)
    var = np.sum(xc ** 2, axis=0) / (n - 1)
    var = np.maximum(var, max(float(var.max()) * 1e-10, 1e-12))
    sd = np.sqrt(var)
    if d == 1:
        return var.reshape(1, 1), 0.0
    z = xc / sd
    cross = z.T @ z                                     # Σ_k z_ki z_kj
    r = cross / (n - 1)
    w_mean = cross / n
    var_r = n / (n - 1) ** 3 * ((z ** 2).T @ (z ** 2) - n * w_mean ** 2)
    off = ~np.eye(d, dtype=bool)
    denom = float(np.sum(r[off] ** 2))
    lam = 1.0 if denom <= 0 else float(np.clip(np.sum(var_r[off]) / denom, 0.0, 1.0))
    shrunk = r * (1.0 - lam)
    np.fill_diagonal(shrunk, 1.0)
    return shrunk * np.outer(sd, sd), lam


def _check_features(features, dim: int | None = None, what: str = "features") -> np.ndarray:
    try:
        x = np.asarray(features, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a numeric array (images, D)") from None
    if x.ndim == 1 and dim is not None and x.size == dim:
        x = x[None]                                     # one image
    if x.ndim != 2:
        raise ValueError(f"{what} must be a 2-D array (images M, features D); got shape {x.shape}")
    if x.shape[0] == 0:
        raise ValueError(f"{what} holds M=0 images; a sample needs M ≥ 1 images (accepted range [1, inf))")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"{what} has D={x.shape[1]} features per image; this reference was fitted on D={dim} "
                         f"(accepted: exactly {dim}; the same kind of features, e.g. the encoder's embedding)")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{what} contains NaN or infinite values")
    return x


@dataclass(frozen=True, eq=False)
class SummaryReference:
    """What in-model samples look like to an encoder: a random-effects Gaussian and per-M thresholds.

    Make one with :meth:`fit`; read one with :meth:`from_dict`.

    Attributes
    ----------
    mean : ndarray (D,)
        Mean feature vector μ of the fitting images.
    transform : ndarray (D, D)
        T with T Σ_w Tᵀ = I and T Σ_b Tᵀ = diag(``between``) (module docstring).
    between : ndarray (D,)
        Between-sample variances λ_k ≥ 0 in the within-whitened coordinates [dimensionless].
    thresholds : ndarray (max_images,)
        ``thresholds[M - 1]``: the ``level`` quantile of the statistic over in-model sets of M images.
    level : float
        Quantile of the thresholds: the target share of in-model samples *not* flagged, in (0, 1).
    statistic : {"combined", "set_mean", "mean_d2", "mean_vector"}
        Set statistic (module docstring).
    scales : ndarray (2, max_images) or None
        For ``"combined"``: the ``level`` quantiles of ``"set_mean"`` and ``"mean_d2"`` per M, by
        which each is divided before their maximum is taken.
    features : str
        Name of the feature vectors (``"embedding"``, ``"outputs"``, or anything); informational.
    info : dict
        How it was fitted: shrinkage intensities, images and configurations of each half, seed.
    """

    mean: np.ndarray
    transform: np.ndarray
    between: np.ndarray
    thresholds: np.ndarray
    level: float
    statistic: str = "combined"
    scales: np.ndarray | None = None
    features: str = ""
    info: dict = field(default_factory=dict)

    def __post_init__(self):
        mean = np.array(self.mean, dtype=np.float64).reshape(-1)          # copies: stored read-only
        transform = np.array(self.transform, dtype=np.float64)
        between = np.array(self.between, dtype=np.float64).reshape(-1)
        thresholds = np.array(self.thresholds, dtype=np.float64).reshape(-1)
        d = mean.size
        if d == 0 or transform.shape != (d, d) or between.shape != (d,):
            raise ValueError(f"mean (D={d}), transform {transform.shape} and between {between.shape} do not "
                             f"match: need D ≥ 1, ({d}, {d}) and ({d},)")
        if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(transform)) and np.all(np.isfinite(between))):
            raise ValueError("mean, transform and between must be finite")
        if np.any(between < 0):
            raise ValueError(f"between variances must be ≥ 0; got min {between.min():g}")
        if thresholds.size == 0 or not np.all(np.isfinite(thresholds)):
            raise ValueError("thresholds must be finite, one per set size M = 1 … max_images (≥ 1 of them)")
        if self.statistic not in STATISTICS:
            raise ValueError(f"statistic={self.statistic!r}; accepted: {', '.join(STATISTICS)}")
        check_range("level", self.level, low=0.0, high=1.0, low_inclusive=False, high_inclusive=False)
        scales = None
        if self.statistic == "combined":
            if self.scales is None:
                raise ValueError("statistic='combined' needs scales (2, max_images)")
            scales = np.array(self.scales, dtype=np.float64)
            if scales.shape != (2, thresholds.size) or not np.all(np.isfinite(scales)) or np.any(scales <= 0):
                raise ValueError(f"scales must be finite and > 0, of shape (2, {thresholds.size}); got {scales.shape}")
        for name, value in (("mean", mean), ("transform", transform), ("between", between),
                            ("thresholds", thresholds), ("scales", scales)):
            if value is not None:
                value.setflags(write=False)
            object.__setattr__(self, name, value)

    # ------------------------------------------------------------------ fitting

    @classmethod
    def fit(cls, features, config_id, seed: int, max_images: int = 24, level: float = 0.99, *,
            statistic: str = "combined", crossfit: bool = True, subsets_per_size: int = 4000,
            min_variance: float = 1e-2, feature_name: str = "") -> "SummaryReference":
        """Fit on per-image feature vectors of in-model images of several configurations.

        Parameters
        ----------
        features : ndarray (n, D)
            One feature vector per image (e.g. ``encoder.encode(images).outputs``).
        config_id : ndarray (n,) of int
            The configuration (sample) of each image: images of one configuration share θ and the
            acquisition. The configurations are split in two halves (drawn with ``seed``): the model
            fitted on one half scores the sets of the other (see ``crossfit``). At least 4
            configurations, with ≥ 2 images each somewhere (the within-sample covariance).
        seed : int
            Seeds the split of the configurations and the subsets.
        max_images : int
            Largest set size M with its own threshold, ≥ 1 (some configuration scored for the
            thresholds must have at least this many images).
        level : float
            Quantile of the thresholds, in (0, 1): about 1 − ``level`` of in-model samples are flagged.
        statistic : {"combined", "set_mean", "mean_d2", "mean_vector"}
            Set statistic (module docstring).
        crossfit : bool
            True: the halves swap roles too (the model of the second half scores the first), the
            thresholds are quantiles over both halves' sets, and the stored μ, T, λ are fitted on
            all configurations — twice the sets for the thresholds, a model from all images, and
            still no threshold from sets scored by a model fitted on them (the model of all
            configurations fits new in-model sets at least as well as a half's: the thresholds err
            on the safe side). False: μ, T, λ from the first half, thresholds from the second.
        subsets_per_size : int
            Random subsets of M images drawn for each M, spread evenly over the scored configurations
            that have ≥ M images (a configuration with exactly M images gives one).
        min_variance : float
            Floor of the within-sample variances, relative to their mean, in [0, 1) (units of an
            embedding that in-model images never use).
        feature_name : str
            Stored as :attr:`features`.

        Returns
        -------
        SummaryReference
        """
        x = _check_features(features)
        cid = np.asarray(config_id).reshape(-1)
        if cid.size != x.shape[0]:
            raise ValueError(f"config_id has {cid.size} entries for {x.shape[0]} feature rows; give one per image")
        if not np.issubdtype(cid.dtype, np.integer):
            raise ValueError(f"config_id must hold integers (one configuration number per image); got {cid.dtype}")
        if statistic not in STATISTICS:
            raise ValueError(f"statistic={statistic!r}; accepted: {', '.join(STATISTICS)}")
        check_range("max_images", max_images, low=1, high=100_000, integer=True)
        check_range("level", level, low=0.0, high=1.0, low_inclusive=False, high_inclusive=False)
        check_range("subsets_per_size", subsets_per_size, low=1, high=10**7, integer=True)
        check_range("min_variance", min_variance, low=0.0, high=1.0, high_inclusive=False)
        max_images = int(max_images)
        configs = np.unique(cid)
        if configs.size < 4:
            raise ValueError(f"features of {configs.size} configuration(s) given; fitting needs at least 4 "
                             "(half for the mean and covariances, half for the thresholds)")
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), 31]))
        order = rng.permutation(configs)
        halves = (order[:configs.size // 2], order[configs.size // 2:])
        groups = {int(c): np.flatnonzero(cid == c) for c in configs}
        largest = max(groups[int(c)].size for h in (halves if crossfit else halves[1:]) for c in h)
        if largest < max_images:
            raise ValueError(f"max_images={max_images}, but the threshold configurations have at most {largest} "
                             f"images; accepted range [1, {largest}] (or simulate more images per configuration)")

        def moments(part):
            return _random_effects(x, [groups[int(c)] for c in part], min_variance)

        # thresholds from the statistic of one half's sets under the model fitted on the other half
        pairs = [(moments(halves[0]), halves[1])]
        if crossfit:
            pairs.append((moments(halves[1]), halves[0]))
        parts = COMBINED_PARTS if statistic == "combined" else (statistic,)
        values = {k: [[] for _ in range(max_images)] for k in parts}
        for (mean, transform, between, _), part in pairs:
            z = (x - mean) @ transform.T
            members = [groups[int(c)] for c in part]
            for m in range(1, max_images + 1):
                eligible = [g for g in members if g.size >= m]
                if not eligible:
                    continue
                per = max(1, -(-subsets_per_size // (len(eligible) * len(pairs))))
                for g in eligible:
                    if m < g.size:                   # `per` random subsets of m of the configuration's images
                        idx = g[np.argsort(rng.random((per, g.size)), axis=1)[:, :m]]
                    else:
                        idx = g[None]
                    for k in parts:
                        values[k][m - 1].append(_set_statistic(k, z[idx], between))
        pooled = {k: [np.concatenate(v) for v in values[k]] for k in parts}
        scales = None
        if statistic == "combined":              # each part in units of its own quantile, then the larger
            scales = np.array([[np.quantile(v, level) for v in pooled[k]] for k in parts])
            pooled = {statistic: [np.maximum(a / s0, b / s1) for a, b, s0, s1
                                  in zip(*(pooled[k] for k in parts), *scales)]}
        thresholds = np.array([float(np.quantile(v, level)) for v in pooled[statistic]])
        mean, transform, between, shrink = moments(order) if crossfit else pairs[0][0]
        info = {"seed": int(seed), "crossfit": bool(crossfit), "min_variance": float(min_variance),
                "shrinkage_within": shrink[0], "shrinkage_means": shrink[1],
                "fit_images": int(sum(groups[int(c)].size for c in (order if crossfit else halves[0]))),
                "configs": int(configs.size), "subsets_per_size": int(subsets_per_size),
                "threshold_sets": [int(v.size) for v in pooled[statistic]]}
        return cls(mean, transform, between, thresholds, float(level), statistic, scales, feature_name, info)

    # ------------------------------------------------------------------ scoring

    @property
    def dim(self) -> int:
        """Features per image D."""
        return int(self.mean.size)

    @property
    def max_images(self) -> int:
        """Largest set size with its own threshold."""
        return int(self.thresholds.size)

    @property
    def precision(self) -> np.ndarray:
        """Inverse of the total covariance Σ_b + Σ_w of one image's features, (D, D)."""
        return self.transform.T @ (self.transform / (self.between + 1.0)[:, None])

    def threshold(self, m: int) -> float:
        """The threshold of a set of ``m`` ≥ 1 images (that of :attr:`max_images` beyond it)."""
        check_range("M", m, low=1, high=None, integer=True)
        return float(self.thresholds[min(int(m), self.max_images) - 1])

    def _whitened(self, features) -> np.ndarray:
        return (_check_features(features, self.dim) - self.mean) @ self.transform.T

    def distances(self, features) -> np.ndarray:
        """Squared Mahalanobis distance of each image's features under the total covariance,
        (M, D) → (M,) [dimensionless; about D on average for in-model images]."""
        z = self._whitened(features)
        return np.sum(z ** 2 / (self.between + 1.0), axis=1)

    def _statistic(self, z: np.ndarray, name: str | None = None) -> float:
        name = name or self.statistic
        if name != "combined":
            return float(_set_statistic(name, z[None], self.between)[0])
        k = min(z.shape[0], self.max_images) - 1
        return float(max(self._statistic(z, part) / self.scales[j, k] for j, part in enumerate(COMBINED_PARTS)))

    def set_statistic(self, features) -> float:
        """The set statistic of one sample's features (M, D) [dimensionless]."""
        return self._statistic(self._whitened(features))

    def score(self, features) -> dict:
        """Is a sample of M images out of model?

        Parameters
        ----------
        features : ndarray (M, D)
            Per-image features of the sample's M ≥ 1 images, of the kind the reference was fitted on.

        Returns
        -------
        dict
            ``statistic`` (float), ``threshold`` (float, that of M), ``out_of_model`` (bool:
            statistic > threshold), ``M`` (int), ``level`` (float), ``ratio`` (statistic /
            threshold), ``per_image_d2`` (list: each image's :meth:`distances` — which images
            stand out) and, for ``"combined"``, ``parts``: ``set_mean`` and ``mean_d2`` each over its
            own ``level`` quantile (> 1: the set's mean is off, resp. its images scatter or lie far
            out one by one).

        Raises
        ------
        ValueError
            For M = 0 images, another feature dimension D than fitted, NaN or infinite values.
        """
        z = self._whitened(features)
        stat = self._statistic(z)
        thr = self.threshold(z.shape[0])
        out = {"statistic": stat, "threshold": thr, "out_of_model": bool(stat > thr), "M": int(z.shape[0]),
               "level": float(self.level), "ratio": stat / thr if thr > 0 else float("inf"),
               "per_image_d2": [float(v) for v in np.sum(z ** 2 / (self.between + 1.0), axis=1)]}
        if self.statistic == "combined":
            k = min(z.shape[0], self.max_images) - 1
            out["parts"] = {part: self._statistic(z, part) / float(self.scales[j, k])
                            for j, part in enumerate(COMBINED_PARTS)}
        return out

    # ------------------------------------------------------------------ storage

    def to_dict(self) -> dict:
        """JSON-serialisable content (plain floats, lists and strings) for a checkpoint's metadata."""
        return {"format": REFERENCE_FORMAT, "features": self.features, "statistic": self.statistic,
                "level": float(self.level), "mean": self.mean.tolist(), "transform": self.transform.tolist(),
                "between": self.between.tolist(), "thresholds": self.thresholds.tolist(),
                "scales": None if self.scales is None else self.scales.tolist(), "info": _plain(self.info)}

    @classmethod
    def from_dict(cls, d: dict) -> "SummaryReference":
        """The reference written by :meth:`to_dict`."""
        if not isinstance(d, dict) or d.get("format") != REFERENCE_FORMAT:
            found = d.get("format") if isinstance(d, dict) else type(d).__name__
            raise ValueError(f"not a summary reference: format {found!r}; accepted: {REFERENCE_FORMAT!r}")
        missing = [k for k in ("mean", "transform", "between", "thresholds", "level") if k not in d]
        if missing:
            raise ValueError(f"summary reference lacks {', '.join(missing)}")
        scales = d.get("scales")
        return cls(np.asarray(d["mean"], dtype=np.float64), np.asarray(d["transform"], dtype=np.float64),
                   np.asarray(d["between"], dtype=np.float64), np.asarray(d["thresholds"], dtype=np.float64),
                   float(d["level"]), d.get("statistic", "combined"),
                   None if scales is None else np.asarray(scales, dtype=np.float64), d.get("features", ""),
                   dict(d.get("info", {})))


def _plain(value):
    """``value`` with numpy scalars turned into Python ones (for JSON)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _random_effects(x: np.ndarray, groups: list, min_variance: float):
    """μ, T, λ and the two shrinkage intensities of the random-effects model fitted on the images
    of ``groups`` (lists of row indices of ``x``, one per configuration; module docstring)."""
    fit_groups = [x[g] for g in groups]
    n = sum(len(g) for g in fit_groups)
    if n - len(fit_groups) < 2 or len(fit_groups) < 2:
        raise ValueError(f"{n} images of {len(fit_groups)} configurations to fit on; the within-sample "
                         "covariance needs configurations with ≥ 2 images, the between-sample one ≥ 2 configurations")
    mean = np.concatenate(fit_groups).mean(axis=0)
    centres = np.stack([g.mean(axis=0) for g in fit_groups])
    within, lam_w = shrunk_covariance(np.concatenate([g - g.mean(axis=0) for g in fit_groups]))
    within *= (n - 1) / (n - len(fit_groups))               # residuals lose one dof per configuration
    diag = np.diag(within).copy()
    within[np.diag_indices_from(within)] = np.maximum(diag, min_variance * float(diag.mean()))
    means_cov, lam_m = shrunk_covariance(centres)
    between_cov = means_cov - within * float(np.mean([1.0 / len(g) for g in fit_groups]))
    transform, between = _joint_diagonalisation(within, between_cov)
    return mean, transform, between, (lam_w, lam_m)


def _joint_diagonalisation(within: np.ndarray, between: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """T and λ ≥ 0 with T Σ_w Tᵀ = I and T Σ_b Tᵀ = diag(λ) (negative λ of Σ_b's estimate set to 0)."""
    chol = np.linalg.cholesky(within)
    inv_chol = np.linalg.solve(chol, np.eye(within.shape[0]))
    b = inv_chol @ between @ inv_chol.T
    lam, vec = np.linalg.eigh((b + b.T) / 2)
    return vec.T @ inv_chol, np.maximum(lam, 0.0)


def _set_statistic(name: str, z: np.ndarray, between: np.ndarray) -> np.ndarray:
    """Statistic of sets of whitened features ``z`` (sets, M, D)."""
    m = z.shape[1]
    if name == "mean_d2":
        return np.mean(np.sum(z ** 2 / (between + 1.0), axis=2), axis=1)
    centre = z.mean(axis=1)
    if name == "mean_vector":
        return m * np.sum(centre ** 2 / (between + 1.0), axis=1)
    return np.sum(centre ** 2 / (between + 1.0 / m), axis=1)
