"""Training the estimator networks (paper §2.3): Adam, MSE (BCE for the classifier), best checkpoint.

Targets (what each network learns, from which labels):

========== ======================= ============ =============== ==================
target     label                   images/step  output          loss
========== ======================= ============ =============== ==================
df         D_f(A) of the aggregate 16 images    1.4·σ + 1.3     MSE
rho_reg    ρ(A) of the aggregate   16 images    σ               MSE
rho_class  ρ(A) ∈ {0, 1}           16 images    σ               BCE (on logits)
theta0     θ0 of the batch         8 groups × ν ReLU            MSE
theta1     θ1 of the batch         8 groups × ν ReLU            MSE, inverse-intensity input
========== ======================= ============ =============== ==================

``descriptors`` and ``descriptors_inverse`` are auxiliary single-image networks (not part of
the estimator) predicting :data:`PRETRAIN_DESCRIPTORS` of the aggregate; they pretrain the
feature extractors of θ0 and θ1 when a profile asks for it (``pretrain_epochs``).

Model selection: ``val_share`` (default 1/6) of T's parameter configurations, with all their T
samples, form the validation split V (:func:`validation_split`, drawn from the dataset's and the
run's seed; the same V for every network of a run). The networks train on T∖V only; V picks the
best epoch; E is only scored — the best and the last weights, after the last epoch
(``result["E"]``, ``E.json``) — never used to choose.

The classifier sees homogeneous aggregates (ρ(A) = 0 or 1, ~10 % of images) oversampled to
balanced classes. Training images are augmented (rotations, reflections, shifts); validation
on V is not (a fixed subset of V per epoch with ``val_images``, all of V after the last epoch).
Training runs on the engine both methods share (:mod:`agglib.engine`); this package is the
paper networks' recipe (:class:`PaperRecipe`). Each epoch writes ``last.pt`` and, when the
validation loss on V improved, ``best.pt`` (atomically, in the one checkpoint format of
:mod:`agglib.checkpoint`, kind ``"paper_network"``, with everything
:func:`agglib.estimate.load_estimator` needs); with ``checkpoint_every_steps`` ``last.pt`` is also
written within an epoch. Calling :func:`train_network` again with the same directory resumes from
``last.pt`` — mid-epoch too, to the same weights: the order of the samples
(:func:`agglib.engine.epoch_order`), each sample's augmentation and the learning rate
(:func:`agglib.lr_schedule.torch_one_cycle` for ``schedule="onecycle"``) are functions of
(seed, epoch, sample, step), not of a generator's or a scheduler's history.

Multi-GPU: launch the same script with ``torchrun --nproc_per_node=K``; each rank trains on its
round-robin share of the epoch's order (the classifier's oversampling included),
DistributedDataParallel averages gradients (NCCL on GPUs, gloo on CPUs) and BatchNorm uses the
global batch's statistics. Only rank 0 writes checkpoints and shows progress; rank 0 decides for
all when a time budget ends training.

Data path (:mod:`agglib.paper_training.data`): a split that fits on the device (40 % of free GPU memory,
or ``preload_mb`` in RAM) is read once, as integer counts, into device memory; each step indexes a
batch there, preprocesses it (:class:`~agglib.preprocess.Preprocess`) and augments it
(:func:`~agglib.preprocess.augment_batch`) as batched tensor operations on the device — for small
batches on a GPU replayed as one captured CUDA graph. A split that does not fit is read by
DataLoader workers into pinned memory and copied without blocking; the same batch operations
follow, so every path trains the same weights. The loss is read back from the device once per
epoch (and every 25 steps for the progress bar, when shown).

Modules: :mod:`agglib.paper_training._contracts` (targets, :class:`TrainConfig`), :mod:`agglib.paper_training.data`,
:mod:`agglib.paper_training.loop` (:func:`train_network`, :class:`PaperRecipe`).
"""

from agglib.paper_training._contracts import (PRETRAIN_DESCRIPTORS, PRETRAINED_FROM, SCHEDULES, TARGETS, TargetSpec,
                                     TrainConfig)
from agglib.paper_training.data import (GRAPH_MAX_PIXELS, descriptor_scaling, descriptor_table, make_datasets,
                               make_eval_dataset, prepare_batch, resident_budget, sample_labels, validation_split)
from agglib.paper_training.loop import (CHECKPOINT_KIND, PaperRecipe, checkpoint_metadata, dataset_hash,
                               default_num_workers, evaluate, init_features_from, train_estimator, train_for_profile,
                               train_network)

__all__ = ["TARGETS", "TargetSpec", "TrainConfig", "PRETRAIN_DESCRIPTORS", "PRETRAINED_FROM", "SCHEDULES",
           "train_network", "train_for_profile", "train_estimator", "evaluate", "PaperRecipe", "CHECKPOINT_KIND",
           "checkpoint_metadata", "dataset_hash", "default_num_workers", "init_features_from",
           "descriptor_table", "descriptor_scaling", "sample_labels", "validation_split", "make_datasets",
           "make_eval_dataset", "resident_budget", "prepare_batch", "GRAPH_MAX_PIXELS"]
