"""A HunyuanImage 2.1 diffusers folder (``HunyuanImagePipeline``, diffusers 0.42.1), sampled with any diffkit sampler.

HunyuanImage 2.1 (Tencent Hunyuan 2025) is a rectified-flow MMDiT (``HunyuanImageTransformer2DModel``: double- then
single-stream blocks, 2-D RoPE, a token refiner over the text; Esser et al. 2024, Sec. 2, eq. 1: x_s = (1 - s) x_0 +
s eps, velocity u = eps - x_0) on the unpacked latents (B, 64, H / 32, W / 32) of its own 32x VAE
(``AutoencoderKLHunyuanImage``), conditioned on Qwen2.5-VL's states and on a ByT5 glyph encoder's. diffkit runs it as
a :class:`.chroma.Chroma` (the scheduler's sigmas as diffkit's grid, :meth:`.flux.Flux.scheduler_grid`, flow Euler
``ddim`` as its step, :func:`.chroma.text_to_image`'s loop, ``diffkit sample``); what is HunyuanImage's own, as
``HunyuanImagePipeline.__call__``:

* prompts (``_get_qwen_prompt_embeds``): each in the pipeline's system template, tokenised to 1000 + 34 tokens
  (padded, truncated), Qwen2.5-VL run under that mask, its hidden state **-3** (``hidden_state_skip_layer`` 2)
  with the first 34 tokens dropped, and the tokenizer mask (B, 1000): the transformer's ``encoder_attention_mask``.
* glyphs (``extract_glyph_text``): the text of a prompt in '...', "...", ‘...’ or “...” quotes, as
  ``Text "a". Text "b". ``, ByT5-tokenised to 128 tokens and encoded by ``text_encoder_2`` (a T5 encoder) under its
  mask; a prompt without quotes gives zeros (B, 128, d) and a zero mask. The transformer puts the valid ByT5 and
  Qwen tokens first.
* guidance (the folder's ``guider``, ``AdaptiveProjectedMixGuidance``; its ``ocr_guider`` instead where some prompt
  of the batch has glyphs): network call i (one per step on the pipeline's loop) runs the prompts and the negative
  prompt (default "", its glyphs too) apart; for i <= ``adaptive_projected_guidance_start_step`` CFG u = u_u +
  s (u_c - u_u) (Ho & Salimans 2022, eq. 6, diffusers' convention; ``guidance_scale``, 3.5 by default), after it
  adaptive projected guidance on the velocities (Sadat, Hilliges & Weber 2025, Sec. 4, Alg. 1): the difference
  after reverse momentum beta (D-bar_i = D_i + beta D-bar_{i-1}, kept from call 0 on), its norm capped at r
  (``adaptive_projected_guidance_rescale``), its part parallel to u_c weighted by eta,
  u = u_u + s_APG update (:func:`diffkit.guidance.adaptive_projected_update`). No guider, a disabled one or
  s = 1: the conditional call alone (a negative prompt refused).
* a guidance-distilled transformer (``guidance_embeds``) gets ``guidance`` = 1000 x ``distilled_guidance_scale``
  (default 3.25); a MeanFlow one (``use_meanflow``) ``timestep_r`` = the next step's timestep (0 after the last),
  which ties it to the pipeline's loop (another sampler or grid is refused).
* the grid: the folder's FlowMatchEuler scheduler after ``set_timesteps(sigmas=linspace(1, 0, N + 1)[:-1])`` (its
  fixed ``shift``; default 50 steps), the sigmas at equal log-SNR (:func:`.flow_latents.flow_sigmas_grid`); the
  transformer takes the timestep s T itself. Size: default 64 f x 64 f (2048 x 2048), multiples of 2 f (the
  pipeline's ``check_inputs``); decoding x = D(z / scaling_factor) (no shift).

Refused in one line before any weight is read: a refiner folder (``HunyuanImageRefinerPipeline``: driven by
:mod:`.hunyuan_image_refiner`, ``diffkit edit``), a component of another class, a transformer whose channels are not
the VAE's latent channels or whose patches are 3-D, a ``use_dynamic_shifting`` scheduler (the pipeline passes no
mu), a guider of another class or with ``guidance_rescale``, ``use_original_formulation`` or a ``start`` / ``stop``
other than 0 / 1. Also refused: ``max_sequence_length`` (the pipeline's is fixed), IP-Adapters, LoRA files,
img2img.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from ..denoiser import Denoiser
from ..errors import DiffkitError, read_json_object
from . import model_dtype, require
from .chroma import Chroma

HUNYUAN_IMAGE_PIPELINE = "HunyuanImagePipeline"
HUNYUAN_IMAGE_REFINER = "HunyuanImageRefinerPipeline"
HUNYUAN_IMAGE_TRANSFORMER = "HunyuanImageTransformer2DModel"
HUNYUAN_IMAGE_CLASSES = {"transformer": (HUNYUAN_IMAGE_TRANSFORMER,), "vae": ("AutoencoderKLHunyuanImage",),
                         "text_encoder": ("Qwen2_5_VLForConditionalGeneration",), "text_encoder_2": ("T5EncoderModel",),
                         "scheduler": ("FlowMatchEulerDiscreteScheduler",)}
REQUIRED = ("transformer", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "scheduler")
GUIDER = "AdaptiveProjectedMixGuidance"
GUIDER_DEFAULTS = {"guidance_scale": 3.5, "guidance_rescale": 0.0, "adaptive_projected_guidance_scale": 10.0,
                   "adaptive_projected_guidance_momentum": -0.5, "adaptive_projected_guidance_rescale": 10.0,
                   "eta": 0.0, "use_original_formulation": False, "start": 0.0, "stop": 1.0,
                   "adaptive_projected_guidance_start_step": 5, "enabled": True}  # its __init__'s defaults
HUNYUAN_IMAGE_STEPS = 50  # __call__'s default num_inference_steps
DISTILLED_GUIDANCE = 3.25  # its default distilled_guidance_scale
SAMPLE_SIZE = 64  # its default_sample_size (latents)
PROMPT_TEMPLATE = ("<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, "
                   "text, spatial relationships of the objects and background:<|im_end|>\n<|im_start|>user\n{}"
                   "<|im_end|>")  # its prompt_template_encode
TEMPLATE_DROP = 34  # its prompt_template_encode_start_idx
TOKENIZER_MAX_LENGTH = 1000  # its tokenizer_max_length (fixed)
GLYPH_MAX_LENGTH = 128  # its tokenizer_2_max_length
HIDDEN_STATE = -3  # hidden_states[-(hidden_state_skip_layer + 1)], skip 2
GLYPH_QUOTES = (r"\'(.*?)\'", r"\"(.*?)\"", r"‘(.*?)’", r"“(.*?)”")  # extract_glyph_text's patterns, in its order


def glyph_text(prompt: str) -> Optional[str]:
    """The ByT5 text of ``prompt``'s quoted spans (``extract_glyph_text``): 'Text "a". Text "b". ', or None."""
    found = [text for pattern in GLYPH_QUOTES for text in re.findall(pattern, prompt)]
    return ". ".join(f'Text "{text}"' for text in found) + ". " if found else None


def glyph_states(tokenizer, encoder, text: Optional[str], length: int, device) -> tuple:
    """(ByT5 states (1, length, d), mask (1, length)) of one prompt's glyph text: ``text`` tokenised to ``length``
    (padded, truncated) and run through the T5 ``encoder`` under its mask; zeros for None (the HunyuanImage 2.1 and
    HunyuanVideo 1.5 pipelines' ``_get_byt5_prompt_embeds``)."""
    if text is None:
        return (torch.zeros(1, length, encoder.config.d_model, device=device),
                torch.zeros(1, length, device=device, dtype=torch.int64))
    tokens = tokenizer(text, padding="max_length", max_length=length, truncation=True, add_special_tokens=True,
                       return_tensors="pt").to(device)
    states = encoder(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask.float())[0]
    return states.to(encoder.dtype), tokens.attention_mask


@dataclass(frozen=True)
class MixGuidance:
    """The arithmetic of a folder's ``AdaptiveProjectedMixGuidance`` config on the velocities (module docstring);
    ``momentum`` None: no momentum buffer; ``norm_threshold`` <= 0: no norm cap."""

    scale: float
    apg_scale: float
    momentum: Optional[float]
    norm_threshold: float
    eta: float
    start_step: int

    @classmethod
    def from_config(cls, config: dict) -> "MixGuidance":
        c = {**GUIDER_DEFAULTS, **config}
        return cls(float(c["guidance_scale"]), float(c["adaptive_projected_guidance_scale"]),
                   None if c["adaptive_projected_guidance_momentum"] is None else
                   float(c["adaptive_projected_guidance_momentum"]), float(c["adaptive_projected_guidance_rescale"]),
                   float(c["eta"]), int(c["adaptive_projected_guidance_start_step"]))

    @property
    def guided(self) -> bool:
        """The guider's ``_is_cfg_enabled`` (its start / stop are 0 / 1): s != 1."""
        return not math.isclose(self.scale, 1.0)

    def projected(self, step: int) -> bool:
        """``_is_apg_enabled`` at call ``step``: past the start step, s_APG != 1."""
        return self.guided and step > self.start_step and not math.isclose(self.apg_scale, 1.0)

    def __call__(self, step: int, cond: torch.Tensor, uncond: torch.Tensor, running):
        """(guided velocity, the momentum's running average after this call) at call ``step``."""
        from ..guidance import adaptive_projected_update
        diff = cond - uncond
        if self.momentum is not None:
            running = diff + self.momentum * running
        if not self.projected(step):
            return uncond + self.scale * diff, running
        update = adaptive_projected_update(running if self.momentum is not None else diff, cond, self.eta,
                                           self.norm_threshold if self.norm_threshold > 0 else math.inf)
        return uncond + self.apg_scale * update, running


class HunyuanImageNet(torch.nn.Module):
    """``net(z, t, context, mask, context_2, mask_2, null_...)`` over a ``HunyuanImageTransformer2DModel``: z (B, C,
    h, w) as it is, ``timestep`` t (the flow time s T), the Qwen states and mask, the ByT5 states and mask;
    ``guidance`` (1000 x the distilled scale, or None), ``timesteps`` (a MeanFlow transformer's: the loop's
    timesteps, 0 appended; call i gets ``timestep_r`` = entry i + 1) and ``guider`` (a :class:`MixGuidance`, with the
    ``null_`` cond: the negative prompt's pass) are fixed per run; :meth:`reset` starts a run (call 0, no momentum)."""

    def __init__(self, transformer, guidance: Optional[float] = None, guider: Optional[MixGuidance] = None,
                 timesteps: Optional[torch.Tensor] = None):
        super().__init__()
        self.model, self.guidance, self.guider, self.timesteps = transformer, guidance, guider, timesteps
        self.reset()

    def reset(self) -> None:
        self.calls, self.running = 0, 0

    def _call(self, x, timestep, r, guidance, context, mask, context_2, mask_2):
        b = x.shape[0]
        text = dict(encoder_hidden_states=context.expand(b, -1, -1), encoder_attention_mask=mask.expand(b, -1))
        if context_2 is not None:
            text.update(encoder_hidden_states_2=context_2.expand(b, -1, -1),
                        encoder_attention_mask_2=mask_2.expand(b, -1))
        return self.model(hidden_states=x, timestep=timestep, timestep_r=r, guidance=guidance, **text,
                          return_dict=False)[0]

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor = None, mask: torch.Tensor = None,
                context_2: torch.Tensor = None, mask_2: torch.Tensor = None, null_context: torch.Tensor = None,
                null_mask: torch.Tensor = None, null_context_2: torch.Tensor = None,
                null_mask_2: torch.Tensor = None, image: torch.Tensor = None) -> torch.Tensor:
        """``image``: the refiner's condition latents (:mod:`.hunyuan_image_refiner`), put beside z on the channels
        and both run as one frame (B, C', 1, h, w)."""
        if context is None or mask is None:
            raise DiffkitError("a HunyuanImage transformer needs cond {'context', 'mask'} "
                               "(HunyuanImage.encode_prompts)")
        dtype, b, step = model_dtype(self.model), x.shape[0], self.calls
        self.calls += 1
        timestep = torch.as_tensor(t, device=x.device, dtype=torch.float32).reshape(-1).expand(b).to(dtype)
        r = guidance = None
        if self.timesteps is not None:
            if step + 1 >= len(self.timesteps):
                raise DiffkitError(f"a MeanFlow HunyuanImage transformer was called {step + 1} times on a loop of "
                                   f"{len(self.timesteps) - 1} steps; it runs on the pipeline's loop alone")
            r = self.timesteps[step + 1].to(x.device).expand(b).to(dtype)
        if self.guidance is not None:
            guidance = torch.full((b,), self.guidance, dtype=dtype, device=x.device) * 1000.0
        x = x.to(dtype)
        if image is not None:  # HunyuanImageRefinerPipeline's cat([latents, cond_latents], dim=1) of one frame
            x = torch.cat([x, image.to(x).expand(b, -1, -1, -1)], dim=1).unsqueeze(2)
        out = self._call(x, timestep, r, guidance, context.to(dtype), mask, None if context_2 is None else
                         context_2.to(dtype), mask_2)
        if self.guider is not None and null_context is not None:
            uncond = self._call(x, timestep, r, guidance, null_context.to(dtype), null_mask,
                                None if null_context_2 is None else null_context_2.to(dtype), null_mask_2)
            out, self.running = self.guider(step, out, uncond, self.running)
        return out if image is None else out[:, :, 0]


class SteppedDenoiser(Denoiser):
    """A flow-prediction Denoiser over a :class:`HunyuanImageNet` whose run state (call count, APG momentum)
    :func:`diffkit.sample` resets at the start of every run (:func:`diffkit.denoiser.reset_states`)."""

    def reset_state(self) -> None:
        self.net.reset()


@dataclass
class HunyuanImage(Chroma):
    """The loaded components of a ``HunyuanImagePipeline`` folder (:func:`load_hunyuan_image`): a
    :class:`.chroma.Chroma` (scheduler grid, decoding, ``diffkit sample``'s loop) with Qwen2.5-VL as
    ``text_encoder``, the ByT5 encoder as ``text_encoder_2``, and the folder's guider configs."""

    guider: Optional[dict] = None
    ocr_guider: Optional[dict] = None

    default_steps = HUNYUAN_IMAGE_STEPS
    max_sequence_length = None  # fixed (TOKENIZER_MAX_LENGTH)
    guidance_hint = "the guider's CFG scale, or a distilled transformer's embedded scale"

    @property
    def vae_scale_factor(self) -> int:
        return int(self.vae.config.spatial_compression_ratio)

    @property
    def shift_factor(self) -> float:
        return 0.0  # the pipeline decodes z / scaling_factor

    @property
    def default_image_size(self) -> int:
        return SAMPLE_SIZE * self.vae_scale_factor

    def latent_shape(self, batch: int, height: Optional[int] = None, width: Optional[int] = None) -> tuple:
        """(batch, C, height / f, width / f): the latents unpacked (the transformer's patches are 1 x 1); default
        64 f; multiples of 2 f (the pipeline's check_inputs)."""
        f = self.vae_scale_factor
        height = self.default_image_size if height is None else height
        width = self.default_image_size if width is None else width
        for value in (height, width):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value % (2 * f):
                raise DiffkitError(f"height x width {height}x{width} is not allowed; give positive multiples of "
                                   f"{2 * f} (2 x the VAE factor {f}: HunyuanImagePipeline's check_inputs)")
        return (batch, int(self.transformer.config.in_channels), height // f, width // f)

    def input_sigmas(self, steps: int):
        """The pipeline's sigmas for ``set_timesteps``: linspace(1, 0, steps + 1)[:-1]."""
        import numpy as np
        return np.linspace(1.0, 0.0, steps + 1)[:-1]

    def network(self) -> torch.nn.Module:
        embeds = bool(self.transformer.config.guidance_embeds)
        return HunyuanImageNet(self.transformer, DISTILLED_GUIDANCE if embeds else None)

    @property
    def meanflow(self) -> bool:
        return bool(self.transformer.config.get("use_meanflow", False))

    def encode_prompts(self, prompts: Sequence[str], max_sequence_length: Optional[int] = None) -> tuple:
        """(Qwen states (B, 1000, d), mask (B, 1000), ByT5 states (B, 128, d_2), mask (B, 128)) as the pipeline's
        ``encode_prompt`` (module docstring)."""
        from .stable_diffusion import prompt_list
        if max_sequence_length is not None:
            raise DiffkitError(f"max_sequence_length={max_sequence_length!r} is not allowed for a HunyuanImage folder "
                               f"(HunyuanImagePipeline's Qwen length is fixed at {TOKENIZER_MAX_LENGTH}); drop it")
        prompts = prompt_list(prompts)
        tokens = self.tokenizer([PROMPT_TEMPLATE.format(p) for p in prompts], padding="max_length",
                                max_length=TOKENIZER_MAX_LENGTH + TEMPLATE_DROP, truncation=True, return_tensors="pt")
        tokens = tokens.to(self.device)
        dtype = model_dtype(self.transformer)
        with torch.no_grad():
            states = self.text_encoder(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask,
                                       output_hidden_states=True).hidden_states[HIDDEN_STATE]
            glyphs = [self._glyph_states(glyph_text(p)) for p in prompts]
        context = states[:, TEMPLATE_DROP:].to(self.text_encoder.dtype).to(dtype)
        return (context, tokens.attention_mask[:, TEMPLATE_DROP:], torch.cat([g[0] for g in glyphs]).to(dtype),
                torch.cat([g[1] for g in glyphs]))

    def _glyph_states(self, text: Optional[str]) -> tuple:
        """(ByT5 states (1, 128, d_2), mask (1, 128)) of one prompt's glyph text; zeros for None."""
        return glyph_states(self.tokenizer_2, self.text_encoder_2, text, GLYPH_MAX_LENGTH, self.device)

    def guidance_of(self, glyphs: torch.Tensor) -> Optional[MixGuidance]:
        """The batch's guider (``ocr_guider`` where some prompt has glyph states and the folder has one), None where
        it is absent or disabled (the conditional call alone)."""
        config = self.ocr_guider if self.ocr_guider is not None and not bool(torch.all(glyphs == 0)) else self.guider
        if config is None or not config.get("enabled", True):
            return None
        return MixGuidance.from_config(config)

    def check_guidance_scale(self, guidance_scale: Optional[float]) -> None:
        """Chroma's finite-number check; a scale with neither an enabled guider nor a guidance embedding: one line."""
        super().check_guidance_scale(guidance_scale)
        if guidance_scale is not None and not self.transformer.config.guidance_embeds and not any(
                c is not None and c.get("enabled", True) for c in (self.guider, self.ocr_guider)):
            raise DiffkitError(f"guidance_scale={guidance_scale!r} is not allowed: this HunyuanImage folder has no "
                               f"enabled guider and its transformer no guidance embedding; drop it")

    def prompt_guidance(self, prompts, h: int, w: int, guidance_scale: Optional[float] = None,
                        negative_prompt=None, max_sequence_length: Optional[int] = None,
                        convention: str = "diffusers", ip_adapter=None, distilled_guidance_scale=None,
                        timesteps: Optional[torch.Tensor] = None) -> tuple:
        """(denoiser, cond) as the pipeline's loop (module docstring). ``guidance_scale``: the guider's CFG s
        (in ``convention``; default its config's); on a guidance-distilled transformer without an enabled guider,
        the embedded scale (as FLUX.1-dev's). ``distilled_guidance_scale``: the embedded scale (default 3.25).
        ``timesteps``: the loop's timesteps, 0 appended (a MeanFlow transformer's ``timestep_r``)."""
        from dataclasses import replace

        from ..errors import check_choice
        from ..guidance import pipeline_scale
        from .stable_diffusion import negative_prompts
        if ip_adapter is not None:
            raise DiffkitError("an IP-Adapter is not allowed for a HunyuanImage folder (HunyuanImagePipeline loads "
                               "none)")
        check_choice("convention", convention, ["diffusers", "seed"])
        self.check_guidance_scale(guidance_scale)
        embeds = bool(self.transformer.config.guidance_embeds)
        if distilled_guidance_scale is not None:
            if not embeds:
                raise DiffkitError(f"distilled_guidance_scale={distilled_guidance_scale!r} is not allowed: this "
                                   f"HunyuanImage transformer has no guidance embedding (guidance_embeds false)")
            super().check_guidance_scale(distilled_guidance_scale)
        if self.meanflow and timesteps is None:
            raise DiffkitError("a MeanFlow HunyuanImage transformer (use_meanflow) takes the next step's time: it "
                               "runs on the pipeline's loop alone (sampler and grid None, or ddim with "
                               "grid='scheduler')")
        context, mask, context_2, mask_2 = self.encode_prompts(prompts, max_sequence_length)
        cond = {"context": context, "mask": mask, "context_2": context_2, "mask_2": mask_2}
        guider = self.guidance_of(context_2)
        embedded = DISTILLED_GUIDANCE if distilled_guidance_scale is None else float(distilled_guidance_scale)
        if guidance_scale is not None and guider is None:  # a distilled folder's --guidance-scale: the embedding
            embedded = float(guidance_scale)
        elif guidance_scale is not None:
            guider = replace(guider, scale=pipeline_scale(guidance_scale, guider.scale, convention))
        if guider is not None and not guider.guided:
            guider = None
        if negative_prompt is not None and guider is None:
            raise DiffkitError("a negative prompt is not allowed here: it feeds only the guider's CFG / APG (an "
                               "enabled guider with a scale != 1); drop it")
        if guider is not None:
            negatives = negative_prompts(negative_prompt, context.shape[0])
            null = self.encode_prompts(negatives[:1] if len(set(negatives)) == 1 else negatives)
            cond.update(null_context=null[0], null_mask=null[1], null_context_2=null[2], null_mask_2=null[3])
        net = HunyuanImageNet(self.transformer, embedded if embeds else None, guider, timesteps)
        denoiser = SteppedDenoiser(net, self.denoiser_for(h, w).schedule, "flow_prediction")
        denoiser.model = self.transformer
        return denoiser, cond

    def scheduler_timesteps(self, steps: int) -> torch.Tensor:
        """The loop's timesteps s T (the scheduler's) with the final 0: a MeanFlow transformer's ``timestep_r``."""
        diffusers = require("diffusers")
        self.check_scheduler_steps(steps)
        scheduler = diffusers.FlowMatchEulerDiscreteScheduler.from_config(self.scheduler_config)
        scheduler.set_timesteps(sigmas=self.input_sigmas(steps))
        return torch.cat([scheduler.timesteps, torch.zeros(1, dtype=scheduler.timesteps.dtype)])


def is_hunyuan_image_folder(path: Union[str, Path]) -> bool:
    """True for a folder whose ``model_index.json`` names a ``HunyuanImage...`` pipeline or its transformer (the
    refiner's too: :mod:`.hunyuan_image_refiner`, which :func:`check_hunyuan_image_folder` refuses in one line)."""
    from .flow_latents import names_pipeline
    return names_pipeline(path, "HunyuanImage", HUNYUAN_IMAGE_TRANSFORMER)


def _guider_config(directory: Path, index: dict, name: str) -> Optional[dict]:
    """The folder's ``name`` guider config (None where absent), one line for what diffkit does not drive."""
    from .sd3 import _entry
    kind = _entry(index, name)
    if kind is None:
        return None
    if kind != GUIDER:
        raise DiffkitError(f"{directory}'s {name} is a {kind!r}; allowed: {GUIDER} or null")
    config = read_json_object(directory / name / "guider_config.json", f"{name} config")
    for key, allowed in (("guidance_rescale", 0.0), ("use_original_formulation", False), ("start", 0.0),
                         ("stop", 1.0)):
        if config.get(key, GUIDER_DEFAULTS[key]) != allowed:
            raise DiffkitError(f"{directory}'s {name} has {key}={config[key]!r}, which diffkit does not drive; "
                               f"allowed: {key}={allowed!r}")
    return config


def check_hunyuan_image_folder(directory) -> tuple:
    """(model_index dict, scheduler config, guider config, ocr_guider config) of a ``HunyuanImagePipeline`` folder,
    checked from its JSON alone (module docstring); a one-line DiffkitError for what diffkit does not drive."""
    from .flux import check_flux_scheduler
    from .pixart import checked_folder, fixed_shift_scheduler
    from .sd_xl import pipeline_class
    directory = Path(directory)
    if pipeline_class(directory) == HUNYUAN_IMAGE_REFINER:
        raise DiffkitError(f"{directory} is a {HUNYUAN_IMAGE_REFINER} folder, which diffkit drives as an edit "
                           f"(diffkit edit; hunyuan_image_refiner.refine); allowed here: {HUNYUAN_IMAGE_PIPELINE}")
    index, config, vae = checked_folder(directory, HUNYUAN_IMAGE_PIPELINE, REQUIRED, "HunyuanImage",
                                        HUNYUAN_IMAGE_CLASSES)
    latents = vae.get("latent_channels")
    channels = (config.get("in_channels", 64), config.get("out_channels", 64))
    if channels != (latents, latents):
        raise DiffkitError(f"{directory}'s transformer has in_channels, out_channels = {channels[0]!r}, "
                           f"{channels[1]!r}; allowed: the VAE's latent channels {latents!r}")
    if len(config.get("patch_size", (1, 1))) != 2:
        raise DiffkitError(f"{directory}'s transformer has patch_size={config['patch_size']!r}; allowed: 2-D "
                           f"patches (3-D ones are a video transformer's)")
    if not isinstance(vae.get("scaling_factor"), (int, float)) or isinstance(vae.get("scaling_factor"), bool):
        raise DiffkitError(f"{directory}'s vae has scaling_factor={vae.get('scaling_factor')!r}; allowed: a number "
                           f"(HunyuanImagePipeline decodes z / scaling_factor)")
    sched = fixed_shift_scheduler(directory, HUNYUAN_IMAGE_PIPELINE)
    check_flux_scheduler(directory, HUNYUAN_IMAGE_PIPELINE)
    return index, sched, _guider_config(directory, index, "guider"), _guider_config(directory, index, "ocr_guider")


def load_hunyuan_image(directory: Union[str, Path], device="cpu", dtype: torch.dtype = torch.float32,
                       progress: bool = True) -> HunyuanImage:
    """Load a ``HunyuanImagePipeline`` diffusers folder (never downloads, never unpickles); what diffkit does not
    drive is refused in one line before any weight is read (:func:`check_hunyuan_image_folder`)."""
    from .flow_latents import frozen_on, load_flow_parts
    diffusers = require("diffusers")
    directory = Path(directory)
    index, sched, guider, ocr_guider = check_hunyuan_image_folder(directory)
    parts = load_flow_parts(directory, index, diffusers.HunyuanImageTransformer2DModel,
                            {"": "Qwen2_5_VLForConditionalGeneration", "_2": "T5EncoderModel"}, dtype, progress,
                            vae_cls=diffusers.AutoencoderKLHunyuanImage)
    device = frozen_on(parts, device)
    parts["text_encoder_2"].to(device).eval().requires_grad_(False)
    model = HunyuanImage(**parts, scheduler_config=sched, device=device, dtype=dtype, guider=guider,
                         ocr_guider=ocr_guider)
    config = model.transformer.config
    for width, encoder, name in ((config.text_embed_dim, model.text_encoder.config.text_config.hidden_size,
                                  "text_embed_dim"),
                                 (config.text_embed_2_dim, model.text_encoder_2.config.d_model, "text_embed_2_dim")):
        if width is not None and width != encoder:
            raise DiffkitError(f"{directory}: the transformer's {name}={width} does not fit its text encoder's width "
                               f"{encoder}")
    return model


def text_to_image(model: HunyuanImage, prompts: Union[str, Sequence[str]], *, sampler: Optional[str] = None,
                  steps: Optional[int] = None, grid=None, height: Optional[int] = None, width: Optional[int] = None,
                  latents: Optional[torch.Tensor] = None, distilled_guidance_scale: Optional[float] = None,
                  **options) -> torch.Tensor:
    """Images of a HunyuanImage folder for ``prompts`` as ``HunyuanImagePipeline``: :func:`.chroma.text_to_image`
    (sampler / grid, default the pipeline's loop; steps (default 50); ``guidance_scale`` / ``negative_prompt`` /
    ``distilled_guidance_scale``: :meth:`HunyuanImage.prompt_guidance`; latents (B, C, h, w) at s = 1; height /
    width (default 64 f); output options). A MeanFlow transformer runs on the pipeline's loop alone."""
    from .chroma import text_to_image as chroma_text_to_image
    guide = {}
    if distilled_guidance_scale is not None:
        guide["distilled_guidance_scale"] = distilled_guidance_scale
    own = (sampler is None or sampler == "ddim") and (grid is None and sampler is None or grid == "scheduler") \
        and options.get("nfe") is None
    if model.meanflow and own:
        guide["timesteps"] = model.scheduler_timesteps(steps or model.default_steps)
    return chroma_text_to_image(model, prompts, sampler=sampler, steps=steps, grid=grid, height=height, width=width,
                                latents=latents, guide=guide, **options)


def image_to_image(model, *_, **__):
    """Refused: HunyuanImagePipeline has no img2img (the refiner is a folder of its own:
    :mod:`.hunyuan_image_refiner`)."""
    raise DiffkitError("a HunyuanImagePipeline folder has no img2img in diffusers 0.42.1 (HunyuanImage's refiner is a "
                       "HunyuanImageRefinerPipeline folder of its own); sample it with diffkit sample")


__all__ = ["HunyuanImage", "HunyuanImageNet", "MixGuidance", "SteppedDenoiser", "load_hunyuan_image",
           "is_hunyuan_image_folder", "check_hunyuan_image_folder", "glyph_text", "glyph_states",
           "text_to_image", "image_to_image",
           "HUNYUAN_IMAGE_STEPS", "DISTILLED_GUIDANCE"]
