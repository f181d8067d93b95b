"""A Chroma diffusers folder (``ChromaPipeline`` / ``ChromaImg2ImgPipeline`` / ``ChromaInpaintPipeline``, diffusers
0.42.1), sampled and edited with any diffkit sampler.

Chroma (lodestones 2025) is FLUX.1-schnell's rectified-flow transformer (:mod:`.flux`; Esser et al. 2024, Sec. 2,
eq. 1: x_s = (1 - s) x_0 + s eps, velocity u = eps - x_0) with the pooled-CLIP and guidance embedders replaced by a
distilled modulation approximator (``ChromaTransformer2DModel``: the time alone feeds it), one T5 text encoder and
real classifier-free guidance. Everything but the prompts and the guidance is FLUX.1's and reused from :mod:`.flux`:
the 2 x 2 latent packing and image ids (:class:`.flux.FluxNet`), the 16-channel VAE with ``shift_factor``, the
grid (sigmas linspace(1, 1/N, N) shifted with the pipeline's mu = ``calculate_shift`` of the packed sequence
length, :meth:`.flux.Flux.scheduler_grid`), the random draws (z in (B, C, h, w) from sample i's generator; img2img:
the posterior, then the noise) and img2img's ``get_timesteps`` cut. What is Chroma's own:

* prompts (``_get_t5_prompt_embeds``): T5 tokens padded to ``max_sequence_length`` (default 512), encoded *under*
  the tokenizer's attention mask (FLUX encodes without it); the transformer's text mask keeps every real token and
  the first padding token: m_i = [i <= n] for a prompt of n tokens (its ``</s>`` included), in the encoder's dtype.
* the transformer call gets ``attention_mask`` = [m, 1 ... 1] over text then image tokens
  (``_prepare_attention_mask``); each block builds m m^T from it (diffusers passes that float 0 / 1 matrix to
  scaled-dot-product attention, which *adds* it to the logits: diffkit passes the same tensor, so the same numbers).
  No ``pooled_projections``, no ``guidance``.
* guidance: the pipelines' CFG u = u_neg + s (u_c - u_neg) (Ho & Salimans 2022, eq. 6 in diffusers' convention)
  for s > 1 (default 5.0), the negative prompt (default "") encoded as the prompt with its own mask;
  :class:`~diffkit.guidance.ClassifierFreeGuidance` (its ``null_cond`` carries the negative mask).
* defaults: 35 steps; img2img strength 0.9; inpainting (``ChromaInpaintPipeline``, :func:`image_to_image` with a
  ``mask``: FLUX.1's replacement inpainting, :func:`.flow_latents.edit_latents`) its own 28 steps, strength 0.6,
  CFG 7.0 and T5 length 256.

* IP-Adapters (XLabs format; ``text_to_image(ip_adapter=)``): FLUX.1's (:mod:`.flux_ip_adapter`), the negative
  image's embeds in CFG's negative pass.
* LoRA files and textual inversions (:func:`load_chroma`): FLUX.1's LoRA merge on the transformer (no T5 LoRA: the
  pipelines' loader cannot load one); embeddings into the T5 tokenizer / encoder, of T5's width.

Refused in one line before any weight is read: a transformer / VAE / scheduler of another class, an
``image_encoder`` in the folder (an IP-Adapter's is given apart), a transformer whose input is not 4 x the VAE's
latent channels.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from ..errors import DiffkitError, check_choice, check_float32
from ..guidance import pipeline_scale
from . import require
from .flow_latents import (check_flow_configs, finish_images, load_one_text_folder, names_pipeline,
                           pipeline_grid, start_latents)
from .flux import Flux, FluxNet, check_flux_scheduler
from .sd_xl import _index

CHROMA_TRANSFORMER = "ChromaTransformer2DModel"
CHROMA_PIPELINES = ("ChromaPipeline", "ChromaImg2ImgPipeline", "ChromaInpaintPipeline")  # one folder layout
REQUIRED = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")
CHROMA_GUIDANCE = 5.0  # ChromaPipeline's / ChromaImg2ImgPipeline's default guidance_scale (CFG)
CHROMA_STEPS = 35  # their default num_inference_steps
CHROMA_IMG2IMG_STRENGTH = 0.9  # ChromaImg2ImgPipeline's default strength
CHROMA_INPAINT = (28, 0.6, 7.0, 256)  # ChromaInpaintPipeline's defaults: steps, strength, CFG, max_sequence_length
MAX_SEQUENCE_LENGTH = 512


def chroma_text_mask(tokenizer_mask: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """Chroma's text mask (B, L) of a tokenizer mask: 1 up to and including the first padding token, m_i =
    [i <= sum(tokenizer_mask)] (``_get_t5_prompt_embeds``), in ``dtype`` (the pipeline's: the T5 states')."""
    lengths = tokenizer_mask.sum(dim=1, keepdim=True)
    return (torch.arange(tokenizer_mask.shape[1], device=tokenizer_mask.device)[None] <= lengths).to(dtype)


class ChromaNet(FluxNet):
    """``net(z, t, context, mask)`` over a ``ChromaTransformer2DModel`` on unpacked latents z (B, C, h, w):
    :meth:`.flux.FluxNet.packed_inputs` and ``attention_mask`` = the text ``mask`` (B, L) followed by ones for
    the image tokens (the pipelines' ``_prepare_attention_mask``); the velocity unpacked, in z's dtype."""

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor = None, mask: torch.Tensor = None,
                attention_kwargs: Optional[dict] = None) -> torch.Tensor:
        """``attention_kwargs``: the transformer's ``joint_attention_kwargs`` (an IP-Adapter's image embeds,
        :class:`.flux_ip_adapter.FlowIPAdaptedNet`)."""
        from .flux import unpack_latents
        if context is None or mask is None:
            raise DiffkitError("a Chroma transformer needs cond {'context', 'mask'} (Chroma.encode_prompts)")
        inputs = self.packed_inputs(x, t, context)
        tokens = inputs["hidden_states"].shape[1]
        mask = mask.to(x.device).expand(x.shape[0], -1)
        image = torch.ones(x.shape[0], tokens, device=x.device, dtype=torch.bool)
        extra = {} if attention_kwargs is None else {"joint_attention_kwargs": attention_kwargs}
        out = self.model(**inputs, attention_mask=torch.cat([mask, image], dim=1), **extra, return_dict=False)[0]
        return unpack_latents(out, *x.shape[2:]).to(x.dtype)


@dataclass
class Chroma(Flux):
    """The loaded components of a Chroma folder (:func:`load_chroma`): FLUX.1's fields with the T5 encoder as
    ``text_encoder`` / ``tokenizer`` (``text_encoder_2`` / ``tokenizer_2`` None); shapes, the shift, the grid and
    decoding are :class:`.flux.Flux`'s."""

    guidance_embeds = False  # no embedded guidance: real CFG (prompt_guidance)
    variant = None  # no Fill / Depth / Canny channels
    default_steps = CHROMA_STEPS  # the pipelines' defaults (text_to_image, image_to_image; Qwen-Image's: its own)
    img2img_defaults = (CHROMA_STEPS, CHROMA_IMG2IMG_STRENGTH, None, MAX_SEQUENCE_LENGTH)
    inpaint_defaults = CHROMA_INPAINT  # steps, strength, CFG (None: prompt_guidance's), max_sequence_length
    guidance_hint = f"CFG for > 1, the pipeline's default {CHROMA_GUIDANCE}"  # (check_guidance_scale's message)
    default_guidance = CHROMA_GUIDANCE  # prompt_guidance's default scale (diffusers' convention; Bria's: its own)
    max_sequence_length = MAX_SEQUENCE_LENGTH  # text_to_image's default text length (Bria's 128, Ovis-Image's 256)

    def network(self) -> torch.nn.Module:
        return ChromaNet(self.transformer)

    def check_guidance_scale(self, guidance_scale: Optional[float]) -> None:
        """A one-line DiffkitError for a CFG scale that is no finite float32 number."""
        import math
        if guidance_scale is None:
            return
        if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)) \
                or not math.isfinite(guidance_scale):
            raise DiffkitError(f"guidance_scale={guidance_scale!r} is not allowed; give a finite number "
                               f"({self.guidance_hint})")
        check_float32("guidance_scale", guidance_scale)

    def encode_prompts(self, prompts: Sequence[str], max_sequence_length: int = MAX_SEQUENCE_LENGTH) -> tuple:
        """(context (B, L, d_T5), mask (B, L)) as the pipelines' ``_get_t5_prompt_embeds``: L =
        ``max_sequence_length`` tokens, encoded under the tokenizer's mask; :func:`chroma_text_mask`. A multi-vector
        textual-inversion token is expanded first (the pipelines' ``maybe_convert_prompt`` with the T5 tokenizer)."""
        from .sd_textual_inversion import expand_prompt
        from .stable_diffusion import prompt_list
        if isinstance(max_sequence_length, bool) or not isinstance(max_sequence_length, int) \
                or not 1 <= max_sequence_length <= 512:
            raise DiffkitError(f"max_sequence_length={max_sequence_length!r} is not allowed; allowed: 1..512 "
                               f"(ChromaPipeline's T5 length)")
        prompts = [expand_prompt(p, self.tokenizer, self.prompt_expansions) for p in prompt_list(prompts)]
        tokens = self.tokenizer(prompts, padding="max_length", max_length=max_sequence_length,
                                truncation=True, return_tensors="pt")
        tokenizer_mask = tokens.attention_mask.to(self.device)
        with torch.no_grad():
            context = self.text_encoder(tokens.input_ids.to(self.device), attention_mask=tokenizer_mask)[0]
        context = context.to(self.text_encoder.dtype)
        return context, chroma_text_mask(tokenizer_mask, context.dtype)

    def prompt_guidance(self, prompts, h: int, w: int, guidance_scale: Optional[float] = None,
                        negative_prompt=None, max_sequence_length: int = MAX_SEQUENCE_LENGTH,
                        convention: str = "diffusers", ip_adapter=None) -> tuple:
        """(denoiser, cond) at latents h x w: the prompts' states and masks, guided as the pipelines for a
        diffusers-convention scale s > 1 (``guidance_scale``, default 5.0; ``convention="seed"`` reads W, s = 1 + W)
        against ``negative_prompt`` (None: ""; one, or one per prompt) with its own mask; s <= 1: unguided (a
        negative prompt is then refused: the pipeline would ignore it). ``ip_adapter``: an XLabs-format
        :class:`~.flux_ip_adapter.FluxIPAdapter` (or several) with its image prompt, as the pipelines'
        ``load_ip_adapter`` + ``ip_adapter_image``: its image embeds in cond, the negative image's (default black)
        in CFG's negative pass (:meth:`.flux.Flux.prompt_guidance`'s, FLUX.1's true CFG)."""
        from ..guidance import ClassifierFreeGuidance
        from .stable_diffusion import negative_prompts
        check_choice("convention", convention, ["diffusers", "seed"])
        self.check_guidance_scale(guidance_scale)
        scale = self.default_guidance if guidance_scale is None else float(guidance_scale)
        diffusers_scale = pipeline_scale(guidance_scale, self.default_guidance, convention)
        negative_image = getattr(ip_adapter, "negative_image", None)
        if diffusers_scale <= 1 and (negative_prompt is not None or negative_image is not None):
            what = "negative prompt" if negative_prompt is not None else "negative IP-Adapter image"
            raise DiffkitError(f"a {what} with guidance_scale={scale:g} ({convention} convention) is not allowed: "
                               f"the {what} feeds only CFG (diffusers' scale > 1); raise the scale or drop it")
        context, mask = self.encode_prompts(prompts, max_sequence_length)
        cond, denoiser, null_ip = {"context": context, "mask": mask}, self.denoiser_for(h, w), {}
        if mask is None:  # a transformer without a text mask (Bria's, .bria)
            del cond["mask"]
        if ip_adapter is not None:  # FLUX.1's adapter code: the transformer's encoder_hid_proj and processors
            denoiser, positive, negative = ip_adapter.flux_parts(self, h, w)
            cond["ip_image_embeds"] = positive.expand(context.shape[0], *positive.shape[1:])
            null_ip = {"ip_image_embeds": negative}
        if diffusers_scale <= 1:
            return denoiser, cond
        negatives = negative_prompts(negative_prompt, context.shape[0])
        if len(set(negatives)) == 1:
            negatives = negatives[:1]  # one row, broadcast by the guidance to every sample
        null_context, null_mask = self.negative_prompts(negatives, max_sequence_length, context)
        null_mask = {} if null_mask is None else {"mask": null_mask}
        return ClassifierFreeGuidance(denoiser, diffusers_scale, "diffusers", null_context=null_context,
                                      null_cond={**null_mask, **null_ip}), cond

    def negative_prompts(self, negatives: Sequence[str], max_sequence_length: int, context: torch.Tensor) -> tuple:
        """(null context, null mask) of CFG's negative pass: the ``negatives`` encoded as the prompts (Bria's: zeros
        for an empty negative prompt, :meth:`.bria.Bria.negative_prompts`); ``context``: the prompts'."""
        return self.encode_prompts(negatives, max_sequence_length)


def is_chroma_folder(path: Union[str, Path]) -> bool:
    """True for a diffusers folder whose ``model_index.json`` names a ``Chroma...`` pipeline or a
    ``ChromaTransformer2DModel`` transformer."""
    return names_pipeline(path, "Chroma", CHROMA_TRANSFORMER)


def check_chroma_folder(directory: Path) -> tuple:
    """(index, scheduler config) of a Chroma folder that :func:`load_chroma` drives; anything else is a one-line
    DiffkitError (module docstring), from the JSON files alone."""
    index = _index(directory)
    if index is None or not is_chroma_folder(directory):
        raise DiffkitError(f"{directory} is not a Chroma folder (model_index.json naming a ChromaPipeline with a "
                           f"{CHROMA_TRANSFORMER} transformer)")
    if index.get("_class_name") not in CHROMA_PIPELINES:
        raise DiffkitError(f"{directory} is a {index.get('_class_name')!r} folder, which diffkit does not drive; "
                           f"allowed: {', '.join(CHROMA_PIPELINES)}")
    vae, transformer = check_flow_configs(directory, index, REQUIRED, "Chroma", CHROMA_TRANSFORMER)
    latents = int(vae.get("latent_channels", 4))
    for key in ("in_channels", "out_channels"):
        value = transformer.get(key, 64 if key == "in_channels" else None)
        if value not in ((4 * latents,) if key == "in_channels" else (None, 4 * latents)):
            raise DiffkitError(f"{directory}'s transformer has {key}={value!r}; allowed: {4 * latents} (4 x the "
                               f"VAE's latent channels{')' if key == 'in_channels' else ') or null'}")
    return index, check_flux_scheduler(directory, "ChromaPipeline")


def load_chroma(directory: Union[str, Path], device="cpu", dtype: torch.dtype = torch.float32,
                progress: bool = True, lora=None, textual_inversion=None) -> Chroma:
    """Load a Chroma diffusers folder (never downloads, never unpickles); what diffkit does not drive is refused
    in one line before any weight is read (:func:`check_chroma_folder`). ``lora``: LoRA files (paths or (path,
    scale) pairs) merged into the transformer as the pipelines' ``load_lora_weights`` (``FluxLoraLoaderMixin``) +
    ``fuse_lora(lora_scale=scale)``: diffusers / PEFT ``transformer.`` keys (any Linear, the approximator's too) or
    kohya / BFL ones on the double / single blocks' attention and MLP layers, ``img_in``, ``txt_in`` and
    ``final_layer.linear`` (FLUX.1's code: :func:`.flux.read_flux_loras`, :mod:`.flux_lora`; Chroma's blocks have
    no modulation linears, so their keys are refused, as are text-encoder keys: diffusers loads no T5 LoRA).
    ``textual_inversion``: embedding files (paths or (path, token or None) pairs) added to the **T5** tokenizer and
    encoder as the pipelines' ``load_textual_inversion(path, token=token)`` (``TextualInversionLoaderMixin`` on
    their one tokenizer / text encoder: :mod:`.sd_textual_inversion`), so only embeddings of T5's width (d_model,
    4096 for Chroma1) fit; CLIP (768) or SD-XL files: one line."""
    from .flux import read_flux_loras
    from .flux_lora import transformer_adapters
    from .sd_lora import merge_sd_loras
    from .sd_textual_inversion import add_textual_inversions, read_textual_inversions
    diffusers = require("diffusers")
    directory = Path(directory)
    index, sched = check_chroma_folder(directory)
    loras = read_flux_loras(lora, "Chroma")
    embeddings = read_textual_inversions(textual_inversion) if textual_inversion else []
    chroma = load_one_text_folder(Chroma, directory, index, sched, diffusers.ChromaTransformer2DModel,
                                  "T5EncoderModel", device, dtype, progress, "joint_attention_dim", "d_model",
                                  "the T5 encoder's width")
    merge_sd_loras(chroma, [(path, scale, transformer_adapters(path, read, chroma.transformer) if read["kohya"]
                             else read) for path, scale, read in loras])
    add_textual_inversions(chroma, embeddings, xl=False)  # T5's tokenizer and token embeddings
    return chroma


def text_to_image(chroma: Chroma, prompts: Union[str, Sequence[str]], *, sampler: Optional[str] = None,
                  steps: Optional[int] = None, nfe: Optional[int] = None, guidance_scale: Optional[float] = None,
                  convention: str = "diffusers", negative_prompt: Union[None, str, Sequence[str]] = None,
                  seed: Optional[int] = 0, latents: Optional[torch.Tensor] = None, height: Optional[int] = None,
                  width: Optional[int] = None, grid: Union[None, str, torch.Tensor] = None,
                  max_sequence_length: Optional[int] = None, output_range: str = "0,1",
                  return_latents: bool = False, progress: bool = False, ip_adapter=None, guide: Optional[dict] = None,
                  control=None, **options) -> torch.Tensor:
    """Images of a Chroma folder for ``prompts`` as ``ChromaPipeline`` (module docstring) with any diffkit sampler
    (and of a Z-Image folder, :mod:`.z_image`: ``guide``, more keyword arguments of its ``prompt_guidance``).

    sampler / grid: both None: the pipeline's loop, flow Euler (``ddim``) on its sigmas (35 steps by default);
    otherwise as :func:`.flux.text_to_image`. guidance_scale (default 5.0, diffusers' convention unless
    ``convention="seed"``) / negative_prompt: :meth:`Chroma.prompt_guidance`. latents: unpacked z at s = 1
    (B, C, h, w), default N(0, I) from per-sample ``seed + i``; height / width: default 128 f, multiples of 2 f.
    ip_adapter: an XLabs-format IP-Adapter with its image prompt (:meth:`Chroma.prompt_guidance`).
    max_sequence_length: default the folder kind's (:attr:`Chroma.max_sequence_length`: 512; Bria's 128).
    control: ``control(denoiser, cond, sampler, steps, nfe, grid, options, shape)`` giving the (denoiser, cond) that
    sample, once the loop's grid is known (a Qwen-Image ControlNet's, :func:`.qwen_image_controlnet.controlled`).
    options: passed to :func:`diffkit.sample`."""
    from ..sampling import sample
    from .stable_diffusion import OUTPUT_RANGES, prompt_list
    check_choice("output_range", output_range, OUTPUT_RANGES)
    prompts = prompt_list(prompts)
    noise, expected = start_latents(chroma, latents, len(prompts), height, width, " (unpacked)")
    h, w = expected[2:]
    max_sequence_length = chroma.max_sequence_length if max_sequence_length is None else max_sequence_length
    sampler, grid, steps = pipeline_grid(sampler, grid, steps, nfe, chroma.default_steps,
                                         lambda n: chroma.scheduler_grid(n, h, w), options.get("flow_shift"))
    denoiser, cond = chroma.prompt_guidance(prompts, h, w, guidance_scale, negative_prompt, max_sequence_length,
                                            convention, ip_adapter, **(guide or {}))
    if control is not None:
        denoiser, cond = control(denoiser, cond, sampler, steps, nfe, grid, options, expected)
    z0 = sample(denoiser, noise, sampler, steps, nfe=nfe, grid=grid, seed=seed, cond=cond, progress=progress,
                device=chroma.device, dtype=chroma.dtype, **options)
    return finish_images(chroma, z0, return_latents, output_range)


def image_to_image(chroma: Chroma, images: torch.Tensor, prompts: Union[str, Sequence[str]],
                   strength: Optional[float] = None, *, mask: Optional[torch.Tensor] = None,
                   sampler: Optional[str] = None, steps: Optional[int] = None,
                   guidance_scale: Optional[float] = None, convention: str = "diffusers",
                   negative_prompt: Union[None, str, Sequence[str]] = None, posterior: str = "sample",
                   seed: Optional[int] = 0, generator=None, max_sequence_length: Optional[int] = None,
                   output_range: str = "0,1", return_latents: bool = False, progress: bool = False,
                   ip_adapter=None, guide: Optional[dict] = None, **options) -> torch.Tensor:
    """SDEdit of ``images`` (B, 3, H, W) in [-1, 1] towards ``prompts`` (one, or one per image) as
    ``ChromaImg2ImgPipeline`` (Meng et al. 2022, Alg. 1 on the latents): FLUX.1's img2img (:func:`.flux.image_to_image`,
    :func:`.flow_latents.edit_latents`: image i's posterior drawn from its generator ``seed + i``, then its noise,
    noised to the first sigma of the strength's cut of the pipeline's grid) with Chroma's prompts and CFG
    (:meth:`Chroma.prompt_guidance`, with an ``ip_adapter`` too); defaults 35 steps, strength 0.9, guidance 5.0.
    ``sampler`` (or ``grid`` in
    ``options``) given: that sampler on its own grid of the size's flow schedule, cut as :func:`diffkit.img2img`.

    ``mask`` (B or 1, 1, H, W), 1 = repaint: inpainting as ``ChromaInpaintPipeline``, which is FLUX.1's
    ``FluxInpaintPipeline`` loop with Chroma's prompts and CFG (:func:`.flux.image_to_image`'s inpainting, the same
    :func:`.flow_latents.edit_latents`: the mask binarised and nearest-resized to the latents, the kept region put
    back at the pipeline's blend ``scale_noise(z, next sigma, noise)`` after every step; the pipeline's masked-image
    latents feed nothing there); its defaults 28 steps, strength 0.6, guidance 7.0, ``max_sequence_length`` 256
    (img2img's: 512)."""
    from .flow_latents import edit_latents, edit_prompts
    from .stable_diffusion import OUTPUT_RANGES
    check_choice("output_range", output_range, OUTPUT_RANGES)
    prompts = edit_prompts(images, prompts)
    h, w = chroma.latent_shape(1, images.shape[2], images.shape[3])[2:]  # multiples of 2 f
    defaults = chroma.img2img_defaults if mask is None else chroma.inpaint_defaults  # (.qwen_image's, .z_image's)
    steps = defaults[0] if steps is None else steps
    strength = defaults[1] if strength is None else strength
    if guidance_scale is None and mask is not None:  # the inpainting pipeline's own default, diffusers' convention
        guidance_scale, convention = defaults[2], "diffusers"
    max_sequence_length = defaults[3] if max_sequence_length is None else max_sequence_length
    if sampler is None and "grid" not in options:
        sampler, options["grid"] = "ddim", chroma.scheduler_grid(steps, h, w)
        strength = chroma.pipeline_strength(steps, strength)
    denoiser, cond = chroma.prompt_guidance(prompts, h, w, guidance_scale, negative_prompt, max_sequence_length,
                                            convention, ip_adapter, **(guide or {}))
    z0 = edit_latents(chroma, denoiser, images, strength, sampler, steps, mask, posterior=posterior, seed=seed,
                      generator=generator, cond=cond, progress=progress, **options)
    return finish_images(chroma, z0, return_latents, output_range)


__all__ = ["Chroma", "ChromaNet", "load_chroma", "is_chroma_folder", "check_chroma_folder", "chroma_text_mask",
           "text_to_image", "image_to_image", "CHROMA_GUIDANCE", "CHROMA_STEPS", "CHROMA_IMG2IMG_STRENGTH",
           "CHROMA_INPAINT"]
