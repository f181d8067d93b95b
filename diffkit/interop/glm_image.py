"""A GLM-Image diffusers folder (``GlmImagePipeline``, diffusers 0.42.1): its diffusion stage sampled with any
diffkit sampler.

GLM-Image (Z.ai 2026) generates in two stages. An autoregressive vision-language model
(``GlmImageForConditionalGeneration``, transformers) writes the prompt's image as a grid of **prior tokens** (its
VQ codebook ids at 1/32 of the image size); a rectified-flow DiT (``GlmImageTransformer2DModel``, CogView4's design:
text and image tokens in one sequence, adaLN from the timestep and SD-XL-style size conditions) then denoises
``AutoencoderKL`` latents conditioned on those tokens (each upsampled 2 x 2 nearest to one per DiT patch, f = 8, p = 2)
and on the ByT5 (``T5EncoderModel``) states of the prompt's quoted **glyph** texts. diffkit's job is the second
stage: the velocity network as a flow-prediction :class:`~diffkit.denoiser.Denoiser` (Esser et al. 2024, Sec. 2,
x_s = (1 - s) x_0 + s eps) under any diffkit sampler. The prior tokens are given (``prior_token_ids``) or drawn by
the folder's own AR model through diffusers' ``GlmImagePipeline.generate_prior_tokens`` (transformers' ``generate``,
sampling, torch's global generator seeded as the pipeline seeds it): :meth:`GlmImage.prior_tokens`.

What is GLM-Image's own, as ``GlmImagePipeline.__call__`` / ``_get_glyph_embeds``:

* glyphs: the texts inside '...', "...", \u201c...\u201d and \u300c...\u300d of each prompt (none: one ""), each
  tokenised by ByT5 (at most ``max_sequence_length``, default 2048), a pad token put in front of every text when the
  prompt has an even number of them, encoded together under their mask, and the kept (unpadded) states of all texts
  concatenated into one row; rows of a batch left-padded with zeros. The transformer gets no text mask.
* the transformer call: ``prior_token_id`` (B, (h / p)(w / p)), ``prior_token_drop`` (False; True in the
  unconditional pass: the prior embedding zeroed), ``target_size`` = (height, width) and ``crop_coords`` (default
  (0, 0)) in pixels, and ``timestep`` **t_i - 1**, t_i the scheduler's unshifted timestep.
* the time grid: t_i = int(linspace(T, 1, N + 1)[:-1]), sigmas t_i / T, then the folder's
  ``FlowMatchEulerDiscreteScheduler.set_timesteps(timesteps=t, sigmas=t / T, mu=mu)`` with CogView4's mu =
  sqrt(L / 256) max_shift + base_shift (:func:`.cogview4.cogview4_mu`, L = (h / p)(w / p)); the schedule of a size is
  ``NoiseSchedule.flow(T, shift)`` (:func:`.flux.scheduler_shift`), each sigma placed at equal log-SNR
  (:func:`.flow_latents.flow_sigmas_grid`), and the network time is the shift inverted
  (:func:`.cogview4.cogview4_timestep`), rounded to whole t_i on the scheduler's grid.
* guidance: u_u + s (u_c - u_u) (Ho & Salimans 2022) for s > 1, default 1.5, the unconditional pass on the empty
  prompt's glyphs with the prior tokens dropped; s <= 1: the conditional call alone. The pipeline has no negative
  prompt: one given is refused.
* latents: N(0, I) (B, C, H / f, W / f); decoding x = D(z std + mean) (the VAE's ``latents_mean`` / ``latents_std``).
  Size: default ``sample_size`` x f, sides multiples of 2 p f (32: the AR model's grid upsampled 2 x 2).

The pipeline's image-to-image mode (condition images read through the DiT's KV cache): :mod:`.glm_image_edit`
(:func:`image_to_image`; :class:`GlmImageNet`'s ``condition``).

Not driven, refused in one line: a negative prompt, IP-Adapters, LoRA files, textual inversions (the pipeline has
no loaders); before any weight is read: another pipeline class, a missing component, one of another class, a VAE
without ``latents_mean`` / ``latents_std``, a transformer whose channels are not the VAE's latent channels, a
scheduler whose sigmas are not the shifted t / T.
"""
from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..errors import DiffkitError, check_choice, read_json_object
from . import require
from .cogview4 import CogView4Net, cogview4_mu, shifted_scheduler
from .flow_latents import FlowLatentVAE, finish_images, flow_sigmas_grid, pipeline_grid, start_latents

GLM_IMAGE_PIPELINE = "GlmImagePipeline"
REQUIRED = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")  # the AR stage's: AR_PARTS
AR_PARTS = ("vision_language_encoder", "processor")
CLASSES = {"transformer": ("GlmImageTransformer2DModel",), "vae": ("AutoencoderKL",),
           "text_encoder": ("T5EncoderModel",), "scheduler": ("FlowMatchEulerDiscreteScheduler",)}
GLM_IMAGE_GUIDANCE = 1.5  # GlmImagePipeline.__call__'s default guidance_scale
GLM_IMAGE_STEPS = 50  # its default num_inference_steps
DEFAULT_SAMPLE_SIZE = 128  # its default_sample_size where the transformer config has none (the release's)
MAX_SEQUENCE_LENGTH = 2048  # its default max_sequence_length (ByT5 bytes per glyph text)
GLYPH_PATTERNS = (r"'([^']*)'", r"\u201c([^\u201c\u201d]*)\u201d", r'"([^"]*)"', r"\u300c([^\u300c\u300d]*)\u300d")
NO_NEGATIVE = ("GlmImagePipeline has no negative prompt (its unconditional pass is the empty prompt's glyphs with "
               "the prior tokens dropped); drop it")


def glyph_texts(prompt: str) -> list:
    """The quoted texts of ``prompt`` in the pipeline's order ('...', \u201c...\u201d, "...", \u300c...\u300d;
    ``get_glyph_texts``), or [""] where it quotes none."""
    texts = [text for pattern in GLYPH_PATTERNS for text in re.findall(pattern, prompt)]
    return texts or [""]


def glyph_length(max_sequence_length: Optional[int]) -> int:
    """The ByT5 length of each glyph text: ``max_sequence_length`` (None: the pipeline's 2048), a positive integer
    (one line otherwise)."""
    if max_sequence_length is None:
        return MAX_SEQUENCE_LENGTH
    if isinstance(max_sequence_length, bool) or not isinstance(max_sequence_length, int) or max_sequence_length < 1:
        raise DiffkitError(f"max_sequence_length={max_sequence_length!r} is not allowed; give a positive integer")
    return max_sequence_length


@contextmanager
def ar_rng(device: torch.device, seed: int):
    """torch's global RNG (and CUDA's on a CUDA device) seeded with ``seed`` as ``generate_prior_tokens`` seeds it
    for transformers' ``generate``, and restored after."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        if device.type == "cuda":
            torch.cuda.manual_seed(seed)
        yield


class GlmImageNet(CogView4Net):
    """``net(x, t, context, prior, prior_drop, target_size, crop_coords, condition)`` over a
    ``GlmImageTransformer2DModel``: ``t`` (the flow time s T on the shifted schedule) -> ``timestep`` =
    :func:`.cogview4.cogview4_timestep` (rounded with ``whole_timesteps``) - 1, as the pipeline passes t_i - 1; the
    (B, N) prior token ids and drop flags and the (1 or B, 2) size conditions as given; the velocity in x's dtype.
    ``condition``: the condition images' ``GlmImageKVCache`` (:func:`.glm_image_edit.condition_cache`), read by the
    rows whose prior tokens are kept and skipped by those that drop them, as the pipeline's conditional ("read") and
    unconditional ("skip") passes."""

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor = None, prior: torch.Tensor = None,
                prior_drop: torch.Tensor = None, target_size=None, crop_coords=None, condition=None) -> torch.Tensor:
        from . import model_dtype
        from .cogview4 import cogview4_timestep
        if context is None or prior is None or prior_drop is None or target_size is None:
            raise DiffkitError("a GLM-Image transformer needs cond {'context', 'prior', 'prior_drop', 'target_size', "
                               "'crop_coords'} (GlmImage.prompt_guidance)")
        b = x.shape[0]
        t = torch.as_tensor(t, device=x.device, dtype=torch.float64).reshape(-1).expand(b)
        t = cogview4_timestep(t, self.T, self.shift)
        if self.whole_timesteps:
            t = t.round()
        sizes = [c.expand(b, 2) if c.shape[0] == 1 else c for c in (target_size, crop_coords)]
        dtype = model_dtype(self.model)
        args = (x.to(dtype), context.expand(b, -1, -1).to(dtype), prior.expand(b, -1), prior_drop.expand(b, -1),
                (t - 1).to(torch.float32), sizes[0].to(dtype), sizes[1].to(dtype))
        if condition is None:
            return self._call(*args).to(x.dtype)
        reads = ~args[3].all(dim=1)  # the conditional rows read the condition images' keys and values
        out = torch.empty_like(args[0])
        for rows, mode in ((reads, "read"), (~reads, "skip")):
            if rows.any():
                condition.set_mode(mode)
                out[rows] = self._call(*(a[rows] for a in args), kv_caches=condition)
        return out.to(x.dtype)

    def _call(self, x, context, prior, prior_drop, timestep, target_size, crop_coords, kv_caches=None):
        return self.model(hidden_states=x, encoder_hidden_states=context, prior_token_id=prior,
                          prior_token_drop=prior_drop, timestep=timestep, target_size=target_size,
                          crop_coords=crop_coords, return_dict=False, kv_caches=kv_caches)[0]


@dataclass
class GlmImage(FlowLatentVAE):
    """The loaded diffusion-stage components of a ``GlmImagePipeline`` folder (:func:`load_glm_image`); the AR model
    and processor are read on first need (:meth:`prior_tokens`)."""

    transformer: object
    vae: object
    text_encoder: object
    tokenizer: object
    scheduler_config: dict
    directory: Path
    device: torch.device
    dtype: torch.dtype = torch.float32
    latents_hw: Optional[Tuple[int, int]] = None
    _denoisers: dict = field(default_factory=dict, repr=False)
    _ar: object = field(default=None, repr=False)
    _priors: dict = field(default_factory=dict, repr=False)

    default_steps = GLM_IMAGE_STEPS
    max_sequence_length = MAX_SEQUENCE_LENGTH

    @property
    def T(self) -> int:
        return int(self.scheduler_config.get("num_train_timesteps", 1000))

    @property
    def patch(self) -> int:
        return int(self.transformer.config.patch_size)

    # ------------------------------------------------------------------ shapes and schedules
    def latent_shape(self, batch: int, height: Optional[int] = None, width: Optional[int] = None) -> tuple:
        """(batch, C, height / f, width / f); default sample_size x f (128 f: 1024); sides multiples of 2 p f (the AR
        model's token grid, upsampled 2 x 2 to the DiT's patches)."""
        f, multiple = self.vae_scale_factor, 2 * self.patch * self.vae_scale_factor
        default = int(self.transformer.config.get("sample_size", DEFAULT_SAMPLE_SIZE)) * f
        height = default if height is None else height
        width = default if width is None else width
        for value in (height, width):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value % multiple:
                raise DiffkitError(f"height x width {height}x{width} is not allowed; give positive multiples of "
                                   f"{multiple} (GLM-Image's prior-token grid: 2 x patch {self.patch} x VAE factor "
                                   f"{f})")
        return (batch, int(self.transformer.config.out_channels), height // f, width // f)

    def mu(self, h: int, w: int, steps: Optional[int] = None) -> float:
        """The pipeline's mu at latents h x w: :func:`.cogview4.cogview4_mu` of (h / p)(w / p) image tokens."""
        return cogview4_mu((h // self.patch) * (w // self.patch), self.scheduler_config)

    def shift(self, h: int, w: int, steps: Optional[int] = None) -> float:
        from .flux import scheduler_shift
        return scheduler_shift(self.scheduler_config, lambda: self.mu(h, w), h, w)

    def denoiser_for(self, h: int, w: int, whole: bool = False):
        """The unguided flow-prediction Denoiser at latents h x w on ``NoiseSchedule.flow(T, shift(h, w))`` (cond:
        :class:`GlmImageNet`'s); ``whole``: the network at whole timesteps (the scheduler's grid)."""
        from ..denoiser import Denoiser
        from ..schedule import NoiseSchedule
        shift = self.shift(h, w)
        if (shift, whole) not in self._denoisers:
            net = GlmImageNet(self.transformer, self.T, shift, whole)
            self._denoisers[(shift, whole)] = Denoiser(net, NoiseSchedule.flow(self.T, shift), "flow_prediction")
            self._denoisers[(shift, whole)].model = self.transformer
        return self._denoisers[(shift, whole)]

    @property
    def denoiser(self):
        """:meth:`denoiser_for` the default size."""
        return self.denoiser_for(*self.latent_shape(1)[2:])

    def scheduler_sigmas(self, steps: int, h: int, w: int) -> torch.Tensor:
        """The scheduler's sigmas (final 0 included) after the pipeline's ``set_timesteps(timesteps=t, sigmas=t / T,
        mu=mu)``, t = int(linspace(T, 1, steps + 1)[:-1]), at latents h x w."""
        diffusers = require("diffusers")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise DiffkitError(f"steps={steps!r} is not allowed; give a positive integer")
        timesteps = np.linspace(self.T, 1.0, steps + 1)[:-1].astype(np.int64).astype(np.float32)
        scheduler = diffusers.FlowMatchEulerDiscreteScheduler.from_config(self.scheduler_config)
        scheduler.set_timesteps(timesteps=timesteps, sigmas=timesteps / self.T, mu=self.mu(h, w))
        return scheduler.sigmas

    def scheduler_grid(self, steps: int, h: int, w: int) -> torch.Tensor:
        """diffkit's grid of :meth:`scheduler_sigmas` on the schedule of latents h x w."""
        return flow_sigmas_grid(self.denoiser_for(h, w).schedule, self.scheduler_sigmas(steps, h, w), steps)

    def check_guidance_scale(self, guidance_scale) -> None:
        """Any number is a CFG scale here (checked by the guidance); nothing to refuse up front."""

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """x = D(z std + mean) in [-1, 1] (not clamped), as the pipeline decodes."""
        with torch.no_grad():
            z = latents.to(device=self.device, dtype=self.vae.dtype)
            mean, std = self._stats(z)
            return self.vae.decode(z * std + mean, return_dict=False)[0].float()

    def encode(self, images: torch.Tensor, generator=None, sample: bool = False) -> torch.Tensor:
        """z = (E(x) - mean) / std of images (B, 3, H, W) in [-1, 1], the inverse of :meth:`decode`: the posterior's
        mean (the pipeline's condition images, ``sample_mode="argmax"``), or with ``sample`` its draw from
        ``generator`` (:func:`.stable_diffusion.vae_latents`)."""
        from .stable_diffusion import vae_latents
        z = vae_latents(self.vae, images, self.device, generator, sample)
        mean, std = self._stats(z)
        return ((z - mean) / std).float()

    # ------------------------------------------------------------------ prompts, prior tokens, guidance
    def encode_prompts(self, prompts: Sequence[str], max_sequence_length: Optional[int] = None) -> torch.Tensor:
        """(B, L, d) glyph states of ``prompts`` as ``_get_glyph_embeds`` (module docstring): per prompt its quoted
        texts' kept ByT5 states in one row, rows left-padded with zeros."""
        from .stable_diffusion import prompt_list
        max_sequence_length = glyph_length(max_sequence_length)
        pad, rows = self.tokenizer.pad_token_id, []
        for prompt in prompt_list(prompts):
            texts = glyph_texts(prompt)
            ids = self.tokenizer(texts, max_length=max_sequence_length, truncation=True).input_ids
            ids = [[pad] * ((len(ids) + 1) % 2) + one for one in ids]
            longest = max(len(one) for one in ids)
            mask = torch.tensor([[1] * len(one) + [0] * (longest - len(one)) for one in ids], device=self.device)
            ids = torch.tensor([one + [pad] * (longest - len(one)) for one in ids], device=self.device)
            with torch.no_grad():
                states = self.text_encoder(ids, attention_mask=mask).last_hidden_state
            rows.append(states[mask.bool()])
        longest = max(row.shape[0] for row in rows)
        return torch.stack([torch.cat([row.new_zeros(longest - row.shape[0], row.shape[1]), row]) for row in rows])

    def prior_tokens(self, prompts: Sequence[str], height: int, width: int, seed: int = 0) -> torch.Tensor:
        """(B, (H / 16)(W / 16)) prior token ids of ``prompts`` from the folder's AR model, each prompt alone as
        ``GlmImagePipeline.generate_prior_tokens(prompt, height, width, generator=Generator().manual_seed(seed))``
        (diffusers' own code: the processor's chat template, transformers' ``generate`` sampling from torch's
        global generator seeded with ``seed``, the d32 grid upsampled 2 x 2); torch's global RNG state is restored
        after. Cached per (prompt, size, seed)."""
        from .stable_diffusion import prompt_list
        rows = []
        for prompt in prompt_list(prompts):
            key = (prompt, height, width, seed)
            if key not in self._priors:
                pipe = self.ar_pipeline()
                with ar_rng(self.device, seed):
                    generator = torch.Generator().manual_seed(seed)
                    with torch.no_grad():
                        ids = pipe.generate_prior_tokens(prompt, height, width, device=self.device,
                                                         generator=generator)[0]
                self._priors[key] = ids[0].to(self.device)
            rows.append(self._priors[key])
        return torch.stack(rows)

    def ar_pipeline(self):
        """A ``GlmImagePipeline`` over this folder's components with its AR model and processor (read on first
        call, never downloading); a folder without them: one line."""
        if self._ar is None:
            from . import from_pretrained, library_progress_bars
            diffusers, transformers = require("diffusers"), require("transformers")
            index = read_json_object(self.directory / "model_index.json", "model_index.json")
            for part in AR_PARTS:
                if not isinstance(index.get(part), list) or None in index[part] or \
                        not (self.directory / part).is_dir():
                    raise DiffkitError(f"{self.directory} has no {part} (GLM-Image's AR stage); give "
                                       f"prior_token_ids instead")
            with library_progress_bars(False):
                model = from_pretrained(transformers.GlmImageForConditionalGeneration,
                                        self.directory / "vision_language_encoder", local_files_only=True,
                                        torch_dtype=self.dtype, use_safetensors=True)
                processor = from_pretrained(transformers.GlmImageProcessor, self.directory / "processor",
                                            local_files_only=True)
            scheduler = diffusers.FlowMatchEulerDiscreteScheduler.from_config(self.scheduler_config)
            self._ar = diffusers.GlmImagePipeline(
                tokenizer=self.tokenizer, processor=processor, text_encoder=self.text_encoder,
                vision_language_encoder=model.to(self.device).eval().requires_grad_(False), vae=self.vae,
                transformer=self.transformer, scheduler=scheduler)
            self._ar.set_progress_bar_config(disable=True)
        return self._ar

    def check_prior(self, prior: torch.Tensor, batch: int, h: int, w: int) -> torch.Tensor:
        """``prior`` as (batch, (h / p)(w / p)) long ids in [0, codebook); one line otherwise."""
        n, size = (h // self.patch) * (w // self.patch), int(self.transformer.config.prior_vq_quantizer_codebook_size)
        prior = torch.as_tensor(prior)
        if prior.ndim == 1:
            prior = prior[None]
        if prior.ndim != 2 or prior.shape[0] not in (1, batch) or prior.shape[1] != n \
                or prior.is_floating_point() or prior.is_complex() or prior.dtype == torch.bool:
            raise DiffkitError(f"prior_token_ids of shape {tuple(prior.shape)} ({prior.dtype}) are not allowed; give "
                               f"integer ids of shape (1 or {batch}, {n}) (one per DiT patch of latents {h}x{w})")
        if prior.numel() and (int(prior.min()) < 0 or int(prior.max()) >= size):
            raise DiffkitError(f"prior_token_ids in [{int(prior.min())}, {int(prior.max())}] are not allowed; give "
                               f"ids in [0, {size - 1}] (the transformer's prior codebook)")
        return prior.to(self.device, torch.long).expand(batch, -1)

    def prompt_guidance(self, prompts, prior: torch.Tensor, h: int, w: int, guidance_scale=None,
                        convention: str = "diffusers", max_sequence_length: Optional[int] = None,
                        crops_coords_top_left: tuple = (0, 0), whole: bool = False) -> tuple:
        """(denoiser, cond) of the pipeline's guidance (module docstring) at latents h x w: the prompts' glyph
        states, the prior ids (kept; dropped in the unconditional pass on the empty prompt's glyphs) and the size
        conditions; the unguided denoiser for s <= 1."""
        from ..guidance import ClassifierFreeGuidance, pipeline_scale
        from .cogview4 import size_conditions
        from .stable_diffusion import prompt_list
        prompts = prompt_list(prompts)
        denoiser = self.denoiser_for(h, w, whole)
        context = self.encode_prompts(prompts, max_sequence_length)
        f = self.vae_scale_factor
        sizes = size_conditions(h * f, w * f, None, crops_coords_top_left, context.dtype, self.device)
        prior = self.check_prior(prior, len(prompts), h, w)
        cond = {"context": context, "prior": prior, "prior_drop": torch.zeros_like(prior, dtype=torch.bool),
                "target_size": sizes["target_size"], "crop_coords": sizes["crop_coords"]}
        scale = pipeline_scale(guidance_scale, GLM_IMAGE_GUIDANCE, convention)
        if scale <= 1:
            return denoiser, cond
        null = self.encode_prompts([""], max_sequence_length)
        return ClassifierFreeGuidance(denoiser, scale, "diffusers", null_context=null,
                                      null_cond={"prior_drop": torch.ones_like(prior[:1], dtype=torch.bool)}), cond


def is_glm_image_folder(path: Union[str, Path]) -> bool:
    """True for a diffusers folder whose ``model_index.json`` names a ``GlmImage...`` pipeline or a
    ``GlmImageTransformer2DModel`` transformer."""
    from .flow_latents import names_pipeline
    return names_pipeline(path, "GlmImage", "GlmImageTransformer2DModel")


def check_glm_image_folder(directory) -> tuple:
    """(model_index dict, scheduler config) of a ``GlmImagePipeline`` folder, checked from its JSON alone (module
    docstring); a one-line DiffkitError for what diffkit does not drive."""
    from .pixart import check_pipeline_folder
    directory = Path(directory)
    index = check_pipeline_folder(directory, GLM_IMAGE_PIPELINE, "GLM-Image", REQUIRED, CLASSES)
    vae = read_json_object(directory / "vae" / "config.json", "vae config")
    latents = int(vae.get("latent_channels", 4))
    for key in ("latents_mean", "latents_std"):
        if not isinstance(vae.get(key), list) or len(vae[key]) != latents:
            raise DiffkitError(f"{directory}'s vae has {key}={vae.get(key)!r}; allowed: {latents} numbers (GLM-Image "
                               f"normalises the latents per channel)")
    config = read_json_object(directory / "transformer" / "config.json", "transformer config")
    channels = (config.get("in_channels", 16), config.get("out_channels", 16))
    if channels != (latents, latents):
        raise DiffkitError(f"{directory}'s transformer has in_channels, out_channels = {channels[0]!r}, "
                           f"{channels[1]!r}; allowed: {latents}, {latents} (the VAE's latent channels)")
    return index, shifted_scheduler(directory, "GLM-Image")


def load_glm_image(directory: Union[str, Path], device="cpu", dtype: torch.dtype = torch.float32,
                   progress: bool = True) -> GlmImage:
    """Load the diffusion stage of a ``GlmImagePipeline`` folder (transformer, VAE, ByT5 encoder and tokenizer;
    never downloads, never unpickles); what diffkit does not drive is refused in one line before any weight is read
    (:func:`check_glm_image_folder`). The AR model is read on first need (:meth:`GlmImage.prior_tokens`)."""
    from .flow_latents import frozen_on, load_flow_parts
    from .schedulers import train_timesteps
    diffusers = require("diffusers")
    directory = Path(directory)
    index, sched = check_glm_image_folder(directory)
    train_timesteps(sched)
    parts = load_flow_parts(directory, index, diffusers.GlmImageTransformer2DModel, {"": "T5EncoderModel"}, dtype,
                            progress)
    device = frozen_on(parts, device)
    model = GlmImage(**parts, scheduler_config=sched, directory=directory, device=device, dtype=dtype)
    have, need = model.transformer.config.text_embed_dim, model.text_encoder.config.d_model
    if have != need:
        raise DiffkitError(f"{directory}: the transformer's text_embed_dim={have} does not fit the text encoder's "
                           f"width {need}")
    return model


def text_to_image(model: GlmImage, prompts: Union[str, Sequence[str]], *, prior_token_ids=None, prior_seed: int = 0,
                  sampler: Optional[str] = None, steps: Optional[int] = None, nfe: Optional[int] = None,
                  guidance_scale: Optional[float] = None, convention: str = "diffusers", negative_prompt=None,
                  seed: Optional[int] = 0, latents: Optional[torch.Tensor] = None, height: Optional[int] = None,
                  width: Optional[int] = None, grid=None, max_sequence_length: Optional[int] = None,
                  crops_coords_top_left: tuple = (0, 0), output_range: str = "0,1", return_latents: bool = False,
                  progress: bool = False, ip_adapter=None, condition=None, **options) -> torch.Tensor:
    """Images of a GLM-Image folder for ``prompts`` with any diffkit sampler (module docstring).

    prior_token_ids: (1 or B, (H / 16)(W / 16)) ids of the transformer's prior codebook (the pipeline's
        ``prior_token_ids``); None: drawn by the folder's AR model, prompt by prompt, with torch's generator seeded
        ``prior_seed`` (:meth:`GlmImage.prior_tokens`, the pipeline's ``generator`` seed).
    sampler / grid: both None (the default): the pipeline's loop, flow Euler (``ddim``) on its sigmas
        (``grid="scheduler"``); a sampler alone: its default grid of the size's flow schedule. steps / nfe: default
        50 steps. guidance_scale: CFG s (default 1.5; ``convention="seed"``: w, s = 1 + w). latents: z at s = 1
        (B, C, h, w); default N(0, I) from per-sample ``seed + i``. height / width: default sample_size x f.
    condition: the condition images' KV cache the conditional passes read (:func:`image_to_image`'s).
    options: passed to :func:`diffkit.sample` (e.g. ``eta``, ``flow_shift``).
    """
    from ..sampling import sample
    from .stable_diffusion import OUTPUT_RANGES, prompt_list
    check_choice("output_range", output_range, OUTPUT_RANGES)
    if negative_prompt is not None:
        raise DiffkitError(NO_NEGATIVE)
    if ip_adapter is not None:
        raise DiffkitError("GlmImagePipeline takes no IP-Adapter; drop it")
    prompts = prompt_list(prompts)
    glyph_length(max_sequence_length)
    noise, expected = start_latents(model, latents, len(prompts), height, width)
    h, w = expected[2:]
    own = sampler is None and grid is None or isinstance(grid, str)  # the scheduler's grid: whole timesteps
    sampler, grid, steps = pipeline_grid(sampler, grid, steps, nfe, GLM_IMAGE_STEPS,
                                         lambda n: model.scheduler_grid(n, h, w), options.get("flow_shift"))
    if prior_token_ids is None:
        prior_token_ids = model.prior_tokens(prompts, h * model.vae_scale_factor, w * model.vae_scale_factor,
                                             prior_seed)
    denoiser, cond = model.prompt_guidance(prompts, prior_token_ids, h, w, guidance_scale, convention,
                                           max_sequence_length, crops_coords_top_left, whole=own)
    if condition is not None:
        cond["condition"] = condition
    z0 = sample(denoiser, noise, sampler, steps, nfe=nfe, grid=grid, seed=seed, cond=cond, progress=progress,
                device=model.device, dtype=model.dtype, **options)
    return finish_images(model, z0, return_latents, output_range)


def image_to_image(model: GlmImage, images, prompts: Union[str, Sequence[str]], **options) -> torch.Tensor:
    """Images of ``prompts`` seeing the condition ``images`` as GlmImagePipeline's image-to-image mode
    (:func:`.glm_image_edit.image_to_image`)."""
    from .glm_image_edit import image_to_image as edit
    return edit(model, images, prompts, **options)


__all__ = ["GlmImage", "GlmImageNet", "load_glm_image", "is_glm_image_folder", "check_glm_image_folder",
           "text_to_image", "image_to_image", "glyph_texts", "GLM_IMAGE_GUIDANCE", "GLM_IMAGE_STEPS",
           "GLM_IMAGE_PIPELINE"]
