"""A Bria FIBO diffusers folder (``BriaFiboPipeline``, diffusers 0.42.1), sampled with any diffkit sampler.

FIBO (BRIA AI 2025) is a rectified-flow transformer (Esser et al. 2024, Sec. 2, eq. 1: x_s = (1 - s) x_0 + s eps,
velocity u = eps - x_0) of FLUX.1's double / single block layout (``BriaFiboTransformer2DModel``) conditioned on a
long structured (JSON) prompt read by a SmolLM3 language model, with real classifier-free guidance and the Wan 2.2
VAE. :class:`BriaFibo` is a :class:`.chroma.Chroma` (CFG, the loop and :func:`.chroma.text_to_image` reused) whose
VAE is :class:`.flow_latents.FrameVAE`'s (Qwen-Image's one-frame decoding with per-channel latents mean / std,
which ``AutoencoderKLWan`` takes as ``AutoencoderKLQwenImage`` does). What is FIBO's own, as the pipeline:

* prompts (``get_prompt_embeds``): the prompts tokenised together (padded to the longest, truncated to
  ``max_sequence_length``, default and most 3000), an empty prompt's row all ``<|begin_of_text|>`` (id 128000)
  with mask 1; SmolLM3 run under the mask with every hidden state: the text states are the last two concatenated
  (d = 2 d_LM, ``joint_attention_dim``), and each transformer block gets one hidden state of its own
  (``text_encoder_layers``: the last n_blocks states, or all and the last repeated), which the block's
  ``caption_projection`` maps onto the second half of the text tokens' width. diffkit carries both in one
  ``context`` (B, L, 2 d_LM + n_blocks d_LM), split again in :class:`BriaFiboNet`.
* the text mask: with CFG (s > 1, Ho & Salimans 2022, eq. 6 in diffusers' convention, default 5.0) the prompts'
  and the negative prompts' (default "") states are zero-padded to the longer (``pad_embedding``); the
  transformer's ``attention_mask`` is the key mask [m, 1 ... 1] over text then image tokens, passed only where
  some key is masked.
* latents: unpacked (``do_patching=False``, the default): one token per latent pixel, (B, C, h, w) -> (B, h w, C),
  image ids (0, row, column); h = H / 16 (the pipeline's fixed ``vae_scale_factor``), sizes multiples of 16,
  default 1024; the random draws of (B, C, h, w) from sample i's generator.
* time: the transformer takes the scheduler's timestep s T itself; sigmas: FLUX.1's linspace(1, 1/N, N) with mu =
  ``calculate_shift`` of h w tokens (:meth:`BriaFibo.mu`); 30 steps by default.

``BriaFiboEditPipeline``'s edits (on its folders, which :func:`load_bria_fibo` loads too; ``diffkit edit``):
:mod:`.bria_fibo_edit`. Not driven (one line): the pipeline's ``do_patching=True``, LoRA files
(``FluxLoraLoaderMixin``), ``diffkit sample`` on an Edit folder, ``diffkit edit`` on a BriaFiboPipeline one.
Refused in one line before any weight is read: another transformer / VAE / text encoder / scheduler class, a
transformer whose input is not the VAE's ``z_dim`` (or ``patch_size`` != 1), a VAE whose ``scale_factor_spatial`` is
not the pipeline's 16.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from ..errors import DiffkitError
from . import model_dtype, require
from .chroma import Chroma
from .flow_latents import FrameVAE, check_part_configs, load_one_text_folder, names_pipeline
from .flux import calculate_shift, check_flux_scheduler, latent_image_ids

FIBO_PIPELINE = "BriaFiboPipeline"
FIBO_EDIT_PIPELINE = "BriaFiboEditPipeline"
FIBO_PIPELINES = (FIBO_PIPELINE, FIBO_EDIT_PIPELINE)  # one folder layout (an Edit folder: .bria_fibo_edit)
FIBO_TRANSFORMER = "BriaFiboTransformer2DModel"
REQUIRED = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")
FIBO_CLASSES = {"transformer": (FIBO_TRANSFORMER,), "vae": ("AutoencoderKLWan",),
                "text_encoder": ("SmolLM3ForCausalLM",), "scheduler": ("FlowMatchEulerDiscreteScheduler",)}
FIBO_GUIDANCE = 5.0  # BriaFiboPipeline's default guidance_scale (CFG)
FIBO_STEPS = 30  # its default num_inference_steps
MAX_SEQUENCE_LENGTH = 3000  # its default max_sequence_length (and the most check_inputs takes)
VAE_SCALE_FACTOR = 16  # its fixed vae_scale_factor (the Wan 2.2 VAE's 8 x its 2 x 2 patches)
DEFAULT_SIZE = 1024  # its default_sample_size 64 x 16
BOT_TOKEN = 128000  # get_prompt_embeds' <|begin_of_text|>, an empty prompt's tokens


def select_layers(states: Sequence[torch.Tensor], blocks: int) -> list:
    """The pipeline's ``text_encoder_layers``: the last ``blocks`` of the language model's hidden ``states``, or all
    of them and the last repeated up to ``blocks``."""
    states = list(states)
    if len(states) >= blocks:
        return states[len(states) - blocks:]
    return states + [states[-1]] * (blocks - len(states))


def pad_tokens(x: torch.Tensor, length: int) -> torch.Tensor:
    """``x`` (B, L, ...) zero-padded along the tokens to ``length`` (the pipeline's ``pad_embedding``)."""
    pad = x.new_zeros(x.shape[0], length - x.shape[1], *x.shape[2:])
    return torch.cat([x, pad], dim=1)


class BriaFiboNet(torch.nn.Module):
    """``net(z, t, context, mask)`` over a ``BriaFiboTransformer2DModel`` on unpacked latents z (B, C, h, w): one
    token per latent pixel with ids (0, row, column), ``timestep`` = the flow time s T, ``context`` split into the
    text states (``joint_attention_dim``) and the per-block ``text_encoder_layers``, zero ``txt_ids``, the key mask
    [mask, 1 ... 1] where some text token is masked; the velocity back in (B, C, h, w), z's dtype. ``references``:
    (tokens (1, N, C), ids (N, 3)) of an edit's reference images (:mod:`.bria_fibo_edit`), appended after the
    image tokens as BriaFiboEditPipeline appends them (their outputs dropped)."""

    def __init__(self, transformer, references: Optional[tuple] = None):
        super().__init__()
        self.model, self.references = transformer, references

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor = None,
                mask: torch.Tensor = None) -> torch.Tensor:
        if context is None or mask is None:
            raise DiffkitError("a Bria FIBO transformer needs cond {'context', 'mask'} (BriaFibo.encode_prompts)")
        config, dtype, (b, c, h, w) = self.model.config, model_dtype(self.model), x.shape
        t = torch.as_tensor(t, device=x.device, dtype=torch.float32).reshape(-1).expand(b)
        context = context.to(dtype)
        states = context[..., :config.joint_attention_dim]
        layers = list(context[..., config.joint_attention_dim:].split(config.text_encoder_dim, dim=-1))
        tokens = x.to(dtype).permute(0, 2, 3, 1).reshape(b, h * w, c)
        ids = latent_image_ids(2 * h, 2 * w, x.device, dtype)  # (0, row, column) of the h x w grid
        if self.references is not None:
            tokens = torch.cat([tokens, self.references[0].to(x.device, dtype).expand(b, -1, -1)], dim=1)
            ids = torch.cat([ids, self.references[1].to(x.device, dtype)])
        keys = torch.cat([mask.to(x.device).expand(b, -1), mask.new_ones(b, tokens.shape[1])], dim=1).bool()
        extra = {} if bool(keys.all()) else {"joint_attention_kwargs": {"attention_mask": keys[:, None, None, :]}}
        out = self.model(hidden_states=tokens, timestep=t.to(dtype), encoder_hidden_states=states,
                         text_encoder_layers=layers, txt_ids=torch.zeros(context.shape[1], 3, device=x.device,
                                                                         dtype=dtype),
                         img_ids=ids, return_dict=False, **extra)[0]
        return out[:, :h * w].reshape(b, h, w, c).permute(0, 3, 1, 2).to(x.dtype)


@dataclass
class BriaFibo(FrameVAE, Chroma):
    """The loaded components of a Bria FIBO folder (:func:`load_bria_fibo`): Chroma's fields (SmolLM3 as
    ``text_encoder`` / ``tokenizer``), the Wan VAE decoded by :class:`.flow_latents.FrameVAE`."""

    default_steps = FIBO_STEPS
    default_guidance = FIBO_GUIDANCE
    max_sequence_length = MAX_SEQUENCE_LENGTH
    default_image_size = DEFAULT_SIZE
    img2img_defaults = inpaint_defaults = None  # no img2img / inpainting pipeline
    guidance_hint = f"CFG for > 1, the pipeline's default {FIBO_GUIDANCE}"

    @property
    def vae_scale_factor(self) -> int:
        """The pipeline's fixed 16 (checked against the VAE's ``scale_factor_spatial`` at loading)."""
        return VAE_SCALE_FACTOR

    def latent_shape(self, batch: int, height: Optional[int] = None, width: Optional[int] = None) -> tuple:
        """(batch, in_channels, height / 16, width / 16); default 1024; sizes multiples of 16 (``check_inputs``)."""
        height = DEFAULT_SIZE if height is None else height
        width = DEFAULT_SIZE if width is None else width
        for value in (height, width):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value % VAE_SCALE_FACTOR:
                raise DiffkitError(f"height x width {height}x{width} is not allowed; give positive multiples of "
                                   f"{VAE_SCALE_FACTOR} (BriaFiboPipeline's vae_scale_factor)")
        f = VAE_SCALE_FACTOR
        return (batch, int(self.transformer.config.in_channels), height // f, width // f)

    def mu(self, h: int, w: int, steps: Optional[int] = None) -> float:
        """The pipeline's mu: ``calculate_shift`` of h w tokens (one per latent pixel, no 2 x 2 packing)."""
        return calculate_shift(h * w, self.scheduler_config)

    def network(self) -> torch.nn.Module:
        return BriaFiboNet(self.transformer)

    def encode_prompts(self, prompts: Sequence[str], max_sequence_length: int = MAX_SEQUENCE_LENGTH) -> tuple:
        """(context (B, L, 2 d + n_blocks d), mask (B, L)) as ``get_prompt_embeds`` (module docstring): the last two
        hidden states concatenated, then :func:`select_layers`' per-block states, in the transformer's dtype."""
        from .stable_diffusion import prompt_list
        if isinstance(max_sequence_length, bool) or not isinstance(max_sequence_length, int) \
                or not 1 <= max_sequence_length <= MAX_SEQUENCE_LENGTH:
            raise DiffkitError(f"max_sequence_length={max_sequence_length!r} is not allowed; allowed: "
                               f"1..{MAX_SEQUENCE_LENGTH} (BriaFiboPipeline's SmolLM3 length)")
        prompts = prompt_list(prompts)
        empty = torch.tensor([p == "" for p in prompts], device=self.device)
        if bool(empty.all()):
            ids = torch.full((len(prompts), 1), BOT_TOKEN, dtype=torch.long, device=self.device)
            mask = torch.ones_like(ids)
        else:
            tokens = self.tokenizer(prompts, padding="longest", max_length=max_sequence_length, truncation=True,
                                    add_special_tokens=True, return_tensors="pt")
            ids, mask = tokens.input_ids.to(self.device), tokens.attention_mask.to(self.device)
            ids[empty], mask[empty] = BOT_TOKEN, 1
        with torch.no_grad():
            states = self.text_encoder(ids, attention_mask=mask, output_hidden_states=True).hidden_states
        dtype = self.transformer.dtype
        layers = select_layers(states, len(self.transformer.transformer_blocks)
                               + len(self.transformer.single_transformer_blocks))
        text = torch.cat([states[-1], states[-2]], dim=-1).to(self.text_encoder.dtype)
        return torch.cat([text.to(dtype)] + [s.to(dtype) for s in layers], dim=-1), mask.to(dtype)

    def prompt_guidance(self, prompts, h: int, w: int, guidance_scale: Optional[float] = None,
                        negative_prompt=None, max_sequence_length: int = MAX_SEQUENCE_LENGTH,
                        convention: str = "diffusers", ip_adapter=None) -> tuple:
        """(denoiser, cond) at latents h x w: :meth:`.chroma.Chroma.prompt_guidance` (CFG for a diffusers-convention
        scale s > 1, default 5.0, against ``negative_prompt``, default "") with FIBO's prompts, the prompts' and the
        negative prompts' states and masks zero-padded to the longer as the pipeline's ``encode_prompt``; no
        IP-Adapter (the pipeline takes none)."""
        from ..guidance import ClassifierFreeGuidance
        if ip_adapter is not None:
            raise DiffkitError("an IP-Adapter is not supported for a Bria FIBO folder: BriaFiboPipeline (diffusers "
                               "0.42.1) has no load_ip_adapter; drop it")
        denoiser, cond = super().prompt_guidance(prompts, h, w, guidance_scale, negative_prompt,
                                                 max_sequence_length, convention)
        if isinstance(denoiser, ClassifierFreeGuidance):
            length = max(cond["context"].shape[1], denoiser.null_context.shape[1])
            cond = {key: pad_tokens(value, length) for key, value in cond.items()}
            denoiser.null_context = pad_tokens(denoiser.null_context, length)
            denoiser.null_cond["mask"] = pad_tokens(denoiser.null_cond["mask"], length)
        return denoiser, cond


def is_bria_fibo_folder(path: Union[str, Path]) -> bool:
    """True for a diffusers folder whose ``model_index.json`` names a ``BriaFibo...`` pipeline or a
    ``BriaFiboTransformer2DModel`` transformer (``BriaFiboEditPipeline`` too), but not a Bria FIBO 2 one
    (:mod:`.bria_fibo2`)."""
    from .bria_fibo2 import is_bria_fibo2_folder
    return names_pipeline(path, "BriaFibo", FIBO_TRANSFORMER) and not is_bria_fibo2_folder(path)


def check_bria_fibo_folder(directory: Path) -> tuple:
    """(index, scheduler config) of a Bria FIBO folder that :func:`load_bria_fibo` drives; anything else is a
    one-line DiffkitError (module docstring), from the JSON files alone."""
    from .pixart import check_classes
    from .sd_xl import _index
    index = _index(directory)
    if index is None or not is_bria_fibo_folder(directory):
        raise DiffkitError(f"{directory} is not a Bria FIBO folder (model_index.json naming a {FIBO_PIPELINE} with "
                           f"a {FIBO_TRANSFORMER} transformer)")
    if index.get("_class_name") not in FIBO_PIPELINES:
        raise DiffkitError(f"{directory} is a {index.get('_class_name')!r} folder, which diffkit does not drive; "
                           f"allowed: {', '.join(FIBO_PIPELINES)}")
    check_classes(directory, index, REQUIRED, "Bria FIBO", FIBO_CLASSES)
    from ..errors import read_json_object
    transformer = read_json_object(directory / "transformer" / "config.json", "transformer config")
    vae = read_json_object(directory / "vae" / "config.json", "vae config")
    z_dim = vae.get("z_dim", 16)
    check_part_configs(directory, {"transformer": transformer, "vae": vae}, (
        ("transformer", "patch_size", 1, 1, "BriaFiboPipeline's tokens are the latent pixels"),
        ("transformer", "in_channels", 64, z_dim, "the VAE's z_dim: BriaFiboPipeline's do_patching=False"),
        ("vae", "scale_factor_spatial", 8, VAE_SCALE_FACTOR, "BriaFiboPipeline's fixed vae_scale_factor")))
    return index, check_flux_scheduler(directory, FIBO_PIPELINE)


def load_bria_fibo(directory: Union[str, Path], device="cpu", dtype: torch.dtype = torch.float32,
                   progress: bool = True) -> BriaFibo:
    """Load a Bria FIBO diffusers folder (never downloads, never unpickles); what diffkit does not drive is refused
    in one line before any weight is read (:func:`check_bria_fibo_folder`); the transformer's
    ``text_encoder_dim`` must be SmolLM3's hidden size and its ``joint_attention_dim`` twice that."""
    diffusers = require("diffusers")
    directory = Path(directory)
    index, sched = check_bria_fibo_folder(directory)
    fibo = load_one_text_folder(BriaFibo, directory, index, sched, diffusers.BriaFiboTransformer2DModel,
                                "SmolLM3ForCausalLM", device, dtype, progress, "text_encoder_dim",
                                vae_cls=diffusers.AutoencoderKLWan)
    have, need = fibo.transformer.config.joint_attention_dim, 2 * fibo.text_encoder.config.hidden_size
    if have != need:
        raise DiffkitError(f"{directory}: the transformer's joint_attention_dim={have} does not fit the two last "
                           f"hidden states of the text encoder ({need})")
    return fibo


def text_to_image(fibo: BriaFibo, prompts: Union[str, Sequence[str]], **options) -> torch.Tensor:
    """Images of a Bria FIBO folder for ``prompts`` (JSON prompt strings, as the pipeline takes them) as
    ``BriaFiboPipeline`` (module docstring) with any diffkit sampler: :func:`.chroma.text_to_image`'s loop.

    sampler / grid: both None: the pipeline's loop, flow Euler (``ddim``) on its sigmas (30 steps by default);
    otherwise that sampler on its own grid of the size's flow schedule. guidance_scale (default 5.0, diffusers'
    convention unless ``convention="seed"``) / negative_prompt: :meth:`BriaFibo.prompt_guidance`. latents: z at
    s = 1 (B, C, h, w) (the pipeline's ``latents=`` is (B, h w, C) of it), default N(0, I) from per-sample
    ``seed + i``; height / width: default 1024, multiples of 16; max_sequence_length (default 3000);
    output_range, return_latents; the rest: passed to :func:`diffkit.sample`."""
    from .chroma import text_to_image as flow_text_to_image
    return flow_text_to_image(fibo, prompts, **options)


__all__ = ["BriaFibo", "BriaFiboNet", "load_bria_fibo", "is_bria_fibo_folder", "check_bria_fibo_folder",
           "select_layers", "text_to_image", "FIBO_GUIDANCE", "FIBO_STEPS"]
