"""SD3 ControlNets (``SD3ControlNetModel``) on an SD3 folder (:mod:`.sd3`), sampled with any diffkit sampler.

An SD3 ControlNet is a copy of the first MM-DiT blocks of the transformer (ControlNet, Zhang et al. 2023, eq. 1-2,
carried to the transformer: diffusers' ``SD3ControlNetModel``). It reads the noisy latents, the time, the prompt
(context and pooled text) and the control image's *latents* through a zero-initialised patch embedding, and each
of its blocks gives, through a zero-initialised linear layer, a residual that diffusers'
``SD3Transformer2DModel`` adds to the hidden states of its block(s) (``block_controlnet_hidden_states``: block j
takes residual int(j / (N / n)) of n for N blocks), times the conditioning scale. :class:`SD3ControlledNet`
does this at every network call, so every diffkit sampler and the classifier-free guidance batch see it.
Everything follows diffusers 0.42 ``StableDiffusion3ControlNetPipeline``:

* the control image (RGB; a path, PIL image or (1, 3, H, W) tensor in [0, 1]) is resized to the output size
  (Lanczos; the output size is the folder's default or height x width, *not* the control image's) and mapped to
  [-1, 1] (the pipeline's ``VaeImageProcessor``), then encoded by the folder's VAE, c = (E(x) - shift) *
  scaling_factor, E(x) a draw of the VAE posterior (``latent_dist.sample()``) or its mean (``posterior="mean"``);
  with ``force_zeros_for_pooled_projection`` (InstantX's SD3 ControlNets) without the shift and with zero
  pooled text for the ControlNet. The pipeline draws one posterior sample per row of its batch (the null half
  of the guidance included) from the global generator: here sample i draws its rows, [null, conditional] with
  guidance, from ``torch.Generator().manual_seed(seed + i)``, ControlNet after ControlNet, which is the
  pipeline's draw after ``torch.manual_seed(seed)`` for one prompt.
* ``controlnet_conditioning_scale`` (one per ControlNet; Multi-ControlNet sums the scaled residuals in order,
  ``SD3MultiControlNetModel``), ``control_guidance_start`` / ``_end`` (the steps kept, as the pipeline's
  ``controlnet_keep``: :func:`.controlnet.step_windows`); both guidance halves get residuals (no guess mode).
* a ControlNet without ``joint_attention_dim`` (SD3.5's 8B ControlNets) gets no context, and one with
  ``use_pos_embed=False`` the transformer's position embedding; as the pipeline, the first ControlNet's config
  decides the shift, the pooled text and the context of all (ControlNets that disagree on them are refused).

An inpainting ControlNet (``extra_conditioning_channels=1``, e.g. alimama-creative's SD3 inpainting ControlNet)
takes a mask with its control image (``mask`` of :func:`controlnet_guidance`; ``text_to_image(control_mask=)``,
``diffkit edit --mask`` on an SD3 folder), as diffusers 0.42 ``StableDiffusion3ControlNetInpaintingPipeline``
(``prepare_image_with_mask``): the control image's pixels where the binarised mask is 1 are set to -1, the result
encoded, (E(x) - shift_factor) * scaling_factor (always shifted), and the kept region 1 - m (the mask
nearest-resized to the latents, :func:`diffkit.latent_editing.latent_mask`) appended as a channel; one posterior draw
per sample (from ``seed + i``, the pipeline's global generator for one prompt) serves both guidance halves (the
pipeline encodes once, then repeats); the ControlNet gets zero pooled text (``controlnet_pooled_projections``
default). The images are then sampled from noise (no strength, no replacement: the ControlNet does the inpainting).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Optional

import torch

from ..denoiser import Denoiser
from ..errors import DiffkitError, check_choice
from .controlnet import ControlNets, model_folder_config
from .flow_controlnet import POSTERIORS, acting, control_latents, control_windows, kept_rows

SD3_CONTROLNET = "SD3ControlNetModel"


def check_sd3_controlnet_folder(directory) -> None:
    """A folder with the ``config.json`` of a diffusers ``SD3ControlNetModel`` (one line otherwise)."""
    model_folder_config(directory, "--controlnet", SD3_CONTROLNET, " (an SD3 folder takes SD3 ControlNets)")


def check_sd3_controlnets(models: list, transformer, vae, extra: int = 0) -> None:
    """Each ControlNet fits the transformer (latent channels, patch size, width, text widths) and reads plain
    VAE latents (``extra`` 0: no extra conditioning channels) or, with a mask (``extra`` 1), is an inpainting
    ControlNet; they agree on what the first one's config decides for all in the pipeline. One line naming the
    ControlNet and the key otherwise."""
    config = transformer.config
    width = int(config.num_attention_heads) * int(config.attention_head_dim)
    for index, model in enumerate(models):
        name, theirs = f"--controlnet number {index + 1}", model.config
        if type(model).__name__ != SD3_CONTROLNET:
            raise DiffkitError(f"{name} is a {type(model).__name__}; allowed: an {SD3_CONTROLNET} for an SD3 folder")
        wanted = {"in_channels": int(vae.config.latent_channels), "patch_size": int(config.patch_size),
                  "num_attention_heads * attention_head_dim": width,
                  "pooled_projection_dim": int(config.pooled_projection_dim), "extra_conditioning_channels": extra}
        if theirs.joint_attention_dim is not None:
            wanted["joint_attention_dim"] = int(config.joint_attention_dim)
        ours = {key: int(theirs.num_attention_heads) * int(theirs.attention_head_dim) if "*" in key
                else theirs.get(key, 0) for key in wanted}
        channels = ours["extra_conditioning_channels"]
        if channels != extra:
            allowed = "1 with a mask (an inpainting ControlNet)" if extra else \
                "0 without a mask (an inpainting ControlNet goes with diffkit edit --mask, control_mask=)"
            raise DiffkitError(f"{name} has extra_conditioning_channels={channels!r}; allowed: {allowed}")
        for key, value in wanted.items():
            if ours[key] != value:
                raise DiffkitError(f"{name} has {key}={ours[key]!r} but this SD3 folder needs {value!r}; a ControlNet "
                                   f"fits only the transformer it was made for")
        for key in ("force_zeros_for_pooled_projection", "joint_attention_dim"):
            if (theirs.get(key) is None) != (models[0].config.get(key) is None) or \
                    bool(theirs.get(key)) != bool(models[0].config.get(key)):
                raise DiffkitError(f"{name} has {key}={theirs.get(key)!r} but --controlnet number 1 "
                                   f"{models[0].config.get(key)!r}; StableDiffusion3ControlNetPipeline takes the first "
                                   f"one's for all: give ControlNets that agree")


def check_controlnet_size(models: list, h: int, w: int, f: int) -> None:
    """Each ControlNet's own position embedding (``use_pos_embed``, the default) covers latents h x w: at most
    ``pos_embed_max_size`` patches a side (diffusers' ``PatchEmbed.cropped_pos_embed`` raises a ValueError past it,
    mid-sampling); ``f`` the VAE factor. One line naming the ControlNet and the largest side in pixels otherwise."""
    for index, model in enumerate(models):
        most, patch = model.config.get("pos_embed_max_size"), int(model.config.get("patch_size", 2))
        if model.config.get("use_pos_embed", True) is False or most is None:
            continue
        limit = int(most) * patch * f
        if max(h, w) * f > limit:
            raise DiffkitError(f"height x width {h * f}x{w * f} is not allowed with --controlnet number {index + 1}: "
                               f"give --height / --width at most {limit} (its pos_embed_max_size {most} patches of "
                               f"{patch * f} pixels)")


class SD3ControlledNet(torch.nn.Module):
    """``net(x, t, context, pooled, control)``: the SD3 transformer (an :class:`.sd3.SD3Net`) with the summed,
    scaled block residuals of its ControlNets (module docstring). ``control``: (B, K, C, h, w), ControlNet k's
    control latents of each row (cond, so that the guidance gives its null half its own rows); ``net_grid``:
    the sampler's grid as the network's times (s T) where a window is set, ``keeps``: per ControlNet, its
    controlled steps (None: every call)."""

    def __init__(self, net, controlnets, scales, zero_pooled: bool, with_context: bool,
                 net_grid: Optional[torch.Tensor] = None, keeps=None):
        super().__init__()
        self.net, self.controlnets = net, torch.nn.ModuleList(controlnets)
        self.scales, self.zero_pooled, self.with_context = [float(s) for s in scales], zero_pooled, with_context
        self.net_grid, self.keeps = net_grid, keeps

    @property
    def model(self):
        return self.net.model

    def residuals(self, x, t, context, pooled, control) -> Optional[list]:
        """The summed block residuals of the ControlNets that act at t (None where none does)."""
        from . import model_dtype
        dtype = model_dtype(self.net.model)
        t = torch.as_tensor(t, device=x.device, dtype=torch.float32).reshape(-1).expand(x.shape[0])
        pooled = torch.zeros_like(pooled) if self.zero_pooled else pooled
        total = None
        for index, scale, kept in acting(self.scales, self.keeps, self.net_grid, t):
            blocks = kept_rows(self.controlnets[index](
                hidden_states=x.to(dtype), controlnet_cond=control[:, index].to(dtype), conditioning_scale=scale,
                encoder_hidden_states=context.to(dtype) if self.with_context else None,
                pooled_projections=pooled.to(dtype), timestep=t, return_dict=False)[0], kept)
            total = list(blocks) if total is None else [a + b for a, b in zip(total, blocks)]
        return total

    def forward(self, x, t, context=None, pooled=None, control=None, attention_kwargs=None):
        """``attention_kwargs``: the transformer's only (an IP-Adapter's image embeds); the ControlNets take none,
        as StableDiffusion3ControlNetPipeline's ignore them."""
        if control is None:
            raise DiffkitError("an SD3 ControlNet needs cond['control'] (sd3_controlnet.controlnet_guidance)")
        return self.net(x, t, context, pooled, controls=self.residuals(x, t, context, pooled, control),
                        **({} if attention_kwargs is None else {"attention_kwargs": attention_kwargs}))


def controlled_sd3(sd3, controlnets: ControlNets, sampler: str, steps, nfe, grid, options: dict,
                   inpainting: bool = False, size: Optional[tuple] = None):
    """A copy of ``sd3`` whose denoiser runs the transformer with ``controlnets`` (checked, one line otherwise);
    ``sampler`` / ``steps`` / ``nfe`` / ``grid`` / ``options``: the run's, which place a control guidance window;
    ``inpainting``: inpainting ControlNets (module docstring: zero pooled text). ``size``: the latents' (h, w); with
    ``use_dynamic_shifting`` the copy's denoiser is on that size's schedule (:meth:`.sd3.StableDiffusion3.
    denoiser_for`) and is what the copy's ``denoiser_for(h, w)`` gives."""
    if controlnets.guess_mode:
        raise DiffkitError("--guess-mode applies to Stable Diffusion ControlNets; StableDiffusion3ControlNetPipeline "
                           "has no guess mode")
    check_sd3_controlnets(controlnets.models, sd3.transformer, sd3.vae, int(inpainting))
    for model in controlnets.models:
        if model.config.get("use_pos_embed") is False and model.pos_embed is None:  # the pipeline's __init__
            model.pos_embed = model._get_pos_embed_from_transformer(sd3.transformer).to(
                device=sd3.device, dtype=model.dtype)
    plain = sd3.denoiser_for(*(size or (None, None)))  # with a dynamic shift: the size's schedule
    net_grid, keeps = control_windows(controlnets, plain, sampler, steps, nfe, grid, options)
    first = controlnets.models[0].config
    net = SD3ControlledNet(plain.net, controlnets.models, controlnets.scales,
                           inpainting or bool(first.get("force_zeros_for_pooled_projection")),
                           first.get("joint_attention_dim") is not None, net_grid, keeps)
    denoiser = Denoiser(net, plain.schedule, "flow_prediction")
    denoiser.model = sd3.transformer
    if plain is sd3.denoiser:
        return replace(sd3, _denoiser=denoiser)
    return replace(sd3, _denoiser=denoiser, _denoisers={sd3.shift(*size): denoiser})


def controlnet_guidance(sd3, controlnets: ControlNets, guide, shape: tuple, sampler: str, steps, nfe, grid,
                        options: dict, seed: int = 0, posterior: str = "sample", control_rows=None,
                        mask: Optional[torch.Tensor] = None) -> tuple:
    """(denoiser, cond) of ``guide(model)`` (the prompts' guidance of an SD3 model) on the transformer with
    ``controlnets`` (:func:`controlled_sd3`), ``cond["control"]`` the control latents of the conditional rows and,
    where the guidance is on (w != 0, as the pipeline's ``do_classifier_free_guidance``), its null half's own
    (:func:`.flow_controlnet.control_latents`; ``control_rows``: each sample's control image where there is one per
    prompt); ``shape``: the latents' (B, C, h, w). ``mask`` (1 or B, 1, H, W) at the output size, 1 = repaint:
    inpainting ControlNets (module docstring, :func:`inpainting_control`), both halves the same control."""
    check_choice("control posterior", posterior, POSTERIORS)
    check_controlnet_size(controlnets.models, shape[2], shape[3], sd3.vae_scale_factor)
    denoiser, cond = guide(controlled_sd3(sd3, controlnets, sampler, steps, nfe, grid, options, mask is not None,
                                          tuple(shape[2:])))
    guided = getattr(denoiser, "w", 0) != 0
    if mask is not None:
        cond["control"] = inpainting_control(sd3, controlnets, mask, shape, seed, posterior, control_rows)
        if guided:
            denoiser.null_cond["control"] = cond["control"]
        return denoiser, cond
    f = sd3.vae_scale_factor
    shift = 0.0 if controlnets.models[0].config.get("force_zeros_for_pooled_projection") else sd3.shift_factor
    latents = control_latents(sd3, controlnets, shape[2] * f, shape[3] * f, shape[0], 2 if guided else 1, seed,
                              posterior, shift, control_rows)
    cond["control"] = latents[-1]
    if guided:
        denoiser.null_cond["control"] = latents[0]
    return denoiser, cond


def inpainting_control(sd3, controlnets: ControlNets, mask: torch.Tensor, shape: tuple, seed: int = 0,
                       posterior: str = "sample", control_rows=None, **normalised) -> torch.Tensor:
    """(B, K, C + 1, h, w): StableDiffusion3ControlNetInpaintingPipeline's ``prepare_image_with_mask`` per sample
    and ControlNet: its control image (prepared as :func:`.flow_controlnet.control_pixels`) set to -1 where the
    binarised ``mask`` (1 or B, 1, H, W; 1 = repaint) is 1, encoded (:func:`.flow_controlnet.control_latents`, sample
    i's draw from ``seed + i``, shifted), then the kept region 1 - m at the latents' size as one more channel.
    ``normalised``: ``shift`` / ``scale`` / ``moments`` of :func:`.flow_controlnet.control_latents` (Qwen-Image's
    ``QwenImageControlNetInpaintPipeline``, the same preparation: :mod:`.qwen_image_controlnet`)."""
    from ..latent_editing import latent_mask
    from .flow_controlnet import control_pixels
    batch, (h, w), f = shape[0], shape[2:], sd3.vae_scale_factor
    if not isinstance(mask, torch.Tensor) or mask.ndim != 4 or mask.shape[0] not in (1, batch) or \
            tuple(mask.shape[1:]) != (1, h * f, w * f):
        raise DiffkitError(f"a control mask of shape {tuple(getattr(mask, 'shape', ()))} is not allowed; give (1 or "
                           f"{batch}, 1, {h * f}, {w * f}) in [0, 1], 1 = repaint, at the output size")
    mask = mask.to(sd3.device, torch.float32).expand(batch, 1, h * f, w * f)
    repaint = (mask >= 0.5).expand(batch, 3, h * f, w * f)
    picked = controlnets.rows(batch, control_rows)
    pixels = [(images[picked] if picked is not None and images.shape[0] > 1 else
               images[:1].expand(batch, -1, -1, -1)).to(sd3.device).masked_fill(repaint, -1.0)
              for images in control_pixels(sd3, controlnets, h * f, w * f)]
    latents = control_latents(sd3, controlnets, h * f, w * f, batch, 1, seed, posterior, normalised.pop("shift", None),
                              pixels=pixels, **normalised)[0]
    kept = (1 - latent_mask(mask, (h, w))).to(latents)[:, None].expand(batch, latents.shape[1], 1, h, w)
    return torch.cat([latents, kept], dim=2)


__all__ = ["SD3ControlledNet", "controlnet_guidance", "inpainting_control", "check_sd3_controlnet_folder",
           "check_controlnet_size", "check_sd3_controlnets", "controlled_sd3", "SD3_CONTROLNET"]
