"""FLUX.1 ControlNets (``FluxControlNetModel``) on a FLUX.1 folder (:mod:`.flux`), sampled with any diffkit sampler.

A FLUX ControlNet copies the first double- and single-stream blocks of the transformer (ControlNet, Zhang et al.
2023, eq. 1-2, on the MM-DiT); it reads the packed noisy latents, the time, the prompt (T5 context, pooled CLIP
text), the embedded guidance where its config has ``guidance_embeds``, and the control image's packed VAE latents
through a zero-initialised linear layer (``controlnet_x_embedder``); each block gives, through a zero-initialised
linear layer, a residual that diffusers' ``FluxTransformer2DModel`` adds to its double- / single-stream blocks
(``controlnet_block_samples`` / ``controlnet_single_block_samples``), times the conditioning scale.
:class:`FluxControlledNet` does this at every network call. Everything follows diffusers 0.42
``FluxControlNetPipeline``:

* the control image is resized to the output size (the folder's default or height x width), mapped to [-1, 1]
  and encoded by the folder's VAE, c = (E(x) - shift_factor) * scaling_factor, E(x) a draw of the posterior
  (``retrieve_latents(vae.encode(x), generator)``; here sample i's from ``torch.Generator().manual_seed(seed +
  i)``, ControlNet after ControlNet, which is the pipeline's draw with ``generator=[one per prompt]``) or its mean
  (``posterior="mean"``), then packed into 2 x 2 patches.
* the embedded guidance: the pipeline's default is 7.0 here (FluxPipeline's 3.5 without a ControlNet); a
  ControlNet with ``guidance_embeds`` gets it too (as the first ControlNet's config says, for all).
* true CFG (``true_cfg_scale`` > 1 with a negative prompt): the ControlNets run on the conditional half only and
  the negative pass takes the same residuals (the pipeline's), in diffkit's one batched call
  (``FluxControlledNet``'s ``control_rows``).
* ``controlnet_conditioning_scale`` (one per ControlNet; Multi-ControlNet sums in order,
  ``FluxMultiControlNetModel``), ``control_guidance_start`` / ``_end`` (:func:`.controlnet.step_windows`).

ControlNet-Union (a config with ``num_mode``: InstantX's / Shakker-Labs' FLUX.1-dev ControlNet-Union): each control
image comes with a control mode (``ControlNets(modes=...)``, :mod:`.controlnet_union`'s checks and the model cards'
names), whose learned embedding (``controlnet_mode_embedder``) the ControlNet puts before the prompt's tokens. One
union ControlNet with N control images is N calls, each image's residuals scaled by its own scale and window and
summed (``FluxMultiControlNetModel([union])``); plain FLUX ControlNets mix with union ones (mode None).

Not supported (one line): a ControlNet with an input hint
block (``conditioning_embedding_channels``: pixels instead of latents, residuals repeated over the blocks),
ControlNets that disagree on what the pipeline takes from the first (``guidance_embeds``).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Optional

import torch

from ..denoiser import Denoiser
from ..errors import DiffkitError, check_choice
from .controlnet import ControlNets, model_folder_config
from .flow_controlnet import POSTERIORS, acting, added, control_latents, control_windows, kept_rows

FLUX_CONTROLNET = "FluxControlNetModel"
FLUX_CONTROLNET_GUIDANCE = 7.0  # FluxControlNetPipeline's default guidance_scale


def check_flux_controlnet_folder(directory) -> None:
    """A folder with the ``config.json`` of a diffusers ``FluxControlNetModel`` of a kind diffkit drives (one line
    otherwise, from the JSON alone)."""
    config = model_folder_config(directory, "--controlnet", FLUX_CONTROLNET, " (a FLUX folder takes FLUX ControlNets)")
    _check_kind(config, f"--controlnet {directory}")


def _check_kind(config, name: str) -> None:
    """No input hint block (module docstring): one line naming ``name``."""
    if config.get("conditioning_embedding_channels") is not None:
        raise DiffkitError(f"{name} has conditioning_embedding_channels={config.get('conditioning_embedding_channels')}"
                           f" (an input hint block on the pixels), which diffkit does not drive; allowed: a ControlNet "
                           f"on the VAE latents (null)")


def check_flux_controlnets(models: list, transformer) -> None:
    """Each ControlNet fits the transformer (packed channels, width, text widths), has no input hint block, and they
    agree on what the pipeline takes from the first one's config. One line naming the ControlNet and key otherwise."""
    config = transformer.config
    width = int(config.num_attention_heads) * int(config.attention_head_dim)
    first = models[0].config
    for index, model in enumerate(models):
        name, theirs = f"--controlnet number {index + 1}", model.config
        if type(model).__name__ != FLUX_CONTROLNET:
            raise DiffkitError(f"{name} is a {type(model).__name__}; allowed: a {FLUX_CONTROLNET} for a FLUX folder")
        _check_kind(theirs, name)
        wanted = {"in_channels": int(config.in_channels), "patch_size": int(config.patch_size),
                  "num_attention_heads * attention_head_dim": width,
                  "joint_attention_dim": int(config.joint_attention_dim),
                  "pooled_projection_dim": int(config.pooled_projection_dim)}
        for key, value in wanted.items():
            ours = int(theirs.num_attention_heads) * int(theirs.attention_head_dim) if "*" in key else theirs.get(key)
            if ours != value:
                raise DiffkitError(f"{name} has {key}={ours!r} but this FLUX folder needs {value!r}; a ControlNet fits "
                                   f"only the transformer it was made for")
        for key, value in (("guidance_embeds", bool(first.get("guidance_embeds"))),
                           ("num_layers > 0", first.get("num_layers") > 0),
                           ("num_single_layers > 0", first.get("num_single_layers") > 0)):
            ours = theirs.get(key.split()[0])
            ours = ours > 0 if ">" in key else bool(ours) if key == "guidance_embeds" else ours
            if ours != value:
                raise DiffkitError(f"{name} has {key}: {ours!r} but --controlnet number 1 {value!r}; "
                                   f"FluxControlNetPipeline takes the first one's for all: give ControlNets that agree")


class FluxControlledNet(torch.nn.Module):
    """``net(z, t, context, pooled, guidance, control)``: the FLUX transformer (a :class:`.flux.FluxNet`) with the
    summed, scaled residuals of its ControlNets (module docstring). ``control``: (B, K, C, h, w) unpacked control
    latents per row; ``control_guidance``:
    the embedded guidance value the ControlNets take (None: none); ``net_grid`` / ``keeps``: the window
    (:func:`.flow_controlnet.control_windows`); ``modes``: each ControlNet-Union's control mode index (None: a plain
    ControlNet; no list: no union)."""

    def __init__(self, net, controlnets, scales, control_guidance: Optional[float],
                 net_grid: Optional[torch.Tensor] = None, keeps=None, modes=None):
        super().__init__()
        self.net, self.controlnets = net, torch.nn.ModuleList(controlnets)
        self.scales, self.control_guidance = [float(s) for s in scales], control_guidance
        self.net_grid, self.keeps, self.modes = net_grid, keeps, modes

    @property
    def model(self):
        return self.net.model

    def residuals(self, x, t, inputs: dict, control) -> Optional[dict]:
        """The transformer's ControlNet keyword arguments for this call (None where no ControlNet acts)."""
        from .flux import pack_latents
        guidance = None if self.control_guidance is None else torch.full(
            (x.shape[0],), self.control_guidance, device=x.device, dtype=torch.float32)
        t = torch.as_tensor(t, device=x.device, dtype=torch.float32).reshape(-1).expand(x.shape[0])
        blocks = singles = None
        acted = False
        for index, scale, kept in acting(self.scales, self.keeps, self.net_grid, t):
            image = pack_latents(control[:, index].to(inputs["hidden_states"].dtype))
            mode = None if self.modes is None or self.modes[index] is None else torch.full(
                (x.shape[0], 1), self.modes[index], dtype=torch.long, device=x.device)  # (B, 1), the pipeline's
            out = self.controlnets[index](
                hidden_states=inputs["hidden_states"], controlnet_cond=image, controlnet_mode=mode,
                conditioning_scale=scale, timestep=inputs["timestep"], guidance=guidance,
                pooled_projections=inputs["pooled_projections"], encoder_hidden_states=inputs["encoder_hidden_states"],
                txt_ids=inputs["txt_ids"], img_ids=inputs["img_ids"], return_dict=False)
            blocks, singles = added(blocks, kept_rows(out[0], kept)), added(singles, kept_rows(out[1], kept))
            acted = True
        if not acted:
            return None
        return {"controlnet_block_samples": blocks, "controlnet_single_block_samples": singles}

    def forward(self, x, t, context=None, pooled=None, guidance=None, control=None, control_rows=None,
                attention_kwargs=None):
        """``control_rows`` (true CFG): each row's source row; the ControlNets run on the rows that are their own
        source (the conditional half) and every row takes its source's residuals, as FluxControlNetPipeline gives
        its negative pass the conditional pass's. ``attention_kwargs``: the transformer's only (an IP-Adapter's
        image embeds), as the pipeline's ControlNets ignore them."""
        if control is None:
            raise DiffkitError("a FLUX ControlNet needs cond['control'] (flux_controlnet.controlnet_guidance)")
        if control_rows is None:
            controls = self.residuals(x, t, self.net.inputs(x, t, context, pooled, guidance), control)
        else:
            rows = torch.as_tensor(control_rows, device=x.device).long().reshape(-1)
            sources = (rows == torch.arange(len(rows), device=x.device)).nonzero().flatten()
            place = torch.full_like(rows, -1).index_copy(0, sources, torch.arange(len(sources), device=x.device))
            t_rows = torch.as_tensor(t, device=x.device, dtype=torch.float32).reshape(-1).expand(len(rows))[sources]
            inputs = self.net.inputs(x[sources], t_rows, context[sources], pooled[sources], guidance)
            shared = self.residuals(x[sources], t_rows, inputs, control[sources])
            controls = None if shared is None else {key: None if blocks is None else [b[place[rows]] for b in blocks]
                                                    for key, blocks in shared.items()}
        return self.net(x, t, context, pooled, guidance, controls=controls, attention_kwargs=attention_kwargs)


def controlnet_guidance(flux, controlnets: ControlNets, guide, shape: tuple, sampler: str, steps, nfe, grid,
                        options: dict, guidance_scale: Optional[float], seed: int = 0,
                        posterior: str = "sample", control_rows=None, generators=None) -> tuple:
    """(denoiser, cond) of ``guide(model)`` (the prompts' conditioning of a FLUX model at latents ``shape`` (B, C,
    h, w)) on the transformer with ``controlnets``, ``cond["control"]`` each row's control latents (module
    docstring; ``control_rows``: each sample's control image where there is one per prompt); ``guidance_scale``: the
    embedded guidance given (None: the pipeline's 7.0 for the ControlNets); ``generators``: sample i's control
    posterior drawn from ``generators[i]`` instead of ``seed + i`` (:func:`edit_guidance`)."""
    check_choice("control posterior", posterior, POSTERIORS)
    if controlnets.guess_mode:
        raise DiffkitError("--guess-mode applies to Stable Diffusion ControlNets; FluxControlNetPipeline has none")
    check_flux_controlnets(controlnets.models, flux.transformer)
    h, w = shape[2:]
    base = flux.denoiser_for(h, w)
    net_grid, keeps = control_windows(controlnets, base, sampler, steps, nfe, grid, options)
    first = controlnets.models[0].config
    value = FLUX_CONTROLNET_GUIDANCE if guidance_scale is None else float(guidance_scale)
    net = FluxControlledNet(base.net, controlnets.models, controlnets.scales,
                            value if first.get("guidance_embeds") else None, net_grid, keeps, controlnets.modes)
    controlled = Denoiser(net, base.schedule, "flow_prediction")
    controlled.model = flux.transformer
    denoiser, cond = guide(replace(flux, _denoisers={flux.shift(h, w): controlled}))
    if denoiser is not controlled:  # true CFG: the guidance repeats these (B,) rows for its null half
        cond["control_rows"] = torch.arange(shape[0], device=flux.device)
    f = flux.vae_scale_factor
    cond["control"] = control_latents(flux, controlnets, h * f, w * f, shape[0], 1, seed, posterior, None,
                                      control_rows, generators)[0]
    return denoiser, cond


def check_edit_controlnet(negative_prompt) -> None:
    """True CFG (a negative prompt) with a ControlNet in an edit: one line (the edit pipelines have none)."""
    if negative_prompt is not None:
        raise DiffkitError(f"negative_prompt={negative_prompt!r} (true CFG) with a ControlNet is not allowed in an "
                           f"edit: FluxControlNetImg2ImgPipeline / FluxControlNetInpaintPipeline have no true CFG; "
                           f"drop true_cfg_scale and the negative prompt")


def edit_guidance(flux, controlnets: ControlNets, guide, shape: tuple, sampler: str, steps: int, strength: float,
                  options: dict, guidance_scale: Optional[float], generators, posterior: str = "sample",
                  control_rows=None) -> tuple:
    """:func:`controlnet_guidance` for an img2img or inpainting edit of latents ``shape``, as diffusers 0.42
    ``FluxControlNetImg2ImgPipeline`` / ``FluxControlNetInpaintPipeline``: the control window counts the steps that
    run (the strength's part of the grid, :func:`diffkit.editing.strength_grid` of the sampler's grid or
    ``options["grid"]``: the pipelines' ``controlnet_keep`` over ``get_timesteps``' cut), and sample i's control
    posterior is drawn from its edit generator ``generators[i]`` (one, or one per sample; None: the global one)
    *before* the image's posterior and noise, as the pipelines draw the control image's latents first."""
    grid = None
    if controlnets.windowed:
        from ..editing import strength_grid
        from .controlnet import sampler_grid
        grid = strength_grid(sampler_grid(flux.denoiser_for(*shape[2:]), sampler, steps, None, options.get("grid"),
                                          options), strength)
    rows = list(generators) if isinstance(generators, (list, tuple)) else [generators] * shape[0]
    return controlnet_guidance(flux, controlnets, guide, shape, sampler, steps, None, grid, options, guidance_scale,
                               posterior=posterior, control_rows=control_rows, generators=rows)


__all__ = ["FluxControlledNet", "controlnet_guidance", "edit_guidance", "check_edit_controlnet",
           "check_flux_controlnet_folder", "check_flux_controlnets", "FLUX_CONTROLNET", "FLUX_CONTROLNET_GUIDANCE"]
