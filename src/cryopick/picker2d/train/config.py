"""Settings of a 2D training run (:class:`TrainConfig`): schedule, augmentation, sparse-label handling, budget.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from cryopick.picker2d.train.augment import AugmentConfig


@dataclass
class TrainConfig:
    """Training settings (all recorded in the model card).

    Attributes
    ----------
    backbone, backbone_kwargs, checkpoint
        Model name in the registry, its keyword arguments, and base weights for it (e.g. SAM2).
    target_diameter
        Particle diameter in working pixels; sets the downsampling factor.
    target_radius_fraction
        Radius of the painted target disk as a fraction of the particle radius.
    patch_size, batch_size
        Training patch side (working pixels) and patches per step; ``None`` = from the backbone
        (its ``preferred_size`` and batch 2) or 192 px and 8.
    lr, weight_decay, warmup_steps
        AdamW settings; the learning rate follows a cosine from ``lr`` to ``lr / 100``.
    epochs, steps_per_epoch, patience, max_minutes
        Schedule length, early stopping patience (epochs without a better validation F1), and a
        wall-time budget for the whole run (loading and calibration included).
    val_fraction, val_mode
        Fraction of the annotated data held out for validation and calibration: a strip of each
        micrograph (``"strips"``, default: the held-out labels span every micrograph, so one
        atypical micrograph cannot set the threshold) or whole micrographs (``"micrographs"``,
        when at least 3 are annotated; they are then entirely unseen in training).
    labelled_fraction
        Fraction of the particles that are annotated (1 = all). Below 1 the positive-unlabelled
        loss is used and precision on validation data is estimated (see :mod:`.calibrate`).
    pu_loss
        With sparse labels, use the nnPU loss (default); ``False`` trains labelled-vs-unlabelled
        with balanced BCE, whose scores rank particles like the true posterior under random
        labelling (Elkan & Noto 2008), and relies on the threshold calibration alone.
    self_training
        With sparse labels, train a second network on the first one's calibrated picks plus the
        labels (dense pseudo-labels, balanced BCE); validation still uses the true labels only.
    self_training_init
        Starting weights of that second network: ``"fresh"`` (a new initialisation, so it does not
        inherit the first network's mistakes) or ``"previous"`` (the first network's weights;
        converges in fewer epochs when the time budget is tight).
    bf16
        bfloat16 autocast; ``None`` = use it when the CPU has native bf16 arithmetic.
    ema_decay
        Validate, keep and ship an exponential moving average of the trainable weights (smoother
        than the last iterate with noisy few-shot gradients); ``0`` disables it.
    mask_threshold, score_method, min_distance
        Post-processing settings stored in the card (``min_distance`` in original pixels,
        ``None`` = one particle radius).
    seed, num_threads, progress
        Reproducibility, torch CPU threads (``None`` = torch default), tqdm bar.
    """

    backbone: str = "unet"
    backbone_kwargs: dict = field(default_factory=dict)
    checkpoint: str | None = None
    target_diameter: float = 16.0
    target_radius_fraction: float = 0.5
    patch_size: int | None = None
    batch_size: int | None = None
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    epochs: int = 30
    steps_per_epoch: int = 40
    patience: int = 10
    max_minutes: float = 9.0
    val_fraction: float = 0.2
    val_mode: str = "strips"
    labelled_fraction: float = 1.0
    pu_loss: bool = True
    self_training: bool = True
    self_training_init: str = "fresh"
    bf16: bool | None = None
    mask_threshold: float = 0.5
    score_method: str = "mean_top"
    min_distance: float | None = None
    ema_decay: float = 0.99
    seed: int = 0
    num_threads: int | None = None
    progress: bool = True
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def resume_key(self) -> dict:
        """Settings that must match to resume a checkpoint."""
        d = asdict(self)
        for k in ("progress", "num_threads", "max_minutes"):
            d.pop(k)
        return d

