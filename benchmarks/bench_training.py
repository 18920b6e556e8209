"""Training and inference speed of the feature extractors, against the paper's network (the anchor).

    python benchmarks/bench_training.py [--steps 10]

Images per second of one Adam step (forward, backward, update; batch 16, MSE, CNN^Df head) and
of inference (batch 64), on random 128² and 512² images with the torch threads of this machine.
The ratio column is against the paper's VGG-like network at the same image size. Accuracy at
equal training budget is in notebook 9 (Table 6).
"""

from __future__ import annotations

import argparse
import time

import torch

from agglib.nets import build_network, count_parameters


def rates(arch: str, size: int, steps: int) -> tuple[float, float, int]:
    net = build_network(arch, size, activation="scaled_sigmoid")
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    x, y = torch.randn(16, 1, size, size), torch.rand(16) + 1.5
    for _ in range(2):
        opt.zero_grad()
        torch.nn.functional.mse_loss(net(x), y).backward()
        opt.step()
    t = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.mse_loss(net(x), y).backward()
        opt.step()
    train = 16 * steps / (time.perf_counter() - t)
    net.eval()
    xi = torch.randn(64, 1, size, size)
    with torch.no_grad():
        net(xi[:8])
        t = time.perf_counter()
        for _ in range(max(1, steps // 4)):
            net(xi)
        infer = 64 * max(1, steps // 4) / (time.perf_counter() - t)
    return train, infer, count_parameters(net)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=10, help="timed optimizer steps per case")
    args = ap.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, channels-last, batch 16 (train) / 64 (inference)")
    header = f"{'size':>5} {'network':>10} {'parameters':>11} | {'train img/s':>11} {'× paper':>8} | {'infer img/s':>11} {'× paper':>8}"
    print(header)
    print("-" * len(header))
    measured = {}
    for size, archs in ((128, ("paper", "compact", "resnet18", "inception")), (512, ("paper", "compact"))):
        base = None
        for arch in archs:
            train, infer, params = rates(arch, size, args.steps if arch != "paper" or size < 512 else 3)
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
