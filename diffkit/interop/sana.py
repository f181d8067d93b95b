"""A Sana diffusers folder (``SanaPipeline``), sampled with any diffkit sampler.

Sana (Xie et al. 2025, "SANA: Efficient High-Resolution Image Synthesis with Linear Diffusion Transformers") is
PixArt's successor: a DiT with linear attention (``SanaTransformer2DModel``, Sec. 2.2) on the latents of a 32x
deep-compression autoencoder (``AutoencoderDC``, DC-AE, Sec. 2.1), conditioned on a decoder-only LLM's states
(Gemma-2, ``Gemma2Model``) under the prompt's attention mask, trained with flow matching (rectified flow,
x_s = (1 - s) x_0 + s eps, the velocity u = eps - x_0 predicted; Sec. 2.4). diffkit runs it through
:mod:`.pixart`'s code (:class:`Sana` is a :class:`~.pixart.PixArt`: the masked prompt guidance, the scheduler's
timesteps with the diffkit sampler of its step, resolution binning, ``diffkit sample``), as a flow-prediction
:class:`~diffkit.denoiser.Denoiser` on ``NoiseSchedule.flow(T, shift)`` as SD3's (:mod:`.sd3`). Every diffusers
0.42 ``SanaPipeline`` step is reproduced:

* prompts (``encode_prompt``, ``clean_caption=False``; Sec. 2.3 "Complex Human Instruction"): each text lower-cased
  and stripped, prefixed by the lines of ``complex_human_instruction`` joined by newlines (default
  :data:`COMPLEX_HUMAN_INSTRUCTION`, the pipeline's), tokenised with right padding to n + L - 2 tokens (n: the
  instruction's own tokens with BOS, L = ``max_sequence_length``, default 300), Gemma-2's last states under that
  mask, then the **selected tokens** [0] + the last L - 1 (BOS and the prompt's end: the instruction is dropped
  from the states, having conditioned the prompt's through causal attention). The negative prompt (default "") is
  encoded without the instruction, at L tokens, under its own mask. Without an instruction
  (``complex_human_instruction=None`` or []) the prompts are L tokens, as the pipeline's.
* the transformer is called at timestep s T x ``timestep_scale`` with both masks as ``encoder_attention_mask``;
  a ``DPMSolverMultistepScheduler`` (Sana's releases: ``use_flow_sigmas``, ``flow_shift`` 3) hands it int64
  timesteps, floor(s T), while its step uses the exact sigma: :meth:`Sana.scheduler_denoiser` does the same on the
  scheduler's timesteps (:class:`SanaNet` ``whole_timesteps``); any other grid calls it at s T.
* classifier-free guidance on the velocity, u_u + s (u_c - u_u), default s = 4.5 (as :mod:`.pixart`, s = 1 one
  unguided call).
* the scheduler (:meth:`Sana.scheduler_grid`): the folder's ``DPMSolverMultistepScheduler`` (``use_flow_sigmas``,
  ``final_sigmas_type="zero"``) or ``FlowMatchEulerDiscreteScheduler`` after ``set_timesteps(steps)`` (default 20),
  its sigmas placed on diffkit's grid at equal log-SNR (:func:`.flow_latents.flow_sigmas_grid`), and the sampler
  computing its step (:func:`.pixart.folder_sampler` with ``flow``): ``dpm-solver++-2m`` with its ``solver_type``
  and ``lower_order_final`` (DPM-Solver++ in log-SNR is the same step for the flow's alpha = 1 - s, sigma = s), or
  flow Euler ``ddim``. The pipeline passes no ``mu``, so a ``use_dynamic_shifting`` FlowMatchEuler folder, which
  fails there, is refused here in one line (a DPM-Solver's then keeps its ``flow_shift``, as there).
* decoding: x = D(z / scaling_factor) (DC-AE, no shift), images (x / 2 + 0.5).clamp(0, 1).

``use_resolution_binning`` (the pipeline's default): :func:`.pixart.text_to_image`'s ``resolution_binning=True``
with Sana's tables (``sample_size`` 16, 32, 64, 128: 512, 1024, 2048, 4096 px); off by default, as in
:mod:`.pixart`. Height and width are multiples of lcm(32, f x patch) (the pipeline's ``check_inputs``' 32).

A ``SanaSprintPipeline`` folder loads as a :class:`.sana_sprint.SanaSprint` (its sCM steps as diffkit's
``consistency`` sampler, the guidance embedding; ``SanaSprintImg2ImgPipeline``: its ``image_to_image``); LoRA files
(``load_sana(lora=)``) are fused as the pipelines' ``load_lora_weights`` + ``fuse_lora`` (:mod:`.sana_lora`);
``SanaPAGPipeline`` is :mod:`.pixart_pag` (``text_to_image(pag_scale=)``), ``SanaControlNetPipeline``
:mod:`.sana_controlnet` (``text_to_image(controlnets=)``).

Refused in one line before any weight is read (:func:`check_sana_folder`): another pipeline class
(``SanaSprintImg2ImgPipeline``, ``SanaPAGPipeline``, ControlNet folders: their pipelines run on a Sana / Sprint
folder instead), a missing component, a transformer /
VAE / text encoder / scheduler of another class, a transformer with ``guidance_embeds`` or with output channels
other than its input channels (Sprint's: :func:`.sana_sprint.check_sprint_parts`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from ..errors import DiffkitError, read_json_object
from . import model_dtype, require
from .flow_latents import flow_sigmas_grid, frozen_on, load_flow_parts
from .pixart import PixArt, check_classes, folder_sampler

SANA_PIPELINE = "SanaPipeline"
SANA_SPRINT_PIPELINE = "SanaSprintPipeline"  # :mod:`.sana_sprint`
SANA_MAX_SEQUENCE_LENGTH = 300  # the pipeline's default max_sequence_length
# schedulers whose int64 timesteps floor s T for the network (their steps use the exact sigma)
WHOLE_TIMESTEP_SCHEDULERS = ("DPMSolverMultistepScheduler", "UniPCMultistepScheduler")
REQUIRED = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")
SANA_CLASSES = {"transformer": ("SanaTransformer2DModel",), "vae": ("AutoencoderDC",),
                "text_encoder": ("Gemma2Model",),
                "scheduler": ("DPMSolverMultistepScheduler", "FlowMatchEulerDiscreteScheduler")}
# SanaPipeline.__call__'s default complex_human_instruction (diffusers 0.42.1), line by line
COMPLEX_HUMAN_INSTRUCTION = (
    "Given a user prompt, generate an 'Enhanced prompt' that provides detailed visual descriptions suitable for "
    "image generation. Evaluate the level of detail in the user prompt:",
    "- If the prompt is simple, focus on adding specifics about colors, shapes, sizes, textures, and spatial "
    "relationships to create vivid and concrete scenes.",
    "- If the prompt is already detailed, refine and enhance the existing details slightly without "
    "overcomplicating.",
    "Here are examples of how to transform or refine prompts:",
    "- User Prompt: A cat sleeping -> Enhanced: A small, fluffy white cat curled up in a round shape, sleeping "
    "peacefully on a warm sunny windowsill, surrounded by pots of blooming red flowers.",
    "- User Prompt: A busy city street -> Enhanced: A bustling city street scene at dusk, featuring glowing street "
    "lamps, a diverse crowd of people in colorful clothing, and a double-decker bus passing by towering glass "
    "skyscrapers.",
    "Please generate only the enhanced description for the prompt below and avoid including any additional "
    "commentary or evaluations:",
    "User Prompt: ",
)


def sana_kind(path) -> Optional[str]:
    """``model_index.json``'s ``_class_name`` where it names a Sana pipeline (any ``Sana...Pipeline``), else None."""
    from .sd_xl import pipeline_class
    name = pipeline_class(path)
    return name if name and name.startswith("Sana") and name.endswith("Pipeline") else None


def is_sana_folder(path) -> bool:
    """True for a Sana pipeline folder (so ``diffkit sample`` dispatches; another Sana class is refused there)."""
    return sana_kind(path) is not None


def check_sana_folder(directory) -> tuple:
    """(model_index dict, transformer config, scheduler config) of a ``SanaPipeline`` folder, checked from its JSON
    alone (module docstring); a one-line DiffkitError for what diffkit does not drive."""
    from .schedulers import FLOW_SCHEDULER
    from .sd3 import _entry
    from .sd_xl import _index
    directory = Path(directory)
    index = _index(directory)
    name = None if index is None else index.get("_class_name")
    if name not in (SANA_PIPELINE, SANA_SPRINT_PIPELINE):
        raise DiffkitError(f"{directory} is a {name!r} folder, which diffkit does not drive; allowed: "
                           f"{SANA_PIPELINE}, {SANA_SPRINT_PIPELINE} (the img2img, PAG and ControlNet variants are "
                           f"not taken)")
    sprint = name == SANA_SPRINT_PIPELINE  # its scheduler and guidance embedding: .sana_sprint
    check_classes(directory, index, REQUIRED, "Sana",
                  {**SANA_CLASSES, **({"scheduler": ("SCMScheduler",)} if sprint else {})})
    config = read_json_object(directory / "transformer" / "config.json", "transformer config")
    c_in = int(config.get("in_channels", 32))
    c_out = config.get("out_channels", 32)
    if (c_in if c_out is None else int(c_out)) != c_in or bool(config.get("guidance_embeds", False)) != sprint:
        raise DiffkitError(f"{directory}'s transformer has out_channels={c_out}, guidance_embeds="
                           f"{config.get('guidance_embeds', False)} for in_channels={c_in}; allowed: out_channels = "
                           f"in_channels, guidance_embeds {str(sprint).lower()} ({name}'s "
                           f"{'guidance-distilled' if sprint else 'velocity'} transformer)")
    if sprint:
        from .sana_sprint import check_sprint_scheduler
        return index, config, check_sprint_scheduler(directory)
    sched = read_json_object(directory / "scheduler" / "scheduler_config.json", "scheduler config")
    if sched.get("_class_name") == FLOW_SCHEDULER and sched.get("use_dynamic_shifting", False):
        raise DiffkitError(f"{directory}'s {FLOW_SCHEDULER} has use_dynamic_shifting=True, for which SanaPipeline "
                           f"passes no mu (its set_timesteps fails); allowed: a fixed shift")
    if sched.get("prediction_type", "flow_prediction") != "flow_prediction" or (
            _entry(index, "scheduler") == "DPMSolverMultistepScheduler" and not sched.get("use_flow_sigmas", False)):
        raise DiffkitError(f"{directory}'s scheduler has prediction_type={sched.get('prediction_type')!r}, "
                           f"use_flow_sigmas={sched.get('use_flow_sigmas', False)!r}; allowed: 'flow_prediction' "
                           f"with use_flow_sigmas=True (Sana's flow matching)")
    return index, config, sched


def flow_shift_of(sched: dict) -> float:
    """The scheduler's fixed flow shift: a DPM-Solver's ``flow_shift``, a FlowMatchEuler's ``shift`` (SD3 eq. 23)."""
    from .schedulers import FLOW_SCHEDULER, flow_shift_from_diffusers
    if sched.get("_class_name") == FLOW_SCHEDULER:
        return flow_shift_from_diffusers(sched)
    shift = sched.get("flow_shift", 1.0)
    if isinstance(shift, bool) or not isinstance(shift, (int, float)) or not 0 < shift < math.inf:
        raise DiffkitError(f"the scheduler's flow_shift={shift!r} is not allowed; expected a positive finite number")
    return float(shift)


class SanaNet(torch.nn.Module):
    """``net(x, t, context, mask)`` over a ``SanaTransformer2DModel``: ``context`` -> ``encoder_hidden_states``,
    ``mask`` -> ``encoder_attention_mask``, ``t`` (the flow time s T) x ``timestep_scale`` -> ``timestep``, floored
    first with ``whole_timesteps`` (a DPM-Solver scheduler's int64 timesteps); the velocity in x's dtype."""

    def __init__(self, transformer, whole_timesteps: bool = False):
        super().__init__()
        self.model = transformer
        self.whole_timesteps = whole_timesteps

    def timesteps(self, x: torch.Tensor, t) -> torch.Tensor:
        """The scheduler's timesteps of a call: s T per row (float32), floored with ``whole_timesteps``."""
        t = torch.as_tensor(t, device=x.device, dtype=torch.float32).reshape(-1).expand(x.shape[0])
        return t.floor() if self.whole_timesteps else t

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor = None, mask: torch.Tensor = None,
                controls=None):
        """``controls``: a ControlNet's block residuals (``controlnet_block_samples``, :mod:`.sana_controlnet`)."""
        if context is None or mask is None:
            raise DiffkitError("a Sana transformer needs cond {'context', 'mask'} (Sana.encode_prompts)")
        dtype = model_dtype(self.model)
        t = self.timesteps(x, t) * float(self.model.config.get("timestep_scale", 1.0))  # SANA-Video's: none
        extra = {} if controls is None else {"controlnet_block_samples": tuple(c.to(dtype) for c in controls)}
        out = self.model(x.to(dtype), encoder_hidden_states=context.to(dtype), encoder_attention_mask=mask,
                         timestep=t, return_dict=False, **extra)[0]
        return out.to(x.dtype)


@dataclass
class Sana(PixArt):
    """The loaded components of a ``SanaPipeline`` folder (:func:`load_sana`): a :class:`~.pixart.PixArt` whose
    prompts, network, VAE and scheduler are Sana's."""

    _whole: object = field(default=None, repr=False)

    size_multiple = 32  # SanaPipeline.check_inputs

    @property
    def max_sequence_length(self) -> int:
        return SANA_MAX_SEQUENCE_LENGTH

    @property
    def max_length_limit(self) -> int:
        """Gemma-2's positions (the instruction's tokens come on top)."""
        return int(self.text_encoder.config.max_position_embeddings)

    @property
    def learned_variance(self) -> bool:
        return False

    @property
    def vae_scale_factor(self) -> int:
        """DC-AE's factor 2^(levels - 1) (32 for Sana's), as the pipeline's."""
        return 2 ** (len(self.vae.config.encoder_block_out_channels) - 1)

    def encode_prompts(self, prompts: Sequence[str], max_sequence_length: Optional[int] = None,
                       complex_human_instruction: Optional[Sequence[str]] = COMPLEX_HUMAN_INSTRUCTION) -> tuple:
        """(Gemma-2 states (B, L, d), attention mask (B, L)) of ``prompts`` as ``SanaPipeline.encode_prompt``
        (module docstring): lower-cased, stripped, after the instruction, n + L - 2 tokens, then the selected [0] +
        last L - 1."""
        from .stable_diffusion import prompt_list
        length = self.max_sequence_length if max_sequence_length is None else max_sequence_length
        self.check_length(length)
        texts = [text.lower().strip() for text in prompt_list(prompts)]  # _text_preprocessing(clean_caption=False)
        self.tokenizer.padding_side = "right"  # as the pipeline sets it
        total = length
        if complex_human_instruction:
            instruction = "\n".join(complex_human_instruction)
            texts = [instruction + text for text in texts]
            total = len(self.tokenizer.encode(instruction)) + length - 2
        tokens = self.tokenizer(texts, padding="max_length", max_length=total, truncation=True,
                                add_special_tokens=True, return_tensors="pt")
        mask = tokens.attention_mask.to(self.device)
        with torch.no_grad():
            states = self.text_encoder(tokens.input_ids.to(self.device), attention_mask=mask)[0]
        select = [0] + list(range(-length + 1, 0))  # Sec. 3.1 of the paper, as the pipeline's select_index
        return states[:, select].to(self.text_encoder.dtype), mask[:, select]

    def encode_negative_prompts(self, prompts: Sequence[str], length: int) -> tuple:
        """The negative prompts at ``length`` tokens without the instruction (the pipeline's null half)."""
        return self.encode_prompts(prompts, length, None)

    def micro_conditions(self, batch: int, height: int, width: int) -> dict:
        return {}  # Sana's transformer takes none

    def folder_sampler(self) -> tuple:
        return folder_sampler(self.scheduler_config, flow=True)

    def aspect_ratio_bins(self) -> dict:
        """SanaPipeline's tables: ``sample_size`` 16, 32, 64, 128 -> its 512, 1024, 2048, 4096 px bins."""
        require("diffusers")
        from diffusers.pipelines.sana import pipeline_sana as sana
        return {16: sana.ASPECT_RATIO_512_BIN, 32: sana.ASPECT_RATIO_1024_BIN, 64: sana.ASPECT_RATIO_2048_BIN,
                128: sana.ASPECT_RATIO_4096_BIN}

    def encode(self, images: torch.Tensor, generator=None, sample: bool = False) -> torch.Tensor:
        """z = E(x) x scaling_factor for images in [-1, 1], the inverse of :meth:`decode`: DC-AE's encoder is
        deterministic (``vae.encode(x).latent``, as ``SanaSprintImg2ImgPipeline.prepare_latents``), so no posterior
        is drawn (``generator`` and ``sample`` are unused: a generator's first draw is then the forward noise)."""
        with torch.no_grad():
            z = self.vae.encode(images.to(device=self.device, dtype=self.vae.dtype), return_dict=False)[0]
        return (z * self.scaling_factor).float()

    def _new_denoiser(self, whole: bool):
        from ..denoiser import Denoiser
        denoiser = Denoiser(SanaNet(self.transformer, whole), self.schedule, "flow_prediction")
        denoiser.model = self.transformer
        return denoiser

    @property
    def denoiser(self):
        """The unguided flow-prediction :class:`~diffkit.denoiser.Denoiser` (cond: ``context``, ``mask``) on
        ``NoiseSchedule.flow(T, shift)``, the network called at s T."""
        if self._denoiser is None:
            self._denoiser = self._new_denoiser(False)
        return self._denoiser

    def scheduler_denoiser(self):
        """The denoiser on the scheduler's timesteps: a DPM-Solver (or UniPC, :mod:`.hidream`) folder's calls the
        network at floor(s T) (their int64 timesteps), a FlowMatchEuler folder's at s T (:attr:`denoiser`)."""
        if self.scheduler_config.get("_class_name") not in WHOLE_TIMESTEP_SCHEDULERS:
            return self.denoiser
        if self._whole is None:
            self._whole = self._new_denoiser(True)
        return self._whole

    def scheduler_grid(self, steps: int) -> torch.Tensor:
        """diffkit's grid of the folder's scheduler after ``set_timesteps(steps)``: its sigmas (the final 0
        included) at the VP times of equal log-SNR (:func:`.flow_latents.flow_sigmas_grid`)."""
        diffusers = require("diffusers")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise DiffkitError(f"steps={steps!r} is not allowed; give a positive integer")
        scheduler = getattr(diffusers, self.scheduler_config["_class_name"]).from_config(self.scheduler_config)
        scheduler.set_timesteps(steps, **self.timestep_options())
        return flow_sigmas_grid(self.schedule, scheduler.sigmas, steps)

    def timestep_options(self) -> dict:
        """More keyword arguments of the pipeline's ``set_timesteps`` (Sana's: none; HiDream's FlowMatchEuler mu)."""
        return {}


def load_sana(directory: Union[str, Path], device="cpu", dtype: torch.dtype = torch.float32,
              progress: bool = True, lora=None) -> Sana:
    """Load a ``SanaPipeline`` / ``SanaSprintPipeline`` diffusers folder (never downloads, never unpickles; Sprint:
    a :class:`.sana_sprint.SanaSprint`); what diffkit does not drive is refused in one line before any weight is
    read (:func:`check_sana_folder`). ``lora``: LoRA files (paths or (path, scale) pairs; ``transformer.`` keys,
    :mod:`.sana_lora`), read and checked first, fused as ``load_lora_weights`` + ``fuse_lora(lora_scale=scale)``."""
    from ..schedule import NoiseSchedule
    from .sana_lora import read_sana_loras
    from .sd_lora import merge_sd_loras
    diffusers = require("diffusers")
    directory = Path(directory)
    index, _, sched = check_sana_folder(directory)
    loras = read_sana_loras(lora) if lora else []
    from .schedulers import train_timesteps
    T = train_timesteps(sched)
    sprint = index["_class_name"] == SANA_SPRINT_PIPELINE  # TrigFlow's path is the unshifted flow's (.sana_sprint)
    schedule = NoiseSchedule.flow(T, 1.0 if sprint else flow_shift_of(sched))
    parts = load_flow_parts(directory, index, diffusers.SanaTransformer2DModel, {"": "Gemma2Model"}, dtype,
                            progress, vae_cls=diffusers.AutoencoderDC)
    device = frozen_on(parts, device)
    cls = Sana
    if sprint:
        from .sana_sprint import SanaSprint as cls
    sana = cls(pipeline=index["_class_name"], **parts, schedule=schedule, prediction_type="flow_prediction",
               scheduler_config=sched, device=device, dtype=dtype)
    merge_sd_loras(sana, loras)
    return sana


def text_to_image(sana: Sana, prompts: Union[str, Sequence[str]], *,
                  complex_human_instruction: Optional[Sequence[str]] = COMPLEX_HUMAN_INSTRUCTION, **options):
    """Images of a Sana folder for ``prompts``: :func:`.pixart.text_to_image` (its sampler / grid, steps (default
    20), guidance (default s = 4.5), negative prompt, latents, size, ``max_sequence_length`` (default 300),
    ``resolution_binning``, output options), the prompts encoded after ``complex_human_instruction`` (default the
    pipeline's; None or []: none)."""
    from .pixart import text_to_image as pixart_text_to_image
    return pixart_text_to_image(sana, prompts, encode={"complex_human_instruction": complex_human_instruction},
                                **options)


__all__ = ["Sana", "SanaNet", "load_sana", "is_sana_folder", "sana_kind", "check_sana_folder", "text_to_image",
           "COMPLEX_HUMAN_INSTRUCTION", "SANA_MAX_SEQUENCE_LENGTH"]
