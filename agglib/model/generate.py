"""Drawing aggregates from the two-stage model: :func:`generate_aggregate`, :func:`generate_aggregates`."""

from __future__ import annotations

from functools import partial

import numpy as np

from agglib import config
from agglib.core.parallel import ordered_map
from agglib.core.seeding import as_generator, spawn_seeds
from agglib.core.validation import check_range
from agglib.model import kernels
from agglib.model.aggregate import Aggregate
from agglib.model.params import FRACTAL_PREFACTOR, ModelParams
from agglib.model.particles import PAPER_PARTICLES, ParticleModel

CLUSTER_SIZE_MODES = ("fixed", "poisson")

#: Redraws of a primary cluster that cannot be attached before the aggregate restarts, for
#: particles other than the paper's. With broad measured radius laws and hundreds of particles at
#: low θ_Df, a small particle lowers the mean radius and with it Eq. 8's target, so one attachment
#: in a few hundred has no solution: restarting the whole aggregate then almost never completes it
#: (θ_Df 1.5, N 569: 2,000 restarts fail). The paper's particles keep the paper's rule — the
#: aggregate restarts at once — so their aggregates and stores are unchanged.
ATTACH_REDRAWS = 50


class AggregationError(RuntimeError):
    """Raised when no aggregate could be completed within the restart bound."""


def _check_params(params, cluster_sizes):
    if not isinstance(params, ModelParams):
        raise TypeError(f"params must be an agglib.ModelParams, got {type(params).__name__}")
    if cluster_sizes not in CLUSTER_SIZE_MODES:
        raise ValueError(f"cluster_sizes={cluster_sizes!r} is not one of {CLUSTER_SIZE_MODES}")
    if cluster_sizes == "fixed":
        for name in ("theta0", "theta1"):
            check_range(name, getattr(params, name), low=1, integer=True)


def generate_aggregate(params: ModelParams, n_particles: int | None = None, seed=None, *,
                       cluster_sizes: str = "fixed",
                       particles: ParticleModel = PAPER_PARTICLES,
                       kf: float = FRACTAL_PREFACTOR) -> Aggregate:
    """Draw one hetero-aggregate from the model Ψ (paper §2.1.1–2.1.2).

    Primary clusters are drawn with their labels (P(L = 1) from θ_ρ, θ_0, θ_1)
    until their sizes reach ``n_particles``; the last cluster is truncated so
    that the aggregate has exactly ``n_particles`` particles (every other
    primary cluster has exactly θ_0 or θ_1 particles). Each cluster is grown by
    tunable particle–cluster aggregation, then attached, randomly rotated, with
    its centre of mass uniform on the permissible part of the sphere of radius
    d of Eq. (8) around the aggregate's centre of mass.

    Parameters
    ----------
    params : ModelParams
        θ = (θ_Df, θ_ρ, θ_0, θ_1).
    n_particles : int, optional
        Aggregate size N [particles], 1 <= N <= 10000. Default: drawn from
        ``particles.n_particles`` (the paper's: uniform on {20, ..., 80}, §2.1.2).
    seed : int, SeedSequence or Generator, optional
        Seed of the random stream; the same seed gives the identical aggregate.
    cluster_sizes : {"fixed", "poisson"}
        ``"fixed"``: the paper's model, primary clusters of exactly θ_0 / θ_1
        particles (integers required). ``"poisson"``: the continuous extension of
        the paper's §4, sizes 1 + Poisson(θ − 1), so θ_0, θ_1 >= 1 may be real
        and are the mean primary-cluster sizes.
    particles : ParticleModel
        Laws of the particle radii per material [nm] and of N (default: the paper's, radii
        log-normal with mean 12 nm and SD 3 nm for both materials, N uniform on 20–80).
    kf : float
        Fractal prefactor k_f [-] (default 1.3).

    Returns
    -------
    Aggregate
        Positions [nm] relative to the centre of mass, radii [nm], labels
        (0 = WO3, 1 = TiO2), primary-cluster indices. ``info`` records the seed
        and how many primary clusters and aggregates had to be restarted.

    Raises
    ------
    ValueError
        For parameters out of range.
    AggregationError
        If no aggregate was completed within ``config['max_restarts']`` restarts.
    """
    _check_params(params, cluster_sizes)
    check_range("kf", kf, low=0.0, low_inclusive=False)
    rng = as_generator(seed)
    if n_particles is None:
        n_particles = particles.n_particles.sample(rng)
    check_range("n_particles", n_particles, low=1, high=10_000, integer=True)
    n_particles = int(n_particles)
    max_restarts = int(config.get("max_restarts"))
    (status, pos, rad, lab, cid, cluster_restarts,
     aggregate_restarts) = kernels.build_aggregate(
        rng, n_particles, params.df, float(kf), params.p_tio2_cluster,
        params.theta0, params.theta1, cluster_sizes == "poisson",
        particles.radius_wo3.log_centres(), particles.radius_wo3.log_spread(),
        particles.radius_tio2.log_centres(), particles.radius_tio2.log_spread(), kernels.SOLID_SPHERE_RG2,
        int(config.get("max_draws")), int(config.get("max_rotations")), max_restarts,
        0 if particles.is_paper else ATTACH_REDRAWS)
    if status != kernels.STATUS_OK:
        raise AggregationError(
            f"no aggregate with {params} and N={n_particles} after {aggregate_restarts} "
            f"aggregate restarts and {cluster_restarts} primary-cluster restarts "
            f"(max_restarts={max_restarts}); raise agglib.config 'max_restarts' or "
            f"'max_draws', or choose a lower df")
    info = {"n_particles": n_particles, "cluster_sizes": cluster_sizes,
            "cluster_restarts": int(cluster_restarts),
            "aggregate_restarts": int(aggregate_restarts)}
    if isinstance(seed, (int, np.integer)):
        info["seed"] = int(seed)
    return Aggregate(pos, rad, lab, cid, params, info)


def _generate_one(task, n_particles, cluster_sizes, particles, kf, settings):
    params, seed = task
    with config.set(**settings):
        return generate_aggregate(params, n_particles, seed, cluster_sizes=cluster_sizes,
                                  particles=particles, kf=kf)


def generate_aggregates(params, count: int | None = None, seed=None, *,
                        n_particles: int | None = None, cluster_sizes: str = "fixed",
                        particles: ParticleModel = PAPER_PARTICLES,
                        kf: float = FRACTAL_PREFACTOR, workers: int | None = None,
                        show_progress_bars: bool | None = None) -> list[Aggregate]:
    """Draw ``count`` independent aggregates.

    Aggregate k uses the k-th child of ``SeedSequence(seed)``, so the result is
    identical for any number of ``workers``.

    Parameters
    ----------
    params : ModelParams or sequence of ModelParams
        One θ for all aggregates, or one θ per aggregate.
    count : int, optional
        Number of aggregates, >= 0 (default: ``len(params)`` for a sequence).
    seed : int or SeedSequence, optional
        Root seed.
    n_particles, cluster_sizes, particles, kf
        As in :func:`generate_aggregate`.
    workers : int, optional
        Worker processes (default ``config['workers']``; all cores if unset).
    show_progress_bars : bool, optional
        Default ``config['progress_bars']``.
    """
    if isinstance(params, ModelParams):
        if count is None:
            raise ValueError("count is required when a single ModelParams is given")
        check_range("count", count, low=0, integer=True)
        params = [params] * int(count)
    else:
        params = list(params)
        if count is not None and count != len(params):
            raise ValueError(f"count={count} does not match the {len(params)} parameter sets")
    for p in set(params):
        _check_params(p, cluster_sizes)
    tasks = list(zip(params, spawn_seeds(seed, len(params))))
    settings = {k: config.get(k) for k in ("max_draws", "max_rotations", "max_restarts")}
    func = partial(_generate_one, n_particles=n_particles, cluster_sizes=cluster_sizes,
                   particles=particles, kf=kf, settings=settings)
    workers = workers if len(tasks) >= 64 else 1  # process start-up outweighs small jobs
    return ordered_map(func, tasks, workers=workers, desc="aggregates",
                       show_progress_bars=show_progress_bars)
