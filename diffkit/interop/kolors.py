"""A Kolors diffusers folder (KolorsPipeline), sampled with any diffkit sampler.

Kolors (Kolors Team 2024, "Kolors: Effective Training of Diffusion Model for Photorealistic Text-to-Image
Synthesis", Sec. 2) is an SD-XL UNet (:mod:`.sd_xl`: ``addition_embed_type="text_time"``, the size conditions of
Podell et al. 2023, Sec. 2.2) whose text encoder is the bilingual language model ChatGLM3 (Du et al. 2022, "GLM:
General Language Model Pretraining with Autoregressive Blank Infilling") instead of SD-XL's two CLIP encoders. As
diffusers 0.42's ``KolorsPipeline.encode_prompt`` computes them:

* the tokens: ``ChatGLMTokenizer`` with its ``[gMASK] sop`` prefix, left-padded (and truncated) to 256 tokens, with
  its attention mask and position ids;
* the context: ChatGLM's *penultimate* hidden states (``hidden_states[-2]``, (L, B, d) turned to (B, L, d)), which
  the UNet's ``encoder_hid_proj`` (``encoder_hid_dim_type="text_proj"``, d -> cross_attention_dim) maps itself;
* the pooled embedding (``text_embeds``): the *last* token of the last layer's states (``hidden_states[-1][-1]``,
  before the final norm; left padding puts the prompt's last token there);
* the time ids, classifier-free guidance (default s = 5), ``guidance_rescale``, img2img (``KolorsImg2ImgPipeline``:
  SD-XL's ``latent_img2img``) and perturbed-attention guidance (``KolorsPAGPipeline``, :mod:`.sd_pag`) are SD-XL's:
  :class:`Kolors` is a :class:`~.sd_xl.StableDiffusionXL` whose :meth:`Kolors.encode_prompts_xl` is the above.

The null half is the empty (or negative) prompt's context and pooled embedding (``force_zeros_for_empty_prompt``:
False by default, KolorsPipeline's; with it True and no negative prompt the pipeline fails, and diffkit refuses in
one line).
The folder's scheduler is an ``EulerDiscreteScheduler`` (1100 scaled-linear betas to 0.014, leading spacing):
:meth:`Kolors.scheduler_grid` is its timesteps, and diffkit's ``euler`` on them (``grid="scheduler"``) its step
(:func:`.pixart.folder_sampler`). Refused in one line (:func:`load_kolors`, :meth:`Kolors.prompt_guidance`): the
SD-XL options of its CLIP encoders (``prompt_2`` / ``negative_prompt_2``, ``clip_skip``, textual inversions), LoRA
files of the text encoder or in kohya's format (UNet LoRA files merge: :func:`read_kolors_loras`), ``--scheduler lcm`` /
``tcd``, inpainting / InstructPix2Pix UNets, a UNet without ``encoder_hid_proj`` and a
ChatGLMTokenizer without the ``sentencepiece`` package it reads its model with.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from ..errors import DiffkitError
from . import from_pretrained, library_progress_bars, require
from .sd_xl import StableDiffusionXL, check_sd_xl_unet, pipeline_class, required_unet_key
from .stable_diffusion import check_components, prompt_list

KOLORS_PIPELINES = ("KolorsPipeline", "KolorsImg2ImgPipeline", "KolorsPAGPipeline")
KOLORS_MAX_SEQUENCE_LENGTH = 256  # encode_prompt's max_sequence_length (its __call__ never passes another)
KOLORS_COMPONENTS = ("text_encoder", "tokenizer")  # ChatGLMModel, ChatGLMTokenizer; the rest: stable_diffusion's


def is_kolors_folder(path) -> bool:
    """True for a diffusers folder whose ``model_index.json`` names a Kolors pipeline (:data:`KOLORS_PIPELINES`)."""
    return pipeline_class(path) in KOLORS_PIPELINES


def refuse_kolors_option(name: str, value, why: str) -> None:
    """One line for an SD-XL option given (not None / False) that a Kolors folder does not take."""
    if value is not None and value is not False and value != []:
        raise DiffkitError(f"{name}={value!r} is not allowed on a Kolors folder: {why}")


_ONE_ENCODER = "it has one text encoder, ChatGLM3 (no second CLIP encoder and its text)"


@dataclass
class Kolors(StableDiffusionXL):
    """The loaded components of a Kolors folder (:func:`load_kolors`): an SD-XL UNet, its VAE and scheduler,
    ``text_encoder`` (ChatGLMModel) and ``tokenizer`` (ChatGLMTokenizer); no second encoder."""

    def encode_prompts_xl(self, prompts: Sequence[str], prompts_2=None, clip_skip: Optional[int] = None) -> tuple:
        """(context (B, 256, d), pooled (B, d)) as ``KolorsPipeline.encode_prompt`` (module docstring): ChatGLM's
        penultimate hidden states and the last token of its last layer's. ``prompts_2`` / ``clip_skip``: refused by
        :meth:`prompt_guidance` (SD-XL's second prompts are passed here as the prompts themselves)."""
        tokens = self.tokenizer(prompt_list(prompts), padding="max_length", max_length=KOLORS_MAX_SEQUENCE_LENGTH,
                                truncation=True, return_tensors="pt").to(self.device)
        with torch.no_grad():
            out = self.text_encoder(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"],
                                    position_ids=tokens["position_ids"], output_hidden_states=True)
        context = out.hidden_states[-2].permute(1, 0, 2)  # (L, B, d) -> (B, L, d)
        return context.to(self.dtype), out.hidden_states[-1][-1].to(self.dtype)

    def prompt_guidance(self, prompts: list, negative_prompt, guidance_scale: float, convention: str,
                        guidance_rescale: float, image_size: tuple = None, micro_conditioning=None,
                        clip_skip: Optional[int] = None, prompt_2=None, negative_prompt_2=None,
                        apg: Optional[dict] = None, img2img: bool = False) -> tuple:
        """SD-XL's (:meth:`~.sd_xl.StableDiffusionXL.prompt_guidance`) with :meth:`encode_prompts_xl`; ``prompt_2``,
        ``negative_prompt_2`` and ``clip_skip`` refused in one line, and no negative prompt where the folder sets
        ``force_zeros_for_empty_prompt`` (KolorsPipeline has no zero pooled embedding then and fails). ``img2img``:
        no change (KolorsImg2ImgPipeline's null time ids are KolorsPipeline's: both negative sizes, or none)."""
        refuse_kolors_option("prompt_2", prompt_2, _ONE_ENCODER)
        refuse_kolors_option("negative_prompt_2", negative_prompt_2, _ONE_ENCODER)
        refuse_kolors_option("clip_skip", clip_skip, "KolorsPipeline takes ChatGLM's penultimate layer, with no "
                                                     "clip_skip")
        if negative_prompt is None and self.force_zeros_for_empty_prompt:
            raise DiffkitError("negative_prompt=None is not allowed on this Kolors folder: its model_index.json sets "
                               "force_zeros_for_empty_prompt, where KolorsPipeline has no null pooled embedding and "
                               "fails; give a negative prompt (\"\" for the empty one)")
        return super().prompt_guidance(prompts, negative_prompt, guidance_scale, convention, guidance_rescale,
                                       image_size, micro_conditioning, apg=apg)

    def scheduler_grid(self, steps: int) -> torch.Tensor:
        """The folder's own scheduler's timesteps after ``set_timesteps(steps)`` (Kolors': EulerDiscreteScheduler's)
        as a diffkit grid; diffkit's ``euler`` on it is the pipeline's loop (:func:`.pixart.folder_sampler`)."""
        from .pixart import own_scheduler_grid
        return own_scheduler_grid(self.scheduler_config, steps)

    def folder_sampler(self) -> tuple:
        """(sampler, options) of the folder's scheduler's step (:func:`.pixart.folder_sampler`: ``euler``)."""
        from .pixart import folder_sampler
        return folder_sampler(self.scheduler_config)


def check_kolors_unet(config: dict, directory, lcm: bool = False, inpainting: bool = False, *,
                      instruct_pix2pix: bool = False) -> None:
    """An SD-XL UNet (:func:`~.sd_xl.check_sd_xl_unet`) with ``encoder_hid_dim_type="text_proj"``: the linear map
    from ChatGLM's width to its cross-attention width (``encoder_hid_proj``)."""
    config = required_unet_key(config, "encoder_hid_dim_type", "text_proj", directory, "a Kolors",
                               "ChatGLM's states projected to the cross-attention width")
    check_sd_xl_unet(config, directory, lcm, inpainting, instruct_pix2pix=instruct_pix2pix)


def load_kolors(directory: Union[str, Path], device="cpu", dtype: torch.dtype = torch.float32, progress: bool = True,
                lora=None, textual_inversion=None, scheduler: Optional[str] = None, inpainting: bool = False,
                instruct_pix2pix: bool = False) -> Kolors:
    """Load a Kolors diffusers folder (never downloads). What diffkit does not drive is refused in one line before
    any weight is read (module docstring); the other arguments are :func:`~.sd_xl.load_sd_xl`'s."""
    from .sd_xl import _index, check_vae_latents
    from .stable_diffusion import _load_stable_diffusion
    directory = Path(directory)
    for name, value, why in (
            ("textual_inversion", textual_inversion, "textual inversions are CLIP embeddings; its text encoder is "
                                                     "ChatGLM3"),
            ("scheduler", scheduler, "LCM / TCD sampling of Kolors is not compared with a pipeline; allowed: the "
                                     "folder's own scheduler"),
            ("inpainting", inpainting, "KolorsPipeline and KolorsImg2ImgPipeline take no mask"),
            ("instruct_pix2pix", instruct_pix2pix, "diffusers has no Kolors InstructPix2Pix pipeline")):
        refuse_kolors_option(name, value or None, why)
    loras = read_kolors_loras(lora) if lora else []
    index = _index(directory) or {}
    check_components(directory, index, KOLORS_COMPONENTS, "Kolors")
    check_vae_latents(directory)
    require("transformers")
    from diffusers.pipelines.kolors import ChatGLMModel, ChatGLMTokenizer, tokenizer as glm_tokenizer
    if not glm_tokenizer.is_sentencepiece_available():
        raise DiffkitError(f"{directory} is a Kolors folder whose ChatGLMTokenizer reads tokenizer/tokenizer.model "
                           f"with the sentencepiece package, which is not installed; pip install sentencepiece")
    with library_progress_bars(progress):
        sd = _load_stable_diffusion(directory, device, dtype, check_unet=check_kolors_unet, text_encoder=False)
        text_encoder = from_pretrained(ChatGLMModel, directory / "text_encoder", local_files_only=True,
                                       torch_dtype=dtype, use_safetensors=True)
        tokenizer = from_pretrained(ChatGLMTokenizer, directory / "tokenizer", local_files_only=True)
    text_encoder.to(sd.device).eval().requires_grad_(False)
    loaded = {f.name: getattr(sd, f.name) for f in fields(sd)}
    kolors = Kolors(**{**loaded, "text_encoder": text_encoder, "tokenizer": tokenizer},
                    force_zeros_for_empty_prompt=bool(index.get("force_zeros_for_empty_prompt", False)))
    _check_widths(kolors, directory)
    from .sd_lora import merge_sd_loras
    merge_sd_loras(kolors, loras)  # the UNet's (the text encoder's refused by read_kolors_loras)
    return kolors


def read_kolors_loras(adapters) -> list:
    """:func:`.sd_lora.read_sd_loras` of LoRA files for a Kolors folder, read and checked before it loads: diffusers /
    PEFT ``unet.`` keys, merged as ``KolorsPipeline.load_lora_weights`` + ``fuse_lora``; a file adapting the text
    encoder (ChatGLM's modules, not CLIP's) or in kohya's format (not compared with the pipeline) in one line."""
    from .sd_lora import read_sd_loras
    loras = read_sd_loras(adapters)
    for path, _, read in loras:
        encoder = next((c for c in ("text_encoder", "text_encoder_2") if read[c]), None)
        if encoder or read["kohya"]:
            what = f"adapts a text encoder ({encoder}. keys)" if encoder else "has kohya keys (lora_unet_ / lora_te_)"
            raise DiffkitError(f"--lora {path} {what}; allowed on a Kolors folder: diffusers / PEFT unet. keys (the "
                               f"UNet only; its text encoder is ChatGLM3)")
    return loras


def _check_widths(kolors: Kolors, directory: Path) -> None:
    """The UNet fits ChatGLM: ``encoder_hid_dim`` = its hidden size d, and the added embedding takes 6 *
    addition_time_embed_dim + d inputs (6 time ids and the pooled embedding; the pipeline's ``_get_add_time_ids``)."""
    config, width = kolors.unet.config, int(kolors.text_encoder.config.hidden_size)
    if config.encoder_hid_dim != width:
        raise DiffkitError(f"{directory}: the UNet's encoder_hid_dim={config.encoder_hid_dim} is not ChatGLM's "
                           f"hidden_size={width}")
    passed = 6 * int(config.addition_time_embed_dim or 0) + width
    expected = kolors.unet.add_embedding.linear_1.in_features
    if passed != expected:
        raise DiffkitError(f"{directory}: the UNet's added embedding takes {expected} inputs, not 6 * "
                           f"addition_time_embed_dim + ChatGLM's hidden_size = {passed}")


__all__ = ["Kolors", "load_kolors", "is_kolors_folder", "check_kolors_unet", "KOLORS_PIPELINES"]
