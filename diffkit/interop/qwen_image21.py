"""A Qwen-Image 2.1 diffusers folder (``QwenImage21Pipeline``, diffusers 0.42.1), sampled with any diffkit sampler.

Qwen-Image 2.1 (Qwen team 2026) keeps Qwen-Image's rectified flow (x_s = (1 - s) x_0 + s eps, velocity u = eps - x_0,
Esser et al. 2024, eq. 1), its per-channel latent normalisation z = (E(x) - mean) / std with one-frame decoding and
its flow Euler loop on ``set_timesteps(sigmas, mu)`` (``calculate_shift``, the scheduler's dynamic shift); diffkit
runs it as a :class:`.qwen_image.QwenImage` (prompts' kept states :meth:`~.qwen_image.QwenImage.kept_states`, the
guidance checks of :meth:`~.qwen_image.QwenImage.prompt_guidance`, the VAE code, :func:`.chroma.text_to_image`'s
loop). What 2.1 changes, as the pipeline does it:

* the text encoder is a Qwen3-VL model (``Qwen3VLForConditionalGeneration``, its ``Qwen3VLProcessor`` in
  ``processor/``; diffkit reads the processor's tokenizer and chat template). Each prompt ("" read as " ") is put in
  the pipeline's template (:data:`PROMPT_TEMPLATE`, system message :data:`SYSTEM_PROMPT`), tokenised padded on the
  **left** to the batch's longest (no length limit: no ``max_sequence_length``); the language model's last decoder
  layer's output **before** its final RMSNorm (the pipeline's forward hook on the norm) under the attention mask;
  each prompt keeps its real tokens less the first ``len(apply_chat_template(system message))`` (the system part),
  re-padded with zeros on the right, mask None where all are real.
* the transformer (``QwenImage21Transformer2DModel``: one stream of text then image tokens, block-causal attention,
  text modulated from t = 0 under ``causal_condition``) takes the latents **unpatched**, one token per latent pixel
  (``patch_size`` 1, ``_pack_latents`` a flatten: (B, C, h, w) -> (B, h w, C)), ``timestep`` t / 1000,
  ``img_shapes`` [(1, h, w)] and ``img_mask``: False on every text position, then h w / 4 True slots (one per
  2 x 2 group of latent tokens) for the image; its output's last h w tokens are the velocity. Its 3-D RoPE and
  masks are the transformer's own.
* the VAE (``AutoencoderKLQwenImage21``, 64 latent channels at 16x, four image channels: RGBA) at the pipeline's
  fixed f = 16; sizes multiples of 2 f = 32 (the pipeline floors others), default 1024 x 1024 (``output_resolution``).
* the grid: the folder's ``sample_sigmas`` (model_index.json; its length is the step count; ``steps`` of another
  length: linspace(1, 1/N, N), the pipeline's grid without them, as its ``sigmas=``), else linspace(1, 1/N, N) with
  N = 40 by default; mu = ``calculate_shift`` of the **unpacked** length h w.
* guidance: plain CFG u = u_n + s (u_c - u_n) (Ho & Salimans 2022, eq. 6 in diffusers' convention; no norm
  rescaling), only with a negative prompt and s = ``true_cfg_scale`` > 1 (default 1.0: unguided, as 2.1 is meant to
  be sampled); a scale > 1 without a negative prompt, or a negative prompt at s <= 1, is refused in one line.

The pipeline caches the text tokens' keys and values after its first step (``use_kv_cache``, valid as they are
modulated at t = 0); diffkit recomputes them at every call (its samplers evaluate the net at any time, in any order),
which agrees with the cached loop to float rounding. Condition images (the pipeline's ``image=``): :func:`edit_image`
(each in RGBA at its ratio on ``output_resolution``^2 pixels; seen by the prompt over white in its vision slots, its
four channels' latents in the transformer's stream before z_t's). Not driven, one line each: ``max_sequence_length``,
IP-Adapters, ControlNets. LoRA files: what the pipeline's ``QwenImageLoraLoaderMixin`` (Qwen-Image's) loads on the
transformer, fused as ``load_lora_weights`` + ``fuse_lora`` (:mod:`.qwen_image_lora`: diffusers / PEFT, ComfyUI /
musubi ``diffusion_model.``, kohya ``lora_unet_`` keys; a kohya key diffusers re-dots as another module, 2.1's
``txt_in``, ``modulation`` and ``gate_layer`` ones: refused).
Refused before any weight is read (:func:`check_qwen_image21_folder`): another pipeline class, a missing component
or one of another class, a transformer ``patch_size`` other than 1 or channels other than the VAE's ``z_dim``, a
``context_in_dim`` other than the text encoder's width, a VAE whose ``scale_factor_spatial`` is not 16, malformed
``sample_sigmas``, a scheduler option the flow Euler loop does not take.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from ..errors import DiffkitError, read_json_object
from . import require
from .nucleusmoe import CLASSES as NUCLEUS_CLASSES, REQUIRED
from .qwen_image import QwenImage, QwenImageNet

PIPELINE = "QwenImage21Pipeline"
TRANSFORMER = "QwenImage21Transformer2DModel"
CLASSES = {**NUCLEUS_CLASSES, "transformer": (TRANSFORMER,), "vae": ("AutoencoderKLQwenImage21",)}  # its Qwen3-VL
SYSTEM_PROMPT = "Comprehend and analyze the provided prompt."  # QwenImage21Pipeline.sys_prompt
PROMPT_TEMPLATE = (f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n{{}}<|im_end|>\n"
                   f"<|im_start|>assistant\n")  # its prompt_template_t2i
STEPS, TRUE_CFG, RESOLUTION, VAE_FACTOR = 40, 1.0, 1024, 16  # __call__'s defaults; the pipeline's vae_scale_factor
SLOT = 4  # latent tokens per image slot of img_mask (a 2 x 2 group)
VISION = "<image{}><|vision_start|><|image_pad|><|vision_end|>"  # condition image k's, joined by " " before the prompt


def flatten_latents(z: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, h w, C), row-major tokens (``QwenImage21Pipeline._pack_latents``: 2.1 takes latents
    unpatched)."""
    return z.flatten(2).transpose(1, 2)


class QwenImage21Net(QwenImageNet):
    """``net(z, t, context, mask=None, null_context=None, null_mask=None, reference=None, slots=None)`` over a
    ``QwenImage21Transformer2DModel`` on latents z (B, C, h, w): flattened (:func:`flatten_latents`), ``timestep``
    t / 1000, the text states and mask, ``img_shapes`` [(1, h, w)], ``img_mask`` (text positions False, then h w / 4
    image slots True); the velocity is the output's last h w tokens. With ``scale`` s > 1 and ``null_context``: the
    pipeline's CFG u_n + s (u_c - u_n). Condition images: ``reference`` (a list of (1, C, h_k, w_k) latents) flattened
    **before** z's tokens, their ``img_shapes`` entries first, and ``slots`` (L0,) bool, True at the prompts' kept
    ``<|image_pad|>`` positions (the same in every prompt: the images precede the text), where the transformer drops
    their tokens (one slot per 2 x 2 group)."""

    references_first = True
    slots = None  # (set by forward for its calls)

    def _call(self, tokens, timestep, context, mask, shapes, controls=None):
        context, mask = self.text(tokens, context, mask)
        target = shapes[0][-1][1] * shapes[0][-1][2]
        text = torch.zeros(context.shape[:2], dtype=torch.bool, device=tokens.device)
        if self.slots is not None:
            if self.slots.shape[0] > text.shape[1]:
                raise DiffkitError(f"slots of {self.slots.shape[0]} positions do not fit prompt states of "
                                   f"{text.shape[1]} (QwenImage21.prompt_guidance builds both)")
            text[:, :self.slots.shape[0]] = self.slots.to(tokens.device)
        target_slots = torch.ones(tokens.shape[0], target // SLOT, dtype=torch.bool, device=tokens.device)
        out = self.model(hidden_states=tokens, timestep=timestep, encoder_hidden_states=context,
                         encoder_hidden_states_mask=mask, img_shapes=shapes,
                         img_mask=torch.cat([text, target_slots], dim=1), return_dict=False)[0]
        return out[:, -target:]

    def pack(self, z: torch.Tensor) -> torch.Tensor:
        return flatten_latents(z)

    def unpack(self, tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
        return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], h, w)

    def image_shape(self, h: int, w: int) -> tuple:
        return (1, h, w)

    def combine(self, cond: torch.Tensor, null: torch.Tensor) -> torch.Tensor:
        """u_n + s (u_c - u_n) (Ho & Salimans 2022, eq. 6 in diffusers' convention; no norm rescaling)."""
        return null + self.scale * (cond - null)

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor = None, mask: torch.Tensor = None,
                null_context: torch.Tensor = None, null_mask: torch.Tensor = None, reference=None,
                control=None, slots: torch.Tensor = None) -> torch.Tensor:
        """:meth:`.qwen_image.QwenImageNet.forward` with 2.1's tokens, condition images and CFG; ``control``: one
        line (not driven); ``reference`` and ``slots`` go together."""
        if control is not None:
            raise DiffkitError("a ControlNet is not supported for a Qwen-Image 2.1 folder (QwenImage21Pipeline "
                               "loads none)")
        if (reference is None) != (slots is None):
            raise DiffkitError("a Qwen-Image 2.1 condition image needs both cond['reference'] and cond['slots'] "
                               "(QwenImage21.prompt_guidance with images and reference gives both)")
        self.slots = slots
        try:
            return super().forward(x, t, context, mask, null_context, null_mask, reference)
        finally:
            self.slots = None


@dataclass
class QwenImage21(QwenImage):
    """The loaded components of a Qwen-Image 2.1 folder (:func:`load_qwen_image21`): Qwen-Image's fields (the
    Qwen3-VL model as ``text_encoder``, the processor's tokenizer as ``tokenizer``), ``chat_template`` the processor's,
    ``sample_sigmas`` the folder's (model_index.json; None: linspace); what 2.1 changes: module docstring."""

    chat_template: Optional[str] = None
    sample_sigmas: Optional[tuple] = None
    image_processor: object = None  # processor/'s PIL image processor (condition images; None: the folder has none)
    guidance_hint = f"CFG for > 1 with a negative prompt, the pipeline's default {TRUE_CFG}"
    default_guidance = TRUE_CFG
    pipeline = PIPELINE
    net_class = QwenImage21Net
    default_image_size = RESOLUTION
    max_sequence_length = None  # (the pipeline takes none: encode_prompts refuses one)

    @property
    def default_steps(self) -> int:
        """len(sample_sigmas) where the folder has them (the pipeline then ignores ``num_inference_steps``), else 40."""
        return len(self.sample_sigmas) if self.sample_sigmas else STEPS

    @property
    def vae_scale_factor(self) -> int:
        """16: the pipeline's fixed factor (checked against the VAE's ``scale_factor_spatial`` at load)."""
        return VAE_FACTOR

    @property
    def image_channels(self) -> int:
        return int(self.vae.config.out_channels)

    def latent_shape(self, batch: int, height: Optional[int] = None, width: Optional[int] = None) -> tuple:
        """(batch, in_channels, height / 16, width / 16); default 1024 x 1024, multiples of 32 (:meth:`.flux.Flux.
        latent_shape`'s checks, the latents unpatched)."""
        shape = super().latent_shape(batch, height, width)
        return (batch, int(self.transformer.config.in_channels), *shape[2:])

    def mu(self, h: int, w: int, steps: Optional[int] = None) -> float:
        """The pipeline's mu: ``calculate_shift`` of the unpacked sequence length h w."""
        from .flux import calculate_shift
        return calculate_shift(h * w, self.scheduler_config)

    def input_sigmas(self, steps: int):
        """The sigmas the pipeline gives ``set_timesteps``: the folder's ``sample_sigmas`` for their own step count,
        else linspace(1, 1/steps, steps)."""
        if self.sample_sigmas and steps == len(self.sample_sigmas):
            return list(self.sample_sigmas)
        return super().input_sigmas(steps)

    def system_tokens(self) -> int:
        """The count of leading tokens the pipeline drops (its ``_drop_idx``): the tokenised chat template of the
        system message alone."""
        message = [{"role": "system", "content": [{"type": "text", "text": SYSTEM_PROMPT}]}]
        ids = self.tokenizer.apply_chat_template(message, chat_template=self.chat_template, tokenize=True,
                                                 return_dict=False)
        return len(ids[0] if ids and isinstance(ids[0], list) else ids)

    def _tokens(self, prompts: Sequence[str], images=None) -> tuple:
        """(tokens, the text encoder's image inputs) of ``prompts`` in the pipeline's template, padded on the left;
        with condition ``images`` (PIL RGB) each prompt sees all of them: :data:`VISION` per image before the prompt,
        the processor's patches and ``<|image_pad|>`` repeated t h w / m^2 times
        (:func:`.qwen_image_edit.vision_inputs`), ``mm_token_type_ids`` 1 on those (as ``Qwen3VLProcessor`` gives)."""
        from .qwen_image_edit import vision_inputs
        if not images:
            texts = [PROMPT_TEMPLATE.format(p or " ") for p in prompts]
            return self.tokenizer(texts, padding=True, padding_side="left", return_tensors="pt").to(self.device), {}
        if self.image_processor is None:
            raise DiffkitError(f"this Qwen-Image 2.1 folder's processor/ has no preprocessor_config.json (the Qwen3-VL "
                               f"image processor's), which {PIPELINE}'s condition images need")
        seen = " ".join(VISION.format(i + 1) for i in range(len(images)))
        texts = [PROMPT_TEMPLATE.format(seen + (p or " ")) for p in prompts]
        tokens, inputs = vision_inputs(self, texts, list(images) * len(texts), padding_side="left")
        inputs["mm_token_type_ids"] = (tokens.input_ids == self.text_encoder.config.image_token_id).long()
        return tokens, inputs

    def encode_prompts(self, prompts: Sequence[str], max_sequence_length: Optional[int] = None,
                       images=None) -> tuple:
        """(context (B, L, d), mask (B, L) or None) as the pipeline's ``encode_prompt`` (module docstring), each
        prompt seeing the condition ``images`` (PIL RGB; None: text-to-image); ``max_sequence_length``: refused (the
        pipeline takes none)."""
        from .stable_diffusion import prompt_list
        if max_sequence_length is not None:
            raise DiffkitError(f"max_sequence_length={max_sequence_length!r} is not allowed for a Qwen-Image 2.1 "
                               f"folder ({PIPELINE} takes none: every prompt token is kept)")
        tokens, inputs = self._tokens(prompt_list(prompts), images)
        norm = getattr(self.text_encoder.model, "language_model", self.text_encoder.model).norm
        handle = norm.register_forward_hook(lambda module, args, output: args[0])  # the states before the last norm
        try:
            return self.kept_states(tokens, self.system_tokens(), None, **inputs)
        finally:
            handle.remove()

    def image_slots(self, images) -> torch.Tensor:
        """(L0,) bool: True at the kept prompt positions of the condition ``images``' ``<|image_pad|>`` tokens, up
        to the last (the pipeline's ``image_pad_mask``; the same for every prompt, as the images precede its text)."""
        tokens, _ = self._tokens([" "], images)
        kept = tokens.input_ids[0][tokens.attention_mask[0].bool()][self.system_tokens():]
        pads = kept == self.text_encoder.config.image_token_id
        return pads[:int(pads.nonzero().max()) + 1]

    def prompt_guidance(self, prompts, h: int, w: int, guidance_scale: Optional[float] = None,
                        negative_prompt=None, max_sequence_length: Optional[int] = None,
                        convention: str = "diffusers", ip_adapter=None, images=None, reference=None) -> tuple:
        """:meth:`.qwen_image.QwenImage.prompt_guidance` with 2.1's default scale 1.0 and plain CFG
        (:class:`QwenImage21Net`); ``images`` (PIL RGB, seen by every prompt and negative prompt) with ``reference``
        (their latents, :func:`edit_image`): the condition images, cond's ``slots`` from :meth:`image_slots`;
        ``ip_adapter``: refused (the pipeline loads none)."""
        if ip_adapter is not None:
            raise DiffkitError("an IP-Adapter is not allowed for a Qwen-Image 2.1 folder (QwenImage21Pipeline loads "
                               "none)")
        if (not images) != (reference is None):
            raise DiffkitError("Qwen-Image 2.1 condition images need both images (seen by the prompt) and reference "
                               "(their latents); edit_image gives both")
        denoiser, cond = super().prompt_guidance(prompts, h, w, guidance_scale, negative_prompt, max_sequence_length,
                                                 convention, images=images or None, reference=reference)
        if reference is not None:
            cond["slots"] = self.image_slots(images)
        return denoiser, cond


def is_qwen_image21_folder(path: Union[str, Path]) -> bool:
    """True for a folder whose ``model_index.json`` names ``QwenImage21Pipeline`` or its transformer."""
    from .flow_latents import names_pipeline
    return names_pipeline(path, "QwenImage21", TRANSFORMER)


def read_sample_sigmas(directory: Path, index: dict) -> Optional[tuple]:
    """model_index.json's ``sample_sigmas``: None, or a non-empty list of numbers in (0, 1] (one line otherwise)."""
    sigmas = index.get("sample_sigmas")
    if sigmas is None:
        return None
    if not isinstance(sigmas, list) or not sigmas or not all(
            isinstance(s, (int, float)) and not isinstance(s, bool) and 0 < s <= 1 for s in sigmas):
        raise DiffkitError(f"{directory}'s model_index.json has sample_sigmas={sigmas!r}; allowed: null or a "
                           f"non-empty list of numbers in (0, 1] (the sigmas before the final 0)")
    return tuple(float(s) for s in sigmas)


def check_qwen_image21_folder(directory) -> tuple:
    """(index, scheduler config) of a Qwen-Image 2.1 folder, checked from its JSON alone (module docstring)."""
    from .flux import check_flux_scheduler
    from .pixart import check_classes, named_index
    directory = Path(directory)
    index = named_index(directory, (PIPELINE,), "Qwen-Image 2.1")
    check_classes(directory, index, REQUIRED, "Qwen-Image 2.1", CLASSES)
    read_sample_sigmas(directory, index)
    config = read_json_object(directory / "transformer" / "config.json", "transformer config")
    if config.get("patch_size", 1) != 1:
        raise DiffkitError(f"{directory}'s transformer has patch_size={config['patch_size']!r}; allowed: 1 "
                           f"({PIPELINE} feeds the latents unpatched)")
    vae = read_json_object(directory / "vae" / "config.json", "vae config")
    z_dim = int(vae.get("z_dim", 64))
    channels = (config.get("in_channels", 64), config.get("out_channels", 64))
    if channels[0] != z_dim or (channels[1] or channels[0]) != z_dim:
        raise DiffkitError(f"{directory}'s transformer has in_channels, out_channels = {channels[0]!r}, "
                           f"{channels[1]!r}; allowed: {z_dim}, {z_dim} (the VAE's z_dim)")
    if vae.get("scale_factor_spatial", VAE_FACTOR) != VAE_FACTOR:
        raise DiffkitError(f"{directory}'s VAE has scale_factor_spatial={vae['scale_factor_spatial']!r}; allowed: "
                           f"{VAE_FACTOR} ({PIPELINE}'s fixed vae_scale_factor)")
    text = read_json_object(directory / "text_encoder" / "config.json", "text encoder config").get("text_config", {})
    if text.get("hidden_size", 4096) != config.get("context_in_dim", 4096):
        raise DiffkitError(f"{directory}: the transformer's context_in_dim={config.get('context_in_dim', 4096)} "
                           f"does not fit the text encoder's hidden size {text.get('hidden_size', 4096)}")
    return index, check_flux_scheduler(directory, PIPELINE)


def load_qwen_image21(directory: Union[str, Path], device="cpu", dtype: torch.dtype = torch.float32,
                      progress: bool = True, lora=None) -> QwenImage21:
    """Load a Qwen-Image 2.1 diffusers folder (never downloads, never unpickles): the transformer, VAE, Qwen3-VL
    model and the processor's tokenizer and chat template by :func:`.nucleusmoe.load_qwen3_vl_folder`; what diffkit
    does not drive is refused in one line before any weight is read (:func:`check_qwen_image21_folder`). ``lora``:
    LoRA files (paths or (path, scale) pairs) in the formats the pipeline's ``QwenImageLoraLoaderMixin`` loads
    (:mod:`.qwen_image_lora`), read and checked first, fused into the transformer as ``load_lora_weights`` +
    ``fuse_lora(lora_scale=scale)`` (:func:`.sd_lora.merge_sd_loras`: W0 + s (alpha / r) B A, Hu et al. 2021,
    eq. 3)."""
    from .nucleusmoe import load_qwen3_vl_folder
    from .qwen_image_edit import load_image_processor
    from .qwen_image_lora import read_qwen_image_loras, transformer_loras
    from .sd_lora import merge_sd_loras
    diffusers = require("diffusers")
    directory = Path(directory)
    index, sched = check_qwen_image21_folder(directory)
    loras = read_qwen_image_loras(lora, "Qwen-Image 2.1", PIPELINE) if lora else []
    images = load_image_processor(directory) if (directory / "processor" / "preprocessor_config.json").is_file() \
        else None  # (condition images only: edit_image refuses them without it)
    model = load_qwen3_vl_folder(QwenImage21, directory, index, sched, diffusers.QwenImage21Transformer2DModel,
                                 diffusers.AutoencoderKLQwenImage21, device, dtype, progress,
                                 sample_sigmas=read_sample_sigmas(directory, index), image_processor=images)
    merge_sd_loras(model, transformer_loras(loras, model.transformer, "Qwen-Image 2.1"))
    return model


def text_to_image(model: QwenImage21, prompts: Union[str, Sequence[str]], *, ip_adapter=None, controlnet=None,
                  **options) -> torch.Tensor:
    """Images of a Qwen-Image 2.1 folder for ``prompts`` as ``QwenImage21Pipeline`` (module docstring) with any
    diffkit sampler: :func:`.chroma.text_to_image` (sampler / grid both None: flow Euler on the pipeline's sigmas,
    the folder's ``sample_sigmas`` or 40 steps; guidance_scale (``true_cfg_scale``, default 1.0) with a
    negative_prompt; latents: z (B, C, h, w), the pipeline's ``latents=`` is :func:`flatten_latents` of it; height /
    width: default 1024, multiples of 32; output_range, return_latents; images of the VAE's four channels, RGBA).
    ``ip_adapter`` / ``controlnet``: refused in one line."""
    from .chroma import text_to_image as flow_text_to_image
    if ip_adapter is not None or controlnet is not None:
        raise DiffkitError(f"{'an IP-Adapter' if ip_adapter is not None else 'a ControlNet'} is not allowed for a "
                           f"Qwen-Image 2.1 folder ({PIPELINE} loads none)")
    return flow_text_to_image(model, prompts, **options)


def on_white(image):
    """A PIL RGBA image composited over white, RGB (what the pipeline's text encoder sees of a condition image)."""
    from PIL import Image
    white = Image.new("RGB", image.size, (255, 255, 255))
    white.paste(image, mask=image.getchannel("A"))
    return white


def edit_image(model: QwenImage21, images, prompts: Union[str, Sequence[str]], *, area: int = RESOLUTION ** 2,
               height: Optional[int] = None, width: Optional[int] = None, ip_adapter=None, controlnet=None,
               **options) -> torch.Tensor:
    """Images of a Qwen-Image 2.1 folder for ``prompts`` conditioned on ``images`` as ``QwenImage21Pipeline(image=
    images)`` with any diffkit sampler: ``images`` (PIL images of any mode, or (B, 3 or 4, H, W) in [-1, 1]) are one
    set, seen by every prompt (and negative prompt), in order. As the pipeline: each image in RGBA resized (PIL
    Lanczos) to its own ratio at ``area`` pixels (``calculate_dimensions``: multiples of 32; default 1024^2, the
    pipeline's ``output_resolution`` squared); the text encoder sees it composited over white (:func:`on_white`) in
    the prompt's vision slots (:data:`VISION`, before the prompt), the VAE encodes all four channels (the posterior's
    mean, normalised), and those latents go into the transformer's stream at the slots, before z_t's, modulated at
    t = 0. The output: ``height`` x ``width`` (multiples of 32), default the last image's resized size. options:
    :func:`text_to_image`'s (sampler, steps, guidance_scale, negative_prompt, seed, latents, output_range,
    return_latents, ...). ``ip_adapter`` / ``controlnet``: refused in one line."""
    from PIL import Image

    from .chroma import text_to_image as flow_text_to_image
    from .qwen_image_edit import _pil_images, _pixels, calculated_size
    if not isinstance(model, QwenImage21):
        raise DiffkitError(f"edit_image needs a Qwen-Image 2.1 folder ({PIPELINE}); this one is not")
    if ip_adapter is not None or controlnet is not None:
        raise DiffkitError(f"{'an IP-Adapter' if ip_adapter is not None else 'a ControlNet'} is not allowed for a "
                           f"Qwen-Image 2.1 folder ({PIPELINE} loads none)")
    if isinstance(area, bool) or not isinstance(area, int) or area < 32 * 32:
        raise DiffkitError(f"area={area!r} is not allowed; give an integer of at least 1024 pixels (the pipeline's "
                           f"output_resolution squared, default {RESOLUTION ** 2})")
    pil = _pil_images(images, "RGBA")
    if not pil:
        raise DiffkitError(f"edit_image needs at least one condition image ({PIPELINE}'s image=); without: "
                           f"text_to_image")
    sizes = [calculated_size(*image.size, area) for image in pil]
    for image, size in zip(pil, sizes):
        if min(size) < 32:
            raise DiffkitError(f"a {image.size[0]}x{image.size[1]} condition image at area={area} gives "
                               f"{size[0]}x{size[1]}; give a larger area or a less elongated image")
    resized = [image.resize(size, resample=Image.LANCZOS) for image, size in zip(pil, sizes)]
    reference = [model.encode(_pixels([image])) for image in resized]
    return flow_text_to_image(model, prompts, height=height or sizes[-1][1], width=width or sizes[-1][0],
                              guide={"images": [on_white(image) for image in resized], "reference": reference},
                              **options)


__all__ = ["QwenImage21", "edit_image", "QwenImage21Net", "load_qwen_image21", "is_qwen_image21_folder",
           "check_qwen_image21_folder", "text_to_image", "flatten_latents", "PROMPT_TEMPLATE", "SYSTEM_PROMPT"]
