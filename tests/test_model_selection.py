"""Honest model selection of the paper method: V, carved from T, picks best.pt; E is only reported."""

import json

import numpy as np
import pytest
import torch

from agglib.checkpoint import load_checkpoint
from agglib.dataset import build_dataset
from agglib.paper_training import TrainConfig, make_datasets, make_eval_dataset, train_network, validation_split


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("selection") / "tiny.zarr"
    return build_dataset(path, "tiny", seed=11, workers=1, show_progress_bars=False)


def _images(items, epochs=(0,)) -> set:
    """Store indices of every image the items of a split use in ``epochs`` (training regroups the
    groups of ν every epoch; validation and E use epoch 0's)."""
    used = []
    for epoch in epochs:
        items.set_epoch(epoch)
        used.append(np.asarray(items.item_indices(np.arange(len(items)))).reshape(-1))
    items.set_epoch(0)
    return set(np.concatenate(used).tolist())


@pytest.mark.parametrize("target", ["df", "rho_class", "theta0", "theta1"])
def test_v_is_carved_from_t_apart_from_the_training_images_and_from_e(tiny_store, target):
    cfg = TrainConfig(target=target, nu=4, repeats=2, seed=3)
    _, train, val = make_datasets(tiny_store.path, cfg)
    scored = _images(make_eval_dataset(tiny_store.path, cfg))
    t, e = set(tiny_store.indices("T").tolist()), set(tiny_store.indices("E").tolist())
    trained, validated = _images(train, epochs=range(4)), _images(val)
    assert trained and validated and scored
    assert validated.isdisjoint(trained)                    # V ∩ (T∖V) = ∅, image by image
    assert validated.isdisjoint(e) and trained.isdisjoint(e)   # V ∩ E = ∅
    assert trained | validated <= t and scored <= e
    assert set(train.sample_indices.tolist()) | set(val.sample_indices.tolist()) == t
    ids = tiny_store.config_id
    assert set(ids[list(validated)]).isdisjoint(ids[list(trained)])       # whole configurations
    assert len(set(ids[val.sample_indices])) == 3                          # round(16 / 6) of 16
    if cfg.spec.multi_image:                                 # every item: ν images of one configuration
        for items in (train, val):
            groups = items.item_indices(np.arange(len(items)))
            assert groups.shape[1] == 4 and all(len(set(ids[g])) == 1 for g in groups)


def test_v_is_the_same_for_every_target_of_a_run_and_a_function_of_the_seeds(tiny_store):
    def split(**kw):
        return validation_split(tiny_store, TrainConfig(**{"target": "df", **kw}))

    train, val = split(seed=0)
    for again in (split(seed=0), split(target="theta1", nu=4, seed=0), split(target="rho_class", seed=0)):
        np.testing.assert_array_equal(again[1], val)        # θ0/θ1's pretrained f never saw V either
        np.testing.assert_array_equal(again[0], train)
    assert any(not np.array_equal(split(seed=s)[1], val) for s in range(1, 6))
    assert len(set(tiny_store.config_id[split(val_share=0.5)[1]])) == 8
    assert len(set(tiny_store.config_id[split(val_share=0.01)[1]])) == 1     # at least one configuration
    assert len(set(tiny_store.config_id[split(val_share=0.99)[0]])) == 1     # and at least one left
    with pytest.raises(ValueError, match="val_share"):
        TrainConfig(target="df", val_share=1.0)
    with pytest.raises(ValueError, match="val_share"):
        TrainConfig(target="df", val_share=0)


def test_best_checkpoint_follows_v_where_e_would_pick_another_epoch(tiny_store, tmp_path, monkeypatch):
    """Losses planted per epoch: V's lowest at epoch 1, E's (were E validated) at epoch 2. best.pt
    holds epoch 1's weights; E is evaluated only after the last epoch, for the best and the last."""
    import agglib.paper_training.loop as loop
    from agglib.paper_training.data import _Feed

    torch.set_num_threads(1)
    cfg = TrainConfig(target="df", epochs=3, lr=1e-3, batch=8, seed=0, steps_per_epoch=2)
    # the reference, unplanted: two epochs (constant rate: the same first two epochs as three)
    reference = train_network(tiny_store.path, TrainConfig(**{**cfg.__dict__, "epochs": 2}), tmp_path / "two",
                              show_progress_bars=False)
    history = reference["history"]
    chosen = int(load_checkpoint(tmp_path / "two" / "best.pt")["metadata"]["epoch"])
    assert chosen == int(np.argmin([h["val_loss"] for h in history]))
    assert reference["best_val_loss"] == min(h["val_loss"] for h in history)

    _, _, val = make_datasets(tiny_store.path, cfg)
    samples = {"V": set(val.sample_indices.tolist()), "E": set(tiny_store.indices("E").tolist())}
    planted = {"V": [0.5, 0.1, 0.3], "E": [0.5, 0.3, 0.1]}
    calls, fed = [], {}
    real_batches, real_evaluate = _Feed.batches, loop.evaluate

    def batches(self, epoch, keys):
        fed["samples"] = set(self.items.sample_indices.tolist())
        return real_batches(self, epoch, keys)

    def evaluate(model, batches, spec, preprocess):
        out = real_evaluate(model, batches, spec, preprocess)
        split = next((k for k, v in samples.items() if v == fed["samples"]), "other")
        if len(calls) < 3 and split in planted:   # the validations of the three epochs
            out["val_loss"] = planted[split][len(calls)]
        calls.append(split)
        return out

    monkeypatch.setattr(_Feed, "batches", batches)
    monkeypatch.setattr(loop, "evaluate", evaluate)
    result = train_network(tiny_store.path, cfg, tmp_path / "three", show_progress_bars=False)
    assert calls == ["V", "V", "V", "E", "E"]                 # E: after the last epoch, best and last
    assert [h["val_loss"] for h in result["history"]] == planted["V"] and result["best_val_loss"] == 0.1
    best = load_checkpoint(tmp_path / "three" / "best.pt")
    assert best["metadata"]["epoch"] == 1 and best["metadata"]["validation"]["best_epoch_chosen_on"] == "V"
    epoch1 = load_checkpoint(tmp_path / "two" / "last.pt")["model"]
    assert all(torch.equal(best["model"][k], epoch1[k]) for k in epoch1)
    scores = result["E"]
    assert scores["split"] == "E" and scores["best"]["epoch"] == 1 and scores["last"]["epoch"] == 2
    assert scores["E_items"] == scores["E_images"] == len(samples["E"])
    assert scores["best"]["E_loss"] == pytest.approx(reference["E"]["last"]["E_loss"])   # epoch 1's weights
    assert json.loads((tmp_path / "three" / "E.json").read_text()) == scores
    assert load_checkpoint(tmp_path / "three" / "last.pt")["run_state"]["E"] == scores
    assert all("E_loss" not in h for h in result["history"])             # E is not in the epochs' record


def test_finished_run_returns_its_report_on_e_without_reading_images(tiny_store, tmp_path, monkeypatch,
                                                                    edit_checkpoint):
    from agglib.dataset.pytorch import _LazyStore

    torch.set_num_threads(1)
    cfg = TrainConfig(target="theta0", epochs=1, nu=4, batch=2, seed=1, steps_per_epoch=2)
    first = train_network(tiny_store.path, cfg, tmp_path / "x", show_progress_bars=False)
    assert first["E"]["best"] == first["E"]["last"] and first["E"]["E_images"] == 4 * first["E"]["E_items"]
    # stopped after last.pt and before its report on E: the next call scores E
    edit_checkpoint(tmp_path / "x" / "last.pt", lambda state: state["run_state"].pop("E"))
    (tmp_path / "x" / "E.json").unlink()
    again = train_network(tiny_store.path, cfg, tmp_path / "x", show_progress_bars=False)
    assert again["E"]["last"]["E_loss"] == pytest.approx(first["E"]["last"]["E_loss"])

    def no_reads(*args, **kwargs):
        raise AssertionError("a finished run read images")

    (tmp_path / "x" / "E.json").unlink()
    monkeypatch.setattr(_LazyStore, "preload", no_reads)
    monkeypatch.setattr(_LazyStore, "image", no_reads)
    done = train_network(tiny_store.path, cfg, tmp_path / "x", show_progress_bars=False)
    assert done["E"] == again["E"]
    assert json.loads((tmp_path / "x" / "E.json").read_text()) == again["E"]       # rewritten


def test_resuming_refuses_another_val_share_and_runs_from_before_v(tiny_store, tmp_path, edit_checkpoint):
    torch.set_num_threads(1)
    cfg = TrainConfig(target="df", epochs=1, batch=8, seed=0, steps_per_epoch=1)
    train_network(tiny_store.path, cfg, tmp_path / "x", show_progress_bars=False)
    with pytest.raises(ValueError, match=r"train_config.val_share \(0\.1666\d* there, 0\.25 here\)"):
        train_network(tiny_store.path, TrainConfig(**{**cfg.__dict__, "epochs": 2, "val_share": 0.25}),
                      tmp_path / "x", show_progress_bars=False)
    # a run folder from before V existed (no val_share: it chose its best epoch on E) is not continued
    edit_checkpoint(tmp_path / "x" / "last.pt", lambda state: state["metadata"]["train_config"].pop("val_share"))
    with pytest.raises(ValueError, match="made before validation on V"):
        train_network(tiny_store.path, TrainConfig(**{**cfg.__dict__, "epochs": 2}), tmp_path / "x",
                      show_progress_bars=False)


def test_shipped_paper_method_estimators_from_before_v_still_load():
    from agglib.estimate import ParameterEstimator, shipped_models_dir

    est = ParameterEstimator.load(shipped_models_dir("paper"))
    assert est.df.metadata["target"] == "df" and est.nu >= 1


def test_checkpoints_in_the_paper_networks_former_layout_still_load_and_resume(tiny_store, tmp_path):
    """Before the engine, the paper's networks were saved as plain dicts (``metadata["format"]`` =
    ``"agglib-estimator/1"``, ``epoch``/``step``/``best_val_loss``/``torch_rng`` at the top): such a
    best.pt still loads as an estimator, and such a last.pt resumes to the weights of a run that
    was never stopped."""
    from agglib.checkpoint import CHECKPOINT_FORMAT
    from agglib.estimate import load_estimator

    torch.set_num_threads(1)
    one = TrainConfig(target="df", epochs=1, batch=8, seed=0, steps_per_epoch=2)
    two = TrainConfig(**{**one.__dict__, "epochs": 2})
    train_network(tiny_store.path, two, tmp_path / "whole", show_progress_bars=False)
    train_network(tiny_store.path, one, tmp_path / "old", show_progress_bars=False)
    for name in ("last.pt", "best.pt"):                              # rewritten as the former layout
        state = load_checkpoint(tmp_path / "old" / name)
        legacy = {"metadata": {**state["metadata"], "format": "agglib-estimator/1"}, "model": state["model"],
                  "history": state["history"]}
        if name == "last.pt":
            legacy.update(optimizer=state["optimizer"], epoch=state["progress"]["epoch"], step=0,
                          best_val_loss=state["run_state"]["best_val_loss"], E=state["run_state"]["E"],
                          torch_rng=state["tensors"]["torch_rng"])
        else:
            legacy["epoch"] = state["metadata"]["epoch"]
        torch.save(legacy, tmp_path / "old" / name)
        assert torch.load(tmp_path / "old" / name, weights_only=True).get("format") != CHECKPOINT_FORMAT
    net = load_estimator(tmp_path / "old" / "best.pt")
    assert net.metadata["target"] == "df" and "format" not in net.metadata
    resumed = train_network(tiny_store.path, two, tmp_path / "old", show_progress_bars=False)
    assert [h["epoch"] for h in resumed["history"]] == [0, 1]
    assert resumed["E"]["last"]["epoch"] == 1                       # scored again, not the first call's report
    a = load_checkpoint(tmp_path / "whole" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "old" / "last.pt")
    assert b["format"] == CHECKPOINT_FORMAT and b["kind"] == "paper_network"        # saved in today's format
    assert all(torch.equal(a[k], b["model"][k]) for k in a)
