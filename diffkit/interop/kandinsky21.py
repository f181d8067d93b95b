"""Kandinsky 2.1 folders (``KandinskyPriorPipeline`` + ``KandinskyPipeline`` / ``KandinskyImg2ImgPipeline`` /
``KandinskyInpaintPipeline``, diffusers 0.42.1), sampled with diffkit's samplers.

Kandinsky 2.1 (Razzhigaev et al. 2023, "Kandinsky: an Improved Text-to-Image Synthesis with Image Prior and Latent
Diffusion", Sec. 3) is Kandinsky 2.2's unCLIP chain (:mod:`.kandinsky`) with a decoder that also reads the prompt:

* the prior folder (``KandinskyPriorPipeline``) is Kandinsky 2.2's prior, component for component and step for step
  (the two pipelines differ in callbacks alone): :func:`.kandinsky.load_prior` loads it and
  :func:`.kandinsky.prior_embeddings` samples it;
* the decoder folder adds a ``MultilingualCLIP`` text encoder (an XLM-RoBERTa whose token states are also
  mean-pooled under the attention mask and projected by ``LinearTransformation``) and its ``XLMRobertaTokenizer``:
  the prompt tokenised to 77 tokens (padded, truncated), the token states (all 77, pads included: the UNet gets no
  mask) are the UNet's ``encoder_hidden_states``, the pooled projection its ``text_embeds`` (:meth:`Kandinsky21Decoder.
  encode_prompts`). The ``UNet2DConditionModel`` has ``addition_embed_type="text_image"`` (text and image embeddings
  added to the time embedding) and ``encoder_hid_dim_type="text_image_proj"`` (the image embedding made 10
  cross-attention tokens before the projected text states); the image embedding's width is its
  ``cross_attention_dim``;
* classifier-free guidance (Ho & Salimans 2022), eps = eps_u + s (eps_c - eps_u), s = 4 by default: the null half
  takes the negative image embedding *and* the empty prompt's states and pooled embedding (or the decoder's
  ``negative_prompt``'s; ``KandinskyCombinedPipeline`` gives the negative prompt to the prior alone, and so does
  ``diffkit sample``); the variance half of the conditional output, the folder's DDPM / DDIM step, the last step's
  noise and the MoVQ decode are Kandinsky 2.2's (:func:`.kandinsky.decode_embeddings`);
* img2img (``KandinskyImg2ImgPipeline``, :func:`.kandinsky.image_to_image`): the scheduler's last int(S strength)
  timesteps as 2.2's, but the start is noised otherwise (:meth:`Kandinsky21Decoder.img2img_start`, the pipeline's
  ``add_noise``, "taken from the original kandinsky repo"): at t = int(T strength) - 2 rather than the first kept
  timestep, with the abar of *fixed* linear betas 1e-4 .. 0.02 over 1000 steps rather than the folder's schedule
  (SDEdit, Meng et al. 2022, z_t = sqrt(abar_t) z_0 + sqrt(1 - abar_t) eps);
* inpainting (``KandinskyInpaintPipeline``, :func:`.kandinsky_inpaint.inpaint`): 2.2's mask handling (binarised,
  inverted, nearest-resized, eroded) and 9-channel UNet input, but no blend: the loop never sets the kept region
  back (nor at the end); the mask channels alone keep it.

Refused in one line before any weight is read (:func:`check_decoder21_folder`): a decoder folder whose text encoder
is not a ``MultilingualCLIP``, whose UNet is not ``text_image`` / ``text_image_proj``, whose channels do not fit its
class (2C + 1 exactly for ``KandinskyInpaintPipeline``), or whose scheduler is not DDPM / DDIM; a decoder call
without prompts (:meth:`Kandinsky21Decoder.decoder_text`), an img2img strength whose noising timestep
int(T strength) - 2 falls outside 0 .. 999.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Union

import torch

from ..errors import DiffkitError, read_json_object
from . import from_pretrained, library_progress_bars, require
from .kandinsky import KandinskyDecoder

PRIOR21_PIPELINE = "KandinskyPriorPipeline"  # Kandinsky 2.2's prior pipeline but for its callbacks (.kandinsky)
DECODER21_PIPELINE, IMG2IMG21_PIPELINE = "KandinskyPipeline", "KandinskyImg2ImgPipeline"  # the same components
INPAINT21_PIPELINE = "KandinskyInpaintPipeline"  # a 9-channel UNet (.kandinsky_inpaint)
DECODER21_PIPELINES = (DECODER21_PIPELINE, IMG2IMG21_PIPELINE, INPAINT21_PIPELINE)
KANDINSKY21_PIPELINES = (PRIOR21_PIPELINE,) + DECODER21_PIPELINES
DECODER21_REQUIRED = ("text_encoder", "tokenizer", "unet", "scheduler", "movq")
TEXT_TOKENS = 77  # the decoder pipelines' tokenizer max_length
# KandinskyImg2ImgPipeline.add_noise's own betas, whatever the folder's scheduler
IMG2IMG21_NOISE = {"_class_name": "DDPMScheduler", "beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02,
                   "num_train_timesteps": 1000}


def kandinsky_names(path) -> tuple:
    """(version, prior pipeline, decoder pipeline, inpainting pipeline) of the Kandinsky generation of folder
    ``path``: Kandinsky 2.1's for one of its folders, else Kandinsky 2.2's (the commands' messages and checks)."""
    from .kandinsky import DECODER_PIPELINE, INPAINT_PIPELINE, PRIOR_PIPELINE, kandinsky_kind
    if kandinsky_kind(path) in KANDINSKY21_PIPELINES:
        return "2.1", PRIOR21_PIPELINE, DECODER21_PIPELINE, INPAINT21_PIPELINE
    return "2.2", PRIOR_PIPELINE, DECODER_PIPELINE, INPAINT_PIPELINE


def check_decoder21_folder(directory) -> tuple:
    """(model_index dict, UNet config, scheduler config) of a Kandinsky 2.1 decoder folder, from its JSON alone."""
    from .kandinsky import _checked, decoder_sampler
    from .kandinsky_inpaint import check_inpaint_channels
    directory = Path(directory)
    index = _checked(directory, DECODER21_PIPELINE, DECODER21_REQUIRED, {
        "text_encoder": ("MultilingualCLIP",), "unet": ("UNet2DConditionModel",), "movq": ("VQModel",)},
        same=DECODER21_PIPELINES, version="2.1")
    unet = read_json_object(directory / "unet" / "config.json", "unet config")
    kinds = (unet.get("addition_embed_type"), unet.get("encoder_hid_dim_type"))
    if kinds != ("text_image", "text_image_proj"):
        raise DiffkitError(f"{directory}'s UNet has addition_embed_type={kinds[0]!r} and encoder_hid_dim_type="
                           f"{kinds[1]!r}; allowed: 'text_image' and 'text_image_proj' (Kandinsky 2.1's decoder, "
                           f"conditioned on the prompt and the image embedding)")
    check_inpaint_channels(directory, index["_class_name"], unet, INPAINT21_PIPELINE)
    scheduler = read_json_object(directory / "scheduler" / "scheduler_config.json", "scheduler config")
    decoder_sampler(scheduler)
    return index, unet, scheduler


@dataclass
class Kandinsky21Decoder(KandinskyDecoder):
    """A Kandinsky 2.1 decoder folder's components (:func:`load_decoder21`): Kandinsky 2.2's decoder with the
    ``MultilingualCLIP`` text encoder and its tokenizer."""

    text_encoder: object = None
    tokenizer: object = None

    inpaint_pipeline = INPAINT21_PIPELINE
    blends_inpaint = False  # KandinskyInpaintPipeline's loop keeps no region by hand
    takes_prompts = True

    @property
    def embed_width(self) -> int:
        """The image embeddings' width d: the UNet's ``cross_attention_dim`` (``text_image_proj``'s image input)."""
        return int(self.unet.config.cross_attention_dim)

    def encode_prompts(self, prompts) -> dict:
        """{``context``: the token states (B, 77, D), ``text_embeds``: the pooled projection (B, d)} of ``prompts``
        as the pipelines' ``_encode_prompt``: 77 tokens, the attention mask given to the encoder alone."""
        tokens = self.tokenizer(list(prompts), padding="max_length", max_length=TEXT_TOKENS, truncation=True,
                                return_attention_mask=True, add_special_tokens=True, return_tensors="pt")
        with torch.no_grad():
            pooled, states = self.text_encoder(input_ids=tokens.input_ids.to(self.device),
                                               attention_mask=tokens.attention_mask.to(self.device))
        return {"context": states, "text_embeds": pooled}

    def decoder_text(self, prompts, negative_prompt, rows: int) -> tuple:
        """(cond, null cond) of ``prompts`` (one, or one per row) and ``negative_prompt`` (None: the empty
        prompt; one, or one per row), as :func:`.kandinsky.decoder_guidance` takes them."""
        from .stable_diffusion import negative_prompts, prompt_list
        if prompts is None:
            raise DiffkitError(f"a Kandinsky 2.1 decoder ({self.pipeline}) is conditioned on the prompt as well as "
                               f"the image embedding: give prompts (one, or one per image embedding)")
        prompts = prompt_list(prompts)
        if len(prompts) not in (1, rows):
            raise DiffkitError(f"{len(prompts)} prompts for {rows} image embeddings; give one or one per embedding")
        null = [""] if negative_prompt is None else negative_prompts(negative_prompt, rows)
        return self.encode_prompts(prompts * (rows // len(prompts))), self.encode_prompts(null)

    def img2img_start(self, images: torch.Tensor, grid: torch.Tensor, generators, strength: float) -> torch.Tensor:
        """``KandinskyImg2ImgPipeline``'s start: the images' MoVQ latents (``movq.encode(x).latents``) noised by its
        own ``add_noise`` at t = int(T strength) - 2 (T the scheduler's ``num_train_timesteps``) with the float32
        abar of :data:`IMG2IMG21_NOISE`'s linear betas (module docstring), eps row i from ``generators[i]``; one
        line for a t outside 0 .. 999 (the pipeline would index its 1000 abar from the end, or fail)."""
        from ..diffusion import q_sample
        from ..noise import randn
        from .deepfloyd_if import pipeline_schedule
        t = int(int(self.scheduler_config.get("num_train_timesteps", 1000)) * strength) - 2
        if not 0 <= t < IMG2IMG21_NOISE["num_train_timesteps"]:
            raise DiffkitError(f"strength={strength!r} is not allowed here: KandinskyImg2ImgPipeline noises the "
                               f"image at t = int(T strength) - 2 = {t}; give a strength with t in 0 .. 999")
        with torch.no_grad():
            z0 = self.movq.encode(images.to(self.device, self.dtype)).latents.float()
        times = torch.full((images.shape[0],), float(t), dtype=torch.float64)
        eps = randn(z0.shape, generators, device=self.device, dtype=torch.float32)
        return q_sample(pipeline_schedule(IMG2IMG21_NOISE), z0, times, eps)


def load_decoder21(directory: Union[str, Path], device="cpu", dtype: torch.dtype = torch.float32,
                   progress: bool = True) -> Kandinsky21Decoder:
    """Load a Kandinsky 2.1 decoder folder (``KandinskyPipeline``, ``KandinskyImg2ImgPipeline`` or
    ``KandinskyInpaintPipeline``; never downloading nor unpickling), checked first (:func:`check_decoder21_folder`).
    :func:`.kandinsky.load_decoder` dispatches such a folder here."""
    from .kandinsky import decoder_fields
    directory = Path(directory)
    index, _, scheduler = check_decoder21_folder(directory)
    clip = require("diffusers").pipelines.kandinsky.text_encoder.MultilingualCLIP
    fields = decoder_fields(directory, index, scheduler, require("diffusers").UNet2DConditionModel, device, dtype,
                            progress, text_encoder=(clip, "text_encoder"))
    with library_progress_bars(progress):
        tokenizer = from_pretrained(require("transformers").XLMRobertaTokenizer, directory / "tokenizer",
                                    local_files_only=True)
    return Kandinsky21Decoder(**fields, tokenizer=tokenizer)


__all__ = ["Kandinsky21Decoder", "load_decoder21", "check_decoder21_folder", "kandinsky_names", "PRIOR21_PIPELINE",
           "DECODER21_PIPELINE", "IMG2IMG21_PIPELINE", "INPAINT21_PIPELINE", "DECODER21_PIPELINES",
           "KANDINSKY21_PIPELINES", "IMG2IMG21_NOISE", "TEXT_TOKENS"]
