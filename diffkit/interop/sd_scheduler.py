"""A scheduler override for a Stable Diffusion folder, as diffusers' ``pipe.scheduler =
LCMScheduler.from_config(pipe.scheduler.config)`` (``diffkit sample --scheduler lcm``,
``load_stable_diffusion(..., scheduler="lcm")``): the LCM-LoRA workflow (Luo et al. 2023b, "LCM-LoRA:
A Universal Stable-Diffusion Acceleration Module") of a plain SD 1.x/2.x folder (DDIM / PNDM scheduler) or
SD-XL folder (Euler scheduler, :mod:`.sd_xl`) with an LCM-LoRA merged by ``lora=`` / ``--lora``, and TCD-LoRA's
(Zheng et al. 2024) with ``TCDScheduler.from_config``. A folder whose own scheduler is a ``TCDScheduler`` is
sampled as ``scheduler="tcd"`` would (:func:`own_override`; ``diffkit edit`` too, :mod:`.lcm_edit`).

The new config is diffusers' own: the folder's scheduler class built from its JSON, then
``LCMScheduler`` / ``TCDScheduler.from_config`` of that class's config. Its betas, ``num_train_timesteps``,
``prediction_type`` and ``set_alpha_to_one`` / ``steps_offset`` carry over (the last two unused by LCM's
and TCD's steps); keys that class only defaulted do not (diffusers drops its ``_use_default_values``), so
``original_inference_steps`` 50, ``timestep_scaling`` 10 and ``clip_sample`` False are the new class's
defaults unless the folder's JSON sets them (a JSON ``clip_sample: true``, or ``thresholding``, which clamp
x0_hat in diffusers' steps and not in diffkit's samplers, is refused in one line).

* ``lcm``: the folder becomes an LCMScheduler folder (:mod:`.lcm`): the consistency function
  f = c_skip x + c_out x0_hat (LCM eq. 9, sigma_data 0.5, ``timestep_scaling``) around the guided UNet,
  as ``StableDiffusionPipeline`` feeds the guided output to ``LCMScheduler.step``; default sampler
  ``consistency``, 4 steps, s = 1 (no classifier-free guidance, the LCM-LoRA docs').
* ``tcd``: ``TCDScheduler.step`` takes the UNet's output as it is (no boundary condition), so the
  denoiser stays the UNet's; default sampler ``tcd`` (gamma 0.3, TCDScheduler's eta), 4 steps on the
  ``lcm`` spacing of 50 source times (TCDScheduler's default ``original_inference_steps``; another value in the
  folder's JSON is refused), s = 1. ``tcd:sigma_min`` is TCDScheduler step for step (its sample is x at t = 0);
  the default ``final='zero'`` ends at clean data, as on an LCMScheduler folder.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional, Union

from ..errors import DiffkitError, read_json_object
from . import require

SCHEDULER_OVERRIDES = {"lcm": "LCMScheduler", "tcd": "TCDScheduler"}  # --scheduler NAME: diffusers' class
DEFAULT_SAMPLERS = {"lcm": "consistency", "tcd": "tcd"}


def check_scheduler_name(name) -> str:
    """``name`` if it is an allowed override (``lcm``, ``tcd``), else a one-line DiffkitError."""
    if name not in SCHEDULER_OVERRIDES:
        raise DiffkitError(f"scheduler={name!r} is not allowed; allowed: {', '.join(SCHEDULER_OVERRIDES)} (diffusers' "
                           f"{' / '.join(SCHEDULER_OVERRIDES.values())}.from_config of the folder's scheduler)")
    return name


def check_scheduler_override(checkpoint: Union[str, Path], name: Optional[str]) -> None:
    """Refuse ``--scheduler NAME`` where it makes no sense, reading JSON only: an unknown name, a
    checkpoint that is not a Stable Diffusion folder (SD 1.x/2.x or SD-XL; a diffkit checkpoint carries its own
    sampling), a folder whose scheduler is already an LCMScheduler."""
    if name is None:
        return
    check_scheduler_name(name)
    from .stable_diffusion import is_stable_diffusion_folder
    if not is_stable_diffusion_folder(checkpoint):
        raise DiffkitError(f"--scheduler {name} applies to a Stable Diffusion folder (diffusers format); {checkpoint} "
                           f"is not one")
    config_file = Path(checkpoint) / "scheduler" / "scheduler_config.json"
    if config_file.is_file():
        override_config(read_json_object(config_file, "scheduler config"), name, checkpoint, build=False)


def own_override(config_or_folder) -> Optional[str]:
    """``"tcd"`` for a folder whose own scheduler is a ``TCDScheduler`` (``config_or_folder``: its scheduler config,
    or the folder, JSON only), else None: such a folder is sampled as ``scheduler="tcd"`` would sample it
    (``TCDScheduler.from_config`` of its config is that config), defaults and checks included."""
    if isinstance(config_or_folder, Mapping):
        own = config_or_folder.get("_class_name")
    else:
        from .lcm import folder_scheduler_class
        own = folder_scheduler_class(config_or_folder)
    return "tcd" if own == SCHEDULER_OVERRIDES["tcd"] else None


def override_config(config: Mapping, name: str, directory="the folder", build: bool = True,
                    source: Optional[str] = None) -> dict:
    """The scheduler config diffusers' ``{LCM,TCD}Scheduler.from_config(pipe.scheduler.config)`` gives for
    the folder's ``config`` (its JSON), as a dict (``_class_name`` the new class); ``build=False``: only
    the checks (an LCMScheduler folder is refused: it is one already). ``source``: what the errors name
    (default ``--scheduler NAME``)."""
    cls_name = SCHEDULER_OVERRIDES[check_scheduler_name(name)]
    source = source or f"--scheduler {name}"
    own = config.get("_class_name")
    if own == "LCMScheduler":
        raise DiffkitError(f"{source}: {directory} is already an LCMScheduler folder (a latent consistency "
                           f"model, sampled as one); drop --scheduler (its tcd sampler: --sampler tcd)")
    if not build:
        return dict(config)
    diffusers = require("diffusers")
    base = getattr(diffusers, str(own), None)
    logs, level = diffusers.utils.logging, diffusers.utils.logging.get_verbosity()
    logs.set_verbosity_error()  # the keys one class does not take (skip_prk_steps, ...): expected, not news
    try:
        loaded = base.from_config(config).config if isinstance(base, type) and hasattr(base, "from_config") else config
        new = dict(getattr(diffusers, cls_name).from_config(loaded).config)
    finally:
        logs.set_verbosity(level)
    new.pop("_use_default_values", None)
    for key in ("clip_sample", "thresholding"):
        if new.get(key):
            raise DiffkitError(f"{source}: {directory}'s scheduler config gives {cls_name} {key}=True, which "
                               f"clamps x0_hat in diffusers' step, not in diffkit's samplers; allowed: a config with "
                               f"{key} false (SD 1.5's and 2.1's)")
    if name == "tcd":  # the tcd sampler's lcm spacing picks from diffkit's default source times (no model grid)
        from ..timesteps import LCM_ORIGINAL_STEPS
        n, T = new.get("original_inference_steps"), int(new.get("num_train_timesteps", 1000))
        if n != min(LCM_ORIGINAL_STEPS, T):
            raise DiffkitError(f"{source}: {directory}'s scheduler config gives TCDScheduler "
                               f"original_inference_steps={n!r}; allowed: {min(LCM_ORIGINAL_STEPS, T)} (TCDScheduler's "
                               f"default, the source times of diffkit's lcm spacing)")
    return new


def default_sampler(name: Optional[str], consistency: bool) -> str:
    """The default sampler of a Stable Diffusion folder: ``tcd`` with ``scheduler="tcd"``, ``consistency``
    for an LCMScheduler folder (or ``scheduler="lcm"``), else ``ddim``."""
    if name is not None:
        return DEFAULT_SAMPLERS[name]
    return "consistency" if consistency else "ddim"


__all__ = ["SCHEDULER_OVERRIDES", "check_scheduler_name", "check_scheduler_override", "override_config", "own_override",
           "default_sampler"]
