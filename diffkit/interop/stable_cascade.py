"""Stable Cascade folders (``StableCascadePriorPipeline`` + ``StableCascadeDecoderPipeline``, diffusers 0.42.1),
sampled by diffkit.

Stable Cascade is Würstchen v3 (Pernias et al. 2024, "Würstchen: An Efficient Architecture for Large-Scale
Text-to-Image Diffusion Models"): three stages, run here as diffusers chains the two pipelines
(``prior(prompt) -> image_embeddings -> decoder(image_embeddings, prompt)``):

* stage C, the prior folder: a ``StableCascadeUNet`` denoises 16-channel latents of ceil(H / m) x ceil(W / m)
  (m = the folder's ``resolution_multiple``, 42.67: 24 x 24 at 1024 px; paper Sec. 3, "Stage C"), conditioned on
  a CLIP-G text encoder (``CLIPTextModelWithProjection``): its last hidden states (``clip_text``) and its pooled
  projection (``clip_text_pooled``), and on image embeddings (``clip_img``), zeros for text-to-image (as the
  pipeline without ``images``). Its output, the "image embeddings", are the stage-B condition.
* stage B, the decoder folder: a second ``StableCascadeUNet`` denoises 4-channel latents of int(h x s) x int(w x s)
  (s = the decoder folder's ``latent_dim_scale``, 10.67), conditioned on the prior's embeddings (its ``effnet``
  input, the paper's EfficientNet features that stage C learnt to generate) and on the pooled text embedding of the
  decoder folder's own text encoder.
* stage A: the Paella VQGAN (``PaellaVQModel``) decodes x = D(scale_factor z), clamped to [0, 1].

Both stages sample with ``DDPMWuerstchenScheduler`` (the default and only sampler here, ``ddpm``), whose step
diffkit's :class:`~diffkit.schedule.NoiseSchedule` cannot express: its time is continuous, t in [0, 1] on
``linspace(1, 0, steps + 1)``, with the closed-form cosine alpha_bar of Nichol & Dhariwal 2021 (eq. 17) normalised
at t = 0 and clamped to [1e-4, 0.9999] (:func:`wuerstchen_alpha_bar`), so its last step goes to alpha_bar = 0.9999,
not to clean data, and adds no noise there. The step (:func:`wuerstchen_step`) is DDPM's ancestral step (Ho et al.
2020, eq. 11 mean from the predicted noise, eq. 7's beta-tilde variance) between two of those times; the network
is called at ``timestep_ratio`` = t (the "r-conditioning" of the paper's Sec. 3). :func:`wuerstchen_ddpm` is its
loop, in diffkit's sampler form (:func:`~diffkit.samplers.common.steps`, noise from
:func:`~diffkit.noise.randn_like`). Guidance: CFG as the pipelines, ``lerp(u_uncond, u_cond, s)`` = u_u + s (u_c -
u_u) (Ho & Salimans 2022, eq. 6 in diffusers' convention) for s > 1: the prior's null half is the negative prompt
(default "") with zero image embeddings, the decoder's the negative prompt's pooled embedding with zero effnet
features. Defaults are each pipeline's: prior 20 steps, s = 4, 1024 x 1024; decoder 10 steps, s = 0 (unguided).

The draws: z_T of the prior, then its step noise (the scheduler draws at every step, the last included, and drops
it at t = 0), then the decoder's z_T and step noise, all from one generator, as ``prior(..., generator=g)`` then
``decoder(..., generator=g)``; ``diffkit sample`` gives sample i the generator seeded ``seed + i``.

Refused in one line before any weight is read (:func:`check_prior_folder`, :func:`check_decoder_folder`): another
pipeline class, a missing component or one of another class, a prior without text / image conditioning channels, a
decoder whose ``effnet_in_channels`` are not the prior's output channels. Not driven (refused): other samplers or
grids.

Image prompts (the prior's ``images``: image variation, image + text) are :mod:`.stable_cascade_image`'s
(``load_stable_cascade(..., images=True)``, ``text_to_image(..., images=[...])``). A ``StableCascadeCombinedPipeline``
folder holds both halves (the prior's components prefixed ``prior_``): ``load_stable_cascade(folder)`` reads it, and
the decoder is then conditioned as that pipeline does, on the prior's pooled text embeddings (prompt and, for CFG,
negative prompt: :func:`decoder_latents`), where the two chained pipelines let the decoder encode the prompt itself.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from ..errors import DiffkitError, read_json_object
from . import model_dtype, require

PRIOR_PIPELINE = "StableCascadePriorPipeline"
DECODER_PIPELINE = "StableCascadeDecoderPipeline"
COMBINED_PIPELINE = "StableCascadeCombinedPipeline"
SCHEDULER = "DDPMWuerstchenScheduler"
UNET = "StableCascadeUNet"
TEXT_ENCODER = "CLIPTextModelWithProjection"
PRIOR_CLASSES = {"prior": (UNET,), "text_encoder": (TEXT_ENCODER,), "scheduler": (SCHEDULER,)}
DECODER_CLASSES = {"decoder": (UNET,), "text_encoder": (TEXT_ENCODER,), "scheduler": (SCHEDULER,),
                   "vqgan": ("PaellaVQModel",)}
PRIOR_STEPS, PRIOR_GUIDANCE = 20, 4.0  # StableCascadePriorPipeline.__call__'s defaults
DECODER_STEPS, DECODER_GUIDANCE = 10, 0.0  # StableCascadeDecoderPipeline.__call__'s
DEFAULT_SIZE = 1024  # the prior's default height and width
RESOLUTION_MULTIPLE, LATENT_DIM_SCALE = 42.67, 10.67  # the pipelines' register_to_config defaults
ALPHA_BAR_RANGE = (0.0001, 0.9999)  # DDPMWuerstchenScheduler._alpha_cumprod's clamp
SAMPLER = "ddpm"  # the only sampler: DDPMWuerstchenScheduler's step (module docstring)
COMBINED_PREFIX = "prior_"  # a combined folder's prior components: prior_prior, prior_text_encoder, ...


def stable_cascade_kind(path) -> Optional[str]:
    """The Stable Cascade pipeline class ``path``'s ``model_index.json`` names (prior, decoder, combined), else None."""
    from .sd_xl import pipeline_class
    name = pipeline_class(path)
    return name if name in (PRIOR_PIPELINE, DECODER_PIPELINE, COMBINED_PIPELINE) else None


def is_stable_cascade_folder(path) -> bool:
    """True for a Stable Cascade folder (``diffkit sample --checkpoint`` dispatches; the prior folder is the one it
    samples from, with ``--decoder``)."""
    return stable_cascade_kind(path) is not None


def _checked(directory, pipeline: str, classes: dict, unet: str, prefix: str = "", index=None) -> tuple:
    """(model_index.json, the UNet's config, the scheduler's config) of a folder naming ``pipeline`` (``index``:
    already read and checked), its components named ``prefix`` + name; one line otherwise (a combined folder where
    its halves are asked for: load it alone)."""
    from .pixart import check_classes
    from .sd_xl import _index
    directory = Path(directory)
    if index is None:
        index = _index(directory)
        name = None if index is None else index.get("_class_name")
        if name == COMBINED_PIPELINE:
            raise DiffkitError(f"{directory} is a {COMBINED_PIPELINE} folder, which holds both halves: give it alone "
                               f"as --checkpoint (no --decoder)")
        if name != pipeline:
            raise DiffkitError(f"{directory} is not a {pipeline} folder (model_index.json names {name!r})")
    classes = {prefix + part: allowed for part, allowed in classes.items()}
    check_classes(directory, index, tuple(classes) + (prefix + "tokenizer",), pipeline, classes)
    config = read_json_object(directory / (prefix + unet) / "config.json", f"{unet} config")
    sched = read_json_object(directory / (prefix + "scheduler") / "scheduler_config.json", "scheduler config")
    for key, default in (("scaler", 1.0), ("s", 0.008)):
        value = sched.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise DiffkitError(f"{directory}'s {SCHEDULER} has {key}={value!r}; allowed: a positive number")
    return index, config, sched


def check_prior_folder(directory, images: bool = False, *, prefix: str = "", index=None) -> tuple:
    """(model_index, prior config, scheduler config) of a ``StableCascadePriorPipeline`` folder, from its JSON
    (``prefix`` / ``index``: the prior half of a combined folder); ``images``: it must hold an image encoder
    (:func:`~.stable_cascade_image.check_image_encoder`)."""
    pipeline = PRIOR_PIPELINE if index is None else COMBINED_PIPELINE
    index, config, sched = _checked(directory, pipeline, PRIOR_CLASSES, "prior", prefix, index)
    if images:
        from .stable_cascade_image import check_image_encoder
        check_image_encoder(directory, index, prefix)
    for key in ("clip_text_in_channels", "clip_image_in_channels"):
        if not isinstance(config.get(key), int):
            raise DiffkitError(f"{directory}'s prior has {key}={config.get(key)!r}; allowed: an integer (a stage-C "
                               f"prior conditioned on text states and image embeddings)")
    return index, config, sched


def check_decoder_folder(directory, prior_channels: Optional[int] = None, *, index=None) -> tuple:
    """(model_index, decoder config, scheduler config) of a ``StableCascadeDecoderPipeline`` folder, from its JSON
    (``index``: the decoder half of a combined folder); its ``effnet_in_channels`` must be ``prior_channels`` (the
    prior's out_channels) where given."""
    pipeline = DECODER_PIPELINE if index is None else COMBINED_PIPELINE
    index, config, sched = _checked(directory, pipeline, DECODER_CLASSES, "decoder", index=index)
    effnet = config.get("effnet_in_channels")
    if prior_channels is not None and effnet != prior_channels:
        raise DiffkitError(f"{directory}'s decoder has effnet_in_channels={effnet!r}; allowed: {prior_channels}, "
                           f"the prior's out_channels (its image embeddings)")
    return index, config, sched


def check_combined_folder(directory, images: bool = False) -> tuple:
    """(model_index, prior config, prior scheduler config, decoder scheduler config) of a
    ``StableCascadeCombinedPipeline`` folder: its ``prior_``-prefixed half checked as a prior folder, the rest as a
    decoder folder (:func:`check_prior_folder`, :func:`check_decoder_folder`), from its JSON."""
    from .sd_xl import _index
    index = _index(directory)
    name = None if index is None else index.get("_class_name")
    if name != COMBINED_PIPELINE:
        raise DiffkitError(f"{directory} is not a {COMBINED_PIPELINE} folder (model_index.json names {name!r})")
    _, prior, prior_sched = check_prior_folder(directory, images, prefix=COMBINED_PREFIX, index=index)
    _, _, sched = check_decoder_folder(directory, prior.get("out_channels", 16), index=index)
    return index, prior, prior_sched, sched


def wuerstchen_alpha_bar(t: torch.Tensor, s: float = 0.008, scaler: float = 1.0) -> torch.Tensor:
    """alpha_bar(t) of ``DDPMWuerstchenScheduler._alpha_cumprod`` at continuous t in [0, 1], in float32 as there:
    t warped by ``scaler`` (1 - (1 - t)^k for k > 1, t^k for k < 1), then the cosine schedule of Nichol & Dhariwal
    2021, eq. 17, cos^2((t + s) / (1 + s) pi / 2) / cos^2(s / (1 + s) pi / 2), clamped to [1e-4, 0.9999]."""
    s = torch.tensor([s])
    if scaler > 1:
        t = 1 - (1 - t) ** scaler
    elif scaler < 1:
        t = t ** scaler
    at_zero = torch.cos(s / (1 + s) * torch.pi * 0.5) ** 2
    return (torch.cos((t + s.to(t.device)) / (1 + s.to(t.device)) * torch.pi * 0.5) ** 2
            / at_zero.to(t.device)).clamp(*ALPHA_BAR_RANGE)


def wuerstchen_step(eps: torch.Tensor, x: torch.Tensor, abar_t: torch.Tensor, abar_prev: torch.Tensor,
                    noise: Optional[torch.Tensor]) -> torch.Tensor:
    """``DDPMWuerstchenScheduler.step`` from t to its previous time: with alpha = abar_t / abar_prev, the mean
    (Ho et al. 2020, eq. 11) alpha^(-1/2) (x - (1 - alpha) eps / sqrt(1 - abar_t)) plus beta-tilde's standard
    deviation (eq. 7) sqrt((1 - alpha)(1 - abar_prev) / (1 - abar_t)) times ``noise`` (None: the step to t = 0)."""
    alpha = abar_t / abar_prev
    mean = (1.0 / alpha).sqrt() * (x - (1 - alpha) * eps / (1 - abar_t).sqrt())
    if noise is None:
        return mean
    return mean + ((1 - alpha) * (1.0 - abar_prev) / (1.0 - abar_t)).sqrt() * noise


def wuerstchen_grid(steps: int) -> torch.Tensor:
    """``DDPMWuerstchenScheduler.set_timesteps(steps)``'s times, linspace(1, 0, steps + 1) (float32)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise DiffkitError(f"steps={steps!r} is not allowed; give a positive integer")
    return torch.linspace(1.0, 0.0, steps + 1)


def wuerstchen_ddpm(eps_fn, x: torch.Tensor, grid: torch.Tensor, *, s: float = 0.008, scaler: float = 1.0,
                    generator=None, progress: bool = False, callback=None) -> torch.Tensor:
    """The pipelines' loop with ``DDPMWuerstchenScheduler``: for each time t of ``grid`` but the last,
    u = ``eps_fn(x, t)`` (the guided network at timestep_ratio t), then :func:`wuerstchen_step` to the next time
    with noise drawn from ``generator`` at every step (dropped on the step to t = 0, as the scheduler)."""
    from ..noise import randn_like
    from ..samplers.common import report, steps
    for i in steps(grid, progress, "ddpm (Würstchen)"):
        t, prev = grid[i], grid[i + 1]
        eps = eps_fn(x, t)
        noise = randn_like(eps, generator)
        # t as the pipelines pass it to step(): the timestep_ratio in the network's dtype; prev_t from the float32 grid
        abar_t, abar_prev = (wuerstchen_alpha_bar(v.reshape(1).to(x.device, dtype), s, scaler).reshape(1, 1, 1, 1)
                             for v, dtype in ((t, eps.dtype), (prev, torch.float32)))
        x = wuerstchen_step(eps, x, abar_t, abar_prev, None if float(prev) == 0 else noise).to(eps.dtype)
        report(callback, i, t, prev, x, None)
    return x


@dataclass
class StableCascade:
    """The loaded components of a prior folder and a decoder folder (:func:`load_stable_cascade`)."""

    prior: torch.nn.Module
    prior_text_encoder: torch.nn.Module
    prior_tokenizer: object
    prior_scheduler: dict
    decoder: torch.nn.Module
    text_encoder: torch.nn.Module
    tokenizer: object
    scheduler: dict
    vqgan: torch.nn.Module
    resolution_multiple: float
    latent_dim_scale: float
    device: torch.device
    dtype: torch.dtype
    image_encoder: Optional[torch.nn.Module] = None  # loaded with images=True (.stable_cascade_image)
    feature_extractor: Optional[tuple] = None  # (folder, sub-folder, flag) of its CLIPImageProcessor
    combined: bool = False  # a StableCascadeCombinedPipeline folder: the decoder takes the prior's text embeddings

    def encode_prompts(self, prompts: Sequence[str], decoder: bool = False) -> tuple:
        """(last hidden states (B, L, d), pooled projection (B, 1, d)) of ``prompts`` as the pipelines'
        ``encode_prompt``: padded / truncated to the tokenizer's ``model_max_length``, encoded under their mask;
        the prior folder's text encoder, or with ``decoder`` the decoder folder's."""
        encoder, tokenizer = (self.text_encoder, self.tokenizer) if decoder else \
            (self.prior_text_encoder, self.prior_tokenizer)
        tokens = tokenizer(list(prompts), padding="max_length", max_length=tokenizer.model_max_length,
                           truncation=True, return_tensors="pt")
        with torch.no_grad():
            out = encoder(tokens.input_ids.to(self.device), attention_mask=tokens.attention_mask.to(self.device),
                          output_hidden_states=True)
        return out.hidden_states[-1].to(encoder.dtype), out.text_embeds.unsqueeze(1).to(encoder.dtype)

    def prior_shape(self, batch: int, height: Optional[int] = None, width: Optional[int] = None) -> tuple:
        """(B, C, ceil(H / m), ceil(W / m)): the prior's latents (``prepare_latents``), default 1024 x 1024."""
        sides = []
        for name, value in (("height", height), ("width", width)):
            value = DEFAULT_SIZE if value is None else value
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise DiffkitError(f"{name}={value!r} is not allowed; give a positive integer")
            sides.append(math.ceil(value / self.resolution_multiple))
        return (batch, int(self.prior.config.in_channels), *sides)

    def decoder_shape(self, embeddings: torch.Tensor) -> tuple:
        """(B, 4, int(h s), int(w s)): the decoder's latents for the prior's embeddings (``prepare_latents``)."""
        h, w = embeddings.shape[2:]
        return (embeddings.shape[0], 4, int(h * self.latent_dim_scale), int(w * self.latent_dim_scale))

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1]: the VQGAN's decode of scale_factor z (not quantised), clamped (stage A)."""
        with torch.no_grad():
            z = float(self.vqgan.config.scale_factor) * latents.to(model_dtype(self.vqgan))
            return self.vqgan.decode(z).sample.clamp(0, 1).float()


def _guided(net, scale: float, cond: dict, null: Optional[dict]):
    """eps_fn(x, t) of ``net`` (a StableCascadeUNet) under ``cond`` ({keyword: tensor}): for s > 1 one batched call
    on [cond; null] and ``lerp(u_null, u_cond, s)`` (the pipelines' CFG); else one call."""
    dtype = model_dtype(net)
    both = cond if null is None else {key: torch.cat([value, null[key]]) for key, value in cond.items()}

    def eps_fn(x, t):
        xs = x if null is None else torch.cat([x] * 2)
        ratio = t.reshape(1).to(x.device).expand(xs.shape[0]).to(dtype)
        with torch.no_grad():
            out = net(sample=xs.to(dtype), timestep_ratio=ratio, return_dict=False, **both)[0]
        if null is None:
            return out
        cond_out, null_out = out.chunk(2)
        return torch.lerp(null_out, cond_out, scale)
    return eps_fn


def _start(shape: tuple, latents, generator, net, device, what: str) -> torch.Tensor:
    """z_T of ``shape`` for ``net`` (its dtype): ``latents`` as given (the pipelines' ``latents=``), else drawn."""
    from ..noise import randn
    if latents is None:
        return randn(shape, generator, device=device, dtype=model_dtype(net))
    if tuple(latents.shape) != tuple(shape):
        raise DiffkitError(f"{what} of shape {tuple(latents.shape)} are not allowed; give {tuple(shape)}")
    return latents.to(device, model_dtype(net))


def _checked_scale(scale, what: str) -> float:
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise DiffkitError(f"{what}={scale!r} is not allowed; give a number (> 1 turns on classifier-free guidance)")
    return float(scale)


def prior_embeddings(model: StableCascade, prompts: Sequence[str], *, negative_prompt=None,
                     guidance_scale: float = PRIOR_GUIDANCE, steps: int = PRIOR_STEPS, height=None, width=None,
                     latents=None, generator=None, progress: bool = False, images=None) -> torch.Tensor:
    """Stage C: the image embeddings ``StableCascadePriorPipeline(prompt, ..., images=images).image_embeddings``
    returns (a negative prompt is read only for a scale > 1, as there); ``images`` (paths or PIL images): image
    prompts, every prompt conditioned on all of them (:func:`~.stable_cascade_image.image_prompt_embeddings`; the
    null half on zeros), None: one zero image token (text only)."""
    from .stable_diffusion import negative_prompts
    scale = _checked_scale(guidance_scale, "guidance_scale")
    grid = wuerstchen_grid(steps)
    states, pooled = model.encode_prompts(prompts)
    shape = model.prior_shape(len(prompts), height, width)
    dtype = model_dtype(model.prior)
    if images is None:
        image = torch.zeros(len(prompts), 1, int(model.prior.config.clip_image_in_channels), device=model.device,
                            dtype=dtype)
    else:
        from .stable_cascade_image import image_prompt_embeddings
        image = image_prompt_embeddings(model, images, dtype).repeat(len(prompts), 1, 1)
    cond = {"clip_text": states, "clip_text_pooled": pooled, "clip_img": image}
    null = None
    if scale > 1:
        n_states, n_pooled = model.encode_prompts(negative_prompts(negative_prompt, len(prompts)))
        null = {"clip_text": n_states, "clip_text_pooled": n_pooled, "clip_img": torch.zeros_like(image)}
    x = _start(shape, latents, generator, model.prior, model.device, "prior latents")
    return wuerstchen_ddpm(_guided(model.prior, scale, cond, null), x, grid, generator=generator, progress=progress,
                           **_scheduler_options(model.prior_scheduler))


def decoder_latents(model: StableCascade, embeddings: torch.Tensor, prompts: Sequence[str], *, negative_prompt=None,
                    guidance_scale: float = DECODER_GUIDANCE, steps: int = DECODER_STEPS, latents=None,
                    generator=None, progress: bool = False) -> torch.Tensor:
    """Stage B: ``StableCascadeDecoderPipeline(image_embeddings, prompt, output_type="latent")``'s latents (one
    embedding per prompt). A combined folder (``model.combined``) conditions it as
    ``StableCascadeCombinedPipeline``: on the prior's pooled text embeddings (prompt, and negative prompt for CFG,
    which that pipeline has only when the prior ran CFG too: :func:`text_to_image` refuses the rest)."""
    from .stable_diffusion import negative_prompts
    scale = _checked_scale(guidance_scale, "decoder guidance_scale")
    grid = wuerstchen_grid(steps)
    _, pooled = model.encode_prompts(prompts, decoder=not model.combined)
    effnet = embeddings.to(model.device, model_dtype(model.decoder))
    cond = {"clip_text_pooled": pooled, "effnet": effnet}
    null = None
    if scale > 1:
        _, n_pooled = model.encode_prompts(negative_prompts(negative_prompt, len(prompts)), decoder=not model.combined)
        null = {"clip_text_pooled": n_pooled, "effnet": torch.zeros_like(effnet)}
    x = _start(model.decoder_shape(embeddings), latents, generator, model.decoder, model.device, "decoder latents")
    return wuerstchen_ddpm(_guided(model.decoder, scale, cond, null), x, grid, generator=generator,
                           progress=progress, **_scheduler_options(model.scheduler))


def _scheduler_options(config: dict) -> dict:
    return {"s": float(config.get("s", 0.008)), "scaler": float(config.get("scaler", 1.0))}


def check_combined_scales(combined: bool, prior_scale: float, decoder_scale: float) -> None:
    """One line for a combined folder's decoder CFG (s > 1) without the prior's: ``StableCascadeCombinedPipeline``
    hands the decoder the prior's negative embeddings, which exist only under the prior's CFG (diffusers fails)."""
    if combined and prior_scale <= 1 < decoder_scale:
        raise DiffkitError(f"guidance scales {prior_scale:g} (prior) and {decoder_scale:g} (decoder) are not allowed "
                           f"on a {COMBINED_PIPELINE} folder: its decoder's CFG takes the prior's negative embeddings, "
                           f"made only under the prior's CFG; raise the prior's scale above 1 or the decoder's to at "
                           f"most 1")


def text_to_image(model: StableCascade, prompts: Union[str, Sequence[str]], *, negative_prompt=None,
                  guidance_scale: float = PRIOR_GUIDANCE, steps: int = PRIOR_STEPS,
                  decoder_guidance_scale: float = DECODER_GUIDANCE, decoder_steps: int = DECODER_STEPS,
                  height=None, width=None, generator=None, progress: bool = False, return_latents: bool = False,
                  images=None):
    """Images in [0, 1] of the prior then the decoder then the VQGAN (module docstring), every draw from
    ``generator`` (one, or one per prompt); ``return_latents``: (prior embeddings, decoder latents) instead;
    ``images``: the prior's image prompts (:func:`prior_embeddings`)."""
    from .stable_diffusion import prompt_list
    prompts = prompt_list(prompts)
    scales = (_checked_scale(guidance_scale, "guidance_scale"),
              _checked_scale(decoder_guidance_scale, "decoder guidance_scale"))
    if negative_prompt is not None and max(scales) <= 1:
        raise DiffkitError(f"a negative prompt with guidance scales {scales[0]:g} (prior) and {scales[1]:g} "
                           f"(decoder) is not allowed: it feeds only CFG (a scale > 1); raise one or drop it")
    check_combined_scales(model.combined, *scales)
    embeddings = prior_embeddings(model, prompts, negative_prompt=negative_prompt, guidance_scale=guidance_scale,
                                  steps=steps, height=height, width=width, generator=generator, progress=progress,
                                  images=images)
    latents = decoder_latents(model, embeddings, prompts, negative_prompt=negative_prompt,
                              guidance_scale=decoder_guidance_scale, steps=decoder_steps, generator=generator,
                              progress=progress)
    return (embeddings, latents) if return_latents else model.decode(latents)


def load_stable_cascade(prior_dir: Union[str, Path], decoder_dir: Union[str, Path, None] = None, device="cpu",
                        dtype: torch.dtype = torch.float32, progress: bool = True,
                        images: bool = False) -> StableCascade:
    """Load a prior folder and a decoder folder, or (``decoder_dir`` None) a ``StableCascadeCombinedPipeline``
    folder holding both (never downloads, never unpickles); ``images``: the prior's image encoder too (image prompts,
    :mod:`.stable_cascade_image`). What diffkit does not drive is refused in one line before any weight is read
    (:func:`check_prior_folder`, :func:`check_decoder_folder`, :func:`check_combined_folder`)."""
    from . import from_pretrained, library_progress_bars
    from .sd3 import _entry
    diffusers, transformers = require("diffusers"), require("transformers")
    prior_dir = Path(prior_dir)
    combined = decoder_dir is None
    if combined:
        prior_index, prior_config, prior_sched, sched = check_combined_folder(prior_dir, images)
        decoder_dir, decoder_index, prefix, decoder_flag = prior_dir, prior_index, COMBINED_PREFIX, "--checkpoint"
    else:
        prior_index, prior_config, prior_sched = check_prior_folder(prior_dir, images)
        decoder_dir, prefix, decoder_flag = Path(decoder_dir), "", "--decoder"
        decoder_index, _, sched = check_decoder_folder(decoder_dir, prior_config.get("out_channels", 16))
    common = {"local_files_only": True, "torch_dtype": dtype, "use_safetensors": True}
    from diffusers.pipelines.deprecated.wuerstchen import PaellaVQModel
    device = torch.device(device)
    parts = {}
    with library_progress_bars(progress):
        for folder, index, unet, key, sub, flag in (
                (prior_dir, prior_index, "prior", "prior_", prefix, "--checkpoint"),
                (decoder_dir, decoder_index, "decoder", "", "", decoder_flag)):
            parts[unet] = from_pretrained(diffusers.StableCascadeUNet, folder / (sub + unet), flag, **common)
            parts[key + "text_encoder"] = from_pretrained(transformers.CLIPTextModelWithProjection,
                                                          folder / (sub + "text_encoder"), flag, **common)
            tok_cls = getattr(transformers, _entry(index, sub + "tokenizer") or "", None) or transformers.AutoTokenizer
            parts[key + "tokenizer"] = from_pretrained(tok_cls, folder / (sub + "tokenizer"), local_files_only=True)
        parts["vqgan"] = from_pretrained(PaellaVQModel, decoder_dir / "vqgan", decoder_flag, **common)
        if images:
            from .stable_cascade_image import load_image_encoder
            parts["image_encoder"] = load_image_encoder(prior_dir, prefix, "--checkpoint", dtype, device)
            parts["feature_extractor"] = (prior_dir, prefix + "feature_extractor", "--checkpoint")
    for name in ("prior", "prior_text_encoder", "decoder", "text_encoder", "vqgan"):
        parts[name].to(device).eval().requires_grad_(False)
    return StableCascade(**parts, prior_scheduler=prior_sched, scheduler=sched,
                         resolution_multiple=float(prior_index.get("resolution_multiple", RESOLUTION_MULTIPLE)),
                         latent_dim_scale=float(decoder_index.get("latent_dim_scale", LATENT_DIM_SCALE)),
                         device=device, dtype=dtype, combined=combined)


__all__ = ["StableCascade", "load_stable_cascade", "text_to_image", "prior_embeddings", "decoder_latents",
           "wuerstchen_alpha_bar", "wuerstchen_step", "wuerstchen_grid", "wuerstchen_ddpm", "is_stable_cascade_folder",
           "stable_cascade_kind", "check_prior_folder", "check_decoder_folder", "check_combined_folder",
           "PRIOR_PIPELINE", "DECODER_PIPELINE", "COMBINED_PIPELINE"]
