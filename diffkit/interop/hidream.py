"""A HiDream-I1 diffusers folder (``HiDreamImagePipeline``, diffusers 0.42.1), sampled with any diffkit sampler.

HiDream-I1 (HiDream.ai, Cai et al. 2025, "HiDream-I1: A High-Efficient Image Generative Foundation Model with Sparse
Diffusion Transformer") is a rectified-flow transformer (``HiDreamImageTransformer2DModel``: dual-stream then
single-stream blocks whose feed-forward layers are sparse mixtures of experts, a shared expert plus the top 2 of 4
routed ones) on FLUX.1's 16-channel ``AutoencoderKL``, conditioned on four text encoders. diffkit runs it through
:mod:`.sana`'s / :mod:`.pixart`'s code (:class:`HiDream` is a :class:`~.sana.Sana`: the scheduler's grid and the
sampler of its step, ``diffkit sample``). What is HiDream's own, as ``HiDreamImagePipeline.__call__`` /
``encode_prompt``:

* prompts, each of L = ``max_sequence_length`` tokens (default 128; padded, truncated; ``prompt_2`` / ``_3`` /
  ``_4`` default to the prompt): the two CLIP encoders' **projected pooled** embeddings (``CLIPTextModelWithProjection``
  ``text_embeds``, min(L, 218) tokens, no mask) concatenated as the pooled condition; T5's last states under the
  mask (min(L, its ``model_max_length``) tokens, not multiplied by it); Llama's (``LlamaForCausalLM``, padded with
  its EOS as the pipeline sets ``pad_token``) hidden states of **every layer** (the embeddings' dropped) under the
  mask, stacked, from which the transformer takes its ``llama_layers``. The negative prompt (default "") the same.
* the transformer is called at the scheduler's timestep s T itself (``Timesteps(scale=1)``; a ``UniPCMultistep
  Scheduler``'s int64 floor(s T), as :mod:`.sana`'s DPM-Solver) and returns x_0 - eps: the velocity u = eps - x_0
  is its negation (the pipeline's ``noise_pred = -noise_pred``).
* guidance: CFG u_u + s (u_c - u_u) (Ho & Salimans 2022) for s > 1, default 5.0 (the ``__call__`` default;
  HiDream-I1-Dev / -Fast are guidance-distilled, run at s = 0); s <= 1: one unguided call (a negative prompt
  refused, :func:`.auraflow.guided`).
* the grid: the folder's scheduler after the pipeline's ``set_timesteps`` (default 50 steps), its sigmas placed at
  equal log-SNR (:func:`.flow_latents.flow_sigmas_grid`), and the sampler of its step (:func:`folder_sampler`):
  ``FlowMatchEulerDiscreteScheduler`` (I1-Dev's and -Fast's; ``mu`` = ``calculate_shift`` of the transformer's
  ``max_seq``, which matters only with ``use_dynamic_shifting``) -> flow Euler ``ddim``; ``UniPCMultistepScheduler``
  with ``use_flow_sigmas`` (I1-Full's "FlowUniPC", ``flow_shift`` 3) -> diffkit's ``unipc`` with its
  ``solver_order``, ``solver_type``, ``lower_order_final`` and ``disable_corrector`` (UniPC in log-SNR is the same
  step for the flow's alpha = 1 - s, sigma = s, as DPM-Solver's, :mod:`.sana`).
* size: the pipeline draws **every** height x width at the area of (128 f)^2 (1024^2 for f = 8), keeping the
  aspect ratio, sides floored to multiples of 2 f; diffkit draws the same and refuses a size the pipeline would
  change in one line naming the size it would draw (default 128 f x 128 f). Latents (B, C, H / f, W / f), z from
  ``seed + i``; decoding x = D(z / scaling_factor + shift_factor).

Refused in one line before any weight is read (:func:`check_hidream_folder`): another pipeline class, a missing
component, a transformer / VAE / text encoder / scheduler of another class, a transformer whose channels are not the
VAE's latent channels, a UniPC scheduler diffkit's ``unipc`` does not compute (not ``flow_prediction`` with
``use_flow_sigmas``, ``thresholding``, noise prediction, ``solver_p``, a ``sigma_min`` final sigma, or
``use_dynamic_shifting``, for which the pipeline passes no mu), a stochastic FlowMatchEuler.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from ..errors import DiffkitError, read_json_object
from . import model_dtype, require
from .flow_latents import FlowLatentVAE, load_flow_parts
from .pixart import checked_folder
from .sana import Sana

HIDREAM_PIPELINE = "HiDreamImagePipeline"
UNIPC_SCHEDULER = "UniPCMultistepScheduler"
CLIP_CLASS = ("CLIPTextModelWithProjection",)
HIDREAM_CLASSES = {"transformer": ("HiDreamImageTransformer2DModel",), "vae": ("AutoencoderKL",),
                   "text_encoder": CLIP_CLASS, "text_encoder_2": CLIP_CLASS, "text_encoder_3": ("T5EncoderModel",),
                   "text_encoder_4": ("LlamaForCausalLM",),
                   "scheduler": ("FlowMatchEulerDiscreteScheduler", UNIPC_SCHEDULER)}
ENCODERS = {"": "CLIPTextModelWithProjection", "_2": "CLIPTextModelWithProjection", "_3": "T5EncoderModel",
            "_4": "LlamaForCausalLM"}
REQUIRED = ("transformer", "vae", "scheduler") + tuple(f"{part}{suffix}" for suffix in ENCODERS
                                                      for part in ("text_encoder", "tokenizer"))
HIDREAM_GUIDANCE = 5.0  # HiDreamImagePipeline.__call__'s default guidance_scale
HIDREAM_STEPS = 50  # its default num_inference_steps
HIDREAM_MAX_SEQUENCE_LENGTH = 128  # its default max_sequence_length
HIDREAM_SAMPLE_SIZE = 128  # its default_sample_size: images of the area (128 f)^2
CLIP_LENGTH = 218  # _get_clip_prompt_embeds: min(max_sequence_length, 218) CLIP tokens
# a UniPC config's keys and the values diffkit's unipc computes on the scheduler's own sigmas
_UNIPC_FIXED = {"prediction_type": "flow_prediction", "use_flow_sigmas": True, "thresholding": False,
                "predict_x0": True, "solver_p": None, "final_sigmas_type": "zero", "use_dynamic_shifting": False}


def is_hidream_folder(path) -> bool:
    """True for a folder whose ``model_index.json`` names ``HiDreamImagePipeline`` (so ``diffkit sample``
    dispatches)."""
    from .sd_xl import pipeline_class
    return pipeline_class(path) == HIDREAM_PIPELINE


def drawn_size(f: int, height: Optional[int], width: Optional[int]) -> tuple:
    """(height, width) ``HiDreamImagePipeline.__call__`` draws for ``height`` x ``width`` (None: 128 f) with a VAE
    factor ``f``: the area of (128 f)^2 at that aspect ratio, sides floored to multiples of 2 f (its own float
    arithmetic). A size given that it would change: one line naming the size it draws (so the images are always
    the size asked for)."""
    default = HIDREAM_SAMPLE_SIZE * f
    asked = (height, width)
    height, width = default if height is None else height, default if width is None else width
    for value in (height, width):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise DiffkitError(f"height x width {height}x{width} is not allowed; give positive integers")
    scale = math.sqrt(default ** 2 / (width * height))
    drawn = int(height * scale // (2 * f) * (2 * f)), int(width * scale // (2 * f) * (2 * f))
    if asked != (None, None) and drawn != (height, width):
        raise DiffkitError(f"height x width {height}x{width} is not allowed: HiDreamImagePipeline draws every size at "
                           f"the area of {default}x{default} (sides multiples of {2 * f}) and would draw "
                           f"{drawn[0]}x{drawn[1]}; give that size")
    return drawn


def folder_sampler(config: dict) -> tuple:
    """(diffkit sampler, its options) computing the step of a HiDream folder's scheduler (``config``) on its own
    sigmas: FlowMatchEuler -> ``ddim`` (:func:`.pixart.folder_sampler`); UniPC with flow sigmas -> ``unipc`` with
    its order, variant, ``lower_order_final`` and ``disable_corrector``; another UniPC option: one line."""
    from .pixart import folder_sampler as flow_folder_sampler
    if config.get("_class_name") != UNIPC_SCHEDULER:
        return flow_folder_sampler(config, flow=True)
    for key, want in _UNIPC_FIXED.items():
        if config.get(key, False if key == "use_flow_sigmas" else want) != want:
            raise DiffkitError(f"the folder's {UNIPC_SCHEDULER} has {key}={config.get(key)!r}, which diffkit's "
                               f"unipc on its flow sigmas does not compute (allowed: {want!r})")
    order, variant = config.get("solver_order", 2), config.get("solver_type", "bh2")
    if order not in (1, 2, 3) or variant != "bh2":  # bh1's B(h) = h is -inf into the final sigma 0: NaN latents there
        raise DiffkitError(f"the folder's {UNIPC_SCHEDULER} has solver_order={order!r}, solver_type={variant!r}; "
                           f"allowed: 1-3 with 'bh2' (with 'bh1' its last step into sigma 0 gives NaN)")
    return "unipc", {"solver_order": order, "solver_type": variant,
                     "lower_order_final": bool(config.get("lower_order_final", True)),
                     "disable_corrector": list(config.get("disable_corrector") or [])}


def check_hidream_folder(directory) -> tuple:
    """(model_index dict, transformer config, scheduler config) of a ``HiDreamImagePipeline`` folder, checked from
    its JSON alone (module docstring); a one-line DiffkitError for what diffkit does not drive."""
    directory = Path(directory)
    index, config, vae = checked_folder(directory, HIDREAM_PIPELINE, REQUIRED, "HiDream", HIDREAM_CLASSES)
    latents = int(vae.get("latent_channels", 4))
    channels = (config.get("in_channels", 64), config.get("out_channels"))
    if channels[0] != latents or channels[1] not in (None, latents):
        raise DiffkitError(f"{directory}'s transformer has in_channels, out_channels = {channels[0]!r}, "
                           f"{channels[1]!r}; allowed: the VAE's latent channels {latents} (out_channels or null)")
    sched = read_json_object(directory / "scheduler" / "scheduler_config.json", "scheduler config")
    folder_sampler(sched)  # one line for what diffkit's sampler does not compute
    return index, config, sched


class HiDreamNet(torch.nn.Module):
    """``net(x, t, context, llama, pooled)`` over a ``HiDreamImageTransformer2DModel``: ``context`` (T5's states)
    -> ``encoder_hidden_states_t5``, ``llama`` (B, layers, L, d) -> ``encoder_hidden_states_llama3`` (layers, B, L,
    d), ``pooled`` -> ``pooled_embeds``, ``t`` (the flow time s T; floored with ``whole_timesteps``) ->
    ``timesteps``; the velocity -output in x's dtype."""

    def __init__(self, transformer, whole_timesteps: bool = False):
        super().__init__()
        self.model = transformer
        self.whole_timesteps = whole_timesteps

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor = None, llama: torch.Tensor = None,
                pooled: torch.Tensor = None):
        if context is None or llama is None or pooled is None:
            raise DiffkitError("a HiDream transformer needs cond {'context', 'llama', 'pooled'} "
                               "(HiDream.encode_prompts)")
        dtype = model_dtype(self.model)
        t = torch.as_tensor(t, device=x.device, dtype=torch.float32).reshape(-1).expand(x.shape[0])
        if self.whole_timesteps:
            t = t.floor()
        out = self.model(hidden_states=x.to(dtype), timesteps=t, encoder_hidden_states_t5=context.to(dtype),
                         encoder_hidden_states_llama3=llama.transpose(0, 1).to(dtype), pooled_embeds=pooled.to(dtype),
                         return_dict=False)[0]
        return -out.to(x.dtype)  # the velocity eps - x_0 (the pipeline's noise_pred = -noise_pred)


@dataclass
class HiDream(Sana):
    """The loaded components of a ``HiDreamImagePipeline`` folder (:func:`load_hidream`): a :class:`~.sana.Sana`
    (the scheduler's grid and step) whose prompts (``text_encoder`` / ``tokenizer``: the first CLIP), network,
    guidance, size and VAE are HiDream's."""

    text_encoder_2: object = None
    tokenizer_2: object = None
    text_encoder_3: object = None
    tokenizer_3: object = None
    text_encoder_4: object = None
    tokenizer_4: object = None

    default_guidance_scale = HIDREAM_GUIDANCE
    default_steps = HIDREAM_STEPS
    vae_scale_factor = FlowLatentVAE.vae_scale_factor  # an AutoencoderKL's 2^(levels - 1), not DC-AE's
    shift_factor = FlowLatentVAE.shift_factor  # the pipeline decodes z / scaling_factor + shift_factor

    @property
    def max_sequence_length(self) -> int:
        return HIDREAM_MAX_SEQUENCE_LENGTH

    @property
    def max_length_limit(self) -> int:
        """The CLIP encoders' positions where they take fewer than the pipeline's 218 CLIP tokens; else 512."""
        positions = min(int(e.config.max_position_embeddings) for e in (self.text_encoder, self.text_encoder_2))
        return positions if positions < CLIP_LENGTH else 512

    def latent_shape(self, batch: int, height: Optional[int] = None, width: Optional[int] = None) -> tuple:
        """(batch, in_channels, H / f, W / f) at the pipeline's size (:func:`drawn_size`); a size it would change,
        or latents that are not whole patches: one line naming what it draws."""
        f, patch = self.vae_scale_factor, int(self.transformer.config.patch_size)
        drawn = drawn_size(f, height, width)
        if any(side // f % patch for side in drawn):
            raise DiffkitError(f"height x width {drawn[0]}x{drawn[1]} is not allowed; give sides whose latents are "
                               f"whole patches (multiples of {f * patch})")
        return (batch, int(self.transformer.config.in_channels), drawn[0] // f, drawn[1] // f)

    def _tokens(self, tokenizer, texts, length: int):
        return tokenizer(texts, padding="max_length", max_length=length, truncation=True, add_special_tokens=True,
                         return_tensors="pt")

    def encode_prompts(self, prompts: Sequence[str], max_sequence_length: Optional[int] = None, prompts_2=None,
                       prompts_3=None, prompts_4=None) -> dict:
        """{'context': T5 states (B, L, d), 'llama': Llama's hidden states of every layer (B, layers, L, d),
        'pooled': the two CLIP projections (B, p1 + p2)} of ``prompts`` as ``HiDreamImagePipeline.encode_prompt``
        (module docstring); ``prompts_2`` / ``_3`` / ``_4`` (default ``prompts``): the second CLIP's, T5's and
        Llama's texts."""
        from .stable_diffusion import prompt_list
        length = self.max_sequence_length if max_sequence_length is None else max_sequence_length
        self.check_length(length)
        texts = prompt_list(prompts)
        rows = [texts] + [texts if more is None else prompt_list(more) for more in (prompts_2, prompts_3, prompts_4)]
        for k, more in enumerate(rows[1:], 2):
            if len(more) not in (1, len(texts)):
                raise DiffkitError(f"prompt_{k} has {len(more)} entries for {len(texts)} prompts; give one, or one "
                                   f"per prompt")
        rows = [more * len(texts) if len(more) == 1 else more for more in rows]
        with torch.no_grad():
            pooled = torch.cat([encoder(self._tokens(tokenizer, row, min(length, CLIP_LENGTH)).input_ids.to(
                self.device), output_hidden_states=True)[0] for encoder, tokenizer, row in (
                (self.text_encoder, self.tokenizer, rows[0]), (self.text_encoder_2, self.tokenizer_2, rows[1]))], -1)
            t5 = self._tokens(self.tokenizer_3, rows[2], min(length, self.tokenizer_3.model_max_length))
            context = self.text_encoder_3(t5.input_ids.to(self.device), attention_mask=t5.attention_mask.to(
                self.device))[0]
            llama = self._tokens(self.tokenizer_4, rows[3], min(length, self.tokenizer_4.model_max_length))
            states = self.text_encoder_4(llama.input_ids.to(self.device), attention_mask=llama.attention_mask.to(
                self.device), output_hidden_states=True).hidden_states[1:]
        return {"context": context, "llama": torch.stack(states, 1), "pooled": pooled}

    def folder_sampler(self) -> tuple:
        return folder_sampler(self.scheduler_config)

    def mu(self) -> float:
        """The pipeline's mu: its ``calculate_shift`` (FLUX's, with its defaults 256, 4096, 0.5, 1.15) of the
        transformer's ``max_seq``, the same at every image size."""
        from .flux import calculate_shift
        return calculate_shift(int(self.transformer.max_seq), {})

    def timestep_options(self) -> dict:
        """``mu`` for a FlowMatchEuler scheduler (as ``retrieve_timesteps``); UniPC's ``set_timesteps`` takes none."""
        return {} if self.scheduler_config.get("_class_name") == UNIPC_SCHEDULER else {"mu": self.mu()}

    def aspect_ratio_bins(self) -> dict:
        raise DiffkitError("resolution_binning is not allowed for a HiDream folder (HiDreamImagePipeline has none; "
                           "it draws every size at one area)")

    def _new_denoiser(self, whole: bool):
        from ..denoiser import Denoiser
        denoiser = Denoiser(HiDreamNet(self.transformer, whole), self.schedule, "flow_prediction")
        denoiser.model = self.transformer
        return denoiser

    def prompt_guidance(self, prompts, negative_prompt=None, guidance_scale: float = HIDREAM_GUIDANCE,
                        convention: str = "diffusers", max_sequence_length: Optional[int] = None,
                        size: Optional[tuple] = None, denoiser=None, **encode) -> tuple:
        """(denoiser, cond): :meth:`encode_prompts` of the prompts, guided (diffusers' s > 1) against
        ``negative_prompt`` (None: ""; one, or one per prompt) encoded the same at the same length; s <= 1: the
        unguided ``denoiser`` (default :attr:`denoiser`) alone."""
        from ..guidance import ClassifierFreeGuidance
        from .auraflow import guided
        from .stable_diffusion import negative_prompts
        cond = self.encode_prompts(prompts, max_sequence_length, **encode)
        if not guided(guidance_scale, convention, negative_prompt):
            return denoiser or self.denoiser, cond
        negatives = negative_prompts(negative_prompt, cond["context"].shape[0])
        null = self.encode_prompts(negatives[:1] if len(set(negatives)) == 1 else negatives, max_sequence_length)
        return ClassifierFreeGuidance(denoiser or self.denoiser, guidance_scale, convention,
                                      null_context=null.pop("context"), null_cond=null), cond


def load_hidream(directory: Union[str, Path], device="cpu", dtype: torch.dtype = torch.float32,
                 progress: bool = True, lora=None) -> HiDream:
    """Load a ``HiDreamImagePipeline`` diffusers folder (never downloads, never unpickles); what diffkit does not
    drive is refused in one line before any weight is read (:func:`check_hidream_folder`). ``lora``: LoRA files
    (paths or (path, scale) pairs; ``transformer.`` or ``diffusion_model.`` keys, :mod:`.hidream_lora`), read and
    checked first, fused as ``load_lora_weights`` + ``fuse_lora(lora_scale=scale)``."""
    from ..schedule import NoiseSchedule
    from .flux import scheduler_shift
    from .hidream_lora import read_hidream_loras
    from .sana import flow_shift_of
    from .sd_lora import merge_sd_loras
    diffusers = require("diffusers")
    directory = Path(directory)
    index, _, sched = check_hidream_folder(directory)
    loras = read_hidream_loras(lora) if lora else []
    from .schedulers import train_timesteps
    T = train_timesteps(sched)
    parts = load_flow_parts(directory, index, diffusers.HiDreamImageTransformer2DModel, ENCODERS, dtype, progress)
    device = torch.device(device)
    for name in ("transformer", "vae") + tuple("text_encoder" + suffix for suffix in ENCODERS):
        parts[name].to(device).eval().requires_grad_(False)
    parts["tokenizer_4"].pad_token = parts["tokenizer_4"].eos_token  # as HiDreamImagePipeline.__init__
    model = HiDream(pipeline=HIDREAM_PIPELINE, **parts, schedule=None, prediction_type="flow_prediction",
                    scheduler_config=sched, device=device, dtype=dtype)
    model.schedule = NoiseSchedule.flow(T, flow_shift_of(sched) if sched.get("_class_name") == UNIPC_SCHEDULER
                                        else scheduler_shift(sched, model.mu, 0, 0))
    merge_sd_loras(model, loras)
    return model


def text_to_image(hidream: HiDream, prompts: Union[str, Sequence[str]], **options) -> torch.Tensor:
    """Images of a HiDream folder for ``prompts``: :func:`.pixart.text_to_image` (sampler / grid, default the
    scheduler's loop; steps (default 50); guidance (default s = 5); negative prompt; latents; height / width (default
    128 f, module docstring); ``max_sequence_length`` (default 128); output options; ``encode``: ``prompts_2`` /
    ``_3`` / ``_4``). ``resolution_binning``: refused."""
    from .pixart import text_to_image as pixart_text_to_image
    if options.get("resolution_binning"):
        hidream.aspect_ratio_bins()
    return pixart_text_to_image(hidream, prompts, **options)


__all__ = ["HiDream", "HiDreamNet", "load_hidream", "is_hidream_folder", "check_hidream_folder", "folder_sampler",
           "drawn_size", "text_to_image", "HIDREAM_PIPELINE", "HIDREAM_GUIDANCE", "HIDREAM_STEPS",
           "HIDREAM_MAX_SEQUENCE_LENGTH"]
