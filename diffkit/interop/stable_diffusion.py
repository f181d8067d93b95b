"""A diffusers-format Stable Diffusion folder, sampled with any diffkit sampler.

Stable Diffusion (Rombach et al. 2022, seed 004) runs diffusion in the latent space of a
KL-regularised autoencoder: ``z = scaling_factor * E(x)``, the U-Net predicts eps (or v) of
``z_t`` conditioned on a CLIP text encoder's last hidden states through cross-attention, and an
image is ``x = D(z_0 / scaling_factor)``. A folder written by diffusers' ``save_pretrained``
holds ``model_index.json``, ``unet/`` (UNet2DConditionModel), ``vae/`` (AutoencoderKL),
``text_encoder/`` (CLIPTextModel), ``tokenizer/`` (CLIPTokenizer) and ``scheduler/`` (the
training noise schedule; the sampler is diffkit's).

Classifier-free guidance is diffkit's :class:`~diffkit.guidance.ClassifierFreeGuidance`
(Ho & Salimans 2022; eps-bar = eps_u + s (eps_c - eps_u) in diffusers' convention, s = 1 + w):
the prompt embedding is the ``context`` of the conditional half and the empty (or negative)
prompt's embedding its ``null_context``; the labels the wrapper requires only mark the two
halves (the network ignores them). Everything runs through :func:`diffkit.sample`, so every
registered sampler (``diffkit samplers``) works; images come back in [0, 1] (as diffusers'
``output_type="pt"``), or in [-1, 1] with ``output_range="-1,1"``. ``clip_skip`` (the pipeline's: the final norm of
the text encoder's states N layers lower, the prompts only) and SD-XL's ``prompt_2`` / ``negative_prompt_2``:
:mod:`.sd_prompts`.

A folder whose scheduler is an ``LCMScheduler`` is a latent consistency model (:mod:`.lcm`): its
denoiser is a :class:`~diffkit.consistency.ConsistencyDenoiser`, and a UNet with
``time_cond_proj_dim`` takes the guidance weight w as its input instead of classifier-free guidance.
Perturbed-attention guidance (``text_to_image(pag_scale=...)``, StableDiffusionPAGPipeline): :mod:`.sd_pag`.
GLIGEN's grounded generation (``text_to_image(gligen=...)``, StableDiffusionGLIGENPipeline): :mod:`.gligen`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from ..errors import DiffkitError, check_choice, read_json_object
from ..guidance import ClassifierFreeGuidance, GuidanceScaleInput, apg_options
from ..schedule import NoiseSchedule
from . import from_pretrained, library_progress_bars, require
from .denoiser import diffusers_denoiser
from .lcm import LCM_LORA_GUIDANCE, LCM_PIPELINE_GUIDANCE, is_lcm_scheduler, lcm_consistency, lcm_denoiser
from .schedulers import grid_from_diffusers, schedule_from_diffusers

COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
TEXTLESS_COMPONENTS = ("unet", "vae", "scheduler")  # an SD-XL refiner's, besides text_encoder_2 / tokenizer_2
OUTPUT_RANGES = ("0,1", "-1,1")
SD_PIPELINE_GUIDANCE = 7.5  # StableDiffusionPipeline's default guidance_scale s (w = 6.5)
NULL_LABEL = 1  # the label marking the null half of a guided call (the conditional half: 0, see cond)


@dataclass
class StableDiffusion:
    """The loaded components of a Stable Diffusion folder (see :func:`load_stable_diffusion`)."""

    unet: object
    vae: object
    text_encoder: object
    tokenizer: object
    schedule: NoiseSchedule
    prediction_type: str
    scheduler_config: dict
    device: torch.device
    dtype: torch.dtype = torch.float32
    consistency: Optional[dict] = None  # an LCMScheduler folder: sigma_data, timestep_scaling, grid (.lcm)
    prompt_expansions: dict = field(default_factory=dict)  # multi-vector textual inversion (.sd_textual_inversion)
    _denoiser: object = field(default=None, repr=False)
    scheduler_override: Optional[str] = None  # load_stable_diffusion(scheduler=) "lcm" / "tcd", "tcd": a TCDScheduler's

    # ------------------------------------------------------------------ shapes
    @property
    def vae_scale_factor(self) -> int:
        """Spatial down-sampling factor f of the autoencoder: 2^(levels - 1)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def scaling_factor(self) -> float:
        """The latent scale (``vae.config.scaling_factor``; 0.18215 for SD 1.x): z = scale * E(x)."""
        return float(getattr(self.vae.config, "scaling_factor", 0.18215))

    def latent_shape(self, batch: int, height: Optional[int] = None, width: Optional[int] = None) -> tuple:
        """(batch, latent channels, height / f, width / f); default size unet.sample_size * f."""
        f = self.vae_scale_factor
        size = self.unet.config.sample_size
        size = size if isinstance(size, int) else size[0]
        height = size * f if height is None else height
        width = size * f if width is None else width
        if isinstance(height, bool) or isinstance(width, bool) or not (
                isinstance(height, int) and isinstance(width, int) and height > 0 and width > 0):
            raise DiffkitError(f"height={height!r}, width={width!r} are not allowed; give positive multiples of {f}")
        if height % f or width % f:
            raise DiffkitError(f"height x width {height}x{width} must be multiples of the VAE factor {f}")
        return (batch, self.unet.config.in_channels, height // f, width // f)

    # ------------------------------------------------------------------ prompts
    def encode_prompts(self, prompts: Sequence[str], clip_skip: Optional[int] = None) -> torch.Tensor:
        """CLIP text embeddings (B, model_max_length, dim): the tokens padded to the tokenizer's
        ``model_max_length`` and truncated, the text encoder's last hidden states (as diffusers); a
        multi-vector textual-inversion token is expanded first (:func:`.sd_textual_inversion.expand_prompt`).
        ``clip_skip`` N: the final norm of the states N layers lower (:mod:`.sd_prompts`)."""
        from .sd_prompts import check_clip_skip, layer_counts, skipped_last_states
        from .sd_textual_inversion import expand_prompt
        clip_skip = check_clip_skip(clip_skip, layer_counts([self.text_encoder]))
        prompts = [expand_prompt(p, self.tokenizer, self.prompt_expansions) for p in prompt_list(prompts)]
        tokens = self.tokenizer(prompts, padding="max_length", max_length=self.tokenizer.model_max_length,
                                truncation=True, return_tensors="pt")
        mask = None
        if getattr(self.text_encoder.config, "use_attention_mask", False):
            mask = tokens.attention_mask.to(self.device)
        if clip_skip is not None:
            return skipped_last_states(self.text_encoder, tokens.input_ids.to(self.device), mask, clip_skip).to(
                self.dtype)
        with torch.no_grad():
            out = self.text_encoder(tokens.input_ids.to(self.device), attention_mask=mask)[0]
        return out.to(self.dtype)

    # ------------------------------------------------------------------ denoisers
    @property
    def guidance_embedding_dim(self) -> int:
        """The UNet's ``time_cond_proj_dim`` (an LCM's guidance-scale input, LCM Sec. 4.2), 0 if none."""
        return int(self.unet.config.get("time_cond_proj_dim") or 0)

    @property
    def default_guidance_scale(self) -> float:
        """diffusers' default s for this folder: 7.5 (StableDiffusionPipeline), 8.5 for an LCM
        with a guidance input (LatentConsistencyModelPipeline), 1 (no guidance) for an LCM-LoRA."""
        if self.consistency is None:
            return LCM_LORA_GUIDANCE if self.scheduler_override else SD_PIPELINE_GUIDANCE
        return LCM_PIPELINE_GUIDANCE if self.guidance_embedding_dim else LCM_LORA_GUIDANCE

    @property
    def inpainting_unet(self) -> bool:
        """A dedicated inpainting UNet (in_channels = 2 out_channels + 1: latents, mask, masked-image latents;
        :mod:`.sd_inpaint`), loaded with ``inpainting=True``."""
        from .sd_inpaint import is_inpainting_config
        return is_inpainting_config(self.unet.config)

    @property
    def instruct_pix2pix_unet(self) -> bool:
        """An InstructPix2Pix UNet (in_channels = 2 out_channels: latents, image latents; :mod:`.sd_instruct_pix2pix`),
        loaded with ``instruct_pix2pix=True``."""
        from .sd_instruct_pix2pix import is_instruct_pix2pix_config
        return is_instruct_pix2pix_config(self.unet.config)

    @property
    def network_denoiser(self):
        """The :class:`~diffkit.denoiser.Denoiser` of the UNet's output (cond: ``context`` = prompt
        embeddings; ``w`` too with a guidance input)."""
        if self._denoiser is None and self.inpainting_unet:  # 9 input channels (.sd_inpaint)
            from .sd_inpaint import inpainting_denoiser
            self._denoiser = inpainting_denoiser(self.unet, self.schedule, self.prediction_type)
        if self._denoiser is None and self.instruct_pix2pix_unet:  # 8 input channels (.sd_instruct_pix2pix)
            from .sd_instruct_pix2pix import instruct_pix2pix_denoiser
            self._denoiser = instruct_pix2pix_denoiser(self.unet, self.schedule, self.prediction_type)
        from .sd_depth import depth_denoiser, is_depth_config
        if self._denoiser is None and is_depth_config(self.unet.config):  # 5 input channels (.sd_depth)
            self._denoiser = depth_denoiser(self.unet, self.schedule, self.prediction_type)
        from .sd_upscale import is_upscale_config, upscale_denoiser
        if self._denoiser is None and is_upscale_config(self.unet.config):  # 7 input channels (.sd_upscale)
            self._denoiser = upscale_denoiser(self.unet, self.schedule, self.prediction_type)
        if self._denoiser is None:
            self._denoiser = diffusers_denoiser(self.unet, schedule=self.schedule, prediction_type=self.prediction_type,
                                                learned_variance=False, uses_labels=False)
        return self._denoiser

    def _model(self, inner):
        return inner if self.consistency is None else lcm_denoiser(inner, self.consistency)

    @property
    def denoiser(self):
        """The unguided denoiser (cond: ``context``): :attr:`network_denoiser`, or for an
        LCMScheduler folder the consistency function around it (:func:`.lcm.lcm_denoiser`)."""
        return self._model(self.network_denoiser)

    def guided(self, guidance_scale: float, null_context: torch.Tensor, convention: str = "diffusers", **options):
        """Classifier-free guidance of the network's output (then the consistency function for an
        LCMScheduler folder, as StableDiffusionPipeline feeds the guided output to LCMScheduler);
        ``null_context`` is the empty / negative prompt's embedding. Call it with
        ``cond=self.cond(context)``. A UNet with a guidance input is refused: see :meth:`with_weight`.
        ``rescale`` (Lin et al. 2024, eq. 15-16) works, as diffusers' ``rescale_noise_cfg``, on the UNet's own
        output: the noise, or v for a v-prediction UNet (``rescale_space`` overrides)."""
        options.setdefault("rescale_space", "v" if self.prediction_type == "v_prediction" else "eps")
        if self.guidance_embedding_dim:
            raise DiffkitError(f"this LCM UNet takes the guidance weight w as its input (time_cond_proj_dim="
                               f"{self.guidance_embedding_dim}); use with_weight(w), one call per step, not "
                               f"classifier-free guidance")
        return self._model(ClassifierFreeGuidance(self.network_denoiser, guidance_scale, convention,
                                                  null_class=NULL_LABEL, null_context=null_context, **options))

    def with_weight(self, guidance_scale: float, convention: str = "diffusers"):
        """An LCM UNet with a guidance input asked for ``guidance_scale`` (diffusers' s, w = s - 1;
        ``convention="seed"``: w): :class:`~diffkit.guidance.GuidanceScaleInput` around
        :attr:`denoiser`, one call of batch B per step (cond: ``context``)."""
        if not self.guidance_embedding_dim:
            raise DiffkitError("this UNet has no guidance input (time_cond_proj_dim); use guided() (classifier-free "
                               "guidance)")
        return GuidanceScaleInput(self.denoiser, guidance_scale, convention)

    def weight_input_guidance(self, guidance_scale: float, convention: str, negative_prompt=None,
                              guidance_rescale: float = 0.0, negative_prompt_2=None, apg: Optional[dict] = None):
        """:meth:`with_weight` for a UNet with a guidance input (``time_cond_proj_dim``), as diffusers'
        pipelines (LatentConsistencyModelPipeline, StableDiffusionXLPipeline) embed ``guidance_scale - 1`` as
        ``timestep_cond`` with no classifier-free pass, so a ``negative_prompt`` or ``guidance_rescale`` is
        refused in one line (SD-XL's ``negative_prompt_2`` too, and ``apg``'s settings); ``None`` for a UNet without
        one (classifier-free guidance: :meth:`guided`)."""
        if not self.guidance_embedding_dim:
            return None
        for name, value in (("negative_prompt", negative_prompt), ("guidance_rescale", guidance_rescale or None),
                            ("negative_prompt_2", negative_prompt_2), *(apg or {}).items()):
            if value is not None:
                raise DiffkitError(f"{name}={value!r} is not allowed: this LCM UNet takes the guidance weight as "
                                   f"its input (time_cond_proj_dim={self.guidance_embedding_dim}), with no "
                                   f"classifier-free pass to rescale, project or to give a negative prompt")
        return self.with_weight(guidance_scale, convention)

    @staticmethod
    def cond(context: torch.Tensor) -> dict:
        """The ``cond`` of a guided call: the prompt embeddings and the labels marking the
        conditional half (0; the null half gets 1)."""
        return {"context": context, "y": torch.zeros(context.shape[0], dtype=torch.long, device=context.device)}

    def scheduler_grid(self, steps: int) -> torch.Tensor:
        """The time grid diffusers' DDIM would use with this folder's scheduler config
        (timestep_spacing, steps_offset, set_alpha_to_one), as a diffkit grid; for an
        LCMScheduler folder LCMScheduler's own timesteps, ending at clean data (-1)."""
        diffusers = require("diffusers")
        if self.consistency is not None or self.scheduler_override:  # LCMScheduler, TCDScheduler (.sd_scheduler)
            scheduler = getattr(diffusers, self.scheduler_config["_class_name"]).from_config(self.scheduler_config)
            try:
                scheduler.set_timesteps(steps)
            except ValueError as err:  # more steps than original_inference_steps
                raise DiffkitError(f"steps={steps} is not allowed for this LCMScheduler: {err}") from None
            return torch.cat([scheduler.timesteps.to(torch.float64), torch.tensor([-1.0], dtype=torch.float64)])
        scheduler = diffusers.DDIMScheduler.from_config(self.scheduler_config)
        scheduler.set_timesteps(steps)
        return grid_from_diffusers(scheduler)

    def prompt_guidance(self, prompts: list, negative_prompt, guidance_scale: float, convention: str,
                        guidance_rescale: float, image_size: tuple = None, micro_conditioning=None,
                        clip_skip: Optional[int] = None, prompt_2=None, negative_prompt_2=None,
                        apg: Optional[dict] = None) -> tuple:
        """(denoiser, cond) of :func:`text_to_image`: the prompts' embeddings (``clip_skip``: :mod:`.sd_prompts`),
        guided against the empty or negative prompt (or, for an LCM UNet with a guidance input, w as that input).
        ``apg``: adaptive projected guidance's keyword arguments of the guidance
        (:func:`~diffkit.guidance.apg_options`; refused for a guidance input).
        ``image_size``, ``micro_conditioning``, ``prompt_2`` and ``negative_prompt_2`` are SD-XL's (:mod:`.sd_xl`);
        SD 1.x/2.x has no such input."""
        from .sd_prompts import refuse_second_prompts
        if micro_conditioning:
            raise DiffkitError(f"micro_conditioning={micro_conditioning!r} is not allowed: it is SD-XL's size "
                               f"conditioning; this Stable Diffusion UNet is conditioned on the text encoder alone")
        refuse_second_prompts(prompt_2, negative_prompt_2)
        context = self.encode_prompts(prompts, clip_skip)
        weighted = self.weight_input_guidance(guidance_scale, convention, negative_prompt, guidance_rescale, apg=apg)
        if weighted is not None:  # LCM: w is the network's input (LatentConsistencyModelPipeline)
            return weighted, {"context": context}
        negatives = negative_prompts(negative_prompt, len(prompts))
        denoiser = self.guided(guidance_scale, self.encode_prompts(negatives), convention, rescale=guidance_rescale,
                               **(apg or {}))
        cond = self.cond(context)
        return denoiser, cond

    # ------------------------------------------------------------------ images
    @property
    def image_channels(self) -> int:
        """The channels of the images the VAE encodes (``vae.config.in_channels``)."""
        return int(self.vae.config.in_channels)

    downsampling_factor = vae_scale_factor  # the name diffkit's FrozenAutoencoder gives f

    def encode(self, images: torch.Tensor, generator=None, sample: bool = False) -> torch.Tensor:
        """z = scaling_factor * E(x) for images in [-1, 1]: the posterior mean, or with ``sample`` a
        draw mean + std * eps, eps from ``generator`` (one, or one per image) as diffusers'
        ``retrieve_latents(vae.encode(x), generator)`` draws it in its img2img and inpainting
        pipelines (``sample_mode="sample"``, their default; ``"argmax"`` is the mean)."""
        return (self.scaling_factor * vae_latents(self.vae, images, self.device, generator, sample)).float()

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """x = D(z / scaling_factor), in [-1, 1] (not clamped)."""
        with torch.no_grad():
            z = latents.to(device=self.device, dtype=self.vae.dtype) / self.scaling_factor
            return self.vae.decode(z, return_dict=False)[0].float()


def vae_latents(vae, images: torch.Tensor, device, generator=None, sample: bool = False) -> torch.Tensor:
    """E(x), unscaled: the VAE posterior's mean, or with ``sample`` mean + std * eps, eps from ``generator`` (one,
    or one per image), as diffusers' ``retrieve_latents(vae.encode(x), generator)``."""
    from ..noise import randn
    with torch.no_grad():
        posterior = vae.encode(images.to(device=device, dtype=vae.dtype), return_dict=False)[0]
        z = posterior.mean
        if sample:
            z = z + posterior.std * randn(z.shape, generator, device=z.device, dtype=z.dtype)
    return z


def prompt_list(prompts: Union[str, Sequence[str]]) -> list:
    """``prompts`` as a non-empty list of strings (one string: a list of one)."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise DiffkitError("prompts must be a non-empty list of strings")
    return prompts


def negative_prompts(negative_prompt: Union[None, str, Sequence[str]], batch: int) -> list:
    """One negative prompt per prompt: ``negative_prompt`` (None: the empty prompt) repeated, or a
    list of ``batch`` of them."""
    if negative_prompt is None or isinstance(negative_prompt, str):
        return [negative_prompt or ""] * batch
    negatives = list(negative_prompt)
    if len(negatives) != batch:
        raise DiffkitError(f"negative_prompt has {len(negatives)} entries for {batch} prompts; give one per prompt")
    return negatives


def _image_size(sd: StableDiffusion, latents: Optional[torch.Tensor], height, width) -> tuple:
    """(height, width) of the images: as given, else the latents' size times f, else the UNet's sample size times f."""
    f = sd.vae_scale_factor
    if latents is not None and latents.ndim == 4:
        default = (latents.shape[2] * f, latents.shape[3] * f)
    else:
        default = tuple(sd.latent_shape(1)[2:])
        default = (default[0] * f, default[1] * f)
    return (default[0] if height is None else height, default[1] if width is None else width)


def _read_index(directory: Path, components: Sequence[str] = COMPONENTS) -> dict:
    index_file = directory / "model_index.json"
    if not index_file.is_file():
        raise DiffkitError(f"{directory} is not a diffusers folder (no model_index.json)")
    index = read_json_object(index_file, "diffusers index")
    check_components(directory, index, components, "Stable Diffusion")
    return index


def check_components(directory: Path, index: dict, components: Sequence[str], kind: str) -> None:
    """Each of ``components`` is named in ``model_index.json`` (a [library, class] pair) and is a sub-folder."""
    missing = [c for c in components if not isinstance(index.get(c), list) or len(index[c]) != 2 or index[c][0] is None
               or not (directory / c).is_dir()]
    if missing:
        raise DiffkitError(f"{directory} lacks the {kind} component(s) {', '.join(missing)}; allowed: a "
                           f"folder with {', '.join(components)}")


def check_stable_diffusion_unet(config: dict, directory, lcm: bool = False, inpainting: bool = False,
                                depth: bool = False, *, instruct_pix2pix: bool = False, upscale: bool = False) -> None:
    """The text-to-image UNet2DConditionModel that :func:`text_to_image` drives: conditioned on
    the text encoder's states alone, on the VAE's latents. SD-XL (``addition_embed_type``: pooled
    text and size conditioning), class / time-embedding conditions and inpainting or depth UNets
    (extra input channels) need inputs diffkit does not give: refused here, before loading. A
    guidance input (``time_cond_proj_dim``) is an LCM's and needs ``lcm`` (an LCMScheduler folder); a 9-channel
    inpainting UNet (:mod:`.sd_inpaint`) needs ``inpainting``, an 8-channel InstructPix2Pix UNet
    (:mod:`.sd_instruct_pix2pix`) ``instruct_pix2pix``, a 5-channel depth UNet (:mod:`.sd_depth`) ``depth``, a
    7-channel x4 upscaler UNet (:mod:`.sd_upscale`: its class label is the noise level) ``upscale``."""
    from .gligen import check_gligen_unet
    check_gligen_unet(config, directory)  # a GLIGEN text-image or inpainting UNet (.gligen)
    from .sd_upscale import check_upscale_unet
    if check_upscale_unet(config, directory, upscale, lcm):
        return
    extra = [f"{key}={config[key]!r}" for key in ("addition_embed_type", "class_embed_type", "encoder_hid_dim_type")
             if config.get(key) is not None]
    dim = config.get("time_cond_proj_dim")
    if dim is not None and not lcm:
        raise DiffkitError(f"{directory} has a UNet with time_cond_proj_dim={dim!r} (a latent consistency model's "
                           f"guidance input) but its scheduler is not an LCMScheduler; allowed: such a UNet with "
                           f"scheduler/scheduler_config.json of an LCMScheduler")
    if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int) or dim < 4):
        raise DiffkitError(f"{directory} has a UNet with time_cond_proj_dim={dim!r}; allowed: an integer >= 4 (the "
                           f"guidance embedding divides by dim // 2 - 1)")
    if extra:
        raise DiffkitError(f"{directory} has a UNet with {', '.join(extra)} (e.g. SD-XL); diffkit samples Stable "
                           f"Diffusion 1.x/2.x-style UNets conditioned on the text encoder alone")
    in_channels, out_channels = config.get("in_channels", 4), config.get("out_channels", 4)
    from .sd_inpaint import check_inpainting_unet
    if check_inpainting_unet(config, directory, inpainting, lcm):
        return
    from .sd_instruct_pix2pix import check_instruct_pix2pix_unet
    if check_instruct_pix2pix_unet(config, directory, instruct_pix2pix, lcm):
        return
    from .sd_depth import check_depth_unet
    if check_depth_unet(config, directory, depth, lcm):
        return
    if in_channels != out_channels:
        raise DiffkitError(f"{directory} has a UNet with in_channels={in_channels} and out_channels={out_channels} "
                           f"(a model that takes extra inputs of another kind); allowed: in_channels = out_channels, "
                           f"or out_channels + 5 / + 4 / + 1 (inpainting, InstructPix2Pix, depth-to-image UNets), "
                           f"+ 3 with a class embedding (x4 upscaler)")


def load_stable_diffusion(directory: Union[str, Path], device="cpu", dtype: torch.dtype = torch.float32,
                          progress: bool = True, lora=None, textual_inversion=None,
                          inpainting: bool = False, scheduler: Optional[str] = None,
                          instruct_pix2pix: bool = False, depth: bool = False,
                          upscale: bool = False) -> StableDiffusion:
    """Load a diffusers-format Stable Diffusion folder from disk (never downloads); ``progress=False``
    hides diffusers' and transformers' loading bars. ``lora``: LoRA files (paths or (path, scale)
    pairs, diffusers or kohya format) merged into the UNet and text encoder as diffusers'
    ``load_lora_weights`` + ``fuse_lora(lora_scale=scale)`` (:mod:`.sd_lora`; read and checked first).
    ``textual_inversion``: embedding files (paths or (path, token or None) pairs) added to the tokenizer and
    text encoder as diffusers' ``load_textual_inversion(path, token=token)`` (:mod:`.sd_textual_inversion`).
    ``inpainting``: allow a 9-channel inpainting UNet (:mod:`.sd_inpaint`; it only inpaints). ``scheduler``:
    ``"lcm"`` / ``"tcd"`` samples the folder as diffusers' ``pipe.scheduler = LCMScheduler.from_config(
    pipe.scheduler.config)`` (TCDScheduler) would, e.g. with an LCM-LoRA in ``lora`` (:mod:`.sd_scheduler`; a folder
    whose own scheduler is a TCDScheduler as ``"tcd"``). ``instruct_pix2pix``: allow an 8-channel InstructPix2Pix UNet
    (:mod:`.sd_instruct_pix2pix`; it only edits images). ``depth``: allow a 5-channel depth-to-image UNet
    (:mod:`.sd_depth`; it only edits, its cond takes a ``depth_map``). ``upscale``: allow a 7-channel x4 upscaler UNet
    (:mod:`.sd_upscale`; its VAE's scaling_factor set to 0.08333, as StableDiffusionUpscalePipeline). An SD-XL folder
    loads as
    :func:`.sd_xl.load_sd_xl`, a Kolors folder as :func:`.kolors.load_kolors` (depth / upscale UNets: refused there
    by its UNet check)."""
    from .sd_lora import merge_sd_loras, read_sd_loras
    from .sd_textual_inversion import add_textual_inversions, read_textual_inversions
    from .sd_scheduler import check_scheduler_override
    from .sd3 import is_sd3_folder
    from .sd_xl import is_sd_xl_folder, load_sd_xl
    from .sd_latent_upscale import refuse_latent_upscale_folder
    refuse_latent_upscale_folder(directory)  # its UNet takes low-resolution latents (.sd_latent_upscale)
    from .marigold import refuse_marigold_folder
    refuse_marigold_folder(directory, "sampling or editing")  # it predicts depth / normals / intrinsics (.marigold)
    from .sd_image_variation import refuse_image_variation_folder
    refuse_image_variation_folder(directory)  # its UNet attends to a CLIP image embedding (.sd_image_variation)
    from .stable_unclip import refuse_stable_unclip_folder
    refuse_stable_unclip_folder(directory)  # its UNet's class label is a CLIP image embedding (.stable_unclip)
    from .animatediff import refuse_animatediff_folder
    refuse_animatediff_folder(directory)  # a video model with a motion adapter (.animatediff; diffkit video)
    if is_sd3_folder(directory):
        raise DiffkitError(f"{directory} is a Stable Diffusion 3 folder (an SD3Transformer2DModel, no UNet); load it "
                           f"with diffkit.interop.load_sd3 (diffkit sample takes it; edit, LoRA files and the other "
                           f"UNet options do not apply)")
    from .flux import is_flux_folder
    if is_flux_folder(directory):
        raise DiffkitError(f"{directory} is a FLUX.1 folder (a FluxTransformer2DModel, no UNet); load it with "
                           f"diffkit.interop.load_flux (diffkit sample takes it)")
    check_scheduler_override(directory, scheduler)
    from .kolors import is_kolors_folder, load_kolors
    if is_kolors_folder(directory):  # SD-XL's UNet conditioned by ChatGLM3 (.kolors)
        return load_kolors(directory, device, dtype, progress, lora=lora, textual_inversion=textual_inversion,
                           scheduler=scheduler, inpainting=inpainting, instruct_pix2pix=instruct_pix2pix)
    if is_sd_xl_folder(directory):  # two text encoders, pooled text and size conditions (.sd_xl)
        return load_sd_xl(directory, device, dtype, progress, lora=lora, textual_inversion=textual_inversion,
                          scheduler=scheduler, inpainting=inpainting, instruct_pix2pix=instruct_pix2pix)
    loras = read_sd_loras(lora) if lora else []
    embeddings = read_textual_inversions(textual_inversion) if textual_inversion else []
    with library_progress_bars(progress):
        sd = _load_stable_diffusion(Path(directory), device, dtype, inpainting, scheduler=scheduler,
                                    instruct_pix2pix=instruct_pix2pix, depth=depth, upscale=upscale)
    add_textual_inversions(sd, embeddings)
    merge_sd_loras(sd, loras)
    return sd


def _load_stable_diffusion(directory: Path, device, dtype: torch.dtype, inpainting: bool = False,
                           check_unet=check_stable_diffusion_unet, scheduler: Optional[str] = None,
                           text_encoder: bool = True, instruct_pix2pix: bool = False,
                           depth: bool = False, upscale: bool = False, unet_class=None) -> StableDiffusion:
    """The folder's components; ``text_encoder=False``: without ``text_encoder`` / ``tokenizer`` (None; an
    SD-XL refiner, :mod:`.sd_xl`); ``instruct_pix2pix``: an 8-channel UNet allowed (``check_unet``'s keyword);
    ``unet_class``: the diffusers class of ``unet/`` (default UNet2DConditionModel; an AnimateDiff folder's
    UNetMotionModel, :mod:`.animatediff`)."""
    diffusers, transformers = require("diffusers"), require("transformers")
    index = _read_index(directory, COMPONENTS if text_encoder else TEXTLESS_COMPONENTS)
    device = torch.device(device)
    common = {"local_files_only": True, "torch_dtype": dtype, "use_safetensors": True}  # never a pickle (.bin)
    sched_file = directory / "scheduler" / "scheduler_config.json"
    if not sched_file.is_file():
        raise DiffkitError(f"{sched_file} does not exist")
    scheduler_config = read_json_object(sched_file, "scheduler config")
    from .sd_scheduler import override_config, own_override
    if scheduler is not None:  # LCMScheduler / TCDScheduler.from_config of it (.sd_scheduler)
        scheduler_config = override_config(scheduler_config, scheduler, directory)
    elif own_override(scheduler_config):  # a TCDScheduler folder: sampled as scheduler="tcd"
        scheduler = own_override(scheduler_config)
        scheduler_config = override_config(scheduler_config, scheduler, directory, source="a TCDScheduler folder")
    schedule, prediction_type = schedule_from_diffusers(scheduler_config)
    lcm = is_lcm_scheduler(scheduler_config)
    consistency = lcm_consistency(scheduler_config, schedule.num_timesteps, directory) if lcm else None
    check_unet(read_json_object(directory / "unet" / "config.json", "unet config"), directory, lcm, inpainting,
               instruct_pix2pix=instruct_pix2pix,
               **({"depth": True} if depth else {}),  # (a 5-channel depth UNet: .sd_depth)
               **({"upscale": True} if upscale else {}))  # (a 7-channel x4 upscaler UNet: .sd_upscale)
    unet = from_pretrained(unet_class or diffusers.UNet2DConditionModel, directory / "unet", low_cpu_mem_usage=False,
                           **common)
    vae = from_pretrained(diffusers.AutoencoderKL, directory / "vae", low_cpu_mem_usage=False, **common)
    encoder = tokenizer = None
    if text_encoder:
        text_cls = getattr(transformers, str(index["text_encoder"][1]), transformers.CLIPTextModel)
        encoder = from_pretrained(text_cls, directory / "text_encoder", **common)
        tok_cls = getattr(transformers, str(index["tokenizer"][1]), transformers.CLIPTokenizer)
        tokenizer = from_pretrained(tok_cls, directory / "tokenizer", local_files_only=True)
    for module in (unet, vae, encoder):
        if module is not None:
            module.to(device).eval().requires_grad_(False)
    if upscale:  # StableDiffusionUpscalePipeline.__init__ decodes with 0.08333 whatever the folder says (.sd_upscale)
        from .sd_upscale import SCALING_FACTOR
        vae.register_to_config(scaling_factor=SCALING_FACTOR)
    return StableDiffusion(unet, vae, encoder, tokenizer, schedule, prediction_type, scheduler_config,
                           device, dtype, consistency, scheduler_override=scheduler)


def text_to_image(sd: StableDiffusion, prompts: Union[str, Sequence[str]], *, sampler: Optional[str] = None,
                  steps: Optional[int] = None, nfe: Optional[int] = None, guidance_scale: Optional[float] = None,
                  convention: str = "diffusers", guidance_rescale: float = 0.0,
                  negative_prompt: Union[None, str, Sequence[str]] = None,
                  seed: Optional[int] = 0, latents: Optional[torch.Tensor] = None, height: Optional[int] = None,
                  width: Optional[int] = None, grid: Union[None, str, torch.Tensor] = None,
                  output_range: str = "0,1", return_latents: bool = False, progress: bool = False,
                  controlnet=None, control_rows=None, ip_adapter=None, micro_conditioning: Optional[dict] = None,
                  freeu=None, denoising_end: Optional[float] = None, clip_skip: Optional[int] = None,
                  prompt_2: Union[None, str, Sequence[str]] = None,
                  negative_prompt_2: Union[None, str, Sequence[str]] = None, pag_scale: Optional[float] = None,
                  pag_layers=None, pag_adaptive_scale: Optional[float] = None, pag_interval=None,
                  t2i_adapter=None, apg_eta: float = 1.0, apg_norm_threshold: float = math.inf,
                  apg_momentum: float = 0.0, sag_scale: Optional[float] = None, panorama: bool = False,
                  view_batch_size: Optional[int] = None, circular_padding: bool = False,
                  view_window: Optional[int] = None, view_stride: Optional[int] = None, gligen=None,
                  **options) -> torch.Tensor:
    """Images for ``prompts`` with any diffkit sampler and classifier-free guidance.

    sampler: default ``ddim``, ``consistency`` for an LCMScheduler folder (or ``scheduler="lcm"`` at load), ``tcd``
        for ``scheduler="tcd"``.
    steps / nfe: the step count or the network evaluations to spend (default 50 steps; 4 with
        the ``consistency`` or ``tcd`` sampler on an LCMScheduler folder, as LatentConsistencyModelPipeline, or
        with a scheduler override).
    guidance_scale: in ``convention`` (``diffusers``: s, 1 = unguided, SD's usual 7.5;
        ``seed``: w = s - 1); default :attr:`StableDiffusion.default_guidance_scale`. The null
        condition is the empty prompt, or ``negative_prompt``. s < 1 is applied as the formula
        says (eps_u + s (eps_c - eps_u)); diffusers' pipeline turns guidance off for any s <= 1
        instead. An LCM UNet with a guidance input gets w = s - 1 as that input instead
        (:meth:`StableDiffusion.with_weight`; one call per step; no negative prompt or rescale).
    clip_skip: the context N layers below the pipeline's default (diffusers' ``clip_skip``; the prompts only, not
        the null half; :mod:`.sd_prompts`). prompt_2 / negative_prompt_2: SD-XL's text of its second encoder (default:
        ``prompts`` / ``negative_prompt``; :mod:`.sd_prompts`).
    guidance_rescale: phi of Lin et al. 2024 (Sec. 3.4), on the network's output as diffusers'
        pipeline applies it (eps, or v for a v-prediction folder).
    latents: the starting noise z_T (B, C, h, w); default N(0, I) from per-sample ``seed + i``.
    grid: ``None`` (the sampler's default diffkit grid), ``"scheduler"`` (the timesteps diffusers
        would use with the folder's scheduler config, :meth:`StableDiffusion.scheduler_grid`) or
        an explicit grid tensor.
    output_range: ``"0,1"`` (diffusers' ``output_type="pt"``: (x + 1)/2 clamped) or ``"-1,1"``
        (clamped decoder output). ``return_latents``: return z_0 instead of images.
    controlnet: a :class:`~diffkit.interop.controlnet.ControlNets`: the UNet gets their residuals
        (StableDiffusionControlNetPipeline), or a :class:`~diffkit.interop.controlnet_xs.ControlNetXS`: the UNet
        fused with a ControlNet-XS adapter (StableDiffusion(XL)ControlNetXSPipeline; not with an IP-Adapter, PAG,
        SAG, a T2I-Adapter, a panorama, FreeU, denoising_end, guidance rescale or APG); height x width default to
        the control image's size. With a list of
        control images per ControlNet (one per prompt, as the pipeline's ``image=[...]``), prompt i takes image i,
        or image ``control_rows[i]`` where given (:meth:`~diffkit.interop.controlnet.ControlNets.rows`).
    ip_adapter: a :class:`~diffkit.interop.ip_adapter.IPAdapter`: the image prompt for every prompt (diffusers'
        ``load_ip_adapter`` + ``set_ip_adapter_scale`` + ``ip_adapter_image``).
    micro_conditioning: an SD-XL folder's size conditions (:func:`.sd_xl.StableDiffusionXL.prompt_guidance`).
    freeu: FreeU (Si et al. 2024) while sampling: a :class:`~diffkit.models.freeu.FreeU` or ``"B1,B2,S1,S2"``,
        through diffusers' own ``unet.enable_freeu(s1, s2, b1, b2)``, disabled again after.
    denoising_end: f in (0, 1), with ``return_latents``: only the grid's times t >= int(round(T - f T)), the noisy
        latents after them returned, as ``StableDiffusionXLPipeline(denoising_end=f, output_type="latent")``: the
        base's half of a hand-over to a refiner (:mod:`.sd_xl_refiner`, :mod:`diffkit.handover`).
    pag_scale, pag_layers, pag_adaptive_scale: perturbed-attention guidance (Ahn et al. 2024) as diffusers'
        ``StableDiffusionPAGPipeline`` / ``StableDiffusionXLPAGPipeline``'s ``pag_scale``, ``pag_applied_layers``
        (default ``mid``; diffusers' names) and ``pag_adaptive_scale``; ``pag_interval`` (t_lo, t_hi): only there
        (diffkit's; :mod:`.sd_pag`). None or 0: off.
    t2i_adapter: a :class:`~diffkit.interop.t2i_adapter.T2IAdapters`: their features of the control images added
        to the UNet's down blocks (StableDiffusion(XL)AdapterPipeline); height x width default to the control image's
        size (not with ``controlnet``, ``ip_adapter``, PAG, LCM / TCD; :mod:`.t2i_adapter`). A list of control images
        per adapter (one per prompt, the pipelines' ``image=[...]``): prompt i takes image i, or ``control_rows[i]``.
    apg_eta, apg_norm_threshold, apg_momentum: adaptive projected guidance (Sadat et al. 2025, Alg. 1) on the
        predicted x_0, as :class:`~diffkit.guidance.ClassifierFreeGuidance` for diffkit's models (the defaults: plain
        classifier-free guidance; with PAG over it as there; not for an LCM UNet with a guidance input).
    gligen: a :class:`~diffkit.interop.gligen.Grounding` (phrases, boxes, beta) for a GLIGEN folder's gated UNet, as
        StableDiffusionGLIGENPipeline's ``gligen_phrases``, ``gligen_boxes``, ``gligen_scheduled_sampling_beta`` (not
        with ControlNets, adapters, PAG, SAG, a panorama, LCM / TCD or denoising_end; :mod:`.gligen`).
    options: passed to :func:`diffkit.sample` (e.g. ``eta``, ``spacing``, ``final``).
    """
    from ..models.freeu import freeu_enabled, parse_freeu
    apg = apg_options(apg_eta, apg_norm_threshold, apg_momentum, ("apg_eta", "apg_norm_threshold", "apg_momentum"))
    from ..sampling import sample
    from ..samplers.registry import CONSISTENCY_SAMPLERS
    from .lcm import LCM_STEPS
    freeu = None if freeu is None else parse_freeu(freeu)  # checked before any work
    if getattr(sd, "requires_aesthetics_score", False) or denoising_end is not None:
        from .sd_xl_refiner import check_text_to_image
        options["denoising_end"] = check_text_to_image(sd, denoising_end, return_latents)
    check_choice("output_range", output_range, OUTPUT_RANGES)
    from .controlnet_xs import refuse_with_xs  # a ControlNet-XS adapter: its pipelines' options only
    refuse_with_xs(controlnet, {"an IP-Adapter": ip_adapter, "PAG (pag_scale)": pag_scale, "a T2I-Adapter": t2i_adapter,
                                "SAG (sag_scale)": sag_scale, "a panorama": panorama, "FreeU": freeu,
                                "a refiner hand-over (denoising_end)": denoising_end,
                                "guidance rescale": guidance_rescale, "APG (apg_eta ...)": apg or None})
    from .gligen import refuse_with_gligen  # GLIGEN: its pipeline's options only
    refuse_with_gligen(gligen, {"a ControlNet": controlnet, "an IP-Adapter": ip_adapter, "a T2I-Adapter": t2i_adapter,
                                "PAG (pag_scale)": pag_scale, "SAG (sag_scale)": sag_scale, "a panorama": panorama,
                                "a refiner hand-over (denoising_end)": denoising_end,
                                "an LCM / TCD scheduler": sd.consistency is not None or sd.scheduler_override})
    from .sd_pag import pag_request
    perturbed = pag_request(sd, pag_scale, pag_layers, pag_adaptive_scale, pag_interval, controlnet)
    from .sd_panorama import PANORAMA_SIZE, panorama_request
    from .sd_sag import sag_request
    extras = {"controlnet": controlnet, "t2i_adapter": t2i_adapter, "ip_adapter": ip_adapter, "pag_scale": pag_scale,
              "guidance_rescale": guidance_rescale, "apg_eta / apg_norm_threshold / apg_momentum": apg or None,
              "denoising_end": denoising_end}
    self_attention = sag_request(sd, sag_scale, refused=extras, sampler=sampler or "ddim",
                                 spacing=options.get("spacing"), grid=grid)
    multidiffusion = panorama_request(sd, panorama, view_batch_size, circular_padding, view_window, view_stride,
                                      sampler=sampler or "ddim", options=options, refused={
                                          "sag_scale": sag_scale, **{k: v for k, v in extras.items()
                                                                     if k != "guidance_rescale"}})
    if multidiffusion is not None:  # the pipeline's default size
        height, width = (PANORAMA_SIZE[0] if height is None else height), (PANORAMA_SIZE[1] if width is None else width)
    if t2i_adapter is not None:  # one line for what it does not combine with, before any work (.t2i_adapter)
        from .t2i_adapter import check_t2i_combination
        check_t2i_combination(sd, t2i_adapter, controlnet, ip_adapter, pag_scale)
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    batch = len(prompts)
    if guidance_scale is None:
        guidance_scale, convention = sd.default_guidance_scale, "diffusers"
    if sampler is None:
        from .sd_scheduler import default_sampler
        sampler = default_sampler(sd.scheduler_override, sd.consistency is not None)
    if ((sd.consistency is not None or sd.scheduler_override) and steps is None and nfe is None
            and not isinstance(grid, torch.Tensor)
            and sampler.split("@")[0].split(":")[0] in CONSISTENCY_SAMPLERS):
        steps = LCM_STEPS
    if isinstance(grid, str):
        check_choice("grid", grid, ["scheduler"])
        if nfe is not None:
            raise DiffkitError("grid='scheduler' takes steps (the scheduler's own step count), not nfe")
        grid = sd.scheduler_grid(steps or 50)
    rows = None
    if control_rows is not None and controlnet is None and t2i_adapter is None:
        raise DiffkitError("control_rows picks each sample's control image; give controlnet= too (or t2i_adapter=)")
    if controlnet is not None:  # the UNet with the ControlNets' residuals (.controlnet)
        from .controlnet import sampler_grid
        rows = controlnet.rows(batch, control_rows)
        height, width = controlnet.size(sd.vae_scale_factor, height, width)
        whole = {key: value for key, value in options.items() if key != "denoising_end"}  # the pipeline's window
        window_grid = sampler_grid(sd.denoiser, sampler, steps, nfe, grid, whole) if controlnet.windowed else None
        sd = controlnet.controlling(sd, height, width, window_grid)
    if ip_adapter is not None:  # the UNet with an image prompt (.ip_adapter)
        sd = ip_adapter.adapting(sd)
    if t2i_adapter is not None:  # the UNet with T2I-Adapter features (.t2i_adapter)
        from .controlnet import sampler_grid
        rows = t2i_adapter.rows(batch, control_rows)  # one control image per prompt: each sample's
        height, width = t2i_adapter.size(sd.vae_scale_factor, height, width)
        factor_grid = sampler_grid(sd.denoiser, sampler, steps, nfe, grid, options) if t2i_adapter.factor < 1 else None
        sd = t2i_adapter.adapting(sd, height, width, factor_grid)
    if gligen is not None:  # the gated UNet given the grounding tokens in the first beta N steps (.gligen)
        from .controlnet import sampler_grid
        beta_grid = sampler_grid(sd.denoiser, sampler, steps, nfe, grid, options) if gligen.needs_grid(sd) else None
        sd = gligen.grounding(sd, beta_grid)
    denoiser, cond = sd.prompt_guidance(prompts, negative_prompt, guidance_scale, convention, guidance_rescale,
                                        image_size=_image_size(sd, latents, height, width),
                                        micro_conditioning=micro_conditioning, clip_skip=clip_skip,
                                        prompt_2=prompt_2, negative_prompt_2=negative_prompt_2, apg=apg)
    if perturbed is not None:  # PAG directly over the classifier-free guidance: one call of 3 halves (.sd_pag)
        denoiser = perturbed(denoiser)
    if self_attention is not None:  # SAG over the classifier-free guidance (.sd_sag)
        denoiser = self_attention(denoiser)
    if rows is not None:  # each sample's control image (.controlnet.ControlledNet, .t2i_adapter.AdaptedNet)
        cond["control_rows"] = rows.to(sd.device)
    if grid is not None:
        steps = None
    if latents is None:
        shape = sd.latent_shape(batch, height, width)
        noise = shape
    else:
        expected = sd.latent_shape(batch, height, width)
        if latents.ndim != 4 or latents.shape[0] != batch or latents.shape[1] != expected[1]:
            raise DiffkitError(f"latents of shape {tuple(latents.shape)} are not allowed; expected ({batch}, "
                               f"{expected[1]}, h, w) for {batch} prompts")
        if (controlnet is not None or t2i_adapter is not None) and tuple(latents.shape[2:]) != tuple(expected[2:]):
            raise DiffkitError(f"latents of shape {tuple(latents.shape)} do not fit the {height}x{width} control "
                               f"image; expected {expected}")
        noise = latents.to(device=sd.device, dtype=sd.dtype)
    if multidiffusion is not None:  # the windows' average over the guided denoiser (.sd_panorama)
        denoiser = multidiffusion(denoiser, *tuple(noise.shape if latents is not None else noise)[2:])
    with freeu_enabled(sd.unet, freeu):
        z0 = sample(denoiser, noise, sampler, steps, nfe=nfe, grid=grid, seed=seed, cond=cond,
                    progress=progress, device=sd.device, dtype=sd.dtype, **options)
    if return_latents:
        return z0
    if multidiffusion is not None and multidiffusion.circular:
        from .sd_panorama import decode_circular
        images = decode_circular(sd, z0)
    else:
        images = sd.decode(z0)
    return (images / 2 + 0.5).clamp(0, 1) if output_range == "0,1" else images.clamp(-1, 1)



def is_stable_diffusion_folder(path: Union[str, Path]) -> bool:
    """True for a diffusers folder whose ``model_index.json`` names a UNet2DConditionModel (so a
    caller such as ``diffkit sample --checkpoint`` can dispatch on the path), but for an LDMTextToImagePipeline folder
    (LDMBert's, :mod:`.ldm`)."""
    index_file = Path(path) / "model_index.json"
    if not index_file.is_file():
        return False
    try:
        index = read_json_object(index_file)
    except DiffkitError:
        return False
    unet = index.get("unet") or [None, None]
    from .ldm import LDM_TEXT2IM
    return isinstance(unet, list) and len(unet) == 2 and unet[1] == "UNet2DConditionModel" and \
        index.get("_class_name") != LDM_TEXT2IM


__all__ = ["StableDiffusion", "load_stable_diffusion", "text_to_image", "is_stable_diffusion_folder", "COMPONENTS"]
