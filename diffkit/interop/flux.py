"""A FLUX.1 diffusers folder (``FluxPipeline``: FLUX.1-dev, FLUX.1-schnell), sampled with any diffkit sampler.

FLUX.1 (Black Forest Labs 2024) is a rectified-flow model as SD3 (Esser et al. 2024, Sec. 2, eq. 1 with
a_t = 1 - t, b_t = t: x_s = (1 - s) x_0 + s eps) whose ``FluxTransformer2DModel`` predicts the velocity
u = eps - x_0 of the latents of a 16-channel ``AutoencoderKL`` (``scaling_factor``, ``shift_factor``). diffkit runs
it as :mod:`.sd3`: a flow-prediction :class:`~diffkit.denoiser.Denoiser` on ``NoiseSchedule.flow(T, shift)``, the
network called at the flow time s T. Every diffusers 0.42 ``FluxPipeline`` step is reproduced:

* prompts (``encode_prompt``): the CLIP text encoder's pooled output (``text_encoder``, a ``CLIPTextModel``,
  ``pooler_output``, tokenised to ``model_max_length``) -> ``pooled_projections``; the T5 encoder's last states
  (``text_encoder_2``, ``max_sequence_length`` tokens, default 512) -> ``encoder_hidden_states``; ``txt_ids``
  zeros (L, 3). ``prompt_2`` (T5's text) defaults to the prompt.
* latents: diffkit samples z (B, C, h, w) as the pipeline draws it (``randn`` in that shape); the network packs it
  into 2 x 2 patches (B, h w / 4, 4 C) with the image ids (0, row, column) of the patch grid, and unpacks the
  velocity (the pipeline's ``_pack_latents``, ``_prepare_latent_image_ids``, ``_unpack_latents``): a permutation,
  so every step is the pipeline's on the same numbers.
* time: the transformer gets the pipeline's ``timestep / 1000`` = s T / 1000 (it multiplies by 1000 itself).
* guidance: FLUX.1-dev's transformer embeds a guidance value (``guidance_embeds``: the pipeline's
  ``guidance_scale``, default 3.5, passed to every call; no second pass); FLUX.1-schnell's has none. True
  classifier-free guidance (``true_cfg_scale`` > 1 with a ``negative_prompt``): u = u_neg + s (u_c - u_neg), both
  calls with the same guidance value; diffkit's :class:`~diffkit.guidance.ClassifierFreeGuidance` (diffusers
  convention) is that step, as for SD3.
* the time grid (:meth:`Flux.scheduler_grid`): sigmas = linspace(1, 1/N, N), then the folder's
  ``FlowMatchEulerDiscreteScheduler.set_timesteps(sigmas=..., mu=mu)`` with the pipeline's ``calculate_shift``
  mu = m L + b of the packed sequence length L = h w / 4 (the line through (base_image_seq_len, base_shift) and
  (max_image_seq_len, max_shift)); ``use_dynamic_shifting`` shifts by e^mu / (e^mu + 1/s - 1) (``time_shift_type``
  "exponential") or mu / (mu + 1/s - 1) ("linear"), otherwise by the scheduler's fixed ``shift``. Each sigma is
  placed at the VP time of equal SNR (:func:`.flow_latents.flow_sigmas_grid`); DDIM (eta 0) there is the
  scheduler's Euler step. The diffkit schedule of a size is ``NoiseSchedule.flow(T, shift)`` with that size's
  effective shift (e^mu, mu, or ``shift``: the same map of s), so any other sampler's own grid is shifted as the
  pipeline's at that resolution.
* decoding: x = D(z / scaling_factor + shift_factor), images (x / 2 + 0.5).clamp(0, 1).
* LoRA files (``load_flux(lora=)``): diffusers / PEFT ``transformer.`` / ``text_encoder.`` keys fused as
  ``load_lora_weights`` + ``fuse_lora`` (:mod:`.sd_lora`, as SD3), and kohya / BFL-format ones (``lora_unet_`` /
  ``diffusion_model.`` keys, :mod:`.flux_lora`: converted to diffusers' layers as diffusers converts them).
* IP-Adapters (XLabs format, ``text_to_image(ip_adapter=)``): :mod:`.flux_ip_adapter`.
* textual-inversion files (``load_flux(textual_inversion=)``): added to the CLIP tokenizer and text encoder as
  ``FluxPipeline.load_textual_inversion`` (:mod:`.sd_textual_inversion`); T5 reads the prompt as given.
* img2img and inpainting (:func:`image_to_image`): ``FluxImg2ImgPipeline`` / ``FluxInpaintPipeline``, SD3's latent
  img2img and replacement inpainting (:func:`.flow_latents.edit_latents`) with this network.
* FLUX.1 Kontext folders (``FluxKontextPipeline``, ``FluxKontextInpaintPipeline``): image editing with the reference
  image's latents as extra tokens (``FluxNet``'s ``kontext``, :func:`image_to_image`'s for inpainting),
  :mod:`.flux_kontext`.
* given ``prompt_embeds`` / ``pooled_prompt_embeds`` (:func:`text_to_image`), e.g. FLUX.1 Redux's image prompt
  (``FluxPriorReduxPipeline``; its folder is no checkpoint, one line): :mod:`.flux_redux`.

FLUX.1 Fill (``FluxFillPipeline``) and Depth / Canny (``FluxControlPipeline``) folders: :mod:`.flux_channels`;
Kontext (``FluxKontextPipeline`` / ``FluxKontextInpaintPipeline``): :mod:`.flux_kontext`.
Refused in one line before any weight is read: the Redux pipeline and any transformer whose input is
not 4 x the VAE's latent channels (Fill's and Depth / Canny's: theirs), an ``image_encoder``
(an IP-Adapter's is given apart, :mod:`.flux_ip_adapter`), a ``controlnet``, a transformer / VAE / scheduler of
another class, a VAE without ``shift_factor``, ``invert_sigmas`` or ``stochastic_sampling`` schedulers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from ..errors import DiffkitError, check_choice, check_float32, read_json_object
from . import model_dtype, require
from .flow_latents import (FlowLatentVAE, check_flow_configs, finish_images, flow_sigmas_grid,
                           load_flow_parts, names_pipeline, pipeline_grid, start_latents)
from .sd3 import _per_prompt
from .sd_xl import _index

FLUX_TRANSFORMER = "FluxTransformer2DModel"
FLUX_PIPELINES = ("FluxPipeline", "FluxImg2ImgPipeline", "FluxInpaintPipeline",  # the text-to-image folder layout
                  "FluxKontextPipeline", "FluxKontextInpaintPipeline")  # (FLUX.1 Kontext: .flux_kontext)
REQUIRED = ("transformer", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "scheduler")
FLUX_PIPELINE_GUIDANCE = 3.5  # FluxPipeline's default guidance_scale (the embedded value)
FLUX_PIPELINE_STEPS = 28  # its default num_inference_steps
MAX_SEQUENCE_LENGTH = 512  # its default T5 length (and the most it takes)
DEFAULT_SAMPLE_SIZE = 128  # its default_sample_size (latent pixels; images 128 f)
FLUX_IMG2IMG_STRENGTH = 0.6  # FluxImg2ImgPipeline's default strength
FLUX_IMG2IMG_GUIDANCE = 7.0  # and its default guidance_scale (the embedded value)
NO_EDIT_CONTROLNET_IP = ("an IP-Adapter with a FLUX ControlNet in img2img / inpainting is not supported: diffusers "
                         "0.42.1's FluxControlNetImg2ImgPipeline / FluxControlNetInpaintPipeline take no "
                         "ip_adapter_image (no reference pipeline); drop the IP-Adapter or the ControlNet")
_SHIFT_DEFAULTS = {"base_image_seq_len": 256, "max_image_seq_len": 4096, "base_shift": 0.5, "max_shift": 1.15}


def scheduler_shift(config: dict, mu, h: int, w: int) -> float:
    """The flow shift a FlowMatchEulerDiscreteScheduler ``config`` applies at latents h x w: e^mu (``use_dynamic_
    shifting``, ``time_shift_type`` "exponential"; ``mu()`` the pipeline's), mu ("linear"), or its fixed ``shift``:
    ``time_shift`` maps sigma to e^mu / (e^mu + 1/sigma - 1) (or mu / (mu + 1/sigma - 1)), SD3 eq. 23's shift map."""
    if not config.get("use_dynamic_shifting", False):
        return float(config.get("shift", 1.0))
    mu = mu()
    if config.get("time_shift_type", "exponential") == "exponential":
        shift = math.exp(min(mu, 709.0))  # (math.exp overflows past 709.78: refused below all the same)
    elif mu <= 0:
        raise DiffkitError(f"the scheduler's linear time shift mu={mu:g} at latents {h}x{w} is not positive")
    else:
        shift = mu
    from ..schedule import NoiseSchedule
    try:  # a huge image's mu: every sigma 1 (the flow schedule's betas NaN, diffusers' sigmas 0 / 0)
        NoiseSchedule.flow(int(config.get("num_train_timesteps", 1000)), shift)
    except DiffkitError:
        raise DiffkitError(f"the scheduler's resolution-dependent shift at latents {h}x{w} (mu={mu:.4g}, shift "
                           f"{shift:.4g}) pushes every sigma to 1; give a smaller --height / --width") from None
    return shift


def pack_latents(z: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, (h/2)(w/2), 4C): 2 x 2 patches, channel-major within a patch (``_pack_latents``)."""
    b, c, h, w = z.shape
    return z.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The inverse of :func:`pack_latents` for latents of height h and width w (``_unpack_latents``)."""
    b, _, channels = x.shape
    return x.view(b, h // 2, w // 2, channels // 4, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, channels // 4, h, w)


def latent_image_ids(h: int, w: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """((h/2)(w/2), 3) ids (0, row, column) of the patch grid of latents h x w (``_prepare_latent_image_ids``)."""
    ids = torch.zeros(h // 2, w // 2, 3)
    ids[..., 1] = ids[..., 1] + torch.arange(h // 2)[:, None]
    ids[..., 2] = ids[..., 2] + torch.arange(w // 2)[None, :]
    return ids.reshape(-1, 3).to(device=device, dtype=dtype)


def calculate_shift(image_seq_len: int, config: dict, defaults: Optional[dict] = None) -> float:
    """FluxPipeline's mu: linear in the packed sequence length through (base_image_seq_len, base_shift) and
    (max_image_seq_len, max_shift) of the scheduler ``config`` (``defaults`` for missing keys: 256, 4096, 0.5, 1.15;
    the SD3 pipelines read max_shift 1.16, :mod:`.sd3`)."""
    c = {k: config.get(k, v) for k, v in (defaults or _SHIFT_DEFAULTS).items()}
    m = (c["max_shift"] - c["base_shift"]) / (c["max_image_seq_len"] - c["base_image_seq_len"])
    b = c["base_shift"] - m * c["base_image_seq_len"]
    return image_seq_len * m + b


class FluxNet(torch.nn.Module):
    """``net(z, t, context, pooled, guidance)`` over a diffusers ``FluxTransformer2DModel`` on unpacked latents z
    (B, C, h, w): packed with their image ids, ``t`` (float32 flow times s T) -> ``timestep`` t / 1000,
    ``guidance`` (a number or None) -> the embedded guidance; the velocity unpacked, in z's dtype."""

    time_divisor = 1000  # timestep = t / this (Bria's transformer takes the flow time s T itself: 1, .bria)

    def __init__(self, transformer):
        super().__init__()
        self.model = transformer

    def packed_inputs(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> dict:
        """The keyword arguments every FLUX-style transformer call takes (FLUX.1's, Chroma's :mod:`.chroma`): the
        packed latents, ``timestep`` t / :attr:`time_divisor` (1000), the text states with zero ``txt_ids``, the
        patch grid's ``img_ids``."""
        h, w = x.shape[2:]
        return self.token_inputs(pack_latents(x), latent_image_ids(h, w, x.device, context.dtype), t, context)

    def token_inputs(self, tokens: torch.Tensor, img_ids: torch.Tensor, t: torch.Tensor,
                     context: torch.Tensor) -> dict:
        """:meth:`packed_inputs` of tokens (B, L, 4 C) already packed, with their ``img_ids`` (L, 3) (a VisualCloze
        grid's rows, :mod:`.visualcloze`)."""
        dtype, b = model_dtype(self.model), tokens.shape[0]
        t = torch.as_tensor(t, device=tokens.device, dtype=torch.float32).reshape(-1).expand(b)
        return dict(hidden_states=tokens.to(dtype), timestep=t.to(dtype) / self.time_divisor,
                    encoder_hidden_states=context.to(dtype),
                    txt_ids=torch.zeros(context.shape[1], 3, device=tokens.device, dtype=context.dtype),
                    img_ids=img_ids)

    def inputs(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, pooled: torch.Tensor,
               guidance: Optional[float], kontext: Optional[torch.Tensor] = None) -> dict:
        """The transformer's keyword arguments (the pipeline's, which its ControlNets take too) for this call;
        ``kontext``: a reference image's unpacked latents, appended as tokens (:func:`.flux_kontext.kontext_tokens`)."""
        if context is None or pooled is None:
            raise DiffkitError("a FLUX transformer needs cond {'context', 'pooled'} (Flux.encode_prompts)")
        dtype = model_dtype(self.model)
        if guidance is not None:
            guidance = torch.full((x.shape[0],), float(guidance), device=x.device, dtype=torch.float32)
        inputs = dict(self.packed_inputs(x, t, context), guidance=guidance, pooled_projections=pooled.to(dtype))
        if kontext is not None:
            from .flux_kontext import kontext_tokens
            kontext_tokens(inputs, kontext.to(device=x.device, dtype=dtype))
        return inputs

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor = None, pooled: torch.Tensor = None,
                guidance: Optional[float] = None, controls: Optional[dict] = None,
                attention_kwargs: Optional[dict] = None, kontext: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``controls``: ControlNet residuals, the transformer's ``controlnet_block_samples`` /
        ``controlnet_single_block_samples`` / ``controlnet_blocks_repeat`` (:mod:`.flux_controlnet`);
        ``attention_kwargs``: its ``joint_attention_kwargs`` (an IP-Adapter's image embeds, :mod:`.flux_ip_adapter`);
        ``kontext``: FLUX.1 Kontext's reference latents (:mod:`.flux_kontext`; their tokens' outputs dropped)."""
        extra = dict(controls or {})
        if attention_kwargs is not None:
            extra["joint_attention_kwargs"] = attention_kwargs
        out = self.model(**self.inputs(x, t, context, pooled, guidance, kontext), **extra, return_dict=False)[0]
        if kontext is not None:  # the pipeline's noise_pred[:, :latents.size(1)]
            out = out[:, :(x.shape[2] // 2) * (x.shape[3] // 2)]
        return unpack_latents(out, *x.shape[2:]).to(x.dtype)


@dataclass
class Flux(FlowLatentVAE):
    """The loaded components of a FLUX.1 folder (:func:`load_flux`); a Fill / Depth / Canny one's
    transformer takes extra channels (:attr:`variant`, :mod:`.flux_channels`)."""

    transformer: object
    vae: object
    text_encoder: object
    tokenizer: object
    text_encoder_2: object
    tokenizer_2: object
    scheduler_config: dict
    device: torch.device
    dtype: torch.dtype = torch.float32
    _denoisers: dict = field(default_factory=dict, repr=False)
    prompt_expansions: dict = field(default_factory=dict)  # multi-vector textual inversion (CLIP prompts only)

    @property
    def guidance_embeds(self) -> bool:
        """True for a guidance-distilled transformer (FLUX.1-dev), False for FLUX.1-schnell."""
        return bool(self.transformer.config.guidance_embeds)

    @property
    def variant(self) -> Optional[str]:
        """``"FluxFillPipeline"`` / ``"FluxControlPipeline"`` for a FLUX.1 Fill / Depth / Canny transformer (extra
        input channels, :mod:`.flux_channels`), None for the text-to-image one."""
        from .flux_channels import variant
        return variant(self.transformer.config, int(self.vae.config.latent_channels), self.vae_scale_factor)

    @property
    def inpainting_unet(self) -> bool:
        """A FLUX.1 Fill transformer, which only inpaints (the hook :func:`~diffkit.latent_editing.latent_inpaint`
        reads: :func:`.sd_inpaint.unet_inpaint`, with :meth:`fill_mask` and :attr:`inpaint_encodes_image`)."""
        from .flux_channels import FLUX_FILL
        return self.variant == FLUX_FILL

    inpaint_encodes_image = True  # FluxFillPipeline draws the image's posterior at strength 1 too (then pure noise)

    def fill_mask(self, mask: torch.Tensor, size) -> torch.Tensor:
        """FluxFillPipeline's mask channels (B, f^2, h, w) of a pixel mask (:func:`.flux_channels.fill_mask`)."""
        from .flux_channels import fill_mask
        return fill_mask(mask, self.vae_scale_factor)

    # ------------------------------------------------------------------ shapes and schedules
    default_image_size = None  # None: 128 f, the pipeline's default_sample_size (Z-Image's: 1024, .z_image)

    def latent_shape(self, batch: int, height: Optional[int] = None, width: Optional[int] = None) -> tuple:
        """(batch, out_channels / 4 (the latents' C), height / f, width / f); default 128 f (the pipeline's
        default_sample_size); height and width multiples of 2 f (the pipeline floors other sizes with a warning)."""
        f = self.vae_scale_factor
        default = self.default_image_size or DEFAULT_SAMPLE_SIZE * f
        height = default if height is None else height
        width = default if width is None else width
        for value in (height, width):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value % (2 * f):
                raise DiffkitError(f"height x width {height}x{width} is not allowed; give positive multiples of "
                                   f"{2 * f} (the VAE factor {f} x the 2 x 2 packing)")
        return (batch, self.latent_channels(), height // f, width // f)

    def latent_channels(self) -> int:
        """The latents' C: the transformer's out_channels / 4 (its 2 x 2 packed tokens)."""
        config = self.transformer.config
        return int(config.get("out_channels") or config.in_channels) // 4  # (Bria's config has none)

    def mu(self, h: int, w: int, steps: Optional[int] = None) -> float:
        """The pipeline's mu for latents h x w (packed sequence length h w / 4; FLUX.1's does not depend on the
        ``steps``, FLUX.2's does: :meth:`.flux2.Flux2.mu`)."""
        return calculate_shift((h // 2) * (w // 2), self.scheduler_config)

    def shift(self, h: int, w: int, steps: Optional[int] = None) -> float:
        """The flow shift the scheduler applies at latents h x w (and ``steps``, :meth:`mu`'s): e^mu (dynamic,
        exponential), mu (dynamic, linear) or its fixed ``shift``."""
        return scheduler_shift(self.scheduler_config, lambda: self.mu(h, w, steps), h, w)

    def network(self) -> torch.nn.Module:
        """The velocity network over the transformer (:class:`FluxNet`; Chroma's: :class:`.chroma.ChromaNet`)."""
        return FluxNet(self.transformer)

    def denoiser_for(self, h: int, w: int, steps: Optional[int] = None):
        """The unguided flow-prediction Denoiser (cond: ``context``, ``pooled``, ``guidance``) on the flow schedule
        of latents h x w (:meth:`shift`; ``steps``: its)."""
        from ..denoiser import Denoiser
        from ..schedule import NoiseSchedule
        shift = self.shift(h, w, steps)
        if shift not in self._denoisers:
            schedule = NoiseSchedule.flow(int(self.scheduler_config.get("num_train_timesteps", 1000)), shift)
            from .flux_channels import wrap_net  # a Fill / Depth / Canny transformer's extra channels
            self._denoisers[shift] = Denoiser(wrap_net(self.network(), self.variant), schedule, "flow_prediction")
            self._denoisers[shift].model = self.transformer
        return self._denoisers[shift]

    @property
    def denoiser(self):
        """:meth:`denoiser_for` the default size."""
        return self.denoiser_for(*self.latent_shape(1)[2:])

    def scheduler_grid(self, steps: int, h: int, w: int) -> torch.Tensor:
        """diffkit's grid (on :meth:`denoiser_for` (h, w, steps)'s schedule) of the folder's scheduler after the
        pipeline's ``set_timesteps(sigmas=linspace(1, 1/steps, steps), mu=mu)`` at latents h x w."""
        self.check_scheduler_steps(steps)
        schedule = self.denoiser_for(h, w, steps).schedule  # first: a shift past the flow schedule is one line
        return flow_sigmas_grid(schedule, self.scheduler_sigmas(steps, h, w), steps)

    def scheduler_sigmas(self, steps: int, h: int, w: int) -> torch.Tensor:
        """The folder's scheduler's sigmas (final 0 included) after the pipeline's ``set_timesteps(sigmas=
        linspace(1, 1/steps, steps), mu=mu)`` at latents h x w (mu: :meth:`mu` of the ``steps``)."""
        diffusers = require("diffusers")
        self.check_scheduler_steps(steps)
        scheduler = diffusers.FlowMatchEulerDiscreteScheduler.from_config(self.scheduler_config)
        scheduler.set_timesteps(sigmas=self.input_sigmas(steps), mu=self.mu(h, w, steps))
        return scheduler.sigmas

    def input_sigmas(self, steps: int):
        """The sigmas the pipeline gives ``set_timesteps``: linspace(1, 1/steps, steps) (Bria's other branch:
        :meth:`.bria.Bria.input_sigmas`)."""
        import numpy as np
        return np.linspace(1.0, 1 / steps, steps)

    def check_scheduler_steps(self, steps) -> None:
        """One line for a step count the scheduler does not take: no positive integer, or 1 with a
        ``shift_terminal`` (Qwen-Image's 0.02)."""
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise DiffkitError(f"steps={steps!r} is not allowed; give a positive integer")
        if steps == 1 and self.scheduler_config.get("shift_terminal"):
            raise DiffkitError(f"steps=1 is not allowed with the scheduler's shift_terminal="
                               f"{self.scheduler_config['shift_terminal']!r} (its stretch of the one sigma 1 is 0 / 0: "
                               f"the pipeline's sigmas are NaN); give steps >= 2")

    # ------------------------------------------------------------------ prompts
    def check_guidance_scale(self, guidance_scale: Optional[float]) -> None:
        """A one-line DiffkitError for an embedded guidance value the transformer does not take (none without
        guidance embeds) or that is not a finite number."""
        if guidance_scale is None:
            return
        if not self.guidance_embeds:
            raise DiffkitError(f"guidance_scale={guidance_scale!r} is not allowed: this FLUX transformer has no "
                               f"guidance embedding (guidance_embeds false, FLUX.1-schnell); drop it")
        if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)) \
                or not math.isfinite(guidance_scale):
            raise DiffkitError(f"guidance_scale={guidance_scale!r} is not allowed; give a finite number (the "
                               f"embedded guidance, FLUX.1-dev's default {FLUX_PIPELINE_GUIDANCE})")
        check_float32("guidance_scale", guidance_scale)

    def encode_prompts(self, prompts: Sequence[str], max_sequence_length: int = MAX_SEQUENCE_LENGTH,
                       prompts_2=None) -> tuple:
        """(context (B, max_sequence_length, d_T5), pooled (B, d_CLIP)) as the pipeline's ``encode_prompt``;
        ``prompts_2``: T5's text (one, or one per prompt; default the prompts). A multi-vector textual-inversion
        token is expanded in CLIP's text only (FluxPipeline's ``maybe_convert_prompt`` with ``tokenizer``; with
        ``tokenizer_2`` it finds no added token, so T5 reads the prompt as given)."""
        from .sd_textual_inversion import expand_prompt
        from .stable_diffusion import prompt_list
        prompts = prompt_list(prompts)
        prompts_2 = _per_prompt(prompts_2, prompts, "prompt_2")
        prompts = [expand_prompt(p, self.tokenizer, self.prompt_expansions) for p in prompts]
        if isinstance(max_sequence_length, bool) or not isinstance(max_sequence_length, int) \
                or not 1 <= max_sequence_length <= 512:
            raise DiffkitError(f"max_sequence_length={max_sequence_length!r} is not allowed; allowed: 1..512 "
                               f"(FluxPipeline's T5 length)")
        clip = self.tokenizer(prompts, padding="max_length", max_length=self.tokenizer.model_max_length,
                              truncation=True, return_tensors="pt")
        t5 = self.tokenizer_2(prompts_2, padding="max_length", max_length=max_sequence_length, truncation=True,
                              return_tensors="pt")
        with torch.no_grad():
            pooled = self.text_encoder(clip.input_ids.to(self.device)).pooler_output.to(self.text_encoder.dtype)
            context = self.text_encoder_2(t5.input_ids.to(self.device))[0].to(self.text_encoder_2.dtype)
        return context, pooled

    def prompt_guidance(self, prompts, h: int, w: int, guidance_scale: Optional[float] = None,
                        negative_prompt=None, true_cfg_scale: float = 1.0,
                        max_sequence_length: int = MAX_SEQUENCE_LENGTH, prompts_2=None,
                        negative_prompt_2=None, ip_adapter=None, embeds: Optional[tuple] = None) -> tuple:
        """(denoiser, cond) at latents h x w: the embedded ``guidance_scale`` (default 3.5; a transformer without
        guidance embeds takes none) and true classifier-free guidance with ``true_cfg_scale`` > 1 against
        ``negative_prompt`` (one, or one per prompt; ``negative_prompt_2``: T5's, default ``negative_prompt``).
        ``ip_adapter``: a :class:`~.flux_ip_adapter.FluxIPAdapter` (its image embeds in cond, the negative image's
        in the true-CFG pass). ``embeds``: (context, pooled) given instead of the prompts' (the pipeline's
        ``prompt_embeds`` / ``pooled_prompt_embeds``, :func:`given_embeds`)."""
        from ..guidance import ClassifierFreeGuidance
        from .stable_diffusion import negative_prompts
        self.check_guidance_scale(guidance_scale)
        check_true_cfg(true_cfg_scale, negative_prompt)
        if getattr(ip_adapter, "negative_image", None) is not None and true_cfg_scale <= 1:
            raise DiffkitError("a negative IP-Adapter image feeds only true CFG's negative pass; give true_cfg_scale "
                               "> 1 with a negative prompt, or drop it")
        if negative_prompt_2 is not None and true_cfg_scale <= 1:  # (FluxPipeline ignores it then, silently)
            raise DiffkitError(f"negative_prompt_2={negative_prompt_2!r} feeds only true CFG's negative pass; give "
                               f"true_cfg_scale > 1 with a negative prompt, or drop it")
        context, pooled = self.encode_prompts(prompts, max_sequence_length, prompts_2) if embeds is None else embeds
        cond = {"context": context, "pooled": pooled}
        if self.guidance_embeds:
            cond["guidance"] = FLUX_PIPELINE_GUIDANCE if guidance_scale is None else float(guidance_scale)
        denoiser, batch, null_ip = self.denoiser_for(h, w), context.shape[0], {}
        if ip_adapter is not None:
            denoiser, positive, negative = ip_adapter.flux_parts(self, h, w)
            cond["ip_image_embeds"] = positive.expand(batch, *positive.shape[1:])
            null_ip = {"ip_image_embeds": negative}
        if true_cfg_scale <= 1:
            return denoiser, cond
        negatives = [negative_prompts(negative_prompt, batch)]
        negatives.append(negative_prompts(negative_prompt_2, batch) if negative_prompt_2 else negatives[0])
        if all(len(set(rows)) == 1 for rows in negatives):
            negatives = [rows[:1] for rows in negatives]  # one row, broadcast by the guidance to every sample
        null_context, null_pooled = self.encode_prompts(negatives[0], max_sequence_length, negatives[1])
        guided = ClassifierFreeGuidance(denoiser, float(true_cfg_scale), "diffusers", null_context=null_context,
                                        null_cond={"pooled": null_pooled, **null_ip})
        return guided, cond


def check_true_cfg(true_cfg_scale, negative_prompt) -> None:
    """One line unless ``true_cfg_scale`` is a finite float32 number and true CFG gets both it (> 1) and a negative
    prompt, or neither (FluxPipeline's, HunyuanVideoPipeline's ``do_true_cfg``, which would drop a lone one)."""
    if isinstance(true_cfg_scale, bool) or not isinstance(true_cfg_scale, (int, float)) \
            or not math.isfinite(true_cfg_scale):
        raise DiffkitError(f"true_cfg_scale={true_cfg_scale!r} is not allowed; give a number (> 1: true CFG)")
    check_float32("true_cfg_scale", true_cfg_scale)
    if (true_cfg_scale > 1) != (negative_prompt is not None):
        raise DiffkitError(f"true_cfg_scale={true_cfg_scale!r} with negative_prompt={negative_prompt!r} is not "
                           f"allowed: true CFG takes both (true_cfg_scale > 1 and a negative prompt, '' for the "
                           f"empty one), or neither")


def given_embeds(flux: Flux, prompt_embeds, pooled_prompt_embeds, batch: Optional[int], **others) -> tuple:
    """(context (B, L, d_T5), pooled (B, d_CLIP)) of :func:`text_to_image`'s ``prompt_embeds`` /
    ``pooled_prompt_embeds`` (FluxPipeline's; e.g. FLUX.1 Redux's, :mod:`.flux_redux`): both, of the transformer's
    widths, one row (every sample: ``batch``, the latents', default 1) or ``batch`` rows; one line otherwise, or
    with any of ``others`` given (prompts or ``prompt_2``, which the pipelines refuse with embeddings)."""
    config = flux.transformer.config
    given = [name for name, value in others.items() if value is not None]
    if given:
        raise DiffkitError(f"prompt_embeds with {given[0]} is not supported; give the embeddings alone (with "
                           f"{', '.join(others)} None)")
    if not isinstance(prompt_embeds, torch.Tensor) or not isinstance(pooled_prompt_embeds, torch.Tensor) \
            or prompt_embeds.ndim != 3 or prompt_embeds.shape[2] != config.joint_attention_dim \
            or tuple(pooled_prompt_embeds.shape) != (prompt_embeds.shape[0], config.pooled_projection_dim):
        shapes = [tuple(getattr(t, "shape", ())) if t is not None else None
                  for t in (prompt_embeds, pooled_prompt_embeds)]
        raise DiffkitError(f"prompt_embeds / pooled_prompt_embeds of shapes {shapes} are not allowed; give both, "
                           f"(B, L, {config.joint_attention_dim}) and (B, {config.pooled_projection_dim})")
    rows = prompt_embeds.shape[0]
    batch = rows if batch is None else batch
    if rows not in (1, batch):
        raise DiffkitError(f"prompt_embeds has {rows} rows for {batch} samples; give one row or one per sample")
    return (prompt_embeds.to(flux.device).expand(batch, -1, -1),
            pooled_prompt_embeds.to(flux.device).expand(batch, -1))


NO_EMBEDS_CONTROLNET_TRUE_CFG = (
    "true CFG (a negative prompt) with a FLUX ControlNet and given prompt_embeds (FLUX.1 Redux's) is not supported: "
    "the embeddings' tokens outnumber the negative prompt's, and the ControlNet shares its residuals with the "
    "negative pass in one batched call; drop the negative prompt or the ControlNet")
NO_EMBEDS_EDIT_TRUE_CFG = (
    "true CFG (a negative prompt) with given prompt_embeds (FLUX.1 Redux's) is not supported in a FLUX img2img / "
    "inpainting edit: FluxImg2ImgPipeline / FluxInpaintPipeline give the negative pass the embeddings' text ids, "
    "which fails for the negative prompt's other length (diffusers 0.42.1); drop the negative prompt (a FLUX.1 "
    "Kontext folder takes it)")


def embedded_prompts(flux: Flux, prompts, prompt_embeds, pooled_prompt_embeds, batch: Optional[int],
                     **others) -> tuple:
    """(prompts, embeds) of a FLUX function's ``prompts`` / ``prompt_embeds`` / ``pooled_prompt_embeds``:
    ``(prompts, None)`` without embeddings, else ("" per row: placeholders, nothing is encoded) and
    :func:`given_embeds` (``batch`` rows, or the embeddings' own; ``others``: refused with them). The one hook by
    which given embeddings (FLUX.1 Redux's, :mod:`.flux_redux`) replace the prompts in :func:`text_to_image`,
    :func:`image_to_image` and :func:`.flux_kontext.kontext_edit`."""
    if prompt_embeds is None and pooled_prompt_embeds is None:
        return prompts, None
    embeds = given_embeds(flux, prompt_embeds, pooled_prompt_embeds, batch, prompts=prompts, **others)
    return [""] * embeds[0].shape[0], embeds


def is_flux_folder(path: Union[str, Path]) -> bool:
    """True for a diffusers folder of a FLUX pipeline: ``model_index.json`` names a ``Flux...`` class or a
    ``FluxTransformer2DModel`` transformer (so that ``diffkit sample --checkpoint`` dispatches); not a FLUX.2 one
    (``Flux2...``: :mod:`.flux2`)."""
    from .flux2 import is_flux2_folder
    return names_pipeline(path, "Flux", FLUX_TRANSFORMER) and not is_flux2_folder(path)


def check_flux_folder(directory: Path, visualcloze: bool = False) -> tuple:
    """(index, scheduler config) of a FLUX.1 folder that :func:`load_flux` drives; anything else is a one-line
    DiffkitError (module docstring), from the JSON files alone. ``visualcloze``: a VisualCloze folder's (its
    transformer FLUX.1 Fill's, :mod:`.visualcloze`), which is refused otherwise."""
    index = _index(directory)
    if index is None or not is_flux_folder(directory):
        raise DiffkitError(f"{directory} is not a FLUX folder (model_index.json naming a FluxPipeline with a "
                           f"{FLUX_TRANSFORMER} transformer)")
    if index.get("_class_name") == "FluxPriorReduxPipeline":  # FLUX.1 Redux: an image prompt (.flux_redux)
        raise DiffkitError(f"{directory} is a FLUX.1 Redux folder (FluxPriorReduxPipeline): give it as --redux DIR "
                           f"with --redux-image PNG and a FLUX.1 --checkpoint (library: flux_redux.redux_embeds)")
    kind = index.get("_class_name")
    from .flux_channels import FLUX_CONTROL, FLUX_FILL, in_channels
    from .visualcloze import VISUALCLOZE_PIPELINES, not_visualcloze
    if kind in VISUALCLOZE_PIPELINES and not visualcloze:
        raise not_visualcloze(directory, kind)
    kinds = FLUX_PIPELINES + (FLUX_FILL, FLUX_CONTROL) + (VISUALCLOZE_PIPELINES if visualcloze else ())
    if kind not in kinds:
        raise DiffkitError(f"{directory} is a {kind!r} folder (FLUX.1 Redux ...), "
                           f"which diffkit does not drive; allowed: {', '.join(kinds)}")
    vae, transformer = check_flow_configs(directory, index, REQUIRED, "FLUX", FLUX_TRANSFORMER)
    latents = int(vae.get("latent_channels", 4))
    channels = in_channels(FLUX_FILL if kind in VISUALCLOZE_PIPELINES else kind, latents,  # VisualCloze: Fill's
                           2 ** (len(vae.get("block_out_channels", [64])) - 1))
    if transformer.get("in_channels", 64) != channels:
        raise DiffkitError(f"{directory}'s transformer has in_channels={transformer.get('in_channels', 64)!r} (Fill "
                           f"/ Depth / Canny models add image channels); allowed: {channels} (4 x the VAE's latents"
                           f"{'' if kind in FLUX_PIPELINES else ' + the ' + kind + ' extra channels'})")
    if transformer.get("out_channels") not in (None, 4 * latents):
        raise DiffkitError(f"{directory}'s transformer has out_channels={transformer['out_channels']!r}; allowed: "
                           f"{4 * latents} (4 x the VAE's latents) or null")
    return index, check_flux_scheduler(directory)


def check_flux_scheduler(directory: Path, pipeline: str = "FluxPipeline", fixed_shift: bool = False) -> dict:
    """The folder's scheduler config, whose flow Euler loop (``pipeline``'s) diffkit runs: no ``invert_sigmas``,
    ``stochastic_sampling`` or ``use_flow_sigmas``, an exponential or linear ``time_shift_type``; with
    ``fixed_shift`` (a pipeline that passes no mu: ERNIE-Image's, Ideogram 4's) no ``use_dynamic_shifting`` (one line
    otherwise)."""
    sched = read_json_object(directory / "scheduler" / "scheduler_config.json", "scheduler config")
    for key in ("invert_sigmas", "stochastic_sampling", "use_flow_sigmas"):
        if sched.get(key, False):
            raise DiffkitError(f"{directory}'s scheduler has {key}={sched[key]!r}, which {pipeline}'s flow Euler "
                               f"loop does not take in diffkit; allowed: {key}=false")
    check_choice("the scheduler's time_shift_type", sched.get("time_shift_type", "exponential"),
                 ["exponential", "linear"])
    if fixed_shift and sched.get("use_dynamic_shifting", False):
        raise DiffkitError(f"{directory}'s scheduler has use_dynamic_shifting=true, which {pipeline} does not run "
                           f"(it passes no mu); allowed: use_dynamic_shifting=false (a fixed shift)")
    return sched


def read_flux_loras(lora, kind: str = "FLUX") -> list:
    """:func:`.sd_lora.read_sd_loras` of FLUX LoRA files: diffusers / PEFT ``transformer.`` and ``text_encoder.``
    (CLIP) keys, as ``FluxLoraLoaderMixin`` fuses them, or kohya / BFL-format files (:mod:`.flux_lora`: their
    transformer adapters under ``"unet"``, BFL module names, until :func:`.flux_lora.transformer_adapters`); keys of
    other components (which the pipeline would ignore) are one-line errors. ``kind="Chroma"``: a Chroma folder's
    (:mod:`.chroma`), whose pipelines' ``load_lora_weights`` loads the transformer's keys only (diffusers 0.42.1
    cannot load a LoRA into its T5 encoder): text-encoder keys refused too."""
    from ..lora_files import adapter_list
    from .flux_lora import is_bfl_lora, kohya_keys
    from .lycoris_flow import refuse_lycoris
    from .sd_lora import _read, parse_sd_lora
    loras = []
    for path, scale in adapter_list(lora) if lora else []:
        tensors, meta = _read(path)
        refuse_lycoris(path, tensors, f"{'Chroma' if kind == 'Chroma' else 'Flux'}Pipeline.load_lora_weights")
        bfl = is_bfl_lora(tensors)
        origin = {}  # {kohya key: the file's own}, for the messages of .flux_lora.transformer_adapters
        read = parse_sd_lora(path, kohya_keys(path, tensors, origin) if bfl else tensors, meta)
        read["origin"] = origin
        clip = kind == "FLUX"
        other = next((c for c in ("unet", "text_encoder_2") + (() if clip else ("text_encoder",))
                      if read[c] and (c != "unet" or not bfl)), None)
        if other:
            raise DiffkitError(f"--lora {path} adapts the {other} ({next(iter(read[other].values()))[3]} keys), "
                               f"which a {kind} folder's load_lora_weights does not; allowed: transformer. "
                               f"{'and text_encoder. (CLIP) keys' if clip else 'keys'}, or kohya / BFL "
                               f"{'ones' if clip else 'transformer ones'} (lora_unet_, diffusion_model.)")
        loras.append((path, scale, read))
    return loras


def load_flux(directory: Union[str, Path], device="cpu", dtype: torch.dtype = torch.float32,
              progress: bool = True, lora=None, textual_inversion=None, visualcloze: bool = False) -> Flux:
    """Load a FLUX.1 diffusers folder (``FluxPipeline``; never downloads): what diffkit does not drive is refused
    in one line before any weight is read (:func:`check_flux_folder`). ``lora``: LoRA files in diffusers / PEFT
    format (paths or (path, scale) pairs; ``transformer.`` / ``text_encoder.`` keys) or kohya / BFL format
    (:mod:`.flux_lora`), merged as
    ``load_lora_weights`` + ``fuse_lora(lora_scale=scale)`` (:mod:`.sd_lora`; read and checked first,
    :func:`read_flux_loras`). ``textual_inversion``: embedding files (paths or (path, token or None) pairs) added to
    the CLIP tokenizer and text encoder as ``FluxPipeline.load_textual_inversion(path, token=token)``
    (:mod:`.sd_textual_inversion`; read and checked first; SD-XL files refused). ``visualcloze``: a VisualCloze
    folder's components (:func:`.visualcloze.load_visualcloze`; refused otherwise)."""
    from .sd_lora import merge_sd_loras
    from .sd_textual_inversion import add_textual_inversions, read_textual_inversions
    diffusers = require("diffusers")
    directory = Path(directory)
    index, sched = check_flux_folder(directory, visualcloze)
    loras = read_flux_loras(lora)
    embeddings = read_textual_inversions(textual_inversion) if textual_inversion else []
    parts = load_flow_parts(directory, index, diffusers.FluxTransformer2DModel,
                            {"": "CLIPTextModel", "_2": "T5EncoderModel"}, dtype, progress)
    device = torch.device(device)
    for name in ("transformer", "vae", "text_encoder", "text_encoder_2"):
        parts[name].to(device).eval().requires_grad_(False)
    flux = Flux(**parts, scheduler_config=sched, device=device, dtype=dtype)
    config = flux.transformer.config
    pooled, t5 = flux.text_encoder.config.hidden_size, flux.text_encoder_2.config.d_model
    if config.pooled_projection_dim != pooled or config.joint_attention_dim != t5:
        raise DiffkitError(f"{directory}: the transformer's pooled_projection_dim={config.pooled_projection_dim} and "
                           f"joint_attention_dim={config.joint_attention_dim} do not fit the text encoders (CLIP "
                           f"width {pooled}, T5 width {t5})")
    from .flux_lora import transformer_adapters
    merge_sd_loras(flux, [(path, scale, transformer_adapters(path, read, flux.transformer) if read["kohya"] else read)
                          for path, scale, read in loras])
    add_textual_inversions(flux, embeddings, xl=False)  # CLIP's tokenizer and text encoder (T5 has none)
    return flux


def text_to_image(flux: Flux, prompts: Union[str, Sequence[str]], *, sampler: Optional[str] = None,
                  steps: Optional[int] = None, nfe: Optional[int] = None, guidance_scale: Optional[float] = None,
                  true_cfg_scale: float = 1.0, negative_prompt: Union[None, str, Sequence[str]] = None,
                  seed: Optional[int] = 0, latents: Optional[torch.Tensor] = None, height: Optional[int] = None,
                  width: Optional[int] = None, grid: Union[None, str, torch.Tensor] = None,
                  max_sequence_length: int = MAX_SEQUENCE_LENGTH, prompt_2=None, negative_prompt_2=None,
                  output_range: str = "0,1", return_latents: bool = False, progress: bool = False,
                  controlnet=None, control_seed: int = 0, control_posterior: str = "sample", control_rows=None,
                  ip_adapter=None, control_image=None, prompt_embeds: Optional[torch.Tensor] = None,
                  pooled_prompt_embeds: Optional[torch.Tensor] = None, **options) -> torch.Tensor:
    """Images of a FLUX.1 folder for ``prompts`` with any diffkit sampler (module docstring).

    sampler / grid: both None (the default): the pipeline's loop, flow Euler (``ddim``, eta 0) on its sigmas
        (``grid="scheduler"``, :meth:`Flux.scheduler_grid`); a sampler alone: its default grid of the flow schedule
        at this size; ``grid``: a tensor (on :meth:`Flux.denoiser_for` this size), or ``"scheduler"``.
    steps / nfe: default 28 steps. guidance_scale: the embedded guidance (default 3.5; FLUX.1-dev), refused for a
        transformer without guidance embeds. true_cfg_scale > 1 with negative_prompt (and negative_prompt_2):
        the pipeline's true CFG. prompt_2: T5's text (default the prompts).
    latents: unpacked z at s = 1 (B, C, h, w) (the pipeline's ``latents=`` is :func:`pack_latents` of it);
        default N(0, I) from per-sample ``seed + i``. height / width: default 128 f. output_range: ``"0,1"`` or
        ``"-1,1"``; ``return_latents``: z_0 unpacked (the pipeline's ``output_type="latent"`` packs it).
    controlnet: FLUX ControlNets with their control images and options (a
        :class:`~diffkit.interop.controlnet.ControlNets` of ``FluxControlNetModel``), as FluxControlNetPipeline
        (:mod:`.flux_controlnet`; the embedded guidance defaults to its 7.0); ``control_posterior``: the control
        image's VAE latents, ``"sample"`` (sample i's from the generator ``control_seed + i``) or ``"mean"``;
        ``control_rows``: with one control image per prompt, each sample's (default: sample i, image i).
    ip_adapter: an XLabs-format IP-Adapter with its image prompt (a :class:`~.flux_ip_adapter.FluxIPAdapter`), as
        the pipeline's ``load_ip_adapter`` + ``ip_adapter_image`` (+ ``negative_ip_adapter_image`` with true CFG);
        with ``controlnet`` as FluxControlNetPipeline's (the adapter in the transformer only: the ControlNet
        ignores the image embeds).
    control_image: a FLUX.1 Depth / Canny folder's (``FluxControlPipeline``'s ``control_image``; needed there, refused
        elsewhere): one PIL image, path or (1, 3, H, W) tensor in [0, 1], or one per prompt, resized to the output
        size; its latents concatenated after the packed latents (:mod:`.flux_channels`), sample i's posterior draw
        from ``control_seed + i`` (``control_posterior``, ``control_rows`` as for ``controlnet``).
    prompt_embeds / pooled_prompt_embeds: the pipeline's, (B or 1, L, d_T5) and (B or 1, d_CLIP), instead of
        ``prompts`` (None) and ``prompt_2``, e.g. FLUX.1 Redux's (:func:`.flux_redux.redux_embeds`); one row serves
        every sample (``latents``' batch); with true CFG (the negative prompt encoded at ``max_sequence_length``, its
        pass a second network call where the lengths differ), a ControlNet (not both), a Depth / Canny folder's
        ``control_image``, an IP-Adapter.
    options: passed to :func:`diffkit.sample` (e.g. ``eta``, ``flow_shift``).
    """
    from ..sampling import sample
    from .stable_diffusion import OUTPUT_RANGES, prompt_list
    check_choice("output_range", output_range, OUTPUT_RANGES)
    prompts, embeds = embedded_prompts(flux, prompts, prompt_embeds, pooled_prompt_embeds,  # e.g. FLUX.1 Redux's
                                       None if latents is None else latents.shape[0], prompt_2=prompt_2)
    if embeds is not None and controlnet is not None and negative_prompt is not None:
        raise DiffkitError(NO_EMBEDS_CONTROLNET_TRUE_CFG)
    prompts = prompt_list(prompts)
    if control_image is not None or flux.variant is not None:  # FLUX.1 Fill / Depth / Canny: .flux_channels
        from .flux_channels import check_variant_options
        check_variant_options(flux.variant, None, control_image, controlnet, ip_adapter, negative_prompt)
    noise, expected = start_latents(flux, latents, len(prompts), height, width, " (unpacked: flux.unpack_latents)")
    h, w = expected[2:]
    sampler, grid, steps = pipeline_grid(sampler, grid, steps, nfe, FLUX_PIPELINE_STEPS,
                                         lambda n: flux.scheduler_grid(n, h, w),
                                         options.get("flow_shift"))

    def guide(model, scale=guidance_scale):
        return model.prompt_guidance(prompts, h, w, scale, negative_prompt, true_cfg_scale, max_sequence_length,
                                     prompt_2, negative_prompt_2, ip_adapter, embeds)
    if controlnet is None:
        denoiser, cond = guide(flux)
    else:  # FluxControlNetPipeline's default embedded guidance: 7.0
        from .flux_controlnet import FLUX_CONTROLNET_GUIDANCE, controlnet_guidance
        scale = FLUX_CONTROLNET_GUIDANCE if guidance_scale is None and flux.guidance_embeds else guidance_scale
        denoiser, cond = controlnet_guidance(flux, controlnet, lambda model: guide(model, scale), expected, sampler,
                                             steps, nfe, grid, options, guidance_scale, control_seed,
                                             control_posterior, control_rows)
    if control_image is not None:  # the Depth / Canny transformer's control latents (.flux_channels)
        from .flux_channels import control_cond
        cond.update(control_cond(flux, control_image, expected, control_seed, control_posterior, control_rows))
    z0 = sample(denoiser, noise, sampler, steps, nfe=nfe, grid=grid, seed=seed, cond=cond,
                progress=progress, device=flux.device, dtype=flux.dtype, **options)
    return finish_images(flux, z0, return_latents, output_range)


def image_to_image(flux: Flux, images: torch.Tensor, prompts: Union[str, Sequence[str]],
                   strength: Optional[float] = None, *, mask: Optional[torch.Tensor] = None,
                   sampler: Optional[str] = None, steps: Optional[int] = None,
                   guidance_scale: Optional[float] = None, true_cfg_scale: float = 1.0,
                   negative_prompt: Union[None, str, Sequence[str]] = None, posterior: str = "sample",
                   seed: Optional[int] = 0, generator=None, max_sequence_length: int = MAX_SEQUENCE_LENGTH,
                   prompt_2=None, negative_prompt_2=None, output_range: str = "0,1", return_latents: bool = False,
                   progress: bool = False, controlnet=None, control_posterior: str = "sample", control_rows=None,
                   ip_adapter=None, control_image=None, kontext: Optional[torch.Tensor] = None,
                   prompt_embeds: Optional[torch.Tensor] = None, pooled_prompt_embeds: Optional[torch.Tensor] = None,
                   **options) -> torch.Tensor:
    """SDEdit of ``images`` (B, 3, H, W) in [-1, 1] towards ``prompts`` (one, or one per image), as
    ``FluxImg2ImgPipeline`` (Meng et al. 2022, Alg. 1 on FLUX's latents), which is SD3's img2img
    (:func:`.sd3.image_to_image`) with the flow network here (the packing is inside :class:`FluxNet`): z = (E(x) -
    shift) * scale (``posterior="sample"``: drawn from image i's generator ``seed + i``, then its forward noise;
    ``"mean"``: the posterior mean), noised to the first sigma s_0 of the strength's part of
    :meth:`Flux.scheduler_grid` (``scale_noise``: (1 - s_0) z + s_0 eps), then its flow Euler steps
    (:meth:`~.flow_latents.FlowLatentVAE.pipeline_strength`: ``steps`` default 28, strength 0.6, the embedded
    guidance 7.0: the pipeline's defaults). ``sampler`` (or ``grid`` in ``options``) given: that sampler on its
    own grid of the size's flow schedule, cut as :func:`diffkit.img2img`. Prompt and guidance arguments as
    :func:`text_to_image`; the one implementation is :func:`diffkit.latent_editing.latent_img2img`.

    ``strength``: default 0.6 (1.0 for a Fill folder).

    ``mask`` (B or 1, 1, H, W), 1 = repaint: inpainting as ``FluxInpaintPipeline`` (the text-to-image transformer;
    a FLUX.1 Fill folder's 384-channel one: ``FluxFillPipeline``, :mod:`.flux_channels`, which only inpaints:
    its defaults 50 steps, strength 1, the embedded guidance 30), SD3's (:func:`.sd3.image_to_image`):
    :func:`diffkit.latent_editing.latent_inpaint`, the mask binarised and nearest-resized to the (unpacked) latents,
    the kept region's x_0 replaced by the image's latents at every step, which puts it at the pipeline's blend
    ``scale_noise(z, next sigma, noise)`` (z after the last step); at strength 1 from pure noise (the pipeline's
    ``scale_noise`` at sigma 1). The pipeline's masked-image latents feed only the Fill transformer: not computed.

    ``controlnet``: FLUX ControlNets with their control images (a :class:`~diffkit.interop.controlnet.ControlNets`;
    resized to the images' size), as ``FluxControlNetImg2ImgPipeline`` / with ``mask`` ``FluxControlNetInpaintPipeline``
    (:func:`.flux_controlnet.edit_guidance`: image i's control posterior drawn first from its generator, the window
    over the steps that run; ``control_posterior`` / ``control_rows`` as :func:`text_to_image`); no true CFG there
    (refused in one line).

    ``ip_adapter``: an XLabs-format :class:`~.flux_ip_adapter.FluxIPAdapter` with its image prompt, as both pipelines'
    ``load_ip_adapter`` + ``ip_adapter_image`` (+ ``negative_ip_adapter_image`` with true CFG, default black of the
    images' size); not with ``controlnet`` (FluxControlNetImg2ImgPipeline / FluxControlNetInpaintPipeline take no
    ``ip_adapter_image``: no reference).

    ``control_image``: a FLUX.1 Depth / Canny folder's (needed there, refused elsewhere), as
    ``FluxControlImg2ImgPipeline`` / with ``mask`` ``FluxControlInpaintPipeline`` (their defaults are this
    function's): one image, or one per image (``control_rows``), its latents concatenated after the packed latents
    at every step (:mod:`.flux_channels`), image i's control posterior drawn from its generator before the image's
    posterior (inpainting: after the masked image's, which that pipeline draws and never uses).

    ``kontext``: FLUX.1 Kontext's reference latents (B or 1, C, h', w') in every network call, as
    ``FluxKontextInpaintPipeline`` (:func:`.flux_kontext.kontext_inpaint`).

    ``prompt_embeds`` / ``pooled_prompt_embeds``: instead of ``prompts`` (None), as :func:`text_to_image`'s (one row
    or one per image; e.g. FLUX.1 Redux's, :func:`.flux_redux.redux_embeds`), as all these pipelines take them; not
    with true CFG (but with ``kontext``: FluxKontextInpaintPipeline's negative pass has its own text ids)."""
    from .flow_latents import edit_latents, edit_prompts
    from .stable_diffusion import OUTPUT_RANGES
    check_choice("output_range", output_range, OUTPUT_RANGES)
    batch = images.shape[0] if isinstance(images, torch.Tensor) and images.ndim == 4 else None
    prompts, embeds = embedded_prompts(flux, prompts, prompt_embeds, pooled_prompt_embeds, batch, prompt_2=prompt_2)
    if embeds is not None and negative_prompt is not None and kontext is None:
        raise DiffkitError(NO_EMBEDS_EDIT_TRUE_CFG)
    prompts = edit_prompts(images, prompts)
    h, w = flux.latent_shape(1, images.shape[2], images.shape[3])[2:]  # multiples of 16
    f = flux.vae_scale_factor
    defaults = (FLUX_PIPELINE_STEPS, FLUX_IMG2IMG_STRENGTH, FLUX_IMG2IMG_GUIDANCE)
    if flux.variant is not None or control_image is not None:  # Fill / Depth / Canny (.flux_channels)
        from .flux_channels import FLUX_FILL, FLUX_FILL_GUIDANCE, FLUX_FILL_STEPS, FLUX_FILL_STRENGTH, \
            check_variant_options
        check_variant_options(flux.variant, mask, control_image, controlnet, ip_adapter, negative_prompt, edit=True)
        if flux.variant == FLUX_FILL:  # FluxFillPipeline's defaults; Depth / Canny: FluxImg2ImgPipeline's
            defaults = (FLUX_FILL_STEPS, FLUX_FILL_STRENGTH, FLUX_FILL_GUIDANCE)
    steps = defaults[0] if steps is None else steps
    strength = defaults[1] if strength is None else strength
    if sampler is None and "grid" not in options:
        sampler, options["grid"] = "ddim", flux.scheduler_grid(steps, h, w)
        strength = flux.pipeline_strength(steps, strength)
    if guidance_scale is None and flux.guidance_embeds:
        guidance_scale = defaults[2]
    if controlnet is not None and ip_adapter is not None:
        raise DiffkitError(NO_EDIT_CONTROLNET_IP)

    def guide(model):
        return model.prompt_guidance(prompts, h, w, guidance_scale, negative_prompt, true_cfg_scale,
                                     max_sequence_length, prompt_2, negative_prompt_2, ip_adapter, embeds)
    if controlnet is None:
        denoiser, cond = guide(flux)
        if kontext is not None:  # FluxKontextInpaintPipeline: the reference's tokens (.flux_kontext)
            cond["kontext"] = kontext.expand(len(prompts), *kontext.shape[1:])
    else:  # the control posterior first, then the image's posterior and noise, from image i's generator
        from ..editing import _generators
        from .flux_controlnet import check_edit_controlnet, edit_guidance
        check_edit_controlnet(negative_prompt)
        seed, generator = None, _generators(seed, generator, len(prompts))
        denoiser, cond = edit_guidance(flux, controlnet, guide, flux.latent_shape(len(prompts), h * f, w * f),
                                       sampler, steps, strength, options, guidance_scale, generator,
                                       control_posterior, control_rows)
    if control_image is not None:  # Depth / Canny: image i's control posterior first from its generator
        from ..editing import _generators
        from .flux_channels import control_cond
        seed, generator = None, _generators(seed, generator, len(prompts))
        rows = list(generator) if isinstance(generator, (list, tuple)) else [generator] * len(prompts)
        cond.update(control_cond(flux, control_image, flux.latent_shape(len(prompts), h * f, w * f), 0,
                                 control_posterior, control_rows, rows, mask is not None))
    z0 = edit_latents(flux, denoiser, images, strength, sampler, steps, mask, posterior=posterior, seed=seed,
                      generator=generator, cond=cond, progress=progress, **options)
    return finish_images(flux, z0, return_latents, output_range)


__all__ = ["Flux", "FluxNet", "load_flux", "is_flux_folder", "check_flux_folder", "text_to_image", "image_to_image",
           "pack_latents",
           "unpack_latents", "latent_image_ids", "calculate_shift", "read_flux_loras", "FLUX_PIPELINE_GUIDANCE",
           "FLUX_PIPELINE_STEPS", "FLUX_IMG2IMG_STRENGTH", "FLUX_IMG2IMG_GUIDANCE", "MAX_SEQUENCE_LENGTH",
           "given_embeds", "embedded_prompts", "check_true_cfg"]
