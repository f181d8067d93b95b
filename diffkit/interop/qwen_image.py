"""A Qwen-Image diffusers folder (``QwenImagePipeline`` / ``QwenImageImg2ImgPipeline`` / ``QwenImageInpaintPipeline``,
diffusers 0.42.1), sampled and edited with any diffkit sampler.

Qwen-Image (Qwen team, Wu et al. 2025, "Qwen-Image Technical Report") is a rectified-flow MMDiT
(``QwenImageTransformer2DModel``; x_s = (1 - s) x_0 + s eps, velocity u = eps - x_0, Esser et al. 2024, eq. 1) on
the latents of a causal 3-D VAE (``AutoencoderKLQwenImage``, Wan's), conditioned on the last hidden states of a
Qwen2.5-VL language model (``Qwen2_5_VLForConditionalGeneration``). Everything FLUX.1-shaped is :mod:`.flux`'s,
reused through :class:`QwenImage` (a :class:`.flux.Flux`): the 2 x 2 latent packing (:func:`.flux.pack_latents`), the
random draws (z in (B, C, h, w) from sample i's generator, the pipeline's (B, 1, C, h, w) draw packed), the grid
(``set_timesteps(sigmas=linspace(1, 1/N, N), mu)`` with mu = ``calculate_shift`` of the packed sequence length,
:meth:`.flux.Flux.scheduler_grid`; Qwen-Image's ``shift_terminal`` stretch is the scheduler's own), flow Euler
(``ddim``) as the pipeline's step and img2img's ``get_timesteps`` cut. What is Qwen-Image's own:

* prompts (``_get_qwen_prompt_embeds``): each put in the pipeline's chat template (:data:`PROMPT_TEMPLATE`),
  tokenised padded to the batch's longest (at most 1024 + 34 tokens), the language model's **last** hidden states
  under the attention mask, of which each prompt keeps its real tokens less the first 34 (the template's system
  part, :data:`TEMPLATE_DROP`, a fixed count as there); re-padded with zeros to the longest kept length, its mask
  1 on the kept tokens; cut to ``max_sequence_length`` (default 512, at most 1024). A batch whose mask is all ones
  passes no mask (``encode_prompt``).
* the transformer call: packed latents, ``timestep`` t / 1000 (the sigma), ``encoder_hidden_states_mask``,
  ``img_shapes`` [(1, h/2, w/2)] per sample (its 3-D RoPE); no pooled text, no guidance embedding.
* guidance ("true CFG", ``true_cfg_scale``, default 4.0): only with a negative prompt (the pipeline's
  ``do_true_cfg``), u = u_n + s (u_c - u_n) rescaled per token to the conditional prediction's norm
  (:func:`diffkit.guidance.norm_matched_cfg`), the negative prompt encoded as the prompts with its own mask.
* the VAE: latents normalised per channel, z = (E(x) - mean) / std, decoded x = D(z std + mean) on one frame
  (the (B, C, 1, h, w) axis), f = 2^len(temperal_downsample); defaults 50 steps, 1024 x 1024 (128 f).
* img2img (``QwenImageImg2ImgPipeline``: strength 0.6) and inpainting (``QwenImageInpaintPipeline``: strength 0.6,
  FLUX.1's replacement loop) through :func:`.flow_latents.edit_latents`, as Chroma's.

Refused in one line before any weight is read (:func:`check_qwen_image_folder`): another pipeline class, a
missing component or one of another class, a transformer with a guidance embedding, ``zero_cond_t`` (Qwen-Image-Edit-
2511's, driven on a ``QwenImageEditPlusPipeline`` folder alone: :mod:`.qwen_image_edit`), ``use_additional_t_cond`` or
``use_layer3d_rope`` (Qwen-Image-Layered's, driven on a ``QwenImageLayeredPipeline`` folder alone, which needs both:
:mod:`.qwen_image_layered`) or whose input is not 4 x the VAE's ``z_dim``, a scheduler option the flow Euler loop does
not take.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from ..errors import DiffkitError, check_choice, read_json_object
from ..guidance import pipeline_scale
from . import model_dtype, require
from .chroma import Chroma
from .flow_latents import FrameVAE, frozen_on, load_flow_parts
from .flux import check_flux_scheduler, pack_latents, unpack_latents

# .qwen_image_edit's (a processor/ too)
EDIT_PIPELINES = ("QwenImageEditPipeline", "QwenImageEditPlusPipeline", "QwenImageEditInpaintPipeline")
LAYERED_PIPELINE = "QwenImageLayeredPipeline"  # .qwen_image_layered's, its transformer's config keys (both true)
LAYERED_TRANSFORMER = ("use_layer3d_rope", "use_additional_t_cond")
QWEN_IMAGE_PIPELINES = ("QwenImagePipeline", "QwenImageImg2ImgPipeline", "QwenImageInpaintPipeline") + EDIT_PIPELINES \
    + (LAYERED_PIPELINE,)
QWEN_IMAGE_CLASSES = {"transformer": ("QwenImageTransformer2DModel",), "vae": ("AutoencoderKLQwenImage",),
                      "text_encoder": ("Qwen2_5_VLForConditionalGeneration",),
                      "tokenizer": ("Qwen2Tokenizer", "Qwen2TokenizerFast"),
                      "scheduler": ("FlowMatchEulerDiscreteScheduler",)}
REQUIRED = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")
PROMPT_TEMPLATE = ("<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, "
                   "text, spatial relationships of the objects and background:<|im_end|>\n<|im_start|>user\n{}"
                   "<|im_end|>\n<|im_start|>assistant\n")  # QwenImagePipeline.prompt_template_encode
TEMPLATE_DROP = 34  # its prompt_template_encode_start_idx: the template tokens dropped from every prompt
TOKENIZER_MAX_LENGTH = 1024  # its tokenizer_max_length (the most max_sequence_length takes)
MAX_SEQUENCE_LENGTH = 512  # __call__'s default max_sequence_length
QWEN_IMAGE_TRUE_CFG = 4.0  # __call__'s default true_cfg_scale
QWEN_IMAGE_STEPS = 50  # its default num_inference_steps
QWEN_IMAGE_STRENGTH = 0.6  # QwenImageImg2ImgPipeline's / QwenImageInpaintPipeline's default strength
UNDRIVEN = ("guidance_embeds", "zero_cond_t", "use_additional_t_cond", "use_layer3d_rope")


class QwenImageNet(torch.nn.Module):
    """``net(z, t, context, mask=None, null_context=None, null_mask=None)`` over a ``QwenImageTransformer2DModel`` on
    unpacked latents z (B, C, h, w): packed, ``timestep`` t / 1000, the text states and mask, ``img_shapes``; with
    ``scale`` s > 1 and the negative prompt's ``null_context`` the pipeline's true CFG on the packed predictions
    (:func:`diffkit.guidance.norm_matched_cfg`: its norms run over the packed channels, one per 2 x 2 patch); the
    velocity unpacked, in z's dtype. ``reference`` (B or 1, C, h', w'), or a list of them: an edit's image latents,
    packed after z's tokens in order, each with its own ``img_shapes`` entry, the prediction kept on z's tokens
    (QwenImageEditPipeline's; QwenImageEditPlusPipeline's several images)."""

    references_first = False  # an edit's reference tokens after z's (Qwen-Image 2.1's: before, .qwen_image21)

    def __init__(self, transformer, scale: float = 1.0):
        super().__init__()
        self.model, self.scale = transformer, float(scale)

    def text(self, packed, context, mask) -> tuple:
        """(context, mask) in the model's dtype, expanded to ``packed``'s batch."""
        if mask is not None:
            mask = mask.to(packed.device).expand(packed.shape[0], -1)
        return context.to(model_dtype(self.model)).expand(packed.shape[0], -1, -1), mask

    def _call(self, packed, timestep, context, mask, shapes, controls=None):
        context, mask = self.text(packed, context, mask)
        return self.model(hidden_states=packed, timestep=timestep, encoder_hidden_states=context,
                          encoder_hidden_states_mask=mask, img_shapes=shapes, controlnet_block_samples=controls,
                          return_dict=False, **self.call_inputs(packed))[0]

    def call_inputs(self, packed) -> dict:
        """More transformer keywords (none; Qwen-Image-Layered's ``additional_t_cond``: :mod:`.qwen_image_layered`)."""
        return {}

    def pack(self, z: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) latents (the noisy ones, or an edit's reference) -> the transformer's tokens: 2 x 2 patches
        (:func:`.flux.pack_latents`; Qwen-Image 2.1's: a flatten, :class:`.qwen_image21.QwenImage21Net`)."""
        return pack_latents(z)

    def unpack(self, tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """The inverse of :meth:`pack` for latents h x w."""
        return unpack_latents(tokens, h, w)

    def image_shape(self, h: int, w: int) -> tuple:
        """The ``img_shapes`` entry (frames, rows, columns of tokens) of latents h x w."""
        return (1, h // 2, w // 2)

    def packed(self, x: torch.Tensor) -> tuple:
        """(tokens, one sample's ``img_shapes``) of the noisy latents x (B, C, h, w): :meth:`pack`,
        [:meth:`image_shape`] (Qwen-Image-Layered's frames: :class:`.qwen_image_layered.QwenImageLayeredNet`)."""
        return self.pack(x), [self.image_shape(x.shape[2], x.shape[3])]

    def unpacked(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The velocity of x's shape from its tokens ``out``: :meth:`unpack`."""
        return self.unpack(out, x.shape[2], x.shape[3])

    def referenced(self, packed: torch.Tensor, shape: list, reference) -> tuple:
        """(tokens, ``img_shapes``) of the noisy tokens ``packed`` (one sample's ``img_shapes`` ``shape``) with an
        edit's reference latents (one, or a list): each packed, with its own ``img_shapes`` entry, after z's in order
        (Qwen-Image-Edit's), or before them with ``references_first`` (Qwen-Image 2.1's condition images)."""
        refs = list(reference) if isinstance(reference, (list, tuple)) else [reference]
        b = packed.shape[0]
        tokens = [self.pack(r.to(packed)).expand(b, -1, -1) for r in refs]
        entries = [self.image_shape(r.shape[2], r.shape[3]) for r in refs]
        if self.references_first:
            return torch.cat(tokens + [packed], dim=1), [entries + shape] * b
        return torch.cat([packed] + tokens, dim=1), [shape + entries] * b

    def combine(self, cond: torch.Tensor, uncond: torch.Tensor) -> torch.Tensor:
        """The guided prediction of the two passes: the pipeline's true CFG rescaled to the conditional norm per token
        (:func:`diffkit.guidance.norm_matched_cfg`; Qwen-Image 2.1's and Layered's: plain)."""
        from ..guidance import norm_matched_cfg
        return norm_matched_cfg(cond, uncond, self.scale)

    def residuals(self, packed, timestep, context, mask, shapes, t, control) -> Optional[list]:
        """A ControlNet's ``controlnet_block_samples`` (:class:`.qwen_image_controlnet.QwenImageControlledNet`)."""
        raise DiffkitError("cond['control'] needs a Qwen-Image ControlNet (qwen_image_controlnet.controlled)")

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor = None, mask: torch.Tensor = None,
                null_context: torch.Tensor = None, null_mask: torch.Tensor = None,
                reference: torch.Tensor = None, control: torch.Tensor = None) -> torch.Tensor:
        """``control``: a ControlNet's control latents (:mod:`.qwen_image_controlnet`), its residuals computed once
        on the prompt's states and given to both true-CFG passes (QwenImageControlNetPipeline's)."""
        if context is None:
            raise DiffkitError("a Qwen-Image transformer needs cond {'context'} (QwenImage.prompt_guidance)")
        if control is not None and reference is not None:
            raise DiffkitError("a ControlNet with a Qwen-Image-Edit reference image is not supported (diffusers has "
                               "no Qwen-Image-Edit ControlNet pipeline)")
        dtype, b = model_dtype(self.model), x.shape[0]
        t = torch.as_tensor(t, device=x.device, dtype=torch.float32).reshape(-1).expand(b)
        (packed, shape), timestep = self.packed(x.to(dtype)), t.to(dtype) / 1000
        tokens, shapes = packed.shape[1], [shape] * b
        controls = None if control is None else self.residuals(packed, timestep, context, mask, shapes, t, control)
        if reference is not None:  # Qwen-Image-Edit's: the input images' tokens after the noisy ones (.qwen_image_edit)
            packed, shapes = self.referenced(packed, shapes[0], reference)
        out = self._call(packed, timestep, context, mask, shapes, controls)[:, :tokens]
        if self.scale > 1 and null_context is not None:
            out = self.combine(out, self._call(packed, timestep, null_context, null_mask, shapes, controls)[:, :tokens])
        return self.unpacked(out, x).to(x.dtype)


@dataclass
class QwenImage(FrameVAE, Chroma):
    """The loaded components of a Qwen-Image folder (:func:`load_qwen_image`): FLUX.1's fields with the Qwen2.5-VL
    model as ``text_encoder`` (``text_encoder_2`` / ``tokenizer_2`` None); the packing, the size's shift and the grid
    are :class:`.flux.Flux`'s, the real-CFG scale check and the edit loop :class:`.chroma.Chroma`'s, the prompts,
    network, guidance and the VAE's scale and normalisation Qwen-Image's."""

    guidance_hint = f"true CFG for > 1 with a negative prompt, the pipeline's default {QWEN_IMAGE_TRUE_CFG}"
    default_guidance = QWEN_IMAGE_TRUE_CFG  # prompt_guidance's default scale (Qwen-Image 2.1's: 1.0, .qwen_image21)
    pipeline = "QwenImagePipeline"  # (named in prompt_guidance's refusals)
    default_steps = QWEN_IMAGE_STEPS
    net_class = QwenImageNet  # the network over the transformer (.nucleusmoe's subclass negates its output)
    # (steps, strength, true-CFG scale (None: 4.0), max_sequence_length) of QwenImageImg2ImgPipeline and
    # QwenImageInpaintPipeline (the same), for .chroma.image_to_image
    img2img_defaults = inpaint_defaults = (QWEN_IMAGE_STEPS, QWEN_IMAGE_STRENGTH, None, MAX_SEQUENCE_LENGTH)

    @property
    def vae_scale_factor(self) -> int:
        """f = 2^len(temperal_downsample) (the pipeline's; 8 for Qwen-Image)."""
        return 2 ** len(self.vae.config.temperal_downsample)

    @property
    def image_channels(self) -> int:
        return int(self.vae.config.input_channels)

    def latent_shape(self, batch: int, height: Optional[int] = None, width: Optional[int] = None) -> tuple:
        """:meth:`.flux.Flux.latent_shape` (default 128 f, multiples of 2 f) with C = in_channels / 4 (the
        transformer's ``out_channels`` is the unpacked C here)."""
        shape = super().latent_shape(batch, height, width)
        return (batch, int(self.transformer.config.in_channels) // 4, *shape[2:])

    def network(self) -> torch.nn.Module:
        return self.net_class(self.transformer)

    def encode_prompts(self, prompts: Sequence[str], max_sequence_length: int = MAX_SEQUENCE_LENGTH) -> tuple:
        """(context (B, L, d), mask (B, L) or None) as the pipeline's ``encode_prompt`` (module docstring): the
        templated prompts' last hidden states, the template's first 34 tokens dropped, zero-padded, cut to
        ``max_sequence_length``; mask None where every kept token is real."""
        from .stable_diffusion import prompt_list
        if isinstance(max_sequence_length, bool) or not isinstance(max_sequence_length, int) \
                or not 1 <= max_sequence_length <= TOKENIZER_MAX_LENGTH:
            raise DiffkitError(f"max_sequence_length={max_sequence_length!r} is not allowed; allowed: "
                               f"1..{TOKENIZER_MAX_LENGTH} (QwenImagePipeline's)")
        texts = [PROMPT_TEMPLATE.format(p) for p in prompt_list(prompts)]
        tokens = self.tokenizer(texts, max_length=TOKENIZER_MAX_LENGTH + TEMPLATE_DROP, padding=True,
                                truncation=True, return_tensors="pt").to(self.device)
        return self.kept_states(tokens, TEMPLATE_DROP, max_sequence_length)

    def kept_states(self, tokens, drop: int, max_sequence_length: Optional[int], **inputs) -> tuple:
        """(context, mask or None) of the language model's last hidden states on ``tokens`` (and ``inputs``: an
        edit's image) as ``_get_qwen_prompt_embeds``: each prompt's real tokens less the first ``drop``, zero-padded
        to the longest, cut to ``max_sequence_length`` (None: not cut, QwenImageEditPipeline's)."""
        with torch.no_grad():
            states = self.text_encoder(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask,
                                       output_hidden_states=True, **inputs).hidden_states[-1]
        kept = [s[m.bool()][drop:] for s, m in zip(states, tokens.attention_mask)]
        length = max(k.shape[0] for k in kept)
        context = torch.stack([torch.cat([k, k.new_zeros(length - k.shape[0], k.shape[1])]) for k in kept])
        mask = torch.stack([(torch.arange(length, device=self.device) < k.shape[0]).long() for k in kept])
        context, mask = context[:, :max_sequence_length].to(self.text_encoder.dtype), mask[:, :max_sequence_length]
        return context, (None if bool(mask.all()) else mask)

    def prompt_guidance(self, prompts, h: int, w: int, guidance_scale: Optional[float] = None,
                        negative_prompt=None, max_sequence_length: int = MAX_SEQUENCE_LENGTH,
                        convention: str = "diffusers", ip_adapter=None, images=None, reference=None) -> tuple:
        """(denoiser, cond) at latents h x w: the prompts' states (and mask), with a negative prompt (one, or one per
        prompt) and a diffusers-convention scale s > 1 (``guidance_scale``, default 4.0; ``convention="seed"`` reads
        W, s = 1 + W) the pipeline's true CFG (:class:`QwenImageNet`); without a negative prompt one unguided call
        (the pipeline's default), and a scale given > 1 there, or a negative prompt with s <= 1, is refused in one
        line (the pipeline would ignore it). ``ip_adapter``: refused (QwenImagePipeline has no IP-Adapter loader).
        ``images`` / ``reference``: an edit's prompt images and image latents (:mod:`.qwen_image_edit`)."""
        from ..denoiser import Denoiser
        from .stable_diffusion import negative_prompts
        if ip_adapter is not None:
            raise DiffkitError("an IP-Adapter is not allowed for a Qwen-Image folder (QwenImagePipeline loads none)")
        check_choice("convention", convention, ["diffusers", "seed"])
        self.check_guidance_scale(guidance_scale)
        scale = self.default_guidance if guidance_scale is None else float(guidance_scale)
        diffusers_scale = pipeline_scale(guidance_scale, self.default_guidance, convention)
        if negative_prompt is None and guidance_scale is not None and diffusers_scale > 1:
            raise DiffkitError(f"guidance_scale={scale:g} ({convention} convention) without a negative prompt is not "
                               f"allowed: {self.pipeline}'s true CFG runs only with one (even \" \"); give a "
                               f"negative prompt or drop the scale")
        if negative_prompt is not None and diffusers_scale <= 1:
            raise DiffkitError(f"a negative prompt with guidance_scale={scale:g} ({convention} convention) is not "
                               f"allowed: it feeds only true CFG (diffusers' scale > 1); raise the scale or drop it")
        seen = {} if images is None else {"images": images}
        context, mask = self.encode_prompts(prompts, max_sequence_length, **seen)
        cond, denoiser = {"context": context}, self.denoiser_for(h, w)
        if reference is not None:
            cond["reference"] = reference
        if mask is not None:
            cond["mask"] = mask
        if negative_prompt is None:
            return denoiser, cond
        null_context, null_mask = self.encode_prompts(negative_prompts(negative_prompt, context.shape[0]),
                                                      max_sequence_length, **seen)
        cond["null_context"] = null_context
        if null_mask is not None:
            cond["null_mask"] = null_mask
        guided = Denoiser(self.net_class(self.transformer, diffusers_scale), denoiser.schedule, "flow_prediction")
        guided.model = self.transformer
        return guided, cond


def is_qwen_image_folder(path: Union[str, Path]) -> bool:
    """True for a folder whose ``model_index.json`` names one of :data:`QWEN_IMAGE_PIPELINES`."""
    from .sd_xl import pipeline_class
    return pipeline_class(path) in QWEN_IMAGE_PIPELINES


def check_qwen_image_folder(directory) -> tuple:
    """(index, scheduler config) of a Qwen-Image folder that :func:`load_qwen_image` drives; anything else is a
    one-line DiffkitError (module docstring), from the JSON files alone."""
    from .pixart import check_classes, named_index
    directory = Path(directory)
    index = named_index(directory, QWEN_IMAGE_PIPELINES, "Qwen-Image")
    edit = index.get("_class_name") in EDIT_PIPELINES
    check_classes(directory, index, REQUIRED + ("processor",) * edit, "Qwen-Image",
                  {**QWEN_IMAGE_CLASSES, **({"processor": ("Qwen2VLProcessor",)} if edit else {})})
    config = read_json_object(directory / "transformer" / "config.json", "transformer config")
    driven = {"QwenImageEditPlusPipeline": ("zero_cond_t",),  # Qwen-Image-Edit-2511's, Qwen-Image-Layered's
              LAYERED_PIPELINE: LAYERED_TRANSFORMER}.get(index.get("_class_name"), ())
    for key in UNDRIVEN:
        if config.get(key, False) and key not in driven:
            raise DiffkitError(f"{directory}'s transformer has {key}={config[key]!r}, which QwenImagePipeline does "
                               f"not drive (a Qwen-Image-Edit-2511 / Layered model); allowed: {key}=false"
                               + (", or a QwenImageEditPlusPipeline folder (2511's)" if key == "zero_cond_t" else
                                  f", or a {LAYERED_PIPELINE} folder" if key in LAYERED_TRANSFORMER else ""))
    if index.get("_class_name") == LAYERED_PIPELINE:
        from .qwen_image_layered import check_layered_transformer
        check_layered_transformer(directory, config)
    vae = read_json_object(directory / "vae" / "config.json", "vae config")
    latents = int(vae.get("z_dim", 16))
    channels = (config.get("in_channels", 64), config.get("out_channels", 16))
    if channels[0] != 4 * latents or channels[1] not in (None, latents):
        raise DiffkitError(f"{directory}'s transformer has in_channels, out_channels = {channels[0]!r}, "
                           f"{channels[1]!r}; allowed: {4 * latents}, {latents} (4 x and 1 x the VAE's z_dim)")
    return index, check_flux_scheduler(directory, "QwenImagePipeline")


def load_qwen_image(directory: Union[str, Path], device="cpu", dtype: torch.dtype = torch.float32,
                    progress: bool = True, lora=None) -> QwenImage:
    """Load a Qwen-Image diffusers folder (never downloads, never unpickles); what diffkit does not drive is refused
    in one line before any weight is read (:func:`check_qwen_image_folder`). ``lora``: LoRA files (paths or (path,
    scale) pairs) in the formats ``QwenImageLoraLoaderMixin`` loads (:mod:`.qwen_image_lora`), read and checked
    first, fused as ``load_lora_weights`` + ``fuse_lora(lora_scale=scale)`` (:func:`.sd_lora.merge_sd_loras`)."""
    from .qwen_image_lora import read_qwen_image_loras, transformer_loras
    from .sd_lora import merge_sd_loras
    diffusers = require("diffusers")
    directory = Path(directory)
    index, sched = check_qwen_image_folder(directory)
    loras = read_qwen_image_loras(lora) if lora else []
    parts = load_flow_parts(directory, index, diffusers.QwenImageTransformer2DModel,
                            {"": "Qwen2_5_VLForConditionalGeneration"}, dtype, progress,
                            vae_cls=diffusers.AutoencoderKLQwenImage)
    device = frozen_on(parts, device)
    kind, more = QwenImage, {}
    if index.get("_class_name") == LAYERED_PIPELINE:  # processor/: its captions' (optional)
        from .qwen_image_edit import load_image_processor
        from .qwen_image_layered import QwenImageLayered
        kind = QwenImageLayered
        if (directory / "processor" / "preprocessor_config.json").is_file():
            more = {"image_processor": load_image_processor(directory)}
    if index.get("_class_name") in EDIT_PIPELINES:
        from .qwen_image_edit import QwenImageEdit, load_image_processor
        kind, more = QwenImageEdit, {"image_processor": load_image_processor(directory),
                                     "plus": index["_class_name"] == "QwenImageEditPlusPipeline"}
    model = kind(**parts, text_encoder_2=None, tokenizer_2=None, scheduler_config=sched, device=device,
                 dtype=dtype, **more)
    width, text = model.transformer.config.joint_attention_dim, model.text_encoder.config.text_config.hidden_size
    if width != text:
        raise DiffkitError(f"{directory}: the transformer's joint_attention_dim={width} does not fit the text "
                           f"encoder's width {text}")
    merge_sd_loras(model, transformer_loras(loras, model.transformer))
    return model


def text_to_image(model: QwenImage, prompts: Union[str, Sequence[str]], *, controlnet=None, control_seed: int = 0,
                  control_posterior: str = "sample", control_rows=None, control_mask=None, **options) -> torch.Tensor:
    """Images of a Qwen-Image folder for ``prompts`` as ``QwenImagePipeline`` (module docstring) with any diffkit
    sampler: :func:`.chroma.text_to_image`'s loop with Qwen-Image's prompts, network and true CFG.

    sampler / grid: both None: the pipeline's loop, flow Euler (``ddim``) on its sigmas (50 steps by default);
    otherwise as :func:`.flux.text_to_image`. guidance_scale (``true_cfg_scale``, default 4.0, diffusers' convention
    unless ``convention="seed"``) / negative_prompt: :meth:`QwenImage.prompt_guidance`. latents: unpacked z at
    s = 1 (B, C, h, w) (the pipeline's ``latents=`` is :func:`.flux.pack_latents` of it), default N(0, I) from
    per-sample ``seed + i``; height / width: default 128 f, multiples of 2 f; max_sequence_length (default 512);
    output_range, return_latents; the rest: passed to :func:`diffkit.sample`.

    controlnet: a Qwen-Image ControlNet with its control images and options (a
    :class:`~diffkit.interop.controlnet.ControlNets` of one ``QwenImageControlNetModel``, given once per control
    image), as QwenImageControlNetPipeline (:mod:`.qwen_image_controlnet`); ``control_posterior``: the control
    image's VAE latents, ``"sample"`` (sample i's from the generator ``control_seed + i``) or ``"mean"``;
    ``control_rows``: with one control image per prompt, each sample's (default: sample i, image i).
    ``control_mask`` (1 or B, 1, H, W) at the output size, 1 = repaint: an inpainting ControlNet's, as
    QwenImageControlNetInpaintPipeline's ``control_mask`` (the control image is the image to inpaint)."""
    from .chroma import text_to_image as flow_text_to_image
    if control_mask is not None and controlnet is None:
        raise DiffkitError("control_mask goes with an inpainting ControlNet (controlnet=); give both or neither")
    if controlnet is not None:
        from functools import partial

        from .qwen_image_controlnet import check_qwen_control_use, controlled
        check_qwen_control_use(kind=None if type(model) is QwenImage else "Qwen-Image-Edit")
        options["control"] = partial(controlled, model, controlnet, seed=control_seed, posterior=control_posterior,
                                     control_rows=control_rows, mask=control_mask)
    return flow_text_to_image(model, prompts, **options)


def image_to_image(model: QwenImage, images: torch.Tensor, prompts: Union[str, Sequence[str]],
                   strength: Optional[float] = None, **options) -> torch.Tensor:
    """SDEdit of ``images`` (B, 3, H, W) in [-1, 1] towards ``prompts`` as ``QwenImageImg2ImgPipeline`` (Meng et al.
    2022, Alg. 1 on the latents), or with ``mask`` (B or 1, 1, H, W; 1 = repaint) inpainting as
    ``QwenImageInpaintPipeline``: both are FLUX.1's loops (``FluxImg2ImgPipeline`` / ``FluxInpaintPipeline``: image
    i's posterior drawn from its generator ``seed + i`` then its noise, noised to the first sigma of the strength's
    ``get_timesteps`` cut; inpainting puts the kept region back at ``scale_noise(z, next sigma, noise)`` after every
    step), run by :func:`.chroma.image_to_image` (:func:`.flow_latents.edit_latents`) with Qwen-Image's encoding
    (:meth:`QwenImage.encode`), prompts and true CFG; defaults 50 steps, strength 0.6, true CFG 4.0 with a
    negative prompt. ``options``: :func:`.chroma.image_to_image`'s (sampler, steps, guidance_scale, convention,
    negative_prompt, posterior, seed, generator, max_sequence_length, output_range, return_latents, ...)."""
    from .chroma import image_to_image as flow_image_to_image
    return flow_image_to_image(model, images, prompts, strength, **options)


__all__ = ["QwenImage", "QwenImageNet", "load_qwen_image", "is_qwen_image_folder", "check_qwen_image_folder",
           "text_to_image", "image_to_image", "QWEN_IMAGE_TRUE_CFG", "QWEN_IMAGE_STEPS", "PROMPT_TEMPLATE",
           "TEMPLATE_DROP"]
