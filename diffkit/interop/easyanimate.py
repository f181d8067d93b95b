"""An EasyAnimate diffusers folder (``EasyAnimatePipeline``, diffusers 0.42.1): text-to-video with any diffkit sampler.

EasyAnimate V5.1 (Xu et al. 2024, "EasyAnimate: A High-Performance Long Video Generation Method based on Transformer
Architecture", Alibaba PAI) is a rectified-flow video transformer (Esser et al. 2024, Sec. 2, eq. 1:
x_s = (1 - s) x_0 + s eps, velocity u = eps - x_0; ``EasyAnimateTransformer3DModel``: MMDiT then plain blocks, 3-D
RoPE, 2-D patches per frame) on the latents (B, C, F, h, w) of its causal 3-D VAE (``AutoencoderKLMagvit``: 2^(L-1)
spatial, 2^(L-2) temporal compression for L levels, 8 and 4 in the released folders). As
``EasyAnimatePipeline.__call__``:

* prompts (``encode_prompt``): each as one user message through the folder tokenizer's own chat template
  (``apply_chat_template(..., add_generation_prompt=True)``), tokenised to ``max_sequence_length`` (256) tokens padded
  on the right, the text encoder (Qwen2-VL, or BERT where its tokenizer has a chat template) run under that mask, its
  hidden state **-2**: the transformer's ``encoder_hidden_states`` (the pipeline gives it no mask: the padding
  tokens' states are attended too).
* guidance: CFG u_neg + s (u_c - u_neg) (Ho & Salimans 2022, eq. 6, diffusers' convention) for s > 1, default 5.0;
  the negative prompt defaults to "" (the pipeline has no default: it fails on None with guidance on).
* the grid: the folder's ``FlowMatchEulerDiscreteScheduler`` after ``set_timesteps(steps, mu=1)`` (default 50): its
  fixed ``shift``, or with ``use_dynamic_shifting`` the time shift of mu = 1 (exponential: shift e; linear: none);
  the sigmas at equal log-SNR on ``NoiseSchedule.flow(T, shift)`` (:func:`.flow_latents.flow_sigmas_grid`), flow
  Euler (``ddim``) its step; the transformer takes the timestep s T itself. Any other diffkit sampler runs on its
  own grid of that flow schedule, or with ``grid="scheduler"`` on the scheduler's sigmas
  (:func:`.flow_latents.pipeline_grid`).
* frames, size: default 49 frames of 512 x 512 (``__call__``'s); frames 1 + r k for the VAE's temporal ratio r (its
  causal frames; the pipeline would round others down), height and width multiples of 16 (its ``check_inputs``).
* draws, dtypes: z (B, C, F, h, w) N(0, I), video i's from ``seed + i``; the latents and the sampler's state in the
  text encoder's dtype. Decoding: x = D(z / scaling_factor) (no shift), untiled.

Refused in one line before any weight is read (:func:`check_easyanimate_folder`): another pipeline class, a missing
component or one of another class, a transformer whose channels are not the VAE's latent channels (an inpainting or
control transformer's) or without ``enable_text_attention_mask`` (the pipeline then fails), a tokenizer without a
chat template, a scheduler option diffkit's flow Euler loop does not take.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from ..errors import DiffkitError
from . import model_dtype, require
from .flow_latents import FlowLatentVAE
from .hunyuan_video import HunyuanVideoVAE

EASYANIMATE_PIPELINE = "EasyAnimatePipeline"
EASYANIMATE_INPAINT_PIPELINE = "EasyAnimateInpaintPipeline"  # image-to-video: :mod:`.easyanimate_inpaint`
REQUIRED = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")
EASYANIMATE_CLASSES = {"transformer": ("EasyAnimateTransformer3DModel",), "vae": ("AutoencoderKLMagvit",),
                       "text_encoder": ("Qwen2VLForConditionalGeneration", "BertModel"),
                       "scheduler": ("FlowMatchEulerDiscreteScheduler",)}
EASYANIMATE_GUIDANCE = 5.0  # __call__'s guidance_scale
EASYANIMATE_STEPS = 50  # its num_inference_steps
EASYANIMATE_FRAMES = 49  # its num_frames
EASYANIMATE_SIZE = (512, 512)  # its height, width
MAX_SEQUENCE_LENGTH = 256  # encode_prompt's max_sequence_length
HIDDEN_STATE = -2  # encode_prompt's hidden_states[-2]
PIPELINE_MU = 1.0  # retrieve_timesteps(..., mu=1) for a FlowMatchEuler scheduler
CHAT_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")


class EasyAnimateNet(torch.nn.Module):
    """``net(z, t, context)`` over an ``EasyAnimateTransformer3DModel`` on latent videos z (B, C, F, h, w):
    ``context`` (the text encoder's states) -> ``encoder_hidden_states`` (no mask, as the pipeline), ``t`` (the flow
    time s T) -> ``timestep``, ``inpaint`` (an inpainting transformer's mask and masked-video latents, :mod:`.
    easyanimate_inpaint`) -> ``inpaint_latents``; the velocity in z's dtype."""

    def __init__(self, transformer):
        super().__init__()
        self.model = transformer

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor = None,
                inpaint: torch.Tensor = None) -> torch.Tensor:
        if context is None:
            raise DiffkitError("an EasyAnimate transformer needs cond {'context'} (EasyAnimate.encode_prompts)")
        dtype, b = model_dtype(self.model), x.shape[0]
        timestep = torch.as_tensor(t, device=x.device, dtype=dtype).reshape(-1).expand(b)
        inpaint = None if inpaint is None else inpaint.to(dtype).expand(b, -1, -1, -1, -1)
        return self.model(x.to(dtype), timestep, encoder_hidden_states=context.to(dtype).expand(b, -1, -1),
                          inpaint_latents=inpaint, return_dict=False)[0].to(x.dtype)


@dataclass
class EasyAnimate(HunyuanVideoVAE, FlowLatentVAE):
    """The loaded components of an ``EasyAnimatePipeline`` folder (:func:`load_easyanimate`)."""

    transformer: object
    vae: object
    text_encoder: object
    tokenizer: object
    scheduler_config: dict
    schedule: object
    device: torch.device
    dtype: torch.dtype = torch.float32
    pipeline: str = EASYANIMATE_PIPELINE
    _sigmas: dict = field(default_factory=dict, repr=False)

    default_steps = EASYANIMATE_STEPS
    default_frames = EASYANIMATE_FRAMES
    default_size = EASYANIMATE_SIZE

    @property
    def vae_scale_factor(self) -> int:
        """The pipeline's ``vae_spatial_compression_ratio`` (the Magvit VAE's, 2^(levels - 1))."""
        return int(self.vae.spatial_compression_ratio)

    @property
    def temporal_factor(self) -> int:
        """The pipeline's ``vae_temporal_compression_ratio`` (the Magvit VAE's, 2^(levels - 2))."""
        return int(self.vae.temporal_compression_ratio)

    def scheduler_sigmas(self, steps: int) -> torch.Tensor:
        """The folder's scheduler's sigmas (the final 0 included) after the pipeline's ``set_timesteps(steps,
        mu=1)``."""
        diffusers = require("diffusers")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise DiffkitError(f"steps={steps!r} is not allowed; give a positive integer")
        if steps not in self._sigmas:
            scheduler = diffusers.FlowMatchEulerDiscreteScheduler.from_config(self.scheduler_config)
            scheduler.set_timesteps(steps, mu=PIPELINE_MU)
            self._sigmas[steps] = scheduler.sigmas.detach().to("cpu", torch.float64)
        return self._sigmas[steps]

    def scheduler_grid(self, steps: int) -> torch.Tensor:
        """diffkit's grid of the scheduler's sigmas (:func:`.flow_latents.flow_sigmas_grid`)."""
        from .flow_latents import flow_sigmas_grid
        return flow_sigmas_grid(self.schedule, self.scheduler_sigmas(steps), steps)

    def denoiser(self):
        """The flow-prediction Denoiser (:class:`EasyAnimateNet`) on ``NoiseSchedule.flow(T, shift)``."""
        from ..denoiser import Denoiser
        denoiser = Denoiser(EasyAnimateNet(self.transformer), self.schedule, "flow_prediction")
        denoiser.model = self.transformer
        return denoiser

    def encode_prompts(self, prompts: Sequence[str], max_sequence_length: int = MAX_SEQUENCE_LENGTH) -> torch.Tensor:
        """The text encoder's hidden state -2 (B, L, d) of ``prompts``, each a user message in the tokenizer's chat
        template, L = ``max_sequence_length`` tokens padded on the right (the pipeline's ``encode_prompt``)."""
        from .stable_diffusion import prompt_list
        if isinstance(max_sequence_length, bool) or not isinstance(max_sequence_length, int) \
                or max_sequence_length < 1:
            raise DiffkitError(f"max_sequence_length={max_sequence_length!r} is not allowed; give a positive integer "
                               f"(default {MAX_SEQUENCE_LENGTH})")
        texts = [self.tokenizer.apply_chat_template([{"role": "user", "content": [{"type": "text", "text": p}]}],
                                                    tokenize=False, add_generation_prompt=True)
                 for p in prompt_list(prompts)]
        tokens = self.tokenizer(text=texts, padding="max_length", max_length=max_sequence_length, truncation=True,
                                return_attention_mask=True, padding_side="right", return_tensors="pt").to(self.device)
        with torch.no_grad():
            states = self.text_encoder(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask,
                                       output_hidden_states=True).hidden_states[HIDDEN_STATE]
        return states.to(self.text_encoder.dtype)


def is_easyanimate_folder(path) -> bool:
    """True for a folder whose ``model_index.json`` names ``EasyAnimatePipeline``."""
    from .sd_xl import pipeline_class
    return pipeline_class(path) == EASYANIMATE_PIPELINE


def pipeline_shift(sched: dict) -> float:
    """The flow shift of the pipeline's grid: the scheduler's fixed ``shift``, or with ``use_dynamic_shifting`` that
    of its time shift at mu = 1 (exponential: e^mu / (e^mu + 1/t - 1) is shift e; linear: mu / (mu + 1/t - 1) is none),
    checked as diffkit's flow schedule (:func:`.sana.flow_shift_of`)."""
    from .sana import flow_shift_of
    if sched.get("use_dynamic_shifting", False):
        linear = sched.get("time_shift_type", "exponential") == "linear"
        sched = {**sched, "use_dynamic_shifting": False, "shift": PIPELINE_MU if linear else math.exp(PIPELINE_MU)}
    return flow_shift_of(sched)


def check_easyanimate_folder(directory, pipeline: str = EASYANIMATE_PIPELINE) -> tuple:
    """(model_index dict, scheduler config) of an ``EasyAnimatePipeline`` folder (or with ``pipeline`` an
    ``EasyAnimateInpaintPipeline`` one, its transformer's channels :func:`.easyanimate_inpaint.check_inpaint_configs`'),
    checked from its JSON alone (module docstring); a one-line DiffkitError for what diffkit does not drive."""
    from .flux import check_flux_scheduler
    from .pixart import checked_folder, folder_sampler
    directory = Path(directory)
    index, config, vae = checked_folder(directory, pipeline, REQUIRED, "EasyAnimate", EASYANIMATE_CLASSES)
    latents = vae.get("latent_channels", 16)
    channels = (config.get("in_channels"), config.get("out_channels"))
    if pipeline == EASYANIMATE_INPAINT_PIPELINE:
        from .easyanimate_inpaint import check_inpaint_configs
        check_inpaint_configs(directory, config, vae)
    elif channels != (latents, latents):
        raise DiffkitError(f"{directory}'s transformer has in_channels, out_channels = {channels[0]!r}, "
                           f"{channels[1]!r}; allowed: the VAE's latent channels {latents!r} (an inpainting or "
                           f"control transformer is not {EASYANIMATE_PIPELINE}'s)")
    if not config.get("enable_text_attention_mask", True):
        raise DiffkitError(f"{directory}'s transformer has enable_text_attention_mask=false, for which "
                           f"{EASYANIMATE_PIPELINE} encodes no prompt; allowed: true")
    scaling = vae.get("scaling_factor", 0.7125)
    if isinstance(scaling, bool) or not isinstance(scaling, (int, float)):
        raise DiffkitError(f"{directory}'s vae has scaling_factor={scaling!r}; allowed: a number "
                           f"({EASYANIMATE_PIPELINE} decodes z / scaling_factor)")
    check_chat_template(directory / "tokenizer")
    sched = check_flux_scheduler(directory, EASYANIMATE_PIPELINE)
    pipeline_shift(sched)  # its other keys: one line
    folder_sampler(sched, flow=True)  # a scheduler whose step diffkit's samplers do not compute: one line
    return index, sched


def check_chat_template(tokenizer_dir: Path) -> None:
    """One line unless the tokenizer folder has a chat template (a template file, or ``chat_template`` in its
    ``tokenizer_config.json``): ``encode_prompt`` puts every prompt through it."""
    from ..errors import read_json_object
    if any((tokenizer_dir / name).is_file() for name in CHAT_TEMPLATE_FILES):
        return
    config = tokenizer_dir / "tokenizer_config.json"
    if config.is_file() and read_json_object(config, "tokenizer config").get("chat_template"):
        return
    raise DiffkitError(f"{tokenizer_dir} has no chat template ({' / '.join(CHAT_TEMPLATE_FILES)} or "
                       f"tokenizer_config.json's chat_template), which {EASYANIMATE_PIPELINE} puts every prompt "
                       f"through; allowed: a tokenizer with one (Qwen2-VL's)")


def load_easyanimate(directory: Union[str, Path], device="cpu", dtype: torch.dtype = torch.float32,
                     progress: bool = True, pipeline: str = EASYANIMATE_PIPELINE) -> EasyAnimate:
    """Load an ``EasyAnimatePipeline`` folder (``pipeline``: or an ``EasyAnimateInpaintPipeline`` one), never
    downloading nor unpickling, checked first (:func:`check_easyanimate_folder`); the transformer's
    ``text_embed_dim`` must be the text encoder's width."""
    from ..schedule import NoiseSchedule
    from .flow_latents import frozen_on, load_flow_parts
    from .schedulers import train_timesteps
    diffusers = require("diffusers")
    directory = Path(directory)
    index, sched = check_easyanimate_folder(directory, pipeline)
    schedule = NoiseSchedule.flow(train_timesteps(sched), pipeline_shift(sched))
    parts = load_flow_parts(directory, index, diffusers.EasyAnimateTransformer3DModel,
                            {"": "Qwen2VLForConditionalGeneration"}, dtype, progress,
                            vae_cls=diffusers.AutoencoderKLMagvit)
    device = frozen_on(parts, device)
    model = EasyAnimate(**parts, scheduler_config=sched, schedule=schedule, device=device, dtype=dtype,
                        pipeline=pipeline)
    text = model.text_encoder.config
    width = getattr(getattr(text, "text_config", text), "hidden_size", None)
    if model.transformer.config.text_embed_dim != width:
        raise DiffkitError(f"{directory}: the transformer's text_embed_dim={model.transformer.config.text_embed_dim} "
                           f"does not fit its text encoder's width {width}")
    return model


def text_to_video(model: EasyAnimate, prompts: Union[str, Sequence[str]], **options) -> torch.Tensor:
    """Videos (B, T, C, H, W) of ``prompts`` (one video each) as ``EasyAnimatePipeline`` (module docstring).

    Keyword arguments (:func:`generate_video`): guidance_scale: CFG in ``convention`` (diffusers: s, default 5.0;
    off for s <= 1, where a negative prompt is refused); negative_prompt: one, or one per prompt (default "").
    sampler / grid: both None (the default): the pipeline's loop, flow Euler (``ddim``) on the scheduler's sigmas
    (``steps``, default 50); a sampler alone: its own grid of ``steps`` / ``nfe``; ``grid``: ``"scheduler"`` or a
    tensor (:func:`.flow_latents.pipeline_grid`). Further keywords go to :func:`diffkit.sample`. num_frames (default
    49, 1 + r k), height / width (default 512 x 512, multiples of 16). latents: z at s = 1 (B, C, F, h, w), default
    N(0, I), video i's from ``seed + i``. Returns videos in ``output_range`` ("-1,1" or "0,1": the pipeline's
    ``output_type="pt"``), or with ``return_latents`` the final latents (its ``output_type="latent"``)."""
    if model.pipeline != EASYANIMATE_PIPELINE:
        raise DiffkitError(f"text_to_video needs an {EASYANIMATE_PIPELINE} folder; this one is an {model.pipeline} "
                           f"folder (image_to_video of diffkit.interop.easyanimate_inpaint)")
    return generate_video(model, prompts, **options)


def generate_video(model: EasyAnimate, prompts: Union[str, Sequence[str]], *, negative_prompt=None,
                   guidance_scale: Optional[float] = None, convention: str = "diffusers", steps: Optional[int] = None,
                   sampler: Optional[str] = None, nfe: Optional[int] = None,
                   grid: Union[None, str, torch.Tensor] = None, num_frames: Optional[int] = None,
                   height: Optional[int] = None, width: Optional[int] = None, seed: Optional[int] = 0,
                   latents: Optional[torch.Tensor] = None, max_sequence_length: int = MAX_SEQUENCE_LENGTH,
                   output_range: str = "-1,1", return_latents: bool = False, progress: bool = False, inpaint=None,
                   **options) -> torch.Tensor:
    """:func:`text_to_video`'s loop; ``inpaint``: a callable (z at s = 1, height, width, drew_noise) -> the
    transformer's ``inpaint`` cond (B, 1 + C, F, h, w) (image-to-video, :mod:`.easyanimate_inpaint`)."""
    from ..errors import check_choice
    from ..guidance import ClassifierFreeGuidance
    from ..sampling import sample
    from .auraflow import guided
    from .flow_latents import pipeline_grid
    from .hunyuan_video import start_video
    from .stable_diffusion import OUTPUT_RANGES, negative_prompts, prompt_list
    check_choice("output_range", output_range, OUTPUT_RANGES)
    prompts = prompt_list(prompts)
    scale = EASYANIMATE_GUIDANCE if guidance_scale is None else guidance_scale
    cfg = guided(scale, convention, negative_prompt)
    sampler, grid, steps = pipeline_grid(sampler, grid, steps, nfe, model.default_steps, model.scheduler_grid,
                                         options.get("flow_shift"))
    drew_noise = latents is None
    latents, height, width = start_video(model, len(prompts), int(model.vae.config.latent_channels), num_frames,
                                         height, width, seed, latents, model.pipeline)
    denoiser, cond = model.denoiser(), {"context": model.encode_prompts(prompts, max_sequence_length)}
    if inpaint is not None:
        cond["inpaint"] = inpaint(latents, height, width, drew_noise)
    if cfg:
        negatives = negative_prompts(negative_prompt, len(prompts))
        negatives = negatives[:1] if len(set(negatives)) == 1 else negatives  # one row serves every video
        denoiser = ClassifierFreeGuidance(denoiser, float(scale), convention,
                                          null_context=model.encode_prompts(negatives, max_sequence_length))
    state = model.text_encoder.dtype  # prepare_latents' dtype: the text encoder's
    z = sample(denoiser, latents.to(model.device, state), sampler, steps, nfe=nfe, grid=grid, seed=seed, cond=cond,
               progress=progress, device=model.device, dtype=state, **options)
    if return_latents:
        return z
    videos = model.decode_video(z)
    return (videos / 2 + 0.5).clamp(0, 1) if output_range == "0,1" else videos.clamp(-1, 1)


__all__ = ["EasyAnimate", "EasyAnimateNet", "load_easyanimate", "is_easyanimate_folder", "check_easyanimate_folder",
           "text_to_video", "pipeline_shift", "EASYANIMATE_PIPELINE", "EASYANIMATE_GUIDANCE", "EASYANIMATE_STEPS",
           "EASYANIMATE_FRAMES", "EASYANIMATE_SIZE"]
