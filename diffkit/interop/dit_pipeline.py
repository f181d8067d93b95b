"""diffkit DiT checkpoints <-> diffusers ``DiTPipeline`` folders (Peebles & Xie 2023; docs/interop.md).

Export (``diffkit convert --checkpoint DIT --to-diffusers DIR``, :func:`dit_pipeline_files`): ``transformer/``
(``DiTTransformer2DModel`` config + weights, :mod:`.dit`), ``scheduler/`` (a ``DDIMScheduler`` with the
checkpoint's exact schedule and prediction type, as facebook/DiT-XL-2-256 ships one; a flow model's
``FlowMatchEulerDiscreteScheduler``) and ``model_index.json`` naming a ``DiTPipeline`` whose ``vae`` is null:
diffkit's DiT here is pixel-space, and ``DiTPipeline`` always decodes with its ``vae``, so it runs the folder
as ``DiTPipeline.from_pretrained(DIR, vae=pixel_decoder())`` (:func:`pixel_decoder`: the identity, with
``scaling_factor`` 1). A latent DiT (diffkit's own autoencoder, not diffusers' ``AutoencoderKL``) is refused.

Import (:func:`load_dit_folder`, which ``diffkit sample --checkpoint DIR`` and ``load_denoiser(DIR)`` use, and
``import_diffusers`` / ``diffkit convert --from-diffusers`` for a folder without a VAE): the transformer as
diffkit's DiT, the scheduler's schedule, and an ``AutoencoderKL`` in ``vae/`` (facebook/DiT-XL-2-256's
layout) as the decoder of the latents, D(z / scaling_factor).

Class labels: diffusers' ``LabelEmbedding`` holds ``num_embeds_ada_norm + 1`` rows, the last the null
label of classifier-free guidance (Ho & Salimans 2022), which is diffkit's null class ``num_classes``.
``DiTPipeline`` passes 1000 as the null label (ImageNet's), so only a DiT with 1000 classes guides there;
diffkit guides with the folder's own null row. ``DiTPipeline``'s guidance, eps-bar = eps_u + s (eps_c -
eps_u), mixes the first ``in_channels`` output channels, the whole prediction (the learned variance channels
are dropped before its scheduler steps; DiT's own ``forward_with_cfg`` guides only the first 3 of 4 latent
channels, which diffusers does not reproduce): diffkit's :class:`~diffkit.guidance.ClassifierFreeGuidance` with
``convention="diffusers"`` computes the same (s = 1 + w; it keeps the conditional variance, which DDIM and
DPM-Solver do not read).
"""
from __future__ import annotations

import warnings
from dataclasses import asdict
from pathlib import Path

import torch

from ..errors import DiffkitError, DiffkitWarning, read_json_object
from . import from_pretrained, require

DIT_CLASSES = ("DiTTransformer2DModel", "Transformer2DModel")  # the second: DiT-XL-2-256's original config name
PIPELINE_NULL_LABEL = 1000  # the null label DiTPipeline.__call__ passes (ImageNet's 1000 classes)
_DIFFUSERS_VERSION = "0.42.0"


# ----------------------------------------------------------------------------- export
def dit_pipeline_files(checkpoint_path, model, meta: dict, schedule, *, clip_sample: bool = False) -> list:
    """The (relative name, bytes) files of the DiTPipeline folder of a loaded pixel-space DiT checkpoint
    (``model_index.json`` last); a latent DiT is a one-line DiffkitError."""
    from safetensors.torch import save as st_save
    from .diffusers_unet import export_scheduler_config, json_bytes
    from .dit import diffusers_config, to_diffusers_state
    if meta.get("latent"):
        raise DiffkitError(f"{checkpoint_path} is a latent DiT: diffusers' DiTPipeline decodes with an AutoencoderKL, "
                           f"and diffkit's autoencoder is not mapped to one; only pixel-space DiTs export")
    cfg = model.config
    if cfg.num_classes not in (None, PIPELINE_NULL_LABEL):
        warnings.warn(f"this DiT has num_classes={cfg.num_classes} (null label {cfg.num_classes}); DiTPipeline "
                      f"passes {PIPELINE_NULL_LABEL} as the null label, so it samples this folder only with "
                      f"guidance_scale <= 1; diffkit sample --checkpoint DIR guides it with its own null label",
                      DiffkitWarning, stacklevel=3)
    sched = export_scheduler_config(checkpoint_path, meta, schedule, learned_variance=cfg.learned_variance,
                                    clip_sample=clip_sample, kind="ddim")
    transformer = {"_class_name": "DiTTransformer2DModel", "_diffusers_version": _DIFFUSERS_VERSION,
                   **diffusers_config(cfg)}
    state = {k: v.detach().cpu().contiguous()
             for k, v in to_diffusers_state(model.state_dict(), cfg).items()}
    index = {"_class_name": "DiTPipeline", "_diffusers_version": _DIFFUSERS_VERSION,
             "transformer": ["diffusers", "DiTTransformer2DModel"], "scheduler": ["diffusers", sched["_class_name"]],
             "vae": [None, None]}
    return [("transformer/diffusion_pytorch_model.safetensors", st_save(state, metadata={"format": "pt"})),
            ("transformer/config.json", json_bytes(transformer)),
            ("scheduler/scheduler_config.json", json_bytes({**sched, "_diffusers_version": _DIFFUSERS_VERSION})),
            ("model_index.json", json_bytes(index))]


def pixel_decoder():
    """The ``vae`` that lets diffusers' ``DiTPipeline`` run a pixel-space DiT folder: ``decode(z)`` returns z
    and ``config.scaling_factor`` is 1, so the pipeline's images are (x_0 / 2 + 0.5).clamp(0, 1) of the
    sampled x_0 (diffusers logs that it expected an AutoencoderKL)."""
    diffusers = require("diffusers")
    from diffusers.configuration_utils import register_to_config
    from diffusers.models.autoencoders.vae import DecoderOutput

    class PixelDecoder(diffusers.ModelMixin, diffusers.ConfigMixin):
        @register_to_config
        def __init__(self, scaling_factor: float = 1.0):
            super().__init__()
            self.register_buffer("anchor", torch.zeros(()), persistent=False)  # a device and dtype to report

        def decode(self, z, return_dict: bool = True):
            return DecoderOutput(sample=z) if return_dict else (z,)

    return PixelDecoder()


# ----------------------------------------------------------------------------- import
def _transformer_dir(path: Path):
    """The folder holding the DiT transformer's config.json: ``path/transformer`` of a pipeline folder, or
    ``path`` itself (a bare transformer folder); None where ``path`` is neither."""
    index_file = path / "model_index.json"
    if index_file.is_file():
        try:
            entry = read_json_object(index_file).get("transformer")
        except DiffkitError:
            return None
        ok = isinstance(entry, list) and len(entry) == 2 and entry[1] in DIT_CLASSES
        return path / "transformer" if ok else None
    config = path / "config.json"
    if config.is_file():
        try:
            return path if read_json_object(config).get("_class_name") in DIT_CLASSES else None
        except DiffkitError:
            return None
    return None


def is_dit_folder(path) -> bool:
    """True for a diffusers DiTPipeline folder (``model_index.json`` naming a DiT ``transformer``) or a bare
    ``DiTTransformer2DModel`` folder, so that a caller (``diffkit sample``, ``diffkit convert``) dispatches on
    the path."""
    try:
        return Path(path).is_dir() and _transformer_dir(Path(path)) is not None
    except (TypeError, OSError):
        return False


class DiffusersVAEDecoder:
    """A DiT folder's ``AutoencoderKL`` as diffkit's latent decoder: ``decoder(z)`` = D(z / scaling_factor),
    images in [-1, 1] (not clamped), as ``DiTPipeline`` decodes."""

    def __init__(self, vae):
        self.vae = vae
        self.scale_factor = float(getattr(vae.config, "scaling_factor", 0.18215))

    @property
    def device(self):
        return next(self.vae.parameters()).device

    @property
    def image_channels(self) -> int:
        return int(self.vae.config.in_channels)

    @property
    def downsampling_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            z = z.to(device=self.device, dtype=self.vae.dtype) / self.scale_factor
            return self.vae.decode(z, return_dict=False)[0].float()


def read_dit_folder(directory, *, with_vae: bool = True):
    """(DiTTransformer2DModel, scheduler config dict, AutoencoderKL or None) of a DiT folder: a DiTPipeline
    folder, or a bare transformer folder with a sibling ``../scheduler``. A missing scheduler config is
    DDPM's linear schedule with a warning (as for a U-Net folder); a ``vae`` other than an AutoencoderKL (or
    null) is a one-line DiffkitError."""
    diffusers = require("diffusers")
    directory = Path(directory)
    tdir = _transformer_dir(directory)
    if tdir is None:
        raise DiffkitError(f"{directory} is not a DiT folder (model_index.json naming a DiTTransformer2DModel "
                           f"transformer, or a DiTTransformer2DModel config.json)")
    common = {"local_files_only": True, "low_cpu_mem_usage": False, "use_safetensors": True}  # never a pickle
    transformer = from_pretrained(diffusers.DiTTransformer2DModel, tdir, **common)
    vae = None
    if tdir != directory:
        entry = read_json_object(directory / "model_index.json", "model_index.json").get("vae") or [None, None]
        name = entry[1] if isinstance(entry, list) and len(entry) == 2 else entry
        if name not in (None, "AutoencoderKL"):
            raise DiffkitError(f"{directory}'s vae is a {name!r}; allowed: AutoencoderKL (DiTPipeline's) or null "
                               f"(a pixel-space DiT)")
        if name is not None and with_vae:
            vae = from_pretrained(diffusers.AutoencoderKL, directory / "vae", **common).eval().requires_grad_(False)
    sched_file = tdir.parent / "scheduler" / "scheduler_config.json"  # the pipeline's, or a bare folder's sibling
    if not sched_file.is_file():
        warnings.warn(f"{directory} has no scheduler config (scheduler/scheduler_config.json): assuming DDPM's "
                      f"linear schedule (1e-4..0.02, T=1000) and epsilon prediction", DiffkitWarning, stacklevel=3)
        return transformer, {}, vae
    return transformer, read_json_object(sched_file, "scheduler config"), vae


def dit_description(net) -> dict:
    """A DiT's ``meta["unet"]`` (:mod:`diffkit.models.network`): ``network: "dit"`` and its config fields
    (``norm_eps`` only where it is not DiT's 1e-6, as a trained DiT's description has none)."""
    from ..models.dit import NORM_EPS
    from ..models.network import DIT
    fields = asdict(net.config)
    if fields["norm_eps"] == NORM_EPS:
        del fields["norm_eps"]
    return {"network": DIT, **fields}


def dit_and_schedule(transformer, sched_cfg: dict):
    """(diffkit DiT, NoiseSchedule, prediction_type, flow shift or None) of a transformer and its scheduler
    config: a flow model (FlowMatchEulerDiscreteScheduler) with a learned variance is a one-line error."""
    from .dit import from_diffusers
    from .schedulers import FLOW_SCHEDULER, flow_shift_from_diffusers, schedule_from_diffusers
    net = from_diffusers(transformer)
    schedule, prediction_type = schedule_from_diffusers(sched_cfg)
    flow_shift = None
    if prediction_type == "flow_prediction":
        if net.config.learned_variance:
            raise DiffkitError(f"a {FLOW_SCHEDULER} folder whose DiT has a learned variance (out_channels = 2 * "
                               f"in_channels) has no diffkit equivalent; the flow network predicts the velocity only")
        flow_shift = flow_shift_from_diffusers(sched_cfg)
    return net, schedule, prediction_type, flow_shift


def load_dit_folder(directory, device="cpu"):
    """(DiT, metadata, NoiseSchedule, decoder or None) of a DiT folder, as :func:`diffkit.loading.load_model`
    returns a checkpoint's (``decoder``: the folder's AutoencoderKL, :class:`DiffusersVAEDecoder`); the
    description's ``img_size`` and ``in_channels`` are the latents' where there is a VAE."""
    transformer, sched_cfg, vae = read_dit_folder(directory)
    net, schedule, prediction_type, flow_shift = dit_and_schedule(transformer, sched_cfg)
    meta = {"unet": dit_description(net), "prediction_type": prediction_type,
            "learned_variance": net.config.learned_variance, "source": "diffusers", "class_names": []}
    if flow_shift is not None:
        meta.update(schedule="flow", flow_shift=flow_shift)
    decoder = None
    if vae is not None:
        decoder = DiffusersVAEDecoder(vae.to(device))
    return net.to(device).eval(), meta, schedule, decoder


def import_dit_folder(directory, out=None):
    """(DiT, NoiseSchedule, prediction_type) of a DiT folder without a VAE (a pixel-space DiT), and with
    ``out`` a diffkit checkpoint written there (:func:`~.diffusers_unet.write_checkpoint`); a folder with a
    VAE is a one-line DiffkitError (its AutoencoderKL has no diffkit checkpoint form: sample the folder)."""
    transformer, sched_cfg, vae = read_dit_folder(directory, with_vae=False)
    index = Path(directory) / "model_index.json"
    if index.is_file() and (read_json_object(index, "model_index.json").get("vae") or [None, None])[-1] is not None:
        raise DiffkitError(f"{directory} is a latent DiT (vae: AutoencoderKL), which a diffkit checkpoint cannot "
                           f"hold; sample the folder itself: diffkit sample --checkpoint {directory}")
    net, schedule, prediction_type, flow_shift = dit_and_schedule(transformer, sched_cfg)
    if out is not None:
        from .diffusers_unet import write_checkpoint
        write_checkpoint(out, net, schedule, prediction_type, flow_shift=flow_shift)
    return net, schedule, prediction_type


__all__ = ["dit_pipeline_files", "pixel_decoder", "is_dit_folder", "read_dit_folder", "load_dit_folder",
           "import_dit_folder", "DiffusersVAEDecoder", "PIPELINE_NULL_LABEL"]
