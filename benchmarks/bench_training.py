"""Training and inference speed of the feature extractors, against the paper's network (the anchor).

    python benchmarks/bench_training.py [--steps 10] [--device cuda]
    python benchmarks/bench_training.py --loop data/datasets/quick-seed0.zarr [--arch compact] [--device cuda] [--bf16]


Images per second of one Adam step (forward, backward, update; batch 16, MSE, CNN^Df head) and
of inference (batch 64), on random 128² and 512² images with the torch threads of this machine.
The ratio column is against the paper's VGG-like network at the same image size. Accuracy at
equal training budget is in notebook 9 (Table 6).

``--loop STORE`` measures the training loop itself (the engine, :mod:`agglib.engine`, with the
paper networks' recipe ``agglib.paper_training.train_network``: data, preprocessing,
augmentation, optimizer) on a dataset store against the network alone at the same batch and image
size: the ratio is how well the loop keeps the device busy (goal ≥ 0.8). ``--loop STORE --encoder``
measures the new method's encoder the same way (the engine with ``train_encoder``'s recipe, two
epochs over the store's T, against the encoder alone on random three-channel inputs).
"""

from __future__ import annotations

import argparse
import time

import torch

from agglib.nets import build_network, count_parameters


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _step_rate(forward, y, opt, steps: int, device, bf16: bool) -> float:
    """Images/s of optimizer steps (MSE of ``forward()`` against ``y``) after 3 warm-up steps."""
    def step():
        opt.zero_grad()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out = forward()
        torch.nn.functional.mse_loss(out.float(), y).backward()
        opt.step()

    for _ in range(3):
        step()
    _sync(device)
    t = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return len(y) * steps / (time.perf_counter() - t)


def rates(arch: str, size: int, steps: int, device="cpu", batch: int = 16,
          bf16: bool = False) -> tuple[float, float, int]:
    """Images/s of the network alone (training step; inference at batch 64) on random inputs."""
    device = torch.device(device)
    net = build_network(arch, size, activation="scaled_sigmoid").to(device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    x, y = torch.randn(batch, 1, size, size, device=device), torch.rand(batch, device=device) + 1.5
    train = _step_rate(lambda: net(x), y, opt, steps, device, bf16)
    net.eval()
    xi = torch.randn(64, 1, size, size, device=device)
    with torch.no_grad():
        net(xi[:8])
        _sync(device)
        t = time.perf_counter()
        for _ in range(max(1, steps // 4)):
            net(xi)
        _sync(device)
        infer = 64 * max(1, steps // 4) / (time.perf_counter() - t)
    return train, infer, count_parameters(net)


def loop_rate(store: str, arch: str, device: str, batch: int, steps: int, num_workers: int,
              bf16: bool = False) -> tuple[float, int]:
    """Images/s of ``train_network``'s training steps: the second of two epochs capped at
    ``steps`` steps (the first warms up kernels and allocator)."""
    import tempfile

    from agglib.dataset import open_store
    from agglib.paper_training import TrainConfig, train_network

    size = int(open_store(store).images.shape[1])
    cfg = TrainConfig(target="df", arch=arch, epochs=2, batch=batch, steps_per_epoch=steps, device=device,
                      num_workers=num_workers, val_images=64, bf16=bf16)
    with tempfile.TemporaryDirectory() as tmp:
        history = train_network(store, cfg, tmp, show_progress_bars=False)["history"]
    return float(history[-1]["images_per_s"]), size


def encoder_loop_rate(store: str, device: str, batch: int, bf16: bool = False) -> tuple[float, int]:
    """Images/s of ``train_encoder``'s training steps: the second of two epochs over T."""
    import tempfile

    from agglib.dataset import open_store
    from agglib.sets_training import EncoderConfig, train_encoder

    size = int(open_store(store).images.shape[1])
    cfg = EncoderConfig(epochs=2, batch=batch, val_images=0, bn_batches=0, bf16=bf16, device=device)
    with tempfile.TemporaryDirectory() as tmp:
        history = train_encoder(store, cfg, tmp, show_progress_bars=False)["history"]
    return float(history[-1]["images_per_s"]), size


def encoder_rate(size: int, steps: int, device="cpu", batch: int = 64, bf16: bool = False) -> float:
    """Images/s of the encoder alone (AdamW step on random inputs, MSE on its 13 heads)."""
    from agglib.encoder import ENCODER_TARGETS, ImageEncoder

    device = torch.device(device)
    net = ImageEncoder(size, len(ENCODER_TARGETS)).to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    x, y = torch.randn(batch, 3, size, size, device=device), torch.randn(batch, len(ENCODER_TARGETS), device=device)
    return _step_rate(lambda: net(x)[1], y, opt, steps, device, bf16)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=10, help="timed optimizer steps per case")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    ap.add_argument("--loop", default=None, metavar="STORE", help="measure the training loop on this dataset store")
    ap.add_argument("--arch", default="compact", help="network of --loop")
    ap.add_argument("--batch", type=int, default=16, help="images per step of --loop")
    ap.add_argument("--num-workers", type=int, default=0, help="DataLoader workers of --loop")
    ap.add_argument("--bf16", action="store_true", help="bfloat16 autocast in --loop and its network-alone anchor")
    ap.add_argument("--encoder", action="store_true", help="--loop: the new method's encoder (batch: --batch, e.g. 64)")
    args = ap.parse_args(argv)
    if args.loop and args.encoder:
        loop, size = encoder_loop_rate(args.loop, args.device, args.batch, args.bf16)
        net = encoder_rate(size, max(args.steps, 20), args.device, args.batch, args.bf16)
        name = torch.cuda.get_device_name(torch.device(args.device)) if args.device.startswith("cuda") else "CPU"
        print(f"encoder at {size}² on {args.device} ({name}), batch {args.batch}{', bf16' if args.bf16 else ''}: "
              f"training loop {loop:.1f} images/s, encoder alone {net:.1f} images/s, ratio {loop / net:.2f} "
              "(goal ≥ 0.8)", flush=True)
        return
    if args.loop:
        loop, size = loop_rate(args.loop, args.arch, args.device, args.batch, max(args.steps, 20), args.num_workers,
                               args.bf16)
        net, _, _ = rates(args.arch, size, max(args.steps, 20), args.device, args.batch, args.bf16)
        name = torch.cuda.get_device_name(torch.device(args.device)) if args.device.startswith("cuda") else "CPU"
        print(f"{args.arch} at {size}² on {args.device} ({name}), batch {args.batch}{', bf16' if args.bf16 else ''}: "
              f"training loop {loop:.1f} images/s, network alone {net:.1f} images/s, ratio {loop / net:.2f} (goal ≥ 0.8)",
              flush=True)
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, channels-last, batch 16 (train) / 64 (inference)")
    header = f"{'size':>5} {'network':>10} {'parameters':>11} | {'train img/s':>11} {'× paper':>8} | {'infer img/s':>11} {'× paper':>8}"
    print(header)
    print("-" * len(header))
    measured = {}
    for size, archs in ((128, ("paper", "compact", "resnet18", "inception")), (512, ("paper", "compact"))):
        base = None
        for arch in archs:
            train, infer, params = rates(arch, size, args.steps if arch != "paper" or size < 512 else 3, args.device)
            measured[arch, size] = (train, infer)
            if arch == "paper":
                base = (train, infer)
            print(f"{size:>5} {arch:>10} {params:>11,} | {train:>11.1f} {train / base[0]:>7.1f}× | "
                  f"{infer:>11.1f} {infer / base[1]:>7.1f}×", flush=True)
    quick, paper = measured["compact", 128], measured["paper", 512]
    print(f"quick profile (compact, 128²) against the paper's setup (paper network, 512²): "
          f"{quick[0] / paper[0]:.1f}× training, {quick[1] / paper[1]:.1f}× inference images/s")


if __name__ == "__main__":
    main()
