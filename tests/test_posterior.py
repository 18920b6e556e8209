"""The new method: encoder, set-level posterior, calibration, checkpoints, resume, one combine rule."""

import os

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import agglib
from agglib.checkpoint import CheckpointError, load_checkpoint, save_checkpoint, weights_digest
from agglib.dataset import build_dataset, make_plan
from agglib.dataset.plan import EVAL, TRAIN, prior_ranges
from agglib.estimate import SampleEstimator
from agglib.posterior import PARAMETERS, PosteriorEstimate, SetPosterior, ThetaGrid, coverage, pit_values
from agglib.sets_training import EncoderConfig, PosteriorConfig, train_encoder
from agglib.sets_training.pipeline import train_sample_estimator
from agglib.sets_training.posterior import train_posterior


@pytest.fixture(scope="module")
def tiny_stores(tmp_path_factory):
    base = tmp_path_factory.mktemp("sets")
    grid = build_dataset(base / "grid.zarr", "tiny", seed=2, workers=1, show_progress_bars=False)
    cont = build_dataset(base / "cont.zarr", "tiny", seed=2, workers=1, design="continuous", show_progress_bars=False)
    return grid, cont


@pytest.fixture(scope="module")
def tiny_estimator(tiny_stores, tmp_path_factory):
    grid, cont = tiny_stores
    run = tmp_path_factory.mktemp("sets-run")
    return train_sample_estimator(agglib.load_profile("tiny"), grid, cont, run, seed=0), run


# ------------------------------------------------------------------ continuous design

def test_continuous_plan_draws_fresh_configurations_inside_the_prior():
    prof = agglib.load_profile("quick")
    plan = make_plan(prof, 0, "continuous")
    t_configs = np.unique(plan.config_id[plan.split == TRAIN])
    e_configs = np.unique(plan.config_id[plan.split == EVAL])
    assert t_configs.size == prof.posterior_configs_T + prof.encoder_configs_T
    assert e_configs.size == prof.posterior_configs_E
    assert not set(t_configs) & set(e_configs)                      # E's configurations are new
    assert np.all(np.bincount(plan.config_id)[t_configs] == prof.posterior_images_T)
    ranges = prior_ranges(prof)
    assert ranges["df"] == (1.5, 2.5) and ranges["rho"] == (0.0, 1.0)
    assert plan.configs[:, 0].min() >= 1.5 and plan.configs[:, 0].max() <= 2.5
    assert set(np.unique(plan.configs[:, 2])) <= set(prof.theta0_values)
    assert len(np.unique(plan.configs[:, 0])) == len(plan.configs)   # continuous: no repeated θ_Df
    assert np.array_equal(make_plan(prof, 0, "continuous").configs, plan.configs)
    with pytest.raises(ValueError, match="design='mosaic'"):
        make_plan(prof, 0, "mosaic")


def test_continuous_roles_keep_the_posteriors_configurations_away_from_the_encoder(tiny_stores):
    _, cont = tiny_stores
    prof = agglib.load_profile("tiny")
    roles = cont.continuous_roles()
    post_ids, enc_ids = set(cont.config_id[roles["posterior"]]), set(cont.config_id[roles["encoder"]])
    assert len(post_ids) == prof.posterior_configs_T and len(enc_ids) == prof.encoder_configs_T
    assert not post_ids & enc_ids and not post_ids & set(cont.config_id[roles["E"]])


# ------------------------------------------------------------------ set-level posterior

@settings(max_examples=15, deadline=None)
@given(m=st.integers(1, 30), seed=st.integers(0, 10**6))
def test_set_posterior_is_permutation_invariant_for_any_number_of_images(m, seed):
    torch.manual_seed(0)
    model = SetPosterior(13, 6, 6, hidden=16, components=3).eval()
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(2, m, 13, generator=g)
    perm = torch.randperm(m, generator=g)
    a = model.parameters_of(z)
    b = model.parameters_of(z[:, perm])
    padded = torch.cat([z, torch.randn(2, 3, 13, generator=g)], dim=1)     # masked entries change nothing
    mask = torch.zeros(2, m + 3, dtype=torch.bool)
    mask[:, :m] = True
    c = model.parameters_of(padded, mask)
    for key in a:
        assert a[key].shape[0] == 2
        assert np.allclose(a[key], b[key], atol=1e-5) and np.allclose(a[key], c[key], atol=1e-5), key


def untrained_posteriors(n: int = 3, seed: int = 0) -> PosteriorEstimate:
    grid = ThetaGrid.from_profile(agglib.load_profile("quick"))
    torch.manual_seed(seed)
    model = SetPosterior(13, 6, 6, hidden=16, components=3).eval()
    params = model.parameters_of(torch.randn(n, 5, 13))
    return PosteriorEstimate(params, grid, np.full(n, 5))


def test_posterior_estimate_quantiles_invert_the_cdf_and_draws_stay_in_the_prior():
    est = untrained_posteriors()
    grid = est.grid
    for p in ("df", "rho"):
        for q in (0.05, 0.5, 0.9):
            assert np.allclose(est.cdf(p, est.quantile(p, q)), q, atol=2e-3)
        lo, hi = est.interval(p, 0.9).T
        assert np.all(lo <= hi)
        assert np.all((grid.bounds(p)[0] <= est.mean(p)) & (est.mean(p) <= grid.bounds(p)[1]))
    for p in ("theta0", "theta1"):
        assert np.allclose(est.probabilities(p).sum(axis=1), 1.0)
        assert np.all(np.isin(est.point()[p], grid.integers(p)))
    draws = est.sample(500, seed=1, which=2)
    for k, p in enumerate(PARAMETERS):
        e = grid.edges(p)
        assert draws[:, k].min() >= e[0] and draws[:, k].max() <= e[-1]
    assert np.array_equal(draws, est.sample(500, seed=1, which=2))
    assert "PosteriorEstimate(3 samples" in repr(est) and len(repr(est)) < 300


def test_marginal_cdf_matches_draws_and_widening_scales_it_as_the_family_does():
    """:meth:`cdf` (width 1 of :meth:`cdf_widened`) against the share of joint draws below x, and
    each width column of :meth:`cdf_widened` against the CDF of the posterior widened in the family
    (:func:`agglib.posterior.widened`: both Gaussians' spreads along the logits scaled)."""
    from agglib.posterior import widened

    est = untrained_posteriors()
    widths = np.array([0.5, 1.0, 1.7])
    for k, p in enumerate(("df", "rho")):
        x = np.array([est.quantile(p, q)[0] for q in (0.1, 0.4, 0.8)])
        draws = est.sample(40_000, seed=3, which=0)[:, k]
        assert np.allclose([est.cdf(p, v)[0] for v in x], [(draws <= v).mean() for v in x], atol=0.01)
        for v in x:
            columns = est.cdf_widened(p, v, widths)
            for j, w in enumerate(widths):
                assert np.allclose(columns[:, j], widened(est, np.array([[w, w]]), 1.0).cdf(p, v), atol=1e-12)


def test_posterior_on_a_problem_with_known_answer_is_calibrated():
    """Per-image summaries = θ (standardised) + Gaussian noise: the trained posterior's central and
    highest-density regions and its joint checks must hold the truth as often as they claim, on
    fresh draws from the prior."""
    from agglib.evaluate.calibration import calibration_checks

    prof = agglib.load_profile("tiny")
    grid = ThetaGrid.from_profile(prof)

    def simulate(n_configs, per_config, seed):
        rng = np.random.default_rng(seed)
        theta = np.stack([rng.uniform(1.5, 2.5, n_configs), rng.uniform(0, 1, n_configs),
                          rng.integers(1, 5, n_configs), rng.integers(1, 5, n_configs)], axis=1).astype(float)
        ids = np.repeat(np.arange(n_configs), per_config)
        scale = np.array([1.0, 1.0, 3.0, 3.0])
        z = theta[ids] / scale + rng.normal(0, 0.15, (ids.size, 4))
        return z.astype(np.float32), theta[ids], ids

    z, theta, ids = simulate(1500, 8, 0)
    model, _ = train_posterior(z, theta, ids, grid, PosteriorConfig(steps=1200, hidden=32, components=3, max_images=8),
                               show_progress_bars=False)
    est = SampleEstimator(None, model, grid, {})
    z_new, theta_new, ids_new = simulate(600, 4, 1)
    groups = [np.flatnonzero(ids_new == c) for c in range(600)]
    post = est.from_summaries(z_new, groups)
    cov = coverage(pit_values(post, theta_new[[g[0] for g in groups]], seed=3))
    assert cov["50%"].between(0.40, 0.60).all(), cov
    assert cov["90%"].between(0.84, 0.96).all(), cov
    row = calibration_checks(post, theta_new[[g[0] for g in groups]], draws=200)
    for key in ("df HPD", "rho HPD", "theta0 HPD", "theta1 HPD", "joint HPD", "TARP"):
        assert 0.84 <= row[key] <= 0.97, (key, row)


# ------------------------------------------------------------------ training, checkpoints, resume

def test_encoder_killed_mid_epoch_resumes_to_the_same_weights(tiny_stores, tmp_path):
    """Through the engine, as the paper's networks: interrupted after 3 steps of epoch 2 (a
    mid-epoch last.pt every 2 steps), then resumed: the weights of the uninterrupted run, exactly."""
    grid, _ = tiny_stores
    config = EncoderConfig(epochs=2, batch=8, val_images=8, seed=4, bf16=False)
    whole = train_encoder(grid.path, config, tmp_path / "whole", show_progress_bars=False)
    steps = grid.indices("T").size // 8
    cut = train_encoder(grid.path, config, tmp_path / "cut", show_progress_bars=False, checkpoint_every_steps=2,
                        stop_after_steps=steps + 3)
    assert cut["path"] is None and len(cut["history"]) == 1 and not (tmp_path / "cut" / "encoder.pt").exists()
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["progress"] == {"epoch": 1, "step": 2}
    resumed = train_encoder(grid.path, config, tmp_path / "cut", show_progress_bars=False)
    a = load_checkpoint(whole["path"])["model"]
    b = load_checkpoint(resumed["path"])["model"]
    assert all(torch.equal(a[name], b[name]) for name in a)
    assert [h["train_loss"] for h in resumed["history"][:1]] == [h["train_loss"] for h in whole["history"][:1]]
    with pytest.raises(CheckpointError, match=r"belongs to another run \(other train_config.batch \(8 there, 16"):
        train_encoder(grid.path, EncoderConfig(epochs=2, batch=16, val_images=8, seed=4), tmp_path / "cut")
    with pytest.raises(ValueError, match=f"batch of 512 images is larger than its {grid.indices('T').size}"):
        train_encoder(grid.path, EncoderConfig(epochs=1, batch=512), tmp_path / "big")   # no step would be taken


def test_encoder_time_budget_writes_an_encoder_that_a_later_call_finishes(tiny_stores, tmp_path):
    from agglib.sets_training import NotTrainedError

    grid, _ = tiny_stores
    config = EncoderConfig(epochs=2, batch=16, val_images=0, seed=4, bn_batches=1)
    early = train_encoder(grid.path, config, tmp_path / "budget", show_progress_bars=False, time_budget_s=0.0)
    assert load_checkpoint(early["path"])["metadata"]["epochs_trained"] == 1       # stopped after epoch 1
    partial = early["path"].read_bytes()
    with pytest.raises(NotTrainedError, match="1 of 2 epochs"):
        train_encoder(grid.path, config, tmp_path / "budget", train=False)
    done = train_encoder(grid.path, config, tmp_path / "budget", show_progress_bars=False)
    whole = train_encoder(grid.path, config, tmp_path / "whole", show_progress_bars=False)
    a, b = load_checkpoint(done["path"])["model"], load_checkpoint(whole["path"])["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    # killed after the last epoch's last.pt and before encoder.pt: the budget's encoder is not taken
    done["path"].write_bytes(partial)
    with pytest.raises(NotTrainedError):
        train_encoder(grid.path, config, tmp_path / "budget", train=False)
    again = train_encoder(grid.path, config, tmp_path / "budget", show_progress_bars=False)
    assert load_checkpoint(again["path"])["metadata"]["epochs_trained"] == 2
    assert all(torch.equal(a[k], v) for k, v in load_checkpoint(again["path"])["model"].items())


def _in_float64(monkeypatch=None):
    """The encoder, its inputs and its loss in float64 (see the test below)."""
    import agglib.sets_training.encoder as recipe

    torch.set_default_dtype(torch.float64)
    inputs = recipe.encoder_inputs
    double = lambda counts, epp: inputs(counts, epp).double()                    # noqa: E731
    if monkeypatch is None:
        recipe.encoder_inputs = double
    else:
        monkeypatch.setattr(recipe, "encoder_inputs", double)


def _encoder_worker(rank, world_size, port, store_path, out_dir, per_rank_batchnorm):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world_size))
    torch.set_num_threads(1)
    _in_float64()
    if per_rank_batchnorm:                        # the negative control: each rank's own statistics
        import contextlib

        import agglib.engine as engine

        engine.synced_batchnorm = lambda model, env: contextlib.nullcontext()
    train_encoder(store_path, TWO_PROCESS_CONFIG, out_dir, show_progress_bars=False)


TWO_PROCESS_CONFIG = EncoderConfig(epochs=2, batch=16, val_images=8, seed=4, bn_batches=2, device="cpu")


def test_encoder_under_two_gloo_processes_trains_the_weights_of_one(tiny_stores, tmp_path, monkeypatch):
    """Two processes (gloo), each with 8 images of every global batch of 16, reach the weights
    of one process with batches of 16: the same images and augmentations per step, BatchNorm over
    the global batch, the loss of the global batch. With each rank's own BatchNorm statistics
    (the control) they do not.

    In float64: in float32 this freshly initialised encoder is so ill-conditioned on these images
    (BatchNorm channels of near-zero variance) that one process's forward pass differs from its own
    float64 result by 5e-4 and the gradients of a batch by up to 20 %, so Adam steps of two
    float32 runs part whatever the reduction order; in float64 the two-process gradients equal
    one process's to 1e-12."""
    import torch.multiprocessing as mp

    from tests.test_estimators import _free_port

    grid, _ = tiny_stores
    torch.set_num_threads(1)
    default = torch.get_default_dtype()
    try:
        _in_float64(monkeypatch)
        one = train_encoder(grid.path, TWO_PROCESS_CONFIG, tmp_path / "one", show_progress_bars=False)
    finally:
        torch.set_default_dtype(default)
    a = load_checkpoint(one["path"])["model"]
    assert a["heads.weight"].dtype == torch.float64

    def gap(folder):
        b = load_checkpoint(folder / "encoder.pt")["model"]
        return max(float((a[k] - b[k]).abs().max() / (a[k].abs().max() + 1e-12)) for k in a if a[k].is_floating_point())

    mp.spawn(_encoder_worker, args=(2, _free_port(), str(grid.path), str(tmp_path / "two"), False), nprocs=2,
             join=True)
    mp.spawn(_encoder_worker, args=(2, _free_port(), str(grid.path), str(tmp_path / "control"), True), nprocs=2,
             join=True)
    synced, control = gap(tmp_path / "two"), gap(tmp_path / "control")
    assert synced < 1e-6, synced                       # float rounding (3e-9 measured), amplified by Adam
    assert control > 1e-2, control


def test_training_twice_with_one_seed_gives_identical_weights(tiny_stores, tmp_path):
    """Same seed → bit-identical encoder (bf16 autocast, as the profiles train it where bf16 is fast, BatchNorm
    recomputed in float32) and posterior."""
    grid, cont = tiny_stores
    config = EncoderConfig(epochs=1, batch=16, val_images=0, seed=5, bf16=True, bn_batches=3)
    a = train_encoder(grid.path, config, tmp_path / "a", show_progress_bars=False)
    b = train_encoder(grid.path, config, tmp_path / "b", show_progress_bars=False)
    wa, wb = load_checkpoint(a["path"])["model"], load_checkpoint(b["path"])["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    bn = [k for k in wa if k.endswith("running_var")]
    assert bn and load_checkpoint(a["path"])["metadata"]["bn_recalibrated"] == 3
    rng = np.random.default_rng(0)
    z, theta = rng.normal(size=(96, 13)).astype(np.float32), cont.theta[:96]
    ids = np.repeat(np.arange(16), 6)
    grid_theta = ThetaGrid.from_profile(agglib.load_profile("tiny"))
    config = PosteriorConfig(steps=40, hidden=16, components=2, validate_every=10)
    pa, _ = train_posterior(z, theta, ids, grid_theta, config, show_progress_bars=False)
    pb, _ = train_posterior(z, theta, ids, grid_theta, config, show_progress_bars=False)
    assert all(torch.equal(x, y) for x, y in zip(pa.state_dict().values(), pb.state_dict().values()))


def test_profiles_ask_for_bf16_only_where_it_is_fast(monkeypatch):
    """A profile's ``encoder_bf16`` gives bf16 autocast on devices with fast bf16 and float32 on the
    others (AVX2 CPUs emulate bf16: benchmarks/results/bench_autocast-AVX2.txt); the device asked
    for is the one asked about; an explicit ``bf16`` change wins without asking; a run resumed on a
    machine of the other kind is the same run (as for the paper's networks)."""
    import agglib.core.distributed as distributed
    from agglib.sets_training.pipeline import encoder_config

    quick = agglib.load_profile("quick")
    assert quick.encoder_bf16
    asked = []
    for fast in (False, True):
        monkeypatch.setattr(distributed, "fast_bfloat16", lambda device="auto", fast=fast: asked.append(device) or fast)
        assert encoder_config(quick).bf16 is fast
        assert encoder_config(quick, device="cpu").bf16 is fast and asked[-1] == "cpu"
        before = len(asked)
        assert encoder_config(quick, bf16=True, device="cuda:7").bf16 is True and len(asked) == before
    assert encoder_config(agglib.load_profile("quick", encoder_bf16=False)).bf16 is False
    assert EncoderConfig(bf16=True).identity() == EncoderConfig(bf16=False).identity()
    assert EncoderConfig(seed=1).identity() != EncoderConfig(seed=2).identity()
    monkeypatch.undo()
    assert isinstance(distributed.fast_bfloat16("cpu"), bool)
    assert distributed.fast_bfloat16("meta") is False
    monkeypatch.setattr(torch.ops, "mkldnn", object())          # a torch without the query
    assert distributed.fast_bfloat16("cpu") is False


def test_checkpoints_load_with_weights_only_and_name_the_bad_file(tiny_estimator, tmp_path):
    est, run = tiny_estimator
    for name in ("encoder.pt", "posterior.pt"):
        payload = torch.load(run / "sets" / name, weights_only=True)
        assert payload["format"] == "agglib-checkpoint/2"
    (tmp_path / "broken.pt").write_bytes((run / "sets" / "encoder.pt").read_bytes()[:200])
    with pytest.raises(CheckpointError, match="broken.pt is not a readable checkpoint"):
        load_checkpoint(tmp_path / "broken.pt")
    with pytest.raises(CheckpointError, match="of kind 'set_posterior', not 'encoder'"):
        load_checkpoint(run / "sets" / "posterior.pt", kind="encoder")
    other = SampleEstimator.load(run / "sets")
    save_checkpoint(tmp_path / "x" / "encoder.pt", "encoder", other.encoder.metadata,
                    {k: v + 1 if v.is_floating_point() else v for k, v in other.encoder.model.state_dict().items()})
    (tmp_path / "x" / "posterior.pt").write_bytes((run / "sets" / "posterior.pt").read_bytes())
    with pytest.raises(CheckpointError, match="another encoder"):
        SampleEstimator.load(tmp_path / "x")
    assert weights_digest(other.encoder.model.state_dict()) == weights_digest(est.encoder.model.state_dict())


def test_finished_pipeline_loads_without_training_again(tiny_stores, tiny_estimator, monkeypatch):
    import agglib.sets_training.pipeline as pipeline

    est, run = tiny_estimator
    monkeypatch.setattr(pipeline, "train_posterior_ensemble", lambda *a, **k: pytest.fail("trained again"))
    again = train_sample_estimator(agglib.load_profile("tiny"), *tiny_stores, run, seed=0)
    images = tiny_stores[0].read_images(tiny_stores[0].indices("E")[:3])
    assert np.allclose(again.estimate(images).params["mean"], est.estimate(images).params["mean"])


def test_the_pipeline_recalibrates_on_configurations_no_gradient_step_saw(tiny_stores, tiny_estimator, monkeypatch):
    """The posterior is recalibrated as fitted on held-out posterior configurations (as many images
    as training sets) and E; it reads the acquisition statistics beside the head outputs; an
    estimator trained before recalibration existed is recalibrated, not trained again."""
    import agglib.sets_training.pipeline as pipeline
    from agglib.posterior import Widening
    from agglib.stem.acquisition import ACQUISITION_STATISTICS

    est, run = tiny_estimator
    cont = tiny_stores[1]
    train, held = pipeline.posterior_split(cont, seed=0)
    assert held.size and train.size and not np.isin(cont.config_id[held], cont.config_id[train]).any()
    assert np.array_equal(np.sort(np.concatenate([train, held])), cont.continuous_roles()["posterior"])
    assert est.metadata["recalibration"] == pipeline.RECALIBRATION
    fitted = [row["M"] for row in est.metadata["widening_fit"]]
    assert fitted == [m for m in pipeline.RECALIBRATION["sizes"] if m <= agglib.load_profile("tiny").posterior_images_T]
    assert est.widening == Widening.from_dict(est.metadata["widening"]) != Widening()
    images = tiny_stores[0].read_images(tiny_stores[0].indices("E")[:3])
    summaries = est.summaries(images)
    assert est.reads_statistics and summaries.shape == (3, est.encoder.model.heads.out_features + len(ACQUISITION_STATISTICS))
    raw = est.from_summaries(summaries, [np.arange(3)], recalibrated=False)
    assert np.allclose(est.estimate(images).params["log_scale"], est.widening.apply(raw).params["log_scale"])
    old = SampleEstimator(est.encoder, est.posterior, est.grid,
                          {k: v for k, v in est.metadata.items() if k not in ("widening", "recalibration", "widening_fit")})
    old.save(run / "sets", overwrite=True)
    monkeypatch.setattr(pipeline, "train_posterior_ensemble", lambda *a, **k: pytest.fail("trained again"))
    again = train_sample_estimator(agglib.load_profile("tiny"), *tiny_stores, run, seed=0)
    assert again.metadata["widening"] == est.metadata["widening"]          # the same fit: a function of the seed


def test_estimate_accepts_any_number_of_images(tiny_estimator, tiny_stores):
    est, _ = tiny_estimator
    images = tiny_stores[0].read_images(tiny_stores[0].indices("E")[:7])
    for m in (1, 2, 7):
        post = est.estimate(images[:m])
        assert len(post) == 1 and post.n_images[0] == m
        for p in ("theta0", "theta1"):
            assert np.isclose(post.probabilities(p).sum(), 1.0)
        for p in ("df", "rho"):
            lo, hi = post.grid.bounds(p)
            # the box's edges are evaluated at logit(1e-12) = ∓27.6: a wide mixture component leaves ~1e-6 beyond
            assert post.cdf(p, lo)[0] < 1e-4 and post.cdf(p, hi)[0] > 1 - 1e-4
        table = post.table()
        assert list(table.index) == list(PARAMETERS) and (table["90% low"] <= table["90% high"]).all()
    with pytest.raises(ValueError, match="this encoder takes"):
        est.estimate(np.zeros((2, 50, 50)))


# ------------------------------------------------------------------ one combine rule

def test_one_combine_function_serves_estimate_fit_and_evaluate(monkeypatch, tmp_path):
    """The paper method's Eqs. 13–15 live in agglib.estimate.combine_per_image / combine_groups only:
    the estimator, fit and the evaluation each call them (spied on while each runs on the shipped
    networks); one that averaged the networks' outputs itself would leave a spy uncalled."""
    import agglib.estimate as estimate
    from agglib.evaluate.estimators import paper_method_estimates
    from agglib.fit import characterise
    from agglib.fit.io import MeasuredImage

    calls = []
    for name in ("combine_per_image", "combine_groups"):
        real = getattr(estimate, name)
        monkeypatch.setattr(estimate, name, lambda *a, _real=real, _name=name, **k: (calls.append(_name), _real(*a, **k))[1])
    networks = estimate.ParameterEstimator.load(estimate.shipped_models_dir("paper"))
    profile = agglib.load_profile("quick", rho_values=[0.5], theta0_values=[2], theta1_values=[3], df_per_triple=1,
                                  samples_per_config=14, eval_per_config=12)
    store = build_dataset(tmp_path / "s.zarr", profile, seed=1, workers=1, show_progress_bars=False)
    images = store.read_images(store.indices("E"))
    measured = [MeasuredImage(im.astype(np.float32), profile.pixel_size_nm, f"image_{k}", "given")
                for k, im in enumerate(images)]
    for caller, run in (("ParameterEstimator.estimate", lambda: networks.estimate(images)),
                        ("characterise", lambda: characterise(measured, networks, n_bootstrap=10, seed=0,
                                                              check_intensity_scale=False)),
                        ("paper_method_estimates", lambda: paper_method_estimates(networks, store, 12))):
        calls.clear()
        run()
        assert {"combine_per_image", "combine_groups"} <= set(calls), caller
    out = estimate.combine_per_image([1.8, 2.0], [0.2, 0.4], [0.1, 0.3])
    assert out == pytest.approx({"df": 1.9, "rho": 0.3, "rho_without_classifier": 0.2})
    assert estimate.combine_groups([2.4, 2.8], [-1.0, 0.2])["theta0"] == 3
    assert estimate.combine_groups([2.4, 2.8], [-1.0, 0.2])["theta1"] == 0


def test_cached_summaries_of_an_estimator_are_what_it_reads(tiny_stores, tiny_estimator):
    """The one cached path the pipeline and the notebooks use gives, for an estimator, exactly
    :meth:`SampleEstimator.summaries` of the same images (head outputs and acquisition statistics)."""
    from agglib.sets_training.pipeline import cached_summaries

    est, run = tiny_estimator
    grid = tiny_stores[0]
    cached = cached_summaries(est, grid, run)
    rows = grid.indices("E")[:5]
    assert np.allclose(cached[rows], est.summaries(grid.read_images(rows)), atol=1e-5)
    heads = cached_summaries(est.encoder, grid, run)            # an encoder alone: its head outputs
    assert np.array_equal(heads, cached[:, :heads.shape[1]]) and cached.shape[1] == heads.shape[1] + 9


def test_cached_statistics_are_keyed_by_their_version(tiny_stores, tiny_estimator, tmp_path, monkeypatch):
    """A statistics cache of another version (or another beam) is recomputed, never reused; one of
    this version is read as it was saved."""
    import agglib.stem.acquisition as acquisition
    from agglib.sets_training.pipeline import cached_summaries

    est, _ = tiny_estimator
    grid = tiny_stores[0]
    first = cached_summaries(est, grid, tmp_path)
    path = tmp_path / f"statistics-{grid.path.name}.npz"
    with np.load(path) as cached:
        saved = dict(cached)
    np.savez(path, **{**saved, "statistics": np.zeros_like(saved["statistics"])})
    assert np.all(cached_summaries(est, grid, tmp_path)[:, -9:] == 0)          # read as saved
    monkeypatch.setattr(acquisition, "STATISTICS_VERSION", acquisition.STATISTICS_VERSION + 1)
    again = cached_summaries(est, grid, tmp_path)                                # another version: recomputed
    assert np.array_equal(again, first, equal_nan=True)


def test_calibration_report_reuses_given_summaries(tiny_estimator):
    """Summaries passed in are what the report reads (the same report as computing them); a
    summaries array of another length is refused, naming both lengths."""
    from agglib.evaluate import fresh_configurations
    from agglib.evaluate.calibration import calibration_report

    est, _ = tiny_estimator
    prof = agglib.load_profile("tiny")
    fresh = fresh_configurations(prof, 6, 4, seed=9, prior="continuous", workers=1, show_progress_bars=False)
    summaries = est.summaries(fresh["images"])
    given = calibration_report(est, prof, 6, (1, 4), fresh=fresh, summaries=summaries, draws=50)
    computed = calibration_report(est, prof, 6, (1, 4), fresh=fresh, draws=50)
    pd.testing.assert_frame_equal(given, computed)
    with pytest.raises(ValueError, match="summaries has 23 rows; the fresh set has 24 images"):
        calibration_report(est, prof, 6, (1, 4), fresh=fresh, summaries=summaries[:-1], draws=50)


def test_calibration_under_fixed_acquisitions(tiny_estimator):
    """Each acquisition records the same aggregates (a paired design: the simulator's own settings
    give calibration_report's rows for the same fresh set), adds the posteriors' spread against their
    error, and an acquisition the intensity check refuses has only its refused share."""
    from agglib.evaluate import fresh_configurations
    from agglib.evaluate.calibration import calibration_report, calibration_under_acquisitions

    est, _ = tiny_estimator
    prof = agglib.load_profile("tiny")
    acquisitions = {"own settings": {}, "contrast ×0.69": {"wo3_contrast": 0.69}, "counts ×10": {"intensity_scale": 10.0}}
    table = calibration_under_acquisitions(est, prof, acquisitions, 6, (1, 4), seed=9, draws=50, show_progress_bars=False)
    assert list(dict.fromkeys(table.index.get_level_values("acquisition"))) == list(acquisitions)
    refused = table.xs("counts ×10", level="acquisition")
    assert refused["refused"].eq(1.0).all() and refused["joint HPD"].isna().all()
    assert not table.index.get_level_values("acquisition given").any()      # not asked for, and not readable here
    with pytest.raises(ValueError, match="does not read a known acquisition"):
        calibration_under_acquisitions(est, prof, acquisitions, 6, (1,), seed=9, acquisition_given=(True,))
    table = table.droplevel("acquisition given")
    own = table.loc["own settings"]
    assert own["refused"].eq(0.0).all(), own["refused"]
    fresh = fresh_configurations(prof, 6, 4, seed=9, prior="continuous", workers=1, show_progress_bars=False)
    alone = calibration_report(est, prof, 6, (1, 4), seed=9, fresh=fresh, draws=50, spread=True)
    pd.testing.assert_frame_equal(own[alone.columns], alone, check_names=False, check_dtype=False)
    contrast = table.loc["contrast ×0.69"]
    assert contrast[["rho RMSE", "rho spread", "rho bias"]].notna().all().all(), contrast
    assert not np.allclose(contrast["rho RMSE"], own["rho RMSE"])   # the same aggregates, recorded differently


def test_posterior_figure_draws_the_densities_inside_the_box():
    """The figure's marginal densities are drawn at cell centres, never at the box's edges, where
    logit(θ) is infinite and a component wide along it gives an unbounded density."""
    import agglib.visualize as viz

    est = untrained_posteriors(2)
    est.params["log_scale"][...] = np.log(8.0)               # wide along both logits
    fig = viz.plot_posterior(est)
    for trace, p in zip(fig.data[:2], ("df", "rho")):
        lo, hi = est.grid.bounds(p)
        x, y = np.asarray(trace.x), np.asarray(trace.y)
        assert lo < x.min() and x.max() < hi, p
        assert np.isfinite(y).all() and y.max() < 1e3 / (hi - lo), p


# ------------------------------------------------------------------ a posterior that reads the known acquisition

@pytest.fixture(scope="module")
def known_acquisition_estimator(tiny_estimator, tmp_path_factory):
    """The tiny profile with randomised acquisitions, a posterior trained on two continuous datasets
    that reads the sample's intensity scale and contrast where known (on the tiny estimator's encoder)."""
    base = tmp_path_factory.mktemp("known-acquisition")
    prof = agglib.load_profile("tiny", acquisition="randomised", posterior_datasets=2, posterior_acquisition_input=True)
    stores = [build_dataset(base / f"cont{k}.zarr", prof, seed=4 + k, workers=1, design="continuous",
                            show_progress_bars=False) for k in range(2)]
    est = train_sample_estimator(prof, None, stores, base / "run", seed=4, encoder=tiny_estimator[0].encoder)
    again = train_sample_estimator(prof, None, stores, base / "run", seed=4, encoder=tiny_estimator[0].encoder,
                                   train=False)                           # found as trained, not trained again
    assert weights_digest(again.posterior.state_dict()) == weights_digest(est.posterior.state_dict())
    return est, prof, stores


def test_posterior_reads_the_known_acquisition_and_widens_by_its_own_law(known_acquisition_estimator):
    """Both uses in one network: the acquisition's columns (log intensity scale, contrast, flag) or
    zeros where unknown; each sample widened by the law fitted for its case."""
    from agglib.estimate import known_acquisition_columns
    from agglib.posterior import widened

    est, prof, stores = known_acquisition_estimator
    assert est.reads_acquisition and est.reads_statistics
    assert est.metadata["in_dim"] == est.encoder.model.heads.out_features + 9 + 3
    assert est.metadata["continuous_datasets_sha256"] == [s.identity_sha256() for s in stores]
    assert est.metadata["widening"] != est.metadata["widening_known_acquisition"]   # two fits, two laws
    images = stores[0].read_images(np.arange(6))
    unknown = est.summaries(images)
    known = est.summaries(images, acquisition={"intensity_scale": 0.72, "wo3_contrast": 0.69})
    assert np.all(unknown[:, -3:] == 0) and np.allclose(known[:, -3:], [np.log(0.72), 0.69, 1.0])
    np.testing.assert_array_equal(known[:, :-3], unknown[:, :-3])
    np.testing.assert_array_equal(est.with_acquisition(unknown, {"intensity_scale": 0.72, "wo3_contrast": 0.69}), known)
    both = np.concatenate([unknown, known])
    post = est.from_summaries(both, [np.arange(6), np.arange(6, 12)])
    raw = est.from_summaries(both, [np.arange(6), np.arange(6, 12)], recalibrated=False)
    for k, law in enumerate((est.widening, est.widening_known_acquisition)):
        width, temperature = law.factors([6])
        expect = widened(raw.select([k]), width, temperature)
        np.testing.assert_allclose(post.select([k]).cdf("rho", [0.5]), expect.cdf("rho", [0.5]), rtol=1e-10)
        np.testing.assert_allclose(post.select([k]).params["discrete"], expect.params["discrete"], rtol=1e-10)
    mixed = both.copy()
    mixed[3, -3:] = known_acquisition_columns({"intensity_scale": 1.0, "wo3_contrast": 1.0}, 1)
    with pytest.raises(ValueError, match="mixes images with and without a known acquisition"):
        est.from_summaries(mixed, [np.arange(6)])


def test_known_acquisition_is_checked_against_the_training_ranges(known_acquisition_estimator, tiny_estimator):
    est, _, stores = known_acquisition_estimator
    images = stores[0].read_images(np.arange(3))
    with pytest.raises(ValueError, match=r"intensity_scale=10.0 is out of range; accepted range \[0.45, 1.6\]"):
        est.estimate(images, {"intensity_scale": 10.0, "wo3_contrast": 0.8})
    with pytest.raises(ValueError, match="lacks wo3_contrast: give both"):
        est.estimate(images, {"intensity_scale": 0.8})
    with pytest.raises(ValueError, match="wo3_contrast='0.8x': a number"):
        est.estimate(images, {"intensity_scale": 0.8, "wo3_contrast": "0.8x"})
    with pytest.raises(ValueError, match="does not read a known acquisition"):
        tiny_estimator[0].estimate(images, {"intensity_scale": 0.8, "wo3_contrast": 0.8})


def test_a_known_acquisition_has_both_or_is_not_given():
    from agglib.estimate import known_acquisition_columns, missing_known_acquisition

    assert missing_known_acquisition({"intensity_scale": 0.7, "wo3_contrast": 0.7}) == []
    assert missing_known_acquisition({"intensity_scale": 0.7, "wo3_contrast": None}) == ["wo3_contrast"]
    assert missing_known_acquisition({}) == ["intensity_scale", "wo3_contrast"]
    # a None value is a missing value, not "a number expected", where the columns are made
    with pytest.raises(ValueError, match="lacks intensity_scale: give both"):
        known_acquisition_columns({"intensity_scale": None, "wo3_contrast": 0.7}, 2)
    with pytest.raises(ValueError, match="gives neither intensity_scale nor wo3_contrast: pass acquisition=None"):
        known_acquisition_columns({}, 2)
    with pytest.raises(ValueError, match=r"acquisition=\(0.7, 0.7\): a mapping"):
        known_acquisition_columns((0.7, 0.7), 2)
    with pytest.raises(ValueError, match="wo3_contrast='high': a number"):
        known_acquisition_columns({"intensity_scale": 0.7, "wo3_contrast": "high"}, 2)
    np.testing.assert_array_equal(known_acquisition_columns(None, 2), np.zeros((2, 3)))
    np.testing.assert_allclose(known_acquisition_columns({"intensity_scale": 0.5, "wo3_contrast": 0.7}, 1),
                               [[np.log(0.5), 0.7, 1.0]], rtol=1e-6)


def test_posterior_datasets_are_counted_and_distinct(known_acquisition_estimator, tmp_path):
    from agglib.sets_training.pipeline import continuous_stores

    _, prof, stores = known_acquisition_estimator
    with pytest.raises(ValueError, match="posterior_datasets=2"):
        continuous_stores(prof, stores[0])
    with pytest.raises(ValueError, match="the same dataset twice"):
        continuous_stores(prof, [stores[0], stores[0]])
    with pytest.raises(ValueError, match="needs acquisition: randomised"):
        agglib.load_profile("tiny", posterior_acquisition_input=True)


def test_calibration_with_the_acquisition_given(known_acquisition_estimator):
    """The fixed-acquisition checks as a user who gives the acquisition runs them: the same images,
    the posterior told (intensity scale, contrast); rows of both cases."""
    from agglib.evaluate.calibration import calibration_under_acquisitions, given_acquisition

    est, prof, _ = known_acquisition_estimator
    acquisitions = {"contrast ×0.69": {"wo3_contrast": 0.69}, "counts ×10": {"intensity_scale": 10.0},
                    "contrast ×0.5": {"wo3_contrast": 0.5}}
    table = calibration_under_acquisitions(est, prof, acquisitions, 6, (1, 4), seed=9, draws=50,
                                           acquisition_given=(False, True), show_progress_bars=False)
    unknown, known = table.xs(False, level="acquisition given"), table.xs(True, level="acquisition given")
    assert known.loc["counts ×10", "joint HPD"].isna().all()
    # accepted by the intensity check, but a contrast outside the trained 0.65–1.1: fit refuses it when given
    assert unknown.loc["contrast ×0.5", "joint HPD"].notna().all() and unknown.loc["contrast ×0.5", "refused"].lt(0.5).all()
    assert known.loc["contrast ×0.5", "joint HPD"].isna().all() and known.loc["contrast ×0.5", "refused"].eq(1.0).all()
    assert known.loc["contrast ×0.69", "rho RMSE"].notna().all()
    assert not np.allclose(known.loc["contrast ×0.69", "rho spread"], unknown.loc["contrast ×0.69", "rho spread"])
    fresh = {"config_id": np.array([0, 0, 1]), "acquisitions": [{"wo3_contrast": 0.69}, {"intensity_scale": 1.5}]}
    got = given_acquisition(fresh)
    np.testing.assert_allclose(got["wo3_contrast"], [0.69, 0.69, 1.0])
    np.testing.assert_allclose(got["intensity_scale"], [1.0, 1.0, 1.5])


def test_copies_of_a_configuration_are_held_out_together():
    """The two reads of a configuration (acquisition given, unknown) share images and θ: validating
    on one while training on the other would pick the weights on what the steps saw."""
    from agglib.sets_training.posterior import validation_configurations

    config_id = np.repeat(np.arange(40), 3)
    alone = validation_configurations(config_id, 0.2, seed=5)
    assert 0 < alone.sum() < 40
    before = np.random.default_rng([5, 10**6]).random(40) < 0.2        # the draw of the estimators trained so far
    np.testing.assert_array_equal(validation_configurations(config_id, 0.2, seed=5, groups=config_id), alone)
    np.testing.assert_array_equal(alone, before)
    twins = validation_configurations(config_id, 0.2, seed=5, groups=config_id % 20)    # 0 and 20 are one sample …
    assert 0 < twins.sum() < 40 and np.array_equal(twins[:20], twins[20:])
    with pytest.raises(ValueError, match="constant within each configuration"):
        validation_configurations(config_id, 0.2, seed=5, groups=np.arange(config_id.size))
