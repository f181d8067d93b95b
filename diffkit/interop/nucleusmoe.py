"""A NucleusMoE-Image diffusers folder (``NucleusMoEImagePipeline``, diffusers 0.42.1), sampled with any diffkit
sampler.

NucleusMoE-Image (NucleusAI 2026) is a rectified flow (Esser et al. 2024, Sec. 2, eq. 1: x_s = (1 - s) x_0 + s eps)
with a single-stream DiT of Mixture-of-Experts feed-forward layers (expert-choice routing) and cross-attention to text
(``NucleusMoEImageTransformer2DModel``) on Qwen-Image's latents (``AutoencoderKLQwenImage``), conditioned on one
hidden state of a Qwen3-VL model (``Qwen3VLForConditionalGeneration``). diffkit runs it as a
:class:`.qwen_image.QwenImage`: the VAE's per-channel normalisation and one-frame decoding, FLUX.1's 2 x 2 packing
and random draw (the pipeline's (B, 1, C, h, w) ``randn`` packed), the grid ``set_timesteps(sigmas=linspace(1, 1/N,
N), mu)`` with mu = ``calculate_shift`` of the packed length, the transformer call (``timestep`` t / 1000,
``encoder_hidden_states_mask``, ``img_shapes``) and the true CFG rescaled per token to the conditional prediction's
norm (:func:`diffkit.guidance.norm_matched_cfg`). What is NucleusMoE-Image's own, as the pipeline does it:

* the transformer predicts x_0 - eps: the velocity is its output negated (``noise_pred = -noise_pred``);
* prompts (``encode_prompt``): each put in the processor's chat template (system message :data:`SYSTEM_PROMPT`,
  the prompt as the user's text, the generation prompt), tokenised padded to the batch's longest, rounded up to a
  multiple of 8, truncated to ``max_sequence_length`` (default 1024); the language model's hidden state
  ``hidden_states[-8]`` under the attention mask, all tokens kept (no template tokens dropped); a mask that is all
  ones is passed as None;
* guidance: CFG for s > 1 (``guidance_scale``, default 4.0, diffusers' convention) against ``negative_prompt``,
  default "" (the pipeline encodes "" when none is given), norm-matched as Qwen-Image's true CFG; s <= 1: unguided;
* defaults: 50 steps, 128 f pixels a side (the pipeline's ``default_sample_size``), multiples of 2 f.

Refused in one line before any weight is read (:func:`check_nucleusmoe_folder`): another pipeline class, a missing
component or one of another class, a transformer ``patch_size`` other than 2 or whose ``in_channels`` / ``out_channels``
are not 4 x / 1 x the VAE's ``z_dim``, a ``joint_attention_dim`` other than the text encoder's width, a text encoder
of fewer than 7 layers (no hidden state -8), a scheduler option the flow Euler loop does not take.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from ..errors import DiffkitError, read_json_object
from . import require
from .qwen_image import QwenImage, QwenImageNet

PIPELINE = "NucleusMoEImagePipeline"
TRANSFORMER = "NucleusMoEImageTransformer2DModel"
REQUIRED = ("transformer", "vae", "text_encoder", "processor", "scheduler")
# (the processor: Qwen3VLProcessor; a Qwen2 tokenizer with the chat template is what the pipeline calls of it)
CLASSES = {"transformer": (TRANSFORMER,), "vae": ("AutoencoderKLQwenImage",),
           "text_encoder": ("Qwen3VLForConditionalGeneration",),
           "processor": ("Qwen3VLProcessor", "Qwen2Tokenizer", "Qwen2TokenizerFast"),
           "scheduler": ("FlowMatchEulerDiscreteScheduler",)}
NUCLEUS_STEPS, NUCLEUS_GUIDANCE, NUCLEUS_MAX_LENGTH, RETURN_INDEX = 50, 4.0, 1024, -8  # the pipeline's defaults
SYSTEM_PROMPT = ("You are an image generation assistant. Follow the user's prompt literally. Pay careful attention "
                 "to spatial layout: objects described as on the left must appear on the left, on the right on the "
                 "right. Match exact object counts and assign colors to the correct objects.")  # DEFAULT_SYSTEM_PROMPT


class NucleusMoENet(QwenImageNet):
    """:class:`.qwen_image.QwenImageNet` over a ``NucleusMoEImageTransformer2DModel``: each call's output negated
    (the transformer predicts x_0 - eps; the norm-matched CFG is odd in both predictions, so negating each call is
    the pipeline's negating the guided one)."""

    def _call(self, packed, timestep, context, mask, shapes, controls=None):
        context, mask = self.text(packed, context, mask)
        return -self.model(hidden_states=packed, timestep=timestep, encoder_hidden_states=context,
                           encoder_hidden_states_mask=mask, img_shapes=shapes, return_dict=False)[0]


@dataclass
class NucleusMoEImage(QwenImage):
    """The loaded components of a NucleusMoE-Image folder (:func:`load_nucleusmoe`): Qwen-Image's fields (the Qwen3-VL
    model as ``text_encoder``, the processor's tokenizer as ``tokenizer``, ``chat_template`` the processor's), its
    VAE code, packing, grid and true CFG (module docstring)."""

    chat_template: Optional[str] = None
    guidance_hint = f"CFG for > 1 against the negative prompt (default \"\"), the pipeline's default {NUCLEUS_GUIDANCE}"
    default_steps = NUCLEUS_STEPS
    net_class = NucleusMoENet
    max_sequence_length = NUCLEUS_MAX_LENGTH  # (.chroma.text_to_image's default)

    def encode_prompts(self, prompts: Sequence[str], max_sequence_length: int = NUCLEUS_MAX_LENGTH) -> tuple:
        """(context (B, L, d), mask (B, L) or None) as the pipeline's ``encode_prompt`` (module docstring)."""
        from .stable_diffusion import prompt_list
        if isinstance(max_sequence_length, bool) or not isinstance(max_sequence_length, int) \
                or max_sequence_length < 1:
            raise DiffkitError(f"max_sequence_length={max_sequence_length!r} is not allowed; give a positive "
                               f"integer (NucleusMoEImagePipeline's token limit, default {NUCLEUS_MAX_LENGTH})")
        texts = [self.tokenizer.apply_chat_template(
            [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": [{"type": "text", "text": p}]}],
            chat_template=self.chat_template, tokenize=False, add_generation_prompt=True) for p in prompt_list(prompts)]
        tokens = self.tokenizer(text=texts, padding="longest", pad_to_multiple_of=8, max_length=max_sequence_length,
                                truncation=True, return_attention_mask=True, return_tensors="pt").to(self.device)
        with torch.no_grad():
            out = self.text_encoder(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask, use_cache=False,
                                    output_hidden_states=True)
        mask = tokens.attention_mask
        return out.hidden_states[RETURN_INDEX].to(self.text_encoder.dtype), (None if bool(mask.all()) else mask)

    def prompt_guidance(self, prompts, h: int, w: int, guidance_scale: Optional[float] = None,
                        negative_prompt=None, max_sequence_length: int = NUCLEUS_MAX_LENGTH,
                        convention: str = "diffusers", ip_adapter=None) -> tuple:
        """:meth:`.qwen_image.QwenImage.prompt_guidance` with the negative prompt "" where none is given and the
        scale (default 4.0) is > 1 (the pipeline's ``do_cfg``); ``ip_adapter``: refused (the pipeline loads none)."""
        from ..guidance import pipeline_scale
        if ip_adapter is not None:
            raise DiffkitError("an IP-Adapter is not allowed for a NucleusMoE-Image folder (the pipeline loads none)")
        self.check_guidance_scale(guidance_scale)
        if negative_prompt is None and pipeline_scale(guidance_scale, NUCLEUS_GUIDANCE, convention) > 1:
            negative_prompt = ""
        return QwenImage.prompt_guidance(self, prompts, h, w, guidance_scale, negative_prompt, max_sequence_length,
                                         convention)


def is_nucleusmoe_folder(path: Union[str, Path]) -> bool:
    """True for a folder whose ``model_index.json`` names ``NucleusMoEImagePipeline`` or its transformer."""
    from .flow_latents import names_pipeline
    return names_pipeline(path, "NucleusMoEImage", TRANSFORMER)


def check_nucleusmoe_folder(directory) -> tuple:
    """(index, scheduler config) of a NucleusMoE-Image folder, checked from its JSON alone (module docstring)."""
    from .flux import check_flux_scheduler
    from .pixart import check_classes, named_index
    directory = Path(directory)
    index = named_index(directory, (PIPELINE,), "NucleusMoE-Image")
    check_classes(directory, index, REQUIRED, "NucleusMoE-Image", CLASSES)
    config = read_json_object(directory / "transformer" / "config.json", "transformer config")
    if config.get("patch_size", 2) != 2:
        raise DiffkitError(f"{directory}'s transformer has patch_size={config['patch_size']!r}; allowed: 2 (the 2 x 2 "
                           f"packing)")
    z_dim = int(read_json_object(directory / "vae" / "config.json", "vae config").get("z_dim", 16))
    channels = (config.get("in_channels", 64), config.get("out_channels"))
    if channels[0] != 4 * z_dim or (channels[1] or channels[0]) != z_dim:
        raise DiffkitError(f"{directory}'s transformer has in_channels, out_channels = {channels[0]!r}, "
                           f"{channels[1]!r}; allowed: {4 * z_dim}, {z_dim} (4 x and 1 x the VAE's z_dim)")
    text = read_json_object(directory / "text_encoder" / "config.json", "text encoder config").get("text_config", {})
    if text.get("hidden_size", 4096) != config.get("joint_attention_dim", 3584):
        raise DiffkitError(f"{directory}: the transformer's joint_attention_dim="
                           f"{config.get('joint_attention_dim', 3584)} does not fit the text encoder's hidden size "
                           f"{text.get('hidden_size', 4096)}")
    if int(text.get("num_hidden_layers", 36)) < -RETURN_INDEX - 1:
        raise DiffkitError(f"{directory}'s text encoder has num_hidden_layers={text['num_hidden_layers']!r}; allowed: "
                           f">= {-RETURN_INDEX - 1} (the pipeline reads hidden state {RETURN_INDEX})")
    return index, check_flux_scheduler(directory, PIPELINE)


def load_qwen3_vl_folder(cls, directory: Path, index: dict, sched: dict, transformer_cls, vae_cls, device, dtype,
                         progress: bool, needs_template: bool = True, **fields):
    """``cls`` (a :class:`.qwen_image.QwenImage` with a ``chat_template`` field) of a checked folder, never
    downloading nor unpickling: the transformer (``transformer_cls``) and VAE (``vae_cls``) by
    :func:`.flow_latents.load_flow_parts`, the ``Qwen3VLForConditionalGeneration`` (``text_encoder/``) and the
    processor's tokenizer (``processor/``, read by ``AutoTokenizer``: transformers' ``Qwen3VLProcessor`` imports
    torchvision for its video processor; the text pipelines call only its tokenizer and chat template) and chat
    template (``processor/chat_template.jinja`` or ``.json``; None: the tokenizer's; with neither, one line before any
    weight is read; ``needs_template`` False: JoyImage Edit's (:mod:`.joyimage`) and Bria FIBO 2's (a literal template,
    :mod:`.bria_fibo2`), whose pipelines format their prompts without it); ``fields``: more of ``cls``'s.
    NucleusMoE-Image's, Qwen-Image 2.1's (:mod:`.qwen_image21`) and Bria FIBO 2's."""
    from . import from_pretrained, library_progress_bars
    from .flow_latents import frozen_on, load_flow_parts
    transformers = require("transformers")
    template, processor = directory / "processor" / "chat_template.jinja", directory / "processor"
    chat = template.read_text() if template.is_file() else \
        read_json_object(processor / "chat_template.json", "chat template").get("chat_template") \
        if (processor / "chat_template.json").is_file() else None
    config = processor / "tokenizer_config.json"
    if needs_template and chat is None and \
            not (config.is_file() and read_json_object(config, "tokenizer config").get("chat_template")):
        raise DiffkitError(f"{processor} has no chat template (chat_template.jinja, chat_template.json or the "
                           f"tokenizer config's); the pipeline's prompts are built with it")
    parts = load_flow_parts(directory, index, transformer_cls, {}, dtype, progress, vae_cls=vae_cls)
    with library_progress_bars(progress):
        parts["text_encoder"] = from_pretrained(transformers.Qwen3VLForConditionalGeneration,
                                                directory / "text_encoder", local_files_only=True, torch_dtype=dtype,
                                                use_safetensors=True)
        parts["tokenizer"] = from_pretrained(transformers.AutoTokenizer, processor, local_files_only=True)
    device = frozen_on(parts, device)
    return cls(**parts, text_encoder_2=None, tokenizer_2=None, scheduler_config=sched, device=device, dtype=dtype,
               chat_template=chat, **fields)


def load_nucleusmoe(directory: Union[str, Path], device="cpu", dtype: torch.dtype = torch.float32,
                    progress: bool = True) -> NucleusMoEImage:
    """Load a NucleusMoE-Image diffusers folder (never downloads, never unpickles; :func:`load_qwen3_vl_folder`);
    what diffkit does not drive is refused in one line before any weight is read."""
    diffusers = require("diffusers")
    directory = Path(directory)
    index, sched = check_nucleusmoe_folder(directory)
    return load_qwen3_vl_folder(NucleusMoEImage, directory, index, sched, diffusers.NucleusMoEImageTransformer2DModel,
                                diffusers.AutoencoderKLQwenImage, device, dtype, progress)


def text_to_image(model: NucleusMoEImage, prompts: Union[str, Sequence[str]], *, ip_adapter=None,
                  **options) -> torch.Tensor:
    """Images of a NucleusMoE-Image folder for ``prompts`` as ``NucleusMoEImagePipeline`` (module docstring) with any
    diffkit sampler: :func:`.chroma.text_to_image` (sampler / grid both None: flow Euler on the pipeline's sigmas, 50
    steps; guidance_scale (default 4.0) / negative_prompt (default ""); latents: unpacked z (B, C, h, w); height /
    width: default 128 f; max_sequence_length (default 1024); output_range, return_latents)."""
    from .chroma import text_to_image as flow_text_to_image
    if ip_adapter is not None:
        raise DiffkitError("an IP-Adapter is not allowed for a NucleusMoE-Image folder (the pipeline loads none)")
    return flow_text_to_image(model, prompts, **options)


__all__ = ["NucleusMoEImage", "NucleusMoENet", "load_nucleusmoe", "is_nucleusmoe_folder", "check_nucleusmoe_folder",
           "text_to_image"]
