"""Dataset plan, Zarr store, Dask build (deterministic, resumable) and the PyTorch datasets."""

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import agglib
from agglib.dataset import (EVAL, TRAIN, StoreMismatchError, build_dataset, generate_sample, make_plan,
                            open_store)


def tree_bytes(path: Path) -> dict:
    """Every file of a store, relative path -> bytes."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("ds") / "tiny.zarr"
    return build_dataset(path, "tiny", seed=3, workers=1, show_progress_bars=False)


# ------------------------------------------------------------------ plan

def check_plan_invariants(profile, plan):
    assert plan.n_samples == profile.n_samples
    per_config = np.bincount(plan.config_id)
    assert np.all(per_config == profile.samples_per_config)
    n_eval = np.bincount(plan.config_id[plan.split == EVAL], minlength=len(plan.configs))
    n_train = np.bincount(plan.config_id[plan.split == TRAIN], minlength=len(plan.configs))
    assert np.all(n_eval == profile.eval_per_config)
    assert np.all(n_train == profile.samples_per_config - profile.eval_per_config)
    # Each triple (θ_ρ, θ0, θ1) has df_per_triple distinct θ_Df from the grid.
    triples = {}
    for df, rho, t0, t1 in plan.configs:
        triples.setdefault((rho, t0, t1), []).append(df)
    assert len(triples) == len(profile.rho_values) * len(profile.theta0_values) * len(profile.theta1_values)
    assert all(len(set(v)) == profile.df_per_triple and set(v) <= set(profile.df_values) for v in triples.values())
    assert len(np.unique(plan.sample_seed)) == plan.n_samples


def test_paper_plan_is_the_papers_set_g():
    profile = agglib.load_profile("paper")
    plan = make_plan(profile, seed=0)
    check_plan_invariants(profile, plan)
    assert plan.n_samples == 32400
    assert np.sum(plan.split == TRAIN) == 19440 and np.sum(plan.split == EVAL) == 12960
    counts_t = np.bincount(plan.config_id[plan.split == TRAIN])
    counts_e = np.bincount(plan.config_id[plan.split == EVAL])
    assert counts_t.min() >= 20 and counts_e.min() >= 20


@pytest.mark.parametrize("name", ["tiny", "quick"])
def test_profile_plans_keep_the_invariants(name):
    profile = agglib.load_profile(name)
    check_plan_invariants(profile, make_plan(profile, seed=5))


def test_plan_depends_only_on_the_seed():
    p = agglib.load_profile("tiny")
    a, b, c = make_plan(p, 1), make_plan(p, 1), make_plan(p, 2)
    assert np.array_equal(a.sample_seed, b.sample_seed) and np.array_equal(a.split, b.split)
    assert not np.array_equal(a.sample_seed, c.sample_seed)
    with pytest.raises(ValueError, match="seed=-1"):
        make_plan(p, -1)


def test_profile_fields_are_checked():
    with pytest.raises(ValueError, match="eval_per_config=8"):
        agglib.load_profile("tiny", eval_per_config=8)
    with pytest.raises(ValueError, match="df_per_triple=12"):
        agglib.load_profile("tiny", df_per_triple=12)
    with pytest.raises(ValueError, match="pixel_size_nm=0"):
        agglib.load_profile("tiny", pixel_size_nm=0.0)


# ------------------------------------------------------------------ store

def test_tiny_store_holds_everything(tiny_store):
    profile = agglib.load_profile("tiny")
    s = tiny_store
    assert len(s) == profile.n_samples
    assert s.images.shape == (profile.n_samples, 96, 96) and s.images.dtype == np.uint32
    check_plan_invariants(profile, make_plan(profile, 3))
    assert np.array_equal(s.split, make_plan(profile, 3).split)
    assert s.descriptors.shape == (profile.n_samples, 8)
    assert not s.descriptors[["n_particles", "df", "rho", "rg", "z_total"]].isna().any().any()
    ident = s.identity
    assert ident["seed"] == 3 and ident["profile_name"] == "tiny" and len(ident["haadf_table_sha256"]) == 64
    assert s.summary()["MB"] > 0


def test_read_images_keeps_order_and_decodes_a_store_once(tiny_store, monkeypatch):
    from agglib.dataset import store as store_module
    from agglib.dataset.store import DatasetStore

    store_module._DECODED_IMAGES.clear()
    s = DatasetStore(tiny_store.path)
    truth = np.asarray(s.images[...], dtype=np.float32)
    small = [5, 2, 2]                                    # few images: read directly, nothing kept
    np.testing.assert_array_equal(s.read_images(small), truth[small])
    assert not store_module._DECODED_IMAGES
    big = s.indices("T")[::-1]                           # a large request decodes the whole store once
    np.testing.assert_array_equal(s.read_images(big), truth[big])
    assert store_module._DECODED_IMAGES["images"].shape == s.images.shape
    monkeypatch.setattr(type(s.images), "get_orthogonal_selection",
                        lambda *a, **k: pytest.fail("read from disk although decoded"))
    other = DatasetStore(tiny_store.path)                # another object of the same store shares it
    np.testing.assert_array_equal(other.read_images(small), truth[small])
    with agglib.config.set(preload_mb=0):                # over the memory budget: never kept
        store_module._DECODED_IMAGES.clear()
        monkeypatch.undo()
        np.testing.assert_array_equal(other.read_images(big), truth[big])
        assert not store_module._DECODED_IMAGES


def test_stored_sample_equals_a_fresh_draw_from_its_seed(tiny_store):
    i = 37
    agg, image, desc, _ = generate_sample(tiny_store.theta[i], tiny_store.sample_seed[i],
                                       agglib.StemSettings(**tiny_store.identity["stem_settings"]))
    stored = tiny_store.aggregate(i)
    np.testing.assert_array_equal(stored.positions, agg.positions)
    np.testing.assert_array_equal(stored.radii, agg.radii)
    np.testing.assert_array_equal(stored.labels, agg.labels)
    np.testing.assert_array_equal(tiny_store.images[i], image.astype(np.uint32))
    np.testing.assert_array_equal(tiny_store.descriptors.iloc[i].to_numpy(), desc)


def test_one_and_two_workers_and_other_shards_give_identical_stores(tiny_store, tmp_path):
    two = build_dataset(tmp_path / "two.zarr", "tiny", seed=3, workers=2, shard_size=5,
                        show_progress_bars=False)
    assert tree_bytes(two.path) == tree_bytes(tiny_store.path)


def test_other_profile_or_seed_is_refused(tiny_store, tmp_path):
    path = tmp_path / "x.zarr"
    build_dataset(path, "tiny", seed=3, workers=1, show_progress_bars=False)
    with pytest.raises(StoreMismatchError, match="seed 3.*not.*seed 4"):
        build_dataset(path, "tiny", seed=4, workers=1, show_progress_bars=False)
    with pytest.raises(StoreMismatchError, match="refusing to mix"):
        build_dataset(path, "tiny", seed=3, workers=1, show_progress_bars=False, samples_per_config=10)


def test_killed_build_resumes_to_the_uninterrupted_result(tiny_store, tmp_path):
    """kill -9 the build in the middle of a shard — after five shards, with the sixth's images written
    but not its particles nor its done flag — then run it again: the same store as one uninterrupted
    build. The kill comes at that exact point (the build kills itself there), not after a delay that a
    fast or a slow machine would miss."""
    path = tmp_path / "killed.zarr"
    script = textwrap.dedent(f"""
        import os, signal
        import zarr
        from agglib.dataset import build_dataset

        require_group = zarr.Group.require_group

        def dying_require_group(self, name, **kwargs):      # called after a shard's images are written
            if name == "shards/000005":
                os.kill(os.getpid(), signal.SIGKILL)
            return require_group(self, name, **kwargs)

        zarr.Group.require_group = dying_require_group
        build_dataset({str(path)!r}, "tiny", seed=3, workers=1, shard_size=2, show_progress_bars=False)
    """)
    proc = subprocess.run([sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    done = zarr_done_flags(path)
    assert done[:5].all() and not done[5:].any(), done
    with pytest.raises(ValueError, match="incomplete"):
        open_store(path)
    resumed = build_dataset(path, "tiny", seed=3, workers=1, show_progress_bars=False)
    assert tree_bytes(resumed.path) == tree_bytes(tiny_store.path)


def zarr_done_flags(path) -> np.ndarray:
    import zarr

    return zarr.open_group(str(path), mode="r")["build/done"][...].astype(bool)


# ------------------------------------------------------------------ PyTorch

def test_torch_dataset_reads_lazily_with_several_workers(tiny_store):
    import torch
    from torch.utils.data import DataLoader

    from agglib.dataset.pytorch import ConfigurationBatchDataset, StemImageDataset

    ds = StemImageDataset(tiny_store.path, split="E")
    assert len(ds) == 64
    item = ds[5]
    assert item["image"].shape == (1, 96, 96) and item["image"].dtype == torch.float32
    assert np.array_equal(item["image"][0].numpy(), tiny_store.images[item["index"]].astype(np.float32))
    serial = [b["index"] for b in DataLoader(ds, batch_size=8, num_workers=0)]
    parallel = [b["index"] for b in DataLoader(ds, batch_size=8, num_workers=2)]
    assert all(torch.equal(a, b) for a, b in zip(serial, parallel))

    groups = ConfigurationBatchDataset(tiny_store.path, split="E", nu=4, seed=0)
    assert len(groups) == 16                      # 16 configurations × one group of 4
    g = groups[3]
    assert g["images"].shape == (4, 1, 96, 96)
    assert len(set(tiny_store.config_id[g["indices"].numpy()])) == 1
    assert np.all(tiny_store.split[g["indices"].numpy()] == EVAL)
    with pytest.raises(ValueError, match="nu=5 is out of range"):
        ConfigurationBatchDataset(tiny_store.path, split="E", nu=5)


def test_preloading_a_split_gives_the_same_items(tiny_store):
    from agglib.dataset.pytorch import ConfigurationBatchDataset, StemImageDataset

    lazy = StemImageDataset(tiny_store.path, split="T")
    cached = StemImageDataset(tiny_store.path, split="T")
    assert cached.preload(max_bytes=10**9) is True
    assert StemImageDataset(tiny_store.path, split="T").preload(max_bytes=1000) is False
    for k in (0, 7, len(lazy) - 1):
        assert np.array_equal(lazy[k]["image"].numpy(), cached[k]["image"].numpy())
    groups = ConfigurationBatchDataset(tiny_store.path, split="E", nu=4)
    before = groups[2]["images"].clone()
    assert groups.preload() and np.array_equal(before.numpy(), groups[2]["images"].numpy())


def test_damaged_store_files_are_named_with_what_to_do(tiny_store, tmp_path):
    import shutil

    from agglib.dataset.store import DatasetStore, StoreDamagedError

    bad = tmp_path / "bad.zarr"
    shutil.copytree(tiny_store.path, bad)
    chunk = bad / "images" / "c" / "5" / "0" / "0"
    chunk.write_bytes(chunk.read_bytes()[:20])
    store = DatasetStore(bad)
    for request in ([4, 5, 6], np.arange(len(store))):          # a few images, and the whole-array path
        with pytest.raises(StoreDamagedError, match=r"images/c/5/0/0 \(sample 5\).*same `agglib dataset build`"):
            store.read_images(request)
    np.testing.assert_array_equal(store.read_images([4]), tiny_store.read_images([4]))   # the rest still reads
    (bad / "zarr.json").write_text('{"zarr_format": 3, "node_t')
    with pytest.raises(StoreDamagedError, match=r"bad.zarr/zarr.json cannot be read"):
        DatasetStore(bad)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_build_through_a_dask_scheduler_equals_a_local_build(tiny_store, tmp_path):
    """`agglib dataset build --scheduler tcp://…` against a real `dask scheduler` and two `dask worker`
    processes on this machine (as dask-jobqueue starts them on a cluster) writes the same store, byte
    for byte, as the build in one process."""
    import shutil
    import time

    dask_cli = shutil.which("dask", path=str(Path(sys.executable).parent)) or shutil.which("dask")
    if dask_cli is None:
        pytest.skip("the dask command line is not installed")
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(agglib.__file__).parents[1]),
                                                                       os.environ.get("PYTHONPATH")]))}
    procs = [subprocess.Popen([dask_cli, "scheduler", "--host", "127.0.0.1", "--port", str(port),
                               "--dashboard-address", ":0"], env=env, cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        time.sleep(2)
        procs += [subprocess.Popen([dask_cli, "worker", address, "--nthreads", "1", "--nworkers", "1",
                                    "--no-dashboard", "--name", f"w{k}"], env=env, cwd=tmp_path,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for k in range(2)]
        from dask.distributed import Client

        with Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=120)
            assert len(client.scheduler_info()["workers"]) == 2
        path = tmp_path / "cluster.zarr"
        run = subprocess.run([sys.executable, "-m", "agglib.cli", "dataset", "build", "--profile", "tiny", "--seed", "3",
                              "--scheduler", address, "--shard-size", "16", "--out", str(path)],
                             env=env, capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stderr[-3000:]
    finally:
        for p in procs[::-1]:
            p.terminate()
        for p in procs:
            p.wait(timeout=30)
    assert tree_bytes(path) == tree_bytes(tiny_store.path)
