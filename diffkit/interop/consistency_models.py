"""An OpenAI consistency-model diffusers folder (``ConsistencyModelPipeline``, diffusers 0.42.1; e.g.
openai/diffusers-cd_imagenet64_l2), sampled with diffkit's ``consistency`` sampler.

Song, Dhariwal, Chen & Sutskever 2023, "Consistency Models" (CM). The folder holds a ``UNet2DModel`` F (class-
conditional through ``num_class_embeds``, or unconditional) and a ``CMStochasticIterativeScheduler`` (N =
``num_train_timesteps`` = 40 Karras sigmas from sigma_max = 80 to sigma_min = eps = 0.002, rho = 7, sigma_data =
0.5). The consistency function of the VE state x = x_0 + s z (CM eq. 7 / App. C; the scheduler's
``get_scalings_for_boundary_condition``, ``scale_model_input`` and ``sigma_to_t``)::

    f(x, s) = c_skip(s) x + c_out(s) F(c_in(s) x, 1000 * 0.25 * ln(s + 1e-44)),
    c_skip = sd^2 / ((s - eps)^2 + sd^2),  c_out = (s - eps) sd / sqrt(s^2 + sd^2),  c_in = 1 / sqrt(s^2 + sd^2)

so f(x, eps) = x exactly; the pipeline clips f to [-1, 1] (``clip_denoised``). diffkit runs it as a
:class:`~diffkit.denoiser.Denoiser` of ``prediction_type="sample"`` on ``NoiseSchedule.edm(N, eps, sigma_max,
rho)`` (docs/edm.md: step i has the folder's Karras sigma, the VP state of equal SNR), whose network
(:class:`CMFolderNetwork`) is F with that parameterisation: its x0 answer is f. f lands on the trajectory's point
at eps, not on clean data, so the denoiser declares ``consistency_boundary_sigma = eps`` and the ``consistency``
sampler renoises with sqrt(s^2 - eps^2) (CM Alg. 1; :func:`diffkit.samplers.consistency.consistency`).

The grid (:func:`cm_grid`): the scheduler's ``set_timesteps``: ``num_inference_steps`` S (the pipeline's default 1)
evaluates at the folder's indices k (S - 1 - j) ... 0 for k = N // S, or explicit ``timesteps`` (decreasing, below
N; e.g. [22, 0], the openai/diffusers-cd_imagenet64_l2 card's two steps). Its index k is ramp k / (N - 1) from
sigma_max, i.e. diffkit time N - 1 - k, and ``set_timesteps`` reverses the list: [22, 0] evaluates at sigma_max
first, then at index 22 (diffkit times 39, 17). The starting state is the pipeline's x_T = sigma_max z
(``init_noise_sigma``; :func:`start_noise`), not the VP N(0, I), which is sqrt(1 + sigma_max^2) z in the VE form.

Refused in one line before any weight is read (:func:`check_consistency_models_folder`): another pipeline class, a
missing or other UNet / scheduler class, ``s_noise`` other than 1 (the scheduler's noise is then not CM Alg. 1's),
a sigma range the VP schedule cannot hold (``NoiseSchedule.edm``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import torch

from ..errors import DiffkitError, read_json_object
from . import from_pretrained, require

CM_PIPELINE = "ConsistencyModelPipeline"
CM_CLASSES = {"unet": ("UNet2DModel",), "scheduler": ("CMStochasticIterativeScheduler",)}
CM_STEPS = 1  # ConsistencyModelPipeline.__call__'s default num_inference_steps
# CMStochasticIterativeScheduler's defaults (its __init__)
_DEFAULTS = {"num_train_timesteps": 40, "sigma_min": 0.002, "sigma_max": 80.0, "sigma_data": 0.5, "s_noise": 1.0,
             "rho": 7.0, "clip_denoised": True}


def is_consistency_models_folder(path) -> bool:
    """True for a folder whose ``model_index.json`` names ``ConsistencyModelPipeline`` (``diffkit sample``
    dispatches on it)."""
    from .sd_xl import pipeline_class
    return pipeline_class(path) == CM_PIPELINE


def check_consistency_models_folder(directory) -> dict:
    """The scheduler config (defaults filled in) of a ``ConsistencyModelPipeline`` folder, checked from its JSON
    alone; a one-line DiffkitError for what diffkit does not drive (module docstring)."""
    from .pixart import check_pipeline_folder
    directory = Path(directory)
    check_pipeline_folder(directory, CM_PIPELINE, "consistency-model", ("unet", "scheduler"), CM_CLASSES)
    given = read_json_object(directory / "scheduler" / "scheduler_config.json", "scheduler config")
    config = {**_DEFAULTS, **{k: v for k, v in given.items() if k in _DEFAULTS}}
    if float(config["s_noise"]) != 1.0:
        raise DiffkitError(f"{directory}'s scheduler has s_noise={config['s_noise']!r}; allowed: 1.0 (CM Alg. 1's "
                           f"noise, the value OpenAI's consistency models ship)")
    if int(config["num_train_timesteps"]) < 2:
        raise DiffkitError(f"{directory}'s scheduler has num_train_timesteps={config['num_train_timesteps']!r}; "
                           f"allowed: an integer >= 2")
    return config


def refuse_import(path) -> None:
    """One line where ``path`` is a consistency-model folder (``diffkit convert --from-diffusers``): its network is
    CM's preconditioned VE model on Karras sigmas, which no diffkit checkpoint describes; it is sampled in place."""
    if isinstance(path, (str, Path)) and is_consistency_models_folder(path):
        raise DiffkitError(f"{path} is a ConsistencyModelPipeline folder, which diffkit does not import into a "
                           f"checkpoint; sample it in place: diffkit sample --checkpoint {path} [--class N] "
                           f"[--steps K | --timesteps 22,0]")


def boundary_scalings(sigma, sigma_min: float, sigma_data: float) -> tuple:
    """(c_skip, c_out) of CM's boundary-condition parameterisation at Karras sigma ``sigma`` (CM eq. 7 / App. C with
    epsilon = ``sigma_min``; ``CMStochasticIterativeScheduler.get_scalings_for_boundary_condition``): c_skip = 1 and
    c_out = 0 at sigma = sigma_min. Floats or tensors."""
    c_skip = sigma_data ** 2 / ((sigma - sigma_min) ** 2 + sigma_data ** 2)
    c_out = (sigma - sigma_min) * sigma_data / (sigma ** 2 + sigma_data ** 2) ** 0.5
    return c_skip, c_out


class CMFolderNetwork(torch.nn.Module):
    """The folder's UNet2DModel F with CM's parameterisation, as a diffkit network ``net(x_t, t, y=None)`` of
    ``prediction_type="sample"``: at VP time t of ``schedule`` (Karras sigma s = sigma_t / alpha_t, the VE state x =
    x_t / alpha_t) it returns f(x, s) (module docstring), clipped to [-1, 1] where ``clip_denoised``; ``y``: the
    class labels (``class_labels``)."""

    def __init__(self, unet, schedule, sigma_min: float, sigma_data: float, clip_denoised: bool):
        super().__init__()
        self.unet, self.schedule = unet, schedule
        self.sigma_min, self.sigma_data, self.clip_denoised = float(sigma_min), float(sigma_data), bool(clip_denoised)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        from ..diffusion import clip_x0, edm_preconditioning, edm_sigma, expand
        t64 = t.detach().to("cpu", torch.float64)
        alpha = self.schedule.alpha(t64)
        sigma = edm_sigma(alpha, self.schedule.sigma(t64))  # float64 Karras sigma, as the scheduler's numpy
        c_skip, c_out = boundary_scalings(sigma, self.sigma_min, self.sigma_data)
        c_in = edm_preconditioning(sigma, self.sigma_data)[2]
        times = (250.0 * torch.log(sigma + 1e-44)).to(x.device, torch.float32)  # sigma_to_t: 1000 * 0.25 ln
        x_ve = x / expand(alpha.to(x.device, x.dtype), x)
        scale = expand(c_in.to(x.device, x.dtype), x)
        out = self.unet(x_ve * scale, times, class_labels=y, return_dict=False)[0]
        f = expand(c_skip.to(x.device, x.dtype), x) * x_ve + expand(c_out.to(x.device, x.dtype), x) * out
        return clip_x0(f) if self.clip_denoised else f


def load_consistency_models_folder(directory, device="cpu"):
    """The :class:`~diffkit.denoiser.Denoiser` of a ``ConsistencyModelPipeline`` folder (module docstring), with
    ``.unet``, ``.scheduler_config``, ``.num_classes`` (``num_class_embeds`` or None), ``.sample_shape`` (C, H,
    W) and ``consistency_boundary_sigma`` = sigma_min."""
    from ..denoiser import Denoiser
    from ..schedule import NoiseSchedule
    diffusers = require("diffusers")
    directory = Path(directory)
    config = check_consistency_models_folder(directory)
    schedule = NoiseSchedule.edm(int(config["num_train_timesteps"]), float(config["sigma_min"]),
                                 float(config["sigma_max"]), float(config["rho"]))
    unet = from_pretrained(diffusers.UNet2DModel, directory / "unet", local_files_only=True, low_cpu_mem_usage=False,
                           use_safetensors=True).to(device).eval().requires_grad_(False)
    net = CMFolderNetwork(unet, schedule, config["sigma_min"], config["sigma_data"], config["clip_denoised"])
    denoiser = Denoiser(net, schedule, prediction_type="sample")
    denoiser.consistency_boundary_sigma = float(config["sigma_min"])
    denoiser.unet, denoiser.scheduler_config = unet, config
    denoiser.num_classes = unet.config.num_class_embeds
    size = unet.config.sample_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    denoiser.sample_shape = (int(unet.config.in_channels), *size)
    return denoiser


def cm_grid(num_train_timesteps: int, steps: Optional[int] = None,
            timesteps: Optional[Sequence[int]] = None) -> torch.Tensor:
    """diffkit's grid (float64 times, ending at -1: clean data) of ``CMStochasticIterativeScheduler.set_timesteps``
    with ``num_inference_steps=steps`` or explicit ``timesteps`` (one of the two; module docstring): the folder's
    index k is diffkit time N - 1 - k, in the reversed order ``set_timesteps`` evaluates them in."""
    N = int(num_train_timesteps)
    if (steps is None) == (timesteps is None):
        raise DiffkitError("give the number of steps or the timesteps, not both (ConsistencyModelPipeline uses "
                           "timesteps over num_inference_steps)" if steps is not None else
                           "give the number of steps or the timesteps")
    if timesteps is not None:
        ks = [int(k) for k in timesteps]
        if not ks or any(k != v for k, v in zip(ks, timesteps)):
            raise DiffkitError(f"timesteps={list(timesteps)!r} is not allowed; give integers such as 22,0")
        if any(b >= a for a, b in zip(ks, ks[1:])) or ks[0] >= N or ks[-1] < 0:
            raise DiffkitError(f"timesteps={ks} is not allowed; give strictly decreasing integers in 0..{N - 1} "
                               f"(indices into the folder's {N} Karras sigmas, e.g. 22,0)")
    else:
        if not isinstance(steps, int) or not 1 <= steps <= N:
            raise DiffkitError(f"steps={steps!r} is not allowed; give 1..{N} (the scheduler's num_train_timesteps)")
        ratio = N // steps
        ks = [j * ratio for j in range(steps)][::-1]
    return torch.tensor([N - 1 - k for k in ks[::-1]] + [-1], dtype=torch.float64)


def start_noise(denoiser, z: torch.Tensor) -> torch.Tensor:
    """The VP starting state of the pipeline's x_T = sigma_max z (``init_noise_sigma``) at the schedule's top time:
    alpha_T sigma_max z."""
    schedule = denoiser.schedule
    top = torch.tensor(float(schedule.num_timesteps - 1), dtype=torch.float64)
    return z * (schedule.alpha(top).item() * float(denoiser.scheduler_config["sigma_max"]))


def generate(denoiser, z: torch.Tensor, *, steps: Optional[int] = None, timesteps=None, class_labels=None,
             generator=None, progress: bool = False) -> torch.Tensor:
    """``ConsistencyModelPipeline(latents=z, num_inference_steps=steps | timesteps=..., class_labels=...,
    generator=..., output_type="pt")`` before its image conversion: the samples in [-1, 1] (clipped where
    ``clip_denoised``), from diffkit's ``consistency`` sampler on :func:`cm_grid` starting at :func:`start_noise`;
    ``generator`` draws the steps' noise (one generator for the batch, or one per sample, as the pipeline's).
    Without ``steps`` and ``timesteps``: the pipeline's 1 step."""
    from ..sampling import sample
    steps = CM_STEPS if steps is None and timesteps is None else steps
    grid = cm_grid(denoiser.scheduler_config["num_train_timesteps"], steps, timesteps)
    cond = None
    if denoiser.num_classes is not None:
        if class_labels is None:
            raise DiffkitError(f"this consistency model is class-conditional ({denoiser.num_classes} classes): give "
                               f"class labels")
        labels = torch.as_tensor(class_labels, dtype=torch.long).reshape(-1).expand(z.shape[0])
        if ((labels < 0) | (labels >= denoiser.num_classes)).any():
            raise DiffkitError(f"class label {int(labels[(labels < 0) | (labels >= denoiser.num_classes)][0])} is "
                               f"out of range; allowed: 0..{denoiser.num_classes - 1}")
        cond = {"y": labels}
    elif class_labels is not None:
        raise DiffkitError("this consistency model is unconditional (its UNet2DModel has no num_class_embeds): drop "
                           "the class labels")
    return sample(denoiser, start_noise(denoiser, z), sampler="consistency", grid=grid, cond=cond,
                  generator=generator, progress=progress)


__all__ = ["CM_PIPELINE", "is_consistency_models_folder", "check_consistency_models_folder", "refuse_import",
           "boundary_scalings", "CMFolderNetwork", "load_consistency_models_folder", "cm_grid", "start_noise",
           "generate"]
