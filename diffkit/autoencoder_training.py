"""Training the latent autoencoder (Rombach et al. 2022, "LDM", Sec. 3.1 and App. G).

The objective per step, without a discriminator:

``kl``  L = L_rec + kl_weight * KL, with L_rec the reconstruction error summed over pixels and
        averaged over the batch and KL the per-sample KL of :class:`DiagonalGaussian` averaged over
        the batch. This is LDM's ``LPIPSWithDiscriminator`` with a fixed ``logvar = 0`` and no
        perceptual (LPIPS) term: the LPIPS weights are a download, and diffkit downloads nothing.
``vq``  L = L_rec + VQ loss, with L_rec the mean reconstruction error over all pixels and the VQ
        loss of VQ-VAE eq. 3 (van den Oord et al. 2017): taming-transformers'
        ``VQLPIPSWithDiscriminator`` with codebook weight 1 and no LPIPS term.

``recon_loss`` chooses (x - x_hat)^2 (``l2``, diffkit's default: it is what PSNR measures, and it
gave 22.6 dB against L1's 20.1 dB after 600 steps on Fashion-MNIST, docs/latent.md) or
|x - x_hat| (``l1``, LDM's default).

With ``disc_start`` set, a PatchGAN discriminator (Isola et al. 2017; taming's
``NLayerDiscriminator``) is trained from that step on with the hinge loss
L_D = 0.5 * (mean relu(1 - D(x)) + mean relu(1 + D(x_hat))) (Lim & Ye 2017), and the autoencoder
gets L += lambda * L_G with L_G = -mean D(x_hat) and the *adaptive* weight of VQGAN
(Esser et al. 2021, eq. 7): lambda = disc_weight * ||grad_GL L_rec|| / (||grad_GL L_G|| + 1e-4),
clamped to [0, 1e4], GL the decoder's last layer. The KL posterior's log-variance bias starts at
``logvar_init`` (-6: std 0.05) rather than 0, so early training does not decode through unit
noise. Both networks use AdamW with betas (0.5, 0.9)
(taming / LDM). At the end the latent scale factor (1 / std of the latents, LDM Sec. 4.3.2) is
estimated on training images and stored in the checkpoint with the model and its config.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from . import checkpoint as ckpt
from .config import resolve_device
from .data import (DATASET_CHANNELS, DATASET_IMG_SIZE, SPLIT_DATASETS, check_data_dir_applies,
                   check_image_dataset, load_dataset, make_loader)
from .errors import DiffkitError, check_choice, check_range
from .models.autoencoder import LOGVAR_MAX, LOGVAR_MIN, Autoencoder, AutoencoderConfig, estimate_scale_factor
from .models.layers import evaluating, to_device

KIND = "autoencoder"
RECON_LOSSES = ("l1", "l2")
# Config fields shared with AutoencoderConfig (all but in_channels, which the data set gives).
_MODEL_FIELDS = tuple(f.name for f in fields(AutoencoderConfig))


@dataclass
class AutoencoderTrainConfig:
    """What :func:`train_autoencoder` trains and how.

    Data: ``dataset``, ``data_dir``, ``img_size`` (None: the set's own size; must be a multiple of f).
    Model: the :class:`AutoencoderConfig` fields (``in_channels`` 1 or 3 converts the images to grey
    or RGB; None: the data set's channels).
    Objective: ``recon_loss`` (l1 | l2), ``kl_weight`` (LDM's 1e-6), ``disc_start`` (step from which
    the patch discriminator is on; None: never), ``disc_weight`` (multiplies the adaptive weight).
    Optimisation: AdamW, ``lr`` (constant after a linear warm-up over ``warmup_steps``), betas
    (0.5, 0.9), ``weight_decay``, ``batch_size``, ``steps``, ``grad_clip`` (None: off);
    ``logvar_init``: starting bias of the KL posterior's log-variance (None: PyTorch's init).
    Evaluation: ``eval_images`` images for the final PSNR (the test split where the set has one)
    and ``scale_images`` training images for the scale factor. ``out``: checkpoint path or None.
    """

    dataset: str = "digits"
    data_dir: Optional[str] = None
    img_size: Optional[int] = None
    batch_size: int = 32
    steps: int = 1000
    lr: float = 2e-3
    warmup_steps: int = 20
    weight_decay: float = 0.0
    grad_clip: Optional[float] = 1.0
    logvar_init: Optional[float] = -6.0
    kl_weight: float = 1e-6
    recon_loss: str = "l2"
    disc_start: Optional[int] = None
    disc_weight: float = 0.5
    seed: int = 0
    device: str = "auto"
    out: Optional[str] = None
    eval_images: int = 1000
    scale_images: int = 2000
    log_every: int = 50
    # AutoencoderConfig fields, with its defaults (one source of truth)
    in_channels: Optional[int] = None
    channel: int = AutoencoderConfig.channel
    channel_mult: Sequence[int] = field(default_factory=lambda: list(AutoencoderConfig().channel_mult))
    num_res_blocks: int = AutoencoderConfig.num_res_blocks
    latent_channels: int = AutoencoderConfig.latent_channels
    regularizer: str = AutoencoderConfig.regularizer
    codebook_size: int = AutoencoderConfig.codebook_size
    commitment_beta: float = AutoencoderConfig.commitment_beta
    attn_middle: bool = AutoencoderConfig.attn_middle

    def __post_init__(self):
        check_image_dataset(self.dataset, "the autoencoder")
        check_data_dir_applies(self.dataset, self.data_dir)
        check_range("batch_size", self.batch_size, 1, integer=True)
        check_range("steps", self.steps, 1, integer=True)
        check_range("lr", self.lr, 0.0, 1.0, low_inclusive=False)  # larger rates only diverge (to NaN)
        check_range("warmup_steps", self.warmup_steps, 0, integer=True)
        check_range("weight_decay", self.weight_decay, 0.0)
        if self.grad_clip is not None:
            check_range("grad_clip", self.grad_clip, 0.0, None, low_inclusive=False, finite=False)
        if self.logvar_init is not None:
            check_range("logvar_init", self.logvar_init, LOGVAR_MIN, LOGVAR_MAX)
        check_range("kl_weight", self.kl_weight, 0.0)
        check_choice("recon_loss", self.recon_loss, RECON_LOSSES)
        if self.disc_start is not None:
            check_range("disc_start", self.disc_start, 0, integer=True)
            if self.disc_start >= self.steps:
                raise DiffkitError(f"disc_start={self.disc_start} is not below steps={self.steps}: the discriminator "
                                   f"would never train; give disc_start < steps or leave it out")
            if self.channel < 2:  # the patch discriminator's first GroupNorm has channel * 2 / 4 groups
                raise DiffkitError(f"channel={self.channel} is too small for the patch discriminator (--disc-start); "
                                   f"give channel >= 2")
        check_range("disc_weight", self.disc_weight, 0.0)
        check_range("seed", self.seed, 0, integer=True)
        check_range("eval_images", self.eval_images, 0, integer=True)
        check_range("scale_images", self.scale_images, 1, integer=True)
        check_range("log_every", self.log_every, 1, integer=True)
        model = self.model_config(self.in_channels or DATASET_CHANNELS.get(self.dataset, 3))  # validates
        size = self.img_size if self.img_size is not None else DATASET_IMG_SIZE.get(self.dataset)
        if size is not None:
            model.latent_shape(size)

    def model_config(self, in_channels: int) -> AutoencoderConfig:
        values = {name: getattr(self, name) for name in _MODEL_FIELDS}
        values["in_channels"] = in_channels
        return AutoencoderConfig(**values)


# --------------------------------------------------------------------------- the discriminator
class PatchDiscriminator(nn.Module):
    """PatchGAN (Isola et al. 2017; taming's ``NLayerDiscriminator``): 4x4 convs, stride 2 for
    ``n_layers`` layers with LeakyReLU(0.2), a stride-1 layer, and a 1-channel map of patch logits.
    GroupNorm instead of BatchNorm, so a step does not depend on the batch's other images."""

    def __init__(self, in_channels: int, channel: int = 32, n_layers: int = 2):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channel, 4, 2, 1), nn.LeakyReLU(0.2)]
        ch = channel
        for i in range(1, n_layers + 1):
            out = channel * min(2 ** i, 8)
            layers += [nn.Conv2d(ch, out, 4, 2 if i < n_layers else 1, 1), nn.GroupNorm(min(32, out // 4), out),
                       nn.LeakyReLU(0.2)]
            ch = out
        layers.append(nn.Conv2d(ch, 1, 4, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """0.5 * (mean relu(1 - D(x)) + mean relu(1 + D(x_hat))) (Lim & Ye 2017; taming ``hinge_d_loss``)."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def adaptive_weight(rec_loss: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor,
                    disc_weight: float) -> torch.Tensor:
    """VQGAN eq. 7 (Esser et al. 2021): ||grad L_rec|| / (||grad L_G|| + 1e-4) at the last layer,
    clamped to [0, 1e4], times ``disc_weight``; a constant (no gradient flows through it)."""
    rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    weight = rec_grad.norm() / (g_grad.norm() + 1e-4)
    return torch.clamp(weight, 0.0, 1e4).detach() * disc_weight


# --------------------------------------------------------------------------- losses and metrics
def reconstruction_loss(x: torch.Tensor, x_hat: torch.Tensor, kind: str = "l1", reduction: str = "sum") -> torch.Tensor:
    """|x - x_hat| (l1) or (x - x_hat)^2 (l2), summed over each image and averaged over the batch
    (``sum``, LDM's KL autoencoder) or averaged over every entry (``mean``, taming's VQGAN)."""
    err = (x - x_hat).abs() if kind == "l1" else (x - x_hat).pow(2)
    if reduction == "sum":
        return err.reshape(err.shape[0], -1).sum(1).mean()
    return err.mean()


@torch.no_grad()
def codebook_usage(autoencoder: Autoencoder, images: torch.Tensor, batch_size: int = 256) -> dict:
    """A VQ autoencoder's use of its codebook on ``images``: ``used`` (entries chosen at least
    once), ``perplexity`` exp(H(p)) of the code frequencies p (= the codebook size when every
    entry is chosen equally often; VQ-VAE / taming report it to detect codebook collapse)."""
    if autoencoder.quantizer is None:
        raise DiffkitError("codebook_usage needs a VQ autoencoder (regularizer='vq')")
    check_range("batch_size", batch_size, 1, integer=True)
    device = next(autoencoder.parameters()).device
    counts = torch.zeros(autoencoder.config.codebook_size, dtype=torch.float64)
    with evaluating(autoencoder):
        for start in range(0, images.shape[0], batch_size):
            codes = autoencoder.quantizer(autoencoder._moments(images[start:start + batch_size].to(device)))[2]
            counts += torch.bincount(codes.flatten().cpu(), minlength=counts.numel()).to(torch.float64)
    p = counts / counts.sum()
    entropy = -(p[p > 0] * p[p > 0].log()).sum()
    return {"used": int((counts > 0).sum()), "size": counts.numel(), "perplexity": float(entropy.exp())}


@torch.no_grad()
def reconstruction_psnr(autoencoder: Autoencoder, images: torch.Tensor, batch_size: int = 256) -> float:
    """Mean over images of PSNR = 10 log10(1 / MSE) in dB, on the [0, 1] pixel scale.

    ``images`` are in [-1, 1]; each is encoded to its latent (KL: the posterior mean; VQ: z_q),
    decoded, clamped to [-1, 1] and mapped with (x + 1) / 2. An exact reconstruction counts as
    MSE 1e-10 (100 dB)."""
    check_range("batch_size", batch_size, 1, integer=True)
    if images.shape[0] < 1:
        raise DiffkitError("reconstruction_psnr needs at least one image")
    device = next(autoencoder.parameters()).device
    psnrs = []
    with evaluating(autoencoder):
        for start in range(0, images.shape[0], batch_size):
            x = images[start:start + batch_size].to(device)
            x_hat = autoencoder.decode(autoencoder.encode_latents(x)).clamp(-1.0, 1.0)
            mse = ((x_hat.float() - x.float()) / 2.0).pow(2).reshape(x.shape[0], -1).mean(1).clamp_min(1e-10)
            psnrs.append(10.0 * torch.log10(1.0 / mse).cpu())
    return float(torch.cat(psnrs).mean())


def dataset_images(dataset, n: int) -> torch.Tensor:
    """The first ``n`` images of ``dataset`` in [-1, 1] as one float tensor."""
    n = min(n, len(dataset))
    if hasattr(dataset, "images") and dataset.images.dtype == torch.uint8:
        return dataset.images[:n].to(torch.float32) / 127.5 - 1.0
    return torch.stack([dataset[i][0] for i in range(n)])


# --------------------------------------------------------------------------- training
@dataclass
class AutoencoderTrainResult:
    model: Autoencoder
    path: Optional[Path]
    steps: int
    losses: dict            # final running averages: total, rec (per pixel), reg, and g / d / d_weight with a GAN
    psnr: float             # dB on the eval images (see psnr_split)
    psnr_split: str         # "test" or "train"
    scale_factor: float
    seconds: float
    codebook: Optional[dict] = None  # VQ: :func:`codebook_usage` on the eval images


def _lr(step: int, cfg: AutoencoderTrainConfig) -> float:
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    return cfg.lr


def load_eval_dataset(cfg: AutoencoderTrainConfig):
    """The test split of ``cfg.dataset`` where it has one (else None)."""
    if cfg.dataset in SPLIT_DATASETS and cfg.eval_images:
        return load_dataset(cfg.dataset, cfg.data_dir, cfg.img_size, train=False, channels=cfg.in_channels)
    return None


def train_autoencoder(cfg: AutoencoderTrainConfig, dataset=None, progress: bool = True,
                      eval_dataset=None) -> AutoencoderTrainResult:
    """Train an :class:`Autoencoder` as the module docstring says; save it to ``cfg.out`` if set.

    ``dataset`` (an in-memory data set with images in [-1, 1]) replaces loading ``cfg.dataset``.
    The final PSNR is measured on the first ``eval_images`` images of ``eval_dataset``; if that is
    None, of the test split of ``cfg.dataset`` when ``dataset`` is None and the set has one, else
    of the training images (``psnr_split`` in the result says which)."""
    device = resolve_device(cfg.device)
    if dataset is None:
        dataset = load_dataset(cfg.dataset, cfg.data_dir, cfg.img_size, train=True, channels=cfg.in_channels)
        if eval_dataset is None:
            eval_dataset = load_eval_dataset(cfg)
    if len(dataset) < 1:
        raise DiffkitError("the data set is empty")
    eval_set, split = (eval_dataset, "test") if eval_dataset is not None else (dataset, "train")
    x_probe = dataset[0][0]
    model_cfg = cfg.model_config(cfg.in_channels or int(x_probe.shape[0]))
    if x_probe.shape[0] != model_cfg.in_channels:
        raise DiffkitError(f"in_channels={model_cfg.in_channels} does not match the data set's "
                           f"{x_probe.shape[0]} channels")
    model_cfg.latent_shape(int(x_probe.shape[-1]))

    torch.manual_seed(cfg.seed)
    model = Autoencoder(model_cfg)
    if model_cfg.regularizer == "kl" and cfg.logvar_init is not None:
        nn.init.constant_(model.quant_conv.bias[model_cfg.latent_channels:], cfg.logvar_init)
    model = to_device(model, device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.5, 0.9), weight_decay=cfg.weight_decay)
    disc = disc_opt = None
    if cfg.disc_start is not None:
        disc = PatchDiscriminator(model_cfg.in_channels, cfg.channel).to(device)
        disc_opt = torch.optim.AdamW(disc.parameters(), lr=cfg.lr, betas=(0.5, 0.9), weight_decay=cfg.weight_decay)
    generator = torch.Generator().manual_seed(cfg.seed + 1)
    loader = make_loader(dataset, cfg.batch_size, shuffle=True, seed=cfg.seed, drop_last=len(dataset) >= cfg.batch_size,
                         device=device)
    reduction = "sum" if model_cfg.regularizer == "kl" else "mean"
    pixels = math.prod(x_probe.shape)
    reg_weight = cfg.kl_weight if model_cfg.regularizer == "kl" else 1.0

    start, smooth, step = time.perf_counter(), {}, 0
    model.train()
    bar = tqdm(total=cfg.steps, desc="autoencoder", disable=not progress, dynamic_ncols=True)
    while step < cfg.steps:
        for x, _ in loader:
            if step >= cfg.steps:
                break
            x = x.to(device, non_blocking=True)
            for group in optimizer.param_groups:
                group["lr"] = _lr(step, cfg)
            out = model(x, generator=generator)
            rec = reconstruction_loss(x, out.reconstruction, cfg.recon_loss, reduction)
            loss = rec + reg_weight * out.reg_loss
            # the logged values stay on the device until the step is queued: one host sync per step
            logs = {"rec": rec.detach() / (pixels if reduction == "sum" else 1), "reg": out.reg_loss.detach()}
            gan_on = disc is not None and step >= cfg.disc_start
            if gan_on:
                disc.requires_grad_(False)
                g_loss = -disc(out.reconstruction).mean()
                d_weight = adaptive_weight(rec, g_loss, model.decoder.last_layer, cfg.disc_weight)
                loss = loss + d_weight * g_loss
                logs.update(g=g_loss.detach(), d_weight=torch.as_tensor(d_weight).detach())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            if gan_on:
                disc.requires_grad_(True)
                for group in disc_opt.param_groups:
                    group["lr"] = _lr(step - cfg.disc_start, cfg)
                d_loss = hinge_d_loss(disc(x), disc(out.reconstruction.detach()))
                disc_opt.zero_grad(set_to_none=True)
                d_loss.backward()
                disc_opt.step()
                logs["d"] = d_loss.detach()
            logs["total"] = loss.detach()
            logs = dict(zip(logs, torch.stack([v.float().reshape(()).to(x.device) for v in logs.values()]).tolist()))
            if not all(math.isfinite(v) for v in logs.values()):
                raise DiffkitError(f"the loss became non-finite at step {step + 1} ({logs}); lower lr={cfg.lr}")
            for k, v in logs.items():
                smooth[k] = v if k not in smooth else 0.95 * smooth[k] + 0.05 * v
            step += 1
            bar.update(1)
            bar.set_postfix(rec=f"{smooth['rec']:.4f}", reg=f"{smooth['reg']:.3g}")
            if not progress and step % cfg.log_every == 0:
                print(f"step {step}/{cfg.steps}: " + ", ".join(f"{k} {v:.4g}" for k, v in smooth.items()), flush=True)
    bar.close()
    model.eval()
    psnr = (reconstruction_psnr(model, dataset_images(eval_set, max(1, cfg.eval_images))) if cfg.eval_images
            else float("nan"))
    scale = estimate_scale_factor(model, dataset_images(dataset, cfg.scale_images))
    codebook = (codebook_usage(model, dataset_images(eval_set, max(1, cfg.eval_images)))
                if model.quantizer is not None else None)
    path = None
    if cfg.out is not None:
        meta = {"dataset": cfg.dataset, "img_size": int(x_probe.shape[-1]), "train": asdict(cfg), "step": step,
                "psnr": psnr, "psnr_split": split, **({"codebook": codebook} if codebook else {})}
        path = save_autoencoder(cfg.out, model, scale, meta)
    return AutoencoderTrainResult(model, path, step, dict(smooth), psnr, split, scale, time.perf_counter() - start,
                                  codebook)


# --------------------------------------------------------------------------- checkpoints
def save_autoencoder(path: str | Path, model: Autoencoder, scale_factor: float,
                     metadata: Optional[dict] = None) -> Path:
    """Write the weights (``model.*``), config and scale factor atomically as a diffkit checkpoint
    (:func:`diffkit.checkpoint.save_checkpoint`: safetensors, checksummed)."""
    check_range("scale_factor", scale_factor, 0.0, None, low_inclusive=False)
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    meta = {**(metadata or {}), "kind": KIND, "autoencoder": asdict(model.config), "scale_factor": float(scale_factor)}
    return ckpt.save_checkpoint(path, tensors, meta)


def load_autoencoder(path: str | Path, device="cpu") -> tuple[Autoencoder, float]:
    """(autoencoder in eval mode with gradients off, scale factor) from :func:`save_autoencoder`'s file."""
    tensors, meta = ckpt.load_checkpoint(path)
    if meta.get("kind") != KIND or "autoencoder" not in meta or "scale_factor" not in meta:
        raise DiffkitError(f"{path} is not an autoencoder checkpoint; train one with 'diffkit train-autoencoder'")
    try:
        model = Autoencoder(AutoencoderConfig(**meta["autoencoder"]))
    except TypeError as err:
        raise DiffkitError(f"{path} has an autoencoder config this diffkit does not know ({err})") from None
    ckpt.load_state_dict_checked(model, ckpt.split_prefix(tensors, "model"), f"autoencoder checkpoint {path}")
    model.requires_grad_(False)
    return to_device(model, device).eval(), float(meta["scale_factor"])
