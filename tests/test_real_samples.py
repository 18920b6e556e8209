"""Real samples: particle laws as data, profile files, the bremen2023 profile, fields of view, border and size checks."""

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

import agglib
from agglib.cli import main
from agglib.dataset import build_dataset
from agglib.dataset.build import sample_identity
from agglib.model.particles import PAPER_PARTICLES, ParticleCount, ParticleModel, RadiusDistribution

# ------------------------------------------------------------------ the paper's stores keep their bytes

#: Content digests of small stores of the quick and paper profiles (and of their identities), recorded
#: with agglib at commit b5029bc, before the particle laws became profile data. Arrays, shards and the
#: identity without the version string; see ``content_digest``.
RECORDED = {
    "quick-grid-fixed": "a2520b5b6f180e7a0e27add17e903482db8b88ff1838ed39ea0a7113d14bb618",
    "paper-grid-fixed": "88f20f208ec6c319055fce01061db030c575e423e4413f0be5919a8196d19c6d",
    "quick-continuous-fixed": "b4c6e81a1c852bc60f4eafb5c3197ddd9b09430b3b240df0c7783be1b09d93e3",
    "quick-continuous-randomised": "d905fee18cc632410556ad54bb1ee74b22607f8519aa0344d7086a06e5c9eeae",
    "identity-quick-grid": "f50e7bc349508cdfdbc76c958b351eaa23860f35aa87ad36326a112b8ef97976",
    "identity-quick-continuous": "6b3fc5da60f4b7488cc41607014896e4357ad14f72a8f78f07ded86855c38bad",
    "identity-paper-grid": "f7cdffe3c784565be84540234347f04bfdc9bb1055e33a90da2b2a06009541d6",
    "identity-paper-continuous": "b6b94add40b27eede3af0711f5546566e6d767ee258803669cd5e226edf56162",
}
SMALL = dict(rho_values=[0.3, 0.7], theta0_values=[2], theta1_values=[3], df_per_triple=1, samples_per_config=3,
             eval_per_config=1)
CONTINUOUS = dict(posterior_configs_T=2, posterior_configs_E=1, encoder_configs_T=1, posterior_images_T=2,
                  posterior_images_E=2)


def content_digest(path) -> str:
    """sha256 over every array of a store (but the build state) and its identity without the version."""
    root = zarr.open_group(str(path), mode="r")
    h = hashlib.sha256()

    def walk(group, prefix=""):
        for name, arr in sorted(group.arrays()):
            if prefix + name != "build/done":
                h.update((prefix + name).encode())
                h.update(np.ascontiguousarray(arr[...]).tobytes())
        for name, sub in sorted(group.groups()):
            if prefix + name != "build":
                walk(sub, prefix + name + "/")

    walk(root)
    identity = dict(root.attrs["identity"])
    identity.pop("agglib")
    h.update(json.dumps(identity, sort_keys=True).encode())
    return h.hexdigest()


@pytest.mark.parametrize("name,design,extra", [("quick", "grid", {}), ("paper", "grid", {}),
                                               ("quick", "continuous", CONTINUOUS),
                                               ("quick", "continuous", {**CONTINUOUS, "acquisition": "randomised"})])
def test_quick_and_paper_stores_are_byte_identical_to_before(tmp_path, name, design, extra):
    profile = agglib.load_profile(name, **{**SMALL, **extra})
    path = tmp_path / "store.zarr"
    build_dataset(path, profile, seed=5, workers=1, show_progress_bars=False, design=design)
    assert content_digest(path) == RECORDED[f"{name}-{design}-{extra.get('acquisition', 'fixed')}"]


@pytest.mark.parametrize("name", ["quick", "paper"])
@pytest.mark.parametrize("design", ["grid", "continuous"])
def test_quick_and_paper_identities_are_unchanged(name, design):
    identity = sample_identity(agglib.load_profile(name), 0, design)
    identity.pop("agglib")
    assert "particles" not in identity["profile"]
    assert hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest() == RECORDED[f"identity-{name}-{design}"]


def test_the_digest_sees_a_change_of_particles(tmp_path):
    """The negative control: the same profile with other particles gives another store."""
    other = ParticleModel.same_radii(RadiusDistribution(11.0, 3.0))
    profile = agglib.load_profile("quick", **SMALL, particles=other)
    build_dataset(tmp_path / "s.zarr", profile, seed=5, workers=1, show_progress_bars=False)
    assert content_digest(tmp_path / "s.zarr") != RECORDED["quick-grid-fixed"]
    assert sample_identity(profile, 5)["profile"]["particles"] == other.to_dict()


# ------------------------------------------------------------------ particle laws


def ks_distance(a, b) -> float:
    a, b = np.sort(a), np.sort(b)
    grid = np.concatenate([a, b])
    return float(np.max(np.abs(np.searchsorted(a, grid, "right") / a.size - np.searchsorted(b, grid, "right") / b.size)))


def test_bremen2023_reproduces_the_measured_radii_and_particle_counts():
    from agglib.stem.measurements import load_haadf_measurements

    measured, _ = load_haadf_measurements()
    particles = agglib.load_profile("bremen2023").particles
    rng = np.random.default_rng(0)
    for name, law in (("WO3", particles.radius_wo3), ("TiO2", particles.radius_tio2)):
        radii = measured.loc[measured.material == name, "radius_nm"].to_numpy()
        assert law.measured_nm == pytest.approx(tuple(radii))           # the profile's list is the shipped one
        assert ks_distance(law.sample(rng, 20_000), radii) <= 0.15
    # the control: the paper's law is far from the measured radii
    assert ks_distance(PAPER_PARTICLES.radius_wo3.sample(rng, 20_000),
                       measured.loc[measured.material == "WO3", "radius_nm"].to_numpy()) > 0.5
    counts = [particles.n_particles.sample(rng) for _ in range(20_000)]
    assert min(counts) == 9 and max(counts) == 657 and 20 <= np.median(counts) <= 60


def test_radii_follow_each_materials_law_and_n_its_law():
    particles = ParticleModel(RadiusDistribution(4.0, 0.4), RadiusDistribution(9.0, 0.9), ParticleCount(30, 40))
    aggs = agglib.generate_aggregates(agglib.ModelParams(2.0, 0.5, 2, 2), 20, seed=1, particles=particles, workers=1)
    radii = np.concatenate([a.radii for a in aggs])
    labels = np.concatenate([a.labels for a in aggs])
    assert radii[labels == agglib.model.WO3].mean() == pytest.approx(4.0, rel=0.05)
    assert radii[labels == agglib.model.TIO2].mean() == pytest.approx(9.0, rel=0.05)
    assert all(30 <= a.n_particles <= 40 for a in aggs)


def test_large_low_df_aggregates_of_measured_particles_complete():
    particles = agglib.load_profile("bremen2023").particles
    agg = agglib.generate_aggregate(agglib.ModelParams(1.5, 0.5, 1, 3), 650, seed=2, particles=particles)
    assert agg.n_particles == 650


@pytest.mark.parametrize("law,match", [({"mean": -1, "sd": 1}, r"quick.particles: radius_wo3_nm: mean=-1 nm is out of range"),
                                       ({"measured": [5.0, 0.0]}, r"measured radius=0.0 .*out of range"),
                                       ({"median": 5}, r"accepted: \{mean: <nm>, sd: <nm>\}")])
def test_bad_particle_laws_are_refused_naming_the_value(law, match):
    with pytest.raises(ValueError, match=match):
        agglib.load_profile("quick", particles={"radius_wo3_nm": law})


# ------------------------------------------------------------------ profile files


def test_a_profile_file_is_a_profile_over_its_base(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text("base: tiny\npixel_size_nm: 1.0\nparticles:\n  n_particles: {range: [5, 9]}\n")
    p = agglib.load_profile(f)
    assert p.name == "mine" and p.source == str(f) and p.batch_size == agglib.load_profile("tiny").batch_size
    assert p.pixel_size_nm == 1.0 and p.particles.n_particles == ParticleCount(5, 9)
    assert p.dataset_fields()["particles"]["n_particles"] == {"range": [5, 9]}
    f.write_text("base: tiny\nepochs: 3\n")
    with pytest.raises(ValueError, match=r"mine.yaml: unknown profile fields \['epochs'\]"):
        agglib.load_profile(f)
    with pytest.raises(FileNotFoundError, match="agglib profiles write"):
        agglib.load_profile(tmp_path / "missing.yaml")


def write_images(folder, count, pixel_nm, size, particles, theta=(1.9, 0.5, 2, 2), seed=0, with_pixel_size=True):
    folder.mkdir(parents=True, exist_ok=True)
    settings = agglib.StemSettings(image_size_px=size, pixel_size_nm=pixel_nm)
    aggs = agglib.generate_aggregates(agglib.ModelParams(*theta), count, seed=seed, particles=particles, workers=1)
    paths = []
    for k, agg in enumerate(aggs):
        img = agglib.render_stem(agg, seed=seed * 100 + k, settings=settings)
        p = folder / f"img{k:02d}.tif"
        if with_pixel_size:
            tifffile.imwrite(p, img, imagej=True, resolution=(1 / pixel_nm, 1 / pixel_nm), metadata={"unit": "nm"})
        else:
            tifffile.imwrite(p, img)
        paths.append(p)
    return paths


def test_profiles_write_makes_a_profile_from_images_and_radii(tmp_path, capsys):
    write_images(tmp_path / "images", 2, 0.5, 180, ParticleModel.same_radii(RadiusDistribution(6, 1.5), ParticleCount(9, 12)))
    radii = tmp_path / "radii.csv"
    radii.write_text("material,radius_nm\n" + "".join(f"WO3,{r}\n" for r in (5.0, 6.0, 7.5))
                     + "".join(f"TiO2,{r}\n" for r in (4.0, 5.5)))
    counts = tmp_path / "counts.csv"
    counts.write_text("n_particles\n9\n30\n200\n")
    out = tmp_path / "mine.yaml"
    assert main(["profiles", "write", str(out), "--images", str(tmp_path / "images"), "--radii", str(radii),
                 "--n-particles", str(counts)]) == 0
    assert "agglib train-estimator --profile" in capsys.readouterr().out
    p = agglib.load_profile(out)
    assert p.image_size_px == 128 and p.pixel_size_nm * 128 == pytest.approx(90.0)      # 180 px × 0.5 nm
    assert p.particles.radius_tio2.measured_nm == (4.0, 5.5) and p.particles.n_particles.measured == (9, 30, 200)
    assert p.acquisition == "randomised"
    assert main(["profiles", "write", str(out), "--images", str(tmp_path / "images"), "--radii", str(radii)]) == 2
    assert "exists" in capsys.readouterr().err                                          # never overwritten
    (tmp_path / "own.yaml").write_text("my notes\n")
    assert main(["profiles", "write", str(tmp_path / "own.yaml"), "--images", str(tmp_path / "images"),
                 "--radii", str(radii), "--overwrite"]) == 2
    assert (tmp_path / "own.yaml").read_text() == "my notes\n"                           # not agglib's: kept


@pytest.mark.parametrize("case,match", [
    ("no_pixel_size", r"img00.tif: .*no pixel size; give it with --pixel-size"),
    ("radius_zero", r"radii.csv, line 3: radius_nm=0 must be > 0"),
    ("empty_csv", r"radii.csv: the CSV is empty"),
    ("header_only_csv", r"radii.csv: the CSV has a header line \(radius_nm\) but no rows"),
    ("no_radius_column", r"radii.csv: no radius_nm \(or diameter_nm\) column; found size: name the column"),
    ("reversed_range", r"--n-particles 80-20: give LOW-HIGH with 1 ≤ LOW ≤ HIGH ≤ 10000 \(range \[80, 20\]"),
])
def test_profiles_write_refuses_bad_input_in_one_line(tmp_path, capsys, case, match):
    write_images(tmp_path / "images", 1, 0.5, 160, ParticleModel.same_radii(RadiusDistribution(6, 1.5), ParticleCount(9, 12)),
                 with_pixel_size=case != "no_pixel_size")
    radii = tmp_path / "radii.csv"
    radii.write_text({"radius_zero": "radius_nm\n5\n0\n", "empty_csv": "", "header_only_csv": "radius_nm\n",
                      "no_radius_column": "size\n5\n6\n"}.get(case, "radius_nm\n5\n6\n"))
    out = tmp_path / "p.yaml"
    extra = ["--n-particles", "80-20"] if case == "reversed_range" else []
    assert main(["profiles", "write", str(out), "--images", str(tmp_path / "images"), "--radii", str(radii),
                 *extra]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and re.search(match, err), err
    assert not out.exists()


# ------------------------------------------------------------------ fields of view, border and size checks

BREMEN = agglib.load_profile("bremen2023").particles
needs_bremen = pytest.mark.skipif(not (Path(agglib.__file__).parent / "data" / "models" / "sets-bremen2023"
                                       / "posterior.pt").is_file(), reason="sets-bremen2023 not shipped")


@needs_bremen
def test_fit_on_80_nm_fields_of_view_at_0_1_nm_per_px_gives_intervals(tmp_path):
    from agglib.fit import characterise

    paths = write_images(tmp_path / "s", 6, 0.1, 800, ParticleModel(BREMEN.radius_wo3, BREMEN.radius_tio2,
                                                                         ParticleCount(12, 20)), seed=3)
    result = characterise(paths, n_bootstrap=10, seed=0)
    assert result.settings["estimator_chosen_by_field_of_view"] == "bremen2023"
    assert result.settings["estimator_field_of_view_nm"] == pytest.approx(80.0)
    for k in ("df", "rho", "theta0", "theta1"):
        lo, hi = result.intervals[k]
        assert lo < result.estimate[k] < hi or lo == hi == result.estimate[k]
    assert not any("particles look" in w or "border" in w for w in result.warnings), result.warnings


def test_a_field_of_view_no_estimator_holds_names_what_to_do(tmp_path):
    from agglib.fit import ImageInputError, characterise

    paths = write_images(tmp_path / "s", 2, 0.1, 300, BREMEN)                            # 30 nm
    with pytest.raises(ImageInputError, match=r"field of view 30 nm is smaller .* write a profile for your images"):
        characterise(paths, n_bootstrap=10)


def test_border_share_sees_an_aggregate_half_outside():
    from agglib.fit.image_checks import BORDER_WARN_SHARE, border_share, border_warnings

    settings = agglib.StemSettings(image_size_px=128, pixel_size_nm=3.4)
    agg = agglib.generate_aggregate(agglib.ModelParams(2.2, 0.5, 2, 2), 60, seed=4)
    image = agglib.render_stem(agg, seed=1, settings=settings) / settings.electrons_per_pixel
    assert border_share(image) < 0.01
    half = np.roll(image, 64, axis=1)[:, :]                       # the aggregate's centre on the border …
    half[:, :64] = np.median(image)                               # … and its other half outside the field
    assert border_share(half) > 1.5 * BORDER_WARN_SHARE
    warned = border_warnings([image, half], ["inside.tif", "cut.tif"], 435.0)
    assert len(warned) == 1 and warned[0].startswith("cut.tif: ") and "% of the aggregate's signal" in warned[0]


@needs_bremen
def test_size_warning_fires_on_half_size_particles_and_stays_silent_in_model(tmp_path):
    from agglib.fit import characterise

    small = ParticleModel(RadiusDistribution(3.2, 0.9), RadiusDistribution(3.1, 1.1), ParticleCount(12, 20))
    paths = write_images(tmp_path / "half", 8, 0.625, 128, small, seed=5)
    result = characterise(paths, n_bootstrap=10, check_intensity_scale=False)
    assert any("particles look smaller than the model's" in w for w in result.warnings), result.warnings
    same = ParticleModel(BREMEN.radius_wo3, BREMEN.radius_tio2, ParticleCount(12, 20))
    result = characterise(write_images(tmp_path / "same", 8, 0.625, 128, same, seed=5), n_bootstrap=10)
    assert not any("particles look" in w for w in result.warnings), result.warnings


def test_a_file_beside_the_store_that_agglib_did_not_write_is_kept(tmp_path):
    report = tmp_path / "s.zarr.build.json"
    report.write_text("my notes\n")
    build_dataset(tmp_path / "s.zarr", agglib.load_profile("quick", **SMALL), seed=5, workers=1, show_progress_bars=False)
    assert report.read_text() == "my notes\n"
    build_dataset(tmp_path / "t.zarr", agglib.load_profile("quick", **SMALL), seed=5, workers=1, show_progress_bars=False)
    assert json.loads((tmp_path / "t.zarr.build.json").read_text())["written_by"] == "agglib dataset build"


@needs_bremen
def test_fit_chooses_the_estimator_that_reads_most_images_and_skips_the_rest(tmp_path):
    from agglib.fit import ImageInputError, characterise

    particles = ParticleModel(BREMEN.radius_wo3, BREMEN.radius_tio2, ParticleCount(12, 20))
    paths = write_images(tmp_path / "s", 3, 0.625, 128, particles, seed=6) + write_images(tmp_path / "t", 1, 0.1, 300, particles)
    with pytest.raises(ImageInputError, match=r"t/img00.tif: field of view 30 nm is smaller than the estimator's 80 nm"):
        characterise(paths, n_bootstrap=10)
    result = characterise(paths, n_bootstrap=10, skip_bad=True)
    assert result.settings["estimator_chosen_by_field_of_view"] == "bremen2023" and result.n_images == 3


@pytest.mark.parametrize("csv_text,match", [
    ("material;radius_nm\nWO3;6,1\nWO3;5\nTiO2;5\nTiO2;6\n", None),                    # Excel in a comma-decimal locale
    ("material,radius_nm\nWO3,6.1,\nWO3,5\nTiO2,5\nTiO2,6\n", None),                    # a trailing comma
    ("material,radius_nm\nWO3,6.1\n\n\nWO3,5\nTiO2,0\nTiO2,6\n", r"radii.csv, line 6: radius_nm=0 must be > 0"),
    ("material,radius_nm\nWO3,6.1\nWO3\nTiO2,5\nTiO2,6\n", r"radii.csv, line 3: no radius_nm value"),
])
def test_radii_csv_dialects_and_line_numbers(tmp_path, csv_text, match):
    from agglib.fit.sample_profile import ProfileInputError, read_radii_csv

    path = tmp_path / "radii.csv"
    path.write_text(csv_text)
    if match is None:
        radii = read_radii_csv(path)
        assert radii["WO3"].tolist() == [6.1, 5.0] and radii["TiO2"].tolist() == [5.0, 6.0]
    else:
        with pytest.raises(ProfileInputError, match=match):
            read_radii_csv(path)
    path.write_bytes("radius_nm\n6\n5\n".encode("utf-16"))                            # Excel's "Unicode text"
    assert read_radii_csv(path)["WO3"].tolist() == [6.0, 5.0]
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe")
    with pytest.raises(ProfileInputError, match="radii.csv: not a text CSV file"):
        read_radii_csv(path)
