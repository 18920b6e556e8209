"""Intervals calibrated for a stated acquisition (agglib.fit.acquisition_calibration, `agglib calibrate`,
`agglib fit --calibration`): what is simulated, what is fitted, how it is saved and applied, and
the errors a user meets. Its coverage under each fixed acquisition of the robustness table is a
recorded run (benchmarks/acquisition_calibration.py, notebook 6)."""

import json
from pathlib import Path

import numpy as np
import pytest

import agglib
from agglib.cli import main
from agglib.estimate import SampleEstimator, shipped_models_dir
from agglib.fit.acquisition_calibration import (AcquisitionCalibration, calibrate_for_acquisition,
                                                stated_acquisition_ranges)
from agglib.posterior import widened

SAMPLE = Path(__file__).parent / "data" / "fit_sample"


@pytest.fixture(scope="module")
def robust():
    return SampleEstimator.load(shipped_models_dir("robust"))


@pytest.fixture(scope="module")
def calibration(robust):
    """A small calibration for the measured detector and contrast, no extra blur, at the
    estimator's pixel size (20 samples of 4 images: seconds)."""
    return calibrate_for_acquisition(robust, {"intensity_scale": 0.72, "wo3_contrast": 0.69, "extra_blur_nm": 0.0,
                                              "pixel_zoom": 1.0}, configs=20, images=4, seed=3)


def test_stated_settings_are_fixed_and_the_others_keep_the_training_ranges(robust):
    trained = robust.training_metadata["acquisition_ranges"]
    r = stated_acquisition_ranges(robust, {"extra_blur_nm": 0.4, "dose_e_per_A2": 80}).to_dict()
    assert r["extra_blur_nm"] == [0.4, 0.4] and r["dose_e_per_A2"] == [80.0, 80.0]
    for key in ("intensity_scale", "wo3_contrast", "offset_fraction", "pixel_zoom", "at_pixel_size"):
        assert r[key] == trained[key], key
    # a stated zoom is every image's: none at the pixel size unless it is 1
    assert stated_acquisition_ranges(robust, {"pixel_zoom": 1.3}).at_pixel_size == 0.0
    assert stated_acquisition_ranges(robust, {"pixel_zoom": 1.0}).at_pixel_size == 1.0
    # an estimator trained on the paper's acquisition: what is not stated is the simulator's own
    paper = SampleEstimator.load(shipped_models_dir("sets"))
    r = stated_acquisition_ranges(paper, {"extra_blur_nm": 0.5})
    assert r.intensity_scale == (1.0, 1.0) and r.dose_e_per_A2 == (149.0, 149.0) and r.extra_blur_nm == (0.5, 0.5)
    assert r.at_pixel_size == 1.0


@pytest.mark.parametrize("stated, match", [
    ({"blur": 1.0}, r"unknown acquisition settings \['blur'\]; accepted: intensity_scale"),
    ({"dose_e_per_A2": -3}, r"dose_e_per_A2=-3.0 e/Å² is out of range; accepted range \[1, 100000\]"),
    ({"pixel_zoom": 0.2}, r"pixel_zoom=0.2 is out of range; accepted range \[0.5, 8\]"),
    ({"extra_blur_nm": float("nan")}, r"extra_blur_nm=nan nm is out of range; accepted range \[0, 10\] nm"),
    ({"intensity_scale": "abc"}, r"intensity_scale='abc' is not a real number; accepted range \[0.05, 20\]"),
    ({"wo3_contrast": True}, r"wo3_contrast=True is not a real number; accepted range \[0.2, 5\]"),
    ({"dose_e_per_A2": "150"}, r"dose_e_per_A2='150' is not a real number; accepted range \[1, 100000\] e/Å²"),
])
def test_a_bad_stated_setting_is_named_with_its_range(robust, stated, match):
    with pytest.raises(ValueError, match=match):
        stated_acquisition_ranges(robust, stated)


def test_the_laws_are_fitted_for_both_uses_and_applied_as_fitted(robust, calibration):
    assert calibration.widening_known_acquisition is not None and calibration.widening.max_images == 4
    assert {row["acquisition given"] for row in calibration.fit_table} == {False, True}
    calibrated = calibration.applied_to(robust)
    assert calibrated.widening == calibration.widening != robust.widening
    assert calibrated.widening_known_acquisition == calibration.widening_known_acquisition
    # the applied estimator's posteriors are the raw ones widened by the calibration's law
    aggregates = agglib.generate_aggregates(agglib.ModelParams(1.8, 0.6, 2, 3), 4, seed=5, workers=1)
    images = np.stack([agglib.render_stem(a, seed=k, settings=robust.stem_settings) for k, a in enumerate(aggregates)])
    summaries = robust.summaries(images.astype(np.float32))
    groups = [np.arange(4)]
    for law, s in ((calibration.widening, summaries),
                   (calibration.widening_known_acquisition,
                    robust.with_acquisition(summaries, {"intensity_scale": 0.72, "wo3_contrast": 0.69}))):
        expected = widened(robust.from_summaries(s, groups, recalibrated=False), *law.factors([4]))
        got = calibrated.from_summaries(s, groups)
        for name in ("df", "rho"):
            assert np.allclose(got.interval(name, 0.9), expected.interval(name, 0.9)), name
    # the estimator's own law gives other intervals
    assert not np.allclose(calibrated.from_summaries(summaries, groups).interval("df", 0.9),
                           robust.from_summaries(summaries, groups).interval("df", 0.9))


def test_save_load_and_what_a_calibration_refuses(robust, calibration, tmp_path):
    path = calibration.save(tmp_path / "cal.json")
    assert AcquisitionCalibration.load(path) == calibration
    with pytest.raises(FileExistsError, match="exists; pass overwrite=True"):
        calibration.save(path)
    assert calibration.save(path, overwrite=True) == path            # its own file may be replaced
    foreign = tmp_path / "notes.json"
    foreign.write_text('{"mine": 1}')
    for overwrite in (False, True):      # never replaced, and --overwrite is not what to try
        with pytest.raises(FileExistsError, match=r"was not written by agglib calibrate: not replaced \(choose another"):
            calibration.save(foreign, overwrite=overwrite)
    assert foreign.read_text() == '{"mine": 1}'
    with pytest.raises(ValueError, match="is not an acquisition calibration"):
        AcquisitionCalibration.load(foreign)
    with pytest.raises(FileNotFoundError, match="no such calibration file"):
        AcquisitionCalibration.load(tmp_path / "missing.json")
    # a calibration with a field removed, or stating the known acquisition in part, is refused by name
    whole = json.loads(path.read_text())
    for broken, match in (({k: v for k, v in whole.items() if k != "configs"}, "field 'configs' missing"),
                          ({k: v for k, v in whole.items() if k != "widening_known_acquisition"},
                           "field 'widening_known_acquisition' missing"),
                          ({**whole, "stated": {"intensity_scale": 0.72}}, r"garbled: stated \['intensity_scale'\]"),
                          ({**whole, "stated": {**whole["stated"], "blur": 1}}, "garbled: stated")):
        (tmp_path / "broken.json").write_text(json.dumps(broken))
        with pytest.raises(ValueError, match=rf"broken.json: not a whole acquisition calibration \({match}"):
            AcquisitionCalibration.load(tmp_path / "broken.json")
    # another estimator's posterior, the paper's networks
    with pytest.raises(ValueError, match=r"made for another estimator than the one used \(profile quick"):
        calibration.applied_to(SampleEstimator.load(shipped_models_dir("sets")))
    from agglib.estimate import ParameterEstimator

    with pytest.raises(ValueError, match="the paper method's networks give bootstrap intervals"):
        calibration.applied_to(ParameterEstimator.load(shipped_models_dir("paper")))


def test_a_calibrated_estimator_is_told_only_the_stated_acquisition(robust, calibration):
    calibrated = calibration.applied_to(robust)
    assert calibrated.check_known_acquisition({"intensity_scale": 0.72, "wo3_contrast": 0.69}) == \
        {"intensity_scale": 0.72, "wo3_contrast": 0.69}
    robust.check_known_acquisition({"intensity_scale": 1.0, "wo3_contrast": 0.69})        # the estimator itself: any
    with pytest.raises(ValueError, match="calibrated for intensity_scale 0.72 and wo3_contrast 0.69"):
        calibrated.check_known_acquisition({"intensity_scale": 1.0, "wo3_contrast": 0.69})
    with pytest.warns(UserWarning) as said:
        outside = calibrate_for_acquisition(robust, {"intensity_scale": 0.3, "wo3_contrast": 0.69}, configs=20,
                                            images=1, seed=2)
    said = [str(w.message) for w in said]
    assert any(w.startswith("stated outside the estimator's training ranges: intensity_scale 0.3 (trained on "
                            "0.45–1.6)") for w in said), said
    assert any(w.startswith("no law for the acquisition given to the posterior: intensity_scale=0.3 is out of range")
               for w in said), said
    unknown_only = calibrate_for_acquisition(robust, {"extra_blur_nm": 0.0}, configs=20, images=2, seed=1)
    for cal in (outside, unknown_only):
        assert cal.widening_known_acquisition is None
        with pytest.raises(ValueError, match="calibrated for an acquisition unknown to the posterior"):
            cal.applied_to(robust).check_known_acquisition({"intensity_scale": 0.72, "wo3_contrast": 0.69})


def test_calibration_simulates_the_stated_acquisition_and_leaves_out_refused_samples(robust, monkeypatch):
    import agglib.evaluate.sets as sets

    seen, real = [], sets.fresh_configurations
    monkeypatch.setattr(sets, "fresh_configurations", lambda *a, **k: seen.append(k["acquisition"]) or real(*a, **k))
    cal = calibrate_for_acquisition(robust, {"extra_blur_nm": 0.7, "pixel_zoom": 1.5}, configs=20, images=1, seed=4)
    assert seen[0].extra_blur_nm == (0.7, 0.7) and seen[0].pixel_zoom == (1.5, 1.5) and seen[0].at_pixel_size == 0.0
    assert seen[0].intensity_scale == tuple(robust.training_metadata["acquisition_ranges"]["intensity_scale"])
    assert cal.ranges == seen[0].to_dict() and 0.0 <= cal.refused < 0.5
    # an acquisition fit refuses (counts ten times too bright) cannot be calibrated for
    with pytest.raises(ValueError, match=r"fit.s intensity check refuses 9\d% of samples recorded with "
                                         r"intensity_scale 10: images recorded so are too far"):
        with pytest.warns(UserWarning, match=r"training ranges: intensity_scale 10 \(trained on 0.45–1.6\)"):
            calibrate_for_acquisition(robust, {"intensity_scale": 10.0}, configs=20, images=1, seed=4)


def test_cli_calibrate_then_fit_with_the_calibration(tmp_path, capsys, monkeypatch):
    cal = tmp_path / "cal.json"
    assert main(["calibrate", "--intensity-scale", "0.72", "--wo3-contrast", "0.69", "--extra-blur", "0",
                 "--configs", "20", "--images", "4", "--out", str(cal)]) == 0
    printed = capsys.readouterr().out
    assert "acquisition given, θ_Df:" in printed and f"agglib fit ... --calibration {cal}" in printed
    assert "calibrated for --intensity-scale 0.72, --wo3-contrast 0.69, --extra-blur 0 nm; drawn per sample" in printed
    assert "--intensity-scale 0.72 --wo3-contrast 0.69 (as stated) or without them" in printed
    assert main(["calibrate", "--configs", "20", "--out", str(cal)]) == 2
    assert "exists; pass overwrite=True (--overwrite) to replace it" in capsys.readouterr().err
    (tmp_path / "mine.json").write_text("{}")
    import agglib.fit.acquisition_calibration as module

    real = module.calibrate_for_acquisition
    monkeypatch.setattr(module, "calibrate_for_acquisition", lambda *a, **k: pytest.fail("simulated before refusing"))
    assert main(["calibrate", "--configs", "20", "--out", str(tmp_path / "mine.json"), "--overwrite"]) == 2
    assert "was not written by agglib calibrate: not replaced" in capsys.readouterr().err
    assert (tmp_path / "mine.json").read_text() == "{}"
    monkeypatch.setattr(module, "calibrate_for_acquisition", real)
    assert main(["calibrate", "--dose", "-3", "--out", str(tmp_path / "c2.json")]) == 2
    assert "--dose=-3.0 e/Å² is out of range; accepted range [1, 100000] e/Å²" in capsys.readouterr().err
    assert main(["calibrate", "--pixel-size", "9", "--out", str(tmp_path / "c2.json")]) == 2
    assert "--pixel-size 9: accepted range [0.425, 6.8] nm" in capsys.readouterr().err
    assert main(["calibrate", "--seed", "-1", "--out", str(tmp_path / "c2.json")]) == 2
    assert "agglib calibrate: error: --seed=-1 is out of range; accepted range [0, inf)" in capsys.readouterr().err
    assert not (tmp_path / "c2.json").exists()
    fit = ["fit", str(SAMPLE), "--pixel-size", "2.9", "--bootstrap", "20", "--shadows", "2", "--calibration", str(cal)]
    assert main([*fit, "--out", str(tmp_path / "a")]) == 0
    assert "(--intensity-scale 0.72, --wo3-contrast 0.69, --extra-blur 0 nm; its law for the acquisition unknown)" in \
        capsys.readouterr().out
    used = json.loads((tmp_path / "a" / "summary.json").read_text())["settings"]["acquisition_calibration"]
    assert used["stated"]["wo3_contrast"] == 0.69 and used["file"] == str(cal.resolve()) and used["images"] == 4
    assert used["stated in words"] == "--intensity-scale 0.72, --wo3-contrast 0.69, --extra-blur 0 nm"
    assert used["file_sha256"] == __import__("hashlib").sha256(cal.read_bytes()).hexdigest()
    assert used["law"] == "acquisition unknown"
    assert main([*fit, "--out", str(tmp_path / "c"), "--intensity-scale", "0.72", "--wo3-contrast", "0.69"]) == 0
    assert "its law for the acquisition given" in capsys.readouterr().out
    assert main([*fit, "--out", str(tmp_path / "b"), "--intensity-scale", "1", "--wo3-contrast", "1"]) == 2
    assert "calibrated for intensity_scale 0.72 and wo3_contrast 0.69" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_fit_warns_where_the_images_were_not_recorded_as_stated(calibration):
    from dataclasses import replace

    stated = replace(calibration, stated={**calibration.stated, "pixel_zoom": 3.4 / 2.9, "dose_e_per_A2": 149.0})
    assert stated.mismatch_warnings([2.9, 2.9], 3.4, 149.0, 2) == []
    assert stated.mismatch_warnings([2.9], 3.4, None, 1) == []                  # fractions: no dose to compare
    pixel, dose = stated.mismatch_warnings([2.9, 1.7], 3.4, 300.0, 2)
    assert "1 of 2 images have a pixel size (1.7 nm, …) other than the calibration's 2.9 nm" in pixel
    assert "read at 300 e/Å² but the calibration states 149 e/Å²" in dose
    unstated = replace(calibration, stated={"extra_blur_nm": 0.0})           # nothing stated, nothing to compare
    assert unstated.mismatch_warnings([1.7], 3.4, 300.0, 4) == []
    more, = unstated.mismatch_warnings([1.7] * 12, 3.4, 300.0, 12)             # fitted up to M = 4 only
    assert "fitted on samples of up to 4 images; for these 12 its law at 4 is used" in more


@pytest.mark.parametrize("name", ["robust", "bremen2023"])
def test_calibration_samples_are_made_as_the_estimators_training_images(name):
    """The profile the calibration simulates with has the estimator's particles, θ grid, image
    size, pixel size and dose (the Bremen estimator: measured particles at 80 nm fields of view)."""
    from agglib.dataset.build import stem_settings_for
    from agglib.fit.acquisition_calibration import estimator_profile

    estimator = SampleEstimator.load(shipped_models_dir(name))
    profile = estimator_profile(estimator)
    assert profile.particles == estimator.particles
    assert stem_settings_for(profile).to_dict() == estimator.stem_settings.to_dict()
    fields = estimator.training_metadata["profile_fields"]
    assert list(profile.df_values) == list(fields["df_values"]) and list(profile.theta0_values) == list(fields["theta0_values"])


def test_the_cli_shows_agglibs_warnings_as_plain_lines(capsys):
    import agglib.cli as cli
    import numpy

    others = []
    cli._show_warning(UserWarning("stated outside the estimator's training ranges"), UserWarning, cli.__file__, 9,
                      others=lambda *a: others.append(a))
    assert capsys.readouterr().err == "agglib: warning: stated outside the estimator's training ranges\n" and not others
    cli._show_warning(UserWarning("not ours"), UserWarning, numpy.__file__, 9, others=lambda *a: others.append(a))
    assert str(others[0][0]) == "not ours" and capsys.readouterr().err == ""      # others as shown before


def test_a_stated_acquisition_is_told_back_in_the_options_terms():
    from agglib.posterior import Widening

    stated = {"pixel_zoom": 3.4 / 2.9, "dose_e_per_A2": 150.0, "offset_fraction": 0.003, "intensity_scale": 0.72}
    assert AcquisitionCalibration(stated, {}, Widening()).stated_in_words(3.4) == \
        "--pixel-size 2.9 nm, --dose 150 e/Å², --offset 0.003 of the beam, --intensity-scale 0.72"
    assert AcquisitionCalibration({}, {}, Widening()).stated_in_words(3.4) == "nothing stated"
