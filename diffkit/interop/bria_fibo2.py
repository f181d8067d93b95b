"""A Bria FIBO 2 diffusers folder (``BriaFibo2Pipeline``, diffusers 0.42.1: Fibo 2.0), sampled and edited with any
diffkit sampler.

Fibo 2.0 (BRIA AI 2026) is a rectified flow (Esser et al. 2024, Sec. 2, eq. 1: x_s = (1 - s) x_0 + s eps, velocity
u = eps - x_0) with a single-stream transformer (``BriaFibo2Transformer2DModel``: gist tokens of a Perceiver over the
text, then the image's 2 x 2 latent patches, five blocks cross-attending to text) on FLUX.2's VAE
(``AutoencoderKLFlux2``), reading structured (JSON) captions through a Qwen3-VL model. diffkit runs it as a
:class:`.flux2.Flux2` (the VAE's batch-norm normalisation, encoding and decoding) on :class:`.flux.Flux`'s grid and
FLUX.1's mu, with :func:`.chroma.text_to_image`'s loop. What is Fibo 2.0's own, as the pipeline does it:

* latents: z (B, C, H / f, W / f), the VAE's latents 2 x 2-patchified, normalised by its batch norm and unpatchified
  again (the pipeline's ``prepare_image_latents``): :func:`.flux2.unpatchify` of FLUX.2's z. The transformer
  patchifies them itself (``patch_size`` 2) and takes ``timestep`` s = t / 1000; sizes are multiples of 2 f (16),
  default 128 f (1024); the grid is ``set_timesteps(sigmas=linspace(1, 1/N, N), mu)`` with mu = ``calculate_shift``
  of the (h / 2)(w / 2) tokens (:meth:`.flux.Flux.mu`), 30 steps by default.
* prompts (:meth:`BriaFibo2.encode_prompts`): a generation prompt that is a JSON caption is cleaned as training
  cleaned captions (empty values, ``aesthetic_score`` / ``preference_score`` dropped) and serialised compactly
  (the pipeline's ``_parse_prompt``); each put in :data:`PROMPT_TEMPLATE`, tokenised padded to the longest (at most
  4096 tokens); Qwen3-VL's hidden states (:data:`TEXT_ENCODER_OUT_LAYERS`: six bundles of three layers), each layer
  scaled to unit RMS per token in float32, each bundle its layers concatenated: a context (B, 6, L, 3 d) and the
  token mask (passed only where some token is padded).
* images of the caption's text (``render_text_images``, default on): each ``text_render`` entry with a text is drawn
  black on white as training drew it (the pipeline's ``draw_text_image``; ``fonts``: fallback font files) and shown
  to Qwen3-VL, the entry marked with the vision tokens (``image_tokens``); a generation runs the steps whose noise
  level s is above 0.9 on the captions with empty markers and no images (``text_images_max_noise_level``).
* guidance: CFG u = u_n + s (u_c - u_n) (Ho & Salimans 2022, eq. 6 in diffusers' convention) for s > 1 (default
  5.0), the negative prompt (default :data:`DEFAULT_NEGATIVE_PROMPT`, the null caption: every key empty) run as a
  second pass of its own length, as the pipeline (:class:`BriaFibo2Net`); s <= 1: one unguided pass.
* edits (:func:`edit_image`, ``diffkit edit``): one to five images, cropped as training cropped them
  (``BriaFibo2ImageProcessor.preprocess``: one image to the output size, by default the trained size nearest its
  aspect ratio; several each to its own; a ``mask`` greys its region out first), encoded as z (the posterior's mode)
  and given to every transformer call as ``context_latents`` (clean tokens, never predicted), and shown to Qwen3-VL
  (at most 768 pixels a side) in the edit prompt (the pipeline's ``_get_edit_prompt``: one vision marker per image,
  the caption, the instruction); the negative prompt sees no image; the text images are used at every step.

diffusers' own helpers of the pipeline's module are called, not copied (the caption cleaning and marking, the edit
prompt, the text drawing, the image processor). The processor is read as its tokenizer and transformers' PIL image
processor (``Qwen2VLImageProcessorPil``; ``Qwen3VLProcessor`` imports torchvision for its video processor), whose
resizing may differ from the torchvision one's in the last bits of a pixel. LoRA files: what
``BriaFibo2LoraLoaderMixin`` loads (it converts nothing: diffusers / PEFT ``transformer.`` keys, as
``BriaFibo2Pipeline.save_lora_weights`` writes them), fused into the transformer as ``load_lora_weights`` +
``fuse_lora`` (:func:`.sana_lora.read_transformer_loras`, :func:`.sd_lora.merge_sd_loras`), in sampling and edits.
Not driven, one line each: IP-Adapters, ``max_sequence_length`` (the pipeline takes none). Refused before any
weight is read (:func:`check_bria_fibo2_folder`): another pipeline class, a missing component or one of another
class, a transformer whose ``in_channels`` are not the VAE's latent channels or whose ``patch_size`` is not 2, a
``cap_feat_dim`` other than three text-encoder widths, a text encoder too shallow for hidden state 35, a scheduler
option the flow Euler loop does not take.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from ..errors import DiffkitError, check_choice, read_json_object
from ..guidance import pipeline_scale
from . import model_dtype, require
from .chroma import Chroma
from .flux import Flux
from .flux2 import Flux2, patchify, unpatchify

PIPELINE = "BriaFibo2Pipeline"
TRANSFORMER = "BriaFibo2Transformer2DModel"
REQUIRED = ("transformer", "vae", "text_encoder", "processor", "scheduler")
CLASSES = {"transformer": (TRANSFORMER,), "vae": ("AutoencoderKLFlux2",),
           "text_encoder": ("Qwen3VLForConditionalGeneration",), "processor": ("Qwen3VLProcessor",),
           "scheduler": ("FlowMatchEulerDiscreteScheduler",)}
STEPS, GUIDANCE = 30, 5.0  # __call__'s defaults
DEFAULT_SAMPLE_SIZE = 128  # its default_sample_size (latent pixels a side)
MAX_TEXT_TOKENS = 4096  # its tokenizer_max_length
MAX_IMAGES, TEXT_ENCODER_IMAGE_SIZE = 5, 768  # max_num_images, text_encoder_image_size
TEXT_IMAGES_MAX_NOISE = 0.9  # text_images_max_noise_level


def _pipeline_module():
    from diffusers.pipelines.bria_fibo2 import pipeline_bria_fibo2
    return pipeline_bria_fibo2


def __getattr__(name):  # the pipeline module's constants, read from diffusers (not copied)
    if name in ("DEFAULT_NEGATIVE_PROMPT", "PROMPT_TEMPLATE", "TEXT_ENCODER_OUT_LAYERS", "VISION_MARKER"):
        return getattr(_pipeline_module(), name)
    raise AttributeError(name)


def compact(caption) -> str:
    """A caption dict serialised as the pipeline serialises it: compact separators, non-ASCII kept."""
    return json.dumps(caption, separators=(",", ":"), ensure_ascii=False)


def cleaned_prompt(prompt: str) -> str:
    """A generation prompt as the pipeline's ``__call__`` encodes it: a JSON caption cleaned (``_parse_prompt``) and
    serialised compactly; any other prompt (a short description) as it is."""
    caption, _ = _pipeline_module().BriaFibo2Pipeline._parse_prompt(prompt)
    return prompt if isinstance(caption, str) else compact(caption or {})


def text_images(prompts: Sequence[str], fonts: Optional[Sequence[str]] = None) -> Optional[list]:
    """Per prompt, the images of its caption's ``text_render`` entries that have a text, drawn as the pipeline's
    ``render_text_images`` draws them (``fonts``: fallback font files for characters Pillow's built-in font lacks);
    None where no prompt has any."""
    from diffusers.pipelines.bria_fibo2.text_images import draw_text_image, load_font
    fallback = [load_font(str(path)) for path in fonts or []]
    drawn = []
    for caption, _ in map(_pipeline_module().BriaFibo2Pipeline._parse_prompt, prompts):
        entries = (caption.get("text_render") or []) if isinstance(caption, dict) else []
        drawn.append([draw_text_image(entry["text"], fallback) for entry in entries
                      if isinstance(entry, dict) and isinstance(entry.get("text"), str) and entry["text"]])
    return drawn if any(drawn) else None


class BriaFibo2Net(torch.nn.Module):
    """``net(z, t, context, mask=None, base_context=None, base_mask=None, null_context=None, null_mask=None)`` over a
    ``BriaFibo2Transformer2DModel`` on z (B, C, h, w): ``timestep`` t / 1000 (float32), the text bundles and mask
    (None where no token is padded), ``context_latents`` the edit's ``references`` (each (1 or B, C, h_k, w_k));
    ``base_context`` / ``base_mask``: the captions without their text images, used while t / 1000 > 0.9; with
    ``scale`` s > 1 and ``null_context`` CFG u_n + s (u_c - u_n), the negative pass a call of its own; the velocity
    in z's dtype."""

    def __init__(self, transformer, scale: float = 1.0, references: Optional[Sequence[torch.Tensor]] = None):
        super().__init__()
        self.model, self.scale, self.references = transformer, float(scale), references

    def _call(self, x, timestep, context, mask) -> torch.Tensor:
        b, dtype = x.shape[0], model_dtype(self.model)
        if mask is not None:
            mask = mask.to(x.device).bool().expand(b, -1)
            mask = None if bool(mask.all()) else mask
        references = None if self.references is None else [
            r.to(x.device, dtype).expand(b, -1, -1, -1) for r in self.references]
        return self.model(hidden_states=x.to(dtype), timestep=timestep,
                          encoder_hidden_states=context.to(x.device, dtype).expand(b, -1, -1, -1),
                          encoder_attention_mask=mask, context_latents=references, return_dict=False)[0].float()

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor = None, mask: torch.Tensor = None,
                base_context: torch.Tensor = None, base_mask: torch.Tensor = None, null_context: torch.Tensor = None,
                null_mask: torch.Tensor = None) -> torch.Tensor:
        if context is None:
            raise DiffkitError("a Bria FIBO 2 transformer needs cond {'context'} (BriaFibo2.prompt_guidance)")
        t = torch.as_tensor(t, device=x.device, dtype=torch.float32).reshape(-1).expand(x.shape[0])
        timestep = t / 1000
        if base_context is not None and float(t[0]) / 1000 > TEXT_IMAGES_MAX_NOISE:
            context, mask = base_context, base_mask
        out = self._call(x, timestep, context, mask)
        if self.scale > 1 and null_context is not None:
            null = self._call(x, timestep, null_context, null_mask)
            out = null + self.scale * (out - null)
        return out.to(x.dtype)


@dataclass
class BriaFibo2(Flux2):
    """The loaded components of a Bria FIBO 2 folder (:func:`load_bria_fibo2`): FLUX.2's fields (the Qwen3-VL model
    as ``text_encoder``, the processor's tokenizer as ``tokenizer``), ``image_processor`` the processor's PIL image
    processor; what Fibo 2.0 changes: module docstring."""

    chat_template: Optional[str] = None  # (read by the Qwen3-VL loader; the pipeline's template is literal)
    image_processor: object = None
    default_steps = STEPS
    default_guidance = GUIDANCE
    max_sequence_length = None  # (the pipeline takes none: encode_prompts refuses one)
    guidance_hint = f"CFG for > 1, the pipeline's default {GUIDANCE}"
    check_guidance_scale = Chroma.check_guidance_scale  # (Chroma's message with guidance_hint)
    mu = Flux.mu  # FLUX.1's calculate_shift of the (h / 2)(w / 2) tokens, not FLUX.2's empirical mu

    @property
    def latent_scale_factor(self) -> int:
        """Pixels per latent pixel: the VAE's f (the transformer patchifies 2 x 2 itself)."""
        return self.vae_scale_factor

    def latent_shape(self, batch: int, height: Optional[int] = None, width: Optional[int] = None) -> tuple:
        """(batch, in_channels, height / f, width / f); default 128 f, multiples of 2 f (the pipeline's
        ``check_inputs``)."""
        shape = Flux.latent_shape(self, batch, height, width)
        return (batch, int(self.transformer.config.in_channels), *shape[2:])

    def encode(self, images: torch.Tensor, generator=None, sample: bool = False) -> torch.Tensor:
        """z of images in [-1, 1]: FLUX.2's normalised patchified latents unpatchified (``prepare_image_latents``)."""
        return unpatchify(super().encode(images, generator, sample))

    def vae_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """The VAE's latents of z: FLUX.2's of its 2 x 2 patches (the pipeline's decoding)."""
        return super().vae_latents(patchify(latents.to(self.device)))

    def network(self) -> torch.nn.Module:
        return BriaFibo2Net(self.transformer)

    def encode_prompts(self, prompts: Sequence[str], max_sequence_length: Optional[int] = None, images=None,
                       text_images: Optional[list] = None) -> tuple:
        """(context (B, 6, L, 3 d), mask (B, L) bool, or None where no token is padded) of ``prompts`` as the
        pipeline's ``encode_prompt`` (module docstring); ``images``: the PIL images an edit prompt sees (every
        prompt sees all, the prompt made an edit prompt by ``_get_edit_prompt``); ``text_images``: per prompt, the
        images of its caption's text, its entries marked."""
        from .qwen_image_edit import vision_inputs
        from .stable_diffusion import prompt_list
        pipe = _pipeline_module()
        if max_sequence_length is not None:
            raise DiffkitError(f"max_sequence_length={max_sequence_length!r} is not allowed for a Bria FIBO 2 folder "
                               f"({PIPELINE} takes none: prompts are cut at {MAX_TEXT_TOKENS} tokens)")
        prompts = prompt_list(prompts)
        texts, seen = [], []
        for prompt, own in zip(prompts, text_images or [[]] * len(prompts)):
            if images:
                prompt = pipe.BriaFibo2Pipeline._get_edit_prompt(prompt, len(images), text_images=bool(own))
                seen += list(images)
            elif own:
                prompt = compact(pipe.BriaFibo2Pipeline._mark_text_images(json.loads(prompt), pipe.VISION_MARKER))
            texts.append(pipe.PROMPT_TEMPLATE.format(prompt))
            seen += own
        cut = dict(truncation=True, max_length=MAX_TEXT_TOKENS)
        if seen:
            tokens, pixels = vision_inputs(self, texts, seen, **cut)
            pixels["mm_token_type_ids"] = (tokens.input_ids == self.text_encoder.config.image_token_id).long()
        else:
            tokens, pixels = self.tokenizer(texts, padding="longest", return_tensors="pt", **cut).to(self.device), {}
        with torch.no_grad():
            states = self.text_encoder(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask,
                                       output_hidden_states=True, **pixels).hidden_states
        dtype, layers = self.text_encoder.dtype, pipe.TEXT_ENCODER_OUT_LAYERS
        normalized = {}
        for layer in sorted({k for bundle in layers for k in bundle}):
            s = states[layer].float()
            normalized[layer] = (s * torch.rsqrt(s.pow(2).mean(dim=-1, keepdim=True) + 1e-6)).to(dtype)
        context = torch.stack([torch.cat([normalized[k] for k in bundle], dim=-1) for bundle in layers], dim=1)
        mask = tokens.attention_mask.bool()
        return context, None if bool(mask.all()) else mask

    def prompt_guidance(self, prompts, h: int, w: int, guidance_scale: Optional[float] = None,
                        negative_prompt=None, max_sequence_length: Optional[int] = None,
                        convention: str = "diffusers", ip_adapter=None, images=None, references=None,
                        render_text_images: bool = True, fonts: Optional[Sequence[str]] = None) -> tuple:
        """(denoiser, cond) at latents h x w (module docstring): the prompts' context (cleaned first where no
        ``images`` are edited), with the images of their text (``render_text_images``, ``fonts``), and CFG for a
        diffusers-convention scale s > 1 (default 5.0; ``convention="seed"`` reads W, s = 1 + W) against
        ``negative_prompt`` (default the null caption; one, or one per prompt); s <= 1: unguided (a negative prompt
        is then refused). ``images`` / ``references``: an edit's images as Qwen3-VL sees them and their z
        (:func:`edit_image`). ``ip_adapter``: refused (the pipeline loads none)."""
        from ..denoiser import Denoiser
        from .stable_diffusion import negative_prompts, prompt_list
        if ip_adapter is not None:
            raise DiffkitError(f"an IP-Adapter is not allowed for a Bria FIBO 2 folder ({PIPELINE} loads none)")
        check_choice("convention", convention, ["diffusers", "seed"])
        self.check_guidance_scale(guidance_scale)
        scale = pipeline_scale(guidance_scale, GUIDANCE, convention)
        if negative_prompt is not None and scale <= 1:
            raise DiffkitError(f"a negative prompt with guidance_scale={guidance_scale:g} ({convention} convention) "
                               f"is not allowed: it feeds only CFG (diffusers' scale > 1); raise the scale or drop it")
        prompts = prompt_list(prompts)
        if images is None:
            prompts = [cleaned_prompt(p) for p in prompts]
        own = text_images(prompts, fonts) if render_text_images else None
        context, mask = self.encode_prompts(prompts, max_sequence_length, images, own)
        cond = {"context": context, "mask": mask}
        if own is not None and images is None:  # the first steps' captions: empty markers, no images
            mark = _pipeline_module().BriaFibo2Pipeline._mark_text_images
            base = [compact(mark(json.loads(p), "")) if drawn else p for p, drawn in zip(prompts, own)]
            cond["base_context"], cond["base_mask"] = self.encode_prompts(base)
        if scale > 1:
            negatives = negative_prompts(_pipeline_module().DEFAULT_NEGATIVE_PROMPT if negative_prompt is None
                                         else negative_prompt, context.shape[0])
            cond["null_context"], cond["null_mask"] = self.encode_prompts(
                negatives[:1] if len(set(negatives)) == 1 else negatives)
        denoiser = Denoiser(BriaFibo2Net(self.transformer, scale, references), self.denoiser_for(h, w).schedule,
                            "flow_prediction")
        denoiser.model = self.transformer
        return denoiser, {key: value for key, value in cond.items() if value is not None}


def is_bria_fibo2_folder(path: Union[str, Path]) -> bool:
    """True for a folder whose ``model_index.json`` names a ``BriaFibo2...`` pipeline or its transformer."""
    from .flow_latents import names_pipeline
    return names_pipeline(path, "BriaFibo2", TRANSFORMER)


def check_bria_fibo2_folder(directory) -> tuple:
    """(index, scheduler config) of a Bria FIBO 2 folder, checked from its JSON alone (module docstring)."""
    from .flux import check_flux_scheduler
    from .pixart import check_classes, named_index
    directory = Path(directory)
    index = named_index(directory, (PIPELINE,), "Bria FIBO 2")
    check_classes(directory, index, REQUIRED, "Bria FIBO 2", CLASSES)
    config = read_json_object(directory / "transformer" / "config.json", "transformer config")
    vae = read_json_object(directory / "vae" / "config.json", "vae config")
    latents = int(vae.get("latent_channels", 32))
    got = (config.get("in_channels", 32), config.get("patch_size", 2))
    if got != (latents, 2):
        raise DiffkitError(f"{directory}'s transformer has in_channels, patch_size = {got[0]!r}, {got[1]!r}; "
                           f"allowed: {latents} (the VAE's latent channels), 2 ({PIPELINE}'s latents)")
    text = read_json_object(directory / "text_encoder" / "config.json", "text encoder config").get("text_config", {})
    width, depth = text.get("hidden_size", 4096), text.get("num_hidden_layers", 36)
    if config.get("cap_feat_dim", 7680) != 3 * width or depth < 35:
        raise DiffkitError(f"{directory}: the transformer's cap_feat_dim={config.get('cap_feat_dim', 7680)} and the "
                           f"text encoder's {depth} layers of width {width} do not fit {PIPELINE}'s bundles of three "
                           f"hidden states (up to 35) each")
    return index, check_flux_scheduler(directory, PIPELINE)


def load_bria_fibo2(directory: Union[str, Path], device="cpu", dtype: torch.dtype = torch.float32,
                    progress: bool = True, lora=None) -> BriaFibo2:
    """Load a Bria FIBO 2 diffusers folder (never downloads, never unpickles): the transformer, FLUX.2's VAE, the
    Qwen3-VL model and the processor's tokenizer by :func:`.nucleusmoe.load_qwen3_vl_folder`, its image processor
    by :func:`.qwen_image_edit.load_image_processor`; what diffkit does not drive is refused in one line before any
    weight is read (:func:`check_bria_fibo2_folder`). ``lora``: LoRA files (paths or (path, scale) pairs) with
    diffusers / PEFT ``transformer.`` keys (``BriaFibo2LoraLoaderMixin`` converts nothing), read and checked first,
    fused as ``load_lora_weights`` + ``fuse_lora(lora_scale=scale)`` (:func:`.sana_lora.read_transformer_loras`,
    :func:`.sd_lora.merge_sd_loras`)."""
    from .nucleusmoe import load_qwen3_vl_folder
    from .qwen_image_edit import load_image_processor
    from .sana_lora import read_transformer_loras
    from .sd_lora import merge_sd_loras
    diffusers = require("diffusers")
    directory = Path(directory)
    index, sched = check_bria_fibo2_folder(directory)
    loras = read_transformer_loras(lora, "Bria FIBO 2", "a Bria FIBO 2 folder", PIPELINE,
                                   flux_check=False) if lora else []
    image_processor = load_image_processor(directory)
    model = load_qwen3_vl_folder(BriaFibo2, directory, index, sched, diffusers.BriaFibo2Transformer2DModel,
                                 diffusers.AutoencoderKLFlux2, device, dtype, progress, needs_template=False,
                                 pipeline=PIPELINE, image_processor=image_processor)
    merge_sd_loras(model, loras)
    return model


def text_to_image(model: BriaFibo2, prompts: Union[str, Sequence[str]], *, render_text_images: bool = True,
                  fonts: Optional[Sequence[str]] = None, **options) -> torch.Tensor:
    """Images of a Bria FIBO 2 folder for ``prompts`` (JSON captions or short descriptions) as ``BriaFibo2Pipeline``
    (module docstring) with any diffkit sampler: :func:`.chroma.text_to_image` (sampler / grid both None: flow Euler
    on the pipeline's sigmas, 30 steps; guidance_scale (default 5.0) / negative_prompt (default the null caption);
    latents: z (B, C, h, w), the pipeline's ``latents=``; height / width: default 128 f, multiples of 2 f;
    render_text_images / fonts: the images of the captions' text; output_range, return_latents)."""
    from .chroma import text_to_image as flow_text_to_image
    guide = {"render_text_images": render_text_images, "fonts": fonts}
    return flow_text_to_image(model, prompts, guide=guide, **options)


def check_edit_prompts(prompts: Sequence[str]) -> None:
    """One line for an edit prompt the pipeline refuses (its ``check_inputs``): a JSON object without an
    ``"edit_instruction"`` key, or whose ``"structured_caption"`` is not a caption (object or string) beside the
    instruction alone."""
    for prompt in prompts:
        try:
            edit = json.loads(prompt)
        except json.JSONDecodeError:
            continue
        if not isinstance(edit, dict):
            continue
        if "edit_instruction" not in edit:
            raise DiffkitError(f"edit prompt {prompt[:60]!r} is not allowed; give the instruction, or a JSON caption "
                               f"of the result with an \"edit_instruction\" key ({PIPELINE}'s edit prompt)")
        if "structured_caption" in edit and (not isinstance(edit["structured_caption"], (dict, str)) or len(edit) > 2):
            raise DiffkitError(f"edit prompt {prompt[:60]!r} is not allowed; a \"structured_caption\" key holds the "
                               f"result's caption (an object or a string) beside the \"edit_instruction\" alone")


def edit_image(model: BriaFibo2, images, prompts: Union[str, Sequence[str]], *, mask=None,
               height: Optional[int] = None, width: Optional[int] = None, render_text_images: bool = True,
               fonts: Optional[Sequence[str]] = None, **options) -> torch.Tensor:
    """Images of ``prompts`` (edit instructions, or JSON captions with an ``"edit_instruction"``; one per output
    image) edited from the PIL ``images`` (one, or a list of up to five that every prompt edits together) as
    ``BriaFibo2Pipeline(image=...)`` (module docstring) with :func:`text_to_image`'s options (sampler, steps,
    guidance_scale, negative_prompt, seed, latents, ...). ``mask`` (a PIL image of the one image's size, white =
    regenerate, or an (H, W) tensor in [0, 1] of its 8-bit values): greyed out as the pipeline's ``grey_out``;
    height / width: default the trained size nearest the first image's aspect ratio (about (128 f)^2 pixels),
    multiples of 2 f."""
    from diffusers.pipelines.bria_fibo2.image_processor import BriaFibo2ImageProcessor
    from PIL import Image
    from .chroma import text_to_image as flow_text_to_image
    from .stable_diffusion import prompt_list
    images = list(images) if isinstance(images, (list, tuple)) else [images]
    if not 1 <= len(images) <= MAX_IMAGES or not all(isinstance(i, Image.Image) for i in images):
        raise DiffkitError(f"images={images!r} is not allowed; give a PIL image or a list of 1 to {MAX_IMAGES} "
                           f"({PIPELINE}'s image=)")
    if isinstance(mask, torch.Tensor) and mask.ndim == 2:  # (H, W) in [0, 1], diffkit edit's: its 8-bit values
        mask = Image.fromarray((mask.float().cpu().clamp(0, 1) * 255).round().to(torch.uint8).numpy(), mode="L")
    if mask is not None and (len(images) != 1 or not isinstance(mask, Image.Image) or mask.size != images[0].size):
        raise DiffkitError(f"mask is not allowed here; give one mask (PIL, or an (H, W) tensor in [0, 1]) of the one "
                           f"image's size {images[0].size} ({PIPELINE} greys it out of a single image)")
    prompts = prompt_list(prompts)
    check_edit_prompts(prompts)
    f = model.vae_scale_factor
    processor = BriaFibo2ImageProcessor(vae_scale_factor=2 * f)
    area = (DEFAULT_SAMPLE_SIZE * f) ** 2
    if height is None and width is None:
        width, height = processor.get_image_size(images[0].width / images[0].height, area=area)
    height, width = height or DEFAULT_SAMPLE_SIZE * f, width or DEFAULT_SAMPLE_SIZE * f
    model.latent_shape(1, height, width)  # (the size check first)
    crops, seen = processor.preprocess(images, height=height, width=width, mask=mask, area=area,
                                       text_encoder_image_size=TEXT_ENCODER_IMAGE_SIZE)
    references = [model.encode(crop.contiguous()) for crop in crops]
    guide = {"images": seen, "references": references, "render_text_images": render_text_images, "fonts": fonts}
    return flow_text_to_image(model, prompts, height=height, width=width, guide=guide, **options)


__all__ = ["BriaFibo2", "BriaFibo2Net", "load_bria_fibo2", "is_bria_fibo2_folder", "check_bria_fibo2_folder",
           "text_to_image", "edit_image", "cleaned_prompt", "text_images", "GUIDANCE", "STEPS"]
