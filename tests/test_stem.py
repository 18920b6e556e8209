"""HAADF reference table and the STEM renderer (paper §2.1.3–2.1.4)."""

import json
import warnings

import numpy as np
import pytest

import agglib
from agglib.model.aggregate import TIO2, WO3, Aggregate
from agglib.stem import (DEFAULT_PIXEL_SIZE_NM, ExtrapolationWarning, HaadfTable, StemSettings,
                         load_reference_table, projected_extents, render_stem)
from agglib.stem.kernels import noisy_counts

T = np.arange(0.0, 61.0)
# Synthetic, deliberately non-linear curves so per-pixel sampling errors would show.
SYNTH = HaadfTable(
    T,
    {"TiO2-x": {"a": 5.5e-4 * T, "b": 0.02 * (1 - np.exp(-T / 40.0))},
     "WO3-x": {"a": 2.3e-3 * T, "b": 0.15 * (1 - np.exp(-T / 60.0))}},
    {"TiO2-x": "TiO2", "WO3-x": "WO3"})


def small_aggregate(seed=1, n=30):
    return agglib.generate_aggregate(agglib.ModelParams(2.2, 0.5, 2, 2), n_particles=n, seed=seed)


# ---------------------------------------------------------------- shipped table

def test_shipped_table_covers_four_phases_times_ten_orientations():
    table = load_reference_table()
    assert sorted(table.phases) == ["TiO2-anatase", "TiO2-rutile", "WO3-delta", "WO3-gamma"]
    for phase in table.phases:
        names = list(table.curves[phase])
        assert len(names) == 10 and "random" in names
        assert [n for n in names if n.startswith("tilt-")] == [f"tilt-{k}" for k in range(9)]
    assert table.thickness_nm[0] == 0 and table.thickness_nm[-1] >= 60
    for key in ("abtem", "ase", "date", "settings"):
        assert key in table.provenance


def test_shipped_table_wo3_brighter_than_tio2_at_equal_thickness():
    table = load_reference_table()
    wo3, tio2 = table.curve_stack("WO3"), table.curve_stack("TiO2")
    # On average over phases and orientations, at every thickness.
    assert np.all(wo3[:, 1:].mean(axis=0) > 2.5 * tio2[:, 1:].mean(axis=0))
    # Every WO3 curve above every TiO2 curve from 10 nm on; below that a TiO2 zone axis can
    # channel as much as a tilted WO3 crystal.
    k10 = int(np.searchsorted(table.thickness_nm, 10.0))
    assert np.all(wo3[:, k10:].min(axis=0) > tio2[:, k10:].max(axis=0))


def test_shipped_table_rises_monotonically_with_thickness():
    table = load_reference_table()
    for phase in table.phases:
        for name, curve in table.curves[phase].items():
            assert curve[0] == pytest.approx(0.0, abs=1e-6)
            assert np.all(np.diff(curve) > 0), f"{phase}/{name} not increasing"


def test_table_extrapolates_linearly_and_says_so():
    table = HaadfTable(T, {"TiO2-x": {"a": 1e-3 * T}, "WO3-x": {"a": 4e-3 * T}},
                       {"TiO2-x": "TiO2", "WO3-x": "WO3"})
    assert table.intensity(30.5, "WO3-x", "a") == pytest.approx(0.122)
    with pytest.warns(ExtrapolationWarning, match="exceeds the HAADF table"):
        assert table.intensity(80.0, "TiO2-x", "a") == pytest.approx(0.08)
    with pytest.raises(ValueError, match="phase='nope'"):
        table.intensity(1.0, "nope", "a")


def test_table_round_trip(tmp_path):
    path = SYNTH.save(tmp_path / "t.json")
    back = HaadfTable.load(path)
    assert back.phases == SYNTH.phases
    np.testing.assert_allclose(back.curve_stack("WO3"), SYNTH.curve_stack("WO3"), rtol=1e-5)
    with pytest.raises(FileNotFoundError, match="no HAADF reference table"):
        HaadfTable.load(tmp_path / "missing.json")


def test_table_generation_is_resumable(tmp_path):
    """A killed run keeps finished curves; a rerun computes only the missing ones."""
    pytest.importorskip("abtem")
    from agglib.stem.multislice import MultisliceSettings
    from agglib.stem.reference import build_reference_table

    cheap = MultisliceSettings(thickness_nm=1.0, thickness_step_nm=0.5, box_A=6.0,
                               positions=1, zone_axis_positions=1, slice_A=1.0)
    path = tmp_path / "table.json"
    first = build_reference_table(path, phases=["TiO2-rutile"], settings=cheap, workers=1)
    parts = sorted((tmp_path / "table.json.parts").glob("*.json"))
    assert len(parts) == 10
    stamps = {p.name: p.stat().st_mtime_ns for p in parts}
    parts[3].unlink()                                      # as if the run died before curve 4
    second = build_reference_table(path, phases=["TiO2-rutile"], settings=cheap, workers=1)
    for p in (tmp_path / "table.json.parts").glob("*.json"):
        if p.name != parts[3].name:
            assert p.stat().st_mtime_ns == stamps[p.name], "a finished curve was recomputed"
    np.testing.assert_allclose(second.curve_stack("TiO2"), first.curve_stack("TiO2"))
    assert json.loads(path.read_text())["provenance"]["abtem"]


# ---------------------------------------------------------------- renderer

def analytic_particle_integral(table, curve_name, radius_nm, pixel_nm):
    """∫∫ I(2√(r²−ρ²)) dA over one particle, in pixel units.

    With the chord u = 2√(r²−ρ²), 2πρ dρ = (π/2) u du, so the integral is ∫₀²ʳ (π/2) u I(u) du.
    """
    phase, orientation = curve_name.split("/")
    u = np.linspace(0.0, 2 * radius_nm, 20001)
    value = np.trapezoid(0.5 * np.pi * u * table.intensity(u, phase, orientation), u)
    return value / pixel_nm**2


def test_noise_free_total_equals_sum_of_particle_integrals():
    agg = small_aggregate()
    settings = StemSettings(noise=False, image_size_px=256, pixel_size_nm=1.7)
    res = render_stem(agg, seed=4, settings=settings, table=SYNTH, return_maps=True)
    assert res.in_field
    expected = sum(analytic_particle_integral(SYNTH, name, r, settings.pixel_size_nm)
                   for name, r in zip(res.curve_names, agg.radii)) * settings.electrons_per_pixel
    assert res.image.sum(dtype=np.float64) == pytest.approx(expected, rel=0.01)
    total_maps = sum(m.sum(dtype=np.float64) for m in res.material_maps.values())
    assert total_maps == pytest.approx(res.expected.sum(dtype=np.float64), rel=1e-6)


def test_blur_conserves_the_total_and_spreads_the_signal():
    agg = small_aggregate(seed=2)
    sharp = render_stem(agg, seed=5, table=SYNTH,
                        settings=StemSettings(noise=False, blur=False, image_size_px=256, pixel_size_nm=1.7))
    blurred = render_stem(agg, seed=5, table=SYNTH,
                          settings=StemSettings(noise=False, blur=True, image_size_px=256,
                                                pixel_size_nm=1.7, semiangle_mrad=80.0))
    assert blurred.sum(dtype=np.float64) == pytest.approx(sharp.sum(dtype=np.float64), rel=1e-9)
    assert blurred.max() < sharp.max()
    assert np.count_nonzero(blurred) > np.count_nonzero(sharp)


def test_defocus_blur_grows_with_distance_from_the_focal_plane():
    agg = small_aggregate(seed=3)
    res = render_stem(agg, seed=1, table=SYNTH, return_maps=True,
                      settings=StemSettings(noise=False, image_size_px=256, pixel_size_nm=1.7))
    z = (agg.positions @ res.rotation.T)[:, 2]
    np.testing.assert_allclose(res.sigma_nm, np.abs(z) * np.tan(21.1e-3))


def test_shot_noise_is_poisson_for_the_dose():
    agg = small_aggregate(seed=6)
    base = dict(image_size_px=256, pixel_size_nm=1.7, scan_noise_nm=0.0)
    res = render_stem(agg, seed=8, table=SYNTH, return_maps=True, settings=StemSettings(**base))
    mean = res.expected.astype(np.float64)
    mask = mean > 50
    z = (res.image[mask] - mean[mask]) / np.sqrt(mean[mask])
    assert mask.sum() > 2000
    assert abs(z.mean()) < 0.05                # unbiased
    assert z.var() == pytest.approx(1.0, abs=0.06)   # variance = mean (Poisson)
    assert np.all(res.image == np.round(res.image))  # whole electron counts
    # The mean scales with the dose on the pixel area.
    double = render_stem(agg, seed=8, table=SYNTH, settings=StemSettings(**base, dose_e_per_A2=298.0,
                                                                         noise=False))
    np.testing.assert_allclose(double, 2 * mean, rtol=1e-5)
    assert StemSettings(pixel_size_nm=1.0).electrons_per_pixel == pytest.approx(149 * 100)


def test_scan_noise_shifts_whole_lines():
    signal = np.zeros((4, 8))
    signal[:3, 4] = 1.0
    out = np.zeros((4, 8), dtype=np.float32)
    noisy_counts(signal, 1e6, np.array([0.0, 1.0, -2.0, 0.5]), 7, out)
    assert np.argmax(out[0]) == 4 and np.argmax(out[1]) == 3 and np.argmax(out[2]) == 6
    assert np.all(out[3] == 0)                     # a line without signal stays empty
    assert out[0, 4] == pytest.approx(1e6, rel=0.01)
    agg = small_aggregate(seed=7)
    quiet = render_stem(agg, seed=2, table=SYNTH, settings=StemSettings(image_size_px=256, pixel_size_nm=1.7,
                                                                        scan_noise_nm=0.0))
    shaky = render_stem(agg, seed=2, table=SYNTH, settings=StemSettings(image_size_px=256, pixel_size_nm=1.7,
                                                                        scan_noise_nm=2.0))
    assert not np.array_equal(quiet, shaky)


def test_same_seed_same_image_different_seed_different_image():
    agg = small_aggregate(seed=9)
    s = StemSettings(image_size_px=128, pixel_size_nm=3.0)
    a = render_stem(agg, seed=11, settings=s, table=SYNTH)
    b = render_stem(agg, seed=11, settings=s, table=SYNTH)
    c = render_stem(agg, seed=12, settings=s, table=SYNTH)
    assert a.dtype == np.float32 and a.shape == (128, 128)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_material_maps_separate_the_materials():
    agg = small_aggregate(seed=10)
    only_wo3 = Aggregate(agg.positions, agg.radii, np.full(agg.n_particles, WO3))
    res = render_stem(only_wo3, seed=1, table=SYNTH, return_maps=True,
                      settings=StemSettings(noise=False, image_size_px=256, pixel_size_nm=1.7))
    assert res.material_maps["TiO2"].sum() == 0 and res.thickness_maps["TiO2"].sum() == 0
    assert res.material_maps["WO3"].sum() > 0
    # Projected thickness integrates to the particle volumes.
    volume_px = (4 / 3 * np.pi * agg.radii**3).sum() / 1.7**2
    assert res.thickness_maps["WO3"].sum() == pytest.approx(volume_px, rel=0.01)
    # TiO2 is dimmer than WO3 for the same geometry.
    only_tio2 = Aggregate(agg.positions, agg.radii, np.full(agg.n_particles, TIO2))
    dim = render_stem(only_tio2, seed=1, table=SYNTH, settings=res.settings)
    assert dim.sum() < 0.5 * res.image.sum()


@pytest.mark.parametrize("bad, match", [
    (dict(pixel_size_nm=-1.0), "pixel_size_nm=-1"),
    (dict(image_size_px=0), "image_size_px=0"),
    (dict(dose_e_per_A2=0.0), "dose_e_per_A2=0"),
    (dict(scan_noise_nm=float("nan")), "scan_noise_nm=nan"),
    (dict(semiangle_mrad=-3.0), "semiangle_mrad=-3"),
])
def test_settings_out_of_range_are_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        StemSettings(**bad)


def test_bad_aggregates_are_refused():
    agg = small_aggregate()
    pos = agg.positions.copy()
    pos[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite positions"):
        render_stem(Aggregate(pos, agg.radii, agg.labels), table=SYNTH)
    with pytest.raises(ValueError, match="no particles"):
        render_stem(Aggregate(np.zeros((0, 3)), [], []), table=SYNTH)
    with pytest.raises(TypeError, match="agglib.Aggregate"):
        render_stem(agg.positions, table=SYNTH)


def test_default_field_of_view_holds_95_percent_of_grid_aggregates():
    params = agglib.draw_grid_params(400, seed=21)
    aggs = agglib.generate_aggregates(params, seed=22, workers=1)
    extents = projected_extents(aggs, seed=23)
    fov = StemSettings().field_of_view_nm
    assert StemSettings().pixel_size_nm == DEFAULT_PIXEL_SIZE_NM
    assert np.mean(extents <= fov) >= 0.95


def test_render_with_shipped_table_warns_only_beyond_its_range():
    agg = small_aggregate()
    with warnings.catch_warnings():
        warnings.simplefilter("error", ExtrapolationWarning)
        img = render_stem(agg, seed=0)
    assert img.shape == (512, 512) and img.max() > 0


def test_many_images_do_not_depend_on_worker_count():
    from agglib.stem import render_stem_many

    aggs = agglib.generate_aggregates(agglib.ModelParams(2.0, 0.5, 1, 2), 6, seed=1, n_particles=20)
    s = StemSettings(image_size_px=96, pixel_size_nm=4.0)
    one = render_stem_many(aggs, seed=3, settings=s, table=SYNTH, workers=1)
    two = render_stem_many(aggs, seed=3, settings=s, table=SYNTH, workers=2)
    assert one.shape == (6, 96, 96) and np.array_equal(one, two)
    assert np.array_equal(one[4], render_stem(aggs[4], seed=np.random.SeedSequence(3).spawn(6)[4],
                                              settings=s, table=SYNTH))
