"""DeepFloyd IF folders (``IFPipeline`` and ``IFSuperResolutionPipeline``, diffusers 0.42.1), sampled with diffkit's
samplers.

DeepFloyd IF (DeepFloyd / StabilityAI 2023, after Imagen: Saharia et al. 2022, "Photorealistic Text-to-Image
Diffusion Models with Deep Language Understanding") is a cascade of diffusion models in *pixel space*: stage I draws
64 x 64 images from text, stage II upscales them to 256 x 256 given the same text. Each stage is a diffusers
``UNet2DConditionModel`` conditioned on the last hidden states of a T5 encoder (``encoder_hid_proj``: the T5 width
mapped to the cross-attention width; ``addition_embed_type="text"``: a pooled projection of the same states added to
the time embedding, computed inside the UNet from ``encoder_hidden_states`` alone), with a learned variance
(``out_channels`` = 2 x the image's 3: eps, then the interpolation v of Improved DDPM eq. 15, the scheduler's
``variance_type="learned_range"``). As the pipelines compute it:

* the prompt (``encode_prompt`` with ``clean_caption=False``): lower-cased and stripped (``_text_preprocessing``;
  ``clean_caption=True``, the pipelines' default, needs the ``bs4`` and ``ftfy`` packages and rewrites the text
  with about 40 regular expressions: not reproduced, so compare with ``clean_caption=False``), T5-tokenised, padded
  / truncated to 77 tokens, encoded under its attention mask; the UNet receives the states alone (no mask). The
  negative prompt (default "") likewise, at the same length.
* classifier-free guidance (Ho & Salimans 2022; Imagen eq. 2), the pipelines' s > 1 (stage I default 7, stage II
  4): eps = eps_u + s (eps_c - eps_u), and the variance half of the *conditional* output
  (:class:`~diffkit.guidance.ClassifierFreeGuidance`'s learned-variance rule).
* the scheduler: the folder's ``DDPMScheduler`` after ``set_timesteps(steps)`` (stage I 100, stage II 50) as
  diffkit's grid, and diffkit's ``ddpm`` with ``variance_type="learned_range"`` as its step (the respaced betas
  beta_{t|s} = 1 - abar_t / abar_s, Nichol & Dhariwal 2021 Sec. 4; Sigma = exp(v log beta + (1 - v) log
  beta-tilde)), the predicted x_0 first dynamically thresholded (Saharia et al. 2022, Imagen Sec. 2.3: per image
  s = the ``dynamic_thresholding_ratio`` quantile of |x_0|, clamped to [1, ``sample_max_value``], x_0 -> clip(x_0,
  -s, s) / s; diffkit's :class:`~diffkit.denoiser.ThresholdedDenoiser`, given the scheduler's own option names) or,
  where ``thresholding`` is off, clipped to ``clip_sample_range`` (``clip_sample``). :func:`folder_sampler`.
* the draws, image i from its own generator (the pipelines' generator list): x_T, then (stage II) the noise of the
  low-resolution image, then the steps' noise.
* the output: x_0 itself (``output_type="pt"``: no clamp), images (x_0 / 2 + 0.5).clamp(0, 1).

Stage II (:func:`super_resolve`): the low-resolution images y in [-1, 1] are resized to the output size (bilinear,
``align_corners=True``; default the UNet's ``sample_size``), noised to the level k (``noise_level``, default 250)
with the folder's ``image_noising_scheduler`` (``add_noise``: alphas_cumprod[k], i.e.
:func:`diffkit.super_res.augment` at level k + 1; the noise conditioning augmentation of Ho et al. 2021, "Cascaded
Diffusion Models", Sec. 4.1), and concatenated after x_t at every call (``in_channels`` 6), with k as the UNet's
``class_labels`` (``class_embed_type="timestep"``): :class:`~.sd_upscale.UpscaleUNetNet`, as the SD x4 upscaler.

Not run: the safety checker and the watermarker (the folders' ``safety_checker`` / ``watermarker`` components are
never loaded; diffkit writes the images as drawn). Refused in one line (:func:`check_deepfloyd_if_folder`, before
any weight is read): a folder saved as another pipeline class (IFImg2ImgPipeline, ...; the editing pipelines run on
these folders: :mod:`.deepfloyd_if_edit`), a missing component, a
UNet without the learned variance or of other channels, a scheduler that is not a ``DDPMScheduler`` with
``variance_type="learned_range"``; ``max_sequence_length`` other than 77 (the pipelines' fixed length).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from ..errors import DiffkitError, read_json_object
from . import from_pretrained, library_progress_bars, require

IF_PIPELINE, IF_SR_PIPELINE = "IFPipeline", "IFSuperResolutionPipeline"
IF_PIPELINES = (IF_PIPELINE, IF_SR_PIPELINE)
IF_MAX_LENGTH = 77  # encode_prompt's fixed max_length ("the text encoder was trained with a max length of 77")
IF_DEFAULTS = {IF_PIPELINE: (7.0, 100), IF_SR_PIPELINE: (4.0, 50)}  # __call__'s (guidance_scale, num_inference_steps)
IF_NOISE_LEVEL = 250  # IFSuperResolutionPipeline's default noise_level
IF_CHANNELS = 3  # RGB pixels
REQUIRED = ("text_encoder", "tokenizer", "unet", "scheduler")
NOT_RUN = "the safety checker and the watermarker are not run"


def deepfloyd_if_kind(path) -> Optional[str]:
    """``model_index.json``'s ``_class_name`` where it is :data:`IF_PIPELINE` or :data:`IF_SR_PIPELINE`, else None."""
    from .sd_xl import pipeline_class
    name = pipeline_class(path)
    return name if name in IF_PIPELINES else None


def is_deepfloyd_if_folder(path) -> bool:
    """True for an ``IFPipeline`` or ``IFSuperResolutionPipeline`` folder."""
    return deepfloyd_if_kind(path) is not None


def folder_sampler(config: dict) -> tuple:
    """(``"ddpm"``, its options) computing the folder's ``DDPMScheduler`` step (``config``: its JSON) on its own
    timesteps: ``variance_type="learned_range"`` and the scheduler's x_0 treatment under diffusers' own names
    (``thresholding=True`` with ``sample_max_value`` and ``dynamic_thresholding_ratio``, which takes precedence over
    ``clip_sample``; else ``clip_sample=True`` with ``clip_sample_range``), which :func:`diffkit.sample` maps onto
    :class:`~diffkit.denoiser.ThresholdedDenoiser`. Another class or variance type: one line."""
    name, variance = config.get("_class_name"), config.get("variance_type", "fixed_small")
    if name != "DDPMScheduler" or variance != "learned_range":
        raise DiffkitError(f"the folder's scheduler is a {name!r} with variance_type={variance!r}; allowed: a "
                           f"DDPMScheduler with variance_type 'learned_range' (DeepFloyd IF's learned variance)")
    options = {"variance_type": "learned_range"}
    if config.get("thresholding", False):
        options.update(thresholding=True, sample_max_value=float(config.get("sample_max_value", 1.0)),
                       dynamic_thresholding_ratio=float(config.get("dynamic_thresholding_ratio", 0.995)))
    elif config.get("clip_sample", True):
        options.update(clip_sample=True, clip_sample_range=float(config.get("clip_sample_range", 1.0)))
    return "ddpm", options


def pipeline_schedule(config: dict):
    """The :class:`~diffkit.schedule.NoiseSchedule` whose alphas_cumprod are the folder's ``DDPMScheduler``'s own,
    float32 values (diffusers' cumulative product, taken exactly; betas 1 - abar_t / abar_{t-1} in float64).

    Why not diffkit's float64 cosine (:func:`~.schedulers.schedule_from_diffusers`): the learned-range variance of
    the last noisy step (to t = 0) interpolates log beta-tilde = log((1 - abar_0) / (1 - abar_t) beta), and for the
    cosine schedule 1 - abar_0 is about 4e-5, where float32 rounding of abar_0 is a 1e-3 relative error; the
    pipelines' images then differ from the float64 schedule's by 3e-5 relative after 3 steps (measured on the tiny
    folders of tests/test_deepfloyd_if.py: 3.4e-5 stage I, 2.8e-5 stage II), from this one's by 2e-6 to 6e-6."""
    from ..schedule import NoiseSchedule
    scheduler = require("diffusers").DDPMScheduler.from_config(config)
    abar = scheduler.alphas_cumprod.to(torch.float64)
    return NoiseSchedule.from_betas(1 - abar / torch.cat([abar.new_ones(1), abar[:-1]]))


def check_deepfloyd_if_folder(directory, kind: Optional[str] = None) -> tuple:
    """(model_index dict, UNet config, scheduler config) of an IF folder, checked from its JSON alone (module
    docstring); ``kind``: the pipeline class asked for (one line naming the command for the other stage)."""
    from .pixart import check_classes
    directory = Path(directory)
    found = deepfloyd_if_kind(directory)
    if found is None:
        raise DiffkitError(f"{directory} is not a DeepFloyd IF folder (model_index.json naming "
                           f"{' or '.join(IF_PIPELINES)})")
    if kind is not None and found != kind:
        use = ("diffkit upscale --checkpoint FOLDER --images LOW_RES --prompt TEXT" if found == IF_SR_PIPELINE
               else "diffkit sample --checkpoint FOLDER --prompt TEXT")
        stage = "II" if found == IF_SR_PIPELINE else "I"
        raise DiffkitError(f"{directory} is an {found} folder (DeepFloyd IF stage {stage}); use {use}")
    required = REQUIRED + (("image_noising_scheduler",) if found == IF_SR_PIPELINE else ())
    from .sd_xl import _index
    index = _index(directory)
    check_classes(directory, index, required, f"DeepFloyd IF ({found})",
                  {"unet": ("UNet2DConditionModel",), "scheduler": ("DDPMScheduler",)})
    unet = read_json_object(directory / "unet" / "config.json", "unet config")
    expected_in = 2 * IF_CHANNELS if found == IF_SR_PIPELINE else IF_CHANNELS
    channels = (unet.get("in_channels"), unet.get("out_channels"))
    upscaled = " + the upscaled image" if found == IF_SR_PIPELINE else ""
    if channels != (expected_in, 2 * IF_CHANNELS):
        raise DiffkitError(f"{directory}'s UNet has in_channels, out_channels = {channels[0]!r}, {channels[1]!r}; "
                           f"allowed: {expected_in}, {2 * IF_CHANNELS} (RGB pixels{upscaled} in; eps and the "
                           f"learned variance out)")
    scheduler = read_json_object(directory / "scheduler" / "scheduler_config.json", "scheduler config")
    folder_sampler(scheduler)
    return index, unet, scheduler


@dataclass
class DeepFloydIF:
    """The loaded components of an IF folder (:func:`load_deepfloyd_if`), with the interface of
    :class:`~.pixart.PixArt` that :func:`.pixart.text_to_image` and ``diffkit sample`` use (pixel space: the
    "latents" are the images, :meth:`decode` the identity)."""

    pipeline: str
    unet: object
    text_encoder: object
    tokenizer: object
    schedule: object
    prediction_type: str
    scheduler_config: dict
    device: torch.device
    dtype: torch.dtype = torch.float32
    noising_schedule: object = None  # stage II: the image_noising_scheduler's NoiseSchedule
    _denoiser: object = field(default=None, repr=False)

    vae_scale_factor = 1  # pixels
    latents_are_flow_state = False
    max_sequence_length = IF_MAX_LENGTH

    @property
    def default_guidance_scale(self) -> float:
        return IF_DEFAULTS[self.pipeline][0]

    @property
    def default_steps(self) -> int:
        return IF_DEFAULTS[self.pipeline][1]

    @property
    def size_multiple(self) -> int:
        """2^(levels - 1): the UNet's downsamplings (the pipelines do not check; other sizes fail in the UNet)."""
        return 2 ** (len(self.unet.config.block_out_channels) - 1)

    def latent_shape(self, batch: int, height: Optional[int] = None, width: Optional[int] = None) -> tuple:
        """(batch, 3, height, width) of x_T; default the UNet's ``sample_size`` (the pipelines')."""
        size = int(self.unet.config.sample_size)
        height, width = (size if height is None else height), (size if width is None else width)
        multiple = self.size_multiple
        for value in (height, width):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value % multiple:
                raise DiffkitError(f"height x width {height}x{width} is not allowed; give positive multiples of "
                                   f"{multiple} (the UNet's {multiple}x downsampling)")
        return (batch, IF_CHANNELS, height, width)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Pixel space: the images are x_0 itself."""
        return x

    def encode_prompts(self, prompts: Sequence[str], max_sequence_length: Optional[int] = None) -> torch.Tensor:
        """T5 states (B, 77, d) of ``prompts`` as ``encode_prompt(clean_caption=False)`` (module docstring);
        ``max_sequence_length``: 77 or None (the pipelines' fixed length)."""
        from .stable_diffusion import prompt_list
        if max_sequence_length not in (None, IF_MAX_LENGTH):
            raise DiffkitError(f"max_sequence_length={max_sequence_length!r} is not allowed on a DeepFloyd IF "
                               f"folder; allowed: {IF_MAX_LENGTH} (the pipelines' fixed T5 length)")
        texts = [text.lower().strip() for text in prompt_list(prompts)]  # _text_preprocessing(clean_caption=False)
        tokens = self.tokenizer(texts, padding="max_length", max_length=IF_MAX_LENGTH, truncation=True,
                                add_special_tokens=True, return_tensors="pt")
        with torch.no_grad():
            states = self.text_encoder(tokens.input_ids.to(self.device),
                                       attention_mask=tokens.attention_mask.to(self.device))[0]
        return states.to(self.text_encoder.dtype)

    @property
    def denoiser(self):
        """The unguided :class:`~diffkit.denoiser.Denoiser` with the learned variance (cond: ``context``; stage II
        also ``low_res_image`` and ``noise_level``, :class:`~.sd_upscale.UpscaleUNetNet`)."""
        if self._denoiser is None:
            from .denoiser import diffusers_denoiser
            if self.pipeline == IF_SR_PIPELINE:
                from .sd_inpaint import concat_denoiser
                from .sd_upscale import UpscaleUNetNet
                self._denoiser = concat_denoiser(UpscaleUNetNet, self.unet, self.schedule, self.prediction_type,
                                                 learned_variance=True)
            else:
                self._denoiser = diffusers_denoiser(self.unet, schedule=self.schedule,
                                                    prediction_type=self.prediction_type, learned_variance=True,
                                                    uses_labels=False)
        return self._denoiser

    def scheduler_denoiser(self):
        return self.denoiser

    def folder_sampler(self) -> tuple:
        """(sampler, options) of the folder's DDPMScheduler step (:func:`folder_sampler`)."""
        return folder_sampler(self.scheduler_config)

    def scheduler_grid(self, steps: int) -> torch.Tensor:
        """diffkit's grid of the folder's DDPMScheduler after ``set_timesteps(steps)``."""
        from .pixart import own_scheduler_grid
        return own_scheduler_grid(self.scheduler_config, steps)

    def prompt_guidance(self, prompts, negative_prompt=None, guidance_scale: Optional[float] = None,
                        convention: str = "diffusers", max_sequence_length: Optional[int] = None,
                        size: Optional[tuple] = None, denoiser=None) -> tuple:
        """(denoiser, cond): the prompts' T5 states, guided against ``negative_prompt`` (None: ""; one, or one per
        prompt) where diffusers' s > 1; s <= 1 (diffusers' convention): one unguided call, as the pipelines (a
        negative prompt is then refused: they ignore it). ``size``: unused (no size conditions)."""
        from ..guidance import ClassifierFreeGuidance, guidance_weight
        from .stable_diffusion import negative_prompts
        scale = self.default_guidance_scale if guidance_scale is None else guidance_scale
        context = self.encode_prompts(prompts, max_sequence_length)
        denoiser = denoiser or self.denoiser
        if guidance_weight(scale, convention) <= 0:
            if negative_prompt is not None:
                raise DiffkitError("negative_prompt needs guidance above diffusers' s = 1 (the IF pipelines do no "
                                   "classifier-free guidance at s <= 1 and ignore it)")
            return denoiser, {"context": context}
        negatives = negative_prompts(negative_prompt, context.shape[0])
        if len(set(negatives)) == 1:
            negatives = negatives[:1]  # one row, broadcast by the guidance to every sample
        guided = ClassifierFreeGuidance(denoiser, scale, convention, null_context=self.encode_prompts(negatives))
        return guided, {"context": context}


def load_deepfloyd_if(directory: Union[str, Path], device="cpu", dtype: torch.dtype = torch.float32,
                      progress: bool = True, kind: Optional[str] = None) -> DeepFloydIF:
    """Load an IF folder (stage I or II; ``kind`` one of :data:`IF_PIPELINES` to insist on one), never downloading
    nor unpickling; the safety checker, feature extractor and watermarker are not loaded (not run). What diffkit does
    not drive is refused in one line before any weight is read (:func:`check_deepfloyd_if_folder`)."""
    from .schedulers import schedule_from_diffusers
    from .sd3 import _entry
    diffusers, transformers = require("diffusers"), require("transformers")
    directory = Path(directory)
    index, _, scheduler = check_deepfloyd_if_folder(directory, kind)
    prediction_type = schedule_from_diffusers(scheduler)[1]  # (and its checks)
    schedule, noising = pipeline_schedule(scheduler), None
    if index["_class_name"] == IF_SR_PIPELINE:
        noising_config = read_json_object(directory / "image_noising_scheduler" / "scheduler_config.json",
                                          "image_noising_scheduler config")
        schedule_from_diffusers(noising_config)  # its checks
        noising = pipeline_schedule({**noising_config, "_class_name": "DDPMScheduler"})
    common = {"local_files_only": True, "torch_dtype": dtype, "use_safetensors": True}
    with library_progress_bars(progress):
        unet = from_pretrained(diffusers.UNet2DConditionModel, directory / "unet", **common)
        text_cls = getattr(transformers, _entry(index, "text_encoder") or "", None) or transformers.T5EncoderModel
        text_encoder = from_pretrained(text_cls, directory / "text_encoder", **common)
        tok_cls = getattr(transformers, _entry(index, "tokenizer") or "", None) or transformers.AutoTokenizer
        tokenizer = from_pretrained(tok_cls, directory / "tokenizer", local_files_only=True)
    device = torch.device(device)
    for module in (unet, text_encoder):
        module.to(device).eval().requires_grad_(False)
    return DeepFloydIF(pipeline=index["_class_name"], unet=unet, text_encoder=text_encoder, tokenizer=tokenizer,
                       schedule=schedule, prediction_type=prediction_type, scheduler_config=scheduler, device=device,
                       dtype=dtype, noising_schedule=noising)


def check_low_res(model: DeepFloydIF, low_res: torch.Tensor, noise_level: int) -> int:
    """The noise level k of a stage-II call (0..T-1 of the ``image_noising_scheduler``) after ``low_res``'s shape
    (B, 3, h, w) floats; else one line."""
    from .sd_upscale import check_noise_level
    if low_res.ndim != 4 or low_res.shape[1] != IF_CHANNELS or not low_res.is_floating_point():
        raise DiffkitError(f"low_res of shape {tuple(low_res.shape)} is not allowed; give (B, 3, h, w) floats in "
                           f"[-1, 1]")
    return check_noise_level(noise_level, model.noising_schedule.num_timesteps - 1)


def low_res_condition(model: DeepFloydIF, low_res: torch.Tensor, size, level: int, generator) -> dict:
    """Stage II's UNet condition (module docstring): ``low_res`` resized to ``size`` (bilinear, ``align_corners``),
    noised to level k by the ``image_noising_scheduler`` with noise from ``generator`` (one per image), and k."""
    import torch.nn.functional as F

    from .sd_upscale import LEVEL_KEY, LOW_RES_KEY, noised_low_res
    upscaled = F.interpolate(low_res.to(model.device, torch.float32), tuple(size), mode="bilinear",
                             align_corners=True)
    noised = noised_low_res(upscaled, level, model.noising_schedule, generator)
    return {LOW_RES_KEY: noised, LEVEL_KEY: torch.full((low_res.shape[0],), level, dtype=torch.long,
                                                       device=model.device)}


def super_resolve(model: DeepFloydIF, low_res: torch.Tensor, prompts: Union[str, Sequence[str]], *,
                  negative_prompt: Union[None, str, Sequence[str]] = None, guidance_scale: Optional[float] = None,
                  noise_level: int = IF_NOISE_LEVEL, height: Optional[int] = None, width: Optional[int] = None,
                  sampler: Optional[str] = None, steps: Optional[int] = None, nfe: Optional[int] = None,
                  seed: Optional[int] = 0, generator=None, output_range: str = "0,1", return_latents: bool = False,
                  progress: bool = False, **options) -> torch.Tensor:
    """The stage-II images of ``low_res`` (B, 3, h, w) in [-1, 1] by an ``IFSuperResolutionPipeline`` folder
    ``model`` (module docstring): ``prompts`` one for every image or one each, ``negative_prompt`` the null half's,
    ``guidance_scale`` diffusers' s >= 1 (default 4), ``noise_level`` k in 0..T-1 (default 250), ``height`` x
    ``width`` the output (default the UNet's ``sample_size``). Image i draws from ``generator[i]`` (default
    ``torch.Generator().manual_seed(seed + i)``): x_T, then the low-resolution image's noise, then the sampler's.
    sampler None (and no ``nfe``): the pipeline's loop (:func:`folder_sampler` on the scheduler's timesteps, default
    50 steps); a sampler: on its own grid (``options`` to :func:`diffkit.sample`). ``return_latents`` /
    ``output_range="-1,1"``: x_0 unclamped (the pipeline's ``output_type="pt"``) / clamped to [-1, 1]."""
    from ..errors import check_choice
    from ..noise import randn
    from ..sampling import sample
    from .sd_upscale import check_guidance
    from .stable_diffusion import OUTPUT_RANGES, prompt_list
    if model.pipeline != IF_SR_PIPELINE:
        raise DiffkitError(f"super_resolve needs an {IF_SR_PIPELINE} folder; this is an {model.pipeline} one "
                           f"(sample it with pixart.text_to_image / diffkit sample)")
    check_choice("output_range", output_range, OUTPUT_RANGES)
    level = check_low_res(model, low_res, noise_level)
    scale = check_guidance(model.default_guidance_scale if guidance_scale is None else guidance_scale,
                           negative_prompt)
    batch = low_res.shape[0]
    prompts = prompt_list(prompts)
    if len(prompts) not in (1, batch):
        raise DiffkitError(f"{len(prompts)} prompts for {batch} images; give one (every image) or one per image")
    prompts = prompts * batch if len(prompts) == 1 else prompts
    shape = model.latent_shape(batch, height, width)
    if generator is None:
        generator = [torch.Generator().manual_seed((seed or 0) + i) for i in range(batch)]
    grid = None
    if sampler is None and nfe is None:
        sampler, own = model.folder_sampler()
        options = {**own, **options}
        grid, steps = model.scheduler_grid(steps or model.default_steps), None
    elif sampler is None:
        sampler = model.folder_sampler()[0]
    denoiser, cond = model.prompt_guidance(prompts, negative_prompt, scale)
    x_t = randn(shape, generator, device=model.device, dtype=torch.float32)  # prepare_intermediate_images
    low = low_res_condition(model, low_res, shape[2:], level, generator)  # then the image's noise
    x0 = sample(denoiser, x_t, sampler, steps, nfe=nfe, grid=grid, generator=generator, progress=progress,
                cond={**cond, **low}, **options)
    if return_latents:
        return x0
    return (x0 / 2 + 0.5).clamp(0, 1) if output_range == "0,1" else x0.clamp(-1, 1)


__all__ = ["DeepFloydIF", "load_deepfloyd_if", "is_deepfloyd_if_folder", "deepfloyd_if_kind",
           "check_deepfloyd_if_folder", "folder_sampler", "super_resolve", "IF_PIPELINE", "IF_SR_PIPELINE",
           "IF_PIPELINES", "IF_MAX_LENGTH", "IF_NOISE_LEVEL", "NOT_RUN"]
