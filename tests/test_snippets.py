"""The README's, the quick start's, the intro's and the how-to's code blocks run as written, from a
folder outside the repository.

Python blocks run as they stand (the blocks of one page in one interpreter, in order). Shell
blocks run line by line with the substitutions the pages announce for a test — the quick
profile's long jobs at the tiny profile (``--profile quick`` → ``--profile tiny``, 12 training
epochs → 1, 100 aggregates → 4, a profile file written with ``--base tiny``, 20 calibration samples of 4
images instead of 400 of 24) — and without the lines that set up a machine (``make``, ``pip``,
``git``, ``conda``) or take hours (``agglib haadf-table``: abTEM multislice); blocks marked
``<!-- agglib:not-run … -->`` (a SLURM cluster, several GPUs) are not run. The quick start's
printed θ̂ is compared with what ``agglib fit`` prints.
"""

import os
from pathlib import Path
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["README.md", "book/quickstart.md", "book/intro.md", "book/howto.md"]
SETUP = ("make ", "pip ", "git ", "conda ", "cd ", "agglib haadf-table", "torchrun ")
SMALL = [("--profile quick", "--profile tiny"), ("quick-seed0", "tiny-seed0"), ("--epochs 12", "--epochs 1"),
         ("--count 100", "--count 4"), ("--profile paper", "--profile tiny"), ("paper-seed0", "tiny-seed0"),
         ("--epochs 30", "--epochs 1"), ("--workers 16", "--workers 2"), ("--val-images 2000", "--val-images 8"),
         ("--bn-batches 200", "--bn-batches 2"), ("--checkpoint-every 400", "--checkpoint-every 40"),
         (" --profile quick --out sweeps/fit", " --profile tiny --out sweeps/fit"),
         ("agglib profiles write my_sample.yaml", "agglib profiles write my_sample.yaml --base tiny"),
         ("--configs 400", "--configs 20 --images 4")]

pytestmark = pytest.mark.slow


#: A block right after this comment is not run (it needs a cluster the test machine is not: SLURM,
#: several GPUs); the comment says why, on the page's source.
NOT_RUN = "<!-- agglib:not-run"


def blocks(page: str, language: str) -> list[str]:
    text = (ROOT / page).read_text()
    found = re.findall(rf"^([^\n]*)\n```{language}\n(.*?)^```", text, flags=re.S | re.M)
    return [body for before, body in found if not before.startswith(NOT_RUN)]


def shell_lines(block: str) -> list[str]:
    """Commands of a shell block (continuation lines joined, comments removed)."""
    joined = block.replace("\\\n", " ")
    out = []
    for line in joined.splitlines():
        line = re.sub(r"\s+#.*$", "", line).strip()
        if line and not line.startswith("#") and not line.startswith(SETUP):
            for old, new in SMALL:
                line = line.replace(old, new)
            out.append(line)
    return out


@pytest.fixture(scope="module")
def outside(tmp_path_factory):
    """A working folder outside the repository holding the shipped sample where the pages say
    (``tests/data/fit_sample``: counts at 149 e/Å², 2.9 nm/px given on the command line) and a
    folder ``my_images/`` of the same images as a user's detector-normalised TIFFs (the fraction of
    the beam, the pixel size in the files' ImageJ calibration)."""
    import tifffile

    work = tmp_path_factory.mktemp("newcomer")
    assert ROOT not in work.parents
    sample = ROOT / "tests" / "data" / "fit_sample"
    shutil.copytree(sample, work / "tests" / "data" / "fit_sample")
    (work / "my_images").mkdir()
    electrons_per_pixel = 149.0 * (2.9 * 10.0) ** 2
    for path in sorted(sample.glob("*.tif")):
        fraction = tifffile.imread(path) / electrons_per_pixel
        tifffile.imwrite(work / "my_images" / path.name, fraction.astype("float32"), imagej=True,
                         resolution=(1 / 2.9, 1 / 2.9), metadata={"unit": "nm"})
    # the user's own measurements, as the pages' `agglib profiles write` reads them
    rng = np.random.default_rng(0)
    (work / "radii.csv").write_text("material,radius_nm\n" + "".join(
        f"{m},{r:.2f}\n" for m in ("WO3", "TiO2") for r in rng.lognormal(np.log(11.6), 0.25, 20)))
    (work / "counts.csv").write_text("n_particles\n" + "".join(f"{n}\n" for n in (22, 35, 41, 58, 64, 77)))
    return work


def _env(work: Path) -> dict:
    """The installed agglib (not the checkout); one data folder for all pages of a newcomer (what is
    content-addressed — datasets, runs of the same profile file — is made once and found again)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return {**env, "AGGLIB_DATA_DIR": str(work.parent / "agglib-data"), "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "2"}


def test_pages_have_the_blocks_this_test_runs():
    assert len(blocks("README.md", "python")) >= 1 and len(blocks("README.md", "bash")) >= 2
    assert blocks("book/quickstart.md", "text"), "the quick start's printed output is a text block"


@pytest.mark.parametrize("page", [p for p in PAGES if blocks(p, "python")])
def test_python_blocks_run_as_written(page, outside):
    work = outside / Path(page).stem
    work.mkdir()
    code = "\n\n".join(blocks(page, "python")).replace("    ...\n", "    pass\n")
    (work / "snippets.py").write_text(code)
    run = subprocess.run([sys.executable, "snippets.py"], cwd=work, env=_env(work), capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, f"{page}:\n{run.stderr[-3000:]}"


@pytest.mark.parametrize("page", [p for p in PAGES if blocks(p, "bash")])
def test_shell_blocks_run_as_written(page, outside):
    agglib_cli = Path(sys.executable).parent / "agglib"
    work = outside / f"shell-{Path(page).stem}"             # each page as a newcomer: its own folder
    for name in ("tests", "my_images"):
        shutil.copytree(outside / name, work / name)
    for name in ("radii.csv", "counts.csv"):
        shutil.copy(outside / name, work / name)
    for block in blocks(page, "bash"):
        for line in shell_lines(block):
            assert line.startswith(("agglib ", "papermill ")), line
            argv = line.split()
            if argv[0] == "agglib":
                argv[0] = str(agglib_cli)
            if line.startswith("agglib sweep") or line.startswith("papermill"):
                continue                       # run by the book test and tests/test_sweep.py (minutes)
            run = subprocess.run(" ".join(argv), shell=True, cwd=work, env=_env(work), capture_output=True,
                                 text=True, timeout=600)
            assert run.returncode == 0, f"{page}: {line}\n{run.stderr[-3000:]}"


def test_quickstart_prints_what_the_page_shows(outside):
    """The quick start's output block is what its command prints (the numbers of the shipped estimator)."""
    block = blocks("book/quickstart.md", "text")[0].strip().splitlines()
    command = next(line for b in blocks("book/quickstart.md", "bash") for line in shell_lines(b)
                   if line.startswith("agglib fit"))
    argv = command.split()
    argv[0] = str(Path(sys.executable).parent / "agglib")
    argv[argv.index("--out") + 1] = "quickstart-result"
    run = subprocess.run(argv, cwd=outside, env=_env(outside), capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    printed = [line for line in run.stdout.splitlines() if line.startswith(("θ̂ from", "  θ"))]
    assert printed == block
