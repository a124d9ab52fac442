"""Settings of a 2D training run (:class:`TrainConfig`): schedule, augmentation, sparse-label handling, budget.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from cryopick.errors import CryopickError
from cryopick.picker2d.train.augment import AugmentConfig

#: Starting weights of few-shot training (:attr:`TrainConfig.init`).
INIT_MODES = ("pretrained", "random")
#: Backbones that can take the template-matching input channel (:attr:`TrainConfig.template_prior`).
TEMPLATE_BACKBONES = ("unet", "unet-small")


def check_number(owner, name: str, low: float, high: float = math.inf, *, integer: bool = False,
                 open_low: bool = False, open_high: bool = False, optional: bool = False) -> None:
    """Raise :class:`CryopickError` naming the setting ``owner.name`` (and its ``--option``) unless it is a
    finite number (a whole one when ``integer``) in the range ``low .. high`` (ends excluded when
    ``open_low`` / ``open_high``); ``None`` passes when ``optional``."""
    value = getattr(owner, name)
    if value is None and optional:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and integer:
        ok = float(value).is_integer()
    if ok:
        ok = (value > low if open_low else value >= low) and (value < high if open_high else value <= high)
    if not ok:
        lo = f"> {low:g}" if open_low else f">= {low:g}"
        hi = "" if high == math.inf else (f" and < {high:g}" if open_high else f" and <= {high:g}")
        rule = ("a whole number " if integer else "a finite number ") + lo + hi
        raise CryopickError(f"{name} (--{name.replace('_', '-')}) must be {rule}, got {value!r}")



def check_shared_numbers(owner) -> None:
    """The settings few-shot training (:class:`TrainConfig`) and pretraining share, checked by one rule
    each (:func:`check_number`): seed, warm-up, threads, optimiser, target painting, weight average."""
    check_number(owner, "seed", 0, integer=True)
    check_number(owner, "warmup_steps", 0, integer=True)
    check_number(owner, "num_threads", 1, integer=True, optional=True)
    check_number(owner, "lr", 0, open_low=True)
    check_number(owner, "weight_decay", 0)
    check_number(owner, "target_diameter", 4)
    check_number(owner, "target_radius_fraction", 0, 1, open_low=True)
    check_number(owner, "ema_decay", 0, 1, open_high=True)

@dataclass
class TrainConfig:
    """Training settings (all recorded in the model card).

    Attributes
    ----------
    backbone, backbone_kwargs, checkpoint
        Model name in the registry, its keyword arguments, and base weights for it (e.g. SAM2).
    init
        Starting weights: ``"pretrained"`` starts the default ``unet`` (default width and depth, no
        ``checkpoint``) from the weights shipped in the package, pretrained on simulated micrographs
        at the working scale (``cryopick/weights/unet2d_pretrained.md``); other backbones have no
        shipped weights and start as built. ``"random"``: a fresh initialisation (the default
        before the pretrained weights existed). What was used is recorded in the card
        (``training["init"]``). Leave-one-out F1 of both: ``benchmarks/fewshot_loo.md``.
    target_diameter
        Particle diameter in working pixels; sets the downsampling factor.
    target_radius_fraction
        Radius of the painted target disk as a fraction of the particle radius.
    patch_size, batch_size
        Training patch side (working pixels) and patches per step; ``None`` = from the backbone
        (its ``preferred_size`` and batch 2) or 192 px and 8.
    lr, weight_decay, warmup_steps
        AdamW settings; the learning rate follows a cosine from ``lr`` to ``lr / 100``.
    epochs, steps_per_epoch, patience
        Schedule length and early stopping patience (epochs without a better validation F1).
    max_minutes, min_epochs
        Time budget of the run in minutes (``None``: none), counted by
        :class:`cryopick.training.BudgetClock` (wall time, less the share of the cores other processes
        took: load stretches a run instead of cutting its epochs), shared by the stages; it never stops a stage before ``min_epochs``
        epochs (or ``epochs``, when fewer). See :mod:`.budget`.
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
        With sparse labels, or with an unlabelled pool (``unlabelled_max``), train a second network
        on the first one's calibrated picks plus the labels (dense pseudo-labels, balanced BCE);
        validation still uses the true labels only.
    self_training_init
        Starting weights of that second network: ``"fresh"`` (a new initialisation, so it does not
        inherit the first network's mistakes) or ``"previous"`` (the first network's weights;
        converges in fewer epochs when the time budget is tight).
    unlabelled_max
        Largest unlabelled pool: micrographs of the data set without annotation (those given to
        training without coordinates, and any given as ``unlabelled``) used for self-training; when
        more are given, this many are chosen, spread over the sorted list (deterministic for a
        ``seed``). ``0`` (the default) uses none: on the leave-one-out benchmark the pool gave no
        measured gain (mean F1 +0.0006) for twice the CPU time, and a binding time budget is shared
        by the two stages. With fully annotated micrographs and a pool, the first network
        (trained and calibrated as without one) picks the pool micrographs; its picks above the
        calibrated threshold become their labels, and a second network (``self_training_init``) is
        trained on the annotated plus pseudo-labelled micrographs (the pool gives at most half of
        the patches), validated and calibrated on the true labels only. The stage with the better
        validation F1 is shipped (``card.training["unlabelled_pool"]`` says which, with the pool's
        names and pseudo-label counts). Sparse labels: the pool joins the second stage as today.
        The pool is never held out for validation, never a negative. Leave-one-out F1 with and
        without it: ``benchmarks/fewshot_loo.md``.
    unlabelled_ignore_margin
        Picks on pool micrographs scoring within this margin below the calibrated threshold are
        uncertain: the pixels around them are left out of the second stage's loss instead of being
        taught as background (``0``: none are).
    template_prior
        Give the ``unet`` backbones a second input channel: the template-matching response of the image
        to the rotationally aligned average of the annotated training particles
        (:mod:`cryopick.models.template_prior`, :mod:`.template`), a protein-specific prior from the
        first step. The template travels with the weights; picking needs no extra input. Pretrained
        weights load with the new channel's weights at zero. Off by default: on the leave-one-out
        benchmark it gave no gain from the shipped weights (mean F1 −0.0015, 2 seeds) and lost when the
        network was pretrained or trained from scratch with it (−0.010, −0.004); see
        ``benchmarks/fewshot_loo.md``.
    bf16
        bfloat16 autocast; ``None`` = use it when the CPU has native bf16 arithmetic.
    ema_decay
        Validate, keep and ship an exponential moving average of the trainable weights (smoother
        than the last iterate with noisy few-shot gradients); ``0`` disables it.
    mask_threshold, score_method, min_distance
        Post-processing settings stored in the card (``min_distance`` in original pixels,
        ``None`` = one particle radius).
    seed, num_threads, progress
        Reproducibility, torch CPU threads (``None``: one per free core, re-checked every epoch;
        see :mod:`cryopick.runtime`), tqdm bar.
    """

    backbone: str = "unet"
    backbone_kwargs: dict = field(default_factory=dict)
    checkpoint: str | None = None
    init: str = "pretrained"
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
    max_minutes: float | None = 9.0
    min_epochs: int = 5
    val_fraction: float = 0.2
    val_mode: str = "strips"
    labelled_fraction: float = 1.0
    pu_loss: bool = True
    self_training: bool = True
    self_training_init: str = "fresh"
    unlabelled_max: int = 0
    unlabelled_ignore_margin: float = 0.0
    template_prior: bool = False
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
        """Settings that must match to resume a checkpoint (the budget, threads and display may change)."""
        d = asdict(self)
        for k in ("progress", "num_threads", "max_minutes", "min_epochs"):
            d.pop(k)
        return d

    def validate(self) -> "TrainConfig":
        """Raise :class:`CryopickError` naming the option when a setting is out of range; returns self."""
        def bad(name: str, rule: str) -> CryopickError:
            return CryopickError(f"{name} (--{name.replace('_', '-')}) must be {rule}, got {getattr(self, name)!r}")

        check_shared_numbers(self)
        for name in ("epochs", "steps_per_epoch", "patience", "min_epochs"):
            check_number(self, name, 1, integer=True)
        check_number(self, "batch_size", 1, integer=True, optional=True)
        check_number(self, "patch_size", 16, integer=True, optional=True)
        check_number(self, "max_minutes", 0, open_low=True, optional=True)
        check_number(self, "val_fraction", 0, 1, open_high=True)
        check_number(self, "labelled_fraction", 0, 1, open_low=True)
        check_number(self, "mask_threshold", 0, 1, open_low=True, open_high=True)
        check_number(self, "min_distance", 0, optional=True)
        check_number(self, "unlabelled_max", 0, integer=True)
        check_number(self, "unlabelled_ignore_margin", 0, 1)
        if self.val_mode not in ("strips", "micrographs"):
            raise bad("val_mode", "'strips' or 'micrographs'")
        if self.init not in INIT_MODES:
            raise bad("init", " or ".join(repr(m) for m in INIT_MODES))
        if self.self_training_init not in ("fresh", "previous"):
            raise bad("self_training_init", "'fresh' or 'previous'")
        if not isinstance(self.template_prior, bool):
            raise bad("template_prior", "True or False")
        if self.template_prior and self.backbone not in TEMPLATE_BACKBONES:
            raise CryopickError(f"template_prior (--template-prior) needs a unet backbone ({', '.join(TEMPLATE_BACKBONES)}), "
                                f"not {self.backbone!r}; leave --template-prior out or use --backbone unet")
        return self


def initial_weights(model, config: TrainConfig) -> dict:
    """Load the starting weights ``config.init`` asks for into ``model`` (built from the registry);
    returns what was used, for the card."""
    if config.init == "random":
        return {"init": "random"}
    from cryopick.models.unet2d import PRETRAINED_2D, has_pretrained_2d, load_pretrained_2d

    if config.checkpoint or config.backbone != "unet" or not has_pretrained_2d(model):
        if config.backbone == "unet" and not config.checkpoint and not PRETRAINED_2D.is_file():
            import warnings

            why = f"{PRETRAINED_2D.name} is missing from the package"
            warnings.warn(f"--init pretrained: {why}; training starts from random weights", stacklevel=3)
        else:
            why = f"no shipped pretrained weights for backbone {config.backbone!r} with these settings"
        return {"init": "random", "note": why}
    return {"init": "pretrained", **load_pretrained_2d(model)}
