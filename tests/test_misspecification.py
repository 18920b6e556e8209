"""The out-of-model warning (agglib.misspecification): calibration on synthetic features, storage,
input checks, and the shipped encoder flagging samples of half-radius particles."""

import json

import numpy as np
import pytest

from agglib.misspecification import COMBINED_PARTS, STATISTICS, SummaryReference, shrunk_covariance

D = 6
IMAGES = 24


def gaussian_sets(rng, configs, images=IMAGES, between_sd=0.0, shift=0.0, scale=1.0):
    """(configs, images, D): per configuration a centre N(0, between_sd²), images N(centre, 1) —
    shifted by ``shift`` and scaled by ``scale`` about the centre."""
    centres = rng.normal(0.0, between_sd, (configs, 1, D)) if between_sd else np.zeros((configs, 1, D))
    return centres + shift + scale * rng.normal(size=(configs, images, D))


def fit_reference(statistic="combined", between_sd=0.0, configs=80, seed=0):
    """Fitted on 80 configurations of 36 images (more than ``max_images``: many subsets even at M = 24)."""
    x = gaussian_sets(np.random.default_rng(1000 + seed), configs, images=36, between_sd=between_sd)
    return SummaryReference.fit(x.reshape(-1, D), np.repeat(np.arange(configs), 36), seed=seed,
                                max_images=IMAGES, statistic=statistic)


@pytest.fixture(scope="module")
def references():
    return {(s, b): fit_reference(s, b) for s in STATISTICS for b in (0.0, 0.7)}


@pytest.mark.parametrize("between_sd", [0.0, 0.7])
@pytest.mark.parametrize("statistic", STATISTICS)
def test_in_model_sets_rarely_flagged(references, statistic, between_sd):
    """At level 0.99 about 1 % of fresh in-distribution sets are flagged (2,000 sets per M: the
    binomial SD is 0.2 %; the bounds leave room for the thresholds' own estimation error)."""
    ref = references[statistic, between_sd]
    rng = np.random.default_rng(7)
    rates = []
    for m in (1, 4, 12, 24):
        sets = gaussian_sets(rng, 2000, images=m, between_sd=between_sd)
        rates.append(np.mean([ref.score(s)["out_of_model"] for s in sets]))
    assert max(rates) <= 0.035, rates
    assert 0.003 <= np.mean(rates) <= 0.025, rates


@pytest.mark.parametrize("between_sd", [0.0, 0.7])
@pytest.mark.parametrize("statistic", STATISTICS)
def test_shifted_sets_flagged(references, statistic, between_sd):
    """Sets of 12 images shifted by 1.5 in every feature (iid), or by 3.0 where set means differ by
    0.7 (random effects): 5 and 4 SDs of an in-model set mean."""
    ref = references[statistic, between_sd]
    shift = 1.5 if between_sd == 0 else 3.0
    sets = gaussian_sets(np.random.default_rng(8), 50, images=12, between_sd=between_sd, shift=shift)
    assert all(ref.score(s)["out_of_model"] for s in sets)


@pytest.mark.parametrize("statistic", ["combined", "mean_d2"])
def test_wider_sets_flagged(references, statistic):
    """Images scattered 2.5× wider than in-model ones, around an in-model centre."""
    ref = references[statistic, 0.7]
    sets = gaussian_sets(np.random.default_rng(9), 50, images=12, between_sd=0.7, scale=2.5)
    scores = [ref.score(s) for s in sets]
    assert all(s["out_of_model"] for s in scores)
    if statistic == "combined":                   # the scatter, not the mean, gives it away
        assert all(s["parts"]["mean_d2"] > s["parts"]["set_mean"] for s in scores)


def test_score_contents_and_large_sets(references):
    ref = references["combined", 0.7]
    x = np.random.default_rng(10).normal(size=(40, D))
    out = ref.score(x)
    assert out["M"] == 40 and out["threshold"] == ref.threshold(IMAGES) == ref.threshold(40)
    assert isinstance(out["out_of_model"], bool) and out["out_of_model"] == (out["statistic"] > out["threshold"])
    assert len(out["per_image_d2"]) == 40 and set(out["parts"]) == set(COMBINED_PARTS)
    np.testing.assert_allclose(out["per_image_d2"], ref.distances(x))
    assert ref.score(x[0])["M"] == 1                     # one image as a vector of D features
    assert ref.max_images == IMAGES and ref.dim == D
    np.testing.assert_allclose(ref.precision, ref.precision.T, atol=1e-12)


@pytest.mark.parametrize("statistic", ["combined", "set_mean"])
def test_round_trip_through_json(references, statistic):
    ref = references[statistic, 0.7]
    back = SummaryReference.from_dict(json.loads(json.dumps(ref.to_dict())))
    for name in ("mean", "transform", "between", "thresholds"):
        np.testing.assert_array_equal(getattr(back, name), getattr(ref, name))
    assert (back.statistic, back.level, back.features, back.info) == (ref.statistic, ref.level, ref.features,
                                                                       json.loads(json.dumps(ref.info)))
    x = np.random.default_rng(11).normal(size=(12, D))
    assert back.score(x) == ref.score(x)
    with pytest.raises(ValueError, match="read-only"):
        ref.mean[0] = 1.0


def test_refuses_bad_input(references):
    ref = references["combined", 0.0]
    with pytest.raises(ValueError, match=r"D=5 features per image.*D=6.*exactly 6"):
        ref.score(np.zeros((4, 5)))
    with pytest.raises(ValueError, match=r"M=0 images.*accepted range \[1, inf\)"):
        ref.score(np.zeros((0, D)))
    with pytest.raises(ValueError, match="NaN or infinite"):
        ref.score(np.full((3, D), np.nan))
    with pytest.raises(ValueError, match="2-D array"):
        ref.score(np.zeros((2, 3, D)))
    with pytest.raises(ValueError, match=r"M=0.*accepted range \[1, inf\)"):
        ref.threshold(0)
    with pytest.raises(ValueError, match="format"):
        SummaryReference.from_dict({"format": "something else"})

    rng = np.random.default_rng(12)
    x, cid = rng.normal(size=(10 * IMAGES, D)), np.repeat(np.arange(10), IMAGES)
    with pytest.raises(ValueError, match=r"max_images=30.*accepted range \[1, 24\]"):
        SummaryReference.fit(x, cid, seed=0, max_images=30)
    with pytest.raises(ValueError, match=r"level=1.*accepted range \(0, 1\)"):
        SummaryReference.fit(x, cid, seed=0, level=1.0)
    with pytest.raises(ValueError, match="3 configuration"):
        SummaryReference.fit(x[:3 * IMAGES], cid[:3 * IMAGES], seed=0)
    with pytest.raises(ValueError, match="one per image"):
        SummaryReference.fit(x, cid[:-1], seed=0)
    with pytest.raises(ValueError, match="statistic='median'; accepted: combined"):
        SummaryReference.fit(x, cid, seed=0, statistic="median")


def test_shrunk_covariance():
    rng = np.random.default_rng(13)
    independent, lam = shrunk_covariance(rng.normal(size=(50, 20)))
    assert lam > 0.5                                             # mostly noise: shrunk hard
    np.testing.assert_allclose(independent, independent.T)
    latent = rng.normal(size=(2000, 1))
    x = latent + 0.3 * rng.normal(size=(2000, 5))
    cov, lam = shrunk_covariance(x)
    assert lam < 0.05                                            # strong, well-measured correlations kept
    np.testing.assert_allclose(cov, np.cov(x, rowvar=False), rtol=0.06)
    assert np.all(np.linalg.eigvalsh(cov) > 0)
    cov, _ = shrunk_covariance(np.column_stack([rng.normal(size=100), np.ones(100)]))    # a constant feature
    assert np.all(np.linalg.eigvalsh(cov) > 0)


def test_default_estimator_stored_reference_flags_out_of_model_samples():
    """The shipped default estimator's stored reference (``est.out_of_model``, as ``agglib fit``
    uses it) flags samples of 12 images of half-radius particles and of EDX-like W and Ti maps,
    and mostly passes fresh in-model samples recorded with its own acquisition kind (one drawn per
    sample). benchmarks/out_of_model.py measures the rates: ~1 % false alarms, 100 % detection."""
    torch = pytest.importorskip("torch")
    import agglib
    from agglib.estimate import load_default_estimator
    from agglib.evaluate import fresh_configurations
    from agglib.evaluate.out_of_model import out_of_model_samples
    from agglib.stem.acquisition import AcquisitionRanges

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        est = load_default_estimator()
        assert est.out_of_model_reference is not None

        def flags(samples):
            return [est.out_of_model(est.encoder.encode(s).outputs)["out_of_model"] for s in samples]

        settings = est.stem_settings
        oom = {kind: flags(out_of_model_samples(kind, settings, n, 12, seed=40 + k)["images"])
               for k, (kind, n) in enumerate([("half_radius", 3), ("edx_w", 2), ("edx_ti", 2)])}
        fresh = fresh_configurations(agglib.load_profile("quick"), 6, 12, seed=41, prior="continuous",
                                     acquisition=AcquisitionRanges(), workers=1, show_progress_bars=False)
        in_model = flags(fresh["images"].reshape(6, 12, *fresh["images"].shape[1:]))
    finally:
        torch.set_num_threads(threads)
    assert all(all(f) for f in oom.values()), oom
    assert sum(in_model) <= 1, in_model
