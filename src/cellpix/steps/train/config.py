"""The training options (:class:`TrainConfig`) and their presets: each default is defined here once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from cellpix.core.fields import CheckedOptions, Choices, bounded
from cellpix.core.novelty import DEFAULT_FPR
from cellpix.errors import CellpixError

LOSSES = ("ahfl", "focal", "ce")

OPTIMIZERS = ("sgd", "adamw")
# "last": every epoch, keeping the annealed end; "best": early stopping on the validation split (TrainConfig.keep)
KEEPS = ("last", "best")
# Each optimiser's learning rate when none is given. SGD with Nesterov momentum at 0.1 fits the per-pixel read-out
# to what a logistic regression reaches; AdamW at 1e-3 (the paper's) left it 0.04 subtype macro-F1 lower on Zheng
# fold 0 however it was regularised (docs/benchmarks.md, "Design probes").
DEFAULT_LR = {"sgd": 0.1, "adamw": 1e-3}
# Fewer reference cells than this in a class get a warning: such a class is learned from a handful of examples and
# its validation score rests on one or two cells (none below 2, which the split keeps for training).
MIN_CLASS_CELLS = 10

PRESETS: dict[str, dict[str, Any]] = {
    # The default: the per-pixel read-out alone, trained with SGD for a fixed, annealed schedule (keep "last"), then
    # again on every cell (refit). On the Zheng sorted PBMC, 5-fold CV, with pixels log(1 + CP10k / 100) min-max
    # scaled (cellpix.core.layout.DEFAULT_PSEUDO_COUNT), it scores subtype macro-F1 0.86-0.87 against 0.85 for a
    # logistic regression on the same panel's log1p(CP10k), and transfers to Kang 2018 and pbmc68k_reduced at
    # lineage accuracy 0.88-0.91 against 0.74-0.78 (docs/benchmarks.md). Adding the ResNet-10-T trunk did not help
    # (0.818 against 0.837 on Zheng fold 0) at 100x the cost. The preset is TrainConfig's own defaults, defined there
    # once.
    "cpu": {},
    # The per-pixel read-out beside a convolutional trunk, both trained together: for references where patterns
    # across neighbouring genes may matter, at a hundred times the training cost, so epochs are cut short by early
    # stopping on the validation split.
    "trunk": {"wide": True, "deep": True, "backbone": "resnet10t", "in_chans": 1, "keep": "best", "epochs": 30},
    # The published configuration: EfficientNet-B5 on 224 x 224 x 3 grey images, feature dropout 0.4, drop-path
    # (stochastic depth) 0.2, AdamW; a subtype head for every base that has subtypes to choose between (a base with
    # none or one would get a one-output softmax, the constant 1, which changes no probability and learns nothing).
    "paper": {"wide": False, "deep": True, "backbone": "efficientnet_b5", "in_chans": 3, "pixels": 224,
              "dropout": 0.4, "drop_path": 0.2, "optimizer": "adamw", "class_weights": False, "keep": "best",
              "epochs": 30},
}


@dataclass(kw_only=True)
class TrainConfig(CheckedOptions):
    """Training options (``cellpix train``); the defaults are the CPU preset (:data:`PRESETS`).

    Attributes
    ----------
    backbone : str
        The trunk: a timm model name or a plugin backbone (``--backbone``).
    wide : bool
        The per-pixel read-out path of :class:`cellpix.core.network.HierarchicalClassifier` (``--wide``); the CPU
        preset uses it alone.
    deep : bool
        The convolutional trunk path (``--deep``; the trunk and paper presets).
    in_chans : int
        Image channels, 1 or 3 (``--in-chans``).
    pixels : int or None
        Required layout size (the paper preset needs a 224-px layout); None: any.
    hidden : int
        Width of the heads' hidden layer on the trunk's features.
    dropout : float
        Dropout on the trunk's features.
    drop_path : float
        The trunk's stochastic depth, for timm backbones (``--drop-path``).
    epochs : int
        Epochs (``--epochs``). The read-out is a convex-like problem whose regularisation is weight decay and
        masking, not stopping early: it gains from training to the end of an annealed schedule. On Zheng (5 folds,
        in memory) 10, 20 and 40 epochs gave subtype macro-F1 0.860 / 0.865 / 0.866 and base macro-F1 0.980 /
        0.986 / 0.990, with the spread over seeds shrinking from 0.007 to 0.001; early stopping on a 300-cell
        validation split stopped at 10-16 epochs.
    keep : str
        One of :data:`KEEPS` (``--keep``): "last" trains every epoch and keeps the annealed end (the read-out);
        "best" stops early on the validation subtype macro-F1 and keeps the best epoch (the trunk presets, whose
        epochs cost a hundred times more).
    batch_size : int
        Images per optimiser step (``--batch-size``).
    optimizer : str
        One of :data:`OPTIMIZERS` (``--optimizer``).
    lr : float or None
        Peak learning rate (``--lr``); None: the optimiser's :data:`DEFAULT_LR`.
    weight_decay : float
        L2 weight decay on the trunk and heads.
    readout_weight_decay : float
        L2 on the per-pixel read-out alone, weights and biases (``--readout-weight-decay``). On log1p(CP10k) pixels a
        strong decay (1e-2) was what made the read-out transfer across datasets, at a cost on the reference's own
        cells (base macro-F1 0.966); on the shifted-log pixels the transfer no longer needs it: 1e-4 transfers
        nearly as well (lineage accuracy Kang 0.91 / 0.89, pbmc68k 0.88, against 0.93 / 0.91 and 0.90 with 1e-2)
        and 1e-2 costs Zheng subtype macro-F1 0.015 and base macro-F1 0.023 (python -m benchmarks.probe_pixels,
        seed 0).
    warmup_epochs : float
        Epochs of linear learning-rate warm-up before the cosine annealing.
    loss : str
        One of :data:`LOSSES` (``--loss``): AHFL (adaptive α), focal (static α) or cross-entropy.
    gamma : float
        The focal losses' focusing exponent.
    alpha : float
        The weight of the base level's loss against the subtypes': fixed for the focal loss, AHFL's start.
    beta : float
        AHFL's smoothing of its adaptive α after each optimiser step (:mod:`cellpix.steps.train.loss`).
    class_weights : bool
        scTab's balanced class weights in the loss (``--class-weights``): a rare reference class should not become
        the one that shifted cells of a common class fall into (pbmc68k's CD14+ monocytes called CD34+
        progenitors, without them).
    mask_fraction : float
        Share of gene pixels zeroed per training image (``--mask-fraction``; random-masking augmentation).
    val_fraction : float
        Validation share, stratified by label (``--val-fraction``).
    refit : bool or None
        After the run that holds the validation split out (which scores the model, calibrates novelty and, with
        keep "best", chooses the epoch count), train once more on every cell (``--refit``): the split then costs
        the shipped model nothing. None: on for the read-out alone, off when a trunk runs, where it would double a
        cost a hundred times higher.
    val_key : str or None
        obs column (donor, batch) whose groups form the validation split instead of a stratified sample
        (``--val-key``).
    patience : int
        Epochs without improvement before early stopping, with keep "best" (``--patience``).
    min_epochs : int
        Epochs trained before early stopping may stop.
    min_epoch_steps : int
        An epoch takes at least this many optimiser steps, passing over a small reference several times (each
        pass with fresh masking): 180 Puram cells make 3 batches a pass, and 30 epochs of 3 steps never left
        chance.
    seed : int
        Seed of the split, the masking and the weights (``--seed``).
    chunk_size : int
        Reference cells read and rendered at a time: memory is bounded by it.
    donor_key : str or None
        obs column of donors: enables scTab's donor augmentation (``--donor-key``).
    donor_aug_prob : float
        Chance that a training image is shifted by a difference between donors of its label, with ``donor_key``.
    pretrained : str or None
        A local checkpoint file, or "hub" to download the backbone's weights (``--pretrained``; needs network).
    device : str
        Where training runs ("auto", "cpu", "cuda", "cuda:1", ...; ``--device``).
    novelty_fpr : float
        Share of the reference's validation cells the calibrated novelty thresholds may flag.
    """

    backbone: str = "resnet10t"
    wide: bool = True
    deep: bool = False
    in_chans: int = 1
    pixels: int | None = None
    hidden: int = 256
    dropout: float = 0.3
    drop_path: float = bounded(0.0, 0, 1, open_high=True)
    epochs: int = bounded(40, 1, integer=True)
    keep: str = "last"
    batch_size: int = bounded(64, 2, integer=True)
    optimizer: str = "sgd"
    lr: float | None = bounded(None, 0, open_low=True)
    weight_decay: float = bounded(1e-4, 0)
    readout_weight_decay: float = bounded(1e-4, 0)
    warmup_epochs: float = bounded(1.0, 0)
    loss: str = "ahfl"
    gamma: float = 2.0
    alpha: float = 0.5
    beta: float = 0.9
    class_weights: bool = True
    mask_fraction: float = bounded(0.1, 0, 1, open_high=True)
    val_fraction: float = bounded(0.1, 0, 1, open_high=True)
    refit: bool | None = None
    val_key: str | None = None
    patience: int = bounded(6, 1, integer=True)
    min_epochs: int = bounded(3, 1, integer=True)
    min_epoch_steps: int = bounded(40, 1, integer=True)
    seed: int = bounded(0, 0, integer=True)
    chunk_size: int = bounded(4096, 1, integer=True)
    donor_key: str | None = None
    donor_aug_prob: float = bounded(0.5, 0, 1)
    pretrained: str | None = None
    device: str = "auto"
    novelty_fpr: float = bounded(DEFAULT_FPR, 0, 1, open_low=True, open_high=True)

    CHOICES: ClassVar[Choices] = {"loss": ("loss", LOSSES), "keep": ("keep", KEEPS),
                                  "optimizer": ("optimizer", OPTIMIZERS)}

    def __post_init__(self) -> None:
        self.check()
        if self.in_chans not in (1, 3):
            raise CellpixError("--in-chans must be 1 or 3")
        if not (self.wide or self.deep):
            raise CellpixError("a model needs the per-pixel read-out (--wide), the trunk (--deep) or both")
        if self.lr is None:
            self.lr = DEFAULT_LR[self.optimizer]
        if self.refit is None:
            self.refit = not self.deep
        if self.drop_path and not self.deep:
            raise CellpixError("--drop-path is the trunk's stochastic depth: it needs a trunk (--deep, --backbone "
                               "or --preset trunk/paper)")

    @classmethod
    def from_preset(cls, preset: str, **overrides: Any) -> TrainConfig:
        if preset not in PRESETS:
            raise CellpixError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
        given = {k: v for k, v in overrides.items() if v is not None}
        if "backbone" in given and "deep" not in given:  # naming a backbone means using it
            given["deep"] = True
        return cls(**{**PRESETS[preset], **given})
