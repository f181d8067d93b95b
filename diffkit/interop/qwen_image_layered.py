"""A Qwen-Image-Layered diffusers folder (``QwenImageLayeredPipeline``, diffusers 0.42.1): one RGBA image decomposed
into N RGBA layers with any diffkit sampler, on :mod:`.qwen_image`'s loading, prompts, network, true CFG and flow
loop.

Qwen-Image-Layered (Qwen team 2025, "Qwen-Image-Layered: Towards Inherent Editability via Layer Decomposition")
denoises N + 1 frames of latents at once, frame 0 the composite and frames 1..N the layers, beside the input image's
latents, with the Qwen-Image MMDiT given a layer-aware 3-D RoPE (``use_layer3d_rope``: frame k at layer index k, the
input image at -1) and an extra time embedding (``use_additional_t_cond``; the pipeline's ``is_rgb`` = 0). As the
pipeline's ``__call__``:

* size: the image's ratio r at the area ``resolution``^2 (640 or 1024; :func:`.qwen_image_edit.calculated_size`,
  multiples of 32), floored to 2 f; the image resized to it by PIL's Lanczos filter, as x / 255 * 2 - 1 in its own
  channels (RGBA for the folder's 4-channel VAE: diffkit converts the input to the VAE's channels), its latents
  z_ref = (mean of E(x) - mean) / std (``sample_mode="argmax"``).
* the prompt: Qwen-Image's text template (34 tokens dropped, cut to ``max_sequence_length`` 512; no image in it).
  An empty prompt ("" or " ", or None) is the image's caption (:func:`caption`, ``get_image_caption``): the
  Qwen2.5-VL model's ``generate`` (its folder's generation config, at most 512 new tokens) on an image-annotator
  chat prompt (Chinese, or English with ``use_en_prompt``) seeing the resized image, decoded without special tokens.
* latents: z (B, (N + 1) C, h, w) here, the pipeline's (B, N + 1, C, h, w) draw viewed as channels (frame-major, the
  same numbers from the same generator); packed frame after frame, z_ref's tokens after them, ``img_shapes`` [(1,
  h/2, w/2)] * (N + 1) + [(1, h/2, w/2)], ``additional_t_cond`` 0, the prediction kept on the N + 1 frames
  (:class:`QwenImageLayeredNet`).
* the grid: ``set_timesteps(sigmas=linspace(1, 0, S + 1)[:-1], mu)`` (the same sigmas as Qwen-Image's linspace(1,
  1/S, S), :meth:`.flux.Flux.input_sigmas`) with mu = sqrt(z_ref's tokens / 256) (its ``base_seqlen``; not
  ``calculate_shift``), 50 steps of flow Euler by default.
* guidance: true CFG (``true_cfg_scale`` 4.0) only with a negative prompt, u = u_n + s (u_c - u_n) (Ho & Salimans
  2022, eq. 6, in the velocity), rescaled per token to u_c's norm only with ``cfg_normalize`` (default off).
* output: frames 1..N decoded one by one, x = D(z std + mean): (B, N, channels, H, W).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import partial
from typing import Optional

import torch

from ..errors import DiffkitError
from .flux import pack_latents, unpack_latents
from .qwen_image import LAYERED_PIPELINE, LAYERED_TRANSFORMER, QwenImage, QwenImageNet

LAYERS = 4  # __call__'s default layers
RESOLUTIONS = (640, 1024)  # the resolutions it takes (its assert), 640 its default
LAYERED_STEPS = 50
BASE_TOKENS = 256 * 256 / 16 / 16  # its base_seqlen: mu = sqrt(tokens / 256)
CAPTION_TOKENS = 512  # get_image_caption's max_new_tokens
CAPTION_ZH = (  # QwenImageLayeredPipeline's image_caption_prompt_cn (Chinese), verbatim
    '<|im_start|>system\n'
    'You are a helpful assistant.<|im_end|>\n'
    '<|im_start|>user\n'
    '# 图像标注器\n'
    '你是一个专业的图像标注器。请基于输入图像，撰写图注:\n'
    '1.\n'
    '使用自然、描述性的语言撰写图注，不要使用结构化形式或富文本形式。\n'
    '2. 通过加入以下内容，丰富图注细节：\n'
    ' - 对象的属性：如数量、颜色、形状、大小、位置、材质、状态、动作等\n'
    ' -\n'
    '对象间的视觉关系：如空间关系、功能关系、动作关系、从属关系、比较关系、因果关系等\n'
    ' - 环境细节：例如天气、光照、颜色、纹理、气氛等\n'
    ' - 文字内容：识别图像中清晰可见的文字，不做翻译和解释，用引号在图注中强调\n'
    '3.\n'
    '保持真实性与准确性：\n'
    ' - 不要使用笼统的描述\n'
    ' -\n'
    '描述图像中所有可见的信息，但不要加入没有在图像中出现的内容\n'
    '<|vision_start|><|image_pad|><|vision_end|><|im_end|>\n'
    '<|im_start|>assistant\n')
CAPTION_EN = (  # QwenImageLayeredPipeline's image_caption_prompt_en (English), verbatim
    '<|im_start|>system\n'
    'You are a helpful assistant.<|im_end|>\n'
    '<|im_start|>user\n'
    '# Image Annotator\n'
    'You are a professional\n'
    'image annotator. Please write an image caption based on the input image:\n'
    '1. Write the caption using natural,\n'
    'descriptive language without structured formats or rich text.\n'
    '2. Enrich caption details by including: \n'
    ' - Object\n'
    'attributes, such as quantity, color, shape, size, material, state, position, actions, and so o'
    'n\n'
    ' - Vision Relations\n'
    'between objects, such as spatial relations, functional relations, possessive relations, attach'
    'ment relations, action\n'
    'relations, comparative relations, causal relations, and so on\n'
    ' - Environmental details, such as weather, lighting,\n'
    'colors, textures, atmosphere, and so on\n'
    ' - Identify the text clearly visible in the image, without translation or\n'
    'explanation, and highlight it in the caption with quotation marks\n'
    '3. Maintain authenticity and accuracy:\n'
    ' - Avoid\n'
    'generalizations\n'
    ' - Describe all visible information in the image, while do not add information not explicitly '
    'shown in\n'
    'the image\n'
    '<|vision_start|><|image_pad|><|vision_end|><|im_end|>\n'
    '<|im_start|>assistant\n')


class QwenImageLayeredNet(QwenImageNet):
    """:class:`.qwen_image.QwenImageNet` over a Qwen-Image-Layered transformer on z (B, F C, h, w) of F frames
    (module docstring): each frame packed, frame after frame, with its own ``img_shapes`` entry, ``additional_t_cond``
    0; true CFG plain, or norm-matched with ``normalize`` (the pipeline's ``cfg_normalize``)."""

    def __init__(self, transformer, scale: float = 1.0, normalize: bool = False):
        super().__init__(transformer, scale)
        self.normalize = bool(normalize)

    def frames(self, x: torch.Tensor) -> int:
        return x.shape[1] // (int(self.model.config.in_channels) // 4)

    def packed(self, x: torch.Tensor) -> tuple:
        chunks = x.chunk(self.frames(x), dim=1)
        shape = (1, x.shape[2] // 2, x.shape[3] // 2)
        return torch.cat([pack_latents(c) for c in chunks], dim=1), [shape] * len(chunks)

    def unpacked(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([unpack_latents(o, x.shape[2], x.shape[3]) for o in out.chunk(self.frames(x), dim=1)], dim=1)

    def call_inputs(self, packed) -> dict:
        return {"additional_t_cond": torch.zeros(packed.shape[0], dtype=torch.long, device=packed.device)}

    def combine(self, cond: torch.Tensor, uncond: torch.Tensor) -> torch.Tensor:
        return super().combine(cond, uncond) if self.normalize else uncond + self.scale * (cond - uncond)


@dataclass
class QwenImageLayered(QwenImage):
    """A Qwen-Image-Layered folder's components (:func:`.qwen_image.load_qwen_image`): Qwen-Image's, with latents of
    ``layers`` + 1 frames stacked as channels, its own grid and mu, and frames 1.. decoded as layers (module
    docstring). :func:`decompose` runs it with ``layers`` and ``cfg_normalize`` set on a copy."""

    layers: int = LAYERS
    cfg_normalize: bool = False
    image_processor: object = None  # processor/'s (Qwen2VLImageProcessorPil): the captions' only
    default_steps = LAYERED_STEPS

    @property
    def net_class(self):
        return partial(QwenImageLayeredNet, normalize=self.cfg_normalize)

    def latent_shape(self, batch: int, height: Optional[int] = None, width: Optional[int] = None) -> tuple:
        shape = super().latent_shape(batch, height, width)
        return (batch, shape[1] * (self.layers + 1), *shape[2:])

    def mu(self, h: int, w: int, steps: Optional[int] = None) -> float:
        """sqrt(tokens / 256) of the image's latents h x w (the pipeline's; not ``calculate_shift``)."""
        return math.sqrt((h // 2) * (w // 2) / BASE_TOKENS)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, N, channels, H, W) of z (B, (N + 1) C, h, w): frames 1..N each decoded (the composite frame 0 not)."""
        b, _, h, w = latents.shape
        channels = int(self.transformer.config.in_channels) // 4
        layers = super().decode(latents[:, channels:].reshape(-1, channels, h, w))
        return layers.reshape(b, -1, *layers.shape[1:])


def check_layered_transformer(directory, config: dict) -> None:
    """One line where a Layered folder's transformer ``config`` lacks the layer RoPE or the extra time embedding
    (another folder's with them: :func:`.qwen_image.check_qwen_image_folder`)."""
    for key in LAYERED_TRANSFORMER:
        if not config.get(key, False):
            raise DiffkitError(f"{directory}'s transformer has {key}={config.get(key, False)!r}; a "
                               f"{LAYERED_PIPELINE} folder's needs {key}=true (Qwen-Image-Layered's)")


def caption(model: QwenImageLayered, picture, use_en_prompt: bool = False) -> str:
    """The caption of ``picture`` (PIL, the resized input) as ``QwenImageLayeredPipeline.get_image_caption``: the
    annotator prompt (:data:`CAPTION_ZH`, or :data:`CAPTION_EN` with ``use_en_prompt``) with its one image's pad
    tokens expanded (:func:`.qwen_image_edit.vision_inputs`), the language model's ``generate`` (512 new tokens at
    most; sampling or not as its folder's generation config says), the new tokens decoded without special tokens,
    stripped."""
    from .qwen_image_edit import vision_inputs
    if model.image_processor is None:
        raise DiffkitError("an empty prompt is not allowed for this Qwen-Image-Layered folder: it has no processor/ "
                           "(QwenImageLayeredPipeline captions the image with it); give the image's description")
    tokens, pixels = vision_inputs(model, [CAPTION_EN if use_en_prompt else CAPTION_ZH], [picture])
    with torch.no_grad():
        ids = model.text_encoder.generate(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask,
                                          max_new_tokens=CAPTION_TOKENS, **pixels)
    return model.tokenizer.batch_decode(ids[:, tokens.input_ids.shape[1]:], skip_special_tokens=True,
                                        clean_up_tokenization_spaces=False)[0].strip()


def _input_image(model: QwenImageLayered, image):
    """``image`` (a PIL image, or (1, channels, H, W) in [-1, 1]) as a PIL image in the VAE's channels (RGBA for 4)."""
    from PIL import Image
    mode = {4: "RGBA", 3: "RGB"}.get(model.image_channels)
    if mode is None:
        raise DiffkitError(f"a VAE of {model.image_channels} input channels is not allowed; allowed: 3 or 4 (RGBA)")
    if isinstance(image, torch.Tensor):
        if image.ndim != 4 or image.shape[0] != 1 or image.shape[1] not in (3, 4):
            raise DiffkitError(f"an image of shape {tuple(image.shape)} is not allowed; give one PIL image or (1, 3 "
                               f"or 4, H, W) in [-1, 1] (QwenImageLayeredPipeline decomposes one image)")
        pixels = ((image[0].detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        image = Image.fromarray(pixels.permute(1, 2, 0).numpy())
    if not isinstance(image, Image.Image):
        raise DiffkitError(f"an image of type {type(image).__name__} is not allowed; give one PIL image or (1, 3 or "
                           f"4, H, W) in [-1, 1]")
    return image.convert(mode)


def decompose(model: QwenImageLayered, image, prompt: Optional[str] = None, *, layers: int = LAYERS,
              resolution: int = 640, area: Optional[int] = None, cfg_normalize: bool = False,
              use_en_prompt: bool = False, **options) -> torch.Tensor:
    """``image`` decomposed into ``layers`` layers described by ``prompt`` as ``QwenImageLayeredPipeline`` (module
    docstring) with any diffkit sampler: (1, layers, channels, H, W) in ``output_range`` (or with ``return_latents``
    z_0 (1, (layers + 1) C, h, w), the composite frame first).

    prompt: None, "" or " ": the image's :func:`caption` (``use_en_prompt``: its English annotator prompt; the
    pipeline's default is the Chinese one). resolution: 640 or 1024 (the area resolution^2 the image is resized to at
    its ratio); area: another area in pixels (diffkit's own, e.g. a small test; the pipeline has none).
    cfg_normalize: the pipeline's (true CFG rescaled per token). options: :func:`.qwen_image.text_to_image`'s
    (sampler, steps (50), guidance_scale (true CFG, 4.0 with a negative prompt), convention, negative_prompt, seed,
    latents (z at s = 1, (1, (layers + 1) C, h, w), the pipeline's unpacked draw), max_sequence_length (512),
    output_range, return_latents, progress, ...)."""
    from PIL import Image

    from .qwen_image import text_to_image
    from .qwen_image_edit import _pixels, calculated_size
    if not isinstance(model, QwenImageLayered):
        raise DiffkitError(f"decompose needs a Qwen-Image-Layered folder ({LAYERED_PIPELINE}); this one is not")
    if isinstance(layers, bool) or not isinstance(layers, int) or layers < 1:
        raise DiffkitError(f"layers={layers!r} is not allowed; give an integer >= 1 (the pipeline's default 4)")
    if area is None and resolution not in RESOLUTIONS:
        raise DiffkitError(f"resolution={resolution!r} is not allowed; allowed: 640 or 1024 (the pipeline's)")
    area = resolution * resolution if area is None else area
    if isinstance(area, bool) or not isinstance(area, int) or area < 32 * 32:
        raise DiffkitError(f"area={area!r} is not allowed; give an integer of at least 1024 pixels")
    if prompt is not None and not isinstance(prompt, str):
        raise DiffkitError(f"prompt={prompt!r} is not allowed; give one string (None, \"\" or \" \": the image's "
                           f"caption, as QwenImageLayeredPipeline's)")
    for key in ("height", "width", "guide", "controlnet"):
        if options.get(key) is not None:
            raise DiffkitError(f"{key} is not allowed for a Qwen-Image-Layered folder (its pipeline sizes the "
                               f"layers as the image: the ratio at resolution^2)")
    picture = _input_image(model, image)
    width, height = calculated_size(*picture.size, area)
    multiple = 2 * model.vae_scale_factor
    resized = picture.resize((width, height), resample=Image.LANCZOS)
    height, width = height // multiple * multiple, width // multiple * multiple
    if prompt in (None, "", " "):  # the pipeline's test for its caption
        prompt = caption(model, resized, use_en_prompt)
    layered = replace(model, layers=layers, cfg_normalize=bool(cfg_normalize))
    reference = model.encode(_pixels([resized]))
    return text_to_image(layered, [prompt], height=height, width=width, guide={"reference": reference}, **options)


__all__ = ["QwenImageLayered", "QwenImageLayeredNet", "decompose", "caption", "check_layered_transformer",
           "LAYERED_PIPELINE", "LAYERS", "CAPTION_ZH", "CAPTION_EN"]
