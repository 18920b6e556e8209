"""The training engine on its own: the recipe its documentation shows, interrupted and resumed."""

import textwrap

import numpy as np
import pytest
import torch
from torch import nn

from agglib import engine
from agglib.checkpoint import load_checkpoint
from agglib.core.files import OutputFolderError


def _documented_recipe():
    """The ``Linear`` recipe of :class:`agglib.engine.Recipe`'s example, as written there."""
    doc = engine.Recipe.__doc__
    code = textwrap.dedent(doc[doc.index("class Linear(Recipe):"):doc.index("with training_session")])
    namespace = {"Recipe": engine.Recipe, "torch": torch, "nn": nn}
    exec(code, namespace)
    return namespace["Linear"]


def test_the_documented_recipe_trains_resumes_and_refuses_a_foreign_folder(tmp_path):
    Linear = _documented_recipe()
    rng = np.random.default_rng(0)
    X = torch.from_numpy(rng.normal(size=(64, 3)).astype(np.float32))
    Y = X @ torch.tensor([1.0, -2.0, 0.5]) + 0.3
    with engine.training_session("cpu") as (env, device):
        whole = engine.run_training(Linear(X, Y, env, device), tmp_path / "whole")
        assert whole["finished"] and [h["epoch"] for h in whole["history"]] == [0, 1, 2]
        assert whole["history"][-1]["train_loss"] < whole["history"][0]["train_loss"]
        cut = engine.run_training(Linear(X, Y, env, device), tmp_path / "cut", checkpoint_every_steps=2,
                                  stop_after_steps=8 + 3)           # 8 steps per epoch: stopped in epoch 2
        assert not cut["finished"]
        assert load_checkpoint(tmp_path / "cut" / "last.pt")["progress"] == {"epoch": 1, "step": 2}
        engine.run_training(Linear(X, Y, env, device), tmp_path / "cut")
        a = load_checkpoint(tmp_path / "whole" / "last.pt")["model"]
        b = load_checkpoint(tmp_path / "cut" / "last.pt")["model"]
        assert all(torch.equal(a[k], b[k]) for k in a)
        (tmp_path / "mine").mkdir()
        (tmp_path / "mine" / "history.json").write_text("my own notes")
        with pytest.raises(OutputFolderError, match="history.json but no last.pt"):
            engine.run_training(Linear(X, Y, env, device), tmp_path / "mine")
        assert (tmp_path / "mine" / "history.json").read_text() == "my own notes"


def test_each_epoch_record_says_the_precision_and_processes_it_ran_with(tmp_path):
    """A run resumed on another machine may train on under bf16 where it began in float32 (the
    precision is not part of a run's identity): the history says which epochs ran how."""
    Linear = _documented_recipe()
    rng = np.random.default_rng(2)
    X = torch.from_numpy(rng.normal(size=(64, 3)).astype(np.float32))
    Y = X @ torch.tensor([1.0, -2.0, 0.5])
    with engine.training_session("cpu") as (env, device):
        engine.run_training(Linear(X, Y, env, device), tmp_path, checkpoint_every_steps=2, stop_after_steps=8 + 3)
        resumed = Linear(X, Y, env, device)
        resumed.bf16 = True
        history = engine.run_training(resumed, tmp_path)["history"]
    assert [(h["epoch"], h["bf16"], h["processes"]) for h in history] == [(0, False, 1), (1, True, 1), (2, True, 1)]


def test_a_finished_run_that_counted_steps_from_its_start_is_not_trained_again(tmp_path):
    """``last.pt`` of runs saved before the engine counted the steps of the whole run: a finished
    one is read as finished (no extra epoch record, no changed weights)."""
    from agglib.checkpoint import save_checkpoint

    Linear = _documented_recipe()
    rng = np.random.default_rng(1)
    X = torch.from_numpy(rng.normal(size=(64, 3)).astype(np.float32))
    Y = X @ torch.tensor([1.0, -2.0, 0.5])
    with engine.training_session("cpu") as (env, device):
        done = engine.run_training(Linear(X, Y, env, device), tmp_path)
        state = load_checkpoint(tmp_path / "last.pt")
        recipe = Linear(X, Y, env, device)
        save_checkpoint(tmp_path / "last.pt", state["kind"], state["metadata"], state["model"],
                        optimizer_state=state["optimizer"], history=state["history"], tensors=state["tensors"],
                        progress={"epoch": 2, "step": 3 * recipe.steps_per_epoch})     # the former count
        assert engine.read_progress(recipe, tmp_path / "last.pt")[1:] == (3, 0)
        again = engine.run_training(recipe, tmp_path)
        assert again["finished"] and len(again["history"]) == len(done["history"]) == 3
