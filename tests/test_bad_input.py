"""Every command's bad input: exit code 2, one line naming the path or value and what to do,
before any work — no output folder made, no input byte changed."""

import hashlib
from pathlib import Path

import numpy as np
import pytest

from agglib.cli import main

UNWRITABLE = "/proc/agglib-out"          # cannot be created, whoever runs the tests (root included)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A folder of inputs: an aggregate, a text file, a fake .npz, an empty folder, a folder of
    JPEGs, a folder of text files, a TIFF image."""
    import tifffile

    root = tmp_path_factory.mktemp("inputs")
    assert main(["generate", "--df", "1.8", "--rho", "0.5", "--theta0", "2", "--theta1", "2", "--seed", "1",
                 "--out", str(root / "aggs")]) == 0
    (root / "notes.txt").write_text("not an image\n")
    (root / "fake.npz").write_bytes(b"not a zip archive")
    (root / "empty").mkdir()
    (root / "jpgs").mkdir()
    (root / "jpgs" / "a.jpg").write_bytes(b"\xff\xd8\xff not really")
    (root / "texts").mkdir()
    (root / "texts" / "a.txt").write_text("x")
    image = np.random.default_rng(0).poisson(5.0, (96, 96)).astype(np.uint16)
    tifffile.imwrite(root / "image.tif", image, imagej=True, resolution=(1 / 50.0, 1 / 50.0), metadata={"unit": "nm"})
    return root


def _digest(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


AGG = "aggs/aggregate_0.npz"
THETA = ["--df", "1.8", "--rho", "0.5", "--theta0", "2", "--theta1", "2"]
# (command with {in} for the inputs folder and {out} for a fresh output path, what the line must name)
CASES = {
    "generate --count 0": (["generate", *THETA, "--count", "0", "--out", "{out}"], "--count 0"),
    "generate θ_Df out of range": (["generate", "--df", "3.5", "--rho", "0.5", "--theta0", "2", "--theta1", "2",
                                    "--out", "{out}"], "3.5"),
    "generate into an unwritable place": (["generate", *THETA, "--out", UNWRITABLE], "cannot write into"),
    "generate into a file": (["generate", *THETA, "--out", "{in}/notes.txt"], "notes.txt is a file"),
    "render a folder": (["render", "{in}/aggs", "--out", "{out}"], "aggs is a folder"),
    "render a text file": (["render", "{in}/notes.txt", "--out", "{out}"], "notes.txt is not an aggregate file"),
    "render a fake .npz": (["render", "{in}/fake.npz", "--out", "{out}"], "fake.npz is not an aggregate file"),
    "render into an unwritable place": (["render", "{in}/" + AGG, "--out", UNWRITABLE], "cannot write into"),
    "render a missing file": (["render", "{in}/missing.npz", "--out", "{out}"], "missing.npz: no such file"),
    "render, no --out": (["render", "{in}/" + AGG], "required: --out"),
    "describe a folder": (["describe", "{in}/aggs"], "aggs is a folder"),
    "describe a fake .npz": (["describe", "{in}/fake.npz"], "fake.npz is not an aggregate file"),
    "fit a missing folder": (["fit", "{in}/missing", "--out", "{out}"], "missing: no such file or folder"),
    "fit an empty folder": (["fit", "{in}/empty", "--out", "{out}"], "empty holds no image files"),
    "fit a folder of JPEGs": (["fit", "{in}/jpgs", "--out", "{out}"], "it holds .jpg files"),
    "fit a folder of text": (["fit", "{in}/texts", "--out", "{out}"], "it holds .txt files"),
    "fit a text file": (["fit", "{in}/notes.txt", "--out", "{out}"], "unknown file type '.txt'"),
    "fit into an unwritable place": (["fit", "{in}/image.tif", "--out", UNWRITABLE], "cannot write into"),
    "fit into the inputs": (["fit", "{in}/image.tif", "--out", "{in}"], "agglib never writes where its inputs are"),
    "fit pixels too coarse": (["fit", "{in}/image.tif", "--out", "{out}"], "too coarse"),
    "fit a bad dose": (["fit", "{in}/image.tif", "--dose", "-5", "--out", "{out}"], "--dose -5"),
    "fit no shadows": (["fit", "{in}/image.tif", "--shadows", "0", "--out", "{out}"], "--shadows 0"),
    "fit a negative pixel size": (["fit", "{in}/image.tif", "--pixel-size", "-1", "--out", "{out}"],
                                  "--pixel-size -1: out of range; accepted range (0, 1000] nm"),
    "fit fractions with a dose": (["fit", "{in}/image.tif", "--units", "fraction", "--dose", "100", "--out", "{out}"],
                                  "--dose 100 with --units fraction"),
    "fit without --out": (["fit", "{in}/image.tif"], "required: --out"),
    "fit, unknown units": (["fit", "{in}/image.tif", "--units", "volts", "--out", "{out}"], "'volts'"),
    "generate, not a number": (["generate", "--df", "x", "--rho", "0.5", "--theta0", "2", "--theta1", "2",
                                "--out", "{out}"], "'x'"),
    "train, missing store": (["train", "--store", "{in}/none.zarr", "--target", "df", "--out", "{out}"],
                             "none.zarr: no such dataset store"),
    "train into an unwritable place": (["train", "--store", "{in}/aggs", "--target", "df", "--out", UNWRITABLE],
                                       "cannot write into"),
    "train-estimator --out into a file": (["train-estimator", "--profile", "tiny", "--out", "{in}/notes.txt"],
                                          "notes.txt is a file"),
    "dataset info, not a store": (["dataset", "info", "{in}/empty"], "no dataset store"),
    "dataset build, unknown profile": (["dataset", "build", "--profile", "huge", "--out", "{out}"], "huge"),
    "dataset build, unknown field": (["dataset", "build", "--profile", "tiny", "--set", "sampels=3", "--out",
                                      "{out}"], "sampels"),
    "train-estimator, unknown profile": (["train-estimator", "--profile", "huge", "--run-dir", "{out}"], "huge"),
    "sweep, unknown parameter": (["sweep", "10", "-p", "doze", "40", "--out", "{out}"], "doze"),
    "sweep, unknown notebook": (["sweep", "{in}/none.ipynb", "-p", "a", "1", "--out", "{out}"], "none.ipynb"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_exits_2_with_one_line_and_changes_nothing(case, inputs, tmp_path, capsys, monkeypatch):
    command, named = CASES[case]
    out = tmp_path / "out"
    data = tmp_path / "agglib-data"                          # where datasets and runs would go
    monkeypatch.setenv("AGGLIB_DATA_DIR", str(data))
    argv = [a.replace("{in}", str(inputs)).replace("{out}", str(out)) for a in command]
    before = _digest(inputs)
    try:
        code = main(argv)
    except SystemExit as exit_:                              # usage errors (argparse)
        code = exit_.code
    assert code == 2, case
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("agglib"), err  # one line, no notice or traceback before it
    assert ": error: " in err[0] and named in err[0], err[0]
    if case == "fit pixels too coarse":                       # every image is: --skip-bad would not help
        assert "--skip-bad" not in err[0]
    assert not out.exists(), f"{case}: {out} was made before the refusal"
    assert not data.exists() or not any(data.rglob("*")), f"{case}: work started in {data}"
    assert _digest(inputs) == before
