import subprocess
import sys

import pytest

import agglib
from agglib.cli import main


def test_generate_and_describe(tmp_path, capsys):
    out = tmp_path / "aggs"
    assert main(["generate", "--df", "1.8", "--rho", "0.5", "--theta0", "2", "--theta1", "3",
                 "--count", "3", "--seed", "5", "--n-particles", "25", "--out", str(out)]) == 0
    files = sorted(out.glob("*.npz"))
    assert len(files) == 3
    same = agglib.generate_aggregates(agglib.ModelParams(1.8, 0.5, 2, 3), 3, seed=5, n_particles=25)
    assert agglib.Aggregate.load(files[1]) == same[1]
    capsys.readouterr()
    assert main(["describe", *map(str, files)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("file,n_particles,df,rho")
    assert len(lines) == 4 and lines[1].split(",")[1] == "25"


def test_bad_value_is_a_clear_error(tmp_path, capsys):
    rc = main(["generate", "--df", "3.5", "--rho", "0.5", "--theta0", "2", "--theta1", "3",
               "--out", str(tmp_path)])
    assert rc == 2
    err = capsys.readouterr().err
    assert "df=3.5" in err and "accepted range (1, 3)" in err


def test_console_script_is_installed():
    res = subprocess.run([sys.executable, "-m", "agglib.cli", "profiles"], capture_output=True, text=True)
    assert res.returncode == 0 and "tiny" in res.stdout and "paper" in res.stdout


def test_render_writes_one_image_per_aggregate(tmp_path, capsys):
    import numpy as np

    aggs = agglib.generate_aggregates(agglib.ModelParams(2.0, 0.5, 1, 1), 2, seed=3, n_particles=20)
    paths = [str(a.save(tmp_path / f"a{k}.npz")) for k, a in enumerate(aggs)]
    args = ["render", *paths, "--out", str(tmp_path / "img"), "--seed", "4", "--image-size", "128",
            "--pixel-size", "3"]
    assert main(args) == 0
    first = [np.load(tmp_path / "img" / f"a{k}.npy") for k in range(2)]
    assert first[0].shape == (128, 128) and first[0].dtype == np.float32 and first[0].max() > 0
    assert main(args) == 2                                   # agglib's files are kept unless --overwrite
    assert "pass --overwrite" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0                 # same seed, same images
    assert all(np.array_equal(f, np.load(tmp_path / "img" / f"a{k}.npy")) for k, f in enumerate(first))
    assert main([*args[:-2], "--pixel-size", "-2"]) == 2
    assert "pixel_size_nm=-2" in capsys.readouterr().err


def test_dataset_build_with_overrides_and_info(tmp_path, capsys):
    import json

    out = tmp_path / "d.zarr"
    assert main(["dataset", "build", "--profile", "tiny", "--out", str(out), "--seed", "2", "--workers", "1",
                 "--set", "samples_per_config=4", "--set", "eval_per_config=2",
                 "--set", "rho_values=[0.5]"]) == 0
    assert "dataset tiny: 32 samples (T 16, E 16" in capsys.readouterr().out
    assert main(["dataset", "info", str(out)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["samples"] == 32 and info["identity"]["profile"]["rho_values"] == [0.5]
    assert main(["dataset", "build", "--profile", "tiny", "--out", str(out), "--workers", "1"]) == 2
    assert "refusing to mix" in capsys.readouterr().err
    assert main(["dataset", "build", "--profile", "tiny", "--out", str(out), "--set", "bogus=1"]) == 2
    assert "unknown profile fields ['bogus']" in capsys.readouterr().err


def test_train_command_trains_and_resumes(tmp_path, capsys):
    from agglib.dataset import build_dataset

    store = build_dataset(tmp_path / "d.zarr", "tiny", seed=1, workers=1, show_progress_bars=False)
    args = ["train", "--store", str(store.path), "--target", "rho_reg", "--out", str(tmp_path / "m"),
            "--epochs", "1", "--batch", "8"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "rho_reg: 1 epochs, best validation loss on V" in out and "on E (not used to choose)" in out
    assert main([*args[:-4], "--epochs", "2", "--batch", "8"]) == 0
    assert "rho_reg: 2 epochs" in capsys.readouterr().out
    assert main([*args[:-4], "--epochs", "0"]) == 2
    assert "epochs=0" in capsys.readouterr().err


def test_counts_are_worded_in_the_singular_for_one():
    from agglib.core.wording import counted

    assert counted(1, "image") == "1 image" and counted(12, "image") == "12 images"
    assert counted(0, "digital shadow") == "0 digital shadows"


def test_train_estimator_under_torchrun_trains_on_two_processes_from_built_stores(tmp_path):
    """The success path of a torchrun launch: two processes (gloo) open the stores built before,
    train the encoder together, rank 0 trains the posterior and reports once; no process builds or
    re-announces a store."""
    import os

    grid, cont, out = tmp_path / "g.zarr", tmp_path / "c.zarr", tmp_path / "est"
    changes = ["--set", "samples_per_config=4", "--set", "eval_per_config=2", "--set", "rho_values=[0.5]",
               "--set", "encoder_epochs=1", "--set", "posterior_steps=20"]
    for path, design in ((grid, "grid"), (cont, "continuous")):
        assert main(["dataset", "build", "--profile", "tiny", "--out", str(path), "--design", design, "--workers", "1",
                     *changes]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launch = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                               "-m", "agglib.cli", "train-estimator", "--profile", "tiny", "--device", "cpu",
                               "--store", str(grid), "--continuous-store", str(cont), "--run-dir", str(tmp_path / "run"),
                               "--out", str(out), *changes],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    try:
        stdout, stderr = launch.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        launch.terminate()                    # torchrun's agent stops its workers on SIGTERM
        stdout, stderr = launch.communicate(timeout=60)
        pytest.fail(f"torchrun did not finish in 300 s:\n{stderr[-3000:]}")
    run = subprocess.CompletedProcess(launch.args, launch.returncode, stdout, stderr)
    assert run.returncode == 0, run.stderr[-3000:]
    assert (out / "encoder.pt").is_file() and (out / "posterior.pt").is_file()
    assert run.stdout.count("estimator (encoder + set-level posterior) in") == 1, run.stdout   # rank 0 alone
    assert "already complete" not in run.stdout + run.stderr                                  # opened, not built
    from agglib.estimate import SampleEstimator

    assert SampleEstimator.load(out).encoder.metadata["train_config"]["epochs"] == 1


def test_train_estimator_under_torchrun_opens_the_stores_and_never_builds_them(tmp_path, capsys, monkeypatch):
    """Under torchrun every process runs the command: the datasets must exist (each process would
    build them), be this profile's and seed's (as a build checks), and are opened, not built (no
    "already complete" line from every rank)."""
    grid, cont = tmp_path / "g.zarr", tmp_path / "c.zarr"
    changes = ["--set", "samples_per_config=4", "--set", "eval_per_config=2", "--set", "rho_values=[0.5]"]
    assert main(["dataset", "build", "--profile", "tiny", "--out", str(grid), "--seed", "2", "--workers", "1",
                 *changes]) == 0
    capsys.readouterr()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    args = ["train-estimator", "--profile", "tiny", "--store", str(grid), "--continuous-store", str(cont), *changes]
    assert main([*args, "--seed", "2"]) == 2
    err = capsys.readouterr().err
    assert "under torchrun the datasets must exist" in err
    assert "--design grid" not in err                                                # only what is missing,
    assert f"--design continuous --set samples_per_config=4 --set eval_per_config=2 --set 'rho_values=[0.5]' " \
           f"--out {cont}" in err                                                    # with the user's changes
    assert not cont.exists()                                                         # nothing built
    assert main([*args, "--seed", "0"]) == 2                                         # the grid store is seed 2's
    assert "refusing to mix" in capsys.readouterr().err


def test_the_first_compilation_notice_asks_only_for_the_commands_kernels(monkeypatch):
    """`fit` compiles the aggregation kernels, never all the renderer's: with one model kernel cached
    and no rendering kernel, fit's modules count as compiled (no notice on every run), render's not."""
    import io

    from agglib.core import compilation
    from agglib.model import kernels as model_kernels

    cached = next(getattr(model_kernels, name)._cache._cache_file._index_path for name in dir(model_kernels)
                  if hasattr(getattr(model_kernels, name), "_cache")
                  and hasattr(getattr(model_kernels, name)._cache, "_cache_file"))
    monkeypatch.setattr(compilation.os.path, "exists", lambda path: path == cached)
    assert compilation.kernels_cached(("model",)) and not compilation.kernels_cached(("stem",))
    assert not compilation.kernels_cached()                               # both: the renderer's are not
    stream = io.StringIO()
    assert not compilation.announce_first_compilation(stream, ("model",)) and stream.getvalue() == ""
    assert compilation.announce_first_compilation(stream, ("stem",)) and "first run" in stream.getvalue()


def test_fit_help_states_the_coarsest_pixel_size_the_default_accepts(capsys):
    """`agglib fit --help` names the limit `fit` enforces (MAX_UPSAMPLING × the default estimator's
    pixel size), not only the syntactic range."""
    from agglib.estimate import SampleEstimator, shipped_models_dir
    from agglib.fit.characterise import MAX_UPSAMPLING

    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    pixel = SampleEstimator.load(shipped_models_dir("robust")).pixel_size_nm
    assert f"{MAX_UPSAMPLING * pixel:g} nm for the shipped default's {pixel:g} nm" in text


def test_train_estimator_refuses_a_wrong_number_of_datasets_and_a_missing_encoder(tmp_path, capsys):
    """Refused before any dataset is built or anything trained: the error names the value and what to give."""
    base = ["train-estimator", "--profile", "tiny", "--out", str(tmp_path / "out")]
    assert main([*base, "--continuous-store", str(tmp_path / "a.zarr"), "--continuous-store", str(tmp_path / "b.zarr")]) == 2
    assert "--continuous-store given 2 times; the tiny profile's posterior trains on posterior_datasets=1" \
        in capsys.readouterr().err
    assert main([*base, "--encoder", str(tmp_path / "missing.pt"), "--run-dir", str(tmp_path / "run")]) == 2
    assert "missing.pt: no such file" in capsys.readouterr().err
    (tmp_path / "encoder.pt").write_bytes(b"")
    assert main([*base, "--encoder", str(tmp_path / "encoder.pt")]) == 2
    assert "needs --run-dir" in capsys.readouterr().err
    assert not any(tmp_path.glob("*.zarr")) and not (tmp_path / "out").exists() and not (tmp_path / "run").exists()
