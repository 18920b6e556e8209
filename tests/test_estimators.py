"""Networks, preprocessing, training (checkpoints, resume, DDP) and the estimators."""

import json
import os
import socket

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import agglib

from agglib.checkpoint import load_checkpoint
from agglib.dataset import build_dataset
from agglib.estimate import ParameterEstimator, load_estimator
from agglib.nets import build_network, count_parameters, paper_parameter_table
from agglib.preprocess import Augment, Preprocess, inverse_intensity, scale_and_quantize, shift_image
from agglib.paper_training import TrainConfig, make_datasets, train_for_profile, train_network

# Table 3 of the paper: weights + biases of the convolutional and dense layers.
TABLE3 = [80, 1168, 4640, 18496, 36928, 73856, 147584, 295168, 590080, 8257760, 25200]


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("est") / "tiny.zarr"
    return build_dataset(path, "tiny", seed=11, workers=1, show_progress_bars=False)


# ------------------------------------------------------------------ networks

def test_paper_network_matches_table3_layer_by_layer():
    rows = paper_parameter_table(b=1)
    assert [r["weights"] for r in rows[:11]] == TABLE3
    assert rows[11]["weights"] == 112 * 44 + 44 and rows[12]["weights"] == 45
    # Batch norm: γ and β per channel (Table 3's third column counts 7 per channel; see nets.py).
    assert [r["batch_norm"] for r in rows[:9]] == [2 * c for c in (8, 16, 32, 64, 64, 128, 128, 256, 256)]


@pytest.mark.parametrize("b", [1, 12])
def test_paper_parameter_count_grows_by_4928_per_image(b):
    net = build_network("paper", 512, nu=b)
    assert net.features.flatten_size == 36864
    # Table 3's formula is b·4,928 + 9,457,713; the b-dependent part matches exactly, the constant
    # differs only by the batch-norm bookkeeping (our 1,904 γ/β vs the paper's 7 values per channel).
    assert count_parameters(net) == 4928 * b + 9452953
    assert count_parameters(net) - 4928 * b - sum(TABLE3) - 45 - 44 == 2 * 952


def test_multi_image_network_applies_one_f_to_each_image():
    torch.manual_seed(0)
    net = build_network("compact", 64, nu=3, activation="relu").eval()
    x = torch.randn(2, 3, 1, 64, 64)
    out = net(x)
    assert out.shape == (2,)
    z = torch.cat([net.features(x[:, k]) for k in range(3)], dim=1)
    torch.testing.assert_close(out, torch.relu(net.head(z)))
    with pytest.raises(ValueError, match="nu=3"):
        net(torch.randn(2, 4, 1, 64, 64))


def test_output_activations():
    net = build_network("compact", 64, activation="scaled_sigmoid").eval()
    y = net(torch.randn(8, 1, 64, 64) * 100)
    assert torch.all((y > 1.3) & (y < 2.7))
    with pytest.raises(ValueError, match=r"input_size=60 is too small.*\[78, inf\)"):
        build_network("paper", 60)
    assert build_network("paper", 128).features.flatten_size == 4096     # no average pooling below 257 px




# ------------------------------------------------------------------ preprocessing

def test_scaling_range_and_256_levels():
    x = torch.rand(3, 40, 40) * 1000 + 7
    y = scale_and_quantize(x)
    assert y.min() == -0.5 and y.max() == 0.5
    levels = torch.unique(torch.round((y + 0.5) * 255))
    assert torch.all(levels == torch.round(levels)) and levels.numel() <= 256
    assert torch.allclose((y + 0.5) * 255, torch.round((y + 0.5) * 255), atol=1e-4)
    assert torch.all(scale_and_quantize(torch.full((5, 5), 3.0)) == -0.5)


def test_inverse_intensity_transform():
    p = torch.tensor([0.0, 0.0005, 0.001, 0.002, 0.05, 0.2])
    out = inverse_intensity(p, threshold=0.001)
    torch.testing.assert_close(out, torch.tensor([0.0, 0.0005, 0.001, 500.0, 20.0, 5.0]))
    # After the transform dim matter (TiO2) is brighter than bright matter (WO3).
    pre = Preprocess(inverse=True, electrons_per_pixel=1000.0)
    img = torch.zeros(8, 8)
    img[1, 1], img[5, 5] = 20.0, 150.0      # 0.02 (TiO2-like) and 0.15 (WO3-like) of the beam
    y = pre(img)
    assert y[1, 1] > y[5, 5] > y[0, 0]


@pytest.mark.parametrize("seed", range(6))
def test_augmentation_keeps_the_multiset_of_pixel_values(seed):
    x = scale_and_quantize(torch.rand(1, 32, 32))
    g = torch.Generator().manual_seed(seed)
    y = Augment(max_shift_px=0, generator=g)(x)
    assert torch.equal(torch.sort(x.flatten()).values, torch.sort(y.flatten()).values)
    shifted = shift_image(x, 2, -3)
    assert torch.equal(shifted[..., 2:, :-3], x[..., :-2, 3:])
    assert torch.all(shifted[..., :2, :] == x.min())


# ------------------------------------------------------------------ training

def test_tiny_training_decreases_the_loss_and_checkpoints_round_trip(tiny_store, tmp_path):
    torch.set_num_threads(2)
    cfg = TrainConfig(target="df", epochs=12, lr=3e-3, schedule="onecycle", batch=8, seed=0, max_shift_px=2)
    result = train_network(tiny_store.path, cfg, tmp_path / "df", show_progress_bars=False)
    losses = [h["train_loss"] for h in result["history"]]
    # The output starts at the mean label, so the first epoch's loss is about the labels' variance
    # (the trivial predictor's MSE); training must get well below it.
    variance = float(np.var(tiny_store.descriptors["df"].to_numpy()[tiny_store.indices("T")]))
    print(losses, variance)
    assert len(losses) == 12 and losses[-1] < 0.7 * variance
    assert (tmp_path / "df" / "best.pt").is_file() and (tmp_path / "df" / "last.pt").is_file()
    net = load_estimator(tmp_path / "df" / "last.pt")
    meta = net.metadata
    for key in ("arch", "preprocess", "image_size_px", "pixel_size_nm", "profile", "dataset_sha256", "agglib"):
        assert key in meta
    images = np.stack([tiny_store.images[i] for i in range(5)]).astype(np.float32)
    pred = net.predict(images)
    assert pred.shape == (5,) and np.all((pred > 1.3) & (pred < 2.7))
    with pytest.raises(ValueError, match="resample them first"):
        net.predict(np.zeros((2, 32, 32)))
    # Resume: asking for 14 epochs continues at epoch 12 (the one-cycle schedule stretched to 14).
    more = train_network(tiny_store.path, cfg.__class__(**{**cfg.__dict__, "epochs": 14}), tmp_path / "df",
                         show_progress_bars=False)
    assert [h["epoch"] for h in more["history"]] == list(range(14))
    assert json.loads((tmp_path / "df" / "history.json").read_text())[-1]["epoch"] == 13


def test_all_five_networks_make_a_parameter_estimator(tiny_store, tmp_path):
    for target in ("df", "rho_reg", "rho_class", "theta0", "theta1"):
        cfg = TrainConfig(target=target, epochs=1, nu=4, batch=4, seed=1)
        train_network(tiny_store.path, cfg, tmp_path / target, show_progress_bars=False)
    est = ParameterEstimator.load(tmp_path)
    images = np.stack([tiny_store.images[i] for i in np.flatnonzero(tiny_store.config_id == 0)])
    theta = est.estimate(images)
    assert set(theta) >= {"df", "rho", "theta0", "theta1"}
    assert isinstance(theta["theta0"], int) and 0.0 <= theta["rho"] <= 1.0
    with pytest.raises(ValueError, match="at least nu=4"):
        est.estimate(images[:2])


def test_checkpoint_of_another_run_is_refused(tiny_store, tmp_path):
    train_network(tiny_store.path, TrainConfig(target="df", epochs=1, batch=8), tmp_path / "x",
                  show_progress_bars=False)
    with pytest.raises(ValueError, match="belongs to another run"):
        train_network(tiny_store.path, TrainConfig(target="rho_reg", epochs=2, batch=8), tmp_path / "x",
                      show_progress_bars=False)


def test_a_run_of_another_number_of_processes_is_refused_on_resume(tiny_store, tmp_path):
    """Each process of the paper recipe takes its own batches, so a run launched with 2 processes
    continued by one would silently be another run: refused, saying how to resume it."""
    from agglib.checkpoint import save_checkpoint

    cfg = TrainConfig(target="df", epochs=1, batch=8, steps_per_epoch=2)
    train_network(tiny_store.path, cfg, tmp_path / "x", show_progress_bars=False)
    last = tmp_path / "x" / "last.pt"
    state = load_checkpoint(last)
    assert state["metadata"]["processes"] == 1
    save_checkpoint(last, state["kind"], {**state["metadata"], "processes": 2}, state["model"],
                    optimizer_state=state["optimizer"], progress=state["progress"],
                    history=state["history"], run_state=json.dumps(state["run_state"]))
    longer = TrainConfig(**{**cfg.__dict__, "epochs": 2})
    with pytest.raises(ValueError, match=r"processes \(2 there, 1 here.*2 processes in all, e.g. torchrun "
                                         r"--nproc_per_node 2"):
        train_network(tiny_store.path, longer, tmp_path / "x", show_progress_bars=False)
    save_checkpoint(last, state["kind"], {k: v for k, v in state["metadata"].items() if k != "processes"},
                    state["model"], optimizer_state=state["optimizer"], progress=state["progress"],
                    history=state["history"], run_state=json.dumps(state["run_state"]))
    history = train_network(tiny_store.path, longer, tmp_path / "x", show_progress_bars=False)["history"]
    assert [h["epoch"] for h in history] == [0, 1]         # a run saved before the count was recorded: not checked


def test_finished_run_returns_without_reading_images(tiny_store, tmp_path, monkeypatch):
    from agglib.dataset.pytorch import _LazyStore

    cfg = TrainConfig(target="df", epochs=1, batch=8)
    first = train_network(tiny_store.path, cfg, tmp_path / "x", show_progress_bars=False)
    (tmp_path / "x" / "history.json").unlink()

    def no_reads(*args, **kwargs):
        raise AssertionError("a finished run read images")

    monkeypatch.setattr(_LazyStore, "preload", no_reads)
    monkeypatch.setattr(_LazyStore, "image", no_reads)
    again = train_network(tiny_store.path, cfg, tmp_path / "x", show_progress_bars=False)
    assert again["history"] == first["history"] and again["best_val_loss"] == first["best_val_loss"]
    assert json.loads((tmp_path / "x" / "history.json").read_text()) == first["history"]   # rewritten


def test_profile_val_images_caps_validation_in_images(tiny_store, tmp_path):
    prof = agglib.load_profile("tiny", val_images=8)
    train_for_profile(prof, "df", tiny_store.path, tmp_path, show_progress_bars=False, steps_per_epoch=1)
    train_for_profile(prof, "theta0", tiny_store.path, tmp_path, show_progress_bars=False, steps_per_epoch=1,
                      init_features=None)
    single = load_checkpoint(tmp_path / "df" / "last.pt")["metadata"]["train_config"]
    multi = load_checkpoint(tmp_path / "theta0" / "last.pt")["metadata"]["train_config"]
    assert single["val_images"] == 8 and multi["val_images"] == 8 // multi["nu"]   # groups of ν images
    assert agglib.load_profile("tiny").val_images == 0                               # 0: all of V
    with pytest.raises(ValueError, match="val_images"):
        agglib.load_profile("tiny", val_images=-1)


def test_checkpoint_with_other_training_settings_is_refused(tiny_store, tmp_path):
    train_network(tiny_store.path, TrainConfig(target="df", epochs=1, batch=8), tmp_path / "x",
                  show_progress_bars=False)
    with pytest.raises(ValueError, match="train_config.lr"):
        train_network(tiny_store.path, TrainConfig(target="df", epochs=2, batch=8, lr=1e-3), tmp_path / "x",
                      show_progress_bars=False)


def test_descriptor_pretraining_initialises_the_multi_image_features(tiny_store, tmp_path):
    from agglib.paper_training import descriptor_scaling, descriptor_table, sample_labels, TARGETS

    labels = sample_labels(tiny_store, TARGETS["descriptors"])
    t = tiny_store.indices("T")
    assert labels.shape == (len(tiny_store), 5)
    np.testing.assert_allclose(labels[t].mean(axis=0), 0.0, atol=1e-5)      # standardised on T
    np.testing.assert_allclose(labels[t].std(axis=0), 1.0, atol=1e-4)
    scale = descriptor_scaling(tiny_store)
    np.testing.assert_allclose(labels * scale["sd"] + scale["mean"], descriptor_table(tiny_store), atol=1e-4)

    prof = agglib.load_profile("tiny", pretrain_epochs=1, epochs_multi=1)
    train_for_profile(prof, "theta0", tiny_store.path, tmp_path, show_progress_bars=False,
                      steps_per_epoch=1)
    pre = load_estimator(tmp_path / "descriptors" / "best.pt")
    assert pre.metadata["outputs"] == 5 and pre.metadata["label_scaling"]["names"][0] == "rho"
    assert pre.predict(tiny_store.read_images([0, 1])).shape == (2, 5)
    theta0 = load_checkpoint(tmp_path / "theta0" / "last.pt")
    assert theta0["metadata"]["train_config"]["init_features"].endswith("descriptors/best.pt")
    # With no training step f is exactly the pretrained f (a copy, not a fresh initialisation).
    cfg = TrainConfig(target="theta0", epochs=1, nu=4, batch=4, steps_per_epoch=1, lr=1e-12,
                      init_features=str(tmp_path / "descriptors" / "best.pt"))
    train_network(tiny_store.path, cfg, tmp_path / "copy", show_progress_bars=False)
    copied = load_checkpoint(tmp_path / "copy" / "last.pt")["model"]
    source = load_checkpoint(tmp_path / "descriptors" / "best.pt")["model"]
    for name, value in source.items():
        if name.startswith("features.") and "running" not in name and "num_batches" not in name:
            torch.testing.assert_close(copied[name], value, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="resnet18"):
        bad = TrainConfig(target="theta0", arch="resnet18", epochs=1, nu=4, batch=4,
                          init_features=str(tmp_path / "descriptors" / "best.pt"))
        train_network(tiny_store.path, bad, tmp_path / "bad", show_progress_bars=False)


@settings(max_examples=25, deadline=None)
@given(total=st.integers(1, 400), peak=st.floats(1e-5, 1e-1))
def test_one_cycle_rate_is_torchs_schedule_as_a_pure_function(total, peak):
    """The paper networks' ``onecycle`` rate and β1, step by step, are the floats of torch's
    OneCycleLR (the schedule they were trained with before the engine), with no scheduler state."""
    import warnings

    from agglib.lr_schedule import torch_one_cycle

    opt = torch.optim.Adam(torch.nn.Linear(1, 1).parameters(), lr=peak)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=peak, total_steps=total, pct_start=0.15)
        for step in range(total):
            expected = torch_one_cycle(step, total, peak)
            assert opt.param_groups[0]["lr"] == expected["lr"]
            assert opt.param_groups[0]["betas"][0] == expected["beta1"]
            opt.step()
            sched.step()
    rates = [torch_one_cycle(s, 40, 1e-3)["lr"] for s in range(40)]
    assert max(rates) == pytest.approx(1e-3) and rates[0] < 1e-4 and rates[-1] < 1e-6
    assert int(np.argmax(rates)) == 5                          # warm-up: 15 % of 40 steps (0.15·40 − 1)


def test_start_at_sets_the_initial_output(tiny_store):
    for activation, value in (("relu", 3.5), ("sigmoid", 0.3), ("scaled_sigmoid", 2.1), ("identity", -1.0)):
        net = build_network("compact", 64, activation=activation)
        torch.nn.init.zeros_(net.head.net[-1].weight)
        net.start_at(value)
        with torch.no_grad():
            out = net.eval()(torch.randn(2, 1, 64, 64))
        torch.testing.assert_close(out, torch.full((2,), value), atol=1e-5, rtol=0)


def test_group_repeats_draw_more_distinct_groups(tiny_store):
    from agglib.dataset.pytorch import ConfigurationBatchDataset

    one = ConfigurationBatchDataset(tiny_store.path, split="T", nu=3, seed=0)
    three = ConfigurationBatchDataset(tiny_store.path, split="T", nu=3, seed=0, repeats=3)
    assert len(three) == 3 * len(one)
    for g in three.groups:                                     # each group: one configuration
        assert len(set(tiny_store.config_id[g])) == 1 and len(set(g)) == 3
    assert len({tuple(sorted(g)) for g in three.groups}) > len(one)
    np.testing.assert_array_equal(one.groups, ConfigurationBatchDataset(tiny_store.path, split="T", nu=3,
                                                                        seed=0).groups)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world_size, port, out_dir):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    torch.manual_seed(0)                                        # same initial weights on every rank
    model = DistributedDataParallel(build_network("compact", 64))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    torch.manual_seed(100 + rank)                               # different data on every rank
    x, y = torch.randn(4, 1, 64, 64), torch.randn(4)
    loss = ((model(x) - y) ** 2).mean()
    loss.backward()
    opt.step()
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    torch.save(flat, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def test_two_process_gloo_ddp_step_keeps_replicas_identical(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    a, b = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    torch.manual_seed(0)
    initial = torch.cat([p.detach().flatten() for p in build_network("compact", 64).parameters()])
    assert torch.equal(a, b)                # gradients were averaged across the ranks
    assert not torch.equal(a, initial)      # and a step was taken


@pytest.mark.parametrize("arch", ["paper", "compact", "resnet18", "inception"])
def test_every_architecture_keeps_the_f_g_split(arch):
    net = build_network(arch, 128, nu=2, activation="relu").eval()
    x = torch.randn(3, 2, 1, 128, 128)
    with torch.no_grad():
        assert net.features(x[:, 0]).shape == (3, 112)
        assert net(x).shape == (3,)
    assert net.head.net[0].in_features == 2 * 112


@pytest.mark.gpu
def test_training_and_inference_on_cuda(tiny_store, tmp_path):
    cfg = TrainConfig(target="df", epochs=1, batch=8, device="cuda")
    result = train_network(tiny_store.path, cfg, tmp_path / "gpu", show_progress_bars=False)
    assert result["history"][0]["train_loss"] > 0
    net = load_estimator(tmp_path / "gpu" / "best.pt", device="cuda")
    assert next(net.model.parameters()).is_cuda


@pytest.mark.gpu
def test_cuda_run_killed_mid_epoch_resumes_to_the_same_weights(tiny_store, tmp_path):
    """On the GPU (data held in device memory): last.pt resumes mid-epoch; deterministic cuDNN
    kernels make the resumed weights those of the uninterrupted run up to float rounding."""
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    cfg = TrainConfig(target="rho_class", epochs=2, lr=1e-3, batch=8, seed=3, max_shift_px=2, device="cuda")
    train_network(tiny_store.path, cfg, tmp_path / "whole", show_progress_bars=False)
    steps = len(make_datasets(tiny_store.path, cfg)[1]) // 8                  # steps of an epoch on T∖V
    train_network(tiny_store.path, cfg, tmp_path / "cut", show_progress_bars=False,
                  checkpoint_every_steps=2, stop_after_steps=steps + 5)
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["progress"]["step"] == 4
    train_network(tiny_store.path, cfg, tmp_path / "cut", show_progress_bars=False, checkpoint_every_steps=2)
    a = torch.load(tmp_path / "whole" / "last.pt", weights_only=True, map_location="cpu")["model"]
    b = torch.load(tmp_path / "cut" / "last.pt", weights_only=True, map_location="cpu")["model"]
    assert all(torch.allclose(a[k].float(), b[k].float(), rtol=1e-4, atol=1e-6) for k in a)
    # a run folder written on the GPU continues on a CPU (another machine)
    more = TrainConfig(**{**cfg.__dict__, "epochs": 3, "device": "cpu"})
    assert len(train_network(tiny_store.path, more, tmp_path / "cut", show_progress_bars=False)["history"]) == 3


@pytest.mark.gpu
def test_cuda_batches_equal_cpu_batches(tiny_store):
    """Held on the GPU, indexed, preprocessed and augmented there: the CPU's batches, up to one
    quantisation level in a few pixels (CUDA divides by a scalar through its reciprocal)."""
    from agglib.paper_training.data import _Feed, make_datasets, prepare_batch

    cfg = TrainConfig(target="theta1", nu=4, batch=3, seed=2, max_shift_px=3)
    pre = Preprocess(inverse=True, electrons_per_pixel=tiny_store.stem_settings.electrons_per_pixel)
    _, items, _ = make_datasets(tiny_store.path, cfg)
    keys = np.arange(len(items))[::-1][:6]
    out = {}
    for device in ("cpu", "cuda"):
        feed = _Feed(items, tiny_store.path, torch.device(device), 3, 0)
        out[device] = [(prepare_batch(c, k, 1, pre, cfg, augment=True).cpu(), y.cpu()) for c, y, k in feed.batches(1, keys)]
    for (xc, yc), (xg, yg) in zip(out["cpu"], out["cuda"]):
        assert torch.equal(yc, yg) and xc.shape == xg.shape == (3, 4, 1, 96, 96)
        assert (xc != xg).float().mean() < 0.01 and (xc - xg).abs().max() <= 1 / 255 + 1e-6


@pytest.mark.gpu
@pytest.mark.parametrize("target", ["df", "theta1"])
def test_cuda_graph_batches_equal_op_by_op_batches(tiny_store, target):
    """The captured preparation (one CUDA graph per batch shape) gives the batches the same
    operations give one by one, bit for bit, for single images and groups, across epochs."""
    from agglib.paper_training.data import _Feed, make_datasets

    cfg = TrainConfig(target=target, nu=4, batch=3, seed=2, max_shift_px=3)
    pre = Preprocess(inverse=cfg.spec.inverse, electrons_per_pixel=tiny_store.stem_settings.electrons_per_pixel)
    _, items, _ = make_datasets(tiny_store.path, cfg)
    keys = np.arange(len(items))[::-1][:8]                              # batches of 3, 3 and 2
    out = {}
    for graphs in (True, False):
        feed = _Feed(items, tiny_store.path, torch.device("cuda"), 3, 0)
        feed.use_graphs = graphs
        out[graphs] = [(x.clone(), y.clone()) for epoch in (0, 1)
                       for x, y in feed.prepared(epoch, keys, pre, cfg, augment=True)]
        assert len(feed.graphs) == (2 if graphs else 0)
    for (xg, yg), (xe, ye) in zip(out[True], out[False]):
        assert torch.equal(xg, xe) and torch.equal(yg, ye)


@pytest.mark.gpu
def test_estimators_predict_the_same_on_cuda_and_cpu(tiny_store, tmp_path):
    cfg = TrainConfig(target="df", epochs=1, batch=8, steps_per_epoch=3)
    train_network(tiny_store.path, cfg, tmp_path / "df", show_progress_bars=False)
    images = tiny_store.read_images(tiny_store.indices("E")[:10])
    cpu = load_estimator(tmp_path / "df" / "best.pt").predict(images)
    gpu = load_estimator(tmp_path / "df" / "best.pt", device="cuda").predict(images)
    assert np.allclose(cpu, gpu, atol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")
def test_ddp_training_with_nccl_on_two_gpus(tiny_store, tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_ddp_train_worker, args=(2, _free_port(), str(tiny_store.path), str(tmp_path), "cuda"), nprocs=2,
             join=True)
    assert torch.load(tmp_path / "r0.pt")["epochs"] == 3 and (tmp_path / "ddp" / "last.pt").is_file()


def test_auto_device_is_cpu_without_cuda_and_cuda_request_fails_clearly():
    from agglib.core.distributed import pick_device

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    assert pick_device("auto").type == "cpu"
    with pytest.raises(ValueError, match="no CUDA device is available"):
        pick_device("cuda")


@pytest.fixture(params=["resident", "streamed-0", "streamed-2"])
def feed(request, monkeypatch):
    """The training data path: the split held in device memory, or streamed by 0 or 2 DataLoader
    workers (a split that does not fit: the budget is set to 0 bytes)."""
    if request.param.startswith("streamed"):
        monkeypatch.setattr("agglib.paper_training.data.resident_budget", lambda device: 0)
    return 0 if request.param == "resident" else int(request.param.split("-")[1])


def test_a_run_killed_mid_epoch_resumes_to_the_same_weights(tiny_store, tmp_path, feed, monkeypatch):
    """Interrupted after 5 steps of epoch 2 (a mid-epoch last.pt every 2 steps), then resumed:
    the weights equal those of the run that was never interrupted (held in memory) — whether the
    interrupted run held its data in memory or streamed it with DataLoader workers."""
    torch.set_num_threads(1)
    cfg = TrainConfig(target="rho_class", epochs=2, lr=1e-3, batch=8, seed=3, max_shift_px=2, num_workers=feed)
    with monkeypatch.context() as m:
        m.undo()                                                   # the reference holds T∖V and V in memory
        whole = train_network(tiny_store.path, TrainConfig(**{**cfg.__dict__, "num_workers": 0}),
                              tmp_path / "whole", show_progress_bars=False)
    steps = len(make_datasets(tiny_store.path, cfg)[1]) // 8                  # steps of an epoch on T∖V
    train_network(tiny_store.path, cfg, tmp_path / "cut", show_progress_bars=False,
                  checkpoint_every_steps=2, stop_after_steps=steps + 5)
    saved = load_checkpoint(tmp_path / "cut" / "last.pt")["progress"]
    assert saved["epoch"] == 1 and saved["step"] == 4                 # killed after step 5: the step-4 save
    resumed = train_network(tiny_store.path, cfg, tmp_path / "cut", show_progress_bars=False,
                            checkpoint_every_steps=2)
    a = torch.load(tmp_path / "whole" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [h["epoch"] for h in resumed["history"]] == [0, 1]
    assert resumed["history"][-1]["val_loss"] == pytest.approx(whole["history"][-1]["val_loss"])
    for which in ("best", "last"):                                    # and the same report on E
        assert resumed["E"][which]["epoch"] == whole["E"][which]["epoch"]
        assert resumed["E"][which]["E_loss"] == pytest.approx(whole["E"][which]["E_loss"])


def test_groups_train_the_same_weights_held_or_streamed(tiny_store, tmp_path, monkeypatch):
    """θ0's groups of ν images, regrouped each epoch: the data path does not change the weights."""
    torch.set_num_threads(1)
    cfg = TrainConfig(target="theta0", epochs=2, lr=1e-3, nu=4, batch=2, seed=5, steps_per_epoch=4)
    held = train_network(tiny_store.path, cfg, tmp_path / "held", show_progress_bars=False)
    monkeypatch.setattr("agglib.paper_training.data.resident_budget", lambda device: 0)
    streamed = train_network(tiny_store.path, cfg, tmp_path / "streamed", show_progress_bars=False)
    a = torch.load(tmp_path / "held" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "streamed" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert held["history"][-1]["val_mae"] == streamed["history"][-1]["val_mae"]


@settings(max_examples=30, deadline=None)
@given(size=st.integers(6, 12), n=st.integers(1, 6), shift=st.integers(0, 5), seed=st.integers(0, 2**40),
       epoch=st.integers(0, 100))
def test_batched_augmentation_equals_the_image_by_image_transform(size, n, shift, seed, epoch):
    from agglib.preprocess import augment_batch, augmentation_params

    x = scale_and_quantize(torch.rand(n, 2, 1, size, size, generator=torch.Generator().manual_seed(seed % 1000)))
    keys = np.arange(n) * 7 + 3
    params = augmentation_params(seed, epoch, keys, shift, images_per_key=2)
    assert params.shape == (2 * n, 4) and np.all(np.abs(params[:, 2:]) <= shift)
    # a pure function of (seed, epoch, key, image): the same whichever batch the key arrives in
    assert np.array_equal(params[2:], augmentation_params(seed, epoch, keys[1:], shift, images_per_key=2))
    y = augment_batch(x, params).reshape(-1, size, size)
    for image, (k, reflect, dy, dx), out in zip(x.reshape(-1, size, size), params, y):
        expected = torch.rot90(image, int(k), dims=(-2, -1))
        expected = torch.flip(expected, dims=(-1,)) if reflect else expected
        assert torch.equal(out, shift_image(expected, int(dy), int(dx)))


def test_augmentation_parameters_are_uniform():
    from agglib.preprocess import augmentation_params

    p = augmentation_params(0, 0, np.arange(20_000), 4)
    for column, levels in ((0, 4), (1, 2), (2, 9), (3, 9)):
        counts = np.bincount(p[:, column] - p[:, column].min(), minlength=levels)
        assert counts.size == levels and counts.min() > 0.8 * 20_000 / levels


@settings(max_examples=30, deadline=None)
@given(high=st.sampled_from([1, 2**16 - 1, 2**16, 2**24]), seed=st.integers(0, 1000), floats=st.booleans())
def test_counts_are_held_exactly(high, seed, floats):
    from agglib.dataset.pytorch import decode_counts, encode_counts

    rng = np.random.default_rng(seed)
    counts = rng.integers(0, high + 1, size=(3, 5, 5)).astype(np.uint32)
    counts.flat[0] = high
    if floats:
        counts = counts.astype(np.float32) * 0.37
    encoded = encode_counts(counts)
    assert encoded.itemsize == (2 if not floats and high < 2**16 else 4)
    assert np.array_equal(decode_counts(torch.from_numpy(encoded)).numpy(), counts.astype(np.float32))


def test_batchnorm_recalibration_sets_the_statistics_of_the_batches():
    from agglib.engine import recalibrate_batchnorm

    net = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 1), torch.nn.BatchNorm2d(3))
    batches = [torch.randn(8, 1, 4, 4) * 3 + 2 for _ in range(5)]
    net.eval()
    assert recalibrate_batchnorm(net, batches) == 1 and not net.training
    with torch.no_grad():
        z = torch.cat([net[0](b) for b in batches])
    bn = net[1]
    assert torch.allclose(bn.running_mean, z.mean(dim=(0, 2, 3)), atol=1e-5)
    assert bn.momentum == 0.1 and int(bn.num_batches_tracked) == 5


def test_training_with_recalibrated_batchnorm_records_both_validation_errors(tiny_store, tmp_path, edit_checkpoint):
    torch.set_num_threads(1)
    cfg = TrainConfig(target="df", epochs=2, lr=1e-3, batch=8, seed=0, steps_per_epoch=3, bn_batches=2)
    history = train_network(tiny_store.path, cfg, tmp_path / "bn", show_progress_bars=False)["history"]
    assert all(np.isfinite(h["val_mae_running_bn"]) and np.isfinite(h["val_mae"]) for h in history)
    # a checkpoint of a run from before bn_batches existed resumes (a missing field is its default)
    plain = TrainConfig(**{**cfg.__dict__, "bn_batches": 0, "epochs": 1})
    train_network(tiny_store.path, plain, tmp_path / "old", show_progress_bars=False)
    edit_checkpoint(tmp_path / "old" / "last.pt", lambda state: state["metadata"]["train_config"].pop("bn_batches"))
    longer = TrainConfig(**{**plain.__dict__, "epochs": 2})
    assert len(train_network(tiny_store.path, longer, tmp_path / "old", show_progress_bars=False)["history"]) == 2


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 200), world=st.integers(1, 5), seed=st.integers(0, 10**6), epoch=st.integers(0, 50),
       weighted=st.booleans())
def test_epoch_order_splits_one_process_order_across_ranks(n, world, seed, epoch, weighted):
    from agglib.engine import epoch_order

    weights = np.random.default_rng(seed).random(n) + 0.01 if weighted else None
    single = epoch_order(n, seed, epoch, weights=weights)
    parts = [epoch_order(n, seed, epoch, weights=weights, rank=r, world_size=world) for r in range(world)]
    assert len({len(p) for p in parts}) == 1                            # equal shares: no rank waits
    merged = np.empty(sum(len(p) for p in parts), dtype=np.int64)
    for r, p in enumerate(parts):
        merged[r::world] = p
    np.testing.assert_array_equal(merged[:n], single)                   # the same samples as one process
    if not weighted:
        assert sorted(single.tolist()) == list(range(n))
    np.testing.assert_array_equal(single, epoch_order(n, seed, epoch, weights=weights))   # a pure function


def _ddp_train_worker(rank, world_size, port, store_path, out_dir, device="cpu"):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world_size))
    torch.set_num_threads(1)
    cfg = TrainConfig(target="rho_class", epochs=3, lr=1e-3, batch=4, seed=1, device=device,
                      bn_batches=2)                # rank 0 alone recomputes BatchNorm before validating
    # rank 1's clock says the budget is over after its first epoch, rank 0's does not until later:
    # rank 0 decides, so both stop at the same epoch instead of one waiting forever for the other
    budget = 0.0 if rank == 1 else 1e9
    import agglib.engine as engine

    drawn, order = [], engine.epoch_order

    def recording_order(*args, **kwargs):                      # what this rank actually trains on
        out = order(*args, **kwargs)
        drawn.append(np.asarray(out))
        return out

    engine.epoch_order = recording_order
    result = train_network(store_path, cfg, os.path.join(out_dir, "ddp"), show_progress_bars=False,
                           time_budget_s=budget)
    torch.save({"epochs": len(result["history"]) if rank == 0 else -1, "drawn": drawn},
               os.path.join(out_dir, f"r{rank}.pt"))


def runs_weights(labels):
    """The class-balancing sample weights of a binary target (each class half of an epoch)."""
    pos, neg = max(labels.sum(), 1.0), max(len(labels) - labels.sum(), 1.0)
    return np.where(labels > 0.5, 0.5 / pos, 0.5 / neg)


def test_ddp_training_with_gloo_keeps_oversampling_and_stops_together(tiny_store, tmp_path):
    import torch.multiprocessing as mp

    from agglib.engine import epoch_order
    from agglib.paper_training import sample_labels, TARGETS

    mp.spawn(_ddp_train_worker, args=(2, _free_port(), str(tiny_store.path), str(tmp_path)), nprocs=2, join=True)
    runs = [torch.load(tmp_path / f"r{r}.pt", weights_only=False) for r in range(2)]
    assert runs[0]["epochs"] == 3                                       # rank 0's budget: all epochs
    assert len(runs[0]["drawn"]) == len(runs[1]["drawn"]) == 3          # rank 1 stopped with rank 0, not before
    assert (tmp_path / "ddp" / "last.pt").is_file()
    assert load_checkpoint(tmp_path / "ddp" / "last.pt")["metadata"]["processes"] == 2   # what a resume checks
    from agglib.paper_training.data import validation_split

    train_idx, _ = validation_split(tiny_store, TrainConfig(target="rho_class", seed=1))   # T∖V, as trained
    labels = sample_labels(tiny_store, TARGETS["rho_class"])[train_idx]
    assert not 0.3 < labels.mean() < 0.7                                # unbalanced here: oversampling shows
    for epoch in range(3):
        a, b = runs[0]["drawn"][epoch], runs[1]["drawn"][epoch]
        assert len(a) == len(b)                                         # equal shares: no rank waits
        both = np.concatenate([a, b])
        assert 0.3 < labels[both].mean() < 0.7                          # balanced classes in what was trained on
        merged = np.empty(len(both), dtype=np.int64)
        merged[0::2], merged[1::2] = a, b
        single = epoch_order(len(labels), 1, epoch, weights=runs_weights(labels))   # one process, same classes
        np.testing.assert_array_equal(merged[:len(single)], single)     # the samples one process would draw


def test_bf16_autocast_training_tracks_float32(tiny_store, tmp_path):
    """Under bf16 autocast the same seed's training follows the float32 one: every epoch's loss within
    10 %, and predictions on E (float32 BatchNorm statistics) within 0.01 of float32's. A bf16 collapse
    (the size heads' 0.21 against 0.064 in float32 that bench_encoder once showed) fails both."""
    torch.set_num_threads(2)
    runs = {}
    for bf16 in (False, True):
        cfg = TrainConfig(target="df", epochs=4, lr=3e-3, schedule="onecycle", batch=8, seed=0, bf16=bf16)
        history = train_network(tiny_store.path, cfg, tmp_path / f"bf16-{bf16}", show_progress_bars=False)["history"]
        predicted = load_estimator(tmp_path / f"bf16-{bf16}" / "last.pt").predict(
            tiny_store.read_images(tiny_store.indices("E")))
        runs[bf16] = (np.array([h["train_loss"] for h in history]), predicted)
    (loss32, pred32), (loss16, pred16) = runs[False], runs[True]
    assert np.all(np.isfinite(loss16)) and pred16.dtype == np.float32
    np.testing.assert_allclose(loss16, loss32, rtol=0.10)
    assert np.max(np.abs(pred16 - pred32)) < 0.01


def test_the_recorded_paper_profile_run_is_complete_and_plots_both_validation_curves():
    """The GPU run shipped for notebook 7: the paper's 30 epochs, both validation MAEs per epoch,
    scores of the best and the last checkpoint on all of E."""
    import agglib.visualize as viz
    from agglib.evaluate import recorded_run, recorded_run_scores

    run = recorded_run("paper_df_h100")
    assert run["epochs_done"] == len(run["history"]) == run["train_config"]["epochs"] == 30
    assert run["train_config"]["arch"] == "paper" and run["train_config"]["schedule"] == "constant"
    assert [s["checkpoint"] for s in run["scores"]] == ["best.pt", "last.pt"]
    assert all(s["images"] == run["dataset"]["E"] for s in run["scores"])
    fig = viz.plot_validation_error(run["history"])
    assert [len(trace.y) for trace in fig.data] == [30, 30]
    scores = recorded_run_scores(run)                          # short headers: the table fits the text column
    best, last = (s["epoch"] + 1 for s in run["scores"])
    assert list(scores.columns) == ["paper", f"best epoch ({best})", f"last epoch ({last})", "trivial predictor"]
    assert scores.loc["θ̂_Df MAE (ν = 12)", "paper"] == 0.041 and scores["paper"].isna().sum() == 1
    with pytest.raises(ValueError, match=r"recorded: \['acquisition_calibration', 'acquisition_identifiability', "
                                         r"'out_of_model', 'paper_df_h100', 'robust_calibration'\]"):
        recorded_run("missing")


def test_a_run_folder_copied_to_another_machine_continues(tiny_store, tmp_path):
    """The run folder and a store rebuilt elsewhere from the same profile and seed (another path,
    another machine): training resumes, since a checkpoint names its dataset by content."""
    import shutil

    torch.set_num_threads(1)
    cfg = TrainConfig(target="df", epochs=1, lr=1e-3, batch=8, seed=0, steps_per_epoch=3)
    train_network(tiny_store.path, cfg, tmp_path / "here" / "df", show_progress_bars=False)
    shutil.copytree(tmp_path / "here", tmp_path / "there")
    rebuilt = build_dataset(tmp_path / "elsewhere" / "tiny.zarr", "tiny", seed=11, workers=1, show_progress_bars=False)
    longer = TrainConfig(**{**cfg.__dict__, "epochs": 2})
    history = train_network(rebuilt.path, longer, tmp_path / "there" / "df", show_progress_bars=False)["history"]
    assert [h["epoch"] for h in history] == [0, 1]
    other = build_dataset(tmp_path / "other" / "tiny.zarr", "tiny", seed=12, workers=1, show_progress_bars=False)
    with pytest.raises(ValueError, match="belongs to another run \\(other dataset_sha256"):
        train_network(other.path, TrainConfig(**{**cfg.__dict__, "epochs": 3}), tmp_path / "there" / "df",
                      show_progress_bars=False)
