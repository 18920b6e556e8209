"""Device choice and DistributedDataParallel set-up (``torchrun`` or ``torch.multiprocessing``)."""

from __future__ import annotations

from dataclasses import dataclass
import os

import numpy as np
import torch
import torch.distributed as dist

__all__ = ["pick_device", "fast_bfloat16", "host_to_device", "resident_budget", "DistEnv", "init_distributed", "cleanup_distributed"]


def pick_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"``: CUDA when available, else CPU; otherwise the device named."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} requested but no CUDA device is available; use 'cpu' or 'auto'")
    return dev


def fast_bfloat16(device: str | torch.device | None = "auto") -> bool:
    """Whether bfloat16 autocast is fast on ``device``.

    Parameters
    ----------
    device : str, torch.device or None
        ``"auto"`` (:func:`pick_device`), ``"cpu"``, ``"cuda"``, ``"cuda:1"`` …

    Returns
    -------
    bool
        A GPU: compute capability 8 or higher (Ampere and newer; older GPUs emulate bf16), or an
        AMD GPU. A CPU: oneDNN has bf16 kernels for it (AVX-512 and newer:
        ``torch.ops.mkldnn._is_mkldnn_bf16_supported``). On a CPU without them (AVX2 only, most
        laptops) bf16 is emulated: ``benchmarks/results/bench_autocast-AVX2.txt`` measured a training
        step of the quick encoder 9.2 × slower under bf16 autocast than in float32. Other devices: False.
    """
    dev = pick_device(device)
    if dev.type == "cuda":
        if torch.version.hip:
            return True
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        return torch.cuda.get_device_capability(index)[0] >= 8
    if dev.type != "cpu":
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):          # a torch without the query: assume no fast bf16
        return False


@dataclass(frozen=True)
class DistEnv:
    """Rank information of this process (world size 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_env(cls) -> "DistEnv":
        """Read ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` as set by ``torchrun``."""
        return cls(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                   int(os.environ.get("LOCAL_RANK", 0)))


def host_to_device(array, device) -> torch.Tensor:
    """A NumPy array (or CPU tensor) on ``device`` without making the host wait for the device.

    A plain copy from pageable memory to a GPU synchronises the stream, so the host would idle
    until the queued steps finish and could not prepare the next one; from pinned memory the copy
    is queued like a kernel.
    """
    t = array if isinstance(array, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(array))
    device = torch.device(device)
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def resident_budget(device: torch.device) -> int:
    """Bytes one split of training images may take when held on ``device``: 40 % of the free GPU
    memory (T∖V and V together leave a fifth of it to the network; E is read after they are
    released), or the ``preload_mb`` setting in RAM."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(0.4 * free)
    import agglib

    return int(agglib.config.get("preload_mb")) * 1024**2


def init_distributed(env: DistEnv, device: torch.device) -> None:
    """Join the process group: NCCL on CUDA, gloo on CPU (no-op for a single process)."""
    if not env.distributed or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(env.local_rank)
    dist.init_process_group(backend=backend, rank=env.rank, world_size=env.world_size)


def cleanup_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
