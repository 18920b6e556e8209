"""The training engine of both methods: epochs, steps, resumption, DDP, bf16, time budget, checkpoints.

A method supplies a :class:`Recipe` — its model, optimizer, batches, loss, learning rate and what
it does after an epoch and at the end — and :func:`run_training` does everything else the same
way for the paper's networks (:class:`agglib.paper_training.PaperRecipe`) and the new method's
image encoder (:class:`agglib.sets_training.encoder.EncoderRecipe`):

- **the order of an epoch** is :func:`epoch_order` of (seed, epoch): a permutation (or weighted
  draws), split round-robin across ranks, so K ranks together train on what one process does;
- **the learning rate** is a pure function of the step (:mod:`agglib.lr_schedule`), set before
  every step: nothing to fast-forward on resume;
- **checkpoints** are the one format of :mod:`agglib.checkpoint`: ``last.pt`` after every epoch
  (and every ``checkpoint_every_steps`` steps within one) holds the weights, the optimizer, the
  ``progress`` (epoch, step), the history, the torch RNG and the method's own run state. A
  second call with the same folder resumes from it — mid-epoch too — to the weights an
  uninterrupted run reaches, since each method's batches are functions of (seed, epoch, step);
  a folder of another run is refused (:meth:`Recipe.mismatch`);
- **several processes** (``torchrun``, or ``torch.multiprocessing`` with ``RANK``/``WORLD_SIZE``
  set): DistributedDataParallel averages the gradients (NCCL on GPUs, gloo on CPUs), and every
  BatchNorm layer normalises with the statistics of the whole global batch
  (:func:`synced_batchnorm`, any device), so K processes with the global batch of one train the
  same weights as one process, up to float rounding. Only rank 0 writes and shows progress; it
  decides for all when a time budget ends training;
- **bf16** autocast for the forward pass (each recipe takes its loss in float32); BatchNorm
  statistics are made safe by each method's precise-BatchNorm pass (:func:`recalibrate_batchnorm`);
- **progress bars** (tqdm) for epochs and steps; the loss is read back from the device once per
  epoch (and every 25 steps for the bar, when shown).

The loop itself is :func:`run_training`; the set-up of a device and process group is
:func:`training_session`.
"""

from __future__ import annotations

from contextlib import contextmanager
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

import agglib
from agglib.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from agglib.core.distributed import DistEnv, cleanup_distributed, init_distributed, pick_device
from agglib.core.files import atomic_write_text
from agglib.lr_schedule import set_hyperparameters

__all__ = ["Recipe", "run_training", "training_session", "read_progress", "epoch_order", "recalibrate_batchnorm",
           "synced_batchnorm"]


class Recipe:
    """What a method gives the engine: a subclass sets the attributes below in its ``__init__``
    (model built, optimizer made, data located) and overrides the hooks. The engine calls
    :meth:`initialise` on a fresh start (not on resume), then per step :meth:`hyperparameters`,
    :meth:`batches` and :meth:`loss`, after each epoch :meth:`end_epoch` (rank 0) and at the end
    :meth:`finish` (rank 0). Rank-0 hooks must call no collective operation (the other ranks do
    not enter them).

    Attributes
    ----------
    name : str
        Label of the progress bars.
    kind : str
        Checkpoint kind (:mod:`agglib.checkpoint`), any name; agglib's loaders know
        ``"encoder"`` and ``"paper_network"``.
    outputs : tuple of str
        Files the recipe writes into the run folder besides ``last.pt`` and ``history.json``
        (a fresh run is refused in a folder that already holds one of them).
    model : nn.Module
        The module whose weights are trained and saved.
    optimizer : torch.optim.Optimizer
        Its optimizer (its state is saved in ``last.pt``).
    metadata : dict
        What ``last.pt`` records about the run (JSON); :meth:`mismatch` compares it on resume.
    epochs : int
        Passes over the training items.
    seed : int
        Seeds the order of every epoch (and the method's own draws).
    bf16 : bool
        bfloat16 autocast for the forward pass.
    n_items : int
        Training items (images or groups) of one epoch, before the split across ranks.
    batch : int
        Items per step on this rank (a global batch of ``batch`` × the number of processes).
    steps_per_epoch : int
        Steps of an epoch: the stride of the global step count the learning rate is a function of
        (an epoch with fewer items on this rank takes fewer).
    sampling_weights : ndarray or None
        Draw the epoch's items with replacement by these weights (None: a permutation).
    images_per_item : int
        Images in one item (ν for the paper's multi-image networks), for the images/s record.
    env : DistEnv
        This process's rank and the number of processes (:func:`training_session`).
    device : torch.device
        Where the model and the batches live.

    Examples
    --------
    A linear model on tensors ``X`` (n, d) and ``Y`` (n,) held in memory::

        class Linear(Recipe):
            name, kind = "linear", "linear"
            def __init__(self, X, Y, env, device, epochs=3, batch=8, seed=0):
                self.X, self.Y, self.env, self.device = X, Y, env, device
                self.epochs, self.seed, self.batch = epochs, seed, batch
                torch.manual_seed(seed)
                self.model = nn.Linear(X.shape[1], 1).to(device)
                self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-2)
                self.metadata, self.n_items = {"features": X.shape[1]}, len(X)
                self.steps_per_epoch = len(X) // (batch * env.world_size)
            def batches(self, epoch, keys, first_step):
                for a in range(0, len(keys) - self.batch + 1, self.batch):
                    k = torch.from_numpy(keys[a:a + self.batch])
                    yield self.X[k].to(self.device), self.Y[k].to(self.device)
            def loss(self, out, y):
                return nn.functional.mse_loss(out.float().squeeze(1), y)

        with training_session("cpu") as (env, device):
            run_training(Linear(X, Y, env, device), "runs/linear")
    """

    name = "training"
    kind = ""
    outputs: tuple = ()
    bf16 = False
    sampling_weights = None
    images_per_item = 1

    def initialise(self) -> None:
        """A fresh run's starting weights beyond the model's own initialisation (not on resume)."""

    def trained_module(self) -> nn.Module:
        """The module whose output :meth:`loss` takes (wrapped by DDP in several processes)."""
        return self.model

    def hyperparameters(self, step: int, total_steps: int) -> dict:
        """``{"lr": …[, "beta1": …]}`` at global step ``step`` of ``total_steps`` ({}: keep the
        optimizer's)."""
        return {}

    def batches(self, epoch: int, keys: np.ndarray, first_step: int):
        """``(x, y)`` on the device for the consecutive ``batch``-sized slices of ``keys``: this
        rank's items of ``epoch`` still to train, already starting at step ``first_step`` (> 0 on
        a mid-epoch resume; use it only to advance the recipe's own random draws)."""
        raise NotImplementedError

    def loss(self, out, y) -> torch.Tensor:
        """The loss this rank back-propagates: one whose gradient, averaged over the ranks by
        DDP, is the gradient of the global batch's loss (a mean over this rank's equal share, or
        its share of a sum × the number of processes)."""
        raise NotImplementedError

    def end_epoch(self, epoch: int, record: dict, history: list, final: bool) -> None:
        """On rank 0 after each epoch: validate, add to ``record`` (already the last entry of
        ``history``), write what the method keeps."""

    def finish(self, history: list, complete: bool, finished_before: bool) -> dict:
        """On rank 0 when training stops: after the last epoch (``complete``), after the epoch
        that ended a time budget (not ``complete``; a later call continues), or when an earlier
        call had finished (``finished_before``)."""
        return {}

    def mismatch(self, saved_metadata: dict) -> list[str]:
        """What differs between a saved run's metadata and this run's (refused for resuming)."""
        return []

    def run_state(self) -> dict:
        """JSON-able state of the method kept in ``last.pt`` (e.g. the best validation loss)."""
        return {}

    def load_run_state(self, state: dict) -> None:
        """Restore :meth:`run_state` on resume."""


def epoch_order(n: int, seed: int, epoch: int, *, weights=None, rank: int = 0, world_size: int = 1) -> np.ndarray:
    """The training items of one epoch for one rank, a pure function of (seed, epoch).

    A permutation of ``range(n)`` (or ``n`` draws with replacement by ``weights``: the classifier's
    oversampling), padded by wrapping to a multiple of ``world_size`` and split round-robin: the
    ranks together see what one process sees, and a resumed run sees what an uninterrupted one saw.
    """
    rng = np.random.default_rng([int(seed), int(epoch)])
    if weights is None:
        order = rng.permutation(n)
    else:
        p = np.asarray(weights, dtype=np.float64)
        order = rng.choice(n, size=n, replace=True, p=p / p.sum())
    per_rank = math.ceil(n / world_size)
    order = np.resize(order, per_rank * world_size)
    return order[rank::world_size]


def recalibrate_batchnorm(model: nn.Module, batches) -> int:
    """Replace the BatchNorm running statistics by their averages over ``batches`` of inputs.

    Training updates the running mean and variance with momentum 0.1, so at batch 16 they follow
    the last few dozen batches; a network whose weights still move (the paper's, at a constant
    rate) then meets statistics in eval mode that no longer match its weights, and its validation
    error jumps from epoch to epoch while the training loss falls. Averaging the statistics over
    many batches with the final weights (Wu & Johnson 2021, "Rethinking 'batch' in BatchNorm",
    precise BN) removes that mismatch; in float32 it also removes the lag of statistics
    accumulated from bf16 activations. Returns the number of BatchNorm layers recalibrated.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return 0
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None                        # a cumulative average over the batches
    was_training = model.training
    model.train()
    with torch.no_grad():
        for x in batches:
            model(x)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.train(was_training)
    return len(norms)


class _SumOverRanks(torch.autograd.Function):
    """The sum of a tensor over all ranks; its gradient is the sum of the ranks' gradients (each
    rank's input reaches every rank's output)."""

    @staticmethod
    def forward(ctx, t):
        import torch.distributed as dist

        out = t.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad):
        import torch.distributed as dist

        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def _global_batchnorm(bn: nn.modules.batchnorm._BatchNorm, x: torch.Tensor) -> torch.Tensor:
    """Training-mode BatchNorm with the mean and variance of the batch across all ranks.

    The sums go through :class:`_SumOverRanks`, which carries gradients back to every rank's
    inputs, so forward and backward equal those of one process holding the global batch (as
    :class:`torch.nn.SyncBatchNorm`, which runs on GPUs only): in float64 the gradients of two
    ranks equal one process's to 1e-12 (measured on the encoder).
    """
    all_reduce = _SumOverRanks.apply
    dims = [0] + list(range(2, x.dim()))
    shape = [1, -1] + [1] * (x.dim() - 2)
    xf = x if x.dtype == torch.float64 else x.float()
    # the values per channel over all ranks, kept on the device (no read-back to the host per layer)
    n = all_reduce(torch.tensor(xf.numel() // xf.shape[1], dtype=xf.dtype, device=x.device))
    mean = all_reduce(xf.sum(dims)) / n
    centred = xf - mean.reshape(shape)
    var = all_reduce((centred * centred).sum(dims)) / n
    with torch.no_grad():
        bn.num_batches_tracked.add_(1)
        factor = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
        bn.running_mean.mul_(1 - factor).add_(factor * mean.detach())
        bn.running_var.mul_(1 - factor).add_(factor * var.detach() * n / (n - 1).clamp(min=1))
    y = centred * torch.rsqrt(var + bn.eps).reshape(shape)
    if bn.affine:
        y = y * bn.weight.reshape(shape) + bn.bias.reshape(shape)
    return y.to(x.dtype)


@contextmanager
def synced_batchnorm(model: nn.Module, env: DistEnv):
    """Within the block, every BatchNorm layer of ``model`` in training mode normalises with the
    global batch's statistics (:func:`_global_batchnorm`); a no-op in one process. Outside it
    (validation, precise BatchNorm on rank 0 alone) the layers are the ordinary ones."""
    if not env.distributed:
        yield
        return
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.forward = (lambda x, m=m: _global_batchnorm(m, x) if m.training else type(m).forward(m, x))
    try:
        yield
    finally:
        for m in norms:
            del m.forward


@contextmanager
def training_session(device_name):
    """A context manager, ``with training_session("auto") as (env, device):`` — this process's
    rank information and device (``"auto"``: CUDA when available; the rank's GPU under
    ``torchrun``), with the process group joined (NCCL / gloo) inside the block and left after it."""
    env = DistEnv.from_env()
    device = pick_device(device_name)
    if env.distributed and device.type == "cuda":
        device = torch.device("cuda", env.local_rank)
    init_distributed(env, device)
    try:
        yield env, device
    finally:
        cleanup_distributed()


def read_progress(recipe: Recipe, last: Path):
    """``(state, epoch, step)``: the saved run of ``last`` and where to continue — the epoch to
    train next and the steps of it already done (``(None, 0, 0)`` when ``last`` is absent).

    Raises :class:`~agglib.checkpoint.CheckpointError` when ``last`` belongs to another run.
    """
    if not last.is_file():
        return None, 0, 0
    state = load_checkpoint(last, kind=recipe.kind)
    differ = recipe.mismatch(state["metadata"])
    if differ:
        raise CheckpointError(f"{last} belongs to another run (other {'; '.join(differ)}); use another folder")
    epoch, step = int(state["progress"]["epoch"]), int(state["progress"]["step"])   # step > 0: mid-epoch
    if step == (epoch + 1) * recipe.steps_per_epoch:
        step = 0                               # a finished epoch as runs before this engine recorded it
    elif step >= recipe.steps_per_epoch:
        raise CheckpointError(f"{last} is {step} steps into epoch {epoch + 1}, which has {recipe.steps_per_epoch} "
                              "steps in this run (another number of processes?); resume it as it was launched")
    return state, epoch + (0 if step else 1), step


def _save_run(recipe: Recipe, last: Path, history: list, epoch: int, step: int, weights: dict | None = None) -> None:
    """``last.pt`` of ``recipe`` after ``step`` steps of ``epoch`` (0: the epoch is complete)."""
    save_checkpoint(last, recipe.kind, recipe.metadata, recipe.model.state_dict() if weights is None else weights,
                    optimizer_state=recipe.optimizer.state_dict(), progress={"epoch": epoch, "step": step},
                    history=history, run_state=json.dumps(recipe.run_state()),
                    tensors={"torch_rng": torch.get_rng_state()})


def _rank0_decides(flag: bool, env, device) -> bool:
    """``flag`` of rank 0 on every rank (so that all ranks stop at the same epoch)."""
    if not env.distributed:
        return bool(flag)
    import torch.distributed as dist

    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.broadcast(t, src=0)
    return bool(t.item() > 0.5)


def _synced_seconds(t0: float, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def run_training(recipe: Recipe, run_dir, *, show_progress_bars: bool | None = None,
                 time_budget_s: float | None = None, checkpoint_every_steps: int | None = None,
                 stop_after_steps: int | None = None, stop_after_epochs: int | None = None) -> dict:
    """Train ``recipe`` in ``run_dir`` (resuming from its ``last.pt``); the history and the finish.

    Parameters
    ----------
    recipe : Recipe
    run_dir : path-like
        Receives ``last.pt``, ``history.json`` and what the recipe writes.
    show_progress_bars : bool, optional
        Epoch and step bars (default: ``agglib.config['progress_bars']``; rank 0 only).
    time_budget_s : float, optional
        Stop after the epoch during which this wall time [s] was exceeded (rank 0 decides for all).
    checkpoint_every_steps : int, optional
        Also write ``last.pt`` every this many steps within an epoch.
    stop_after_steps : int, optional
        Return after this many steps of this call, as an interruption would (for time-sliced
        jobs and the resume tests): ``last.pt`` stays, nothing is finished.
    stop_after_epochs : int, optional
        The same after this many epochs of this call.

    Returns
    -------
    dict
        ``history`` (one record per epoch: ``epoch``, ``train_loss``, ``train_seconds``,
        ``images_per_s``, ``bf16`` and ``processes`` — what that epoch ran with: a resumed run may
        differ — and the recipe's validation), ``finished`` (bool) and what
        :meth:`Recipe.finish` returned.
    """
    run_dir = Path(run_dir)
    env, device, model, optimizer = recipe.env, recipe.device, recipe.model, recipe.optimizer
    last = run_dir / "last.pt"
    state, start_epoch, start_step = read_progress(recipe, last)
    history = []
    if state is None:
        found = [n for n in ("history.json", *recipe.outputs) if (run_dir / n).exists()]
        if found:                             # never overwrite what this run did not write
            from agglib.core.files import OutputFolderError

            raise OutputFolderError(f"{run_dir} holds {', '.join(found)} but no last.pt of a run: agglib did not "
                                    "write them for this run (or their run's last.pt is gone); choose another folder")
        recipe.initialise()
    else:
        history = state["history"]
        recipe.load_run_state(state["run_state"])
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if "torch_rng" in state.get("tensors", {}):
            torch.set_rng_state(state["tensors"]["torch_rng"])
        if start_epoch >= recipe.epochs:                          # finished by an earlier call
            out = {}
            if env.is_main:
                if not (run_dir / "history.json").is_file():
                    atomic_write_text(run_dir / "history.json", json.dumps(history, indent=1))
                out = _finish(recipe, last, history, state["progress"], complete=True, finished_before=True)
            return {"history": history, "finished": True, **out}
    show = (agglib.config.get("progress_bars") if show_progress_bars is None else show_progress_bars) \
        and env.is_main
    wrapped = recipe.trained_module()
    if env.distributed:
        from torch.nn.parallel import DistributedDataParallel

        wrapped = DistributedDataParallel(wrapped, device_ids=[device.index] if device.type == "cuda" else None)
    total_steps = recipe.epochs * recipe.steps_per_epoch

    def save(epoch: int, step: int) -> None:
        _save_run(recipe, last, history, epoch, step)

    started, steps_this_call, interrupted = time.perf_counter(), 0, False
    epoch_bar = tqdm(range(start_epoch, recipe.epochs), desc=f"{recipe.name} epochs", disable=not show,
                     initial=start_epoch, total=recipe.epochs)
    for epoch in epoch_bar:
        if stop_after_epochs is not None and epoch - start_epoch >= stop_after_epochs:
            interrupted = True
            break
        order = epoch_order(recipe.n_items, recipe.seed, epoch, weights=recipe.sampling_weights,
                            rank=env.rank, world_size=env.world_size)
        n_steps = min(max(1, len(order) // recipe.batch), recipe.steps_per_epoch)
        first = start_step if epoch == start_epoch else 0
        wrapped.train()
        t0, seen = time.perf_counter(), 0
        running = torch.zeros((), dtype=torch.float64, device=device)
        step_bar = tqdm(total=n_steps, initial=first, desc=f"epoch {epoch + 1}", leave=False, disable=not show)
        batches = recipe.batches(epoch, order[first * recipe.batch:n_steps * recipe.batch], first)
        with synced_batchnorm(model, env):                # the training steps only: rank-0 hooks stay local
            for step, (x, y) in enumerate(batches, start=first):
                set_hyperparameters(optimizer, recipe.hyperparameters(epoch * recipe.steps_per_epoch + step,
                                                                      total_steps))
                optimizer.zero_grad(set_to_none=True)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=recipe.bf16):
                    out = wrapped(x)
                loss = recipe.loss(out, y)
                loss.backward()
                optimizer.step()
                running += loss.detach().double() * len(y)         # read back once per epoch, not per step
                seen += len(y)
                steps_this_call += 1
                step_bar.update()
                if show and step % 25 == 0:                       # the only other read-back: the bar's loss
                    step_bar.set_postfix(loss=f"{float(loss.detach()):.4g}")
                done = step + 1
                if env.is_main and done < n_steps and checkpoint_every_steps and done % checkpoint_every_steps == 0:
                    save(epoch, done)
                if stop_after_steps is not None and steps_this_call >= stop_after_steps and done < n_steps:
                    interrupted = True                            # as a kill would: the mid-epoch last.pt stays
                    break
        step_bar.close()
        if interrupted:
            break
        seconds = _synced_seconds(t0, device)
        if env.distributed:                               # the epoch's loss and images over all ranks
            import torch.distributed as dist

            totals = torch.stack([running, torch.tensor(float(seen), dtype=torch.float64, device=device)])
            dist.all_reduce(totals)
            running, seen = totals[0], int(totals[1].item())
        record = {"epoch": epoch, "train_loss": float(running) / max(seen, 1), "train_seconds": seconds,
                  "images_per_s": seen * recipe.images_per_item / max(seconds, 1e-9),
                  "bf16": bool(recipe.bf16), "processes": int(env.world_size)}   # a resumed run may change them
        if env.is_main:
            history.append(record)
            recipe.end_epoch(epoch, record, history, final=epoch == recipe.epochs - 1)
            save(epoch, 0)
            epoch_bar.set_postfix({k: f"{v:.4g}" for k, v in record.items() if k in ("train_loss", "val_loss")})
        if time_budget_s is not None and _rank0_decides(time.perf_counter() - started > time_budget_s, env, device):
            break
    epoch_bar.close()
    out = {}
    complete = not interrupted and bool(history) and int(history[-1]["epoch"]) == recipe.epochs - 1
    if env.is_main:
        atomic_write_text(run_dir / "history.json", json.dumps(history, indent=1))
        if not interrupted:                # the last epoch, or the one that ended the budget
            out = _finish(recipe, last, history, {"epoch": int(history[-1]["epoch"]), "step": 0},
                          complete=complete, finished_before=False)
    return {"history": history, "finished": complete, **out}


def _finish(recipe: Recipe, last: Path, history: list, progress: dict, complete: bool,
            finished_before: bool) -> dict:
    """:meth:`Recipe.finish`; ``last.pt`` (at ``progress``) rewritten when it changed the run state
    (its weights as trained: whatever ``finish`` does to the model is its own)."""
    kept = recipe.run_state()
    trained = {k: v.detach().clone() for k, v in recipe.model.state_dict().items()}
    out = recipe.finish(history, complete=complete, finished_before=finished_before)
    if recipe.run_state() != kept:
        _save_run(recipe, last, history, progress["epoch"], progress["step"], weights=trained)
    return out
