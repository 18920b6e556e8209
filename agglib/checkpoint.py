"""The one checkpoint format of agglib: tensors plus JSON metadata, loadable with ``weights_only=True``.

A checkpoint is a dict written by :func:`torch.save` with only tensors, numbers, strings, lists,
tuples and dicts in it, so :func:`load_checkpoint` reads it with ``torch.load(weights_only=True)``
(no pickled Python objects, safe to open from an untrusted source):

============== =====================================================================
key            content
============== =====================================================================
``format``     ``"agglib-checkpoint/2"``
``kind``       what the weights are: ``"encoder"``, ``"set_posterior"`` (the new method),
               ``"paper_network"`` (one of the paper's networks)
``metadata``   a JSON string: everything needed to rebuild the module (architecture,
               input size, pixel size, STEM settings, target scaling, training config,
               dataset identity, agglib version); documented per kind where it is written
``model``      the module's ``state_dict``
``optimizer``  optional: the optimizer's ``state_dict`` (``last.pt`` of a run, for resuming)
``progress``   optional: ``{"epoch": int, "step": int}`` of a run in progress
``history``    optional: a JSON string, one record per finished epoch
``run_state``  optional: a JSON string, the training method's own state (best validation
               loss, scores on E …) in ``last.pt``
``tensors``    optional: other tensors of a run in progress (``torch_rng``: the CPU RNG)
============== =====================================================================

Writes are atomic (a temporary file, then a rename): an interrupted job never leaves a
half-written checkpoint. Checkpoints of the paper's networks written before both methods shared
one training engine (:mod:`agglib.engine`) — plain dicts with ``metadata["format"] ==
"agglib-estimator/1"`` — are still read: :func:`load_checkpoint` returns them in this layout
(kind ``"paper_network"``), and a run folder of such checkpoints resumes.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import torch

from agglib.core.files import atomic_write_bytes

__all__ = ["CHECKPOINT_FORMAT", "save_checkpoint", "load_checkpoint", "CheckpointError", "weights_digest",
           "read_torch_file"]

CHECKPOINT_FORMAT = "agglib-checkpoint/2"

#: The layout the paper's networks were saved in before they shared the one format: a dict
#: with ``metadata`` (a plain dict holding this string as ``format``), ``model`` and for
#: ``last.pt`` ``optimizer``, ``epoch``, ``step``, ``history``, ``best_val_loss``, ``E``,
#: ``torch_rng``. Read by :func:`load_checkpoint` (kind ``"paper_network"``), never written.
_LEGACY_PAPER_FORMAT = "agglib-estimator/1"


class CheckpointError(ValueError):
    """A file that is not a readable agglib checkpoint of the expected kind."""


def save_checkpoint(path, kind: str, metadata: dict, model_state: dict, *, optimizer_state: dict | None = None,
                    progress: dict | None = None, history: list | None = None, run_state: str | None = None,
                    tensors: dict | None = None) -> Path:
    """Write a checkpoint atomically (see the module docstring for the layout)."""
    payload = {"format": CHECKPOINT_FORMAT, "kind": str(kind), "metadata": json.dumps(metadata),
               "model": {k: v.detach().cpu() for k, v in model_state.items()}}
    if optimizer_state is not None:
        payload["optimizer"] = optimizer_state
    if progress is not None:
        payload["progress"] = {k: int(v) for k, v in progress.items()}
    if history is not None:
        payload["history"] = json.dumps(history)
    if run_state is not None:
        payload["run_state"] = str(run_state)
    if tensors:
        payload["tensors"] = dict(tensors)
    buf = io.BytesIO()
    torch.save(payload, buf)
    return atomic_write_bytes(path, buf.getvalue())


def _from_legacy_paper_layout(payload: dict) -> dict:
    """A checkpoint of the paper's networks in :data:`_LEGACY_PAPER_FORMAT`, in today's layout."""
    metadata = {k: v for k, v in payload["metadata"].items() if k != "format"}
    out = {"format": CHECKPOINT_FORMAT, "kind": "paper_network", "metadata": json.dumps(metadata),
           "model": payload["model"], "history": json.dumps(payload.get("history", []))}
    if "optimizer" in payload:                                   # last.pt of a run in progress
        out["optimizer"] = payload["optimizer"]
        out["progress"] = {"epoch": int(payload["epoch"]), "step": int(payload.get("step", 0))}
        out["run_state"] = json.dumps({"best_val_loss": payload.get("best_val_loss"), "E": payload.get("E")})
        if "torch_rng" in payload:
            out["tensors"] = {"torch_rng": payload["torch_rng"]}
    return out


def read_torch_file(path, map_location="cpu"):
    """``torch.load(path, weights_only=True)``; :class:`CheckpointError` naming the file when it is
    missing, truncated or not a PyTorch file (the one place agglib reads a checkpoint's bytes)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:                   # truncated or foreign file
        raise CheckpointError(f"{path} is not a readable checkpoint: a file cut short (an interrupted copy or "
                              f"download) or not a PyTorch checkpoint at all ({type(err).__name__} while reading it); "
                              "copy it again, restore it from a backup, or train again in another folder") from None


def load_checkpoint(path, kind: str | None = None, map_location="cpu") -> dict:
    """Read a checkpoint with ``torch.load(weights_only=True)``; metadata, history and run state decoded.

    Raises :class:`CheckpointError` naming the file when it is missing, truncated, not an agglib
    checkpoint or of another ``kind``.
    """
    path = Path(path)
    payload = read_torch_file(path, map_location)
    if isinstance(payload, dict) and isinstance(payload.get("metadata"), dict) \
            and payload["metadata"].get("format") == _LEGACY_PAPER_FORMAT:
        payload = _from_legacy_paper_layout(payload)
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not an {CHECKPOINT_FORMAT} checkpoint")
    if kind is not None and payload.get("kind") != kind:
        raise CheckpointError(f"{path} holds a checkpoint of kind {payload.get('kind')!r}, not {kind!r}: another "
                              "kind of training wrote it; use another file or folder")
    out = dict(payload)
    out["metadata"] = json.loads(payload["metadata"])
    out["history"] = json.loads(payload["history"]) if "history" in payload else []
    out["run_state"] = json.loads(payload["run_state"]) if "run_state" in payload else {}
    return out


def weights_digest(state_dict: dict) -> str:
    """SHA-256 of a state dict's tensors (names, shapes, values): identifies trained weights."""
    import hashlib

    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
