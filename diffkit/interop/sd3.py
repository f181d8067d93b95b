"""A Stable Diffusion 3 diffusers folder (``StableDiffusion3Pipeline``), sampled with any diffkit sampler.

SD3 (Esser et al. 2024, "Scaling Rectified Flow Transformers for High-Resolution Image Synthesis") is a
rectified-flow model (Sec. 2, eq. 1 with a_t = 1 - t, b_t = t: x_s = (1 - s) x_0 + s eps) whose
MM-DiT ``transformer`` (``SD3Transformer2DModel``) predicts the velocity u = eps - x_0 of the latents of a
16-channel ``AutoencoderKL``. diffkit runs it as it runs its own flow models (docs/flow_matching.md): a
:class:`~diffkit.denoiser.Denoiser` with ``prediction_type="flow_prediction"`` on
``NoiseSchedule.flow(T, shift)`` of the folder's ``FlowMatchEulerDiscreteScheduler`` (eq. 23's shift, 3.0
in SD3's config), the network called at the flow time s T = the pipeline's timestep sigma * 1000. Every
diffusers 0.42 ``StableDiffusion3Pipeline`` step is reproduced:

* prompts (``encode_prompt``): the penultimate hidden states (``hidden_states[-2]``) of the two CLIP text
  encoders (``text_encoder``, ``text_encoder_2``: CLIPTextModelWithProjection, both tokenised to the first
  tokenizer's ``model_max_length``) concatenated on the channels and zero-padded to the T5 width, then the
  T5 encoder's last states (``text_encoder_3``, ``max_sequence_length`` tokens, default 256) concatenated on
  the sequence axis: context (B, 77 + 256, joint_attention_dim); the pooled text = both CLIPs' projected
  pooled outputs concatenated (``pooled_projections``). Without ``text_encoder_3`` (a folder saved with
  ``text_encoder_3=None``) the T5 part is zeros, as the pipeline's ``_get_t5_prompt_embeds``.
* classifier-free guidance on the velocity, u = u_null + s (u_c - u_null) (the pipeline's; the null half
  is the encoded ``negative_prompt``, default ""): diffkit's
  :class:`~diffkit.guidance.ClassifierFreeGuidance` in the ``diffusers`` convention guides eps and x_0,
  which are affine in u with the same coefficients for both halves, so it is the same step. s = 1 is one
  unguided call; s < 1 is applied as the formula says (the pipeline turns guidance off for s <= 1).
* the time grid (:meth:`StableDiffusion3.scheduler_grid`): the folder's own scheduler after
  ``set_timesteps(steps)`` (its sigmas, shift included), each sigma placed at the VP time of equal SNR; DDIM
  (eta = 0) there is the pipeline's ``FlowMatchEulerDiscreteScheduler.step``, x_{s'} = x_s + (s' - s) u
  (docs/flow_matching.md). :func:`text_to_image` uses it by default; any other sampler runs on its own grid
  of the flow schedule.
* decoding: x = D(z / scaling_factor + shift_factor) (``vae.config``), images (x / 2 + 0.5).clamp(0, 1).

img2img and inpainting (:func:`image_to_image`) are the pipelines' ``StableDiffusion3Img2ImgPipeline`` /
``StableDiffusion3InpaintPipeline`` through :mod:`diffkit.latent_editing`; LoRA files (``load_sd3(lora=)``) are
fused as their ``load_lora_weights`` + ``fuse_lora`` (:mod:`.sd_lora`; the keys that loader reads: :mod:`.sd3_lora`).

Refused in one line before any weight is read: a folder whose transformer, VAE or scheduler is another
class, a VAE without ``shift_factor``, an ``image_encoder`` (SD3's IP-Adapter), a ``controlnet``, a
scheduler with ``invert_sigmas`` (:func:`.schedulers.flow_shift_from_diffusers`), a transformer whose channels fit
neither the VAE's latents c nor an inpainting transformer's 2c + 1 in / c out.

A scheduler with ``use_dynamic_shifting`` shifts by the pipelines' mu of the image size
(:meth:`StableDiffusion3.shift`, FLUX.1's :func:`.flux.calculate_shift` with the SD3 defaults); a 33-channel
inpainting transformer (latents + mask + masked-image latents, ``StableDiffusion3InpaintPipeline``'s
``num_channels_transformer == 33``) takes :mod:`.sd_inpaint`'s path and only inpaints.
SD3.5's transformer options (``qk_norm``, ``dual_attention_layers``) run as they are: diffusers' own module
is called. Skip-layer guidance: :mod:`.sd3_slg`; perturbed-attention guidance (``pag_scale=``): :mod:`.sd3_pag`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from ..errors import DiffkitError, check_choice, read_json_object
from . import model_dtype, require
from .flow_latents import (FlowLatentVAE, check_flow_folder, check_flow_vae, finish_images, flow_sigmas_grid,
                           load_flow_parts, names_pipeline, pipeline_grid, start_latents)
from .sd_xl import _index  # model_index.json as a dict, None where there is none (or it is unreadable)

SD3_TRANSFORMER = "SD3Transformer2DModel"
REQUIRED = ("transformer", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "scheduler")
SD3_PIPELINE_GUIDANCE = 7.0  # StableDiffusion3Pipeline's default guidance_scale
SD3_PIPELINE_STEPS = 28  # its default num_inference_steps
MAX_SEQUENCE_LENGTH = 256  # its default T5 length (at most 512)
SD3_IMG2IMG_STRENGTH = 0.6  # StableDiffusion3Img2ImgPipeline's default strength
# the SD3 pipelines' calculate_shift defaults for keys a dynamic-shifting scheduler config lacks (max_shift 1.16)
SD3_SHIFT_DEFAULTS = {"base_image_seq_len": 256, "max_image_seq_len": 4096, "base_shift": 0.5, "max_shift": 1.16}
_ONLY_INPAINTS = ("this SD3 transformer takes the mask and the masked image's latents as input (33 channels): it only "
                  "inpaints; give a mask (image_to_image(mask=), diffkit edit --mask PNG)")


class SD3Net(torch.nn.Module):
    """``net(x, t, context, pooled)`` over a diffusers ``SD3Transformer2DModel``: ``context`` ->
    ``encoder_hidden_states``, ``pooled`` -> ``pooled_projections``, ``t`` (float32 flow times s T) ->
    ``timestep``, ``controls`` (ControlNet block residuals, :mod:`.sd3_controlnet`) ->
    ``block_controlnet_hidden_states``; the output in x's dtype."""

    def __init__(self, transformer):
        super().__init__()
        self.model = transformer

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor = None,
                pooled: torch.Tensor = None, controls: Optional[list] = None,
                attention_kwargs: Optional[dict] = None) -> torch.Tensor:
        """``attention_kwargs``: the transformer's ``joint_attention_kwargs`` (an IP-Adapter's image embeds,
        :mod:`.sd3_ip_adapter`)."""
        if context is None or pooled is None:
            raise DiffkitError("an SD3 transformer needs cond {'context', 'pooled'} (StableDiffusion3."
                               "encode_prompts)")
        dtype = model_dtype(self.model)
        t = torch.as_tensor(t, device=x.device, dtype=torch.float32).reshape(-1).expand(x.shape[0])
        out = self.model(hidden_states=x.to(dtype), timestep=t, encoder_hidden_states=context.to(dtype),
                         pooled_projections=pooled.to(dtype), block_controlnet_hidden_states=controls,
                         **({} if attention_kwargs is None else {"joint_attention_kwargs": attention_kwargs}),
                         return_dict=False)[0]
        return out.to(x.dtype)


@dataclass
class StableDiffusion3(FlowLatentVAE):
    """The loaded components of an SD3 folder (:func:`load_sd3`); ``text_encoder_3`` / ``tokenizer_3``
    None: the T5 part of the context is zeros."""

    transformer: object
    vae: object
    text_encoder: object
    tokenizer: object
    text_encoder_2: object
    tokenizer_2: object
    text_encoder_3: Optional[object]
    tokenizer_3: Optional[object]
    schedule: object
    scheduler_config: dict
    device: torch.device
    dtype: torch.dtype = torch.float32
    _denoiser: object = field(default=None, repr=False)
    _denoisers: dict = field(default_factory=dict, repr=False)  # {shift: Denoiser} with use_dynamic_shifting

    default_guidance_scale = SD3_PIPELINE_GUIDANCE

    # ------------------------------------------------------------------ shapes
    def latent_shape(self, batch: int, height: Optional[int] = None, width: Optional[int] = None) -> tuple:
        """(batch, in_channels, height / f, width / f); default size transformer.sample_size * f (the pipeline's
        ``default_sample_size``); height and width multiples of f * patch_size (its ``check_inputs``)."""
        f, patch = self.vae_scale_factor, int(self.transformer.config.patch_size)
        size = int(self.transformer.config.sample_size) * f
        height = size if height is None else height
        width = size if width is None else width
        for value in (height, width):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value % (f * patch):
                raise DiffkitError(f"height x width {height}x{width} is not allowed; give positive multiples of "
                                   f"{f * patch} (the VAE factor {f} x the transformer's patch size {patch})")
        most = self.transformer.config.get("pos_embed_max_size")
        if most is not None and max(height, width) > int(most) * f * patch:  # cropped_pos_embed's ValueError
            raise DiffkitError(f"height x width {height}x{width} is not allowed; give at most {int(most) * f * patch}"
                               f" a side (the transformer's pos_embed_max_size {most} patches of {f * patch} pixels)")
        return (batch, int(self.transformer.config.in_channels), height // f, width // f)

    # ------------------------------------------------------------------ prompts
    def _clip(self, index: int, prompts: list, clip_skip: Optional[int]) -> tuple:
        """(states (B, L, d), pooled (B, p)) of CLIP ``index`` (0, 1): ``hidden_states[-(clip_skip + 2)]``
        (default the penultimate), as the pipeline's ``_get_clip_prompt_embeds``."""
        tokenizer, encoder = ((self.tokenizer, self.text_encoder), (self.tokenizer_2, self.text_encoder_2))[index]
        tokens = tokenizer(prompts, padding="max_length", max_length=self.tokenizer.model_max_length,
                           truncation=True, return_tensors="pt")
        with torch.no_grad():
            out = encoder(tokens.input_ids.to(self.device), output_hidden_states=True)
        states = out.hidden_states[-((clip_skip or 0) + 2)]
        return states.to(self.text_encoder.dtype), out[0]

    def _t5(self, prompts: list, max_sequence_length: int) -> torch.Tensor:
        """T5's last states (B, max_sequence_length, d), or zeros of the transformer's joint_attention_dim
        without ``text_encoder_3`` (the pipeline's ``_get_t5_prompt_embeds``)."""
        if self.text_encoder_3 is None:
            return torch.zeros(len(prompts), max_sequence_length, int(self.transformer.config.joint_attention_dim),
                               device=self.device, dtype=self.text_encoder.dtype)
        tokens = self.tokenizer_3(prompts, padding="max_length", max_length=max_sequence_length, truncation=True,
                                  add_special_tokens=True, return_tensors="pt")
        with torch.no_grad():
            return self.text_encoder_3(tokens.input_ids.to(self.device))[0].to(self.text_encoder_3.dtype)

    def encode_prompts(self, prompts: Sequence[str], max_sequence_length: int = MAX_SEQUENCE_LENGTH,
                       clip_skip: Optional[int] = None, prompts_2=None, prompts_3=None) -> tuple:
        """(context (B, L_clip + max_sequence_length, D), pooled (B, p_1 + p_2)) as the pipeline's
        ``encode_prompt`` (module docstring); ``clip_skip`` N: the CLIP states N layers lower. ``prompts_2`` /
        ``prompts_3``: the text of ``text_encoder_2`` / ``text_encoder_3`` (one, or one per prompt; default, or
        empty: ``prompts``, as the pipeline's ``prompt_2 or prompt``)."""
        from .stable_diffusion import prompt_list
        prompts = prompt_list(prompts)
        prompts_2, prompts_3 = (_per_prompt(other, prompts, name) for other, name in (
            (prompts_2, "prompt_2"), (prompts_3, "prompt_3")))
        if isinstance(max_sequence_length, bool) or not isinstance(max_sequence_length, int) \
                or not 1 <= max_sequence_length <= 512:
            raise DiffkitError(f"max_sequence_length={max_sequence_length!r} is not allowed; allowed: 1..512 "
                               f"(StableDiffusion3Pipeline's T5 length)")
        layers = min(self.text_encoder.config.num_hidden_layers, self.text_encoder_2.config.num_hidden_layers)
        if clip_skip is not None and (isinstance(clip_skip, bool) or not isinstance(clip_skip, int)
                                      or not 0 <= clip_skip <= layers - 1):
            raise DiffkitError(f"clip_skip={clip_skip!r} is not allowed; allowed: 0..{layers - 1} (layers below the "
                               f"penultimate of the CLIP text encoders)")
        states_1, pooled_1 = self._clip(0, prompts, clip_skip)
        states_2, pooled_2 = self._clip(1, prompts_2, clip_skip)
        t5 = self._t5(prompts_3, max_sequence_length)
        clip = torch.cat([states_1, states_2], dim=-1)
        clip = torch.nn.functional.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
        return torch.cat([clip, t5], dim=-2), torch.cat([pooled_1, pooled_2], dim=-1)

    # ------------------------------------------------------------------ denoisers
    @property
    def inpainting_unet(self) -> bool:
        """A 33-channel inpainting transformer (latents 16 + mask 1 + masked-image latents 16 in, 16 out), which
        only inpaints, as ``StableDiffusion3InpaintPipeline`` with ``num_channels_transformer == 33``: the SD 1.x
        9-channel UNet's path (:mod:`.sd_inpaint`; the name is the hook :func:`~diffkit.latent_editing.latent_inpaint`
        reads)."""
        from .sd_inpaint import is_inpainting_config
        return is_inpainting_config(self.transformer.config)

    def _new_denoiser(self, schedule):
        from ..denoiser import Denoiser
        net = SD3Net(self.transformer)
        if self.inpainting_unet:
            from .sd_inpaint import InpaintingUNetNet
            net = InpaintingUNetNet(net)
        denoiser = Denoiser(net, schedule, "flow_prediction")
        denoiser.model = self.transformer
        return denoiser

    @property
    def denoiser(self):
        """The unguided flow-prediction :class:`~diffkit.denoiser.Denoiser` (cond: ``context``, ``pooled``; an
        inpainting transformer also ``inpaint_mask``, ``masked_image_latents``, concatenated after the latents by
        :class:`~.sd_inpaint.InpaintingUNetNet`) on :attr:`schedule` (with ``use_dynamic_shifting``: the default
        size's; :meth:`denoiser_for` any other)."""
        if self._denoiser is None:
            self._denoiser = self._new_denoiser(self.schedule)
        return self._denoiser

    # ------------------------------------------------------------------ resolution-dependent shift
    @property
    def dynamic_shifting(self) -> bool:
        """The scheduler's ``use_dynamic_shifting``: its shift depends on the image size (:meth:`shift`)."""
        return bool(self.scheduler_config.get("use_dynamic_shifting", False))

    def mu(self, h: int, w: int) -> float:
        """The pipelines' mu for latents h x w: ``calculate_shift`` of the sequence length (h / p)(w / p), p the
        patch size, with the scheduler's base / max shift and sequence lengths (:func:`.flux.calculate_shift`;
        defaults 256, 4096, 0.5 and the SD3 pipelines' max_shift 1.16)."""
        from .flux import calculate_shift
        patch = int(self.transformer.config.patch_size)
        return calculate_shift((h // patch) * (w // patch), self.scheduler_config, SD3_SHIFT_DEFAULTS)

    def shift(self, h: int, w: int) -> float:
        """The flow shift the scheduler applies at latents h x w: its fixed ``shift``, or with
        ``use_dynamic_shifting`` e^mu ("exponential") / mu ("linear") (:func:`.flux.scheduler_shift`)."""
        from .flux import scheduler_shift
        return scheduler_shift(self.scheduler_config, lambda: self.mu(h, w), h, w)

    def denoiser_for(self, h: Optional[int] = None, w: Optional[int] = None):
        """:attr:`denoiser`, or with ``use_dynamic_shifting`` the one on ``NoiseSchedule.flow(T, shift(h, w))``
        of latents h x w (as :meth:`.flux.Flux.denoiser_for`): any other sampler's own grid is then shifted as the
        pipeline's sigmas at that size."""
        from ..schedule import NoiseSchedule
        if not self.dynamic_shifting or h is None:
            return self.denoiser
        shift = self.shift(h, w)
        if shift not in self._denoisers:
            T = int(self.scheduler_config.get("num_train_timesteps", 1000))
            self._denoisers[shift] = self._new_denoiser(NoiseSchedule.flow(T, shift))
        return self._denoisers[shift]

    def prompt_guidance(self, prompts, negative_prompt=None, guidance_scale: float = SD3_PIPELINE_GUIDANCE,
                        convention: str = "diffusers", max_sequence_length: int = MAX_SEQUENCE_LENGTH,
                        clip_skip: Optional[int] = None, prompts_2=None, prompts_3=None, negative_prompt_2=None,
                        negative_prompt_3=None, apg: Optional[dict] = None, ip_adapter=None,
                        size: Optional[tuple] = None) -> tuple:
        """(denoiser, cond): the prompts' context and pooled text, guided (classifier-free, the pipeline's
        formula) against ``negative_prompt`` (None: ""; one, or one per prompt; encoded without
        ``clip_skip``, as the pipeline's null half; ``negative_prompt_2`` / ``_3``: the second / third
        encoder's, default ``negative_prompt``). ``apg``: adaptive projected guidance's keyword arguments of the
        guidance (:func:`~diffkit.guidance.apg_options`). ``ip_adapter``: an :class:`~.sd3_ip_adapter.SD3IPAdapter`
        (its image embeds in cond, zeros in the null half; none at scale <= 0, as the pipeline's
        ``is_ip_adapter_active``). ``size``: the latents' (h, w) (:meth:`denoiser_for`)."""
        from ..guidance import ClassifierFreeGuidance
        from .stable_diffusion import negative_prompts
        context, pooled = self.encode_prompts(prompts, max_sequence_length, clip_skip, prompts_2, prompts_3)
        cond = {"context": context, "pooled": pooled}
        batch = context.shape[0]
        negatives = [negative_prompts(negative_prompt, batch)]
        negatives += [negative_prompts(other, batch) if other else negatives[0]
                      for other in (negative_prompt_2, negative_prompt_3)]
        if all(len(set(rows)) == 1 for rows in negatives):
            negatives = [rows[:1] for rows in negatives]  # one row, broadcast by the guidance to every sample
        null_context, null_pooled = self.encode_prompts(negatives[0], max_sequence_length, None, *negatives[1:])
        denoiser, null_cond = self.denoiser_for(*(size or (None, None))), {"pooled": null_pooled}
        if ip_adapter is not None and ip_adapter.active:
            denoiser, positive, null_cond["ip_image_embeds"] = ip_adapter.sd3_parts(self, denoiser)
            cond["ip_image_embeds"] = positive.expand(batch, *positive.shape[1:])
        guided = ClassifierFreeGuidance(denoiser, guidance_scale, convention, null_context=null_context,
                                        null_cond=null_cond, **(apg or {}))
        return guided, cond

    def scheduler_grid(self, steps: int, h: Optional[int] = None, w: Optional[int] = None) -> torch.Tensor:
        """diffkit's grid of the folder's ``FlowMatchEulerDiscreteScheduler`` after ``set_timesteps(steps)``
        (with ``use_dynamic_shifting``: ``mu=`` :meth:`mu` of latents h x w, default the folder's size, as the
        pipelines): each sigma s (float32, as the pipeline steps with it) at the VP time of equal SNR of
        :meth:`denoiser_for` (h, w)'s schedule, log-SNR 2 log((1 - s)/s) (s = 1: T - 1, the last sigma 0: -1,
        clean data); the network is then called at s * T, the pipeline's timestep."""
        diffusers = require("diffusers")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise DiffkitError(f"steps={steps!r} is not allowed; give a positive integer")
        scheduler = diffusers.FlowMatchEulerDiscreteScheduler.from_config(self.scheduler_config)
        if not self.dynamic_shifting:
            scheduler.set_timesteps(steps)
            return flow_sigmas_grid(self.schedule, scheduler.sigmas, steps)
        h, w = (h, w) if h is not None else self.latent_shape(1)[2:]
        schedule = self.denoiser_for(h, w).schedule  # first: a shift past the flow schedule is one line
        scheduler.set_timesteps(steps, mu=self.mu(h, w))
        return flow_sigmas_grid(schedule, scheduler.sigmas, steps)


def _per_prompt(other, prompts: list, name: str) -> list:
    """``other`` (None, empty, one string, or one per prompt) as one per prompt; falsy: ``prompts``."""
    if not other:
        return prompts
    rows = [other] * len(prompts) if isinstance(other, str) else list(other)
    if len(rows) != len(prompts) or not all(isinstance(p, str) for p in rows):
        raise DiffkitError(f"{name} has {len(rows)} entries for {len(prompts)} prompts; give one string, or one "
                           f"per prompt")
    return rows


def _entry(index: dict, name: str) -> Optional[str]:
    """The class a model_index.json entry names, None for a missing or null one."""
    entry = index.get(name)
    return entry[1] if isinstance(entry, list) and len(entry) == 2 and entry[0] is not None else None


def is_sd3_folder(path: Union[str, Path]) -> bool:
    """True for a diffusers folder of an SD3 pipeline: ``model_index.json`` names a ``StableDiffusion3...``
    class or an ``SD3Transformer2DModel`` transformer (so that ``diffkit sample --checkpoint`` dispatches)."""
    return names_pipeline(path, "StableDiffusion3", SD3_TRANSFORMER)


def check_sd3_folder(directory: Path) -> tuple:
    """(index, scheduler config) of an SD3 folder that :func:`load_sd3` drives; anything else is a one-line
    DiffkitError (module docstring), from the JSON files alone."""
    index = _index(directory)
    if index is None or not is_sd3_folder(directory):
        raise DiffkitError(f"{directory} is not an SD3 folder (model_index.json naming a StableDiffusion3Pipeline "
                           f"with an {SD3_TRANSFORMER} transformer)")
    check_flow_folder(directory, index, REQUIRED, "SD3", SD3_TRANSFORMER)
    if (_entry(index, "text_encoder_3") is None) != (_entry(index, "tokenizer_3") is None):
        raise DiffkitError(f"{directory} has text_encoder_3={_entry(index, 'text_encoder_3')!r} and tokenizer_3="
                           f"{_entry(index, 'tokenizer_3')!r}; allowed: both, or neither (zeros for T5)")
    vae = check_flow_vae(directory, "SD3")
    _check_transformer_channels(directory, vae)
    sched = read_json_object(directory / "scheduler" / "scheduler_config.json", "scheduler config")
    _fixed_shift(sched)  # inverted sigmas, a bad shift: refused in one line
    return index, sched


def _fixed_shift(sched: dict) -> float:
    """The scheduler's fixed flow shift (:func:`.schedulers.flow_shift_from_diffusers`: inverted sigmas or a shift
    that is not a positive number refused in one line), its ``use_dynamic_shifting`` (a boolean) and
    ``time_shift_type`` checked: a dynamic shift is :meth:`StableDiffusion3.shift`'s, per size."""
    from .schedulers import flow_shift_from_diffusers
    dynamic = sched.get("use_dynamic_shifting", False)
    if not isinstance(dynamic, bool):
        raise DiffkitError(f"the scheduler's use_dynamic_shifting={dynamic!r} is not allowed; allowed: true, false")
    if dynamic:
        check_choice("the scheduler's time_shift_type", sched.get("time_shift_type", "exponential"),
                     ["exponential", "linear"])
    return flow_shift_from_diffusers({**sched, "use_dynamic_shifting": False})


def _check_transformer_channels(directory: Path, vae: dict) -> None:
    """The transformer takes the VAE's latents c (``in_channels`` = c; ``out_channels`` c or null), or is an
    inpainting transformer (``in_channels`` = 2 c + 1, ``out_channels`` = c: 33 for SD3's 16); one line otherwise."""
    from .sd_inpaint import is_inpainting_config
    config = read_json_object(directory / "transformer" / "config.json", "transformer config")
    c = vae.get("latent_channels", 4)
    plain = config.get("in_channels", 16) == c and config.get("out_channels") in (None, c)
    if not plain and not (is_inpainting_config(config) and config.get("out_channels") == c):
        raise DiffkitError(f"{directory}'s transformer has in_channels={config.get('in_channels', 16)!r}, "
                           f"out_channels={config.get('out_channels')!r}; allowed with the VAE's {c} latent channels: "
                           f"{c} in (and out), or {2 * c + 1} in and {c} out (an inpainting transformer)")


def _check_dimensions(sd3: StableDiffusion3, directory: Path) -> None:
    """The transformer's inputs fit the encoders: pooled_projection_dim = p_1 + p_2, joint_attention_dim >= the
    CLIP widths d_1 + d_2 and = T5's d_model (the pipeline pads the CLIP states to T5's width)."""
    config = sd3.transformer.config
    pooled = sd3.text_encoder.config.projection_dim + sd3.text_encoder_2.config.projection_dim
    widths = sd3.text_encoder.config.hidden_size + sd3.text_encoder_2.config.hidden_size
    t5 = config.joint_attention_dim if sd3.text_encoder_3 is None else sd3.text_encoder_3.config.d_model
    if config.pooled_projection_dim != pooled or t5 != config.joint_attention_dim or widths > t5:
        raise DiffkitError(f"{directory}: the transformer's pooled_projection_dim={config.pooled_projection_dim} and "
                           f"joint_attention_dim={config.joint_attention_dim} do not fit the text encoders (pooled "
                           f"{pooled}, CLIP widths {widths}, T5 width {t5})")


def load_sd3(directory: Union[str, Path], device="cpu", dtype: torch.dtype = torch.float32,
             progress: bool = True, lora=None) -> StableDiffusion3:
    """Load an SD3 diffusers folder (``StableDiffusion3Pipeline``; never downloads): what diffkit does not
    drive is refused in one line before any weight is read (:func:`check_sd3_folder`). ``lora``: LoRA files in
    diffusers / PEFT format (paths or (path, scale) pairs; ``transformer.`` / ``text_encoder.`` /
    ``text_encoder_2.`` keys, :mod:`.sd3_lora`: any other key refused), merged as ``load_lora_weights`` +
    ``fuse_lora(lora_scale=scale)`` (:mod:`.sd_lora`; read and checked first)."""
    from ..schedule import NoiseSchedule
    from .sd3_lora import read_sd3_loras
    from .sd_lora import merge_sd_loras
    diffusers = require("diffusers")
    directory = Path(directory)
    index, sched = check_sd3_folder(directory)
    loras = read_sd3_loras(lora) if lora else []
    T = int(sched.get("num_train_timesteps", 1000))
    schedule = NoiseSchedule.flow(T, _fixed_shift(sched))
    texts = {"": "CLIPTextModelWithProjection", "_2": "CLIPTextModelWithProjection", "_3": "T5EncoderModel"}
    parts = load_flow_parts(directory, index, diffusers.SD3Transformer2DModel, texts, dtype, progress)
    device = torch.device(device)
    for name in ("transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3"):
        if parts[name] is not None:
            parts[name].to(device).eval().requires_grad_(False)
    sd3 = StableDiffusion3(**parts, schedule=schedule, scheduler_config=sched, device=device, dtype=dtype)
    _check_dimensions(sd3, directory)
    if sd3.dynamic_shifting:  # the default size's shift (StableDiffusion3.denoiser_for: any other size's)
        sd3.schedule = NoiseSchedule.flow(T, sd3.shift(*sd3.latent_shape(1)[2:]))
    merge_sd_loras(sd3, loras)
    return sd3


NO_SLG_IP = ("an IP-Adapter with skip-layer guidance is not supported: diffusers 0.42.1's StableDiffusion3Pipeline has "
             "no sound reference (its skip-layer pass gets both halves' image embeds: it fails for more than one "
             "image and mixes the null half's tokens in for one); drop the IP-Adapter or the skip-layer guidance")


def text_to_image(sd3: StableDiffusion3, prompts: Union[str, Sequence[str]], *, sampler: Optional[str] = None,
                  steps: Optional[int] = None, nfe: Optional[int] = None, guidance_scale: Optional[float] = None,
                  convention: str = "diffusers", negative_prompt: Union[None, str, Sequence[str]] = None,
                  seed: Optional[int] = 0, latents: Optional[torch.Tensor] = None, height: Optional[int] = None,
                  width: Optional[int] = None, grid: Union[None, str, torch.Tensor] = None,
                  max_sequence_length: int = MAX_SEQUENCE_LENGTH, clip_skip: Optional[int] = None,
                  prompt_2=None, prompt_3=None, negative_prompt_2=None, negative_prompt_3=None,
                  skip_guidance_layers: Optional[Sequence[int]] = None, skip_layer_guidance_scale: float = 2.8,
                  skip_layer_guidance_start: float = 0.01, skip_layer_guidance_stop: float = 0.2,
                  output_range: str = "0,1", return_latents: bool = False, progress: bool = False,
                  controlnet=None, control_seed: int = 0, control_posterior: str = "sample", control_rows=None,
                  control_mask: Optional[torch.Tensor] = None, ip_adapter=None,
                  apg_eta: float = 1.0, apg_norm_threshold: float = math.inf, apg_momentum: float = 0.0,
                  pag_scale: Optional[float] = None, pag_layers=None, pag_adaptive_scale: Optional[float] = None,
                  **options) -> torch.Tensor:
    """Images of an SD3 folder for ``prompts`` with any diffkit sampler (module docstring).

    sampler / grid: both None (the default): the pipeline's own loop, flow Euler (``ddim``, eta 0) on the
        scheduler's sigmas (``grid="scheduler"``, :meth:`StableDiffusion3.scheduler_grid`); a sampler alone: its
        default grid of the flow schedule (e.g. ``ddim@trailing``, ``unipc``, ``dpm-solver++-2m``); ``grid``: a
        tensor, or ``"scheduler"`` with any sampler.
    steps / nfe: default 28 steps (the pipeline's). guidance_scale: in ``convention`` (``diffusers``: s, the
        pipeline's 7.0 by default; ``seed``: w = s - 1). negative_prompt: the null half (default "").
    latents: z at s = 1 (B, C, h, w), as the pipeline's ``latents=``; default N(0, I) from per-sample
        ``seed + i``. max_sequence_length, clip_skip, prompt_2 / prompt_3 (the second CLIP's and T5's text,
        default the prompts) and negative_prompt_2 / _3 (default negative_prompt): the pipeline's.
        output_range: ``"0,1"`` (its ``output_type="pt"``) or ``"-1,1"``; ``return_latents``: z_0 (its
        ``output_type="latent"``).
    skip_guidance_layers (block indices, e.g. [7, 8, 9]) with skip_layer_guidance_scale / _start / _stop: the
        pipeline's skip-layer guidance (:mod:`.sd3_slg`; defaults 2.8, 0.01, 0.2), its window on the scheduler's
        grid of ``steps`` (default 28) steps; it needs guidance on (s > 1).
    controlnet: SD3 ControlNets with their control images and options (a
        :class:`~diffkit.interop.controlnet.ControlNets` of ``SD3ControlNetModel``), as
        StableDiffusion3ControlNetPipeline (:mod:`.sd3_controlnet`); ``control_posterior``: the control image's VAE
        latents, ``"sample"`` (the pipeline's; sample i's from the generator ``control_seed + i``) or ``"mean"``;
        ``control_rows``: with one control image per prompt, each sample's (default: sample i, image i).
        ``control_mask`` (1 or B, 1, H, W) at the output size, 1 = repaint: inpainting ControlNets, as
        StableDiffusion3ControlNetInpaintingPipeline's ``control_mask`` (the control images are the images to
        inpaint; :mod:`.sd3_controlnet`).
    ip_adapter: an :class:`~.sd3_ip_adapter.SD3IPAdapter` with its image prompt, as the pipeline's
        ``load_ip_adapter`` + ``ip_adapter_image``; with ``controlnet`` as StableDiffusion3ControlNetPipeline's (the
        adapter in the transformer only: the ControlNet ignores the image embeds), with ``control_mask`` as
        StableDiffusion3ControlNetInpaintingPipeline's; not with skip-layer guidance (:data:`NO_SLG_IP`).
    apg_eta, apg_norm_threshold, apg_momentum: adaptive projected guidance (Sadat et al. 2025, Alg. 1) on the
        predicted x_0 = x - s u, as :class:`~diffkit.guidance.ClassifierFreeGuidance` for diffkit's models (the
        defaults: the pipeline's classifier-free guidance; skip-layer guidance's or PAG's term added after it).
    pag_scale, pag_layers, pag_adaptive_scale: perturbed-attention guidance as ``StableDiffusion3PAGPipeline``'s
        ``pag_scale``, ``pag_applied_layers`` (default ``blocks.1``) and ``pag_adaptive_scale`` (:mod:`.sd3_pag`);
        None or 0: off. Not with skip-layer guidance, a ControlNet or an IP-Adapter (one line); with APG its term
        is added after the APG update.
    options: passed to :func:`diffkit.sample` (e.g. ``eta``, ``flow_shift``).
    """
    from ..guidance import apg_options
    from ..sampling import sample
    from .stable_diffusion import OUTPUT_RANGES, prompt_list
    check_choice("output_range", output_range, OUTPUT_RANGES)
    if sd3.inpainting_unet:
        raise DiffkitError(_ONLY_INPAINTS)
    apg = apg_options(apg_eta, apg_norm_threshold, apg_momentum, ("apg_eta", "apg_norm_threshold", "apg_momentum"))
    from .sd3_pag import check_sd3_pag, sd3_pag
    pag = check_sd3_pag(pag_scale, pag_layers, pag_adaptive_scale, skip_layers=skip_guidance_layers,
                        controlnet=controlnet, ip_adapter=ip_adapter)
    prompts = prompt_list(prompts)
    window_steps = steps or SD3_PIPELINE_STEPS  # the pipeline's N of skip-layer guidance's window
    noise, shape = start_latents(sd3, latents, len(prompts), height, width)
    sampler, grid, steps = pipeline_grid(sampler, grid, steps, nfe, SD3_PIPELINE_STEPS,
                                         lambda n: sd3.scheduler_grid(n, *shape[2:]),
                                         options.get("flow_shift"))
    scale = sd3.default_guidance_scale if guidance_scale is None else guidance_scale
    convention = "diffusers" if guidance_scale is None else convention
    if skip_guidance_layers is not None and controlnet is not None:
        raise DiffkitError("skip-layer guidance with a ControlNet is not supported (StableDiffusion3ControlNet"
                           "Pipeline has no skip_guidance_layers); give one of them")
    if control_mask is not None and controlnet is None:
        raise DiffkitError("control_mask goes with an inpainting ControlNet (controlnet=); give both or neither")

    if ip_adapter is not None and skip_guidance_layers is not None:
        raise DiffkitError(NO_SLG_IP)

    def guide(model):
        return model.prompt_guidance(prompts, negative_prompt, scale, convention, max_sequence_length, clip_skip,
                                     prompt_2, prompt_3, negative_prompt_2, negative_prompt_3, apg=apg,
                                     ip_adapter=ip_adapter, size=shape[2:])
    if controlnet is None:
        denoiser, cond = guide(sd3)
    else:
        from .sd3_controlnet import controlnet_guidance
        denoiser, cond = controlnet_guidance(sd3, controlnet, guide, shape, sampler, steps, nfe, grid, options,
                                             control_seed, control_posterior, control_rows, control_mask)
    if skip_guidance_layers is not None:
        from .sd3_slg import skip_layer_guidance
        denoiser = skip_layer_guidance(sd3, denoiser, skip_guidance_layers, window_steps, skip_layer_guidance_scale,
                                       skip_layer_guidance_start, skip_layer_guidance_stop, size=shape[2:])
    if pag:  # PAG directly over the classifier-free guidance: one call of 3 halves (.sd3_pag)
        denoiser = sd3_pag(sd3, denoiser, pag_scale, pag_layers, pag_adaptive_scale)
    z0 = sample(denoiser, noise, sampler, steps, nfe=nfe, grid=grid, seed=seed, cond=cond,
                progress=progress, device=sd3.device, dtype=sd3.dtype, **options)
    return finish_images(sd3, z0, return_latents, output_range)


def image_to_image(sd3: StableDiffusion3, images: torch.Tensor, prompts: Union[str, Sequence[str]],
                   strength: float = SD3_IMG2IMG_STRENGTH, *, mask: Optional[torch.Tensor] = None,
                   sampler: Optional[str] = None,
                   steps: Optional[int] = None,
                   guidance_scale: Optional[float] = None, convention: str = "diffusers",
                   negative_prompt: Union[None, str, Sequence[str]] = None, posterior: str = "sample",
                   seed: Optional[int] = 0, generator=None, max_sequence_length: int = MAX_SEQUENCE_LENGTH,
                   clip_skip: Optional[int] = None, prompt_2=None, prompt_3=None, negative_prompt_2=None,
                   negative_prompt_3=None, output_range: str = "0,1", return_latents: bool = False,
                   progress: bool = False, ip_adapter=None, apg_eta: float = 1.0, apg_norm_threshold: float = math.inf,
                   apg_momentum: float = 0.0, pag_scale: Optional[float] = None, pag_layers=None,
                   pag_adaptive_scale: Optional[float] = None, **options) -> torch.Tensor:
    """SDEdit of ``images`` (B, 3, H, W) in [-1, 1] towards ``prompts`` (one, or one per image), as
    ``StableDiffusion3Img2ImgPipeline`` (Meng et al. 2022, Alg. 1 on SD3's latents): z = (E(x) - shift) * scale
    (``posterior="sample"``: drawn from image i's generator ``seed + i``, then its forward noise, as the pipeline
    with one generator per image; ``"mean"``: its ``sample_mode="argmax"``), noised to the first sigma s_0 of the
    strength's part of the scheduler's grid, (1 - s_0) z + s_0 eps (``scale_noise``; diffkit's q_sample at the
    VP time of equal SNR, the same state up to the scale DDIM ignores), then the pipeline's FlowMatchEuler steps
    (:meth:`StableDiffusion3.pipeline_strength`: ``steps`` default 50 and strength 0.6, the pipeline's). The one
    implementation is :func:`diffkit.latent_editing.latent_img2img`. ``sampler`` (or ``grid`` in ``options``)
    given: that sampler on its own grid, cut as :func:`diffkit.img2img` (int(steps * strength) intervals).
    Prompt and guidance arguments as :func:`text_to_image` (``apg_eta``, ``apg_norm_threshold``, ``apg_momentum``:
    adaptive projected guidance, Sadat et al. 2025, Alg. 1, on the guided calls of the edit).

    ``mask`` (B or 1, 1, H, W), 1 = repaint: inpainting as ``StableDiffusion3InpaintPipeline`` with SD3's own
    (16-channel) transformer, :func:`diffkit.latent_editing.latent_inpaint`: the mask binarised and nearest-resized
    to the latents, the kept region's x_0 replaced by the image's latents at every step (which puts it at
    ``scale_noise(z, next sigma, noise)``, the pipeline's blend, and at z after the last step); at strength 1 from
    pure noise (its ``is_strength_max``). A 33-channel inpainting transformer (:attr:`StableDiffusion3.inpainting_unet`)
    takes the mask and the masked image's latents as input at every call instead, nothing replaced, as the
    pipeline's ``num_channels_transformer == 33`` path (:func:`.sd_inpaint.unet_inpaint`: draws per image [the
    image's posterior sample if strength < 1], the noise, the masked image's posterior sample); it only inpaints.

    ``ip_adapter``: an :class:`~.sd3_ip_adapter.SD3IPAdapter` with its image prompt, as both pipelines'
    ``load_ip_adapter`` + ``ip_adapter_image`` (zero embeds in the null half,
    :meth:`StableDiffusion3.prompt_guidance`).

    ``pag_scale``, ``pag_layers``, ``pag_adaptive_scale``: perturbed-attention guidance as
    ``StableDiffusion3PAGImg2ImgPipeline`` (:mod:`.sd3_pag`; img2img only, without an IP-Adapter; with APG its term is
    added after the APG update)."""
    from ..guidance import apg_options
    from .flow_latents import edit_latents, edit_prompts
    from .sd3_pag import check_sd3_pag, sd3_pag
    from .stable_diffusion import OUTPUT_RANGES
    check_choice("output_range", output_range, OUTPUT_RANGES)
    apg = apg_options(apg_eta, apg_norm_threshold, apg_momentum, ("apg_eta", "apg_norm_threshold", "apg_momentum"))
    pag = check_sd3_pag(pag_scale, pag_layers, pag_adaptive_scale, ip_adapter=ip_adapter, mask=mask)
    prompts = edit_prompts(images, prompts)
    sd3.latent_shape(1, images.shape[2], images.shape[3])  # multiples of the VAE factor x the patch size
    if mask is None and sd3.inpainting_unet:
        raise DiffkitError(_ONLY_INPAINTS)
    steps = 50 if steps is None else steps  # the img2img pipeline's num_inference_steps
    size = (images.shape[2] // sd3.vae_scale_factor, images.shape[3] // sd3.vae_scale_factor)
    if sampler is None and "grid" not in options:
        sampler, options["grid"] = "ddim", sd3.scheduler_grid(steps, *size)
        strength = sd3.pipeline_strength(steps, strength)
    scale = sd3.default_guidance_scale if guidance_scale is None else guidance_scale
    convention = "diffusers" if guidance_scale is None else convention
    denoiser, cond = sd3.prompt_guidance(prompts, negative_prompt, scale, convention, max_sequence_length, clip_skip,
                                         prompt_2, prompt_3, negative_prompt_2, negative_prompt_3, apg=apg,
                                         ip_adapter=ip_adapter, size=size)
    if pag:
        denoiser = sd3_pag(sd3, denoiser, pag_scale, pag_layers, pag_adaptive_scale)
    z0 = edit_latents(sd3, denoiser, images, strength, sampler, steps, mask, posterior=posterior, seed=seed,
                      generator=generator, cond=cond, progress=progress, **options)
    return finish_images(sd3, z0, return_latents, output_range)


__all__ = ["StableDiffusion3", "SD3Net", "load_sd3", "is_sd3_folder", "check_sd3_folder", "text_to_image",
           "image_to_image", "SD3_PIPELINE_GUIDANCE", "SD3_PIPELINE_STEPS", "SD3_IMG2IMG_STRENGTH",
           "MAX_SEQUENCE_LENGTH"]
