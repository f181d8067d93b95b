"""Training configuration: one validated dataclass that also takes the seed's ``modelConfig``.

:class:`TrainConfig` accepts the ``modelConfig`` dictionary of seed 000 verbatim (its keys, with
their exact spelling, e.g. ``T``, ``beta_1``, ``sampledImgName``; its values are the defaults),
plus diffkit's own fields. Every field is checked for type and range when the object is made
(``__post_init__``); every mistake raises a one-line :class:`~diffkit.errors.DiffkitError`
that names the value and what is allowed.

Loaders: :meth:`TrainConfig.from_dict`, :meth:`TrainConfig.from_file` (``.json``, ``.toml``,
``.yaml``/``.yml``), :meth:`TrainConfig.to_dict` / :meth:`TrainConfig.to_file` (round trip),
:func:`apply_overrides` for CLI ``key=value`` strings, :func:`resolve_device`.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

from .errors import DiffkitError, check_choice, check_range

SCHEDULES = ("linear", "cosine", "scaled_linear", "sigmoid", "flow", "edm")  # = schedule.SCHEDULE_NAMES
# diffusers' names: eps / x0 / v / u; "edm": EDM's preconditioned F (Karras et al. 2022, Table 1; docs/edm.md)
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction", "flow_prediction", "edm")
LOSSES = ("simple", "hybrid", "vlb")
FIXED_VARIANCES = ("fixed_small", "fixed_large")  # sigma_t^2 = beta-tilde_t or beta_t (DDPM Sec. 3.2)
TIMESTEP_SAMPLERS = ("uniform", "loss-aware", "logit-normal")  # logit-normal: flow matching's (SD3 eq. 19)
LR_SCHEDULES = ("warmup-cosine", "warmup-constant")
MIXED_PRECISION = ("no", "bf16", "fp16")
MEMORY_FORMATS = ("auto", "channels_last", "contiguous")  # diffkit.models.layers.resolve_memory_format
STATES = ("train", "eval")
OBJECTIVES = ("diffusion", "consistency-distillation", "consistency-training")  # = diffkit.consistency.OBJECTIVES
# the end-of-run sample grid where a config leaves sampler / sample_steps out (or None), by objective
# (objective_sampling): DDIM in 50 steps (DDIM Table 1); a consistency model: the consistency sampler in 4
DIFFUSION_SAMPLING = {"sampler": "ddim", "sample_steps": 50}
CONSISTENCY_SAMPLING = {"sampler": "consistency", "sample_steps": 4}
CONSISTENCY_DISTANCES = ("pseudo-huber", "l2")  # = diffkit.consistency.DISTANCES
CONSISTENCY_CURRICULA = ("fixed", "cm", "ict")  # = diffkit.consistency_curricula.CURRICULA
EDM_SIGMA_DATA = 0.5  # EDM's sigma_data (Karras et al. 2022, Table 1): the Denoiser's default for an edm network
CONSISTENCY_SIGMA_DATA = 0.5  # the boundary condition's sigma_data and timestep scaling (LCM, diffusers' LCMScheduler)
CONSISTENCY_TIMESTEP_SCALING = 10.0
NETWORKS = ("unet", "dit")  # the image network: the DDPM/ADM U-Net, or a DiT (diffkit.models.dit)
DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10", "folder", "sines", "series")  # = data.DATASET_NAMES
SERIES_DATASETS = ("sines", "series")  # = diffkit.timeseries.SERIES_DATASETS: the data set implies a 1-D U-Net
# the fields that shape the network, its schedule and what it predicts: a fine-tuned run (diffkit train
# --init-from) takes them from its source checkpoint (docs/fine_tuning.md); the others are training's
NETWORK_FIELDS = ("T", "beta_1", "beta_T", "schedule", "flow_shift", "zero_terminal_snr", "prediction_type",
                  "learned_variance", "edm_sigma_min", "edm_sigma_max", "edm_sigma_data",
                  "channel", "channel_mult", "attn", "num_res_blocks", "img_size", "in_channels", "scale_shift_norm",
                  "num_heads", "conditional", "num_classes", "guidance_embedding_dim", "autoencoder",
                  "text_conditioning", "context_dim", "text_width", "text_layers", "text_heads", "max_prompt_tokens",
                  "text_pooled", "super_res_from", "super_res_noise", "seq_length", "network", "patch_size",
                  "num_layers", "attention_head_dim")
_DEVICE_RE = re.compile(r"(auto|cpu|mps|cuda(:[0-9]+)?)")


@dataclass
class TrainConfig:
    """Everything a training run needs. Field groups and where their defaults come from:

    **Seed 000 ``modelConfig``** (exact names and values of the seed; the U-Net and schedule are
    those of DDPM, Ho et al. 2020, Sec. 4 / App. B: T = 1000, betas 1e-4 .. 0.02, channel 128,
    dropout 0.1-0.3, gradient clip 1; DDPM puts attention at 16x16, while the seed's ``attn: [2]`` at
    ``img_size`` 32 is the 8x8 level): ``state`` ("train"|"eval"),
    ``epoch``, ``batch_size``, ``T``, ``channel``, ``channel_mult``, ``attn`` (level indices into
    ``channel_mult`` with self-attention), ``num_res_blocks``, ``dropout``, ``lr``,
    ``multiplier`` (peak lr = ``lr * multiplier`` after warm-up, as the seed's
    GradualWarmupScheduler), ``beta_1``, ``beta_T``, ``img_size``, ``grad_clip`` (max global
    gradient norm; None = off), ``device`` (default "auto" instead of the seed's "cuda:0",
    which the seed dict may still pass), ``training_load_weight``, ``save_weight_dir``,
    ``test_load_weight``, ``sampled_dir``, ``sampledNoisyImgName``, ``sampledImgName``, ``nrow``.

    **diffkit's fields**: ``schedule`` (DDPM linear; cosine of Improved DDPM, Nichol & Dhariwal
    2021 eq. 17), ``zero_terminal_snr`` (Lin et al. 2024), ``prediction_type`` (eps as DDPM),
    ``learned_variance`` / ``loss='hybrid'`` / ``hybrid_lambda=0.001`` (Improved DDPM Sec. 3.1),
    ``loss='vlb'`` (the bound alone, DDPM eq. 5) with a learned variance or with
    ``fixed_variance`` (beta-tilde or beta: DDPM Table 2's "L, fixed isotropic Sigma"),
    ``timestep_sampler`` ("loss-aware" = Improved DDPM Sec. 3.3), ``min_snr_gamma`` (Hang et al.
    2023, gamma 5 suggested) or ``p2_gamma`` / ``p2_k`` (P2, Choi et al. 2022 eq. 8; eps only),
    ``offset_noise`` (0 = off), ``input_perturbation`` (Ning et al. 2023 Alg. 1; 0 = off),
    flow matching (docs/flow_matching.md): ``prediction_type='flow_prediction'`` with
    ``schedule='flow'``, ``flow_shift`` (SD3 eq. 23), ``timestep_sampler='logit-normal'`` with
    ``logit_mean`` / ``logit_std`` (SD3 eq. 19),
    EDM (docs/edm.md; Karras et al. 2022, Table 1): ``prediction_type='edm'`` with ``schedule='edm'``,
    ``edm_sigma_min`` / ``edm_sigma_max`` (the schedule's range, 0.002 .. 80), ``edm_sigma_data`` (0.5),
    ``edm_p_mean`` / ``edm_p_std`` (the training density ln sigma ~ N(-1.2, 1.2^2)),
    ``ema_decay=0.9999`` (DDPM App. B) with the warm-up ``ema_warmup`` ((1 + n)/(10 + n)) or
    ``ema_power`` / ``ema_inv_gamma`` (diffusers' EMAModel use_ema_warmup),
    ``posthoc_ema`` (post-hoc EMA, Karras et al. 2024 Sec. 3: the widths sigma_rel of the power-function
    EMAs tracked, e.g. [0.05, 0.10]; None = off) with ``posthoc_ema_every`` (a snapshot every N steps and
    at the last; ``diffkit posthoc-ema`` synthesises any width from them, :mod:`diffkit.posthoc_ema`),
    ``warmup_fraction=0.1`` (the seed's warm-up of epoch // 10), ``p_uncond=0.1``
    (classifier-free guidance, Ho & Salimans 2022), ``sample_steps=50`` with ``sampler="ddim"``
    (DDIM, Song et al. 2021, Table 1: S = 50 is near DDPM quality); with a consistency objective
    ``sample_steps=4`` with ``sampler="consistency"`` (:func:`objective_sampling`: the two fields
    left out of a mapping, or None, take their objective's defaults).

    **Consistency models** (docs/consistency.md; Song et al. 2023, Luo et al. 2023, Song & Dhariwal
    2023): ``objective`` (``diffusion``, DDPM's; ``consistency-distillation`` from ``teacher``, a
    diffkit diffusion checkpoint whose weights start the student; ``consistency-training``, no
    teacher), ``consistency_skip`` (LCM's skipping step k in timesteps; None = T // 50),
    ``consistency_distance`` (``pseudo-huber``, iCT; ``l2``), ``consistency_sigma_data`` and
    ``consistency_timestep_scaling`` (the boundary condition's 0.5 and 10, LCM),
    ``consistency_guidance`` (a fixed classifier-free guidance weight w of a conditional teacher,
    seed convention; LCM's guided distillation), or ``consistency_guidance_range`` [w_min, w_max]
    (LCM Alg. 1: w uniform per example, seed convention, given to the student through its
    guidance-scale input of width ``guidance_embedding_dim``, e.g. 256, diffusers' LCM script's
    default), ``consistency_curriculum`` (``fixed``: the grid of
    ``consistency_skip``; ``cm``: CM App. C's N(k), mu(k); ``ict``: iCT's N(k), lognormal pairs and
    1/(sigma_{n+1} - sigma_n) weights; both consistency training only), ``consistency_target_ema``
    (the target network's EMA decay mu, CM Alg. 2/3; with ``cm`` its mu0; None = 0, with ``cm`` 0.9),
    ``consistency_s0`` / ``consistency_s1`` (the curricula's s0, s1; None = the paper's: cm 2, 150;
    ict 10, 1280). ``loss`` is not used by them, and
    ``timestep_sampler`` / ``min_snr_gamma`` must keep their defaults.

    **Time series** (docs/data_and_config.md): ``dataset = "sines"`` (generated, diffkit.timeseries)
    trains diffkit's 1-D U-Net (:class:`~diffkit.models.temporal.TemporalUNet`) on series (C, L): the
    data set implies the network. ``channel``, ``channel_mult``, ``num_res_blocks`` and ``dropout``
    keep their meaning (base width, width per level, blocks per level, dropout); ``in_channels`` is
    the number of channels (default 5), ``seq_length`` the steps per series (default 24, divisible by
    2**(len(channel_mult) - 1)), ``num_series`` the size of the training set (default 10000, as
    Diffusion-TS). ``learned_variance`` with ``loss='hybrid'`` or ``'vlb'`` works as for images (the
    1-D U-Net outputs [eps, v]); ``conditional`` with ``num_classes`` and ``p_uncond`` too, with the
    labels of a series file's ``label_column`` (Sines has none). The image-only fields (``img_size``,
    ``attn`` other than [], ``num_heads``, ``scale_shift_norm``, ``hflip``, ``data_dir``, memory_format
    ``channels_last``) and what the 1-D U-Net lacks (text or latent conditioning, the consistency
    objectives) are refused; ``seq_length`` / ``num_series`` are refused for images.
    ``dataset = "series"`` trains on the user's file ``data_dir`` (a .csv with a header row or a .npy
    (T, F); :mod:`diffkit.series_files`): windows of ``seq_length`` rows, stride 1, min-max scaled on
    the training rows; ``test_fraction`` holds out the last rows (for ``diffkit eval``),
    ``drop_columns`` names CSV columns to leave out (e.g. "date"); ``num_series`` does not apply;
    ``label_column`` (with ``conditional``) names the CSV column of integer class labels 0..K-1, one per
    row: a window takes the label its rows share, and windows whose rows carry two labels are left out
    (:func:`diffkit.series_files.window_labels`).

    **DiT** (docs/models.md; Peebles & Xie 2023): ``network = "dit"`` trains a Diffusion Transformer
    (:class:`~diffkit.models.dit.DiT`) instead of the U-Net (``network = "unet"``, the default):
    ``patch_size`` (p, dividing ``img_size``), ``num_layers`` (blocks), ``num_heads`` (attention heads)
    and ``attention_head_dim`` (their width; the model width is num_heads * attention_head_dim, a multiple
    of 4), as diffusers' ``DiTTransformer2DModel``. ``learned_variance`` (with ``loss='hybrid'``, DiT's
    choice), ``conditional`` / ``num_classes`` / ``p_uncond`` work as for the U-Net. The U-Net's fields
    (``channel``, ``channel_mult``, ``attn``, ``num_res_blocks``, ``scale_shift_norm``) are refused away
    from their defaults, and so is what the DiT does not have yet (text, super-resolution,
    the consistency objectives, LoRA); with an ``autoencoder`` it runs on the latents as DiT does (``patch_size``
    then divides the latent size); ``dropout`` is not used (DiT has none): values other than 0 and the
    default 0.15 (which cannot be told from an unset one) are refused. The DiT's fields are refused with the U-Net.

    **Latent diffusion and text** (docs/latent.md; Rombach et al. 2022): ``autoencoder`` (path
    of a ``diffkit train-autoencoder`` checkpoint: the U-Net runs on its scaled latents),
    ``text_conditioning`` (captions from the labels through a jointly trained text encoder;
    ``p_uncond`` drops them to ""), ``context_dim``, ``text_width``, ``text_layers``,
    ``text_heads``, ``max_prompt_tokens``, ``text_pooled`` (also add the pooled text embedding
    to the timestep embedding, Imagen Sec. 2.5; ``UNetConfig.context_pooled``).

    **Super-resolution** (docs/super_resolution.md; improved-diffusion's ``SuperResModel``, SR3):
    ``super_res_from`` (None, or a side S with 1 < S < img_size dividing img_size) trains an upscaler
    S x S -> img_size x img_size: each training image is area-downsampled to S x S and the U-Net
    (``UNetConfig.low_res_size``) takes it upsampled and concatenated to x_t. Diffusion objective,
    unconditional, pixel space only. ``super_res_noise`` K > 0 (at most T): conditioning augmentation
    (Ho et al. 2021, "Cascaded Diffusion Models", Sec. 4.1): each example's low-resolution image is
    noised to a level s uniform in 0..K with the run's schedule (:func:`diffkit.super_res.augment`)
    and the U-Net takes s as an input (``UNetConfig.low_res_noise``).

    **Fine-tuning** (docs/fine_tuning.md): ``init_from`` (set by ``diffkit train --init-from``: a
    checkpoint whose EMA weights start a new run; the :data:`NETWORK_FIELDS` come from it),
    ``lora_rank`` (LoRA, Hu et al. 2021 eq. 3: r > 0 trains rank-r adapters on the frozen network;
    needs ``init_from``), ``lora_alpha`` (None = r; the adapters' scale is alpha / r) and
    ``lora_targets`` (``attention``, ``resblock``, comma-separated; :mod:`diffkit.lora`).
    """

    # ---- seed 000 modelConfig (verbatim names and default values) ----
    state: str = "train"
    epoch: int = 200
    batch_size: int = 80
    T: int = 1000
    channel: int = 128
    channel_mult: list = field(default_factory=lambda: [1, 2, 3, 4])
    attn: list = field(default_factory=lambda: [2])
    num_res_blocks: int = 2
    dropout: float = 0.15
    lr: float = 1e-4
    multiplier: float = 2.0
    beta_1: float = 1e-4
    beta_T: float = 0.02
    img_size: int = 32
    grad_clip: Optional[float] = 1.0
    device: str = "auto"
    training_load_weight: Optional[str] = None
    save_weight_dir: str = "./Checkpoints/"
    test_load_weight: Optional[str] = "ckpt_199.pt"
    sampled_dir: str = "./SampledImgs/"
    sampledNoisyImgName: str = "NoisyNoGuidanceImgs.png"
    sampledImgName: str = "SampledNoGuidanceImgs.png"
    nrow: int = 8
    # ---- data ----
    dataset: str = "digits"
    data_dir: Optional[str] = None
    in_channels: Optional[int] = None
    hflip: bool = False
    seq_length: int = 24  # time series only (dataset "sines")
    num_series: int = 10000  # time series only
    test_fraction: float = 0.0  # dataset "series": the last fraction of the file's rows, held out
    drop_columns: str = ""  # dataset "series": CSV columns to leave out, comma-separated (e.g. "date")
    label_column: str = ""  # dataset "series" with conditional: the CSV column of class labels 0..K-1
    num_workers: int = 0
    # ---- diffusion and objective ----
    schedule: str = "linear"
    zero_terminal_snr: bool = False
    prediction_type: str = "epsilon"
    learned_variance: bool = False
    loss: str = "simple"
    hybrid_lambda: float = 0.001
    fixed_variance: str = "fixed_small"
    timestep_sampler: str = "uniform"
    flow_shift: float = 1.0  # schedule "flow": SD3's timestep shift (Esser et al. 2024, eq. 23); 1 = none
    logit_mean: float = 0.0  # timestep_sampler "logit-normal": SD3 eq. 19's m and s
    logit_std: float = 1.0
    edm_sigma_min: float = 0.002  # schedule "edm": EDM's sigma range (Karras et al. 2022, Table 1)
    edm_sigma_max: float = 80.0
    edm_sigma_data: float = EDM_SIGMA_DATA  # prediction_type "edm": the preconditioning's sigma_data
    edm_p_mean: float = -1.2  # prediction_type "edm": training sigma with ln sigma ~ N(P_mean, P_std^2)
    edm_p_std: float = 1.2
    min_snr_gamma: Optional[float] = None
    p2_gamma: Optional[float] = None  # P2 weighting (Choi et al. 2022, eq. 8); None = off
    p2_k: float = 1.0
    offset_noise: float = 0.0
    input_perturbation: float = 0.0  # Ning et al. 2023 (Alg. 1): x_t from eps + gamma xi; 0 = off
    # ---- consistency models (docs/consistency.md) ----
    objective: str = "diffusion"
    teacher: Optional[str] = None
    consistency_skip: Optional[int] = None
    consistency_distance: str = "pseudo-huber"
    consistency_sigma_data: float = CONSISTENCY_SIGMA_DATA
    consistency_timestep_scaling: float = CONSISTENCY_TIMESTEP_SCALING
    consistency_guidance: float = 0.0
    consistency_guidance_range: Optional[list] = None  # LCM's w-conditioning: [w_min, w_max], seed convention
    guidance_embedding_dim: int = 0  # the student's guidance-scale input (UNetConfig.guidance_embedding_dim)
    consistency_curriculum: str = "fixed"
    consistency_target_ema: Optional[float] = None
    consistency_s0: Optional[int] = None
    consistency_s1: Optional[int] = None
    # ---- conditioning ----
    conditional: bool = False
    num_classes: Optional[int] = None
    p_uncond: float = 0.1
    # ---- latent diffusion and text conditioning (docs/latent.md) ----
    autoencoder: Optional[str] = None
    text_conditioning: bool = False
    context_dim: int = 64
    text_width: int = 64
    text_layers: int = 2
    text_heads: int = 2
    max_prompt_tokens: int = 16
    text_pooled: bool = True
    # ---- super-resolution (docs/super_resolution.md) ----
    super_res_from: Optional[int] = None  # the low-resolution side: train an upscaler from it to img_size
    super_res_noise: int = 0  # conditioning augmentation: the largest noise level (timesteps) of the low-res input
    # ---- model extras ----
    scale_shift_norm: bool = False
    num_heads: int = 1
    # ---- DiT (docs/models.md): network "dit" ----
    network: str = "unet"
    patch_size: int = 2
    num_layers: int = 12  # DiT-S/B (DiT Table 1)
    attention_head_dim: int = 64  # DiT's, every size (Table 1)
    # ---- optimisation ----
    ema_decay: float = 0.9999
    ema_warmup: bool = False
    ema_power: Optional[float] = None  # diffusers EMAModel's warm-up 1 - (1 + n/inv_gamma)^-power; None = off
    ema_inv_gamma: float = 1.0
    posthoc_ema: Optional[list] = None  # post-hoc EMA (EDM2 Sec. 3): sigma_rel of each tracked power EMA; None = off
    posthoc_ema_every: int = 1000  # post-hoc EMA: a snapshot every this many steps (and at the last)
    weight_decay: float = 0.0
    warmup_fraction: float = 0.1
    lr_schedule: str = "warmup-cosine"
    grad_accum: int = 1
    mixed_precision: str = "no"
    compile: bool = False
    memory_format: str = "auto"
    deterministic: bool = False
    seed: int = 0
    max_steps: Optional[int] = None
    # ---- checkpoints, logging, samples ----
    save_every_epochs: int = 1
    keep_last: int = 3
    log_every: int = 50
    sample_steps: Optional[int] = None  # None: the objective's (objective_sampling)
    sampler: Optional[str] = None  # None: the objective's (objective_sampling)
    # ---- fine-tuning (docs/fine_tuning.md) ----
    init_from: Optional[str] = None  # diffkit train --init-from: a checkpoint whose (EMA) weights start the run
    lora_rank: int = 0  # LoRA (Hu et al. 2021, eq. 3) rank r; 0 = off (every weight trains)
    lora_alpha: Optional[float] = None  # LoRA's alpha (scale alpha / r); None = lora_rank
    lora_targets: str = "attention"  # comma-separated: attention, resblock (diffkit.lora.LORA_TARGETS)

    def __post_init__(self):
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> "TrainConfig":
        """Coerce (int -> float, tuple -> list) and check every field and cross-field rule."""
        for f in dataclasses.fields(self):
            setattr(self, f.name, _check_type(f.name, getattr(self, f.name), _FIELD_TYPES[f.name]))
        self.label_column = self.label_column.strip()  # as drop_columns' names (parse_columns)
        for name, value in objective_sampling(self.objective).items():  # the objective's, where not given
            if getattr(self, name) is None:
                setattr(self, name, value)
        for name, (low, high, low_incl, high_incl) in _RANGES.items():
            value = getattr(self, name)
            if value is not None:
                check_range(name, value, low, high, integer=_FIELD_TYPES[name][0] is int,
                            low_inclusive=low_incl, high_inclusive=high_incl)
        for name, allowed in _CHOICES.items():
            check_choice(name, getattr(self, name), allowed)
        for name in ("save_weight_dir", "sampled_dir", "data_dir"):  # "" would quietly mean the current folder
            if getattr(self, name) == "":
                raise DiffkitError(f"{name}='' is not allowed; give a folder ('.' for the current one)")
        if self.init_from == "":
            raise DiffkitError("init_from='' is not allowed; give a diffkit checkpoint or a run's checkpoint folder")
        from .data import check_data_dir_applies
        check_data_dir_applies(self.dataset, self.data_dir)  # a stored one is dropped on load (checkpoint.as_loaded)
        if self.in_channels is not None and not self.is_series:  # images (or an autoencoder's): grey or RGB
            check_choice("in_channels", self.in_channels, (1, 3))
        if not _DEVICE_RE.fullmatch(self.device):
            raise DiffkitError(f"device={self.device!r} is not allowed; choose auto, cpu, cuda, cuda:N or mps")
        self._check_cross_fields()
        return self

    @property
    def example_noun(self) -> str:
        """What one training example is called in messages: "series" or "images"."""
        return "series" if self.is_series else "images"

    @property
    def is_series(self) -> bool:
        """True for a time-series data set (the 1-D U-Net; see the class docstring)."""
        return self.dataset in SERIES_DATASETS

    def _check_series(self) -> None:
        """A time-series run: the fields the 1-D U-Net has no use for are refused, in one line each."""
        factor = 2 ** (len(self.channel_mult) - 1)
        if self.seq_length % factor:
            raise DiffkitError(f"seq_length={self.seq_length} must be divisible by {factor} = "
                               f"2**(len(channel_mult)-1) for channel_mult={self.channel_mult!r}")
        image_only = [(name, getattr(self, name)) for name in ("img_size", "num_heads", "scale_shift_norm", "hflip",
                                                              "data_dir") if getattr(self, name) != _default(name)
                      and not (name == "data_dir" and self.dataset == "series")]
        if self.attn not in ([], _default("attn")):
            image_only.append(("attn", self.attn))
        if self.memory_format == "channels_last":
            image_only.append(("memory_format", self.memory_format))
        if image_only:
            name, value = image_only[0]
            raise DiffkitError(f"{name}={value!r} applies to images; dataset={self.dataset!r} trains the 1-D U-Net on "
                               f"series (its size: in_channels, seq_length, num_series): drop {name}")
        lacking = self._first_changed("text_conditioning", "autoencoder", "guidance_embedding_dim", "objective")
        if lacking:
            name, value = lacking
            raise DiffkitError(f"{name}={value!r} is not available for time series (dataset={self.dataset!r}): the "
                               f"1-D U-Net is trained with the diffusion objective, unconditionally or on class "
                               f"labels (conditional with a series file's label_column)")
        if self.conditional and not self.label_column:
            how = ("name the file's column of class labels with label_column=NAME" if self.dataset == "series"
                   else "dataset='sines' has no classes; train on a series file with label_column=NAME")
            raise DiffkitError(f"conditional=True needs class labels: {how}")

    def _check_series_file(self) -> None:
        """``dataset = "series"`` needs its file (data_dir); its fields are refused for the other data sets."""
        if self.dataset != "series":
            for name in ("test_fraction", "drop_columns", "label_column"):
                if getattr(self, name) != _default(name):
                    raise DiffkitError(f"{name}={getattr(self, name)!r} applies to dataset='series' (a series file); "
                                       f"dataset={self.dataset!r}: drop {name}")
            return
        if self.data_dir is None:
            raise DiffkitError("dataset='series' needs its file: --data-dir FILE.csv (a header row, numeric "
                               "columns) or FILE.npy (T, F)")
        if self.num_series != _default("num_series"):
            raise DiffkitError(f"num_series={self.num_series} applies to dataset='sines'; a series file gives "
                               f"T - seq_length + 1 windows of its training rows: drop num_series")
        if self.label_column:
            from .series_files import parse_columns
            if not self.conditional:
                raise DiffkitError(f"label_column={self.label_column!r} gives the class labels of conditional=True; "
                                   f"set conditional=true (to leave the column out unconditioned: drop_columns)")
            if self.label_column in parse_columns(self.drop_columns):
                raise DiffkitError(f"label_column={self.label_column!r} is also in drop_columns="
                                   f"{self.drop_columns!r}; the labels are left out of the series anyway: drop it "
                                   f"from drop_columns")

    def _check_cross_fields(self) -> None:
        if not self.channel_mult:
            raise DiffkitError("channel_mult=[] must list at least one level multiplier, e.g. [1, 2, 2, 2]")
        for name, values in (("channel_mult", self.channel_mult),):
            bad = [v for v in values if v < 1]
            if bad:
                raise DiffkitError(f"{name}={values!r} has {bad[0]}; every multiplier must be an integer >= 1")
        self._check_series_file()
        if self.is_series and self.network != "unet":
            raise DiffkitError(f"network={self.network!r} applies to images; dataset={self.dataset!r} trains the "
                               f"1-D U-Net on series: drop network")
        if self.is_series:
            self._check_series()
        else:
            for name in ("seq_length", "num_series"):
                if getattr(self, name) != _default(name):
                    raise DiffkitError(f"{name}={getattr(self, name)!r} applies to time series (dataset "
                                       f"{', '.join(SERIES_DATASETS)}); dataset={self.dataset!r} holds images")
            self._check_dit() if self.network == "dit" else self._check_image_network()
        if not self.beta_1 < self.beta_T:
            raise DiffkitError(f"beta_1={self.beta_1!r} must be smaller than beta_T={self.beta_T!r} "
                               f"(0 < beta_1 < beta_T < 1)")
        self._check_objective()
        self._check_fine_tuning()

    def _check_fine_tuning(self) -> None:
        """init_from fine-tunes a diffusion model; LoRA's fields (diffkit.lora): alpha and targets need
        a rank; image diffusion models only."""
        if self.init_from is not None and self.objective != "diffusion":
            raise DiffkitError(f"init_from fine-tunes with objective='diffusion'; objective={self.objective!r} "
                               f"starts from a teacher instead (diffkit distill --teacher CKPT)")
        if not self.lora_rank:
            for name in ("lora_alpha", "lora_targets"):
                if getattr(self, name) != _default(name):
                    raise DiffkitError(f"{name}={getattr(self, name)!r} belongs to LoRA; it needs lora_rank > 0 "
                                       f"(e.g. lora_rank=4), or leave {name} unset")
            return
        from .lora import parse_targets
        parse_targets(self.lora_targets)
        if self.objective != "diffusion":
            raise DiffkitError(f"lora_rank={self.lora_rank} works with objective='diffusion'; "
                               f"objective={self.objective!r}: set lora_rank=0")
        if self.init_from is None:
            raise DiffkitError(f"lora_rank={self.lora_rank} adapts a trained network: give it with --init-from CKPT "
                               f"(a new network's output layer starts at zero and, frozen, would pass no gradient "
                               f"to the adapters)")
        if self.is_series:
            raise DiffkitError(f"lora_rank={self.lora_rank}: LoRA adapts the image U-Net's attention and residual "
                               f"blocks; dataset={self.dataset!r} trains the 1-D U-Net: set lora_rank=0")

    def _check_dit(self) -> None:
        """network='dit' (diffkit.models.dit): its shape, and the U-Net's fields and the features it lacks
        refused in one line each."""
        unet_only = self._first_changed("channel", "channel_mult", "attn", "num_res_blocks", "scale_shift_norm")
        if unet_only:
            name, value = unet_only
            raise DiffkitError(f"{name}={value!r} applies to the U-Net; network='dit' is sized by patch_size, "
                               f"num_layers, num_heads and attention_head_dim: drop {name}")
        if self.img_size % self.patch_size and not self.autoencoder:  # latent: checked on the latents (training)
            raise DiffkitError(f"patch_size={self.patch_size} must divide img_size={self.img_size} (network='dit' "
                               f"cuts the image into patch_size x patch_size patches)")
        width = self.num_heads * self.attention_head_dim
        if width % 4:
            raise DiffkitError(f"num_heads * attention_head_dim = {self.num_heads} * {self.attention_head_dim} = "
                               f"{width} must be a multiple of 4 (the DiT's 2-D sin-cos position embedding)")
        if self.dropout not in (0.0, _default("dropout")):  # the default cannot be told from a user's 0.15
            raise DiffkitError(f"dropout={self.dropout!r} is not used by network='dit' (DiT's blocks have no dropout, "
                               f"Peebles & Xie 2023): drop dropout or set dropout=0")
        lacking = self._first_changed("text_conditioning", "super_res_from", "guidance_embedding_dim",
                                      "objective", "lora_rank")
        if lacking:
            name, value = lacking
            raise DiffkitError(f"{name}={value!r} is not available with network='dit' (it trains with the "
                               f"diffusion objective, in pixel or latent space, unconditional or class-conditional; "
                               f"it has no cross-attention for text): drop {name} or use network='unet'")

    def _check_image_network(self) -> None:
        dit_only = self._first_changed("patch_size", "num_layers", "attention_head_dim")
        if dit_only:
            name, value = dit_only
            raise DiffkitError(f"{name}={value!r} applies to network='dit'; this run trains the U-Net: set "
                               f"network=dit or drop {name}")
        levels = len(self.channel_mult)
        bad = [a for a in self.attn if not 0 <= a < levels]
        if bad:
            raise DiffkitError(f"attn={self.attn!r} has level {bad[0]}; levels are 0..{levels - 1} "
                               f"(indices into channel_mult={self.channel_mult!r})")
        factor = 2 ** (levels - 1)
        if self.img_size % factor:
            raise DiffkitError(f"img_size={self.img_size} must be divisible by {factor} = 2**(len(channel_mult)-1) "
                               f"for channel_mult={self.channel_mult!r}")
        for level in self.attn:
            width = self.channel * self.channel_mult[level]
            if width % self.num_heads:
                raise DiffkitError(f"num_heads={self.num_heads} must divide the {width} channels of attention "
                                   f"level {level} (channel * channel_mult[{level}])")

    def _check_objective(self) -> None:
        if self.loss == "hybrid" and not self.learned_variance:
            raise DiffkitError("loss='hybrid' needs learned_variance=True: its L_vlb term trains the variance "
                               "output (Improved DDPM, Sec. 3.1); with a fixed variance use loss='simple' or 'vlb'")
        if self.learned_variance and self.loss == "simple":
            raise DiffkitError("learned_variance=True needs loss='hybrid' or 'vlb': L_simple gives the variance "
                               "output no gradient (Improved DDPM, Sec. 3.1)")
        if self.fixed_variance != "fixed_small" and (self.loss != "vlb" or self.learned_variance):
            raise DiffkitError(f"fixed_variance={self.fixed_variance!r} is the Sigma of loss='vlb' without a learned "
                               f"variance; it has no effect with loss={self.loss!r}, learned_variance="
                               f"{self.learned_variance}: leave it 'fixed_small'")
        self._check_edm()
        check_loss_weighting(self.loss, self.prediction_type, self.min_snr_gamma, self.p2_gamma, self.p2_k)
        check_ema_warmup(self.ema_warmup, self.ema_power, self.ema_inv_gamma)
        check_posthoc_ema(self.posthoc_ema, self.posthoc_ema_every)
        if self.zero_terminal_snr and self.prediction_type == "epsilon":
            raise DiffkitError("zero_terminal_snr=True needs prediction_type 'v_prediction' or 'sample': at zero "
                               "SNR x0 cannot be recovered from an eps prediction (Lin et al. 2024, Sec. 3.2)")
        self._check_flow()
        self._check_consistency()
        if self.sample_steps > self.T:
            raise DiffkitError(f"sample_steps={self.sample_steps} exceeds T={self.T}; allowed: 1..{self.T}")
        if not self.sampler:
            raise DiffkitError("sampler='' must name a sampler, e.g. 'ddim'")
        self._check_super_res()
        if self.text_conditioning and self.conditional:
            raise DiffkitError("text_conditioning=True and conditional=True exclude each other: captions replace "
                               "the class labels; set conditional=false")
        if self.text_conditioning and self.text_width % self.text_heads:
            raise DiffkitError(f"text_heads={self.text_heads} must divide text_width={self.text_width}")
        if self.autoencoder is not None and not self.autoencoder:
            raise DiffkitError("autoencoder='' must be the path of a trained autoencoder checkpoint or None")
        if self.autoencoder and self.hflip:
            raise DiffkitError("hflip=True cannot be used with an autoencoder: the latents are encoded once at the "
                               "start, so images cannot be flipped per batch")
        for key in ("sampledImgName", "sampledNoisyImgName"):  # file names in sampled_dir, written as PNG
            name = getattr(self, key)
            if not name.lower().endswith(".png") or len(name) <= 4 or "/" in name or "\\" in name:
                raise DiffkitError(f"{key}={name!r} is not allowed; give a plain .png file name such as "
                                   f"'samples.png'")
            if self.sampledImgName == self.sampledNoisyImgName:
                raise DiffkitError(f"sampledImgName and sampledNoisyImgName are both {name!r}; give two names")

    def _check_flow(self) -> None:
        """Flow matching (docs/flow_matching.md): prediction_type 'flow_prediction' on schedule 'flow',
        trained with the velocity MSE at continuous flow times; one-line errors for what does not apply."""
        flow, path = self.prediction_type == "flow_prediction", self.schedule == "flow"
        if flow != path:
            raise DiffkitError(f"prediction_type={self.prediction_type!r} with schedule={self.schedule!r}: "
                               f"flow matching is prediction_type='flow_prediction' with schedule='flow', "
                               f"the two together")
        if self.flow_shift != 1.0 and not path:
            raise DiffkitError(f"flow_shift={self.flow_shift} shifts schedule='flow'; this run has schedule="
                               f"{self.schedule!r}: leave flow_shift=1.0")
        if self.timestep_sampler != "logit-normal":
            for name in ("logit_mean", "logit_std"):
                if getattr(self, name) != _default(name):
                    raise DiffkitError(f"{name}={getattr(self, name)} belongs to timestep_sampler='logit-normal'; "
                                       f"this run has timestep_sampler={self.timestep_sampler!r}")
        if not flow:
            if self.timestep_sampler == "logit-normal":
                raise DiffkitError("timestep_sampler='logit-normal' draws continuous flow times; it needs "
                                   "prediction_type='flow_prediction' with schedule='flow'")
            return
        fixed = (("zero_terminal_snr", False), ("loss", "simple"), ("learned_variance", False),
                 ("min_snr_gamma", None), ("p2_gamma", None), ("input_perturbation", 0.0), ("objective", "diffusion"),
                 ("super_res_from", None))
        for name, value in fixed:
            if getattr(self, name) != value:
                raise DiffkitError(f"{name}={getattr(self, name)!r} does not apply to flow matching (prediction_type="
                                   f"'flow_prediction': the velocity MSE on the flow path, which ends at zero SNR): "
                                   f"set {name}={value!r}")
        if self.timestep_sampler == "loss-aware":
            raise DiffkitError("timestep_sampler='loss-aware' keeps losses per integer timestep; flow matching draws "
                               "continuous times: use 'uniform' or 'logit-normal'")

    def _check_edm(self) -> None:
        """EDM (docs/edm.md): prediction_type 'edm' on schedule 'edm', trained with EDM's loss at
        ln sigma ~ N(edm_p_mean, edm_p_std^2); one-line errors for what does not apply."""
        edm, path = self.prediction_type == "edm", self.schedule == "edm"
        if edm != path:
            raise DiffkitError(f"prediction_type={self.prediction_type!r} with schedule={self.schedule!r}: EDM is "
                               f"prediction_type='edm' with schedule='edm', the two together")
        for name in ("edm_sigma_min", "edm_sigma_max", "edm_sigma_data", "edm_p_mean", "edm_p_std"):
            if not edm and getattr(self, name) != _default(name):
                raise DiffkitError(f"{name}={getattr(self, name)} belongs to prediction_type='edm'; this run has "
                                   f"prediction_type={self.prediction_type!r}")
        if not edm:
            return
        if self.edm_sigma_max <= self.edm_sigma_min:
            raise DiffkitError(f"edm_sigma_max={self.edm_sigma_max} must exceed edm_sigma_min={self.edm_sigma_min}")
        fixed = (("zero_terminal_snr", False), ("loss", "simple"), ("learned_variance", False),
                 ("min_snr_gamma", None), ("p2_gamma", None), ("input_perturbation", 0.0), ("objective", "diffusion"),
                 ("super_res_from", None), ("timestep_sampler", "uniform"))
        for name, value in fixed:
            if getattr(self, name) != value:
                raise DiffkitError(f"{name}={getattr(self, name)!r} does not apply to EDM (prediction_type='edm': "
                                   f"its weighted loss at ln sigma ~ N(edm_p_mean, edm_p_std^2)): set {name}={value!r}")

    def _check_super_res(self) -> None:
        """``super_res_from``: a side that divides img_size and is smaller; what it does not combine with."""
        low = self.super_res_from
        if low is None:
            if self.super_res_noise:
                raise DiffkitError(f"super_res_noise={self.super_res_noise} augments the low-resolution input of an "
                                   f"upscaler; it needs super_res_from=S")
            return
        if self.super_res_noise > self.T:
            raise DiffkitError(f"super_res_noise={self.super_res_noise} exceeds T={self.T}; allowed: 0..{self.T} "
                               f"(levels of the run's schedule)")
        if self.is_series:
            raise DiffkitError(f"super_res_from={low} applies to images; dataset={self.dataset!r} holds time series")
        if self.img_size % low or low >= self.img_size:
            raise DiffkitError(f"super_res_from={low} is not allowed with img_size={self.img_size}; give a side "
                               f"S with 1 < S < {self.img_size} that divides {self.img_size}")
        others = self._first_changed("conditional", "text_conditioning", "autoencoder", "objective",
                                     "guidance_embedding_dim")
        if others:
            name, value = others
            raise DiffkitError(f"super_res_from={low} does not combine with {name}={value!r}: an upscaler is trained "
                               f"unconditionally (but for its low-resolution input) with the diffusion objective, "
                               f"in pixel space")

    def _first_changed(self, *names: str) -> Optional[tuple]:
        """(name, value) of the first of ``names`` set away from its default, or None."""
        return next(((name, getattr(self, name)) for name in names if getattr(self, name) != _default(name)), None)

    def _check_guidance_range(self) -> None:
        """LCM's w-conditioned distillation: [w_min, w_max] (seed convention), a class-conditional
        teacher, a student with a guidance-scale input, and no fixed ``consistency_guidance``."""
        rng, dim = self.consistency_guidance_range, self.guidance_embedding_dim
        if rng is None:
            if dim:
                raise DiffkitError(f"guidance_embedding_dim={dim} is the guidance-scale input of a w-conditioned "
                                   f"consistency model; it needs consistency_guidance_range=[w_min, w_max]")
            return
        if len(rng) != 2 or not 0 <= rng[0] <= rng[1]:
            raise DiffkitError(f"consistency_guidance_range={rng!r} is not allowed; give [w_min, w_max] with "
                               f"0 <= w_min <= w_max (seed convention; LCM's [2, 14])")
        if not (self.conditional and self.objective == "consistency-distillation"):
            raise DiffkitError(f"consistency_guidance_range={rng!r} guides a class-conditional teacher; it needs "
                               f"objective='consistency-distillation' and conditional=True")
        if self.consistency_guidance:
            raise DiffkitError(f"consistency_guidance={self.consistency_guidance} and consistency_guidance_range="
                               f"{rng!r} exclude each other: give one fixed w or the range")
        if not dim:
            raise DiffkitError(f"consistency_guidance_range={rng!r} gives w to the student, which needs a "
                               f"guidance-scale input: set guidance_embedding_dim (e.g. 256)")
        if dim < 4:  # diffusers' embedding divides by dim // 2 - 1 (UNetConfig refuses it too)
            raise DiffkitError(f"guidance_embedding_dim={dim} is not allowed; give 0 (none) or at least 4 (e.g. 256)")

    def _check_consistency(self) -> None:
        self._check_guidance_range()
        if self.objective == "consistency-distillation" and not self.teacher:
            raise DiffkitError("objective='consistency-distillation' needs teacher=PATH, a diffkit diffusion "
                               "checkpoint "
                               "(diffkit distill --teacher CKPT)")
        if self.teacher is not None and self.objective != "consistency-distillation":
            raise DiffkitError(f"teacher={self.teacher!r} is used only by objective='consistency-distillation' "
                               f"(this run has objective={self.objective!r}); drop it or change the objective")
        if self.objective == "diffusion":
            changed = [name for name in ("consistency_skip", "consistency_distance", "consistency_sigma_data",
                                         "consistency_timestep_scaling", "consistency_guidance",
                                         "consistency_guidance_range", "consistency_curriculum",
                                         "consistency_target_ema", "consistency_s0", "consistency_s1")
                       if getattr(self, name) != _default(name)]
            if changed:
                raise DiffkitError(f"{changed[0]}={getattr(self, changed[0])!r} applies to the consistency objectives; "
                                   f"this run has objective='diffusion'")
            return
        from .timesteps import lcm_times
        lcm_times(self.T, self.consistency_skip)  # the one rule for the skip (1..T-1)
        for name, value in (("input_perturbation", 0.0), ("p2_gamma", None)):
            if getattr(self, name) != value:
                raise DiffkitError(f"{name}={getattr(self, name)!r} belongs to the diffusion objective's loss; "
                                   f"objective={self.objective!r} has its own: set {name}={value!r}")
        for name, value in (("timestep_sampler", "uniform"), ("min_snr_gamma", None)):
            if getattr(self, name) != value:
                raise DiffkitError(f"{name}={getattr(self, name)!r} belongs to the diffusion objective; objective="
                                   f"{self.objective!r} draws its time pairs uniformly from its own grid: set {name}="
                                   f"{value if value is None else repr(value)}")
        if self.consistency_guidance and not (self.conditional and self.objective == "consistency-distillation"):
            raise DiffkitError(f"consistency_guidance={self.consistency_guidance} guides a class-conditional teacher; "
                               f"it needs objective='consistency-distillation' and conditional=True")
        self._check_curriculum()

    def _check_curriculum(self) -> None:
        """The curricula of diffkit.consistency_curricula: one-line errors naming the value."""
        kind = self.consistency_curriculum
        if kind == "fixed":
            for name in ("consistency_s0", "consistency_s1"):
                if getattr(self, name) is not None:
                    raise DiffkitError(f"{name}={getattr(self, name)!r} belongs to consistency_curriculum 'cm' or "
                                       f"'ict'; this run has consistency_curriculum='fixed' (its grid: "
                                       f"consistency_skip)")
            return
        if self.objective != "consistency-training":
            raise DiffkitError(f"consistency_curriculum={kind!r} is a consistency-training schedule (CM App. C, iCT "
                               f"Sec. 3.4); objective={self.objective!r} uses consistency_curriculum='fixed'")
        if self.consistency_skip is not None:
            raise DiffkitError(f"consistency_skip={self.consistency_skip} sets the 'fixed' grid; "
                               f"consistency_curriculum={kind!r} grows its own grid: drop consistency_skip")
        if self.zero_terminal_snr:
            raise DiffkitError(f"consistency_curriculum={kind!r} spaces its grid in sigma up to sigma(T - 1), "
                               f"which zero_terminal_snr=True makes infinite; use zero_terminal_snr=False")
        if kind == "cm" and self.consistency_s0 is not None and self.consistency_s0 < 2:
            raise DiffkitError(f"consistency_s0={self.consistency_s0} is not allowed with consistency_curriculum='cm'; "
                               f"N(0) = s0 points need s0 >= 2 (CM: 2)")
        if kind == "ict" and self.consistency_target_ema:
            raise DiffkitError(f"consistency_target_ema={self.consistency_target_ema} is not allowed with "
                               f"consistency_curriculum='ict' (its target is stopgrad(theta), mu = 0, iCT Sec. 3.2); "
                               f"use 'cm' or 'fixed' for an EMA target")
        from .consistency_curricula import CM_S0, CM_S1, ICT_S0, ICT_S1
        s0 = self.consistency_s0 if self.consistency_s0 is not None else (CM_S0 if kind == "cm" else ICT_S0)
        s1 = self.consistency_s1 if self.consistency_s1 is not None else (CM_S1 if kind == "cm" else ICT_S1)
        if s1 < s0:
            raise DiffkitError(f"consistency_s1={s1} is below consistency_s0={s0}; the curriculum grows N from s0 "
                               f"to s1: give s1 >= s0")

    # ------------------------------------------------------------------ I/O
    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TrainConfig":
        """Build from a mapping (e.g. the seed's ``modelConfig``); unknown keys are an error."""
        return cls(**given_fields(data))

    @classmethod
    def from_file(cls, path: str | Path) -> "TrainConfig":
        """Read ``.json``, ``.toml`` (tomllib) or ``.yaml``/``.yml`` (PyYAML safe loader); a key
        given twice is refused in each."""
        return cls.from_dict(read_config_file(path))

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of all fields (lists copied); ``from_dict(cfg.to_dict()) == cfg``."""
        return dataclasses.asdict(self)

    def to_file(self, path: str | Path) -> Path:
        """Write ``.json``, ``.toml`` or ``.yaml``/``.yml``; :meth:`from_file` reads it back equal."""
        path = Path(path)
        suffix = path.suffix.lower()
        check_choice("config file type", suffix, (".json", ".toml", ".yaml", ".yml"))
        data = self.to_dict()
        if suffix == ".json":
            text = json.dumps(data, indent=2) + "\n"
        elif suffix == ".toml":
            text = _to_toml(data)
        else:
            import yaml
            text = yaml.safe_dump(data, sort_keys=False)
        path.write_text(text, encoding="utf-8")
        return path

    # ------------------------------------------------------------------ consumers
    def to_unet_kwargs(self, dataset=None) -> dict[str, Any]:
        """Keyword arguments of diffkit's U-Net (the seed's key names); for time series the
        description of the 1-D U-Net (:mod:`diffkit.models.network`).

        ``in_channels`` and ``num_classes`` left ``None`` are taken from ``dataset`` (anything
        with ``channels`` / ``num_classes``) or else from what the named data set is known to
        have; ``num_classes`` is ``None`` unless ``conditional``.
        """
        from .data import DATASET_CHANNELS, DATASET_NUM_CLASSES

        in_channels = self.in_channels or getattr(dataset, "channels", None) or DATASET_CHANNELS.get(self.dataset)
        if in_channels is None:  # dataset "series": its file decides
            raise DiffkitError(f"dataset={self.dataset!r}: the channels come from the file; pass the loaded dataset "
                               f"or set in_channels")
        num_classes = None
        if self.conditional:
            num_classes = (self.num_classes or getattr(dataset, "num_classes", None)
                           or DATASET_NUM_CLASSES.get(self.dataset))
            if num_classes is None:
                raise DiffkitError(f"conditional=True with dataset={self.dataset!r} needs num_classes "
                                   f"(or pass the loaded dataset)")
        extras = {**({"learned_variance": True} if self.learned_variance else {}),
                  **({"num_classes": num_classes} if num_classes is not None else {})}
        if self.network == "dit":  # diffkit.models.dit.DiTConfig's names (diffusers' DiTTransformer2DModel's)
            from .models.network import DIT
            return {"network": DIT, "img_size": self.img_size, "in_channels": in_channels,
                    "patch_size": self.patch_size, "num_layers": self.num_layers,
                    "num_attention_heads": self.num_heads, "attention_head_dim": self.attention_head_dim,
                    "freq_shift": 1, **extras, **self._latent_unet_kwargs(dataset)}
        if self.is_series:  # the 1-D U-Net (diffkit.models.network): TemporalUNetConfig's names, + the length
            from .models.network import TEMPORAL_UNET
            return {"network": TEMPORAL_UNET, "in_channels": in_channels, "model_channels": self.channel,
                    "channel_mult": list(self.channel_mult), "num_res_blocks": self.num_res_blocks,
                    "dropout": self.dropout, "seq_length": self.seq_length, **extras}
        return {
            "channel": self.channel, "channel_mult": list(self.channel_mult), "attn": list(self.attn),
            "num_res_blocks": self.num_res_blocks, "dropout": self.dropout, "img_size": self.img_size,
            "in_channels": in_channels, "learned_variance": self.learned_variance, "num_classes": num_classes,
            "scale_shift_norm": self.scale_shift_norm, "num_heads": self.num_heads,
            **({"guidance_embedding_dim": self.guidance_embedding_dim} if self.guidance_embedding_dim else {}),
            **({"low_res_size": self.super_res_from} if self.super_res_from is not None else {}),
            **({"low_res_noise": True} if self.super_res_noise else {}),
            **self._latent_unet_kwargs(dataset),
        }

    def _latent_unet_kwargs(self, dataset) -> dict[str, Any]:
        """Cross-attention width with text conditioning; with an autoencoder, the network (U-Net or DiT)
        runs on the latents: channels and size of the encoded data set (``dataset`` a latent data set)."""
        out: dict[str, Any] = ({"context_dim": self.context_dim, "context_pooled": self.text_pooled}
                               if self.text_conditioning else {})
        if self.autoencoder and dataset is not None:
            out.update(in_channels=dataset.channels, img_size=dataset.img_size)
        return out

    def seed_resume_checkpoint(self) -> Optional[str]:
        """``training_load_weight`` as a path (relative to the working directory, as ``--resume``
        takes it and earlier diffkit versions read it) when that file exists; otherwise as seed
        000's code reads it, a file in ``save_weight_dir`` (its ``Train`` joins the two)."""
        name = self.training_load_weight
        if not name or Path(name).is_absolute() or Path(name).exists():
            return name
        in_save_dir = Path(self.save_weight_dir) / name
        return str(in_save_dir) if in_save_dir.is_file() else name

    def test_checkpoint(self) -> Path:
        """The checkpoint the seed's ``state: "eval"`` mode loads: ``test_load_weight`` in
        ``save_weight_dir`` (seed 000 names the bare file ``ckpt_199.pt`` beside ``./Checkpoints/``;
        an absolute ``test_load_weight`` is taken as it is). A one-line error when it is unset or
        the file does not exist."""
        if not self.test_load_weight:
            raise DiffkitError("the config's test_load_weight is not set; give --checkpoint, or set "
                               "test_load_weight to a checkpoint file in save_weight_dir")
        path = Path(self.save_weight_dir) / self.test_load_weight
        if not path.exists():  # a checkpoint file, or a run's checkpoint folder
            raise DiffkitError(f"test_load_weight {str(path)!r} does not exist (save_weight_dir "
                               f"{self.save_weight_dir!r} + test_load_weight {self.test_load_weight!r}); give "
                               f"--checkpoint or set test_load_weight to an existing checkpoint")
        return path

    def dataset_kwargs(self, train: bool = True) -> dict[str, Any]:
        """Keyword arguments of :func:`diffkit.data.load_dataset` for this config."""
        if self.dataset == "series":
            return {"name": self.dataset, "data_dir": self.data_dir, "train": train, "channels": self.in_channels,
                    "seq_length": self.seq_length, "test_fraction": self.test_fraction,
                    "drop_columns": self.drop_columns, "label_column": self.label_column}
        if self.is_series:
            return {"name": self.dataset, "train": train, "channels": self.in_channels,
                    "num_series": self.num_series, "seq_length": self.seq_length}
        return {"name": self.dataset, "data_dir": self.data_dir, "img_size": self.img_size, "train": train,
                "hflip": self.hflip, "channels": self.in_channels}


def check_loss_weighting(loss_type: str, prediction_type: str, min_snr_gamma: Optional[float],
                         p2_gamma: Optional[float], p2_k: float = 1.0, loss_name: str = "loss") -> None:
    """The rules of the L_simple weightings, one line each (TrainConfig and training_losses);
    ``loss_name``: what the caller calls ``loss_type`` (TrainConfig's ``loss``), for the messages."""
    if min_snr_gamma is not None:
        check_range("min_snr_gamma", min_snr_gamma, 0.0, None, low_inclusive=False)
    check_range("p2_k", p2_k, 0.0, None, low_inclusive=False)
    if p2_gamma is None:
        if p2_k != 1.0:
            raise DiffkitError(f"p2_k={p2_k} is the k of P2 weighting; it needs p2_gamma (e.g. 1.0), or leave "
                               f"p2_k=1.0")
    else:
        check_range("p2_gamma", p2_gamma, 0.0, None, low_inclusive=False)
        if min_snr_gamma is not None:
            raise DiffkitError(f"p2_gamma={p2_gamma} and min_snr_gamma={min_snr_gamma} exclude each other: both "
                               f"weight L_simple by the SNR; give one of them")
        if prediction_type != "epsilon":
            raise DiffkitError(f"p2_gamma={p2_gamma} weights the eps loss (Choi et al. 2022, eq. 8); this run has "
                               f"prediction_type={prediction_type!r}: use 'epsilon', or min_snr_gamma for x0 / v")
    for name, value in (("min_snr_gamma", min_snr_gamma), ("p2_gamma", p2_gamma)):
        if value is not None and loss_type == "vlb":
            raise DiffkitError(f"{name}={value} weights L_simple, which {loss_name}='vlb' does not contain; use "
                               f"{loss_name}='simple' or 'hybrid', or {name}=None")


def check_ema_warmup(warmup: bool, power: Optional[float], inv_gamma: float = 1.0) -> None:
    """The rules of the EMA warm-ups, one line each (TrainConfig and training.EMA)."""
    if power is None and inv_gamma != 1.0:
        raise DiffkitError(f"ema_inv_gamma={inv_gamma} belongs to the power warm-up of the EMA; it needs "
                           f"ema_power (e.g. 0.75), or leave ema_inv_gamma=1.0")
    if power is not None and warmup:
        raise DiffkitError(f"ema_power={power} and ema_warmup=True are two EMA warm-ups that exclude each other: "
                           f"(1 + n/ema_inv_gamma)^-ema_power or (1 + n)/(10 + n); give one")


def check_posthoc_ema(sigma_rels: Optional[list], every: int) -> None:
    """Post-hoc EMA's fields: distinct widths each in (0, 1/sqrt(12)) (EDM2 eq. 3 with gamma > 0), at
    least one; ``posthoc_ema_every`` only with them."""
    if sigma_rels is None:
        if every != _default("posthoc_ema_every"):
            raise DiffkitError(f"posthoc_ema_every={every} sets the snapshot interval of post-hoc EMA; it needs "
                               f"posthoc_ema (e.g. posthoc_ema=0.05,0.10)")
        return
    from .posthoc_ema import check_sigma_rel
    if not sigma_rels:
        raise DiffkitError("posthoc_ema=[] tracks nothing; give the widths sigma_rel, e.g. posthoc_ema=0.05,0.10 "
                           "(EDM2's), or none to turn it off")
    for value in sigma_rels:
        check_sigma_rel(value, "posthoc_ema")
    if len(set(sigma_rels)) != len(sigma_rels):
        raise DiffkitError(f"posthoc_ema={sigma_rels} names a width twice; give distinct widths")


# ---------------------------------------------------------------------- field rules
_FIELD_TYPES: dict[str, Any] = {}  # filled below from the annotations

# the most diffusion steps T takes (the config key, train-classifier --T): 25x Improved DDPM's T = 4000. A noise
# schedule keeps about 80 bytes a step (float64 tables and a Python list of log alpha): T = 10^9 needed about 80 GB
MAX_TIMESTEPS = 100_000

# name: (low, high, low_inclusive, high_inclusive); None = unbounded
_RANGES = {
    "epoch": (1, None, True, True), "batch_size": (1, None, True, True), "T": (1, MAX_TIMESTEPS, True, True),
    "channel": (2, None, True, True), "num_res_blocks": (1, None, True, True),
    "dropout": (0.0, 1.0, True, False), "lr": (0.0, 1.0, False, True), "multiplier": (1.0, 100.0, True, True),
    "beta_1": (0.0, 1.0, False, False), "beta_T": (0.0, 1.0, False, False), "img_size": (1, None, True, True),
    "grad_clip": (0.0, None, False, True), "nrow": (1, None, True, True), "in_channels": (1, None, True, True),
    "num_workers": (0, 256, True, True), "hybrid_lambda": (0.0, None, False, True),
    "min_snr_gamma": (0.0, None, False, True), "offset_noise": (0.0, None, True, True),
    "p2_gamma": (0.0, None, False, True), "p2_k": (0.0, None, False, True),
    "input_perturbation": (0.0, 1.0, True, True), "ema_power": (0.0, None, False, True),
    "ema_inv_gamma": (0.0, None, False, True), "posthoc_ema_every": (1, None, True, True),
    "flow_shift": (0.0, None, False, True), "logit_std": (0.0, None, False, True),
    "edm_sigma_min": (0.0, None, False, True), "edm_sigma_max": (0.0, None, False, True),
    "edm_sigma_data": (0.0, None, False, True), "edm_p_std": (0.0, None, False, True),
    "num_classes": (1, None, True, True), "p_uncond": (0.0, 1.0, True, True), "num_heads": (1, None, True, True),
    "ema_decay": (0.0, 1.0, True, False), "weight_decay": (0.0, None, True, True),
    "warmup_fraction": (0.0, 1.0, True, False), "grad_accum": (1, None, True, True),
    "seed": (0, 2**63 - 1, True, True), "max_steps": (1, None, True, True),
    "save_every_epochs": (1, None, True, True), "keep_last": (1, None, True, True),
    "seq_length": (2, None, True, True), "num_series": (2, None, True, True), "test_fraction": (0.0, 1.0, True, False),
    "log_every": (1, None, True, True), "sample_steps": (1, None, True, True),
    "context_dim": (1, None, True, True), "text_width": (1, None, True, True), "text_layers": (0, None, True, True),
    "text_heads": (1, None, True, True), "max_prompt_tokens": (3, 4096, True, True),
    "consistency_skip": (1, None, True, True), "consistency_sigma_data": (0.0, None, False, True),
    "consistency_timestep_scaling": (0.0, None, False, True), "consistency_guidance": (0.0, None, True, True),
    "guidance_embedding_dim": (0, None, True, True), "super_res_from": (2, None, True, True),
    "super_res_noise": (0, None, True, True),
    "consistency_target_ema": (0.0, 1.0, True, False), "consistency_s0": (1, None, True, True),
    "consistency_s1": (1, None, True, True),
    "lora_rank": (0, None, True, True), "lora_alpha": (0.0, None, False, True),
    "patch_size": (1, None, True, True), "num_layers": (1, None, True, True),
    "attention_head_dim": (1, None, True, True),
}
_FLOAT_LISTS = ("consistency_guidance_range", "posthoc_ema")  # list fields of numbers (the others hold integers)
_CHOICES = {
    "state": STATES, "schedule": SCHEDULES, "prediction_type": PREDICTION_TYPES, "loss": LOSSES,
    "fixed_variance": FIXED_VARIANCES,
    "timestep_sampler": TIMESTEP_SAMPLERS, "lr_schedule": LR_SCHEDULES, "mixed_precision": MIXED_PRECISION,
    "dataset": DATASETS, "memory_format": MEMORY_FORMATS, "objective": OBJECTIVES,
    "consistency_distance": CONSISTENCY_DISTANCES, "consistency_curriculum": CONSISTENCY_CURRICULA,
    "network": NETWORKS,
}


def _resolve_field_types() -> None:
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        hint = hints[f.name]
        optional = typing.get_origin(hint) is typing.Union and type(None) in typing.get_args(hint)
        base = next(a for a in typing.get_args(hint) if a is not type(None)) if optional else hint
        _FIELD_TYPES[f.name] = (base, optional)


_resolve_field_types()
_TYPE_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string",
               list: "a list of integers"}


def _check_type(name: str, value: Any, spec: tuple[type, bool]) -> Any:
    """Return ``value`` coerced to the field's type (int -> float, tuple -> list), or raise."""
    base, optional = spec
    if value is None:
        if optional:
            return None
        raise DiffkitError(f"{name}=None is not allowed; it must be {_TYPE_WORDS[base]}")
    want = _TYPE_WORDS[base] + (" or None" if optional else "")
    if name in _FLOAT_LISTS:
        if isinstance(value, (list, tuple)) and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                    and math.isfinite(v) for v in value):
            return [float(v) for v in value]
        raise DiffkitError(f"{name}={value!r} has the wrong type; it must be a list of finite numbers"
                           f"{' or None' if optional else ''}")
    if base is bool:
        if isinstance(value, bool):
            return value
    elif base is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return int(value)
    elif base is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                value = float(value)
            except OverflowError:
                raise DiffkitError(f"{name}={value!r} is too large; it must be a finite number") from None
            if not math.isfinite(value):
                raise DiffkitError(f"{name}={value!r} must be a finite number")
            return value
    elif base is str:
        if isinstance(value, str):
            return value
    elif base is list:
        if isinstance(value, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return [int(v) for v in value]
    raise DiffkitError(f"{name}={value!r} has the wrong type ({type(value).__name__}); it must be {want}")


# keys of earlier versions: what they became (from_dict reads them; a CLI override names the new one)
_RENAMED = {"channels_last": "memory_format = 'channels_last'"}
# other libraries' names of a field where the spelling distance (difflib) finds none or a wrong one
_SYNONYMS = {"learning_rate": ("lr",), "steps": ("max_steps", "sample_steps"), "num_epochs": ("epoch",),
             "timesteps": ("T",), "num_timesteps": ("T",), "num_train_timesteps": ("T",), "resolution": ("img_size",),
             "w_range": ("consistency_guidance_range",), "use_ema_warmup": ("ema_power", "ema_warmup"),
             "power": ("ema_power",), "inv_gamma": ("ema_inv_gamma",)}  # diffusers' EMAModel arguments


def _read_legacy_keys(data: Mapping[str, Any]) -> Mapping[str, Any]:
    """Configs (and checkpoints) written before 4 December 2026 have ``channels_last: bool``: true
    forced that layout, false left the preferred one; that is ``memory_format`` now."""
    if "channels_last" not in data:
        return data
    data = dict(data)
    legacy = data.pop("channels_last")
    if not isinstance(legacy, bool):
        raise DiffkitError(f"channels_last={legacy!r} must be true or false; it is now memory_format = "
                           f"'auto' | 'channels_last' | 'contiguous'")
    if legacy:
        if data.setdefault("memory_format", "channels_last") != "channels_last":
            raise DiffkitError(f"channels_last=True contradicts memory_format={data['memory_format']!r}; "
                               f"give memory_format only")
    return data


def _reject_unknown(keys: Iterable[Any]) -> None:
    valid = [f.name for f in dataclasses.fields(TrainConfig)]
    unknown = [k for k in keys if k not in valid]
    if unknown:
        parts = []
        for key in unknown:
            close = _SYNONYMS.get(key) or difflib.get_close_matches(str(key), valid, n=1)
            hint = (f"now {_RENAMED[key]}" if key in _RENAMED
                    else f"did you mean {' or '.join(map(repr, close))}?" if close else "")
            parts.append(f"{key!r}" + (f" ({hint})" if hint else ""))
        raise DiffkitError(f"unknown config key{'s' if len(unknown) > 1 else ''} {', '.join(parts)}; "
                           f"valid keys are the fields of diffkit.config.TrainConfig")


# ---------------------------------------------------------------------- overrides and device
_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def parse_value(name: str, text: str) -> Any:
    """Parse a CLI string into the type of field ``name`` ("none"/"null" -> None if optional)."""
    _reject_unknown([name])
    base, optional = _FIELD_TYPES[name]
    raw = text.strip()
    if optional and raw.lower() in ("none", "null"):
        return None
    try:
        if base is bool:
            if raw.lower() in _TRUE + _FALSE:
                return raw.lower() in _TRUE
            raise ValueError
        if base is int:
            return int(raw)
        if base is float:
            return float(raw)
        if base is list:
            inner = raw[1:-1] if raw.startswith("[") and raw.endswith("]") else raw
            number = float if name in _FLOAT_LISTS else int
            return [number(part) for part in inner.split(",") if part.strip()]
    except ValueError:
        word = "a list of numbers" if name in _FLOAT_LISTS else _TYPE_WORDS[base]
        raise DiffkitError(f"{name}={text!r} cannot be read as {word}") from None
    return text


def apply_overrides(cfg: TrainConfig, overrides: Mapping[str, Any] | Iterable[str]) -> TrainConfig:
    """A new config with ``overrides`` applied: a mapping or ``["key=value", ...]`` CLI strings.

    String values are parsed by the field's type (``lr=2e-4`` -> 0.0002, ``attn=1,2`` -> [1, 2],
    ``grad_clip=none`` -> None); the result is validated as a whole. ``cfg``'s own values stay as
    they are (its ``sampler`` too when ``objective`` changes); to let a field take the default of the
    other fields given, build the config from the mapping of what was given (:func:`parse_overrides`).
    """
    return TrainConfig.from_dict({**cfg.to_dict(), **parse_overrides(overrides)})


def parse_overrides(overrides: Mapping[str, Any] | Iterable[str]) -> dict[str, Any]:
    """``{key: value}`` of overrides given as a mapping or ``["key=value", ...]`` CLI strings, each
    string parsed by its field's type (:func:`parse_value`); unknown keys are a one-line error."""
    if not isinstance(overrides, Mapping):
        pairs = {}
        for item in overrides:
            if not isinstance(item, str) or "=" not in item:
                raise DiffkitError(f"override {item!r} must look like key=value")
            key, value = item.split("=", 1)
            pairs[key.strip()] = value
        overrides = pairs
    _reject_unknown(overrides.keys())
    return {key: parse_value(key, value) if isinstance(value, str) else value for key, value in overrides.items()}


def resolve_device(name: str = "auto"):
    """A ``torch.device`` for ``cpu``, ``cuda``, ``cuda:N``, ``mps`` or ``auto`` (cuda, then mps, then cpu).

    Asking for a device this machine lacks (e.g. the seed's ``cuda:0`` without CUDA) is a
    one-line error that suggests ``--device cpu`` or ``--device auto``.
    """
    import torch

    if not isinstance(name, str) or not _DEVICE_RE.fullmatch(name):
        raise DiffkitError(f"device={name!r} is not allowed; choose auto, cpu, cuda, cuda:N or mps")
    mps_ok = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if mps_ok else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DiffkitError(f"device={name!r} is not available: this machine has no CUDA GPU; "
                               f"use --device cpu or --device auto")
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise DiffkitError(f"device={name!r} is not available: this machine has {torch.cuda.device_count()} "
                               f"CUDA device(s) (cuda:0..cuda:{torch.cuda.device_count() - 1}); use --device auto")
    if name == "mps" and not mps_ok:
        raise DiffkitError("device='mps' is not available on this machine; use --device cpu or --device auto")
    return torch.device(name)


# ---------------------------------------------------------------------- file helpers
def _tomllib():
    try:
        import tomllib
    except ImportError:  # Python 3.10
        try:
            import tomli as tomllib
        except ImportError:
            raise DiffkitError("reading .toml needs Python >= 3.11 or the 'tomli' package; "
                               "use .json or .yaml") from None
    return tomllib


def read_config_file(path: str | Path) -> Mapping[str, Any]:
    """The mapping a config file gives (only the keys it names; :meth:`TrainConfig.from_file`
    builds the config): ``.json``, ``.toml`` or ``.yaml``/``.yml``, a key given twice refused."""
    path = Path(path)
    if not path.is_file():
        raise DiffkitError(f"config file not found: {path}")
    suffix = path.suffix.lower()
    check_choice("config file type", suffix, (".json", ".toml", ".yaml", ".yml"))
    try:
        text = path.read_text(encoding="utf-8")
        if suffix == ".json":
            data = json.loads(text, object_pairs_hook=_no_duplicate_keys)
        elif suffix == ".toml":
            data = _tomllib().loads(text)
        else:
            import yaml
            data = yaml.load(text, Loader=_yaml_loader())
    except DiffkitError as err:
        raise DiffkitError(f"{path}: {err}") from None
    except Exception as err:  # each parser has its own error class; report any as one line
        raise DiffkitError(f"cannot parse {path}: {err}") from None
    return data if data is not None else {}


def given_fields(data: Mapping[str, Any]) -> dict[str, Any]:
    """The fields a config mapping gives, in today's names (:func:`_read_legacy_keys`), checked to
    be fields; the ones it leaves out take their defaults in :class:`TrainConfig`."""
    if not isinstance(data, Mapping):
        raise DiffkitError(f"a config must be a mapping of key -> value; got {type(data).__name__}")
    data = _read_legacy_keys(data)
    _reject_unknown(data.keys())
    return dict(data)


def objective_sampling(objective: str) -> dict[str, Any]:
    """The ``sampler`` and ``sample_steps`` of an ``objective``'s end-of-run grid, for a config that
    does not give them: ``ddim`` in 50 steps for diffusion, ``consistency`` in 4 steps for the
    consistency objectives (``diffkit distill`` and ``diffkit train --set objective=...`` alike)."""
    return dict(CONSISTENCY_SAMPLING if objective in OBJECTIVES[1:] else DIFFUSION_SAMPLING)


def _default(name: str) -> Any:
    f = next(f for f in dataclasses.fields(TrainConfig) if f.name == name)
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def _to_toml(data: Mapping[str, Any]) -> str:
    """Flat TOML for a config (strings, numbers, bools, int lists). TOML has no null: a None
    field is left out, which reads back as its default, so that default must be None too."""
    lines = []
    for key, value in data.items():
        if value is None:
            if _default(key) is not None:
                raise DiffkitError(f"{key}=None cannot be written to TOML (it has no null) because the default is "
                                   f"{_default(key)!r}; use .json or .yaml")
            continue
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, (int, float)):
            text = repr(value)
        elif isinstance(value, list):
            text = "[" + ", ".join(str(v) for v in value) + "]"
        else:
            text = json.dumps(value)  # a TOML basic string uses the same escapes as JSON
        lines.append(f"{key} = {text}")
    return "\n".join(lines) + "\n"


def _no_duplicate_keys(pairs: list) -> dict:
    """A mapping from (key, value) pairs that refuses a key given twice (JSON and YAML would keep
    the last one silently; TOML refuses it itself)."""
    seen = set()
    for key, _ in pairs:
        if key in seen:
            raise DiffkitError(f"key {key!r} is given twice; give each setting once")
        seen.add(key)
    return dict(pairs)


def _yaml_loader():
    """PyYAML's SafeLoader that also reads ``1e-4`` as a float (YAML 1.1 needs a dot: ``1.0e-4``)."""
    import yaml

    class Loader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            keys = [self.construct_object(key, deep=deep) for key, _ in node.value]
            _no_duplicate_keys([(key, None) for key in keys])
            return super().construct_mapping(node, deep=deep)

    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                    |[-+]?\.(?:inf|Inf|INF)
                    |\.(?:nan|NaN|NAN))$""", re.X),
        list("-+0123456789."))
    return Loader


__all__ = ["TrainConfig", "apply_overrides", "parse_overrides", "parse_value", "read_config_file",
           "given_fields", "objective_sampling", "resolve_device", "SCHEDULES", "PREDICTION_TYPES",
           "LOSSES", "FIXED_VARIANCES", "TIMESTEP_SAMPLERS", "LR_SCHEDULES", "MIXED_PRECISION"]
