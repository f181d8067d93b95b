"""HunyuanDiT ControlNets (``HunyuanDiT2DControlNetModel``) on a HunyuanDiT folder (:mod:`.hunyuan_dit`), as
diffusers 0.42.1's ``HunyuanDiTControlNetPipeline``, sampled with any diffkit sampler.

A HunyuanDiT ControlNet (ControlNet, Zhang et al. 2023, eq. 1-2, carried to the DiT as Hunyuan-DiT's, Li et al.
2024, Sec. 2) is a copy of the transformer's first ``num_layers // 2 - 1`` blocks reading the noisy latents plus,
through a zero-initialised ``input_block``, the patch-embedded control latents, with the same prompts, masks, size
and style conditions, rotary embeddings and timestep as the transformer; block j's output through a
zero-initialised linear layer, times ``controlnet_conditioning_scale``, is added to the long skip connection of the
transformer's last blocks (``HunyuanDiT2DModel``'s ``controlnet_block_samples``: its skips popped in reverse
order). :class:`HunyuanControlledNet` does this at every network call, so every diffkit sampler, the scheduler's
own loop, the classifier-free guidance batch and guidance rescale see it:

* the control image (RGB; a path, PIL image or (1, 3, H, W) tensor in [0, 1]) is resized to the output size
  (Lanczos) and mapped to [-1, 1] (the pipeline's ``VaeImageProcessor.preprocess``), then encoded by the folder's
  VAE, c = E(x) x scaling_factor (no shift), E(x) a draw of the posterior (``latent_dist.sample()``) or its mean
  (``posterior="mean"``). The pipeline draws one posterior sample per row of its guidance batch (the null half
  included) from the global generator: here sample i draws its rows [null, conditional] from
  ``torch.Generator().manual_seed(control_seed + i)`` (:func:`.flow_controlnet.control_latents`), which is the
  pipeline's draw after ``torch.manual_seed(control_seed)`` for one prompt. One image for every prompt, or one per
  prompt (``control_rows``).
* the conditioning scale (default 1.0); 0 adds nothing (the pipeline adds 0 times the residuals).
* several ControlNets (the pipeline's ``controlnet=[...]``, a ``HunyuanDiT2DMultiControlNetModel``, with one control
  image and one conditioning scale each): every ControlNet's scaled residuals, summed in their order (its
  ``forward``), feed the same long skips; the control images are encoded ControlNet after ControlNet (sample i's
  generator draws net 1's [null, conditional] rows, then net 2's, ..., as the pipeline's global generator for one
  prompt).

Refused in one line (:func:`check_hunyuan_controlnets`): a control guidance window and guess mode (the pipeline has
neither), a ControlNet that does not fit the transformer (its channels, patch, width, text widths and lengths, size
conditions, or a number of blocks other than the transformer's skips: the transformer raises), PAG with a
ControlNet (no pipeline has both).
"""
from __future__ import annotations

import torch

from ..errors import DiffkitError
from .controlnet import ControlNets, model_folder_config
from .sana_controlnet import SanaControlledNet, check_sana_control_options

HUNYUAN_CONTROLNET = "HunyuanDiT2DControlNetModel"
CONTROL_PIPELINE = "HunyuanDiTControlNetPipeline"
_FITTING = ("in_channels", "patch_size", "cross_attention_dim", "cross_attention_dim_t5", "pooled_projection_dim",
            "text_len", "text_len_t5", "use_style_cond_and_image_meta_size")  # the ControlNet's = the transformer's


def check_hunyuan_controlnet_folder(directory) -> None:
    """A folder with the ``config.json`` of a diffusers ``HunyuanDiT2DControlNetModel`` (one line otherwise)."""
    model_folder_config(directory, "--controlnet", HUNYUAN_CONTROLNET, " (a HunyuanDiT folder takes HunyuanDiT "
                        "ControlNets)")


def check_hunyuan_control_options(count: int, starts, ends, guess_mode: bool) -> None:
    """One or more ControlNets, no window, no guess mode (:func:`.sana_controlnet.check_sana_control_options` for
    HunyuanDiTControlNetPipeline)."""
    check_sana_control_options(count, starts, ends, guess_mode, "HunyuanDiT", CONTROL_PIPELINE, HUNYUAN_CONTROLNET,
                               several=True)


def check_hunyuan_controlnets(controlnets: ControlNets, transformer) -> None:
    """``HunyuanDiT2DControlNetModel`` s without a window or guess mode, each fitting ``transformer`` (module
    docstring); a one-line DiffkitError naming what does not."""
    check_hunyuan_control_options(len(controlnets.models), controlnets.start, controlnets.end,
                                  controlnets.guess_mode)
    for model in controlnets.models:
        check_hunyuan_controlnet(model, transformer.config)


def check_hunyuan_controlnet(model, config) -> None:
    """One line for a ControlNet ``model`` that is not a ``HunyuanDiT2DControlNetModel`` fitting the transformer of
    ``config``."""
    if type(model).__name__ != HUNYUAN_CONTROLNET:
        raise DiffkitError(f"--controlnet is a {type(model).__name__}; allowed: a {HUNYUAN_CONTROLNET} for a "
                           f"HunyuanDiT folder")
    theirs = model.config
    for key in _FITTING:
        if theirs.get(key) != config.get(key):
            raise DiffkitError(f"--controlnet has {key}={theirs.get(key)!r} but this HunyuanDiT folder's transformer "
                               f"{config.get(key)!r}; a ControlNet fits only the transformer it was made for")
    width, wanted = (int(c.num_attention_heads) * int(c.attention_head_dim) for c in (theirs, config))
    blocks, skips = len(model.blocks), int(config.num_layers) - int(config.num_layers) // 2 - 1
    if width != wanted or blocks != skips:
        raise DiffkitError(f"--controlnet has a width of {width} and {blocks} blocks but this HunyuanDiT folder's "
                           f"transformer a width of {wanted} and {skips} long skips; a ControlNet fits only the "
                           f"transformer it was made for")


class HunyuanControlledNet(SanaControlledNet):
    """``net(x, t, ..., control)``: a :class:`.hunyuan_dit.HunyuanDiTNet` with ControlNets' scaled block residuals,
    summed in order (module docstring; ``net`` as :class:`.sana_controlnet.SanaControlledNet`; ``controlnets``,
    ``scales``: the ControlNets and their conditioning scales). ``control``: (B, K, C, h, w) control latents of each
    row, K the ControlNets."""

    def __init__(self, net, controlnets, scales):
        super().__init__(net, controlnets[0], scales[0])
        self.controlnets, self.scales = torch.nn.ModuleList(controlnets), [float(s) for s in scales]

    def forward(self, x, t, context=None, mask=None, context_t5=None, mask_t5=None, image_meta_size=None, style=None,
                control=None):
        if control is None:
            raise DiffkitError("a HunyuanDiT ControlNet needs cond['control'] (hunyuan_dit_controlnet."
                               "controlnet_guidance)")
        cond = (context, mask, context_t5, mask_t5, image_meta_size, style)
        acting = [(k, net, s) for k, (net, s) in enumerate(zip(self.controlnets, self.scales)) if s != 0]
        if not acting:  # the pipeline adds 0 x the residuals
            return self.net(x, t, *cond)
        from . import model_dtype
        args, kwargs = self.net.inputs(x, t, *cond)
        blocks = None
        for k, net, scale in acting:  # HunyuanDiT2DMultiControlNetModel.forward: the residuals summed in order
            out = net(*args, **kwargs, controlnet_cond=control[:, k].to(model_dtype(net)), conditioning_scale=scale,
                      return_dict=False)[0]
            blocks = out if blocks is None else [a + b for a, b in zip(blocks, out)]
        return self.net(x, t, *cond, controls=blocks)


def controlnet_guidance(hunyuan, controlnets: ControlNets, guide, shape: tuple, unguided=None, control_rows=None,
                        seed: int = 0, posterior: str = "sample") -> tuple:
    """(denoiser, cond) of ``guide(denoiser)`` (the prompts' guidance of a HunyuanDiT folder over the unguided
    denoiser given) on the transformer with ``controlnets`` (checked: :func:`check_hunyuan_controlnets`),
    ``cond["control"]`` and the guidance's null half's the control latents of each sample (module docstring);
    ``shape``: the latents' (B, C, h, w); ``unguided``: the plain denoiser (default :attr:`~.hunyuan_dit.HunyuanDiT.
    denoiser`); ``control_rows``: each sample's control image where there is one per prompt; sample i's posterior
    draws from ``seed + i`` (``posterior="mean"``: the mean)."""
    from ..denoiser import Denoiser
    from .flow_controlnet import control_latents
    check_hunyuan_controlnets(controlnets, hunyuan.transformer)
    plain = unguided or hunyuan.denoiser
    denoiser = Denoiser(HunyuanControlledNet(plain.net, controlnets.models, controlnets.scales),
                        plain.schedule, plain.prediction_type, learned_variance=hunyuan.learned_variance)
    denoiser.model = hunyuan.transformer
    guided, cond = guide(denoiser)
    nulls = getattr(guided, "null_cond", None)
    f = hunyuan.vae_scale_factor
    latents = control_latents(hunyuan, controlnets, shape[2] * f, shape[3] * f, shape[0], 1 + (nulls is not None),
                              seed, posterior, 0.0, control_rows)  # (copies, B, K, C, h, w)
    cond["control"] = latents[-1]
    if nulls is not None:
        nulls["control"] = latents[0]
    return guided, cond


__all__ = ["HUNYUAN_CONTROLNET", "HunyuanControlledNet", "check_hunyuan_control_options", "check_hunyuan_controlnet",
           "check_hunyuan_controlnet_folder", "check_hunyuan_controlnets", "controlnet_guidance"]
