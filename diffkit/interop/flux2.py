"""A FLUX.2 diffusers folder (``Flux2Pipeline``: FLUX.2-dev; ``Flux2KleinPipeline``: FLUX.2-klein; diffusers
0.42.1), sampled with any diffkit sampler.

FLUX.2 (Black Forest Labs 2025) is FLUX.1's kind of rectified flow (Esser et al. 2024, Sec. 2, eq. 1: x_s =
(1 - s) x_0 + s eps, velocity u = eps - x_0; :mod:`.flux`) with a ``Flux2Transformer2DModel`` on the latents of an
``AutoencoderKLFlux2``. diffkit reuses :class:`.flux.Flux`'s flow Denoiser, its scheduler grid (the folder's
``FlowMatchEulerDiscreteScheduler.set_timesteps(sigmas=linspace(1, 1/N, N), mu=mu)``, each sigma at the VP time of
equal SNR, :func:`.flow_latents.flow_sigmas_grid`; flow Euler ``ddim`` there is the pipelines' step) and its size /
shift handling. What is FLUX.2's own, as the pipelines do it:

* latents: diffkit's z is the pipelines' ``randn`` draw (B, 4 C, H / 2f, W / 2f): the VAE's latents already
  2 x 2-patchified (``_patchify_latents``, channel-major) and normalised by the VAE's batch-norm statistics; the
  transformer sees its h w positions as tokens (``_pack_latents``, a reshape) with 4-D position ids (T, H, W, L) =
  (0, row, column, 0) (``_prepare_latent_ids``); text tokens get (0, 0, 0, l) (``_prepare_text_ids``).
* decoding (:meth:`Flux2.decode`): z sigma_bn + mu_bn (sigma_bn = sqrt(running_var + batch_norm_eps)), unpatchified,
  then ``vae.decode`` (no scaling or shift factor).
* the shift: ``compute_empirical_mu`` (:func:`empirical_mu`) of the token count h w *and the step count* N, fed as
  mu to the scheduler (FLUX.1's ``calculate_shift`` does not look at N); a diffkit sampler's own grid takes the
  same e^mu shift at that size and step count.
* prompts (:meth:`Flux2.encode_prompts`): ``Flux2Pipeline``: the chat [system: ``SYSTEM_MESSAGE``, user: prompt
  without "[IMG]"] through the tokenizer's chat template (no generation prompt), padded / truncated to
  ``max_sequence_length`` (default 512), the ``Mistral3ForConditionalGeneration`` run under that mask; its hidden
  states 10, 20, 30 stacked per token into (B, L, 3 d). ``Flux2KleinPipeline``: the chat [user: prompt] with the
  generation prompt and ``enable_thinking=False``, each prompt tokenised alone to the same length, the
  ``Qwen3ForCausalLM``'s hidden states 9, 18, 27 stacked the same way. diffkit reads the text tokenizer of the
  folder's ``tokenizer`` (a PixtralProcessor's too: only its text part and chat template are used).
* guidance: ``Flux2Pipeline``: the embedded guidance value (``guidance_scale``, default 4.0, passed to every call;
  no second pass). ``Flux2KleinPipeline``: real classifier-free guidance u = u_neg + s (u_c - u_neg) (Ho &
  Salimans 2022, eq. 6 in diffusers' convention; :class:`~diffkit.guidance.ClassifierFreeGuidance`) for s > 1
  (default 4.0) against the empty prompt (diffkit's ``negative_prompt``: the pipeline's ``negative_prompt_embeds``
  of that prompt), none for an ``is_distilled`` folder; the transformer gets no guidance value.
* defaults: 50 steps, 128 f x 128 f pixels (sides multiples of 2 f).
* ``Flux2KleinKVPipeline`` (a Klein folder's parts; :attr:`Flux2.kv`): unguided, 4 steps by default, and its
  reference images before the latents in the transformer's ``kv_cache_mode="extract"`` (modulated at time 0,
  attending to themselves only) at the first call, their keys and values cached for the later calls, as the
  pipeline's loop (:func:`kv_reference_call`).

Refused in one line before any weight is read (:func:`check_flux2_folder`): another pipeline class, a missing
component, a transformer / VAE / text encoder / scheduler of another class, a transformer whose channels are not
4 x the VAE's latent channels or whose ``patch_size`` is not 1, ``invert_sigmas`` / ``stochastic_sampling``
schedulers; after loading, a text encoder with fewer layers than the stacked ones.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from ..errors import DiffkitError, check_choice, check_float32, read_json_object
from ..guidance import pipeline_scale
from . import model_dtype, require
from .flow_latents import finish_images, frozen_on, load_flow_parts, pipeline_grid, start_latents
from .flux import Flux, check_flux_scheduler

FLUX2_PIPELINE, FLUX2_KLEIN_PIPELINE = "Flux2Pipeline", "Flux2KleinPipeline"
FLUX2_KLEIN_KV_PIPELINE = "Flux2KleinKVPipeline"  # Klein with its references' K/V cached (module doc)
FLUX2_TEXT_ENCODERS = {FLUX2_PIPELINE: "Mistral3ForConditionalGeneration", FLUX2_KLEIN_PIPELINE: "Qwen3ForCausalLM",
                       FLUX2_KLEIN_KV_PIPELINE: "Qwen3ForCausalLM"}
FLUX2_TEXT_LAYERS = {FLUX2_PIPELINE: (10, 20, 30), FLUX2_KLEIN_PIPELINE: (9, 18, 27),  # text_encoder_out_layers
                     FLUX2_KLEIN_KV_PIPELINE: (9, 18, 27)}
REQUIRED = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")
FLUX2_GUIDANCE = 4.0  # both pipelines' default guidance_scale (Flux2Pipeline: embedded; Klein: CFG)
FLUX2_STEPS = 50  # their default num_inference_steps
FLUX2_KV_STEPS = 4  # Flux2KleinKVPipeline's
MAX_SEQUENCE_LENGTH = 512  # their default max_sequence_length (default_sample_size: FLUX.1's 128, .flux)


def empirical_mu(image_seq_len: int, num_steps: int) -> float:
    """FLUX.2's mu (``compute_empirical_mu`` in diffusers 0.42.1's ``pipeline_flux2.py``): past 4300 tokens the line
    a2 L + b2; below, linear in the step count N between the lines fitted at N = 10 (a1 L + b1) and N = 200."""
    a1, b1, a2, b2 = 8.73809524e-05, 1.89833333, 0.00016927, 0.45666666
    if image_seq_len > 4300:
        return float(a2 * image_seq_len + b2)
    m_200, m_10 = a2 * image_seq_len + b2, a1 * image_seq_len + b1
    a = (m_200 - m_10) / 190.0
    b = m_200 - 200.0 * a
    return float(a * num_steps + b)


def position_ids(h: int, w: int, device=None) -> torch.Tensor:
    """(h w, 4) ids (T, H, W, L) = (0, row, column, 0) of the latent tokens (``_prepare_latent_ids``)."""
    one = torch.arange(1)
    return torch.cartesian_prod(one, torch.arange(h), torch.arange(w), one).to(device)


def text_ids(length: int, device=None) -> torch.Tensor:
    """(L, 4) ids (0, 0, 0, l) of the text tokens (``_prepare_text_ids``)."""
    one = torch.arange(1)
    return torch.cartesian_prod(one, one, one, torch.arange(length)).to(device)


def patchify(z: torch.Tensor) -> torch.Tensor:
    """(B, C, 2 h, 2 w) -> (B, 4 C, h, w): 2 x 2 patches, channel-major (``_patchify_latents``)."""
    b, c, h, w = z.shape
    return z.view(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(b, c * 4, h // 2, w // 2)


def unpatchify(z: torch.Tensor) -> torch.Tensor:
    """(B, 4 C, h, w) -> (B, C, 2 h, 2 w), the inverse of the pipelines' 2 x 2 ``_patchify_latents``
    (``_unpatchify_latents``)."""
    b, c, h, w = z.shape
    return z.reshape(b, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3).reshape(b, c // 4, 2 * h, 2 * w)


def stacked_states(text_encoder, input_ids: torch.Tensor, mask: torch.Tensor, layers: Sequence[int]) -> torch.Tensor:
    """(B, L, len(layers) d): the encoder's hidden states ``layers`` (0 = the embeddings) run under ``mask``,
    stacked per token in the encoder's dtype (``_get_mistral_3_small_prompt_embeds`` / ``_get_qwen3_prompt_embeds``)."""
    with torch.no_grad():
        out = text_encoder(input_ids=input_ids, attention_mask=mask, output_hidden_states=True, use_cache=False)
    states = torch.stack([out.hidden_states[k] for k in layers], dim=1).to(text_encoder.dtype)
    b, n, length, d = states.shape
    return states.permute(0, 2, 1, 3).reshape(b, length, n * d)


class Flux2Net(torch.nn.Module):
    """``net(z, t, context, guidance=None)`` over a ``Flux2Transformer2DModel`` on z (B, 4 C, h, w): its h w
    positions as tokens with :func:`position_ids`, the text's :func:`text_ids`, ``timestep`` t / 1000 (t = s T),
    ``guidance`` (a number, or None) as the pipeline's float32 tensor; the velocity back in z's layout and dtype."""

    def __init__(self, transformer, kv: bool = False):
        super().__init__()
        self.model, self.kv = transformer, kv
        self._kv_held = None  # kv: (reference, reference_ids, Flux2KVCache) of the last extracting call

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor = None,
                guidance: Optional[float] = None, reference: Optional[torch.Tensor] = None,
                reference_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``reference`` / ``reference_ids``: reference images' tokens (B, N, 4 C) and ids (B, N, 4), appended after
        the latents' (:mod:`.flux2_reference`; their outputs dropped, the pipelines' ``noise_pred[:, :h w]``); with
        ``kv`` (a Flux2KleinKVPipeline folder) before them, their keys and values cached (:func:`kv_reference_call`)."""
        if context is None:
            raise DiffkitError("a FLUX.2 transformer needs cond {'context'} (Flux2.encode_prompts)")
        dtype, (b, c, h, w) = model_dtype(self.model), x.shape
        t = torch.as_tensor(t, device=x.device, dtype=torch.float32).reshape(-1).expand(b)
        if guidance is not None:
            guidance = torch.full((b,), float(guidance), device=x.device, dtype=torch.float32)
        tokens, ids = x.reshape(b, c, h * w).permute(0, 2, 1), position_ids(h, w, x.device)
        kv = {}
        if reference is not None and self.kv:  # Flux2KleinKVPipeline: its references' keys and values
            tokens, ids, kv = kv_reference_call(tokens, ids, reference, reference_ids, self._kv_held)
        elif reference is not None:
            tokens = torch.cat([tokens, reference.to(x.device, tokens.dtype)], dim=1)
            ids = torch.cat([ids, reference_ids[0].to(ids)])
        out = self.model(hidden_states=tokens.to(dtype), timestep=t.to(dtype) / 1000, guidance=guidance,
                         encoder_hidden_states=context.to(dtype), txt_ids=text_ids(context.shape[1], x.device),
                         img_ids=ids, return_dict=False, **kv)
        if kv.get("kv_cache_mode") == "extract":
            self._kv_held = (reference, reference_ids, out[1])
        out = out[0]
        return out[:, :h * w].permute(0, 2, 1).reshape(b, c, h, w).to(x.dtype)


def kv_reference_call(tokens: torch.Tensor, ids: torch.Tensor, reference: torch.Tensor, reference_ids,
                      held: Optional[tuple] = None) -> tuple:
    """(tokens, ids, transformer keywords) of a Flux2KleinKVPipeline call with references, as its loop: without a
    cache of these references, [references, latents] in ``kv_cache_mode="extract"`` (its first step), where the
    reference tokens are modulated at the fixed time 0 and attend to themselves only (``_flux2_kv_causal_attention``),
    the text and latent tokens to all, and their keys and values come back in a ``Flux2KVCache``; with ``held`` =
    (reference, reference_ids, cache) of equal references, the latents alone in ``kv_cache_mode="cached"`` (its later
    steps), the cached keys and values joined in every attention. They depend neither on the latents, the text nor the
    time, so the cache serves every later call with the same references (a new batch size or other images: extracted
    anew; :func:`set_kv_processors` must be on the transformer)."""
    if held is not None and held[0].shape == reference.shape and torch.equal(held[0], reference) \
            and torch.equal(held[1], reference_ids):
        return tokens, ids, {"kv_cache_mode": "cached", "kv_cache": held[2]}
    tokens = torch.cat([reference.to(tokens.device, tokens.dtype), tokens], dim=1)
    ids = torch.cat([reference_ids[0].to(ids), ids])
    return tokens, ids, {"kv_cache_mode": "extract", "num_ref_tokens": reference.shape[1]}


def set_kv_processors(transformer) -> None:
    """Flux2KleinKVPipeline's ``_set_kv_attn_processors``: ``Flux2KVAttnProcessor`` in the double-stream blocks,
    ``Flux2KVParallelSelfAttnProcessor`` in the single-stream ones (without KV arguments they attend as the default
    processors)."""
    from diffusers.models.transformers.transformer_flux2 import Flux2KVAttnProcessor, Flux2KVParallelSelfAttnProcessor
    for block in transformer.transformer_blocks:
        block.attn.set_processor(Flux2KVAttnProcessor())
    for block in transformer.single_transformer_blocks:
        block.attn.set_processor(Flux2KVParallelSelfAttnProcessor())


@dataclass
class Flux2(Flux):
    """The loaded components of a FLUX.2 folder (:func:`load_flux2`): :class:`.flux.Flux`'s fields (no second text
    encoder), ``pipeline`` (``Flux2Pipeline`` or ``Flux2KleinPipeline``) and the Klein folder's ``is_distilled``."""

    pipeline: str = FLUX2_PIPELINE
    distilled: bool = False
    variant = None  # no Fill / Depth / Canny channels
    bn_eps = None  # the batch norm's eps of vae_latents: None, the VAE's batch_norm_eps (ERNIE-Image's: 1e-5)
    patchify = staticmethod(patchify)  # the 2 x 2 patches' channel order (Ideogram 4's: patch-major, .ideogram4)
    unpatchify = staticmethod(unpatchify)

    @property
    def klein(self) -> bool:
        """A Klein folder (Qwen3 prompts): Flux2KleinPipeline or Flux2KleinKVPipeline."""
        return self.pipeline in (FLUX2_KLEIN_PIPELINE, FLUX2_KLEIN_KV_PIPELINE)

    @property
    def kv(self) -> bool:
        """A Flux2KleinKVPipeline folder: unguided, 4 steps, its references attending to themselves at time 0."""
        return self.pipeline == FLUX2_KLEIN_KV_PIPELINE

    @property
    def default_steps(self) -> int:
        """The pipeline's default num_inference_steps: 50, Flux2KleinKVPipeline's 4."""
        return FLUX2_KV_STEPS if self.kv else FLUX2_STEPS

    @property
    def latent_scale_factor(self) -> int:
        """Pixels per latent position: 2 f (the VAE's f times the 2 x 2 patches)."""
        return 2 * self.vae_scale_factor

    def latent_shape(self, batch: int, height: Optional[int] = None, width: Optional[int] = None) -> tuple:
        """(batch, in_channels (4 x the VAE's), height / 2f, width / 2f): :meth:`.flux.Flux.latent_shape`'s size
        rules (default 128 f x 128 f pixels, sides multiples of 2 f; the pipelines floor others with a warning)."""
        shape = super().latent_shape(batch, height, width)
        return (batch, int(self.transformer.config.in_channels), shape[2] // 2, shape[3] // 2)

    @property
    def downsampling_factor(self) -> int:  # pixels per latent, as diffkit's latent editing reads it
        return self.latent_scale_factor

    def encode(self, images: torch.Tensor, generator=None, sample: bool = False) -> torch.Tensor:
        """z of images in [-1, 1] (B, 3, H, W), the inverse of :meth:`vae_latents`, as the pipelines'
        ``_encode_vae_image``: the VAE posterior's mode (the mean; ``sample``: a draw from ``generator``, which no
        FLUX.2 pipeline makes), 2 x 2-patchified, (z - mu_bn) / sigma_bn."""
        from .stable_diffusion import vae_latents
        z = self.patchify(vae_latents(self.vae, images, self.device, generator, sample))
        bn, eps = self.vae.bn, float(self.vae.config.batch_norm_eps)
        return (z - bn.running_mean.view(1, -1, 1, 1).to(z.dtype)) / torch.sqrt(bn.running_var.view(1, -1, 1, 1) + eps)

    def mu(self, h: int, w: int, steps: Optional[int] = None) -> float:
        """The pipelines' mu at latents h x w (h w tokens) and ``steps`` (default 50): :func:`empirical_mu`."""
        return empirical_mu(h * w, self.default_steps if steps is None else steps)

    def network(self) -> torch.nn.Module:
        return Flux2Net(self.transformer, self.kv)

    def release_reference_cache(self) -> None:
        """Drop the references' keys and values the networks of a Flux2KleinKVPipeline folder hold (:func:`
        kv_reference_call`), as the pipeline clears its cache after its loop."""
        for denoiser in self._denoisers.values():
            if isinstance(getattr(denoiser, "net", None), Flux2Net):
                denoiser.net._kv_held = None

    def vae_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """The VAE's latents (B, C, 2h, 2w) of z: z sigma_bn + mu_bn of the VAE's batch norm, unpatchified (the
        pipelines' last step before ``vae.decode``; Flux2KleinPipeline's ``output_type="latent"``)."""
        bn, eps = self.vae.bn, float(self.bn_eps or self.vae.config.batch_norm_eps)
        z = latents.to(device=self.device, dtype=self.vae.dtype)
        std = torch.sqrt(bn.running_var.view(1, -1, 1, 1) + eps).to(z.dtype)
        return self.unpatchify(z * std + bn.running_mean.view(1, -1, 1, 1).to(z.dtype))

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """x = D(:meth:`vae_latents` (z)), in [-1, 1] (not clamped), as the pipelines decode."""
        with torch.no_grad():
            return self.vae.decode(self.vae_latents(latents), return_dict=False)[0].float()

    def check_guidance_scale(self, guidance_scale: Optional[float]) -> None:
        """A one-line DiffkitError for a scale that is no finite float32 number, or any for a distilled Klein
        folder (its pipeline ignores it)."""
        if guidance_scale is None:
            return
        if self.kv:
            raise DiffkitError(f"guidance_scale={guidance_scale!r} is not allowed: a {FLUX2_KLEIN_KV_PIPELINE} folder "
                               f"runs unguided (the pipeline takes no guidance_scale); drop it")
        if self.klein and self.distilled:
            raise DiffkitError(f"guidance_scale={guidance_scale!r} is not allowed: this Flux2KleinPipeline folder is "
                               f"step-wise distilled (is_distilled true), which runs unguided; drop it")
        if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)) \
                or not math.isfinite(guidance_scale):
            what = "CFG for > 1" if self.klein else "the embedded guidance"
            raise DiffkitError(f"guidance_scale={guidance_scale!r} is not allowed; give a finite number ({what}, "
                               f"the pipeline's default {FLUX2_GUIDANCE})")
        check_float32("guidance_scale", guidance_scale)

    def encode_prompts(self, prompts: Sequence[str], max_sequence_length: int = MAX_SEQUENCE_LENGTH) -> torch.Tensor:
        """(B, L, 3 d): the pipeline's ``encode_prompt`` (module docstring), L = ``max_sequence_length``."""
        from .stable_diffusion import prompt_list
        if isinstance(max_sequence_length, bool) or not isinstance(max_sequence_length, int) \
                or not 1 <= max_sequence_length <= 512:
            raise DiffkitError(f"max_sequence_length={max_sequence_length!r} is not allowed; allowed: 1..512 "
                               f"({self.pipeline}'s text length)")
        prompts, common = prompt_list(prompts), dict(padding="max_length", truncation=True,
                                                     max_length=max_sequence_length, return_tensors="pt")
        if self.klein:  # _get_qwen3_prompt_embeds: each prompt alone
            texts = [self.tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                                        add_generation_prompt=True, enable_thinking=False)
                     for p in prompts]
            rows = [self.tokenizer(text, **common) for text in texts]
            ids = torch.cat([r["input_ids"] for r in rows]), torch.cat([r["attention_mask"] for r in rows])
        else:  # _get_mistral_3_small_prompt_embeds: format_input's chats, batched
            from diffusers.pipelines.flux2.system_messages import SYSTEM_MESSAGE
            chats = [[{"role": "system", "content": [{"type": "text", "text": SYSTEM_MESSAGE}]},
                      {"role": "user", "content": [{"type": "text", "text": p.replace("[IMG]", "")}]}]
                     for p in prompts]
            tokens = self.tokenizer.apply_chat_template(chats, add_generation_prompt=False, tokenize=True,
                                                        return_dict=True, **common)
            ids = tokens["input_ids"], tokens["attention_mask"]
        return stacked_states(self.text_encoder, ids[0].to(self.device), ids[1].to(self.device),
                              FLUX2_TEXT_LAYERS[self.pipeline])

    def prompt_guidance(self, prompts, h: int, w: int, steps: Optional[int] = None,
                        guidance_scale: Optional[float] = None, negative_prompt=None,
                        max_sequence_length: int = MAX_SEQUENCE_LENGTH, convention: str = "diffusers") -> tuple:
        """(denoiser, cond) at latents h x w and ``steps``: ``Flux2Pipeline``: the prompts' states with the
        embedded ``guidance_scale`` (default 4.0; a negative prompt refused: the pipeline has none).
        ``Flux2KleinPipeline``: CFG with a diffusers-convention scale s > 1 (default 4.0; ``convention="seed"``
        reads W, s = 1 + W) against ``negative_prompt`` (default "", the pipeline's; one, or one per prompt);
        unguided for s <= 1 or a distilled folder (a negative prompt is then refused)."""
        from ..guidance import ClassifierFreeGuidance
        from .stable_diffusion import negative_prompts
        check_choice("convention", convention, ["diffusers", "seed"])
        self.check_guidance_scale(guidance_scale)
        scale = FLUX2_GUIDANCE if guidance_scale is None else float(guidance_scale)
        denoiser = self.denoiser_for(h, w, steps)
        if not self.klein:
            if negative_prompt is not None:
                raise DiffkitError("a negative prompt is not allowed for a Flux2Pipeline folder (its guidance is "
                                   "embedded, one pass; Flux2Pipeline takes no negative prompt); drop it")
            return denoiser, {"context": self.encode_prompts(prompts, max_sequence_length), "guidance": scale}
        diffusers_scale = pipeline_scale(guidance_scale, FLUX2_GUIDANCE, convention)
        guided = diffusers_scale > 1 and not self.distilled
        if not guided and negative_prompt is not None:
            raise DiffkitError(f"a negative prompt with guidance_scale={scale:g} ({convention} convention) is not "
                               f"allowed: it feeds only CFG (diffusers' scale > 1, a folder not distilled); drop it")
        cond = self.text_cond(prompts, max_sequence_length)
        if not guided:
            return denoiser, cond
        negatives = negative_prompts(negative_prompt, cond["context"].shape[0])
        if len(set(negatives)) == 1:
            negatives = negatives[:1]  # one row, broadcast by the guidance to every sample
        null = self.text_cond(negatives, max_sequence_length)
        return ClassifierFreeGuidance(denoiser, diffusers_scale, "diffusers", null_context=null.pop("context"),
                                      null_cond=null), cond

    def text_cond(self, prompts: Sequence[str], max_sequence_length) -> dict:
        """The network's text cond of ``prompts``: {"context": :meth:`encode_prompts`} (ERNIE-Image's: with the
        text lengths, :mod:`.ernie_image`)."""
        return {"context": self.encode_prompts(prompts, max_sequence_length)}


def flux2_kind(path) -> Optional[str]:
    """``Flux2Pipeline`` / ``Flux2KleinPipeline`` where ``model_index.json`` names one, else None."""
    from .sd_xl import pipeline_class
    name = pipeline_class(path)
    return name if name in FLUX2_TEXT_ENCODERS else None


def is_flux2_folder(path) -> bool:
    """True for a folder whose ``model_index.json`` names a ``Flux2...`` pipeline or a ``Flux2Transformer2DModel``
    (so ``diffkit sample`` dispatches; :func:`check_flux2_folder` refuses the ones diffkit does not drive)."""
    from .flow_latents import names_pipeline
    return names_pipeline(path, "Flux2", "Flux2Transformer2DModel")


def check_flux2_folder(directory) -> tuple:
    """(index, scheduler config) of a FLUX.2 folder, checked from its JSON alone (module docstring); a one-line
    DiffkitError for what diffkit does not drive."""
    from .pixart import check_classes
    from .sd_xl import _index
    directory = Path(directory)
    index = _index(directory)
    kind = None if index is None else index.get("_class_name")
    if kind not in FLUX2_TEXT_ENCODERS:
        what = "is not a FLUX.2 folder" if kind is None else f"is a {kind!r} folder, which diffkit does not drive"
        raise DiffkitError(f"{directory} {what}; allowed: model_index.json naming {' or '.join(FLUX2_TEXT_ENCODERS)}")
    check_classes(directory, index, REQUIRED, "FLUX.2", {
        "transformer": ("Flux2Transformer2DModel",), "vae": ("AutoencoderKLFlux2",),
        "text_encoder": (FLUX2_TEXT_ENCODERS[kind],), "scheduler": ("FlowMatchEulerDiscreteScheduler",)})
    check_patched_channels(directory)
    return index, check_flux_scheduler(directory, kind)


def check_patched_channels(directory: Path, component: str = "transformer") -> None:
    """One line unless the transformer (``component``) takes the 2 x 2-patchified latents of the AutoencoderKLFlux2
    as they are: in_channels 4 x the VAE's latent channels, out_channels the same (or null), patch_size 1 (FLUX.2's,
    ERNIE-Image's and Ideogram 4's folders)."""
    config = read_json_object(directory / component / "config.json", f"{component} config")
    vae = read_json_object(directory / "vae" / "config.json", "vae config")
    channels = 4 * int(vae.get("latent_channels", 32))
    got = (config.get("in_channels", 128), config.get("out_channels"), config.get("patch_size", 1))
    if got[0] != channels or got[1] not in (None, channels) or got[2] != 1:
        raise DiffkitError(f"{directory}'s {component} has in_channels, out_channels, patch_size = {got[0]!r}, "
                           f"{got[1]!r}, {got[2]!r}; allowed: {channels} (4 x the VAE's latent channels), "
                           f"{channels} or null, 1")


def load_flux2(directory: Union[str, Path], device="cpu", dtype: torch.dtype = torch.float32,
               progress: bool = True, lora=None) -> Flux2:
    """Load a FLUX.2 diffusers folder (never downloads, never unpickles); what diffkit does not drive is refused
    in one line before any weight is read (:func:`check_flux2_folder`). The tokenizer is read with
    ``AutoTokenizer`` (a ``PixtralProcessor`` folder's text tokenizer and chat template). ``lora``: LoRA files
    (paths or (path, scale) pairs) in the formats ``Flux2LoraLoaderMixin`` loads (diffusers / PEFT, ai-toolkit,
    kohya: :mod:`.flux2_lora`), read and checked first, fused as ``load_lora_weights`` +
    ``fuse_lora(lora_scale=scale)`` (:func:`.sd_lora.merge_sd_loras`)."""
    from .flux2_lora import read_flux2_loras
    from .qwen_image_lora import transformer_loras
    from .sd_lora import merge_sd_loras
    diffusers = require("diffusers")
    directory = Path(directory)
    index, sched = check_flux2_folder(directory)
    kind = index["_class_name"]
    loras = read_flux2_loras(lora, kind) if lora else []
    parts = load_flow_parts(directory, {**index, "tokenizer": ["transformers", "AutoTokenizer"]},  # its text part
                            diffusers.Flux2Transformer2DModel, {"": FLUX2_TEXT_ENCODERS[kind]}, dtype, progress,
                            vae_cls=diffusers.AutoencoderKLFlux2)
    device = frozen_on(parts, device)
    model = Flux2(**parts, text_encoder_2=None, tokenizer_2=None, scheduler_config=sched, device=device, dtype=dtype,
                  pipeline=kind, distilled=kind == FLUX2_KLEIN_KV_PIPELINE or bool(index.get("is_distilled", False)))
    if model.kv:  # its attention processors, as the pipeline's __init__ sets them
        set_kv_processors(model.transformer)
    text = parts["text_encoder"].config
    text = getattr(text, "text_config", text)  # Mistral3's language model
    layers, joint = FLUX2_TEXT_LAYERS[kind], model.transformer.config.joint_attention_dim
    if text.num_hidden_layers < max(layers) or joint != len(layers) * text.hidden_size:
        raise DiffkitError(f"{directory}: the text encoder has {text.num_hidden_layers} layers of width "
                           f"{text.hidden_size}; {kind} stacks its hidden states {layers} into the transformer's "
                           f"joint_attention_dim={joint}")
    merge_sd_loras(model, transformer_loras(loras, model.transformer, "FLUX.2"))
    return model


def text_to_image(flux2: Flux2, prompts: Union[str, Sequence[str]], *, sampler: Optional[str] = None,
                  steps: Optional[int] = None, nfe: Optional[int] = None, guidance_scale: Optional[float] = None,
                  convention: str = "diffusers", negative_prompt: Union[None, str, Sequence[str]] = None,
                  seed: Optional[int] = 0, latents: Optional[torch.Tensor] = None, height: Optional[int] = None,
                  width: Optional[int] = None, grid: Union[None, str, torch.Tensor] = None,
                  max_sequence_length: int = MAX_SEQUENCE_LENGTH, output_range: str = "0,1",
                  return_latents: bool = False, progress: bool = False, references: Optional[Sequence] = None,
                  **options) -> torch.Tensor:
    """Images of a FLUX.2 folder for ``prompts`` as its pipeline (module docstring) with any diffkit sampler.

    references: the pipelines' ``image=`` list (PIL images or paths), in context for every sample
    (:mod:`.flux2_reference`); height / width then default to the first one's processed size.

    sampler / grid: both None: the pipeline's loop, flow Euler (``ddim``) on its sigmas (50 steps by default, 4 for
    a Flux2KleinKVPipeline folder);
    otherwise as :func:`.flux.text_to_image` (a sampler's own grid shifted by the size's and step count's e^mu).
    guidance_scale / negative_prompt / convention: :meth:`Flux2.prompt_guidance`. latents: z at s = 1
    (B, 4 C, h, w), the pipeline's draw before packing; default N(0, I) from per-sample ``seed + i`` (the pipeline
    with one generator per sample). height / width: default 128 f, multiples of 2 f. ``return_latents``: z_0 in
    that layout (Flux2Pipeline's ``output_type="latent"`` packs it to (B, h w, 4 C); Klein's is
    :meth:`Flux2.vae_latents`). options: passed to :func:`diffkit.sample`."""
    from ..sampling import sample
    from .stable_diffusion import OUTPUT_RANGES, prompt_list
    check_choice("output_range", output_range, OUTPUT_RANGES)
    prompts = prompt_list(prompts)
    if references is not None:  # processed (and refused) first, as the pipelines; the first one's size
        from .flux2_reference import reference_images, reference_tokens
        references, size = reference_images(flux2, references)
        if latents is None:  # (the pipelines' height or the image's, each side)
            height, width = size[0] if height is None else height, size[1] if width is None else width
    noise, expected = start_latents(flux2, latents, len(prompts), height, width, " (patchified: B, 4C, H/2f, W/2f)")
    h, w = expected[2:]
    mu_steps = steps if isinstance(steps, int) and not isinstance(steps, bool) and steps > 0 else flux2.default_steps
    sampler, grid, steps = pipeline_grid(sampler, grid, steps, nfe, flux2.default_steps,
                                         lambda n: flux2.scheduler_grid(n, h, w), options.get("flow_shift"))
    denoiser, cond = flux2.prompt_guidance(prompts, h, w, mu_steps, guidance_scale, negative_prompt,
                                           max_sequence_length, convention)
    if references is not None:
        tokens, ids = reference_tokens(flux2, references)
        cond.update(reference=tokens.expand(len(prompts), -1, -1), reference_ids=ids.expand(len(prompts), -1, -1))
    try:
        z0 = sample(denoiser, noise, sampler, steps, nfe=nfe, grid=grid, seed=seed, cond=cond, progress=progress,
                    device=flux2.device, dtype=flux2.dtype, **options)
    finally:
        flux2.release_reference_cache()  # (a Flux2KleinKVPipeline folder's, as the pipeline's kv_cache.clear())
    return finish_images(flux2, z0, return_latents, output_range)


__all__ = ["Flux2", "Flux2Net", "load_flux2", "is_flux2_folder", "check_flux2_folder", "flux2_kind", "text_to_image",
           "empirical_mu", "position_ids", "text_ids", "patchify", "unpatchify", "stacked_states", "FLUX2_GUIDANCE",
           "FLUX2_STEPS", "FLUX2_PIPELINE", "FLUX2_KLEIN_PIPELINE", "FLUX2_KLEIN_KV_PIPELINE", "FLUX2_KV_STEPS",
           "kv_reference_call", "set_kv_processors"]
