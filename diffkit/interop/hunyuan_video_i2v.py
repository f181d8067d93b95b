"""A HunyuanVideo image-to-video diffusers folder (``HunyuanVideoImageToVideoPipeline``, diffusers 0.42.1): a video
from an image and a prompt, with any diffkit sampler.

HunyuanVideo-I2V (Tencent 2025; Kong et al. 2024, "HunyuanVideo") is HunyuanVideo's rectified-flow
transformer and causal VAE (:mod:`.hunyuan_video`: x_s = (1 - s) x_0 + s eps, velocity eps - x_0; the folder's grid,
guidance embedding, true CFG and decoding are text-to-video's) with the image in two places. As
``HunyuanVideoImageToVideoPipeline.__call__``:

* prompts: the text encoder is LLaVA (``LlavaForConditionalGeneration``: a CLIP vision tower, a projector, Llama).
  Each prompt in the pipeline's ``DEFAULT_PROMPT_TEMPLATE`` (a system text describing a video from a reference
  image, holding one ``<image>`` token; ``crop_start`` 103) is tokenised to ``max_sequence_length`` (default 256) +
  103 tokens; the ``<image>`` token becomes ``image_emb_len`` (576) image tokens, tokens 5..580 of the expanded ids
  are image tokens, the mask is 1 on the expanded ids that are not padding, the positions its cumulative sum - 1
  (:func:`expand_image_tokens`). LLaVA runs on those with the folder's ``CLIPImageProcessor`` pixels of the image;
  of its hidden state **-3**, the image's states 5..580 every ``interleave``-th one (mask 1), then the text's: from
  102 + 576 up to 4 tokens before the assistant header's end (the last ``<|end_header_id|>`` + 1, or the row's
  end where truncation cut it) and from there on, the mask likewise on the unexpanded ids (:func:`crop_states`).
  ``interleave``: 2 for a ``latent_concat`` transformer, 4 for ``token_replace``. CLIP's pooled output of the prompt
  as text-to-video's. True CFG's negative prompt is encoded with a black image of width x height and interleave 2
  (``encode_prompt``'s default, whatever the transformer).
* the image: resized to height x width (Lanczos), x / 255 * 2 - 1, encoded as a one-frame video, the posterior's mode
  times ``scaling_factor`` (``prepare_latents``' ``"argmax"``): z_img. The sampler starts at 0.999 eps + 0.001 z_img
  on every latent frame (the pipeline's ``latents * t + image_latents * (1 - t)``, t = 0.999).
* ``image_condition_type`` ``latent_concat`` (in_channels 2 C + 1): the transformer's input is [z_t, z_img on frame 0
  (0 on the others), a mask channel 1 on frame 0] along the channels; every frame is sampled. The output drops
  latent frame 0 (``output_type="latent"``) or decoded frames 0-3 (so num_frames - 4 frames).
  ``token_replace`` (in_channels C): the input's frame 0 is z_img, the transformer reads it as clean tokens; the
  scheduler steps frames 1.. only and frame 0 of the result is z_img; here every frame is sampled (the state's frame
  0 never reaches the transformer) and frame 0 set to z_img at the end.
* the grid, the embedded ``guidance_scale`` (default **1.0** here, the pipeline's; a transformer without guidance
  embeds refuses it), true CFG (``true_cfg_scale`` > 1 with a negative prompt), frames 4 k + 1 (default 129; >= 5
  here), size (default 720 x 1280, multiples of 16), float32 latents and decoding: as :mod:`.hunyuan_video`.

Unlike the pipeline (one image: its LLaVA call fails on several prompts), each video has its own image and prompt.
Refused in one line before any weight is read (:func:`check_hunyuan_video_i2v_folder`): another pipeline class, a
missing component or one of another class, an ``image_condition_type`` other than the two, transformer channels that
do not fit it, a scheduler text-to-video refuses; at load, a tokenizer without the template's ``<image>`` (LLaVA's
``image_token_index``) or ``<|end_header_id|>`` token; at encoding, a row without ``<|end_header_id|>`` or rows of
different text lengths after the crop. No LoRA files (the pipeline's loader mixin is
text-to-video's; not wired here).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from ..errors import DiffkitError
from . import model_dtype, require
from .chronoedit import CHRONOEDIT_CLASSES
from .hunyuan_video import HIDDEN_STATE, MAX_SEQUENCE_LENGTH, HunyuanVideo, HunyuanVideoNet

HUNYUAN_I2V_PIPELINE = "HunyuanVideoImageToVideoPipeline"
KIND = "HunyuanVideo image-to-video"
REQUIRED = ("transformer", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "scheduler",
            "image_processor")
HUNYUAN_I2V_CLASSES = {"transformer": ("HunyuanVideoTransformer3DModel",), "vae": ("AutoencoderKLHunyuanVideo",),
                       "text_encoder": ("LlavaForConditionalGeneration",), "text_encoder_2": ("CLIPTextModel",),
                       "scheduler": ("FlowMatchEulerDiscreteScheduler",),
                       "image_processor": CHRONOEDIT_CLASSES["image_processor"]}  # (its Pil / Fast backends too)
HUNYUAN_I2V_GUIDANCE = 1.0  # __call__'s guidance_scale (the embedded one)
INTERLEAVE = {"latent_concat": 2, "token_replace": 4}  # __call__'s image_embed_interleave per image_condition_type
NEGATIVE_INTERLEAVE = 2  # encode_prompt's default, which the negative prompt's call keeps
IMAGE_NOISE = 0.999  # prepare_latents' t: latents * t + image_latents * (1 - t)
CONCAT_DROPPED_FRAMES = 4  # latent_concat: the decoded video[:, :, 4:]
END_HEADER = "<|end_header_id|>"
IMAGE_TOKEN = "<image>"


def prompt_template() -> dict:
    """The pipeline's ``DEFAULT_PROMPT_TEMPLATE`` (template, crop_start 103, image_emb_start 5, image_emb_end 581,
    image_emb_len 576), read from diffusers."""
    require("diffusers")
    from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video_image2video import DEFAULT_PROMPT_TEMPLATE
    return DEFAULT_PROMPT_TEMPLATE


def expand_image_tokens(ids: torch.Tensor, image_token: int, pad_token: int, template: dict) -> tuple:
    """(input ids, attention mask, position ids) of LLaVA's input for tokenised prompts ``ids`` (B, L) as the
    pipeline's ``_expand_input_ids_with_image_tokens``: each ``image_token`` widened to ``image_emb_len`` slots of
    ``pad_token``, rows padded with ``pad_token`` to L + (most image tokens in a row) (len - 1), then slots
    ``image_emb_start:image_emb_end`` set to ``image_token``; mask = ids != pad_token, positions its cumsum - 1 (1 on
    padding)."""
    length = template["image_emb_len"]
    width = ids.shape[1] + int((ids == image_token).sum(-1).max()) * (length - 1)
    rows = []
    for row in ids.tolist():
        out = [t for token in row for t in ([pad_token] * length if token == image_token else [token])]
        rows.append(out + [pad_token] * (width - len(out)))
    expanded = torch.tensor(rows, dtype=ids.dtype, device=ids.device)
    expanded[:, template["image_emb_start"]:template["image_emb_end"]] = image_token
    mask = (expanded != pad_token).long()
    return expanded, mask, (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)


def assistant_start(ids: torch.Tensor, end_header: int) -> int:
    """The token index after the assistant header of one tokenised prompt ``ids`` (L,), as the pipeline's crop of one
    prompt: the last ``end_header`` + 1, or L where truncation cut the header (the row has two); one line where the
    row has none (a tokenizer that does not split the template as Llama 3's)."""
    where = (ids == end_header).nonzero().flatten().tolist()
    if not where:
        raise DiffkitError(f"this tokenizer does not encode the template's {END_HEADER} as token {end_header}; "
                           f"allowed: a tokenizer splitting the template as Llama 3's ({HUNYUAN_I2V_PIPELINE})")
    return ids.shape[0] if len(where) == 2 else where[-1] + 1


def crop_states(states: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, starts: list, template: dict,
                interleave: int) -> tuple:
    """(context (B, N, d), mask (B, N)) of LLaVA's hidden states ``states`` (B, L + len - 1, d) over the expanded
    ids, the tokenised ``ids`` / ``mask`` (B, L) and each row's :func:`assistant_start`, as the pipeline's crop: the
    image states (every ``interleave``-th when 0 < interleave < 6; mask 1) then the text's without the template and
    the 4 tokens before the assistant header's end (module docstring)."""
    crop, length = template["crop_start"], template["image_emb_len"]
    image = states[:, template["image_emb_start"]:template["image_emb_end"]]
    if 0 < interleave < 6:
        image = image[:, ::interleave]
    offset = length - 1  # a text token's index in the expanded ids past the image
    rows = [torch.cat([states[i, crop + offset:start + offset - 4], states[i, start + offset:]])
            for i, start in enumerate(starts)]
    counts = sorted({row.shape[0] for row in rows})
    if len(counts) > 1:
        raise DiffkitError(f"the prompts keep {counts} text tokens after the template's crop; allowed: one count for "
                           f"every prompt (a tokenizer splitting the template as Llama 3's)")
    text = torch.stack(rows)
    text_mask = torch.stack([torch.cat([mask[i, crop:start - 4], mask[i, start:]]) for i, start in enumerate(starts)])
    ones = torch.ones(image.shape[:2], dtype=mask.dtype, device=mask.device)
    return torch.cat([image, text], dim=1), torch.cat([ones, text_mask], dim=1)


class HunyuanI2VNet(HunyuanVideoNet):
    """``net(z, t, context, mask, pooled, image)``: :class:`.hunyuan_video.HunyuanVideoNet` on the transformer's input
    of an image-conditioned transformer (module docstring): ``latent_concat``: [z, image] along the channels, image
    = [z_img on frame 0, mask channel] (B, C + 1, F, h, w); ``token_replace``: z's frame 0 replaced by image = z_img
    (B, C, 1, h, w)."""

    def __init__(self, transformer, guidance: Optional[float], replace_first: bool):
        super().__init__(transformer, guidance)
        self.replace_first = replace_first

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor = None, mask: torch.Tensor = None,
                pooled: torch.Tensor = None, image: torch.Tensor = None) -> torch.Tensor:
        if image is None:
            raise DiffkitError("a HunyuanVideo image-to-video transformer needs cond['image'] (image_to_video)")
        image = image.to(x).expand(x.shape[0], *image.shape[1:])
        inputs = torch.cat([image, x[:, :, 1:]], dim=2) if self.replace_first else torch.cat([x, image], dim=1)
        return super().forward(inputs, t, context, mask, pooled)


@dataclass
class HunyuanVideoI2V(HunyuanVideo):
    """The loaded components of a ``HunyuanVideoImageToVideoPipeline`` folder (:func:`load_hunyuan_video_i2v`): a
    HunyuanVideo folder's, LLaVA as ``text_encoder``, and its ``image_processor``."""

    image_processor: object = None

    default_guidance = HUNYUAN_I2V_GUIDANCE

    @property
    def condition_type(self) -> str:
        """The transformer's ``image_condition_type``: ``latent_concat`` or ``token_replace``."""
        return self.transformer.config.image_condition_type

    @property
    def latent_channels(self) -> int:
        """C: the VAE's latent channels (the transformer's output channels)."""
        return int(self.vae.config.latent_channels)

    def network(self, guidance: Optional[float]) -> torch.nn.Module:
        """:class:`HunyuanI2VNet` on the transformer's ``image_condition_type``."""
        return HunyuanI2VNet(self.transformer, guidance, self.condition_type == "token_replace")

    def encode_prompts(self, prompts: Sequence[str], images: Sequence, interleave: int = NEGATIVE_INTERLEAVE,
                       max_sequence_length: int = MAX_SEQUENCE_LENGTH) -> tuple:
        """(LLaVA states (B, N, d), mask (B, N), CLIP pooled (B, d_2)) of ``prompts`` each with its PIL image of
        ``images`` as the pipeline's ``encode_prompt`` (module docstring), in the transformer's dtype."""
        if isinstance(max_sequence_length, bool) or not isinstance(max_sequence_length, int) \
                or max_sequence_length < 1:
            raise DiffkitError(f"max_sequence_length={max_sequence_length!r} is not allowed; give a positive integer "
                               f"(the Llama tokens after the template's, default {MAX_SEQUENCE_LENGTH})")
        template = prompt_template()
        crop = template["crop_start"]
        tokens = self.tokenizer([template["template"].format(p) for p in prompts],
                                max_length=max_sequence_length + crop, padding="max_length", truncation=True,
                                return_tensors="pt", return_attention_mask=True)
        ids, mask = tokens.input_ids.to(self.device), tokens.attention_mask.to(self.device)
        end_header = self.tokenizer.convert_tokens_to_ids(END_HEADER)
        starts = [assistant_start(row, end_header) for row in ids]
        config = self.text_encoder.config
        expanded, expanded_mask, positions = expand_image_tokens(ids, config.image_token_index, config.pad_token_id,
                                                                 template)
        pixels = self.image_processor(list(images), return_tensors="pt").pixel_values.to(self.device)
        with torch.no_grad():
            states = self.text_encoder(input_ids=expanded, attention_mask=expanded_mask, position_ids=positions,
                                       pixel_values=pixels, output_hidden_states=True).hidden_states[HIDDEN_STATE]
        context, mask = crop_states(states.to(self.text_encoder.dtype), ids, mask, starts, template, interleave)
        return context.to(model_dtype(self.transformer)), mask, self.pooled_prompts(prompts)

    def image_latents(self, images: Sequence, height: int, width: int) -> torch.Tensor:
        """z_img (B, C, 1, h, w), float32: PIL ``images`` resized to height x width (Lanczos), x / 255 * 2 - 1, the
        VAE posterior's mode of each as a one-frame video, times ``scaling_factor`` (``prepare_latents``)."""
        from PIL import Image

        from .qwen_image_edit import _pixels
        from .stable_diffusion import vae_latents
        pixels = _pixels([image.resize((width, height), resample=Image.LANCZOS) for image in images])
        return vae_latents(self.vae, pixels[:, :, None], self.device).float() * self.scaling_factor

    def image_condition(self, image: torch.Tensor, frames: int) -> torch.Tensor:
        """cond['image'] of :class:`HunyuanI2VNet` for z_img (B, C, 1, h, w) and ``frames`` latent frames:
        ``latent_concat``'s [z_img on frame 0, 0 after; mask 1 on frame 0] (B, C + 1, F, h, w), ``token_replace``'s
        z_img."""
        if self.condition_type == "token_replace":
            return image
        condition = torch.zeros(image.shape[0], image.shape[1] + 1, frames, *image.shape[3:]).to(image)
        condition[:, :-1, :1], condition[:, -1:, :1] = image, 1.0
        return condition


def is_hunyuan_video_i2v_folder(path) -> bool:
    """True for a folder whose ``model_index.json`` names ``HunyuanVideoImageToVideoPipeline``."""
    from .sd_xl import pipeline_class
    return pipeline_class(path) == HUNYUAN_I2V_PIPELINE


def check_hunyuan_video_i2v_folder(directory) -> tuple:
    """(model_index dict, scheduler config) of a ``HunyuanVideoImageToVideoPipeline`` folder, checked from its JSON
    alone (module docstring); a one-line DiffkitError for what diffkit does not drive."""
    return check_image_folder(directory, HUNYUAN_I2V_PIPELINE, KIND, REQUIRED, HUNYUAN_I2V_CLASSES,
                              {"latent_concat": lambda c: 2 * c + 1, "token_replace": lambda c: c})


def check_image_folder(directory, pipeline: str, kind: str, required, classes: dict, in_channels: dict) -> tuple:
    """(model_index dict, scheduler config) of a HunyuanVideo image-to-video folder of ``pipeline`` (its
    ``required`` components of ``classes``), from its JSON alone: the transformer's ``image_condition_type`` one of
    ``in_channels`` ({type: in_channels for C latent channels}), its channels those and C, the scheduler
    text-to-video's; one line otherwise."""
    from .flux import check_flux_scheduler
    from .hidream import folder_sampler
    from .pixart import checked_folder, fixed_shift_scheduler
    directory = Path(directory)
    index, config, vae = checked_folder(directory, pipeline, required, kind, classes)
    condition = config.get("image_condition_type")
    if condition not in in_channels:
        raise DiffkitError(f"{directory}'s transformer has image_condition_type={condition!r}; allowed: "
                           f"{', '.join(map(str, in_channels))} ({pipeline})")
    latents = vae.get("latent_channels", 16)
    need = (in_channels[condition](latents), latents)
    channels = (config.get("in_channels", 16), config.get("out_channels") or config.get("in_channels", 16))
    if channels != need:
        raise DiffkitError(f"{directory}'s transformer has in_channels, out_channels = {channels[0]!r}, "
                           f"{channels[1]!r}; allowed for image_condition_type {condition} on the VAE's {latents!r} "
                           f"latent channels: {need[0]}, {need[1]}")
    sched = fixed_shift_scheduler(directory, pipeline)
    check_flux_scheduler(directory, pipeline)
    folder_sampler(sched)  # one line for a scheduler whose step diffkit's samplers do not compute
    return index, sched


def load_hunyuan_video_i2v(directory: Union[str, Path], device="cpu", dtype: torch.dtype = torch.float32,
                           progress: bool = True) -> HunyuanVideoI2V:
    """Load a ``HunyuanVideoImageToVideoPipeline`` folder (never downloads, never unpickles), checked first
    (:func:`check_hunyuan_video_i2v_folder`); one line where the tokenizer lacks the template's tokens or the
    transformer's widths do not fit the encoders'."""
    from ..schedule import NoiseSchedule
    from . import from_pretrained, library_progress_bars
    from .flow_latents import frozen_on, load_flow_parts
    from .sana import flow_shift_of
    from .schedulers import train_timesteps
    from .wan import check_widths
    diffusers, transformers = require("diffusers"), require("transformers")
    directory = Path(directory)
    index, sched = check_hunyuan_video_i2v_folder(directory)
    parts = load_flow_parts(directory, index, diffusers.HunyuanVideoTransformer3DModel,
                            {"": "LlavaForConditionalGeneration", "_2": "CLIPTextModel"}, dtype, progress,
                            vae_cls=diffusers.AutoencoderKLHunyuanVideo)
    with library_progress_bars(progress):
        processor = from_pretrained(transformers.CLIPImageProcessor, directory / "image_processor",
                                    local_files_only=True)
    device = frozen_on(parts, device)
    parts["text_encoder_2"].to(device).eval().requires_grad_(False)
    schedule = NoiseSchedule.flow(train_timesteps(sched), flow_shift_of(sched))
    model = HunyuanVideoI2V(**parts, scheduler_config=sched, schedule=schedule, device=device, dtype=dtype,
                            image_processor=processor)
    llava = model.text_encoder.config
    for token, want in ((IMAGE_TOKEN, llava.image_token_index), (END_HEADER, None)):
        got = model.tokenizer.convert_tokens_to_ids(token)
        if got is None or got == model.tokenizer.unk_token_id or got != (got if want is None else want):
            allowed = "a token of its own" if want is None else f"the text encoder's image_token_index {want}"
            raise DiffkitError(f"{directory}: the tokenizer encodes the template's {token} as {got!r}; allowed: "
                               f"{allowed}")
    config = model.transformer.config
    check_widths(directory, [(config.text_embed_dim, llava.text_config.hidden_size, "text_embed_dim"),
                             (config.pooled_projection_dim, model.text_encoder_2.config.hidden_size,
                              "pooled_projection_dim")])
    return model


def paired(images, prompts) -> tuple:
    """(PIL images, prompts), as many of each as videos, of ``images`` (PIL images or (B, 3, H, W) in [-1, 1]) and
    ``prompts``, each one or one per video; one line otherwise."""
    from .qwen_image_edit import _pil_images
    from .stable_diffusion import prompt_list
    pil, prompts = _pil_images(images), prompt_list(prompts)
    count = max(len(pil), len(prompts))
    for what, given in (("images", pil), ("prompts", prompts)):
        if len(given) not in (1, count):
            raise DiffkitError(f"{len(given)} {what} for {count} videos; give one, or one per video")
    return (pil * count if len(pil) == 1 else pil), (prompts * count if len(prompts) == 1 else prompts)


def check_i2v_frames(frames, factor: int = 4) -> int:
    """``frames`` where it is 4 k + 1 >= 5 (:func:`.hunyuan_video.check_frames`, and a latent frame after the
    image's); one line otherwise."""
    from .hunyuan_video import check_frames
    check_frames(frames, factor)
    if frames < factor + 1:
        raise DiffkitError(f"num_frames={frames!r} is not allowed for image-to-video; give {factor} k + 1 >= "
                           f"{factor + 1} frames")
    return frames


def image_to_video(model: HunyuanVideoI2V, images, prompts: Union[str, Sequence[str]], *, negative_prompt=None,
                   guidance_scale: Optional[float] = None, convention: str = "diffusers", true_cfg_scale: float = 1.0,
                   steps: Optional[int] = None, sampler: Optional[str] = None, nfe: Optional[int] = None,
                   grid: Union[None, str, torch.Tensor] = None, num_frames: Optional[int] = None,
                   height: Optional[int] = None, width: Optional[int] = None, seed: Optional[int] = 0,
                   latents: Optional[torch.Tensor] = None, max_sequence_length: int = MAX_SEQUENCE_LENGTH,
                   output_range: str = "-1,1", return_latents: bool = False, progress: bool = False,
                   **options) -> torch.Tensor:
    """Videos (B, T, 3, H, W) from ``images`` (PIL images or (B, 3, H, W) in [-1, 1]; one for every prompt, or one
    per video) and ``prompts`` (one, or one per video) as ``HunyuanVideoImageToVideoPipeline`` (module docstring).

    Keyword arguments as :func:`.hunyuan_video.text_to_video`'s (guidance_scale: the embedded guidance, default 1.0;
    true_cfg_scale with negative_prompt; sampler / grid / steps / nfe; num_frames 4 k + 1 >= 5, default 129; height
    / width, default 720 x 1280; latents: the noise eps (B, C, F, h, w), the pipeline's ``latents``, before the
    0.001 image mix). Returns videos in ``output_range`` (a ``latent_concat`` folder's without decoded frames 0-3),
    or with ``return_latents`` the pipeline's ``output_type="latent"`` (a ``latent_concat`` folder's without latent
    frame 0)."""
    from ..errors import check_choice
    from ..guidance import ClassifierFreeGuidance
    from ..sampling import sample
    from .flow_latents import pipeline_grid
    from .flux import check_true_cfg
    from .hunyuan_video import start_video
    from .stable_diffusion import OUTPUT_RANGES, negative_prompts
    from PIL import Image
    check_choice("output_range", output_range, OUTPUT_RANGES)
    check_choice("convention", convention, ["diffusers", "seed"])
    pil, prompts = paired(images, prompts)
    count = len(pil)
    check_i2v_frames(model.default_frames if num_frames is None else num_frames, model.temporal_factor)
    model.check_guidance_scale(guidance_scale)
    check_true_cfg(true_cfg_scale, negative_prompt)
    sampler, grid, steps = pipeline_grid(sampler, grid, steps, nfe, model.default_steps, model.scheduler_grid,
                                         options.get("flow_shift"))
    noise, height, width = start_video(model, count, model.latent_channels, num_frames, height, width, seed, latents,
                                       HUNYUAN_I2V_PIPELINE)
    state = torch.float32  # the pipeline's latents and scheduler state, whatever the transformer's dtype
    image = model.image_latents(pil, height, width)
    t = torch.tensor([IMAGE_NOISE])
    start = noise.to(model.device, state) * t.to(model.device) + image * (1 - t.to(model.device))
    context, mask, pooled = model.encode_prompts(prompts, pil, INTERLEAVE[model.condition_type], max_sequence_length)
    cond = {"context": context, "mask": mask, "pooled": pooled, "image": model.image_condition(image, noise.shape[2])}
    denoiser = model.denoiser(guidance_scale)
    if true_cfg_scale > 1:
        negatives = negative_prompts(negative_prompt, count)
        negatives = negatives[:1] if len(set(negatives)) == 1 else negatives  # one row serves every video
        black = [Image.new("RGB", (width, height), 0)] * len(negatives)
        null_context, null_mask, null_pooled = model.encode_prompts(negatives, black, NEGATIVE_INTERLEAVE,
                                                                    max_sequence_length)
        denoiser = ClassifierFreeGuidance(denoiser, float(true_cfg_scale), "diffusers", null_context=null_context,
                                          null_cond={"mask": null_mask, "pooled": null_pooled})
    z = sample(denoiser, start, sampler, steps, nfe=nfe, grid=grid, seed=seed, cond=cond, progress=progress,
               device=model.device, dtype=state, **options)
    concat = model.condition_type == "latent_concat"
    if not concat:  # token_replace: frame 0 is the image's latents (the pipeline steps frames 1.. only)
        z = torch.cat([image.to(z), z[:, :, 1:]], dim=2)
    if return_latents:
        return z[:, :, 1:] if concat else z
    videos = model.decode_video(z)[:, CONCAT_DROPPED_FRAMES if concat else 0:]
    return (videos / 2 + 0.5).clamp(0, 1) if output_range == "0,1" else videos.clamp(-1, 1)


__all__ = ["HunyuanVideoI2V", "HunyuanI2VNet", "load_hunyuan_video_i2v", "is_hunyuan_video_i2v_folder",
           "check_hunyuan_video_i2v_folder", "check_image_folder", "image_to_video", "prompt_template",
           "expand_image_tokens", "assistant_start", "crop_states", "check_i2v_frames", "paired",
           "HUNYUAN_I2V_PIPELINE", "HUNYUAN_I2V_GUIDANCE"]
