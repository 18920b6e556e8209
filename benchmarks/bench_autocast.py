"""Is bf16 autocast faster than float32 for the encoder on *this* machine? (anchor: float32)

    python benchmarks/bench_autocast.py [--steps 8] [--batch 64]

Times training steps (forward, backward, AdamW) of the quick profile's image encoder on random
inputs of its size, alternating float32 and bfloat16 autocast, and reports the median seconds per
step of each, their ratio and what :func:`agglib.core.distributed.fast_bfloat16` says of the CPU
(the profiles train under bf16 only where it does). Writes
``benchmarks/results/bench_autocast-<CPU capability>.txt`` (one file per kind of CPU: AVX2,
AVX512 …). Under a minute; uses the threads torch uses by default.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import torch

import agglib
from agglib.core.distributed import fast_bfloat16
from agglib.encoder import ImageEncoder, multitask_loss

ROOT = Path(__file__).resolve().parents[1]


def cpu_name() -> str:
    """The CPU's model name (Linux), else what :mod:`platform` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def step_seconds(model, optimizer, x, y, bf16: bool) -> float:
    """Seconds of one training step under bf16 autocast or in float32."""
    t0 = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        _, out = model(x)
    multitask_loss(out.float(), y, torch.zeros(y.shape[1], dtype=torch.bool)).backward()
    optimizer.step()
    return time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--steps", type=int, default=8, help="timed steps of each precision (after one warm-up each)")
    ap.add_argument("--batch", type=int, default=64, help="images per step (the quick profile's batch)")
    ap.add_argument("--out", default=None, help="results file (None: benchmarks/results/bench_autocast-<CPU>.txt)")
    args = ap.parse_args(argv)
    prof = agglib.load_profile("quick")
    size = int(prof.image_size_px)
    torch.manual_seed(0)
    model = ImageEncoder(size).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(args.batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    y = torch.randn(args.batch, model.heads.out_features)
    times = {False: [], True: []}
    for k in range(args.steps + 1):
        for bf16 in (False, True):
            t = step_seconds(model, optimizer, x, y, bf16)
            if k:                                      # the first step of each is a warm-up
                times[bf16].append(t)
    f32, b16 = float(np.median(times[False])), float(np.median(times[True]))
    capability = torch.backends.cpu.get_cpu_capability()
    lines = [f"quick encoder ({size}² px, batch {args.batch}), training step, median of {args.steps}; "
             f"{cpu_name()}, torch {torch.__version__}, CPU capability {capability}, "
             f"{torch.get_num_threads()} threads; fast_bfloat16: {fast_bfloat16('cpu')}",
             "| precision | s / step | images / s |", "|---|---|---|",
             f"| float32 | {f32:.3f} | {args.batch / f32:.0f} |",
             f"| bf16 autocast | {b16:.3f} | {args.batch / b16:.0f} |",
             f"bf16 / float32 time: {b16 / f32:.2f}"]
    text = "\n".join(lines)
    print(text)
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"bench_autocast-{capability}.txt"
    out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
