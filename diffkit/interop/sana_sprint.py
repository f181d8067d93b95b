"""A Sana Sprint folder (``SanaSprintPipeline``): few-step sCM sampling as diffkit's ``consistency`` sampler.

SANA-Sprint (Chen et al. 2025, "SANA-Sprint: One-Step Diffusion with Continuous-Time Consistency Distillation")
distils Sana into a continuous-time consistency model (sCM, Lu & Song 2024, "Simplifying, Stabilizing and Scaling
Continuous-Time Consistency Models") in its **TrigFlow** parametrisation: x_theta = cos(theta) x_0 + sin(theta) z,
theta in [0, pi/2], the network F giving the consistency function f(x, theta) = cos(theta) x - sin(theta) F (in
sigma_d = 1 units; F's target is TrigFlow's velocity dx/dtheta = cos(theta) z - sin(theta) x_0). Sprint keeps Sana's
flow-matching transformer and converts (SANA-Sprint's training-free transformation to TrigFlow): the flow time s =
sin / (cos + sin), the flow state x_s = x_theta / (cos + sin) (= x_theta sqrt(s^2 + (1 - s)^2)), and F from the
velocity u: F = ((1 - 2s) x_s + (1 - 2s + 2s^2) u) / sqrt(s^2 + (1 - s)^2). Substituting, f = x_s - s u: **the
flow's own x_0 prediction**. And cos^2 + sin^2 = 1, so x_theta is exactly diffkit's VP state at the VP time of
equal SNR (alpha = cos theta, sigma = sin theta; log-SNR 2 log cot theta = 2 log((1 - s)/s), the flow's): a
flow-prediction :class:`~diffkit.denoiser.Denoiser` on ``NoiseSchedule.flow(T)`` (no shift) computes f, called at
s T.

``SCMScheduler.step`` (sCM's multistep sampling, Alg. 1 of Song et al. 2023 in TrigFlow): x_0 = f(x, theta_i), then
x = cos(theta_{i+1}) x_0 + sin(theta_{i+1}) sigma_d n with fresh noise n, the last step's x_0 returned. The pipeline
scales the latents by sigma_d = ``sigma_data`` (0.5), the model input and the step's noise by it and divides the
result by it: sigma_d cancels, and the loop is diffkit's ``consistency`` sampler (fresh noise per step, the
denoised sample at the last time) on the grid of the scheduler's thetas (:meth:`SanaSprint.scheduler_grid`,
``set_timesteps(steps, max_timesteps=1.5708, intermediate_timesteps=1.3)``: 2 steps [1.5708, 1.3, 0]; other step
counts linspace(max, 0, steps + 1)), placed at the VP times of equal SNR (:func:`.flow_latents.flow_sigmas_grid`).
The pipeline's 1.57080 lies 3.7e-6 past pi/2 (cos < 0, flow time 1 + 3.7e-6, outside any noise schedule): the grid
starts at pi/2 (zero terminal SNR, the schedule's last time) from the same z, and :class:`SprintNet` evaluates its
calls there at ``max_timesteps`` exactly (:meth:`SprintNet._top`; evaluating at pi/2 instead moves the latents by
1.6e-6 to 6.7e-6 relative).

Sprint is guidance-distilled: no classifier-free guidance, one network call per step, the transformer's
``guidance_embeds`` embedding ``guidance_scale`` x ``guidance_embeds_scale`` (default s = 4.5; the pipeline's). The
prompts are Sana's (:meth:`.sana.Sana.encode_prompts`, the complex human instruction and selected tokens); no
negative prompt. Decoding as Sana's.

Refused in one line from the JSON (:func:`.sana.check_sana_folder`, :func:`check_sprint_scheduler`): a scheduler
other than ``SCMScheduler`` with ``prediction_type`` "trigflow", a transformer without ``guidance_embeds`` (the
pipeline passes ``guidance``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import torch

from ..errors import DiffkitError, read_json_object
from . import model_dtype, require
from .sana import COMPLEX_HUMAN_INSTRUCTION, Sana

SPRINT_STEPS = 2  # SanaSprintPipeline.__call__'s num_inference_steps
MAX_TIMESTEPS = 1.57080  # its max_timesteps (theta of the first step)
INTERMEDIATE_TIMESTEPS = 1.3  # its intermediate_timesteps (the middle theta of 2 steps)
SPRINT_GUIDANCE = 4.5  # both Sprint pipelines' guidance_scale (to the guidance embedding)
SPRINT_IMG2IMG_STRENGTH = 0.6  # SanaSprintImg2ImgPipeline.__call__'s strength


def check_sprint_scheduler(directory) -> dict:
    """The ``SCMScheduler`` config of a ``SanaSprintPipeline`` folder whose other parts :func:`.sana.check_sana_folder`
    checked; one line for a ``prediction_type`` other than "trigflow"."""
    sched = read_json_object(directory / "scheduler" / "scheduler_config.json", "scheduler config")
    if sched.get("prediction_type", "trigflow") != "trigflow":
        raise DiffkitError(f"{directory}'s SCMScheduler has prediction_type={sched.get('prediction_type')!r}; "
                           f"allowed: 'trigflow' (sCM's TrigFlow, the only one SCMScheduler.step takes)")
    return sched


def trigflow_grid(schedule, thetas: torch.Tensor, steps: int) -> torch.Tensor:
    """diffkit's grid of TrigFlow times ``thetas`` (the final 0 included): the flow times s = sin / (cos + sin)
    (SANA-Sprint's transformation) at the VP times of equal SNR (:func:`.flow_latents.flow_sigmas_grid`; theta >=
    pi/2: the schedule's last time)."""
    from .flow_latents import flow_sigmas_grid
    thetas = torch.as_tensor(thetas, dtype=torch.float64).cpu()
    sigmas = torch.where(thetas >= math.pi / 2, torch.ones_like(thetas),
                         torch.sin(thetas) / (torch.cos(thetas) + torch.sin(thetas)))
    return flow_sigmas_grid(schedule, sigmas, steps)


class SprintNet(torch.nn.Module):
    """``net(x, t, context, mask)`` over a Sprint ``SanaTransformer2DModel``: the flow time t / T as ``timestep``
    (the pipeline's scm_timestep; no ``timestep_scale``), ``guidance`` x ``guidance_embeds_scale`` as ``guidance``;
    the velocity in x's dtype."""

    def __init__(self, transformer, num_timesteps: int, guidance: float = 4.5, top: Optional[float] = None):
        super().__init__()
        self.model = transformer
        self.num_timesteps = num_timesteps
        self.guidance = guidance
        self.top = top

    def _top(self, x: torch.Tensor, t: torch.Tensor):
        """(input, flow time, output map) of the calls at flow time 1 when ``top`` (the first theta) exceeds pi/2:
        there the pipeline's state z sits at theta_max, flow input k z with k = 1 / (cos + sin) and flow time
        s' = k sin (> 1); the velocity v' answered is returned as (1 - k) z + s' v', whose x_0 at flow time 1,
        z - that, is the pipeline's k z - s' v' (SANA-Sprint's transformation at theta_max)."""
        theta = torch.tensor(self.top, dtype=torch.float32).double()  # the scheduler's float32 theta
        k = float(1 / (torch.cos(theta) + torch.sin(theta)))
        s_top = float(torch.sin(theta)) * k
        top = (t == self.num_timesteps).reshape(-1, *([1] * (x.ndim - 1)))
        x_in = torch.where(top, x * k, x)
        s = torch.where(top.reshape(-1), torch.full_like(t, s_top), t / self.num_timesteps)
        return x_in, s, lambda v: torch.where(top, (1 - k) * x + s_top * v, v)

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor = None, mask: torch.Tensor = None):
        if context is None or mask is None:
            raise DiffkitError("a Sana Sprint transformer needs cond {'context', 'mask'} (Sana.encode_prompts)")
        dtype = model_dtype(self.model)
        t = torch.as_tensor(t, device=x.device, dtype=torch.float32).reshape(-1).expand(x.shape[0])
        guidance = torch.full((x.shape[0],), float(self.guidance), device=x.device).to(context.dtype)
        guidance = guidance * self.model.config.guidance_embeds_scale  # as the pipeline, in the prompts' dtype
        x_in, s, answer = (x, t / self.num_timesteps, None) if self.top is None or self.top <= math.pi / 2 else \
            self._top(x, t)
        out = self.model(x_in.to(dtype), encoder_hidden_states=context.to(dtype), encoder_attention_mask=mask,
                         guidance=guidance, timestep=s, return_dict=False)[0].to(x.dtype)
        return out if answer is None else answer(out)


@dataclass
class SanaSprint(Sana):
    """The loaded components of a ``SanaSprintPipeline`` folder (:func:`.sana.load_sana`): a :class:`.sana.Sana`
    whose network embeds the guidance scale and whose folder sampler is ``consistency`` on the sCM thetas.
    ``max_timesteps`` / ``intermediate_timesteps``: the pipeline's (module docstring)."""

    max_timesteps: float = MAX_TIMESTEPS
    intermediate_timesteps: Optional[float] = INTERMEDIATE_TIMESTEPS
    _net: object = field(default=None, repr=False)

    default_steps = SPRINT_STEPS
    latents_are_flow_state = False  # the pipeline's latents are the TrigFlow state x_theta: diffkit's VP state

    def folder_sampler(self) -> tuple:
        return "consistency", {}

    def _new_denoiser(self, whole: bool):
        from ..denoiser import Denoiser
        self._net = SprintNet(self.transformer, self.schedule.num_timesteps)
        denoiser = Denoiser(self._net, self.schedule, "flow_prediction")
        denoiser.model = self.transformer
        return denoiser

    def scheduler_denoiser(self):
        return self.denoiser

    def scheduler_grid(self, steps: int) -> torch.Tensor:
        """diffkit's grid of the folder's ``SCMScheduler`` after ``set_timesteps(steps, max_timesteps,
        intermediate_timesteps)`` (the intermediate theta with 2 steps only, as the pipeline requires)
        (:func:`trigflow_grid`)."""
        diffusers = require("diffusers")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise DiffkitError(f"steps={steps!r} is not allowed; give a positive integer")
        scheduler = diffusers.SCMScheduler.from_config(self.scheduler_config)
        if steps > scheduler.config.num_train_timesteps:
            raise DiffkitError(f"steps={steps} is not allowed; at most num_train_timesteps="
                               f"{scheduler.config.num_train_timesteps}")
        scheduler.set_timesteps(steps, max_timesteps=self.max_timesteps,
                                intermediate_timesteps=self.intermediate_timesteps if steps == 2 else None)
        return trigflow_grid(self.schedule, scheduler.timesteps, steps)

    def prompt_guidance(self, prompts, negative_prompt=None, guidance_scale: float = 4.5,
                        convention: str = "diffusers", max_sequence_length: Optional[int] = None,
                        size: Optional[tuple] = None, denoiser=None, **encode) -> tuple:
        """(denoiser, cond): the prompts' states and masks, one unguided call per step with ``guidance_scale`` (s in
        ``convention`` ``diffusers``, w = s - 1 in ``seed``) in the transformer's guidance embedding; a negative
        prompt is refused (Sprint has no classifier-free guidance)."""
        from ..errors import check_choice
        check_choice("convention", convention, ["diffusers", "seed"])
        if negative_prompt is not None:
            raise DiffkitError(f"negative_prompt={negative_prompt!r} is not allowed on a {self.pipeline} folder: "
                               f"it is guidance-distilled (guidance_scale goes to its guidance embedding)")
        if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)) or \
                not math.isfinite(guidance_scale):
            raise DiffkitError(f"guidance_scale={guidance_scale!r} is not allowed; give a finite number")
        denoiser = denoiser or self.denoiser
        self._net.guidance = float(guidance_scale) + (1.0 if convention == "seed" else 0.0)
        self._net.top = float(self.max_timesteps)
        return super().prompt_guidance(prompts, None, 1.0, "diffusers", max_sequence_length, size, denoiser,
                                       **encode)


def image_to_image(sprint: SanaSprint, images: torch.Tensor, prompts, strength: Optional[float] = None, *,
                   sampler: Optional[str] = None, steps: Optional[int] = None, guidance_scale: Optional[float] = None,
                   convention: str = "diffusers", seed: Optional[int] = 0, generator=None,
                   max_sequence_length: Optional[int] = None, complex_human_instruction=COMPLEX_HUMAN_INSTRUCTION,
                   output_range: str = "0,1", return_latents: bool = False, progress: bool = False,
                   **options) -> torch.Tensor:
    """SDEdit of ``images`` (B, 3, H, W) in [-1, 1] towards ``prompts`` (one, or one per image) as
    ``SanaSprintImg2ImgPipeline`` (Meng et al. 2022, Alg. 1, in TrigFlow): z = E(x) x scaling_factor (DC-AE,
    deterministic: :meth:`.sana.Sana.encode`), noised to the first theta_0 of the strength's cut of the SCM thetas,
    x = cos(theta_0) z + sin(theta_0) n (the pipeline's ``prepare_latents``; sigma_d cancels as in sampling) -- which
    is diffkit's VP ``q_sample`` at the time of equal SNR -- then ``consistency`` on the rest of the thetas
    (:func:`.flow_latents.edit_latents`; image i's noise, then its step noise, from generator ``seed + i``). The cut
    is the pipeline's ``get_timesteps``: from index int(steps - min(steps x strength, steps)) on
    (:meth:`~.flow_latents.FlowLatentVAE.pipeline_strength`); defaults 2 steps (thetas 1.5708, 1.3), strength 0.6
    (which runs both), guidance embedding s = 4.5. Where every step runs, theta_0 = 1.5708 lies past pi/2: the
    pipeline's start keeps cos(1.5708) z = -3.7e-6 z, which diffkit's start at pi/2 drops (the first call is then
    evaluated at 1.5708 as in sampling, :class:`SprintNet`). ``sampler`` given: that sampler on its own grid of the
    unshifted flow schedule, cut as :func:`diffkit.img2img`. ``complex_human_instruction``, ``max_sequence_length``:
    the prompts' (:meth:`.sana.Sana.encode_prompts`)."""
    from .flow_latents import edit_latents, edit_prompts, finish_images
    from .stable_diffusion import OUTPUT_RANGES
    from ..errors import check_choice
    check_choice("output_range", output_range, OUTPUT_RANGES)
    prompts = edit_prompts(images, prompts)
    h, w = sprint.latent_shape(1, images.shape[2], images.shape[3])[2:]
    steps = sprint.default_steps if steps is None else steps
    strength = SPRINT_IMG2IMG_STRENGTH if strength is None else strength
    unguided = None
    if sampler is None and "grid" not in options:
        sampler, options["grid"] = "consistency", sprint.scheduler_grid(steps)
        strength, unguided = sprint.pipeline_strength(steps, strength), sprint.scheduler_denoiser()
    f = sprint.vae_scale_factor
    denoiser, cond = sprint.prompt_guidance(
        prompts, None, SPRINT_GUIDANCE if guidance_scale is None else guidance_scale,
        "diffusers" if guidance_scale is None else convention, max_sequence_length, size=(h * f, w * f),
        denoiser=unguided, complex_human_instruction=complex_human_instruction)
    z0 = edit_latents(sprint, denoiser, images, strength, sampler, steps, posterior="mean", seed=seed,
                      generator=generator, cond=cond, progress=progress, **options)
    return finish_images(sprint, z0, return_latents, output_range)


__all__ = ["SanaSprint", "SprintNet", "check_sprint_scheduler", "trigflow_grid", "image_to_image", "MAX_TIMESTEPS",
           "INTERMEDIATE_TIMESTEPS", "SPRINT_STEPS", "SPRINT_IMG2IMG_STRENGTH"]
