"""An OmniGen diffusers folder (``OmniGenPipeline``, diffusers 0.42.1), sampled and edited with any diffkit sampler.

OmniGen (Xiao et al. 2024, "OmniGen: Unified Image Generation", arXiv:2409.11340) is one Phi-3-style transformer
(``OmniGenTransformer2DModel``) that reads the tokenised prompt itself (no text encoder): the prompt's token
embeddings, with each ``<img><|image_k|></img>`` placeholder's tokens replaced by input image k's patch-embedded VAE
latents, then a time token, then the noisy latents' 2 x 2 patches, under a causal mask that is bidirectional inside
each image (Sec. 2.1), predicting the rectified-flow velocity. diffkit runs it through :mod:`.chroma`'s / :mod:`.flux`'s
code (:class:`OmniGen` is a :class:`~.chroma.Chroma`: the scheduler's grid, flow Euler ``ddim`` as its step, any other
sampler, :func:`.chroma.text_to_image`'s loop); what is OmniGen's own, as ``OmniGenPipeline.__call__``:

* prompts: ``OmniGenMultiModalProcessor.process_multi_modal_prompt`` (diffusers' own code, called here: the chat
  prefix "<|user|>\\nGenerate an image according to the following instructions\\n...<|end|>\\n<|assistant|>\\n
  <|diffusion|>", h w / 256 placeholder ids per input image of h x w pixels), the rows of one call left-padded
  together with pad id 2 (``OmniGenCollator.pad_input_ids``); per call the collator's position ids and attention
  mask (``create_position`` / ``create_mask`` / ``adjust_attention_for_input_images``, also diffusers' code).
* guidance (Ho & Salimans 2022, eq. 6 in diffusers' convention, always on): text only, u = u_neg + s (u_c - u_neg)
  against the processor's fixed negative prompt ("low quality, jpeg artifacts, ..."; ``guidance_scale`` s, default
  2.5; :class:`~diffkit.guidance.ClassifierFreeGuidance`). With an input image the three-way guidance of Brooks et al.
  2023, eq. 3: u = u_neg + s_I (u_img - u_neg) + s (u_c - u_img), u_img the prompt "<img><|image_1|></img>" alone
  with the image (``img_guidance_scale`` s_I, default 1.6; :class:`OmniGenGuidance`). One network call per step on the
  batch [cond, negative (, image)], all rows padded together, as the pipeline's: the transformer's rotary embedding
  reads the **first row's** position ids for every row (``emb[0]``), so a row's result depends on the batch it runs
  in; diffkit builds the pipeline's batch, so it matches a pipeline call on the same prompts.
* input images (:func:`edit_image`): cropped to multiples of 16 pixels as the processor's ``crop_image`` (centred;
  a side past ``max_input_image_size`` 1024 or under 16 is refused instead of its PIL resize), encoded as z =
  scaling_factor E(x) (no shift) with a posterior draw **per use**: the pipeline encodes the conditional row's and
  the image row's copies apart (``latent_dist.sample()``), so image i's generator ``seed + i`` draws twice, then the
  noise. The output has the image's size (``use_input_image_size_as_output=True``) unless height / width are given.
* the grid: sigmas linspace(1, 0, N + 1)[:N] (default 50 steps) through the folder's fixed-shift scheduler
  (:meth:`.flux.Flux.scheduler_grid`); the transformer is called at the scheduler's timestep s T as given (no / 1000);
  the draws z (B, C, H / f, W / f), sample i from ``seed + i``; decoding x = D(z / scaling_factor) (no shift).
* size: default 128 f = 1024 (the pipeline's default_sample_size), multiples of 16 = 2 f (the processor counts one
  token per 16 x 16 pixels, so a folder whose VAE factor x patch size is not 16 is refused).

Refused in one line before any weight is read (:func:`check_omnigen_folder`): another pipeline class, a missing
component, a transformer / VAE / scheduler of another class, transformer channels that are not the VAE's latent
channels, a ``use_dynamic_shifting`` scheduler (the pipeline passes no mu). At run time: a negative prompt (the
pipeline takes none), a prompt naming ``<|image_k|>`` for k > 1 or lacking ``<img><|image_1|></img>`` with an image.
"""
from __future__ import annotations

import inspect
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from ..denoiser import Prediction, Wrapper
from ..errors import DiffkitError, check_float32
from ..guidance import pipeline_scale
from . import model_dtype, require
from .chroma import Chroma
from .chroma import text_to_image as chroma_text_to_image

OMNIGEN_PIPELINE = "OmniGenPipeline"
OMNIGEN_CLASSES = {"transformer": ("OmniGenTransformer2DModel",), "vae": ("AutoencoderKL",),
                   "scheduler": ("FlowMatchEulerDiscreteScheduler",)}
REQUIRED = ("transformer", "vae", "tokenizer", "scheduler")
OMNIGEN_GUIDANCE = 2.5  # OmniGenPipeline.__call__'s default guidance_scale
OMNIGEN_IMAGE_GUIDANCE = 1.6  # its default img_guidance_scale
OMNIGEN_STEPS = 50  # its default num_inference_steps
MAX_INPUT_IMAGE_SIZE = 1024  # its default max_input_image_size
IMAGE_TAG = "<img><|image_1|></img>"
PIXELS_PER_TOKEN = 16  # the processor's h w // 16 // 16 tokens per image (VAE factor 8 x patch 2)


def is_omnigen_folder(path) -> bool:
    """True for a folder whose ``model_index.json`` names ``OmniGenPipeline`` (so ``diffkit sample`` dispatches)."""
    from .sd_xl import pipeline_class
    return pipeline_class(path) == OMNIGEN_PIPELINE


def check_omnigen_folder(directory) -> tuple:
    """(model_index dict, scheduler config) of an ``OmniGenPipeline`` folder, checked from its JSON alone (module
    docstring); a one-line DiffkitError for what diffkit does not drive."""
    from .flux import check_flux_scheduler
    from .pixart import checked_folder, fixed_shift_scheduler
    directory = Path(directory)
    index, config, vae = checked_folder(directory, OMNIGEN_PIPELINE, REQUIRED, "OmniGen", OMNIGEN_CLASSES)
    latents = int(vae.get("latent_channels", 4))
    if config.get("in_channels", 4) != latents:
        raise DiffkitError(f"{directory}'s transformer has in_channels={config.get('in_channels', 4)!r}; allowed: "
                           f"the VAE's latent channels {latents}")
    f = 2 ** (len(vae.get("block_out_channels", (64,))) - 1) * int(config.get("patch_size", 2))
    if f != PIXELS_PER_TOKEN:
        raise DiffkitError(f"{directory}: the VAE factor x patch size is {f}; allowed: {PIXELS_PER_TOKEN} "
                           f"(OmniGenMultiModalProcessor counts one token per 16 x 16 pixels)")
    fixed_shift_scheduler(directory, OMNIGEN_PIPELINE)
    return index, check_flux_scheduler(directory, OMNIGEN_PIPELINE)


def _processor(tokenizer):
    """diffusers' ``OmniGenMultiModalProcessor`` for its prompt methods alone (``process_multi_modal_prompt``,
    ``add_prefix_instruction``): its torchvision image transform is not built (diffkit crops tensors,
    :func:`crop_images`)."""
    require("diffusers")
    from diffusers.pipelines.omnigen.processor_omnigen import OmniGenMultiModalProcessor
    processor = OmniGenMultiModalProcessor.__new__(OmniGenMultiModalProcessor)
    processor.text_tokenizer = tokenizer
    return processor


def check_image_tags(prompts: Sequence[str], with_image: bool) -> None:
    """One line for a prompt whose ``<|image_k|>`` tags the one input image does not fill: k > 1, or (with an image)
    no ``<img><|image_1|></img>``, or (without) any tag."""
    for prompt in prompts:
        tags = sorted({int(k) for k in re.findall(r"<\|image_(\d+)\|>", prompt)})
        if tags and not with_image:
            raise DiffkitError(f"prompt {prompt!r} names an input image (<|image_{tags[0]}|>); give the image "
                               f"(diffkit edit --images, edit_image) or drop the tag")
        if with_image and (tags != [1] or IMAGE_TAG not in prompt):
            raise DiffkitError(f"prompt {prompt!r} is not allowed with one input image: name it as {IMAGE_TAG} "
                               f"(once; no other <|image_k|>: diffkit gives each prompt one image)")


def crop_images(images: torch.Tensor, max_input_image_size: int = MAX_INPUT_IMAGE_SIZE) -> torch.Tensor:
    """``images`` (B, 3, H, W) cropped to multiples of 16 pixels as the processor's ``crop_image`` (the remainder
    split floor-half on top / left); a side past ``max_input_image_size`` or under 16: one line (the processor would
    resize it with PIL first)."""
    h, w = images.shape[2:]
    if max(h, w) > max_input_image_size or min(h, w) < 16:
        raise DiffkitError(f"input images of {h}x{w} pixels are not allowed; give sides of 16 to "
                           f"{max_input_image_size} pixels (resize them first, e.g. --height / --width)")
    top, left = (h % 16) // 2, (w % 16) // 2
    return images[:, :, top:top + h - h % 16, left:left + w - w % 16]


class OmniGenNet(torch.nn.Module):
    """``net(z, t, context, token_mask, image_latents=None, image_start=None)`` over an
    ``OmniGenTransformer2DModel``: ``context`` (B, L) the left-padded token ids, ``token_mask`` (B, L) their real
    tokens; ``image_latents`` (B, C, h', w') the scaled input-image latents placed at token ``image_start`` (B,) of
    each row (-1: none). The collator's position ids and mask (diffusers' ``OmniGenCollator``) for this batch, the
    timestep t as given (the scheduler's s T) in float32, as the pipeline passes it whatever the transformer's dtype
    (its sinusoidal embedding is then cast); the velocity in z's dtype."""

    def __init__(self, transformer):
        super().__init__()
        self.model = transformer

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor = None, token_mask: torch.Tensor = None,
                image_latents: Optional[torch.Tensor] = None, image_start: Optional[torch.Tensor] = None):
        from diffusers.pipelines.omnigen.processor_omnigen import OmniGenCollator
        if context is None or token_mask is None:
            raise DiffkitError("an OmniGen transformer needs cond {'context', 'token_mask'} (OmniGen.encode_prompts)")
        collator, dtype, (b, _, h, w) = OmniGenCollator(), model_dtype(self.model), x.shape
        p = int(self.model.config.patch_size)
        tokens, mask = [(h // p) * (w // p)] * b, token_mask.to("cpu").long()
        positions = collator.create_position(mask, tokens)
        attention, _ = collator.create_mask(mask, tokens)
        sizes, latents = {}, []
        if image_start is not None:
            span = (image_latents.shape[2] // p) * (image_latents.shape[3] // p)
            for row, start in enumerate(image_start.tolist()):
                if start >= 0:
                    sizes[row] = [[start, start + span]]
                    latents.append(image_latents[row:row + 1].to(dtype))
        attention = collator.adjust_attention_for_input_images(attention, sizes)
        t = torch.as_tensor(t, device=x.device, dtype=torch.float32).reshape(-1).expand(b)
        out = self.model(hidden_states=x.to(dtype), timestep=t, input_ids=context.to(x.device),
                         input_img_latents=latents, input_image_sizes=sizes, attention_mask=attention.to(x.device),
                         position_ids=positions.to(x.device), return_dict=False)[0]
        return out.to(x.dtype)


class OmniGenGuidance(Wrapper):
    """OmniGen's guidance with an input image (module docstring): one network call on 3B rows [cond, negative,
    image alone] (each branch's cond from :meth:`OmniGen.prompt_guidance`, rows padded together), mixed as
    Brooks et al. 2023, eq. 3 (:func:`.sd_instruct_pix2pix.dual_guidance`, the pipeline's ``uncond + img_guidance_scale
    (img_cond - uncond) + guidance_scale (cond - img_cond)``) on eps and x_0 alike (the weights sum to 1)."""

    def __init__(self, denoiser, text_scale: float, image_scale: float, negative: dict, image_only: dict):
        self.inner, self.text_scale, self.image_scale = denoiser, float(text_scale), float(image_scale)
        self.negative, self.image_only = negative, image_only

    def __call__(self, x: torch.Tensor, t, y=None, **cond) -> Prediction:  # y: unused (no class labels)
        from ..guidance import _times64
        from .sd_instruct_pix2pix import dual_guidance
        batch = x.shape[0]
        branches = (cond, {**cond, **self.negative}, {**cond, **self.image_only})
        three = {key: torch.cat([b[key].to(x.device) for b in branches]) for key in cond}
        t3 = torch.cat([_times64(t, batch)] * 3) if torch.as_tensor(t).ndim else t
        pred = self.inner(torch.cat([x] * 3), t3, **three)

        def mixed(out: torch.Tensor) -> torch.Tensor:  # the pipeline's cond, uncond, img_cond thirds
            text, negative, image_only = out.chunk(3)
            return dual_guidance(text, image_only, negative, self.text_scale, self.image_scale)
        return Prediction(eps=mixed(pred.eps), x0=mixed(pred.x0))


def _scale(name: str, value, default: float, pipeline: str = OMNIGEN_PIPELINE) -> float:
    """A guidance scale: ``default`` for None, else a finite float32 number (one line otherwise, naming
    ``pipeline``'s default; DreamLite's too, :mod:`.dreamlite`)."""
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DiffkitError(f"{name}={value!r} is not allowed; give a finite number ({pipeline}'s default "
                           f"{default})")
    return float(check_float32(name, value))


@dataclass
class OmniGen(Chroma):
    """The loaded components of an ``OmniGenPipeline`` folder (:func:`load_omnigen`): a :class:`~.chroma.Chroma`
    (shapes, the scheduler's grid, decoding, :func:`.chroma.text_to_image`'s loop) with no text encoder, OmniGen's
    network, prompts and guidance (module docstring)."""

    default_steps = OMNIGEN_STEPS
    guidance_hint = f"the pipeline's default {OMNIGEN_GUIDANCE}, always guided"
    max_sequence_length = None  # no text length: the transformer reads the whole tokenised prompt

    @property
    def shift_factor(self) -> float:
        return 0.0  # OmniGenPipeline decodes z / scaling_factor (no shift; its VAE's shift_factor is null)

    def latent_channels(self) -> int:
        return int(self.transformer.config.in_channels)  # no 2 x 2 packing of the channels

    def mu(self, h: int, w: int, steps: Optional[int] = None):
        return None  # a fixed-shift scheduler: the pipeline passes no mu

    def network(self) -> torch.nn.Module:
        return OmniGenNet(self.transformer)

    def encode_prompts(self, prompts: Sequence[str], image_size: Optional[tuple] = None) -> list:
        """[cond, negative (, image alone)] cond dicts of the prompts as the pipeline's processor and collator: each
        {context (B, L), token_mask (B, L)} (with ``image_size`` (H, W), the input image's pixels: image_start (B,)
        too), all 2B or 3B rows left-padded together (``OmniGenCollator.pad_input_ids``)."""
        from diffusers.pipelines.omnigen.processor_omnigen import OmniGenCollator
        from .stable_diffusion import prompt_list
        prompts = prompt_list(prompts)
        check_image_tags(prompts, image_size is not None)
        processor = _processor(self.tokenizer)
        negative = inspect.signature(processor.__call__).parameters["negative_prompt"].default  # its fixed one
        image = None if image_size is None else [torch.empty(0, *image_size)]  # (its sizes alone are read)
        rows = [processor.process_multi_modal_prompt(p, image) for p in prompts]
        rows += [processor.process_multi_modal_prompt(negative, None) for _ in prompts]
        if image is not None:
            rows += [processor.process_multi_modal_prompt(IMAGE_TAG, image) for _ in prompts]
        spans = {i: row["image_sizes"] for i, row in enumerate(rows) if row["image_sizes"]}
        ids, mask, spans = OmniGenCollator().pad_input_ids([row["input_ids"] for row in rows], spans)
        starts = torch.tensor([spans[i][0][0] if i in spans else -1 for i in range(len(rows))], device=self.device)
        for i, span in spans.items():
            if any(s != span[0][0] for s, _ in span):  # the tag used twice: one start per row is all diffkit keeps
                raise DiffkitError(f"prompt {prompts[i % len(prompts)]!r} names {IMAGE_TAG} more than once; "
                                   f"allowed: once")
        b = len(prompts)
        out = []
        for k in range(len(rows) // b):
            cond = {"context": ids[k * b:(k + 1) * b].to(self.device),
                    "token_mask": mask[k * b:(k + 1) * b].to(self.device)}
            if image is not None:
                cond["image_start"] = starts[k * b:(k + 1) * b]
            out.append(cond)
        return out

    def prompt_guidance(self, prompts, h: int, w: int, guidance_scale: Optional[float] = None,
                        negative_prompt=None, max_sequence_length=None, convention: str = "diffusers",
                        ip_adapter=None, image_latents: Optional[tuple] = None, image_size: Optional[tuple] = None,
                        image_guidance_scale: Optional[float] = None) -> tuple:
        """(denoiser, cond) at latents h x w (:meth:`.chroma.Chroma.prompt_guidance`'s signature, for
        :func:`.chroma.text_to_image`): the pipeline's guidance (module docstring), ``guidance_scale`` s (default
        2.5; ``convention="seed"`` reads W, s = 1 + W). ``image_latents``: (cond's, image row's) scaled latents of
        the input images of ``image_size`` pixels (:func:`edit_image`), guided with ``image_guidance_scale`` s_I
        (default 1.6). A negative prompt, a max_sequence_length or an IP-Adapter: one line (the pipeline has
        none)."""
        from ..errors import check_choice
        from ..guidance import ClassifierFreeGuidance
        for name, value in (("negative_prompt", negative_prompt), ("max_sequence_length", max_sequence_length),
                            ("ip_adapter", ip_adapter)):
            if value is not None:
                raise DiffkitError(f"{name} does not apply to an OmniGen folder (OmniGenPipeline has none; its "
                                   f"negative branch is the processor's fixed negative prompt)")
        check_choice("convention", convention, ["diffusers", "seed"])
        scale = pipeline_scale(guidance_scale, _scale("guidance_scale", guidance_scale, OMNIGEN_GUIDANCE), convention)
        if image_latents is None and image_guidance_scale is not None:
            raise DiffkitError("image_guidance_scale applies with an input image (edit_image); drop it")
        branches = self.encode_prompts(prompts, image_size if image_latents is not None else None)
        denoiser = self.denoiser_for(h, w)
        if image_latents is None:  # [cond, negative], one batched call (the contexts share their padded length)
            return ClassifierFreeGuidance(denoiser, scale, "diffusers", null_context=branches[1]["context"],
                                          null_cond={"token_mask": branches[1]["token_mask"]}), branches[0]
        image_scale = _scale("image_guidance_scale", image_guidance_scale, OMNIGEN_IMAGE_GUIDANCE)
        cond, negative, image_only = branches
        cond["image_latents"], image_only["image_latents"] = image_latents
        negative["image_latents"] = torch.zeros_like(image_latents[0])  # (unread: its image_start is -1)
        return OmniGenGuidance(denoiser, scale, image_scale, negative, image_only), cond


def load_omnigen(directory: Union[str, Path], device="cpu", dtype: torch.dtype = torch.float32,
                 progress: bool = True) -> OmniGen:
    """Load an ``OmniGenPipeline`` diffusers folder (never downloads, never unpickles); what diffkit does not drive
    is refused in one line before any weight is read (:func:`check_omnigen_folder`)."""
    from . import from_pretrained, library_progress_bars
    from .flow_latents import load_flow_parts
    diffusers, transformers = require("diffusers"), require("transformers")
    directory = Path(directory)
    index, sched = check_omnigen_folder(directory)
    parts = load_flow_parts(directory, index, diffusers.OmniGenTransformer2DModel, {}, dtype, progress)
    from .sd3 import _entry
    tokenizer_cls = getattr(transformers, _entry(index, "tokenizer") or "", None) or transformers.AutoTokenizer
    with library_progress_bars(progress):
        tokenizer = from_pretrained(tokenizer_cls, directory / "tokenizer", local_files_only=True)
    device = torch.device(device)
    for name in ("transformer", "vae"):
        parts[name].to(device).eval().requires_grad_(False)
    return OmniGen(**parts, text_encoder=None, tokenizer=tokenizer, text_encoder_2=None, tokenizer_2=None,
                   scheduler_config=sched, device=device, dtype=dtype)


def text_to_image(omnigen: OmniGen, prompts: Union[str, Sequence[str]], **options) -> torch.Tensor:
    """Images of an OmniGen folder for ``prompts`` as ``OmniGenPipeline(prompt)``: :func:`.chroma.text_to_image`
    (sampler / grid, default the pipeline's loop of 50 steps; ``guidance_scale`` (default 2.5, always guided,
    ``convention``); latents (B, C, H / f, W / f), default from ``seed + i``; height / width (default 1024); output
    options) with OmniGen's :meth:`OmniGen.prompt_guidance` (no negative prompt, no max_sequence_length)."""
    options.setdefault("max_sequence_length", None)
    return chroma_text_to_image(omnigen, prompts, **options)


def edit_image(omnigen: OmniGen, images: torch.Tensor, prompts: Union[str, Sequence[str]], *,
               image_guidance_scale: Optional[float] = None, height: Optional[int] = None,
               width: Optional[int] = None, max_input_image_size: int = MAX_INPUT_IMAGE_SIZE,
               posterior: str = "sample", seed: Optional[int] = 0, generator=None, **options) -> torch.Tensor:
    """Images of an OmniGen folder for ``prompts`` (one, or one per image) that name each image of ``images``
    (B, 3, H, W) in [-1, 1] as ``<img><|image_1|></img>``, as ``OmniGenPipeline(prompt, input_images=[image])``
    (module docstring): the images cropped to multiples of 16 (:func:`crop_images`), their latents drawn twice
    (``posterior`` "sample": the cond row's, then the image row's, from image i's generator ``seed + i`` or
    ``generator``; "mean": the posterior mean for both), then the noise from the same generator; the output the
    image's size (``use_input_image_size_as_output``) unless ``height`` / ``width``; guidance ``guidance_scale``
    (default 2.5) and ``image_guidance_scale`` s_I (default 1.6). ``options``: :func:`.chroma.text_to_image`'s
    (sampler, steps, grid, output_range, return_latents, ...)."""
    from ..editing import _generators
    from ..errors import check_choice
    from ..noise import randn
    from .flow_latents import edit_prompts
    check_choice("posterior", posterior, ["sample", "mean"])
    prompts = edit_prompts(images, prompts)
    check_image_tags(prompts, True)
    images = crop_images(images, max_input_image_size).to(omnigen.device, omnigen.dtype)
    size = tuple(images.shape[2:])
    height, width = (size if height is None and width is None else (height, width))
    shape = omnigen.latent_shape(images.shape[0], height, width)
    generators = _generators(seed, generator, images.shape[0])
    latents = tuple(omnigen.encode(images, generators, posterior == "sample") for _ in range(2))
    noise = randn(shape, generators, device=omnigen.device, dtype=omnigen.dtype)
    guide = {"image_latents": latents, "image_size": size, "image_guidance_scale": image_guidance_scale}
    return text_to_image(omnigen, prompts, latents=noise, height=height, width=width, seed=None, guide=guide,
                         **options)


__all__ = ["OmniGen", "OmniGenNet", "OmniGenGuidance", "load_omnigen", "is_omnigen_folder", "check_omnigen_folder",
           "check_image_tags", "crop_images", "text_to_image", "edit_image", "OMNIGEN_GUIDANCE",
           "OMNIGEN_IMAGE_GUIDANCE", "OMNIGEN_STEPS"]
