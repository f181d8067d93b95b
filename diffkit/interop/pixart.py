"""A PixArt-α / PixArt-Σ diffusers folder (``PixArtAlphaPipeline`` / ``PixArtSigmaPipeline``), sampled with any
diffkit sampler.

PixArt-α (Chen et al. 2024, "PixArt-α: Fast Training of Diffusion Transformer for Photorealistic Text-to-Image
Synthesis") and PixArt-Σ (Chen et al. 2024, "PixArt-Σ: Weak-to-Strong Training of Diffusion Transformer for 4K
Text-to-Image Generation") are DiTs (``PixArtTransformer2DModel``) on the latents of an ``AutoencoderKL``, with
adaLN-single (α Sec. 2.3: one timestep MLP shared by every block, each block adding its own learned table) and
cross-attention to a T5 encoder's states under the prompt's attention mask (α Sec. 2.3, Fig. 4). Their noise
schedule is DDPM's (linear betas, epsilon prediction) with a learned variance: the transformer returns 2C
channels, of which the pipelines keep the first C, the noise (diffkit's ``learned_variance``: the same split).
Every diffusers 0.42 pipeline step is reproduced:

* prompts (``encode_prompt`` with ``clean_caption=False``): each text lower-cased and stripped, tokenised to
  ``max_sequence_length`` tokens (α 120, Σ 300; padded, truncated), T5's last states under that attention
  mask; the negative prompt (default "") the same, at the same length. ``clean_caption=True`` (the pipelines'
  default) needs bs4 and ftfy, and without them the pipelines fall back to ``False`` with a warning: diffkit
  always does what they do then (:data:`CLEAN_CAPTION`).
* the masks go to the transformer as ``encoder_attention_mask`` (each half its own; cond ``mask``).
* micro-conditions (α Sec. 2.3 / PixArt-α's 1024-px models): where the transformer has
  ``use_additional_conditions`` (diffusers' default for ``sample_size`` 128), ``resolution`` = (height, width) in
  pixels and ``aspect_ratio`` = height / width, as ``PixArtAlphaPipeline`` passes them (it does so for
  ``sample_size`` 128; the transformer reads them only with ``use_additional_conditions``; ``PixArtSigmaPipeline``
  never passes them, so a Σ transformer with that option fails there and runs here on the α rule).
* classifier-free guidance on the noise, eps_u + s (eps_c - eps_u) (default s = 4.5), the pipelines' formula:
  :class:`~diffkit.guidance.ClassifierFreeGuidance` in the ``diffusers`` convention guides the first C channels
  (the variance channels are dropped, as there). s = 1 is one unguided call.
* the scheduler (:meth:`PixArt.scheduler_grid`, :func:`folder_sampler`): the folder's own scheduler class after
  ``set_timesteps(steps)`` (default 20 steps), its timesteps as diffkit's grid
  (:func:`~.schedulers.grid_from_diffusers`), and the diffkit sampler that computes its step: a
  ``DPMSolverMultistepScheduler`` (both PixArt releases ship one) is ``dpm-solver++-2m`` (``-3m`` for
  ``solver_order`` 3, ``dpm-solver-Nm`` for ``algorithm_type="dpmsolver"``, its ``solver_type`` and
  ``lower_order_final``), a ``DDIMScheduler`` ``ddim`` (eta 0). Options with no diffkit counterpart on that grid
  are refused in one line. Any other sampler runs on its own grid, or on the scheduler's with ``grid="scheduler"``.
* decoding: x = D(z / scaling_factor) (no shift), images (x / 2 + 0.5).clamp(0, 1).

``use_resolution_binning`` (the pipelines' default True: the requested size is replaced by the nearest entry
of the aspect-ratio table of the transformer's ``sample_size``, and the images are resized and centre-cropped
back) is :func:`text_to_image`'s ``resolution_binning=True``, with diffusers' own tables and
``PixArtImageProcessor``; by default diffkit draws the size asked for, as ``use_resolution_binning=False``.

Refused in one line before any weight is read (:func:`check_pixart_folder`): a missing component, a
transformer, VAE or text encoder of another class (the transformer: ``PixArtTransformer2DModel``, or
``Transformer2DModel`` as PixArt-α's released folders name it, loaded as the former), a transformer whose output
channels are neither C nor 2C.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from ..errors import DiffkitError, check_choice, read_json_object
from . import model_dtype, require
from .flow_latents import FlowLatentVAE, finish_images, frozen_on, load_flow_parts, start_latents

PIXART_PIPELINES = {"PixArtAlphaPipeline": 120, "PixArtSigmaPipeline": 300}  # class: its max_sequence_length
PIXART_TRANSFORMERS = ("PixArtTransformer2DModel", "Transformer2DModel")  # the second: PixArt-α's released folders
REQUIRED = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")
PIXART_GUIDANCE = 4.5  # both pipelines' default guidance_scale
PIXART_STEPS = 20  # their default num_inference_steps
CLEAN_CAPTION = False  # what the pipelines run without bs4 / ftfy (their clean_caption=True needs both)
# DPMSolverMultistepScheduler options under which diffkit's multistep DPM-Solver on its grid is its step
_DPM_FIXED = {"thresholding": False, "use_karras_sigmas": False, "use_exponential_sigmas": False,
              "use_beta_sigmas": False, "use_lu_lambdas": False, "use_flow_sigmas": False, "euler_at_final": False,
              "variance_type": None, "lambda_min_clipped": -math.inf}
_DPM_ALGORITHMS = {"dpmsolver++": "dpm-solver++", "dpmsolver": "dpm-solver"}
# EulerDiscreteScheduler options under which diffkit's euler on its timesteps is its step (a Kolors folder's)
_EULER_FIXED = {"use_karras_sigmas": False, "use_exponential_sigmas": False, "use_beta_sigmas": False,
                "timestep_type": "discrete", "interpolation_type": "linear", "final_sigmas_type": "zero",
                "rescale_betas_zero_snr": False}
EULER_SCHEDULER = "EulerDiscreteScheduler"


def check_classes(directory, index: dict, required, kind: str, classes: dict) -> None:
    """One line unless the ``required`` components are named and present and each of ``classes`` ({component:
    allowed class names}) is one of its classes (PixArt's, Sana's, Lumina-Image 2.0's, AuraFlow's folders)."""
    from .sd3 import _entry
    from .stable_diffusion import check_components
    check_components(directory, index, required, kind)
    for part, allowed in classes.items():
        if _entry(index, part) not in allowed:
            raise DiffkitError(f"{directory}'s {part} is a {_entry(index, part)!r}; allowed: {' or '.join(allowed)}")


def named_index(directory: Path, pipelines, kind: str) -> dict:
    """The ``model_index.json`` dict of ``directory`` where it names one of ``pipelines``, else one line ("is not a
    {kind} folder", "an" before a vowel; Qwen-Image's and LongCat-Image's folders)."""
    from .sd_xl import _index
    index = _index(directory)
    if index is None or index.get("_class_name") not in pipelines:
        article = "an" if kind[:1] in "AEIOU" else "a"
        raise DiffkitError(f"{directory} is not {article} {kind} folder (model_index.json naming one of "
                           f"{', '.join(pipelines)})")
    return index


def checked_folder(directory: Path, pipeline: str, required, kind: str, classes: dict) -> tuple:
    """(model_index.json, transformer config, VAE config) of ``directory`` where its index names ``pipeline`` and
    passes :func:`check_classes` (``required``, ``kind``, ``classes``), else one line ("is not a(n) {kind} folder";
    AuraFlow's and HunyuanDiT's folders)."""
    from .sd_xl import _index
    index = _index(directory)
    if index is None or index.get("_class_name") != pipeline:
        article = "an" if kind[:1] in "AEIOU" else "a"
        raise DiffkitError(f"{directory} is not {article} {kind} folder (model_index.json naming {pipeline})")
    check_classes(directory, index, required, kind, classes)
    return (index, read_json_object(directory / "transformer" / "config.json", "transformer config"),
            read_json_object(directory / "vae" / "config.json", "vae config"))
def check_pipeline_folder(directory: Path, pipeline: str, kind: str, required, classes: dict) -> dict:
    """The ``model_index.json`` dict of a folder that must name ``pipeline``, its components checked by
    :func:`check_classes` (Lumina-Image 2.0's, CogView4's); another pipeline class is one line."""
    from .sd_xl import _index
    index = _index(directory)
    name = None if index is None else index.get("_class_name")
    if name != pipeline:
        raise DiffkitError(f"{directory} is a {name!r} folder, which diffkit does not drive here; allowed: {pipeline}")
    check_classes(directory, index, required, kind, classes)
    return index


def fixed_shift_scheduler(directory: Path, pipeline: str) -> dict:
    """The scheduler config of ``directory``, one line where it has ``use_dynamic_shifting``: ``pipeline``
    (AuraFlow's, Lumina-Next's) calls ``set_timesteps`` with no mu."""
    sched = read_json_object(directory / "scheduler" / "scheduler_config.json", "scheduler config")
    if sched.get("use_dynamic_shifting", False):
        raise DiffkitError(f"{directory}'s scheduler has use_dynamic_shifting=True, for which {pipeline} passes no mu "
                           f"(its set_timesteps fails); allowed: a fixed shift")
    return sched


def pixart_kind(path) -> Optional[str]:
    """``model_index.json``'s ``_class_name`` where it is a PixArt pipeline (α or Σ), else None."""
    from .sd_xl import pipeline_class
    name = pipeline_class(path)
    return name if name in PIXART_PIPELINES else None


def masked_text_folder(path) -> Optional[str]:
    """"PixArt" for a PixArt-α / Σ folder, "Sana" for a Sana one, "Lumina2" for a Lumina-Image 2.0 one, "AuraFlow"
    for an AuraFlow one, "HunyuanDiT" for a HunyuanDiT one, "HiDream" for a HiDream-I1 one, "Lumina-Next" for a
    Lumina-Next one, "CogView4" for a CogView4 one, "CogView3Plus" for a CogView3-Plus one, "DeepFloyd IF" for an IF
    one (stage I or II), "Kandinsky 3" for a Kandinsky 3 one, "PRX" for a PRX one, "Kandinsky 5" for a Kandinsky 5
    one (:mod:`.kandinsky5`; :mod:`.sana`, :mod:`.lumina2`,
    :mod:`.auraflow`, :mod:`.hunyuan_dit`, :mod:`.hidream`, :mod:`.lumina_next`, :mod:`.cogview4`,
    :mod:`.cogview3plus`, :mod:`.deepfloyd_if`, :mod:`.kandinsky3`, :mod:`.prx`: the same command path), else None."""
    if pixart_kind(path) is not None:
        return "PixArt"
    from .deepfloyd_if import is_deepfloyd_if_folder
    if is_deepfloyd_if_folder(path):
        return "DeepFloyd IF"
    from .kandinsky3 import is_kandinsky3_folder
    if is_kandinsky3_folder(path):
        return "Kandinsky 3"
    from .auraflow import is_auraflow_folder
    from .hunyuan_dit import is_hunyuan_dit_folder
    from .lumina2 import is_lumina2_folder
    from .sana import is_sana_folder
    if is_sana_folder(path):
        return "Sana"
    if is_hunyuan_dit_folder(path):
        return "HunyuanDiT"
    from .lumina_next import is_lumina_next_folder
    if is_lumina_next_folder(path):
        return "Lumina-Next"
    from .hidream import is_hidream_folder
    if is_hidream_folder(path):
        return "HiDream"
    if is_lumina2_folder(path):
        return "Lumina2"
    from .cogview3plus import is_cogview3plus_folder
    from .cogview4 import is_cogview4_folder
    if is_auraflow_folder(path):
        return "AuraFlow"
    from .prx import is_prx_folder
    if is_prx_folder(path):
        return "PRX"
    from .kandinsky5 import is_kandinsky5_folder
    if is_kandinsky5_folder(path):
        return "Kandinsky 5"
    return "CogView4" if is_cogview4_folder(path) else "CogView3Plus" if is_cogview3plus_folder(path) else None


def is_pixart_folder(path) -> bool:
    """True for a ``PixArtAlphaPipeline`` / ``PixArtSigmaPipeline`` folder (so ``diffkit sample`` dispatches)."""
    return pixart_kind(path) is not None


def folder_sampler(config: dict, flow: bool = False) -> tuple:
    """(diffkit sampler, its options) that computes the step of the folder's scheduler (``config``: its JSON) on
    that scheduler's own timesteps: ``DPMSolverMultistepScheduler`` -> ``dpm-solver++-2m`` / ``-3m`` (or
    ``dpm-solver-Nm``, order 1: ``ddim``) with its ``solver_type`` and ``lower_order_final``; ``DDIMScheduler`` ->
    ``ddim``; ``EulerDiscreteScheduler`` (not ``flow``; a Kolors folder's, :mod:`.kolors`) -> ``euler``. ``flow`` (a
    flow-matching folder, :mod:`.sana`): the DPM-Solver with ``use_flow_sigmas`` and
    ``final_sigmas_type="zero"`` (the same step in log-SNR), or ``FlowMatchEulerDiscreteScheduler`` -> ``ddim`` (flow
    Euler, as SD3's). Another class, or an option with no counterpart, is a one-line DiffkitError (give a sampler)."""
    from .schedulers import FLOW_SCHEDULER
    name = config.get("_class_name")
    hint = "; give a diffkit sampler (--sampler NAME)"
    euler = FLOW_SCHEDULER if flow else "DDIMScheduler"  # the class whose step is diffkit's ddim
    if name == euler:  # the keys (and their defaults) that make its step another: DDIM's clip_sample defaults to True
        why = "draws its own noise" if flow else "clamps x0"
        for key, default in ({"stochastic_sampling": False} if flow else {"clip_sample": True,
                                                                           "thresholding": False}).items():
            if config.get(key, default):
                raise DiffkitError(f"the folder's {name} has {key}=True, which {why} in its step and not in diffkit's "
                                   f"ddim{hint}")
        return "ddim", {}
    if name == EULER_SCHEDULER and not flow:  # SD-XL-style Euler (Karras et al. 2022, Alg. 1, s_churn 0)
        _checked_fixed(config, name, _EULER_FIXED, "euler on its timesteps does not compute", hint)
        return "euler", {}
    if name != "DPMSolverMultistepScheduler":
        others = "" if flow else f", {EULER_SCHEDULER}"
        raise DiffkitError(f"the folder's scheduler {name!r} has no diffkit sampler equivalent here (allowed: "
                           f"DPMSolverMultistepScheduler, {euler}{others}){hint}")
    fixed = {**_DPM_FIXED, "use_flow_sigmas": True, "final_sigmas_type": "zero"} if flow else _DPM_FIXED
    _checked_fixed(config, name, fixed, "multistep DPM-Solver on its timesteps does not compute", hint)
    algorithm = config.get("algorithm_type", "dpmsolver++")
    order = config.get("solver_order", 2)
    if algorithm not in _DPM_ALGORITHMS or order not in (1, 2, 3):
        raise DiffkitError(f"the folder's DPMSolverMultistepScheduler has algorithm_type={algorithm!r}, "
                           f"solver_order={order!r}; allowed: {' / '.join(_DPM_ALGORITHMS)} of order 1-3 (an SDE "
                           f"variant draws its own noise){hint}")
    if order == 1:  # first-order DPM-Solver(++) is DDIM (Lu et al. 2022b, Sec. 3)
        return "ddim", {}
    own = {"solver_type": config.get("solver_type", "midpoint"),
           "lower_order_final": config.get("lower_order_final", True)}
    return f"{_DPM_ALGORITHMS[algorithm]}-{order}m", own


def _checked_fixed(config: dict, name: str, fixed: dict, why: str, hint: str) -> None:
    """One line for the first of the ``fixed`` options (their values under which a diffkit sampler on the scheduler's
    timesteps is its step) that the folder's ``config`` sets otherwise (``why``: which sampler does not compute it)."""
    for key, want in fixed.items():
        value = config.get(key, want)
        if key == "variance_type" and value not in ("learned", "learned_range"):
            continue  # DPM-Solver's step reads only those two (a DDPMScheduler config's fixed_small from from_config)
        if value != want and not (key == "lambda_min_clipped" and value is not None and value <= -1e30):
            raise DiffkitError(f"the folder's {name} has {key}={value!r}, which diffkit's {why} (allowed: "
                               f"{want!r}){hint}")


def own_scheduler_grid(config: dict, steps: int) -> torch.Tensor:
    """diffkit's grid of the scheduler class ``config`` names (its JSON) after ``set_timesteps(steps)``."""
    from .schedulers import grid_from_diffusers
    diffusers = require("diffusers")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise DiffkitError(f"steps={steps!r} is not allowed; give a positive integer")
    scheduler = getattr(diffusers, config["_class_name"]).from_config(config)
    scheduler.set_timesteps(steps)
    return grid_from_diffusers(scheduler)


def check_pixart_folder(directory) -> tuple:
    """(model_index dict, transformer config, scheduler config) of a PixArt folder, checked from its JSON alone
    (module docstring); a one-line DiffkitError for what diffkit does not drive."""
    from .sd_xl import _index
    directory = Path(directory)
    index = _index(directory)
    if index is None or index.get("_class_name") not in PIXART_PIPELINES:
        raise DiffkitError(f"{directory} is not a PixArt folder (model_index.json naming "
                           f"{' or '.join(PIXART_PIPELINES)})")
    check_classes(directory, index, REQUIRED, "PixArt", {
        "transformer": PIXART_TRANSFORMERS, "vae": ("AutoencoderKL",), "text_encoder": ("T5EncoderModel",)})
    config = read_json_object(directory / "transformer" / "config.json", "transformer config")
    c_in = int(config.get("in_channels", 4))
    c_out = config.get("out_channels", 8)
    c_out = c_in if c_out is None else int(c_out)
    if c_out not in (c_in, 2 * c_in):
        raise DiffkitError(f"{directory}'s transformer has out_channels={c_out} for in_channels={c_in}; allowed: "
                           f"{c_in} or {2 * c_in} (the noise, then a learned variance the pipelines drop)")
    sched = read_json_object(directory / "scheduler" / "scheduler_config.json", "scheduler config")
    return index, config, sched


class PixArtNet(torch.nn.Module):
    """``net(x, t, context, mask, resolution=None, aspect_ratio=None)`` over a ``PixArtTransformer2DModel``:
    ``context`` -> ``encoder_hidden_states``, ``mask`` -> ``encoder_attention_mask``, the micro-conditions ->
    ``added_cond_kwargs``, ``t`` (float32 training timesteps) -> ``timestep``; the output (2C channels with a
    learned variance) in x's dtype."""

    def __init__(self, transformer):
        super().__init__()
        self.model = transformer

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor = None, mask: torch.Tensor = None,
                resolution: Optional[torch.Tensor] = None, aspect_ratio: Optional[torch.Tensor] = None):
        if context is None or mask is None:
            raise DiffkitError("a PixArt transformer needs cond {'context', 'mask'} (PixArt.encode_prompts)")
        dtype = model_dtype(self.model)
        t = torch.as_tensor(t, device=x.device, dtype=torch.float32).reshape(-1).expand(x.shape[0])
        added = {"resolution": resolution, "aspect_ratio": aspect_ratio}
        out = self.model(x.to(dtype), encoder_hidden_states=context.to(dtype), encoder_attention_mask=mask,
                         timestep=t, added_cond_kwargs=added, return_dict=False)[0]
        return out.to(x.dtype)


@dataclass
class PixArt(FlowLatentVAE):
    """The loaded components of a PixArt-α / Σ folder (:func:`load_pixart`)."""

    pipeline: str
    transformer: object
    vae: object
    text_encoder: object
    tokenizer: object
    schedule: object
    prediction_type: str
    scheduler_config: dict
    device: torch.device
    dtype: torch.dtype = torch.float32
    _denoiser: object = field(default=None, repr=False)

    default_guidance_scale = PIXART_GUIDANCE
    default_steps = PIXART_STEPS
    max_length_limit = 512  # T5's longest
    size_multiple = 8  # the pipelines' check_inputs: height and width multiples of 8
    latents_are_flow_state = True  # a flow folder's latents: the flow state at the first sigma (flow_start)

    @property
    def shift_factor(self) -> float:
        """0: the PixArt pipelines decode z / scaling_factor with no shift (whatever the VAE config holds)."""
        return 0.0

    @property
    def max_sequence_length(self) -> int:
        """The pipeline's default T5 length: 120 (α), 300 (Σ)."""
        return PIXART_PIPELINES[self.pipeline]

    @property
    def learned_variance(self) -> bool:
        c = self.transformer.config
        return int(c.out_channels) == 2 * int(c.in_channels)

    @property
    def default_side(self) -> int:
        """The pipelines' default height and width in pixels: the transformer's ``sample_size`` x f."""
        return int(self.transformer.config.sample_size) * self.vae_scale_factor

    @property
    def bins_key(self) -> int:
        """The key of this folder's table in :meth:`aspect_ratio_bins`: the transformer's ``sample_size``."""
        return int(self.transformer.config.sample_size)

    bins_key_name = "a transformer sample_size"  # what :attr:`bins_key` is, in binned_size's refusal

    def latent_shape(self, batch: int, height: Optional[int] = None, width: Optional[int] = None) -> tuple:
        """(batch, in_channels, height / f, width / f); default size :attr:`default_side` (the pipelines'); sides
        multiples of lcm(8, f * patch_size) (their ``check_inputs``' 8, :attr:`size_multiple`, and whole patches)."""
        f, patch = self.vae_scale_factor, int(self.transformer.config.patch_size)
        size = self.default_side
        height = size if height is None else height
        width = size if width is None else width
        multiple = math.lcm(self.size_multiple, f * patch)
        for value in (height, width):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value % multiple:
                raise DiffkitError(f"height x width {height}x{width} is not allowed; give positive multiples of "
                                   f"{multiple} (the pipeline's {self.size_multiple}, the VAE factor {f} x the patch "
                                   f"size {patch})")
        return (batch, int(self.transformer.config.in_channels), height // f, width // f)

    def encode_prompts(self, prompts: Sequence[str], max_sequence_length: Optional[int] = None) -> tuple:
        """(T5 states (B, L, d), attention mask (B, L)) of ``prompts`` as the pipelines' ``encode_prompt`` with
        ``clean_caption=False``: lower-cased, stripped, padded / truncated to L = ``max_sequence_length`` (default
        the pipeline's 120 / 300) tokens, encoded under their mask."""
        from .stable_diffusion import prompt_list
        length = self.max_sequence_length if max_sequence_length is None else max_sequence_length
        self.check_length(length)
        texts = [text.lower().strip() for text in prompt_list(prompts)]  # _text_preprocessing(clean_caption=False)
        tokens = self.tokenizer(texts, padding="max_length", max_length=length, truncation=True,
                                add_special_tokens=True, return_tensors="pt")
        mask = tokens.attention_mask.to(self.device)
        with torch.no_grad():
            states = self.text_encoder(tokens.input_ids.to(self.device), attention_mask=mask)[0]
        return states.to(self.text_encoder.dtype), mask

    def check_length(self, length) -> None:
        """A one-line DiffkitError unless ``length`` (``max_sequence_length``) is in 1..:attr:`max_length_limit`."""
        if isinstance(length, bool) or not isinstance(length, int) or not 1 <= length <= self.max_length_limit:
            raise DiffkitError(f"max_sequence_length={length!r} is not allowed; allowed: 1..{self.max_length_limit} "
                               f"(the text tokens of each prompt; the pipeline's default {self.max_sequence_length})")

    def encode_negative_prompts(self, prompts: Sequence[str], length: int) -> tuple:
        """The null half's (states, mask) at the prompts' ``length``: as :meth:`encode_prompts` (PixArt's)."""
        return self.encode_prompts(prompts, length)

    def folder_sampler(self) -> tuple:
        """(sampler, options) of the folder's scheduler's step (:func:`folder_sampler`)."""
        return folder_sampler(self.scheduler_config)

    def scheduler_denoiser(self):
        """The unguided denoiser on the scheduler's own timesteps: :attr:`denoiser` (PixArt's)."""
        return self.denoiser

    def check_controlnets(self, controlnets, pag_scale) -> None:
        """One line for ControlNets this folder's ControlNet pipeline does not take: a Sana folder's
        (:mod:`.sana_controlnet`); PixArt has none."""
        from .sana_controlnet import check_no_pag, check_sana_controlnets
        if self.pipeline != "SanaPipeline":
            raise DiffkitError(f"a ControlNet is not supported on a {self.pipeline} folder (diffusers 0.42.1 has a "
                               f"ControlNet pipeline for SanaPipeline and HunyuanDiTPipeline folders only)")
        check_no_pag(controlnets, pag_scale)
        check_sana_controlnets(controlnets, self.transformer)

    def controlnet_guidance(self, controlnets, guide, shape: tuple, unguided=None, control_rows=None) -> tuple:
        """(denoiser, cond) of the prompts' guidance ``guide`` with ``controlnets``: a Sana folder's
        (:func:`.sana_controlnet.controlnet_guidance`)."""
        from .sana_controlnet import controlnet_guidance
        return controlnet_guidance(self, controlnets, guide, shape, unguided, control_rows)

    def aspect_ratio_bins(self) -> dict:
        """{transformer sample_size: diffusers' aspect-ratio table} of ``use_resolution_binning`` (α: 32, 64, 128;
        Σ also 256)."""
        require("diffusers")
        from diffusers.pipelines.pixart_alpha import pipeline_pixart_alpha as alpha, pipeline_pixart_sigma as sigma
        bins = {32: alpha.ASPECT_RATIO_256_BIN, 64: alpha.ASPECT_RATIO_512_BIN, 128: alpha.ASPECT_RATIO_1024_BIN}
        if self.pipeline == "PixArtSigmaPipeline":
            bins[256] = sigma.ASPECT_RATIO_2048_BIN
        return bins

    def micro_conditions(self, batch: int, height: int, width: int) -> dict:
        """{'resolution': (B, 2) pixels (h, w), 'aspect_ratio': (B, 1) h / w} where the transformer has
        ``use_additional_conditions`` (``PixArtAlphaPipeline``'s micro-conditions), else {}."""
        if not getattr(self.transformer, "use_additional_conditions", False):
            return {}
        dtype = self.text_encoder.dtype
        resolution = torch.tensor([height, width]).repeat(batch, 1).to(self.device, dtype)
        aspect = torch.tensor([float(height / width)]).repeat(batch, 1).to(self.device, dtype)
        return {"resolution": resolution, "aspect_ratio": aspect}

    @property
    def denoiser(self):
        """The unguided :class:`~diffkit.denoiser.Denoiser` (cond: ``context``, ``mask``, and the micro-conditions)
        on the scheduler's schedule and prediction type, with the learned variance of a 2C-channel transformer."""
        if self._denoiser is None:
            from ..denoiser import Denoiser
            self._denoiser = Denoiser(PixArtNet(self.transformer), self.schedule, self.prediction_type,
                                      learned_variance=self.learned_variance)
            self._denoiser.model = self.transformer
        return self._denoiser

    def scheduler_grid(self, steps: int) -> torch.Tensor:
        """diffkit's grid of the folder's own scheduler class after ``set_timesteps(steps)``."""
        return own_scheduler_grid(self.scheduler_config, steps)

    def prompt_guidance(self, prompts, negative_prompt=None, guidance_scale: float = PIXART_GUIDANCE,
                        convention: str = "diffusers", max_sequence_length: Optional[int] = None,
                        size: Optional[tuple] = None, denoiser=None, **encode) -> tuple:
        """(denoiser, cond): the prompts' states and masks (and micro-conditions of the image ``size`` (h, w) in
        pixels), guided against ``negative_prompt`` (None: ""; one, or one per prompt) with its own mask
        (:meth:`encode_negative_prompts`). ``denoiser``: the unguided one (default :attr:`denoiser`); ``encode``:
        more keyword arguments of :meth:`encode_prompts`."""
        from ..guidance import ClassifierFreeGuidance
        from .stable_diffusion import negative_prompts
        context, mask = self.encode_prompts(prompts, max_sequence_length, **encode)
        batch = context.shape[0]
        cond = {"context": context, "mask": mask, **self.micro_conditions(batch, *size)}
        negatives = negative_prompts(negative_prompt, batch)
        if len(set(negatives)) == 1:
            negatives = negatives[:1]  # one row, broadcast by the guidance to every sample
        null_context, null_mask = self.encode_negative_prompts(negatives, context.shape[1])
        guided = ClassifierFreeGuidance(denoiser or self.denoiser, guidance_scale, convention,
                                        null_context=null_context, null_cond={"mask": null_mask})
        return guided, cond


def load_pixart(directory: Union[str, Path], device="cpu", dtype: torch.dtype = torch.float32,
                progress: bool = True) -> PixArt:
    """Load a PixArt-α / Σ diffusers folder (never downloads, never unpickles); what diffkit does not drive is
    refused in one line before any weight is read (:func:`check_pixart_folder`)."""
    from .schedulers import schedule_from_diffusers
    diffusers = require("diffusers")
    directory = Path(directory)
    index, _, sched = check_pixart_folder(directory)
    schedule, prediction_type = schedule_from_diffusers(sched)
    if prediction_type == "flow_prediction":
        raise DiffkitError(f"{directory}'s scheduler is a flow-matching one; the PixArt pipelines' DPM-Solver "
                           f"steps are for a DDPM schedule")
    parts = load_flow_parts(directory, index, diffusers.PixArtTransformer2DModel, {"": "T5EncoderModel"}, dtype,
                            progress)
    device = frozen_on(parts, device)
    return PixArt(pipeline=index["_class_name"], **parts, schedule=schedule, prediction_type=prediction_type,
                  scheduler_config=sched, device=device, dtype=dtype)


def binned_size(pixart: PixArt, height: Optional[int], width: Optional[int]) -> tuple:
    """(height, width) of ``use_resolution_binning``: the nearest aspect ratio of diffusers' table for the
    transformer's ``sample_size`` (:meth:`PixArt.aspect_ratio_bins`), as the pipelines' ``classify_height_width_bin``
    (PixArt's and Sana's)."""
    require("diffusers")
    from diffusers.image_processor import PixArtImageProcessor
    bins = pixart.aspect_ratio_bins()
    sample = pixart.bins_key
    if sample not in bins:
        raise DiffkitError(f"resolution binning needs {pixart.bins_key_name} of {', '.join(map(str, bins))} (the "
                           f"pipeline's aspect-ratio tables); this one has {sample}: draw without it")
    size = pixart.default_side
    return PixArtImageProcessor.classify_height_width_bin(size if height is None else height,
                                                          size if width is None else width, ratios=bins[sample])


def flow_start(schedule, noise, grid: torch.Tensor, seed, device, dtype) -> torch.Tensor:
    """diffkit's VP x_T of a flow pipeline's latents z (``noise``, or its shape: drawn from per-sample ``seed + i``
    as :func:`diffkit.sample` draws it), which are the flow state at the grid's first sigma s_0 (Sana's
    DPM-Solver starts at s_0 = shift(1 - 1/T) < 1): x = (alpha + sigma) z at that time (the inverse of
    :func:`diffkit.diffusion.flow_input`); z itself where s_0 = 1."""
    t0 = grid[:1].to(torch.float64)
    factor = float((schedule.alpha(t0) + schedule.sigma(t0))[0])
    if factor == 1.0:
        return noise
    if not isinstance(noise, torch.Tensor):
        from ..noise import generators_from_seed, randn
        from ..sampling import available_device
        generators = None if seed is None else generators_from_seed(seed, noise[0])
        noise = randn(noise, generators, device=available_device(device), dtype=dtype)
    return noise * factor


def text_to_image(pixart: PixArt, prompts: Union[str, Sequence[str]], *, sampler: Optional[str] = None,
                  steps: Optional[int] = None, nfe: Optional[int] = None, guidance_scale: Optional[float] = None,
                  convention: str = "diffusers", negative_prompt: Union[None, str, Sequence[str]] = None,
                  seed: Optional[int] = 0, latents: Optional[torch.Tensor] = None, height: Optional[int] = None,
                  width: Optional[int] = None, grid: Union[None, str, torch.Tensor] = None,
                  max_sequence_length: Optional[int] = None, resolution_binning: bool = False,
                  output_range: str = "0,1", return_latents: bool = False, progress: bool = False,
                  encode: Optional[dict] = None, pag_scale: Optional[float] = None, pag_layers=None,
                  pag_adaptive_scale: Optional[float] = None, controlnets=None, control_rows=None,
                  control_options: Optional[dict] = None, **options) -> torch.Tensor:
    """Images of a PixArt folder for ``prompts`` (module docstring); also a Sana folder's (:mod:`.sana`, whose
    ``encode`` holds its ``complex_human_instruction``).

    sampler / grid: both None (the default): the pipeline's loop, :func:`folder_sampler` of its scheduler on the
        scheduler's timesteps (``grid="scheduler"``); a sampler alone: its default grid; ``grid``: a tensor, or
        ``"scheduler"`` with any sampler. steps / nfe: default 20 steps (the pipelines').
    guidance_scale: in ``convention`` (``diffusers``: s, default 4.5; ``seed``: w = s - 1). negative_prompt: the
        null half (default ""). max_sequence_length: the T5 tokens (default α 120, Σ 300).
    latents: z_T (B, C, h, w), as the pipeline's ``latents=``; default N(0, I) from per-sample ``seed + i``.
    resolution_binning: the pipelines' ``use_resolution_binning`` (module docstring; the latents' size is then the
        binned one, ``latents`` included, and the images are resized and cropped back to height x width); default
        off.
    output_range: ``"0,1"`` (``output_type="pt"``) or ``"-1,1"``; ``return_latents``: z_0 (``output_type="latent"``;
        with binning, at the binned size). options: passed to :func:`diffkit.sample` (e.g. ``eta``).
    pag_scale, pag_layers, pag_adaptive_scale: perturbed-attention guidance on a PixArt-Σ or Sana folder, as
        ``PixArtSigmaPAGPipeline`` / ``SanaPAGPipeline`` (:mod:`.pixart_pag`; None or 0: off, bit for bit).
    controlnets: a Sana folder's ControlNet (a :class:`~.controlnet.ControlNets` of one ``SanaControlNetModel``), as
        ``SanaControlNetPipeline`` (:mod:`.sana_controlnet`); a HunyuanDiT folder's (:mod:`.hunyuan_dit_controlnet`);
        ``control_rows``: each sample's control image where there is one per prompt; ``control_options``: the
        kind's own (HunyuanDiT's posterior ``seed`` and ``posterior``).
    """
    from ..sampling import sample
    from .pixart_pag import check_pixart_pag, pixart_pag
    from .stable_diffusion import OUTPUT_RANGES, prompt_list
    check_choice("output_range", output_range, OUTPUT_RANGES)
    check_pixart_pag(pixart.pipeline, pag_scale, pag_layers, pag_adaptive_scale)  # before any work
    if controlnets is not None:
        pixart.check_controlnets(controlnets, pag_scale)
    prompts = prompt_list(prompts)
    asked = None
    if resolution_binning:  # any size asked: the binned one is drawn (latents: at that size)
        for name, value in (("height", height), ("width", width)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
                raise DiffkitError(f"{name}={value!r} is not allowed; give a positive integer")
        size = pixart.default_side
        asked = (size if height is None else height, size if width is None else width)
        height, width = binned_size(pixart, *asked)
    noise, shape = start_latents(pixart, latents, len(prompts), height, width)
    if sampler is None and grid is None:
        sampler, own = pixart.folder_sampler()
        options = {**own, **options}
        grid = "scheduler"
    unguided = None
    if isinstance(grid, str):
        check_choice("grid", grid, ["scheduler"])
        if nfe is not None:
            raise DiffkitError("grid='scheduler' takes steps (the scheduler's own step count), not nfe")
        grid, unguided = pixart.scheduler_grid(steps or pixart.default_steps), pixart.scheduler_denoiser()
    if grid is not None:
        steps = None
    elif steps is None and nfe is None:
        steps = pixart.default_steps
    scale = pixart.default_guidance_scale if guidance_scale is None else guidance_scale
    convention = "diffusers" if guidance_scale is None else convention
    if isinstance(grid, torch.Tensor) and pixart.prediction_type == "flow_prediction" and pixart.latents_are_flow_state:
        noise = flow_start(pixart.schedule, noise, grid, seed, pixart.device, pixart.dtype)
    f = pixart.vae_scale_factor

    def guide(plain):  # the prompts' guidance over the unguided denoiser ``plain`` (None: the folder's)
        return pixart.prompt_guidance(prompts, negative_prompt, scale, convention, max_sequence_length,
                                      size=(shape[2] * f, shape[3] * f), denoiser=plain, **(encode or {}))
    if controlnets is None:
        denoiser, cond = guide(unguided)
    else:  # SanaControlNetPipeline (.sana_controlnet), HunyuanDiTControlNetPipeline (.hunyuan_dit_controlnet)
        denoiser, cond = pixart.controlnet_guidance(controlnets, guide, shape, unguided, control_rows,
                                                    **(control_options or {}))
    denoiser = pixart_pag(pixart, denoiser, pag_scale, pag_layers, pag_adaptive_scale,
                          whole_timesteps=unguided is not None and unguided is not pixart.denoiser)
    z0 = sample(denoiser, noise, sampler, steps, nfe=nfe, grid=grid, seed=seed, cond=cond, progress=progress,
                device=pixart.device, dtype=pixart.dtype, **options)
    if asked is None or return_latents:
        return finish_images(pixart, z0, return_latents, output_range)
    from diffusers.image_processor import PixArtImageProcessor
    images = PixArtImageProcessor.resize_and_crop_tensor(pixart.decode(z0), asked[1], asked[0])  # before the clamp
    return (images / 2 + 0.5).clamp(0, 1) if output_range == "0,1" else images.clamp(-1, 1)


__all__ = ["PixArt", "PixArtNet", "load_pixart", "is_pixart_folder", "pixart_kind", "check_pixart_folder",
           "folder_sampler", "text_to_image", "binned_size", "PIXART_PIPELINES", "PIXART_GUIDANCE", "PIXART_STEPS"]
