"""`pip install .` gives a working library: the wheel carries the HAADF table and the shipped
estimators as package data, and an installed agglib writes nothing into its own package."""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The wheel built from the tracked sources, installed into a fresh venv outside the repository
    (its dependencies come from this environment's site-packages, not from the network)."""
    base = tmp_path_factory.mktemp("wheel")
    src = base / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "agglib", src / "agglib", ignore=shutil.ignore_patterns("__pycache__", "*.nbi", "*.nbc"))
    dist = base / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "-w", str(dist), str(src)], check=True, cwd=base)
    wheel = next(dist.glob("agglib-*.whl"))
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
                    "--no-index", str(wheel)], check=True)
    home = base / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGGLIB_")}
    env.update(HOME=str(home), XDG_DATA_HOME=str(home / ".local" / "share"), PYTHONNOUSERSITE="1")
    work = base / "work"
    work.mkdir()
    return {"python": python, "bin": venv / "bin", "site": Path(site), "wheel": wheel, "env": env, "work": work,
            "home": home}


def _run(inst, args):
    res = subprocess.run(args, cwd=inst["work"], env=inst["env"], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


def test_wheel_holds_the_package_data(installed):
    import zipfile

    names = set(zipfile.ZipFile(installed["wheel"]).namelist())
    for required in ("agglib/data/haadf_reference.json", "agglib/data/models/sets-quick/encoder.pt",
                     "agglib/data/models/sets-quick/posterior.pt", "agglib/data/models/compact-quick/df/best.pt",
                     "agglib/data/runs/paper_df_h100.json", "agglib/profiles.yaml", "agglib/config.yaml"):
        assert required in names, required
    assert not any(n.startswith(("data/", "tests/", "notebooks/")) for n in names)


def test_installed_agglib_renders_and_keeps_user_data_out_of_the_package(installed):
    code = ("import agglib, json\n"
            "from agglib.core.locations import user_data_dir\n"
            "from agglib.dataset import default_store_path\n"
            "agg = agglib.generate_aggregate(agglib.ModelParams(1.8, 0.5, 2, 2), n_particles=20, seed=1)\n"
            "img = agglib.render_stem(agg, seed=1, settings=agglib.StemSettings(image_size_px=64, pixel_size_nm=3.0))\n"
            "print(json.dumps({'file': agglib.__file__, 'max': float(img.max()), 'data': str(user_data_dir()),\n"
            "                  'store': str(default_store_path('quick', 0))}))\n")
    out = json.loads(_run(installed, [str(installed["python"]), "-c", code]).strip().splitlines()[-1])
    assert Path(out["file"]).is_relative_to(installed["site"])          # the wheel, not the checkout
    assert out["max"] > 0
    assert Path(out["data"]) == installed["home"] / ".local" / "share" / "agglib"
    assert not Path(out["store"]).is_relative_to(installed["site"])


def test_installed_agglib_fits_the_shipped_sample(installed):
    sample = REPO / "tests" / "data" / "fit_sample"
    printed = _run(installed, [str(installed["bin"] / "agglib"), "fit", str(sample), "--pixel-size", "2.9",
                               "--out", "result", "--bootstrap", "20", "--shadows", "4"])
    assert "θ̂ from 12 images" in printed
    summary = json.loads((installed["work"] / "result" / "summary.json").read_text())
    assert summary["settings"]["method"] == "sets" and summary["shadows"]["count"] == 4
