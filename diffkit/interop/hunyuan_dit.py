"""A HunyuanDiT diffusers folder (``HunyuanDiTPipeline``, diffusers 0.42.1), sampled with any diffkit sampler;
``pag_scale`` as ``HunyuanDiTPAGPipeline``.

Hunyuan-DiT (Li et al. 2024, "Hunyuan-DiT: A Powerful Multi-Resolution Diffusion Transformer with Fine-Grained
Chinese Understanding", arXiv:2405.08748) is a DiT (``HunyuanDiT2DModel``: long skip connections between the first
and last halves of its blocks, 2-D rotary position embeddings) on an SD-XL ``AutoencoderKL``'s
latents, cross-attending to two text encoders at once: a bilingual CLIP text encoder (a ``BertModel``, 77 tokens)
and a multilingual T5 (``T5EncoderModel``, 256 tokens), each under its prompt's attention mask. Its noise schedule
is DDPM's (scaled-linear betas, v-prediction in the released folders) with a learned variance the pipeline drops,
as PixArt's (:mod:`.pixart`: :class:`HunyuanDiT` is a :class:`~.pixart.PixArt`: its scheduler grid, its sampler
mapping and ``text_to_image``). Every step of ``HunyuanDiTPipeline.__call__`` is reproduced:

* prompts (``encode_prompt``, ``text_encoder_index`` 0 and 1): each tokenizer pads / truncates to 77 (BERT) and
  256 (T5) tokens, the encoders' last states under those masks; the negative prompt (default "") likewise, at the
  same lengths. The transformer replaces the masked-out states by its learned ``text_embedding_padding``.
* size conditions (``use_style_cond_and_image_meta_size``, Hunyuan-DiT <= 1.1; ignored by the transformer from
  1.2 on): ``image_meta_size`` = original size (default 1024 x 1024) + target size (default the drawn height x
  width) + crop's top-left (default (0, 0)), in pixels, and ``style`` 0, shared by both guidance halves.
* the 2-D rotary embeddings of the patch grid (H / 8 / p) x (W / 8 / p), resized and centre-cropped
  into the 512-pixel base grid (``get_resize_crop_region_for_grid``, ``get_2d_rotary_pos_embed``): made per
  latent size by :class:`HunyuanDiTNet`, with diffusers' own functions.
* the transformer returns 2C channels; the first C are the prediction (eps or v, the scheduler's
  ``prediction_type``), the rest a learned variance the pipeline drops (``noise_pred.chunk(2)``): diffkit's
  ``learned_variance`` split.
* classifier-free guidance (Ho & Salimans 2022) on that output, out_u + s (out_c - out_u) for s > 1 (default 5),
  then guidance rescale phi (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed",
  Sec. 3.4: ``rescale_noise_cfg``) in the network's output space (v for a v-prediction folder):
  :class:`~diffkit.guidance.ClassifierFreeGuidance` with ``rescale_space`` ``v`` / ``eps``. s <= 1: one unguided
  call (a negative prompt, a rescale or PAG is refused: the pipeline ignores the first two there, and its PAG
  variant fails).
* the scheduler (:func:`folder_sampler`): the folder's ``DDPMScheduler`` after ``set_timesteps(steps)`` (default
  50), its timesteps then -1 as diffkit's grid, and ``ddpm`` with ``variance_type="fixed_small"`` (the
  posterior variance beta-tilde of each respaced step, DDPM eq. 7; Nichol & Dhariwal 2021 Sec. 4) as its step;
  the step noise of sample i from its own generator (the pipeline's ``generator`` list, one per image, draws the
  same numbers). A ``DDIMScheduler`` or ``DPMSolverMultistepScheduler`` maps as on PixArt (:mod:`.pixart`).
* decoding: x = D(z / scaling_factor) (no shift), images (x / 2 + 0.5).clamp(0, 1).

Size: default ``sample_size`` x 8 per side, sides multiples of 16 (the pipeline floors to 16: diffkit refuses
other sizes) and of 8 x patch. ``use_resolution_binning`` (the pipeline's default True: a size outside its ten
standard shapes is replaced by the nearest one, and the image is not resized back) is not done: diffkit draws the
size asked for, as ``use_resolution_binning=False``; ``resolution_binning=True`` is refused. The safety checker
(if the folder has one) is not run.

PAG (Ahn et al. 2024, "Self-Rectifying Diffusion Sampling with Perturbed-Attention Guidance", arXiv:2403.17377):
``pag_scale`` S > 0 is ``HunyuanDiTPAGPipeline`` (``pag_applied_layers``, default ``blocks.1``: regular expressions
searched in the self-attention names ``blocks.N.attn1``, as ``PAGMixin``): diffusers' ``PAGCFGHunyuanAttnProcessor2_0``
/ ``PAGHunyuanAttnProcessor2_0`` on those layers for the perturbed call, the SD / SD3 combination of
:mod:`.sd_pag` (:class:`~diffkit.guidance.PerturbedAttentionGuidance` over the CFG, one call of 3B rows):
out = out_u + s (out_c - out_u) + S_t (out_c - out-hat_c), S_t = max(S - A (1000 - t), 0), then the rescale.
PAG needs s > 1: the PAG pipeline fails without classifier-free guidance (it stacks 3 copies of ``add_time_ids`` and
``style`` against 2 of the prompts), so there is no reference to match; diffkit refuses it in one line.

Refused in one line before any weight is read (:func:`check_hunyuan_dit_folder`): another pipeline class, a
missing component, a transformer / VAE / text encoder / scheduler of another class, a transformer without a
learned variance (``learn_sigma``: the pipeline halves the output regardless), with text lengths other than the
pipeline's 77 / 256, or channels other than the VAE's latents, a VAE of a factor other than 8 (the pipeline's
rotary grid assumes 8), a scheduler step diffkit does not compute (:func:`folder_sampler`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from ..errors import DiffkitError, check_choice, read_json_object
from . import model_dtype, require
from .flow_latents import load_flow_parts
from .pixart import PixArt, checked_folder
from .pixart import folder_sampler as pixart_folder_sampler
from .sd_pag import DiffusersSelfAttention

HUNYUAN_DIT_PIPELINE = "HunyuanDiTPipeline"
HUNYUAN_DIT_CLASSES = {"transformer": ("HunyuanDiT2DModel",), "vae": ("AutoencoderKL",),
                       "text_encoder": ("BertModel",), "text_encoder_2": ("T5EncoderModel",),
                       "scheduler": ("DDPMScheduler", "DDIMScheduler", "DPMSolverMultistepScheduler")}
REQUIRED = ("transformer", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "scheduler")
HUNYUAN_DIT_GUIDANCE = 5.0  # HunyuanDiTPipeline.__call__'s default guidance_scale
HUNYUAN_DIT_STEPS = 50  # its default num_inference_steps
TEXT_LENGTHS = (77, 256)  # encode_prompt's max_sequence_length for the BERT and the T5 encoder (fixed by __call__)
ORIGINAL_SIZE = (1024, 1024)  # __call__'s default original_size
PAG_LAYERS = ("blocks.1",)  # HunyuanDiTPAGPipeline(pag_applied_layers="blocks.1")
PAG_FORM = "diffusers' pag_applied_layers of a HunyuanDiT transformer: regular expressions searched in the " \
           "self-attention names blocks.N.attn1, e.g. blocks.1 (the default), blocks\\.1\\., blocks\\.(0|2)\\."
_DDPM_VARIANCES = ("fixed_small", "fixed_small_log")  # the same beta-tilde (the second through its log)


def is_hunyuan_dit_folder(path) -> bool:
    """True for a folder whose ``model_index.json`` names ``HunyuanDiTPipeline`` (so ``diffkit sample`` dispatches)."""
    from .sd_xl import pipeline_class
    return pipeline_class(path) == HUNYUAN_DIT_PIPELINE


def folder_sampler(config: dict) -> tuple:
    """(diffkit sampler, its options) computing the step of the folder's scheduler (``config``: its JSON) on its
    own timesteps: ``DDPMScheduler`` -> ``ddpm`` with ``variance_type="fixed_small"`` (its ``fixed_small`` /
    ``fixed_small_log``, DDPM eq. 7 on the respaced steps); ``clip_sample`` (True by DDPMScheduler's default),
    ``thresholding``, or another variance type (``fixed_large`` adds noise on the step to t = -1, ``learned`` /
    ``learned_range`` need the variance half the pipeline drops): one line. Other classes: :func:`.pixart.
    folder_sampler`."""
    name = config.get("_class_name")
    if name != "DDPMScheduler":
        return pixart_folder_sampler(config)
    hint = "; give a diffkit sampler (--sampler NAME)"
    for key, default in (("clip_sample", True), ("thresholding", False)):
        if config.get(key, default):
            raise DiffkitError(f"the folder's DDPMScheduler has {key}=True, which clamps x0 in its step and not in "
                               f"diffkit's ddpm{hint}")
    variance = config.get("variance_type", "fixed_small")
    if variance not in _DDPM_VARIANCES:
        raise DiffkitError(f"the folder's DDPMScheduler has variance_type={variance!r}, which diffkit's ddpm on its "
                           f"timesteps does not compute as HunyuanDiTPipeline runs it (allowed: "
                           f"{' / '.join(_DDPM_VARIANCES)}){hint}")
    return "ddpm", {"variance_type": "fixed_small"}


def check_hunyuan_dit_folder(directory) -> tuple:
    """(model_index dict, transformer config, scheduler config) of a ``HunyuanDiTPipeline`` folder, checked from its
    JSON alone (module docstring); a one-line DiffkitError for what diffkit does not drive."""
    directory = Path(directory)
    index, config, vae = checked_folder(directory, HUNYUAN_DIT_PIPELINE, REQUIRED, "HunyuanDiT", HUNYUAN_DIT_CLASSES)
    if not config.get("learn_sigma", True):
        raise DiffkitError(f"{directory}'s transformer has learn_sigma=False, whose output HunyuanDiTPipeline halves "
                           f"all the same (noise_pred.chunk(2)); allowed: learn_sigma true")
    lengths = (config.get("text_len", 77), config.get("text_len_t5", 256))
    if lengths != TEXT_LENGTHS:
        raise DiffkitError(f"{directory}'s transformer has text_len, text_len_t5 = {lengths[0]!r}, {lengths[1]!r}; "
                           f"allowed: 77, 256 (the pipeline's fixed prompt lengths)")
    latents = int(vae.get("latent_channels", 4))
    if config.get("in_channels") != latents:
        raise DiffkitError(f"{directory}'s transformer has in_channels={config.get('in_channels')!r}; allowed: the "
                           f"VAE's latent channels {latents}")
    factor = 2 ** (len(vae.get("block_out_channels", [0] * 4)) - 1)
    if factor != 8:
        raise DiffkitError(f"{directory}'s VAE has factor {factor}; allowed: 8 (HunyuanDiTPipeline's rotary grid "
                           f"divides the size by 8)")
    sched = read_json_object(directory / "scheduler" / "scheduler_config.json", "scheduler config")
    folder_sampler(sched)  # a step diffkit does not compute: one line now
    return index, config, sched


class HunyuanDiTNet(torch.nn.Module):
    """``net(x, t, context, mask, context_t5, mask_t5, image_meta_size=None, style=None)`` over a
    ``HunyuanDiT2DModel``: the BERT and T5 states and masks, the size and style conditions, ``t`` (training
    timesteps, in the model's dtype as the pipeline's ``t_expand``), and the 2-D rotary embeddings of x's size (made
    once per size); the 2C output channels in x's dtype."""

    def __init__(self, transformer):
        super().__init__()
        self.model = transformer
        self._rotary = {}

    def rotary(self, height: int, width: int, device) -> tuple:
        """(cos, sin) of the pipeline's ``get_2d_rotary_pos_embed`` for latents of ``height`` x ``width``."""
        key = (height, width, str(device))
        if key not in self._rotary:
            from diffusers.models.embeddings import get_2d_rotary_pos_embed
            from diffusers.pipelines.hunyuandit.pipeline_hunyuandit import get_resize_crop_region_for_grid
            patch = int(self.model.config.patch_size)
            grid = (height // patch, width // patch)  # the pipeline's pixels // 8 // patch (a VAE of factor 8)
            crops = get_resize_crop_region_for_grid(grid, 512 // 8 // patch)  # centred in the 512-pixel grid
            self._rotary[key] = get_2d_rotary_pos_embed(self.model.inner_dim // self.model.num_heads, crops, grid,
                                                        device=device, output_type="pt")
        return self._rotary[key]

    def inputs(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor = None, mask: torch.Tensor = None,
               context_t5: torch.Tensor = None, mask_t5: torch.Tensor = None,
               image_meta_size: Optional[torch.Tensor] = None, style: Optional[torch.Tensor] = None) -> tuple:
        """(args, kwargs) of the transformer's call, which a HunyuanDiT ControlNet takes too
        (:mod:`.hunyuan_dit_controlnet`)."""
        if context is None or context_t5 is None or mask is None or mask_t5 is None:
            raise DiffkitError("a HunyuanDiT transformer needs cond {'context', 'mask', 'context_t5', 'mask_t5'} "
                               "(HunyuanDiT.text_cond)")
        dtype = model_dtype(self.model)
        t = torch.as_tensor(t, device=x.device, dtype=torch.float32).reshape(-1).expand(x.shape[0])
        return (x.to(dtype), t.to(dtype)), dict(
            encoder_hidden_states=context.to(dtype), text_embedding_mask=mask,
            encoder_hidden_states_t5=context_t5.to(dtype), text_embedding_mask_t5=mask_t5,
            image_meta_size=image_meta_size, style=style, image_rotary_emb=self.rotary(x.shape[2], x.shape[3],
                                                                                       x.device))

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor = None, mask: torch.Tensor = None,
                context_t5: torch.Tensor = None, mask_t5: torch.Tensor = None,
                image_meta_size: Optional[torch.Tensor] = None, style: Optional[torch.Tensor] = None, controls=None):
        """``controls``: a ControlNet's block residuals (``controlnet_block_samples``, a fresh list: the
        transformer pops it)."""
        args, kwargs = self.inputs(x, t, context, mask, context_t5, mask_t5, image_meta_size, style)
        if controls is not None:
            kwargs["controlnet_block_samples"] = list(controls)
        return self.model(*args, **kwargs, return_dict=False)[0].to(x.dtype)


@dataclass
class HunyuanDiT(PixArt):
    """The loaded components of a ``HunyuanDiTPipeline`` folder (:func:`load_hunyuan_dit`): a
    :class:`~.pixart.PixArt` (its grid and sampler mapping, ``text_to_image``) with a second text encoder, two
    masked prompts, size conditions, rotary embeddings, guidance rescale and PAG."""

    text_encoder_2: object = None
    tokenizer_2: object = None

    default_guidance_scale = HUNYUAN_DIT_GUIDANCE
    default_steps = HUNYUAN_DIT_STEPS
    size_multiple = 16  # __call__ floors height and width to multiples of 16

    @property
    def max_sequence_length(self) -> int:
        return TEXT_LENGTHS[0]

    @property
    def learned_variance(self) -> bool:
        return bool(self.transformer.config.learn_sigma)

    def folder_sampler(self) -> tuple:
        return folder_sampler(self.scheduler_config)

    def text_cond(self, prompts: Sequence[str]) -> dict:
        """{'context', 'mask'} (BERT, 77 tokens) and {'context_t5', 'mask_t5'} (T5, 256 tokens) of ``prompts``, as
        ``encode_prompt`` with ``text_encoder_index`` 0 and 1: padded / truncated, each encoder under its mask, the
        states in the transformer's dtype."""
        from .stable_diffusion import prompt_list
        prompts, cond = prompt_list(prompts), {}
        for suffix, tokenizer, encoder, length in (("", self.tokenizer, self.text_encoder, TEXT_LENGTHS[0]),
                                                   ("_t5", self.tokenizer_2, self.text_encoder_2, TEXT_LENGTHS[1])):
            tokens = tokenizer(prompts, padding="max_length", max_length=length, truncation=True,
                               return_attention_mask=True, return_tensors="pt")
            mask = tokens.attention_mask.to(self.device)
            with torch.no_grad():
                states = encoder(tokens.input_ids.to(self.device), attention_mask=mask)[0]
            cond["context" + suffix], cond["mask" + suffix] = states.to(model_dtype(self.transformer)), mask
        return cond

    def encode_prompts(self, prompts: Sequence[str], max_sequence_length: Optional[int] = None) -> tuple:
        """(BERT states, mask) of ``prompts`` (:meth:`text_cond`'s first pair); ``max_sequence_length``: refused
        (the pipeline's lengths are fixed)."""
        check_no_length(max_sequence_length)
        cond = self.text_cond(prompts)
        return cond["context"], cond["mask"]

    def size_conditions(self, batch: int, size: tuple, original_size=ORIGINAL_SIZE, target_size=None,
                        crops_coords_top_left=(0, 0)) -> dict:
        """{'image_meta_size': (B, 6) original + target (default ``size``) + crop top-left, 'style': (B,) zeros},
        as ``__call__``'s ``add_time_ids`` and ``style``."""
        values = []
        for name, pair in (("original_size", original_size), ("target_size", target_size or size),
                           ("crops_coords_top_left", crops_coords_top_left)):
            if not isinstance(pair, (tuple, list)) or len(pair) != 2 or not all(
                    isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in pair):
                raise DiffkitError(f"{name}={pair!r} is not allowed; give two integers >= 0 (pixels: height, width "
                                   f"or top, left)")
            values += list(pair)
        dtype = model_dtype(self.transformer)
        return {"image_meta_size": torch.tensor([values], dtype=dtype, device=self.device).repeat(batch, 1),
                "style": torch.zeros(batch, dtype=torch.long, device=self.device)}

    @property
    def denoiser(self):
        """The unguided :class:`~diffkit.denoiser.Denoiser` (cond: :meth:`text_cond`'s, :meth:`size_conditions`')
        on the scheduler's schedule and prediction type, with the learned variance of the 2C output channels."""
        if self._denoiser is None:
            from ..denoiser import Denoiser
            self._denoiser = Denoiser(HunyuanDiTNet(self.transformer), self.schedule, self.prediction_type,
                                      learned_variance=self.learned_variance)
            self._denoiser.model = self.transformer
        return self._denoiser

    def aspect_ratio_bins(self) -> dict:
        return {}  # not used: resolution binning is refused (module docstring)

    def check_controlnets(self, controlnets, pag_scale) -> None:
        """One line for ControlNets ``HunyuanDiTControlNetPipeline`` does not take (:mod:`.hunyuan_dit_controlnet`)."""
        from .hunyuan_dit_controlnet import check_hunyuan_controlnets
        check_hunyuan_controlnets(controlnets, self.transformer)

    def controlnet_guidance(self, controlnets, guide, shape: tuple, unguided=None, control_rows=None,
                            seed: int = 0, posterior: str = "sample") -> tuple:
        """:func:`.hunyuan_dit_controlnet.controlnet_guidance` (sample i's control posterior from ``seed + i``)."""
        from .hunyuan_dit_controlnet import controlnet_guidance
        return controlnet_guidance(self, controlnets, guide, shape, unguided, control_rows, seed, posterior)

    def prompt_guidance(self, prompts, negative_prompt=None, guidance_scale: float = HUNYUAN_DIT_GUIDANCE,
                        convention: str = "diffusers", max_sequence_length: Optional[int] = None,
                        size: Optional[tuple] = None, denoiser=None, guidance_rescale: float = 0.0,
                        original_size=ORIGINAL_SIZE, target_size=None, crops_coords_top_left=(0, 0),
                        pag_scale: Optional[float] = None, pag_layers=None,
                        pag_adaptive_scale: Optional[float] = None) -> tuple:
        """(denoiser, cond): both prompts' states and masks, the size conditions of the image ``size`` (h, w)
        pixels; for a diffusers-convention scale s > 1 classifier-free guidance against ``negative_prompt`` (None:
        "") with ``guidance_rescale`` phi in the network's output space; PAG over it with ``pag_scale``
        (:func:`pag_guidance`). ``denoiser``: the unguided one (default :attr:`denoiser`)."""
        from ..guidance import ClassifierFreeGuidance
        from .stable_diffusion import negative_prompts
        check_no_length(max_sequence_length)
        check_choice("convention", convention, ["diffusers", "seed"])
        scale = float(guidance_scale) if convention == "diffusers" else 1 + float(guidance_scale)
        pag = pag_request(self, pag_scale, pag_layers, pag_adaptive_scale)
        cond = self.text_cond(prompts)
        batch = cond["context"].shape[0]
        cond.update(self.size_conditions(batch, size, original_size, target_size, crops_coords_top_left))
        guided = denoiser or self.denoiser
        if scale <= 1:
            given = [what for what, value in (("a negative prompt", negative_prompt is not None),
                                              (f"guidance_rescale={guidance_rescale:g}", guidance_rescale),
                                              (f"pag_scale={pag_scale:g}" if pag_scale else "", pag_scale)) if value]
            if given:
                raise DiffkitError(f"{given[0]} with guidance_scale={guidance_scale:g} ({convention} convention) is "
                                   f"not allowed: it acts only with CFG (diffusers' scale > 1); raise the scale or "
                                   f"drop it")
            return pag(guided), cond
        negatives = negative_prompts(negative_prompt, batch)
        null = self.text_cond(negatives[:1] if len(set(negatives)) == 1 else negatives)
        space = {"v_prediction": "v", "epsilon": "eps"}.get(self.prediction_type, "x0")
        guided = ClassifierFreeGuidance(guided, guidance_scale, convention, rescale=guidance_rescale,
                                        rescale_space=space, null_context=null.pop("context"), null_cond=null)
        return pag(guided), cond


def check_no_length(max_sequence_length) -> None:
    """One line for a ``max_sequence_length``: HunyuanDiTPipeline's prompt lengths are fixed (77, 256)."""
    if max_sequence_length is not None:
        raise DiffkitError(f"max_sequence_length={max_sequence_length!r} is not allowed for a HunyuanDiT folder: "
                           f"HunyuanDiTPipeline's prompt lengths are fixed (77 BERT, 256 T5 tokens, the transformer's "
                           f"text_len / text_len_t5)")


class HunyuanDiTSelfAttention(DiffusersSelfAttention):
    """:class:`~.sd_pag.DiffusersSelfAttention` for a ``HunyuanDiT2DModel``: its blocks' ``attn1``, perturbed by
    diffusers' Hunyuan PAG processors (identity attention for the last third / half of the batch)."""

    processors = ("PAGCFGHunyuanAttnProcessor2_0", "PAGHunyuanAttnProcessor2_0")
    default, form, what = PAG_LAYERS, PAG_FORM, "HunyuanDiT transformer"


def pag_request(hunyuan: HunyuanDiT, scale: Optional[float], layers=None, adaptive_scale: Optional[float] = None):
    """A function wrapping the guided (or unguided) denoiser in PAG (module docstring), checked before any network
    call; the identity for ``scale`` None or 0 (bit for bit as without). The options without a scale, a scale or
    adaptive scale < 0, a layer name selecting no self-attention: one line."""
    from ..errors import check_float32, check_range
    if not scale:
        given = [(n, v) for n, v in (("pag_layers", layers), ("pag_adaptive_scale", adaptive_scale)) if v is not None]
        if scale is None and given:
            raise DiffkitError(f"{given[0][0]}={given[0][1]!r} needs pag_scale (perturbed-attention guidance)")
        check_range("pag_scale", scale or 0.0, 0.0, None)
        return lambda denoiser: denoiser
    scale = float(check_float32("pag_scale", check_range("pag_scale", scale, 0.0, None)))
    adaptive_scale = float(check_range("pag_adaptive_scale", adaptive_scale or 0.0, 0.0, None))
    network = HunyuanDiTSelfAttention(hunyuan.transformer)
    names = network.check_self_attention_layers(layers)

    def perturbed(denoiser):
        from ..guidance import PerturbedAttentionGuidance
        return PerturbedAttentionGuidance(denoiser, scale, names, network=network, adaptive_scale=adaptive_scale)
    return perturbed


def load_hunyuan_dit(directory: Union[str, Path], device="cpu", dtype: torch.dtype = torch.float32,
                     progress: bool = True) -> HunyuanDiT:
    """Load a ``HunyuanDiTPipeline`` diffusers folder (never downloads, never unpickles); what diffkit does not
    drive is refused in one line before any weight is read (:func:`check_hunyuan_dit_folder`)."""
    from .schedulers import schedule_from_diffusers
    diffusers = require("diffusers")
    directory = Path(directory)
    index, _, sched = check_hunyuan_dit_folder(directory)
    schedule, prediction_type = schedule_from_diffusers(sched)
    parts = load_flow_parts(directory, index, diffusers.HunyuanDiT2DModel,
                            {"": "BertModel", "_2": "T5EncoderModel"}, dtype, progress)
    device = torch.device(device)
    for name in ("transformer", "vae", "text_encoder", "text_encoder_2"):
        parts[name].to(device).eval().requires_grad_(False)
    return HunyuanDiT(pipeline=HUNYUAN_DIT_PIPELINE, **parts, schedule=schedule, prediction_type=prediction_type,
                      scheduler_config=sched, device=device, dtype=dtype)


def text_to_image(hunyuan: HunyuanDiT, prompts: Union[str, Sequence[str]], *, guidance_rescale: float = 0.0,
                  original_size=ORIGINAL_SIZE, target_size=None, crops_coords_top_left=(0, 0),
                  pag_scale: Optional[float] = None, pag_layers=None, pag_adaptive_scale: Optional[float] = None,
                  controlnets=None, control_seed: int = 0, control_posterior: str = "sample",
                  **options) -> torch.Tensor:
    """Images of a HunyuanDiT folder for ``prompts``: :func:`.pixart.text_to_image` (sampler / grid, default the
    scheduler's loop, ``ddpm`` on its timesteps; steps (default 50); guidance (default s = 5); negative prompt;
    latents; height / width (default sample_size x 8); seed or ``generator``; output options) with the size
    conditions ``original_size`` / ``target_size`` / ``crops_coords_top_left`` (pixels; ``target_size`` default
    the drawn size), ``guidance_rescale`` phi and PAG (``pag_scale``, ``pag_layers``, ``pag_adaptive_scale``), as
    ``HunyuanDiTPipeline`` / ``HunyuanDiTPAGPipeline`` take them; ``controlnets``: ``HunyuanDiT2DControlNetModel``
    (:class:`~.controlnet.ControlNets`: one, or several as ``HunyuanDiT2DMultiControlNetModel``; ``control_rows``:
    each sample's control image where there is one per prompt) as ``HunyuanDiTControlNetPipeline``, sample i's
    control posterior from ``control_seed + i`` (``control_posterior="mean"``: its mean;
    :mod:`.hunyuan_dit_controlnet`). ``max_sequence_length`` and
    ``resolution_binning``: refused."""
    from .pixart import text_to_image as pixart_text_to_image
    from .sana_controlnet import check_no_pag
    from .flow_controlnet import POSTERIORS
    check_no_pag(controlnets, pag_scale, "HunyuanDiT")
    check_choice("control_posterior", control_posterior, POSTERIORS)
    if options.get("resolution_binning"):
        raise DiffkitError("resolution_binning is not allowed for a HunyuanDiT folder (diffkit draws the size asked "
                           "for, as use_resolution_binning=False)")
    check_no_length(options.get("max_sequence_length"))
    encode = {"guidance_rescale": guidance_rescale, "original_size": original_size, "target_size": target_size,
              "crops_coords_top_left": crops_coords_top_left, "pag_scale": pag_scale, "pag_layers": pag_layers,
              "pag_adaptive_scale": pag_adaptive_scale}
    control = {} if controlnets is None else {"controlnets": controlnets, "control_options": {
        "seed": control_seed, "posterior": control_posterior}}
    return pixart_text_to_image(hunyuan, prompts, encode=encode, **control, **options)


__all__ = ["HunyuanDiT", "HunyuanDiTNet", "load_hunyuan_dit", "is_hunyuan_dit_folder", "check_hunyuan_dit_folder",
           "folder_sampler", "pag_request", "text_to_image", "HUNYUAN_DIT_PIPELINE", "HUNYUAN_DIT_GUIDANCE",
           "HUNYUAN_DIT_STEPS"]
