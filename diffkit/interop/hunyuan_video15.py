"""A HunyuanVideo 1.5 diffusers folder (``HunyuanVideo15Pipeline``, ``HunyuanVideo15ImageToVideoPipeline``, diffusers
0.42.1): text- and image-to-video with any diffkit sampler.

HunyuanVideo 1.5 (Tencent Hunyuan 2025, "HunyuanVideo 1.5 Technical Report") is a rectified-flow video transformer
(Esser et al. 2024, Sec. 2, eq. 1: x_s = (1 - s) x_0 + s eps, velocity u = eps - x_0;
``HunyuanVideo15Transformer3DModel``: a token refiner over the Qwen states, dual-stream blocks, 3-D RoPE) on the
latents (B, 32, F, h, w) of its causal 3-D VAE (``AutoencoderKLHunyuanVideo15``: 16 x spatial, 4 x temporal
compression, num_frames = 4 (F - 1) + 1). diffkit reuses :mod:`.hunyuan_video`'s scheduler grid, frame / size checks,
noise and decoding, :mod:`.hunyuan_image`'s ByT5 glyph states; what is 1.5's own, as ``HunyuanVideo15Pipeline``:

* prompts (``_get_mllm_prompt_embeds``): each a chat of the pipeline's system message (read from diffusers) and the
  prompt (" " for an empty one), ``apply_chat_template(add_generation_prompt=True)`` to 1000 + 108 tokens (padded,
  truncated), the Qwen2.5-VL text model run under that mask, its hidden state **-3**, the first 108 tokens dropped
  from the states and the mask.
* glyphs (``extract_glyph_texts``): a prompt's spans in "..." or “...” in order of appearance (repeats dropped where
  there are several), as ``Text "a". Text "b". ``, ByT5-tokenised to 256 and run through ``text_encoder_2`` (a T5
  encoder); none: zero states, zero mask (:func:`.hunyuan_image.glyph_states`).
* the network input: cat([z, 0, 0]) on the channels (zero condition latents and a zero mask channel: in_channels =
  2 C + 1) and zero ``image_embeds`` (729 tokens of ``image_embed_dim``), the timestep s T in the transformer's dtype.
* guidance: the folder's ``guider`` (``ClassifierFreeGuidance``; the pipeline's ``__call__`` has no scale): u_u + s
  (u_c - u_u) (Ho & Salimans 2022, eq. 6; its ``use_original_formulation``: u_c + s (u_c - u_u), diffkit's seed
  convention w = s), rescaled by its ``guidance_rescale`` phi on the velocity (Lin et al. 2024, Sec. 3.4,
  diffusers' ``rescale_noise_cfg``); the negative prompt (default "") encoded as the prompt is. s = 1 (0 in the
  original formulation) or a disabled guider: the conditional call alone (a negative prompt refused).
  ``guidance_scale`` replaces the guider's s (in ``convention``).
* the grid: the folder's ``FlowMatchEulerDiscreteScheduler`` after ``set_timesteps(sigmas=linspace(1, 0, N + 1)[:-1])``
  (default N = 50), flow Euler (``ddim``) its step (:meth:`.hunyuan_video.HunyuanVideo.scheduler_grid`); any other
  diffkit sampler on its own grid of that flow schedule, or ``grid="scheduler"``.
* frames, size: default 121 frames at the transformer's ``target_size`` bucket of 16 : 9 (``HunyuanVideo15Image
  Processor.calculate_default_height_width``: 480 x 848 for 640); frames 4 k + 1, height and width both given, multiples
  of 16 (the pipeline would floor others; it checks neither).
* dtypes: diffkit keeps the sampler's state in float32 (the pipeline's latents are in the transformer's dtype: equal
  in float32). Decoding: x = D(z / scaling_factor), untiled.

Image-to-video (``HunyuanVideo15ImageToVideoPipeline``, :func:`image_to_video`; the same prompts, guider and grid):
the frame size is the ``target_size`` bucket nearest the image's aspect, the image centre-cropped there; its SigLIP
``last_hidden_state`` the ``image_embeds``, its VAE posterior mode times ``scaling_factor`` latent frame 0 of the
condition channels (the others 0) and the mask channel 1 there (:meth:`HunyuanVideo15.image_condition`); every latent
frame is sampled.

Refused in one line before any weight is read (:func:`check_hunyuan_video15_folder`): another pipeline class, a
missing component or one of another class, a transformer whose channels are not 2 C + 1 in and C out (C the VAE's
latent channels), a ``use_dynamic_shifting`` scheduler, a guider of another class or with a ``start`` / ``stop``
window (it counts the pipeline's steps), an image-to-video MeanFlow transformer (``use_meanflow``: its loop feeds the
next step's time).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from ..errors import DiffkitError, read_json_object
from . import model_dtype, require
from .hunyuan_video import HunyuanVideo

HUNYUAN_VIDEO15_PIPELINE = "HunyuanVideo15Pipeline"
HUNYUAN_VIDEO15_I2V_PIPELINE = "HunyuanVideo15ImageToVideoPipeline"
HUNYUAN_VIDEO15_TRANSFORMER = "HunyuanVideo15Transformer3DModel"
REQUIRED = ("transformer", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "scheduler", "guider")
I2V_REQUIRED = REQUIRED + ("image_encoder", "feature_extractor")
HUNYUAN_VIDEO15_CLASSES = {"transformer": (HUNYUAN_VIDEO15_TRANSFORMER,), "vae": ("AutoencoderKLHunyuanVideo15",),
                           "text_encoder": ("Qwen2_5_VLTextModel",), "text_encoder_2": ("T5EncoderModel",),
                           "scheduler": ("FlowMatchEulerDiscreteScheduler",), "guider": ("ClassifierFreeGuidance",)}
I2V_CLASSES = {**HUNYUAN_VIDEO15_CLASSES, "image_encoder": ("SiglipVisionModel",),
               "feature_extractor": ("SiglipImageProcessor", "SiglipImageProcessorPil", "SiglipImageProcessorFast")}
GUIDER_DEFAULTS = {"guidance_scale": 7.5, "guidance_rescale": 0.0, "use_original_formulation": False, "start": 0.0,
                   "stop": 1.0, "enabled": True}  # diffusers' ClassifierFreeGuidance.__init__
HUNYUAN_VIDEO15_STEPS = 50  # __call__'s num_inference_steps
HUNYUAN_VIDEO15_FRAMES = 121  # its num_frames
TEMPLATE_DROP = 108  # its prompt_template_encode_start_idx
TOKENIZER_MAX_LENGTH = 1000  # its tokenizer_max_length
GLYPH_MAX_LENGTH = 256  # its tokenizer_2_max_length
SEMANTIC_TOKENS = 729  # its vision_num_semantic_tokens (the zero image_embeds of text-to-video)
HIDDEN_STATE = -3  # hidden_states[-(num_hidden_layers_to_skip + 1)], skip 2
ASPECT = (9, 16)  # its default_aspect_ratio, (height, width)


def system_message() -> str:
    """The pipeline's system message (its ``_get_mllm_prompt_embeds``' default), read from diffusers."""
    import inspect
    require("diffusers")
    from diffusers.pipelines.hunyuan_video1_5.pipeline_hunyuan_video1_5 import HunyuanVideo15Pipeline
    return inspect.signature(HunyuanVideo15Pipeline._get_mllm_prompt_embeds).parameters["system_message"].default


def glyph_text(prompt: str) -> Optional[str]:
    """The ByT5 text of ``prompt``'s "..." / “...” spans (``extract_glyph_texts``): 'Text "a". Text "b". ' or
    None."""
    found = [a or b for a, b in re.findall(r"\"(.*?)\"|“(.*?)”", prompt)]
    found = list(dict.fromkeys(found)) if len(found) > 1 else found
    return ". ".join(f'Text "{text}"' for text in found) + ". " if found else None


@dataclass(frozen=True)
class Guider:
    """A folder's ``ClassifierFreeGuidance`` config as diffkit's CFG: ``scale`` in ``convention`` ("diffusers": u_u +
    s (u_c - u_u); "seed": its original formulation u_c + s (u_c - u_u)), ``rescale`` phi."""

    scale: float
    convention: str
    rescale: float

    @classmethod
    def from_config(cls, config: Optional[dict]) -> Optional["Guider"]:
        """None for a disabled guider (``enabled`` false)."""
        c = {**GUIDER_DEFAULTS, **(config or {})}
        if not c["enabled"]:
            return None
        return cls(float(c["guidance_scale"]), "seed" if c["use_original_formulation"] else "diffusers",
                   float(c["guidance_rescale"]))

    @property
    def guided(self) -> bool:
        """The guider's ``_is_cfg_enabled``: s != 1 (diffusers' formulation) or s != 0 (the original one)."""
        return not math.isclose(self.scale, 1.0 if self.convention == "diffusers" else 0.0)


def run_guider(config: Optional[dict], guidance_scale: Optional[float] = None,
               convention: str = "diffusers") -> Optional[Guider]:
    """The run's :class:`Guider` of a folder's guider ``config`` (``guidance_scale`` in ``convention`` replacing its
    s), None where it does not guide (a disabled guider, s at its no-guidance value); one line for a scale that is no
    finite float32 number or given to a disabled guider."""
    from dataclasses import replace

    from ..errors import check_choice, check_float32
    check_choice("convention", convention, ["diffusers", "seed"])
    guider = Guider.from_config(config)
    if guidance_scale is not None:
        if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)) \
                or not math.isfinite(guidance_scale):
            raise DiffkitError(f"guidance_scale={guidance_scale!r} is not allowed; give a finite number (the "
                               f"guider's CFG scale)")
        check_float32("guidance_scale", guidance_scale)
        if guider is None:
            raise DiffkitError(f"guidance_scale={guidance_scale!r} is not allowed: this HunyuanVideo 1.5 folder's "
                               f"guider is disabled (enabled false); drop it")
        scale = float(guidance_scale) if convention == guider.convention else \
            float(guidance_scale) + (1.0 if convention == "seed" else -1.0)  # s_diffusers = 1 + w_seed
        guider = replace(guider, scale=scale)
    return guider if guider is not None and guider.guided else None


def check_negative_prompt(guider: Optional[Guider], negative_prompt) -> None:
    """One line for a negative prompt where nothing guides (it feeds only the guider's CFG)."""
    if negative_prompt is not None and guider is None:
        raise DiffkitError("a negative prompt is not allowed here: it feeds only the guider's CFG (an enabled "
                           "guider whose scale guides); drop it")


class HunyuanVideo15Net(torch.nn.Module):
    """``net(z, t, context, mask, context_2, mask_2, image=None, image_embeds=None)`` over a
    ``HunyuanVideo15Transformer3DModel`` on latent videos z (B, C, F, h, w): ``context`` / ``mask`` the Qwen states
    and mask, ``context_2`` / ``mask_2`` the ByT5 ones, ``t`` the flow time s T; ``image`` the condition latents and
    mask channel (B, C + 1, F, h, w) and ``image_embeds`` the vision states (B, 729, d), zeros where None
    (text-to-video)."""

    def __init__(self, transformer):
        super().__init__()
        self.model = transformer

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor = None, mask: torch.Tensor = None,
                context_2: torch.Tensor = None, mask_2: torch.Tensor = None, image: torch.Tensor = None,
                image_embeds: torch.Tensor = None) -> torch.Tensor:
        if context is None or mask is None or context_2 is None or mask_2 is None:
            raise DiffkitError("a HunyuanVideo 1.5 transformer needs cond {'context', 'mask', 'context_2', 'mask_2'} "
                               "(HunyuanVideo15.encode_prompts)")
        dtype, (b, c, f, h, w) = model_dtype(self.model), x.shape
        config = self.model.config
        if image is None:
            image = x.new_zeros(b, c + 1, f, h, w)
        if image_embeds is None:
            image_embeds = x.new_zeros(b, SEMANTIC_TOKENS, config.image_embed_dim)
        timestep = torch.as_tensor(t, device=x.device, dtype=torch.float32).reshape(-1).expand(b).to(dtype)
        return self.model(hidden_states=torch.cat([x, image.to(x).expand(b, -1, -1, -1, -1)], 1).to(dtype),
                          timestep=timestep, encoder_hidden_states=context.to(dtype).expand(b, -1, -1),
                          encoder_attention_mask=mask.to(dtype).expand(b, -1),
                          encoder_hidden_states_2=context_2.to(dtype).expand(b, -1, -1),
                          encoder_attention_mask_2=mask_2.to(dtype).expand(b, -1),
                          image_embeds=image_embeds.to(dtype).expand(b, -1, -1), return_dict=False)[0].to(x.dtype)


@dataclass
class HunyuanVideo15(HunyuanVideo):
    """The loaded components of a ``HunyuanVideo15Pipeline`` folder (:func:`load_hunyuan_video15`): a
    :class:`.hunyuan_video.HunyuanVideo` (scheduler grid, frames, decoding) with Qwen2.5-VL's text model as
    ``text_encoder``, the ByT5 encoder as ``text_encoder_2`` and the folder's guider config."""

    guider: Optional[dict] = None
    pipeline: str = HUNYUAN_VIDEO15_PIPELINE
    image_encoder: object = None
    feature_extractor: object = None

    default_steps = HUNYUAN_VIDEO15_STEPS
    default_frames = HUNYUAN_VIDEO15_FRAMES

    @property
    def default_size(self) -> tuple:
        """The pipeline's default (height, width): the 16 : 9 bucket of the transformer's ``target_size``."""
        require("diffusers")
        from diffusers.pipelines.hunyuan_video1_5.image_processor import HunyuanVideo15ImageProcessor
        processor = HunyuanVideo15ImageProcessor(vae_scale_factor=self.vae_scale_factor)
        return tuple(processor.calculate_default_height_width(*ASPECT, self.transformer.config.target_size))

    @property
    def guidance_embeds(self) -> bool:
        return False  # guided by the folder's guider, not an embedded scale

    def guidance(self, guidance_scale: Optional[float] = None, convention: str = "diffusers") -> Optional[Guider]:
        """:func:`run_guider` of the folder's guider config."""
        return run_guider(self.guider, guidance_scale, convention)

    def encode_prompts(self, prompts: Sequence[str], max_sequence_length: Optional[int] = None) -> tuple:
        """(Qwen states (B, 1000, d), mask (B, 1000), ByT5 states (B, 256, d_2), mask (B, 256)) as the pipeline's
        ``encode_prompt`` (module docstring), in the transformer's dtype (the masks int64)."""
        from .hunyuan_image import glyph_states
        from .stable_diffusion import prompt_list
        if max_sequence_length is not None:
            raise DiffkitError(f"max_sequence_length={max_sequence_length!r} is not allowed for a HunyuanVideo 1.5 "
                               f"folder (its Qwen length is fixed at {TOKENIZER_MAX_LENGTH}); drop it")
        prompts, system = prompt_list(prompts), system_message()
        chats = [[{"role": "system", "content": system}, {"role": "user", "content": p or " "}] for p in prompts]
        tokens = self.tokenizer.apply_chat_template(chats, add_generation_prompt=True, tokenize=True, return_dict=True,
                                                    padding="max_length", truncation=True, return_tensors="pt",
                                                    max_length=TOKENIZER_MAX_LENGTH + TEMPLATE_DROP)
        ids, mask = tokens["input_ids"].to(self.device), tokens["attention_mask"].to(self.device)
        dtype = model_dtype(self.transformer)
        with torch.no_grad():
            states = self.text_encoder(input_ids=ids, attention_mask=mask,
                                       output_hidden_states=True).hidden_states[HIDDEN_STATE]
            glyphs = [glyph_states(self.tokenizer_2, self.text_encoder_2, glyph_text(p), GLYPH_MAX_LENGTH,
                                   self.device) for p in prompts]
        glyph_context, glyph_mask = torch.cat([g[0] for g in glyphs]).to(dtype), torch.cat([g[1] for g in glyphs])
        return states[:, TEMPLATE_DROP:].to(dtype), mask[:, TEMPLATE_DROP:], glyph_context, glyph_mask

    def denoiser(self, guidance_scale: Optional[float] = None):
        """The unguided flow-prediction Denoiser (:class:`HunyuanVideo15Net`) on ``NoiseSchedule.flow(T, shift)``
        (guidance: :meth:`prompt_guidance`; ``guidance_scale`` must be None)."""
        from ..denoiser import Denoiser
        if guidance_scale is not None:
            raise DiffkitError("a HunyuanVideo 1.5 transformer has no embedded guidance; CFG comes from "
                               "prompt_guidance(guidance_scale=...)")
        denoiser = Denoiser(HunyuanVideo15Net(self.transformer), self.schedule, "flow_prediction")
        denoiser.model = self.transformer
        return denoiser

    def prompt_guidance(self, prompts, negative_prompt=None, guidance_scale: Optional[float] = None,
                        convention: str = "diffusers") -> tuple:
        """(denoiser, cond) of the pipeline's loop: the flow-prediction :class:`HunyuanVideo15Net` on
        ``NoiseSchedule.flow(T, shift)``, wrapped in CFG against ``negative_prompt`` (default "") where the guider
        guides (module docstring)."""
        from ..guidance import ClassifierFreeGuidance
        from .stable_diffusion import negative_prompts
        guider = self.guidance(guidance_scale, convention)
        check_negative_prompt(guider, negative_prompt)
        context, mask, context_2, mask_2 = self.encode_prompts(prompts)
        cond = {"context": context, "mask": mask, "context_2": context_2, "mask_2": mask_2}
        denoiser = self.denoiser()
        if guider is not None:
            negatives = negative_prompts(negative_prompt, context.shape[0])
            null = self.encode_prompts(negatives[:1] if len(set(negatives)) == 1 else negatives)
            denoiser = ClassifierFreeGuidance(denoiser, guider.scale, guider.convention, rescale=guider.rescale,
                                              rescale_space="flow", null_context=null[0],
                                              null_cond={"mask": null[1], "context_2": null[2], "mask_2": null[3]})
        return denoiser, cond


    def image_size(self, image) -> tuple:
        """(height, width) of an image-to-video call on PIL ``image``: the bucket of the transformer's
        ``target_size`` nearest its aspect (the pipeline's ``calculate_default_height_width``)."""
        return tuple(self._processor().calculate_default_height_width(image.size[1], image.size[0],
                                                                      self.transformer.config.target_size))

    def _processor(self):
        require("diffusers")
        from diffusers.pipelines.hunyuan_video1_5.image_processor import HunyuanVideo15ImageProcessor
        return HunyuanVideo15ImageProcessor(vae_scale_factor=self.vae_scale_factor, do_resize=False)

    def image_condition(self, images: Sequence, frames: int) -> tuple:
        """(condition latents and mask (B, C + 1, frames, h, w), SigLIP states (B, 729, d)) of PIL ``images`` (one
        bucket size) as ``HunyuanVideo15ImageToVideoPipeline``: each centre-cropped to its bucket
        (``resize(resize_mode="crop")``), its SigLIP ``last_hidden_state`` (the feature extractor's own resize), its
        VAE posterior mode times ``scaling_factor`` on latent frame 0 (the others 0) and the mask channel 1 there."""
        processor, dtype = self._processor(), model_dtype(self.transformer)
        conds, embeds = [], []
        with torch.no_grad():
            for image in images:
                height, width = self.image_size(image)
                image = processor.resize(image, height=height, width=width, resize_mode="crop")
                features = self.feature_extractor.preprocess(images=image, do_resize=True, return_tensors="pt",
                                                             do_convert_rgb=True)
                features = features.to(device=self.device, dtype=next(self.image_encoder.parameters()).dtype)
                embeds.append(self.image_encoder(**features).last_hidden_state.to(dtype))
                pixels = processor.preprocess(image, height=height, width=width)
                pixels = pixels.to(self.device, self.vae.dtype).unsqueeze(2)
                z = self.vae.encode(pixels).latent_dist.mode() * self.scaling_factor
                cond = z.new_zeros(1, z.shape[1] + 1, frames, *z.shape[3:])
                cond[:, :-1, :1], cond[:, -1, 0] = z, 1.0
                conds.append(cond.to(dtype))
        return torch.cat(conds), torch.cat(embeds)


def is_hunyuan_video15_folder(path) -> bool:
    """True for a folder whose ``model_index.json`` names ``HunyuanVideo15Pipeline`` or
    ``HunyuanVideo15ImageToVideoPipeline`` (``diffkit video`` drives them)."""
    from .sd_xl import pipeline_class
    return pipeline_class(path) in (HUNYUAN_VIDEO15_PIPELINE, HUNYUAN_VIDEO15_I2V_PIPELINE)


def check_hunyuan_video15_folder(directory, pipeline: str = HUNYUAN_VIDEO15_PIPELINE) -> tuple:
    """(model_index dict, scheduler config, guider config) of a ``pipeline`` folder (``HunyuanVideo15Pipeline`` or
    ``HunyuanVideo15ImageToVideoPipeline``), checked from its JSON alone (module docstring); a one-line DiffkitError
    for what diffkit does not drive."""
    from .flux import check_flux_scheduler
    from .hidream import folder_sampler
    from .pixart import checked_folder, fixed_shift_scheduler
    directory = Path(directory)
    i2v = pipeline == HUNYUAN_VIDEO15_I2V_PIPELINE
    index, config, vae = checked_folder(directory, pipeline, I2V_REQUIRED if i2v else REQUIRED, "HunyuanVideo 1.5",
                                        I2V_CLASSES if i2v else HUNYUAN_VIDEO15_CLASSES)
    if i2v and config.get("use_meanflow", False):
        raise DiffkitError(f"{directory}'s transformer has use_meanflow=True (its image-to-video loop feeds the next "
                           f"step's time, timestep_r), which diffkit does not drive; allowed: use_meanflow false")
    latents = vae.get("latent_channels", 32)
    channels = (config.get("in_channels", 65), config.get("out_channels", 32) or config.get("in_channels", 65))
    if channels != (2 * latents + 1, latents):
        raise DiffkitError(f"{directory}'s transformer has in_channels, out_channels = {channels[0]!r}, "
                           f"{channels[1]!r}; allowed: {2 * latents + 1}, {latents} (the VAE's {latents} latent "
                           f"channels, condition latents and a mask channel)")
    scaling = vae.get("scaling_factor", 1.03682)
    if isinstance(scaling, bool) or not isinstance(scaling, (int, float)):
        raise DiffkitError(f"{directory}'s vae has scaling_factor={scaling!r}; allowed: a number "
                           f"({pipeline} decodes z / scaling_factor)")
    sched = fixed_shift_scheduler(directory, pipeline)
    check_flux_scheduler(directory, pipeline)
    folder_sampler(sched)  # one line for a scheduler whose step diffkit's samplers do not compute
    guider = read_json_object(directory / "guider" / "guider_config.json", "guider config")
    for key in ("start", "stop"):
        if guider.get(key, GUIDER_DEFAULTS[key]) != GUIDER_DEFAULTS[key]:
            raise DiffkitError(f"{directory}'s guider has {key}={guider[key]!r}, a window of the pipeline's steps "
                               f"diffkit does not drive; allowed: {key}={GUIDER_DEFAULTS[key]!r}")
    return index, sched, guider


def load_hunyuan_video15(directory: Union[str, Path], device="cpu", dtype: torch.dtype = torch.float32,
                         progress: bool = True) -> HunyuanVideo15:
    """Load a ``HunyuanVideo15Pipeline`` or ``HunyuanVideo15ImageToVideoPipeline`` folder (never downloads, never
    unpickles; the latter's SigLIP ``image_encoder`` and ``feature_extractor`` too), checked first
    (:func:`check_hunyuan_video15_folder`)."""
    from ..schedule import NoiseSchedule
    from .flow_latents import frozen_on, load_flow_parts
    from .sana import flow_shift_of
    from .schedulers import train_timesteps
    diffusers = require("diffusers")
    from .sd_xl import pipeline_class
    directory = Path(directory)
    pipeline = pipeline_class(directory)
    if pipeline not in (HUNYUAN_VIDEO15_PIPELINE, HUNYUAN_VIDEO15_I2V_PIPELINE):
        pipeline = HUNYUAN_VIDEO15_PIPELINE  # (checked_folder names what it is not)
    index, sched, guider = check_hunyuan_video15_folder(directory, pipeline)
    schedule = NoiseSchedule.flow(train_timesteps(sched), flow_shift_of(sched))
    parts = load_flow_parts(directory, index, diffusers.HunyuanVideo15Transformer3DModel,
                            {"": "Qwen2_5_VLTextModel", "_2": "T5EncoderModel"}, dtype, progress,
                            vae_cls=diffusers.AutoencoderKLHunyuanVideo15)
    device = frozen_on(parts, device)
    parts["text_encoder_2"].to(device).eval().requires_grad_(False)
    if pipeline == HUNYUAN_VIDEO15_I2V_PIPELINE:
        from . import from_pretrained, library_progress_bars
        from .sd3 import _entry
        transformers = require("transformers")
        with library_progress_bars(progress):
            parts["image_encoder"] = from_pretrained(transformers.SiglipVisionModel, directory / "image_encoder",
                                                     local_files_only=True, torch_dtype=dtype, use_safetensors=True)
            processor = getattr(transformers, _entry(index, "feature_extractor"))  # (Pil: no torchvision here)
            parts["feature_extractor"] = from_pretrained(processor, directory / "feature_extractor",
                                                         local_files_only=True)
        parts["image_encoder"].to(device).eval().requires_grad_(False)
    model = HunyuanVideo15(**parts, scheduler_config=sched, schedule=schedule, device=device, dtype=dtype,
                           guider=guider, pipeline=pipeline)
    config = model.transformer.config
    widths = [(config.text_embed_dim, model.text_encoder.config.hidden_size, "text_embed_dim"),
              (config.text_embed_2_dim, model.text_encoder_2.config.d_model, "text_embed_2_dim")]
    if model.image_encoder is not None:
        widths.append((config.image_embed_dim, model.image_encoder.config.hidden_size, "image_embed_dim"))
    for have, need, what in widths:
        if have != need:
            raise DiffkitError(f"{directory}: the transformer's {what}={have} does not fit its encoder's width {need}")
    return model


def check_video_size(height, width) -> None:
    """One line for one of height / width without the other (the pipeline's ``check_inputs``)."""
    if (height is None) != (width is None):
        raise DiffkitError(f"height={height!r}, width={width!r} is not allowed; give both or neither (default the "
                           f"transformer's target_size bucket of 16:9; {HUNYUAN_VIDEO15_PIPELINE}'s check_inputs)")


def text_to_video(model: HunyuanVideo15, prompts: Union[str, Sequence[str]], *, negative_prompt=None,
                  guidance_scale: Optional[float] = None, convention: str = "diffusers", steps: Optional[int] = None,
                  sampler: Optional[str] = None, nfe: Optional[int] = None,
                  grid: Union[None, str, torch.Tensor] = None, num_frames: Optional[int] = None,
                  height: Optional[int] = None, width: Optional[int] = None, seed: Optional[int] = 0,
                  latents: Optional[torch.Tensor] = None, output_range: str = "-1,1", return_latents: bool = False,
                  progress: bool = False, **options) -> torch.Tensor:
    """Videos (B, T, C, H, W) of ``prompts`` (one video each) as ``HunyuanVideo15Pipeline`` (module docstring).

    guidance_scale: the guider's CFG scale s (default its config's), read in ``convention``; negative_prompt: CFG's
    null condition (default ""). sampler / grid: both None (the default): the pipeline's loop, flow Euler (``ddim``)
    on the scheduler's sigmas (``steps``, default 50); a sampler alone: its own grid of ``steps`` / ``nfe`` on the
    folder's flow schedule; ``grid``: ``"scheduler"`` or a tensor (:func:`.flow_latents.pipeline_grid`). ``options``
    go to :func:`diffkit.sample`. num_frames (default 121, 4 k + 1), height / width (both or neither; multiples of
    16). latents: z at s = 1 (B, C, F, h, w), default N(0, I), video i's from ``seed + i``. Returns videos in
    ``output_range`` ("-1,1" or "0,1": the pipeline's ``output_type="pt"``), or with ``return_latents`` the final
    latents (its ``output_type="latent"``)."""
    from ..errors import check_choice
    from .stable_diffusion import OUTPUT_RANGES, prompt_list
    check_choice("output_range", output_range, OUTPUT_RANGES)
    _check_pipeline(model, HUNYUAN_VIDEO15_PIPELINE, "text_to_video")
    prompts = prompt_list(prompts)
    check_video_size(height, width)
    denoiser, cond = model.prompt_guidance(prompts, negative_prompt, guidance_scale, convention)
    return _run(model, denoiser, cond, len(prompts), sampler, grid, steps, nfe, num_frames, height, width, seed,
                latents, output_range, return_latents, progress, options)


def image_to_video(model: HunyuanVideo15, images, prompts: Union[str, Sequence[str]], *, negative_prompt=None,
                   guidance_scale: Optional[float] = None, convention: str = "diffusers",
                   steps: Optional[int] = None, sampler: Optional[str] = None, nfe: Optional[int] = None,
                   grid: Union[None, str, torch.Tensor] = None, num_frames: Optional[int] = None,
                   seed: Optional[int] = 0, latents: Optional[torch.Tensor] = None, output_range: str = "-1,1",
                   return_latents: bool = False, progress: bool = False, **options) -> torch.Tensor:
    """Videos (B, T, C, H, W) starting at ``images`` (PIL images, or (B, 3, H, W) in [-1, 1]; one per video, of one
    bucket size) with ``prompts`` (one, or one per image) as ``HunyuanVideo15ImageToVideoPipeline``: the frame size
    the ``target_size`` bucket nearest the image's aspect, the transformer conditioned on each image's VAE latents
    (latent frame 0, a mask channel) and SigLIP states (:meth:`HunyuanVideo15.image_condition`); every latent frame
    sampled. Keyword arguments: :func:`text_to_video`'s but height / width (the image's bucket)."""
    from ..errors import check_choice
    from .flow_latents import edit_prompts
    from .qwen_image_edit import _pil_images
    from .stable_diffusion import OUTPUT_RANGES
    check_choice("output_range", output_range, OUTPUT_RANGES)
    _check_pipeline(model, HUNYUAN_VIDEO15_I2V_PIPELINE, "image_to_video")
    pil = _pil_images(images)
    prompts = edit_prompts(torch.empty(len(pil), 3, 1, 1), prompts)
    sizes = sorted({model.image_size(image) for image in pil})
    if len(sizes) > 1:
        raise DiffkitError(f"images of buckets {sizes} (height, width) are not allowed together; give images of one "
                           f"aspect bucket (one batch is one latent size)")
    frames = model.check_frames(model.default_frames if num_frames is None else num_frames)
    denoiser, cond = model.prompt_guidance(prompts, negative_prompt, guidance_scale, convention)
    cond["image"], cond["image_embeds"] = model.image_condition(pil, (frames - 1) // model.temporal_factor + 1)
    return _run(model, denoiser, cond, len(prompts), sampler, grid, steps, nfe, frames, *sizes[0], seed, latents,
                output_range, return_latents, progress, options)


def _check_pipeline(model: HunyuanVideo15, pipeline: str, how: str) -> None:
    if model.pipeline != pipeline:
        raise DiffkitError(f"{how} needs a {pipeline} folder (load_hunyuan_video15); this one is a {model.pipeline} "
                           f"folder")


def _run(model: HunyuanVideo15, denoiser, cond: dict, batch: int, sampler, grid, steps, nfe, num_frames, height,
         width, seed, latents, output_range: str, return_latents: bool, progress: bool, options: dict):
    """The sampler's run from z at s = 1 (:func:`.hunyuan_video.start_video`), then the latents or decoded videos."""
    from ..sampling import sample
    from .flow_latents import pipeline_grid
    from .hunyuan_video import start_video
    sampler, grid, steps = pipeline_grid(sampler, grid, steps, nfe, model.default_steps, model.scheduler_grid,
                                         options.get("flow_shift"))
    latents, _, _ = start_video(model, batch, int(model.vae.config.latent_channels), num_frames, height, width, seed,
                                latents, HUNYUAN_VIDEO15_PIPELINE)
    state = torch.float32
    z = sample(denoiser, latents.to(model.device, state), sampler, steps, nfe=nfe, grid=grid, seed=seed, cond=cond,
               progress=progress, device=model.device, dtype=state, **options)
    if return_latents:
        return z
    videos = model.decode_video(z)
    return (videos / 2 + 0.5).clamp(0, 1) if output_range == "0,1" else videos.clamp(-1, 1)


__all__ = ["HunyuanVideo15", "HunyuanVideo15Net", "Guider", "load_hunyuan_video15", "is_hunyuan_video15_folder",
           "check_hunyuan_video15_folder", "text_to_video", "image_to_video", "glyph_text", "system_message",
           "check_video_size", "run_guider", "check_negative_prompt", "HUNYUAN_VIDEO15_PIPELINE",
           "HUNYUAN_VIDEO15_I2V_PIPELINE", "HUNYUAN_VIDEO15_STEPS", "HUNYUAN_VIDEO15_FRAMES"]
