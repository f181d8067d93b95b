"""A Cosmos Predict2 text-to-image diffusers folder (``Cosmos2TextToImagePipeline``, diffusers 0.42.1), sampled with
any diffkit sampler.

Cosmos Predict2 (NVIDIA 2025) is a diffusion transformer (``CosmosTransformer3DModel``: 3-D patches (1, 2, 2) of
one-frame video latents, AdaLN-LoRA modulation, T5 cross-attention) trained as a rectified flow (Esser et al. 2024,
Sec. 2, eq. 1: x_s = (1 - s) x_0 + s eps, velocity u = eps - x_0) but sampled with EDM's sampler (Karras et al.
2022, Alg. 1, Euler): the pipeline's state is the VE latent x = x_0 + sigma eps on Karras sigmas from sigma_max = 80
to sigma_min = 0.002, and its preconditioning c_in = c_skip = 1 - s, c_out = -s at s = sigma / (1 + sigma) (its
loop: ``current_t``) is exactly the flow parameterisation: c_in x = x / (1 + sigma) is the flow state x_s, the
transformer's timestep is s itself (not s T), and D = c_skip x + c_out u = x_s - s u is x_0. So diffkit wraps the
transformer as a ``flow_prediction`` :class:`~diffkit.denoiser.Denoiser` (:class:`Cosmos2Net` takes the Denoiser's
s T back to s) on the VP schedule of EDM's noise levels (:meth:`~diffkit.schedule.NoiseSchedule.edm` with
sigma_min 0.002, sigma_max 80, rho 7: the Karras sigma of VP time t is the VE sigma), whose VP state alpha_t x is
the pipeline's state of equal SNR. As the pipeline, item by item:

* the grid (:meth:`Cosmos2.scheduler_sigmas`): the folder's ``FlowMatchEulerDiscreteScheduler`` with the
  pipeline's own ``sigma_max`` 80, ``sigma_min`` 0.002, ``sigma_data`` 1 and ``final_sigmas_type="sigma_min"``
  (its constructor registers them, whatever the folder's config says), ``set_timesteps(sigmas=linspace(0, 1,
  N))``: with ``use_karras_sigmas`` (Cosmos' config) the N Karras sigmas (rho 7) from 80 to 0.002, then the final
  0 replaced by sigma_min. The loop's last step goes from sigma_min to sigma_min (dt = 0): diffkit skips that
  network call, so its ``ddim`` on the N sigmas' VP times (:meth:`Cosmos2.scheduler_grid`) makes N - 1 network
  calls for the pipeline's N, and returns the state at sigma_min (not x_0), as the pipeline decodes it. The
  scheduler's Euler step x + (sigma' - sigma)(x - D)/sigma is DDIM's (Song et al. 2021, eq. 13) on that grid.
* the start: z = sigma_max eps (``prepare_latents``: ``latents`` times 80), eps (B, C, h, w) from sample i's
  generator ``seed + i``; diffkit's VP state is sigma_t eps at t = T - 1 (sigma_t = 80 / sqrt(1 + 80^2)), and the
  VE state at sigma_min is the VP state / alpha there.
* prompts (``_get_t5_prompt_embeds``): T5 tokens padded to ``max_sequence_length`` (default 512), encoded under the
  tokenizer's mask, the states past each prompt's tokens zeroed; the transformer gets all L tokens, no mask.
* guidance (``do_classifier_free_guidance``): D = D_c + g (D_c - D_u) with the pipeline's ``guidance_scale`` g
  (default 7) for g > 1, i.e. diffkit's seed convention w = g (diffusers' s = g + 1, default 8), none for g <= 1 (as
  Kandinsky 3's, :func:`.kandinsky3.guidance_w`: w = 0 or w > 1 only); the negative prompt defaults to the
  pipeline's ``DEFAULT_NEGATIVE_PROMPT`` (not ""). Mixing x_0 or the velocity with those weights is the same.
* the transformer's ``padding_mask``: zeros (1, 1, H, W), which ``concat_padding_mask`` resizes (torchvision) and
  appends as a channel. :func:`load_cosmos2` sets that config flag off on the loaded transformer and
  :class:`Cosmos2Net` appends the zero channel itself: the same input, and no torchvision needed.
* images: the Wan VAE on one frame (:class:`.flow_latents.FrameVAE`: D(z std / sigma_data + mean), sigma_data 1);
  sizes multiples of 16 (``check_inputs``), default 768 x 1360, latents H / 8 x W / 8 (the pipeline's
  2^len(temperal_downsample)).
* the safety checker (``safety_checker``: Cosmos Guardrail, the separate ``cosmos_guardrail`` package): not loaded
  and not run, whatever the folder's entry; the pipeline refuses to run without one (its NVIDIA Open Model License
  asks for it), so a user of diffkit's images answers for that check.

Other samplers run on their own grids of the EDM schedule (sigma 80 at t = T - 1 to 0.002 at t = 0, then clean
data for a final ``zero``). Not driven here (one line): every other Cosmos pipeline (text-to-world / video-to-world,
Cosmos2VideoToWorld (:mod:`.cosmos2_video` drives it, on this module's code), Cosmos 2.5 Predict (:mod:`.cosmos2_5`
drives it) / Transfer, Cosmos3 Omni),
a scheduler whose sigmas are not positive and strictly falling (no Karras / exponential / beta sigmas:
linspace(0, 1) itself starts at sigma 0; dynamic shifting; inverted sigmas; stochastic sampling), another
transformer / VAE / text encoder class, a transformer whose channels are not the VAE's ``z_dim`` or whose patches are
not (1, 2, 2), Cosmos 2.5's cross-attention projection, a Wan 2.2 VAE (patched, factor 16), ``--flow-shift``, sizes
past the transformer's ``max_size`` patches (its RoPE tables).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from ..errors import DiffkitError
from . import model_dtype, require
from .flow_latents import (FrameVAE, check_part_configs, finish_images, load_one_text_folder, names_pipeline,
                           pipeline_grid, start_latents)

COSMOS2_PIPELINE = "Cosmos2TextToImagePipeline"
COSMOS_TRANSFORMER = "CosmosTransformer3DModel"
REQUIRED = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")
COSMOS2_CLASSES = {"transformer": (COSMOS_TRANSFORMER,), "vae": ("AutoencoderKLWan",),
                   "text_encoder": ("T5EncoderModel",), "scheduler": ("FlowMatchEulerDiscreteScheduler",)}
COSMOS2_GUIDANCE = 7.0  # the pipeline's guidance_scale g: D_c + g (D_c - D_u), diffkit's seed-convention w
COSMOS2_STEPS = 35  # its num_inference_steps
COSMOS2_SIZE = (768, 1360)  # its default height, width
SIZE_MULTIPLE = 16  # its check_inputs
MAX_SEQUENCE_LENGTH = 512  # its default T5 length
SIGMA_MIN, SIGMA_MAX, SIGMA_DATA = 0.002, 80.0, 1.0  # what its constructor registers on the scheduler
KARRAS_RHO = 7.0
PIPELINE_TASKS = {"Cosmos2VideoToWorldPipeline": "video-to-world",  # the other pipelines check_cosmos2_folder takes
                  "Cosmos2_5_PredictBasePipeline": "(2.5) text-, image- and video-to-world"}
PIPELINE_SCHEDULER = {"sigma_max": SIGMA_MAX, "sigma_min": SIGMA_MIN, "sigma_data": SIGMA_DATA,
                      "final_sigmas_type": "sigma_min"}


class Cosmos2Net(torch.nn.Module):
    """``net(z, t, context)`` over a ``CosmosTransformer3DModel`` on latents z (B, C, h, w): one frame (B, C, 1, h,
    w) with the zero padding channel appended where the folder's transformer concatenates its padding mask
    (``padding``), the timestep s = t / T (the Denoiser gives s T), ``context`` the T5 states; the velocity back in
    (B, C, h, w), z's dtype."""

    def __init__(self, transformer, num_timesteps: int, padding: bool):
        super().__init__()
        self.model, self.num_timesteps, self.padding = transformer, num_timesteps, bool(padding)

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor = None) -> torch.Tensor:
        if context is None:
            raise DiffkitError("a Cosmos transformer needs cond {'context'} (Cosmos2.encode_prompts)")
        dtype = model_dtype(self.model)
        z = x.to(dtype)
        if self.padding:  # the pipeline's padding_mask: zeros, resized to the latents (module docstring)
            z = torch.cat([z, z.new_zeros(z.shape[0], 1, *z.shape[2:])], dim=1)
        s = torch.as_tensor(t, device=x.device, dtype=torch.float32).reshape(-1).expand(x.shape[0])
        out = self.model(hidden_states=z[:, :, None], timestep=(s / self.num_timesteps).to(dtype),
                         encoder_hidden_states=context.to(dtype), return_dict=False)[0]
        return out[:, :, 0].to(x.dtype)


@dataclass
class Cosmos2(FrameVAE):
    """The loaded components of a Cosmos Predict2 text-to-image folder (:func:`load_cosmos2`); ``padding``: its
    transformer concatenates the (zero) padding mask (:class:`Cosmos2Net`)."""

    transformer: object
    vae: object
    text_encoder: object
    tokenizer: object
    text_encoder_2: object  # (None: load_one_text_folder's fields)
    tokenizer_2: object
    scheduler_config: dict
    device: torch.device
    dtype: torch.dtype = torch.float32
    padding: bool = True
    _denoiser: object = field(default=None, repr=False)

    default_steps = COSMOS2_STEPS
    pipeline = COSMOS2_PIPELINE  # (the pipeline class named in refusals)
    min_loop_steps = 2  # the pipeline's loop (scheduler_sigmas; diffkit sample's batch-size probe: ._chroma)
    max_sequence_length = MAX_SEQUENCE_LENGTH

    @property
    def vae_scale_factor(self) -> int:
        """The pipeline's ``vae_scale_factor_spatial`` 2^len(temperal_downsample) (8)."""
        return 2 ** len(self.vae.config.temperal_downsample)

    def latent_shape(self, batch: int, height: Optional[int] = None, width: Optional[int] = None) -> tuple:
        """(batch, in_channels, height / f, width / f); default 768 x 1360; sizes multiples of 16 (``check_inputs``), of
        at most the transformer's ``max_size`` 2 x 2 patches (3840 for Cosmos' 240)."""
        height = COSMOS2_SIZE[0] if height is None else height
        width = COSMOS2_SIZE[1] if width is None else width
        check_size(height, width, self.pipeline)
        f, most = self.vae_scale_factor, self.transformer.config.max_size  # (frames, rows, columns) of patches
        if height > 2 * f * most[1] or width > 2 * f * most[2]:
            raise DiffkitError(f"height x width {height}x{width} is not allowed; give at most "
                               f"{2 * f * most[1]}x{2 * f * most[2]} (the transformer's max_size {list(most)} of "
                               f"2 x 2 patches of the latents)")
        return (batch, int(self.vae.config.z_dim), height // f, width // f)  # (the transformer's in_channels)

    @property
    def denoiser(self):
        """The unguided ``flow_prediction`` Denoiser on EDM's VP schedule (module docstring), made once."""
        from ..denoiser import Denoiser
        from ..schedule import NoiseSchedule
        if self._denoiser is None:
            schedule = NoiseSchedule.edm(int(self.scheduler_config.get("num_train_timesteps", 1000)), SIGMA_MIN,
                                         SIGMA_MAX, KARRAS_RHO)
            self._denoiser = Denoiser(Cosmos2Net(self.transformer, schedule.num_timesteps, self.padding), schedule,
                                      "flow_prediction")
            self._denoiser.model = self.transformer
        return self._denoiser

    def scheduler_sigmas(self, steps: int) -> torch.Tensor:
        """The pipeline's N + 1 VE sigmas (module docstring): the folder's scheduler with the pipeline's settings
        after ``set_timesteps(sigmas=linspace(0, 1, N))``, the last replaced by the one before; a one-line
        DiffkitError unless the first N are positive and strictly falling."""
        import numpy as np
        diffusers = require("diffusers")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
            raise DiffkitError(f"steps={steps!r} is not allowed for {self.pipeline}'s loop; give an "
                               f"integer >= 2 (with 1 its sigmas are [80, 80]: it decodes the noise)")
        config = {key: value for key, value in self.scheduler_config.items() if key not in PIPELINE_SCHEDULER}
        scheduler = diffusers.FlowMatchEulerDiscreteScheduler.from_config(config)  # (no init arguments: dropped)
        scheduler.register_to_config(**PIPELINE_SCHEDULER)  # as the pipeline's constructor (its Karras ends)
        try:
            scheduler.set_timesteps(sigmas=np.linspace(0, 1, steps))
        except ValueError as error:  # use_dynamic_shifting without the mu the pipeline never passes
            raise DiffkitError(f"the folder's scheduler cannot take Cosmos2TextToImagePipeline's set_timesteps: "
                               f"{str(error).splitlines()[0]}") from None
        sigmas = scheduler.sigmas.detach().to("cpu", torch.float64).clone()
        sigmas[-1] = sigmas[-2]
        inner = sigmas[:-1]
        if not (bool((inner > 0).all()) and bool((inner[1:] < inner[:-1]).all())):
            raise DiffkitError(f"the folder's scheduler gives Cosmos2TextToImagePipeline sigmas "
                               f"{[round(s, 4) for s in inner[:4].tolist()]}..., which are not positive and strictly "
                               f"falling; allowed: use_karras_sigmas (Cosmos' config), use_exponential_sigmas or "
                               f"use_beta_sigmas, without invert_sigmas or use_dynamic_shifting")
        return sigmas

    def scheduler_grid(self, steps: int, h: Optional[int] = None, w: Optional[int] = None) -> torch.Tensor:
        """diffkit's grid of the pipeline's loop: the VP times of its first N sigmas on :attr:`denoiser`'s schedule
        (its last, dt = 0, step dropped); ``h`` / ``w``: unused (no shift by size)."""
        if self.scheduler_config.get("stochastic_sampling"):
            raise DiffkitError("the folder's scheduler has stochastic_sampling=True, which Cosmos2TextToImagePipeline "
                               "cannot use (its step takes the VE state for a flow state); allowed: false")
        schedule = self.denoiser.schedule
        grid = schedule.t_from_karras_sigma(self.scheduler_sigmas(steps)[:-1])
        return grid.clamp(0.0, schedule.num_timesteps - 1.0)

    def start_scale(self) -> float:
        """sigma_t at t = T - 1 of the schedule, sigma_max / sqrt(1 + sigma_max^2): the VP state of the pipeline's
        start z = sigma_max eps is this times eps."""
        schedule = self.denoiser.schedule
        return float(schedule.sigma(torch.tensor(schedule.num_timesteps - 1.0, dtype=torch.float64)))

    def check_guidance_scale(self, guidance_scale, convention: str = "diffusers", negative_prompt=None) -> float:
        """The pipeline's g (diffkit's seed-convention w) of ``guidance_scale`` (None: 7) in ``convention``; one line
        for 0 < w <= 1, w < 0, or a negative prompt without guidance (:func:`.kandinsky3.guidance_w`)."""
        from .kandinsky3 import guidance_w
        if guidance_scale is None:
            guidance_scale, convention = COSMOS2_GUIDANCE, "seed"
        return guidance_w(guidance_scale, convention, negative_prompt, "Cosmos Predict2")

    def encode_prompts(self, prompts: Sequence[str], max_sequence_length: int = MAX_SEQUENCE_LENGTH) -> torch.Tensor:
        """The T5 states (B, L, d) of ``_get_t5_prompt_embeds`` (module docstring), in the T5 encoder's dtype."""
        from .stable_diffusion import prompt_list
        if isinstance(max_sequence_length, bool) or not isinstance(max_sequence_length, int) \
                or not 1 <= max_sequence_length <= MAX_SEQUENCE_LENGTH:
            raise DiffkitError(f"max_sequence_length={max_sequence_length!r} is not allowed; allowed: "
                               f"1..{MAX_SEQUENCE_LENGTH} (Cosmos2TextToImagePipeline's T5 length)")
        tokens = self.tokenizer(prompt_list(prompts), padding="max_length", max_length=max_sequence_length,
                                truncation=True, return_tensors="pt")
        mask = tokens.attention_mask.to(self.device)
        with torch.no_grad():
            states = self.text_encoder(tokens.input_ids.to(self.device), attention_mask=mask.bool())[0]
        keep = torch.arange(states.shape[1], device=self.device)[None] < mask.sum(dim=1, keepdim=True)
        return (states * keep[..., None].to(states.dtype)).to(self.text_encoder.dtype)

    def prompt_guidance(self, prompts, guidance_scale: Optional[float] = None, convention: str = "diffusers",
                        negative_prompt=None, max_sequence_length: int = MAX_SEQUENCE_LENGTH, denoiser=None) -> tuple:
        """(denoiser, cond): the prompts' T5 states, guided as the pipeline (module docstring) against
        ``negative_prompt`` (None: the pipeline's ``DEFAULT_NEGATIVE_PROMPT``; one, or one per prompt) for w > 1;
        w = 0: the unguided denoiser (``denoiser``, default :attr:`denoiser`)."""
        from ..guidance import ClassifierFreeGuidance
        from .stable_diffusion import negative_prompts
        w = self.check_guidance_scale(guidance_scale, convention, negative_prompt)
        context = self.encode_prompts(prompts, max_sequence_length)
        denoiser = self.denoiser if denoiser is None else denoiser
        if w == 0:
            return denoiser, {"context": context}
        if negative_prompt is None:
            from diffusers.pipelines.cosmos.pipeline_cosmos2_text2image import DEFAULT_NEGATIVE_PROMPT
            negative_prompt = DEFAULT_NEGATIVE_PROMPT
        negatives = negative_prompts(negative_prompt, context.shape[0])
        null_context = self.encode_prompts(negatives[:1] if len(set(negatives)) == 1 else negatives,
                                           max_sequence_length)
        return ClassifierFreeGuidance(denoiser, w, "seed", null_context=null_context), {"context": context}


def check_size(height, width, pipeline: str = COSMOS2_PIPELINE) -> None:
    """One line unless height and width are positive multiples of 16 (``pipeline``'s ``check_inputs``)."""
    for value in (height, width):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value % SIZE_MULTIPLE:
            raise DiffkitError(f"height x width {height}x{width} is not allowed; give positive multiples of "
                               f"{SIZE_MULTIPLE} ({pipeline}'s check_inputs)")


def is_cosmos_folder(path: Union[str, Path]) -> bool:
    """True for a diffusers folder whose ``model_index.json`` names a ``Cosmos...`` pipeline or a
    ``CosmosTransformer3DModel`` transformer (every Cosmos pipeline: :func:`check_cosmos2_folder` refuses all but
    ``Cosmos2TextToImagePipeline`` in one line)."""
    return names_pipeline(path, "Cosmos", COSMOS_TRANSFORMER)


def check_cosmos2_folder(directory: Path, pipeline: str = COSMOS2_PIPELINE, mask_channels: int = 0,
                         classes: dict = COSMOS2_CLASSES, projection: bool = False) -> tuple:
    """(index, scheduler config) of a Cosmos Predict2 text-to-image folder that :func:`load_cosmos2` drives; anything
    else is a one-line DiffkitError (module docstring), from the JSON files alone. ``pipeline`` / ``mask_channels``:
    another Cosmos Predict2 pipeline's class and the input channels its transformer takes beyond the latents'
    (``Cosmos2VideoToWorldPipeline``'s condition mask: :mod:`.cosmos2_video`); ``classes`` / ``projection``: its
    parts' classes and whether its transformer projects the text states (Cosmos 2.5's, :mod:`.cosmos2_5`)."""
    from ..errors import read_json_object
    from .pixart import check_classes
    from .sd_xl import _index
    index = _index(directory)
    if index is None or not is_cosmos_folder(directory):
        raise DiffkitError(f"{directory} is not a Cosmos folder (model_index.json naming a {pipeline} with a "
                           f"{COSMOS_TRANSFORMER} transformer)")
    if index.get("_class_name") != pipeline:
        raise DiffkitError(f"{directory} is a {index.get('_class_name')!r} folder, which diffkit does not drive; "
                           f"allowed: {pipeline} (Cosmos Predict2 {PIPELINE_TASKS.get(pipeline, 'text-to-image')})")
    check_classes(directory, index, REQUIRED, "Cosmos Predict2", classes)
    configs = {part: read_json_object(directory / part / "config.json", f"{part} config")
               for part in ("transformer", "vae")}
    z_dim, vae = configs["vae"].get("z_dim", 16), configs["vae"]
    check_part_configs(directory, configs, (
        ("transformer", "in_channels", 16 + mask_channels, z_dim + mask_channels,
         "the VAE's z_dim" + (f" + {mask_channels} (its condition mask)" if mask_channels else "")),
        ("transformer", "out_channels", 16, z_dim, "the VAE's z_dim"),
        ("transformer", "patch_size", [1, 2, 2], [1, 2, 2], "the pipeline's latents of H / 8, sizes of 16"),
        ("transformer", "use_crossattn_projection", False, projection,
         "Cosmos 2.5's projection of its Qwen2.5-VL states"),
        ("vae", "patch_size", None, None, "a Wan 2.1 VAE: the pipeline's latents are H / 2^len(temperal_downsample)"),
        ("vae", "scale_factor_spatial", 8, 8, "the pipeline's latents of H / 8")))
    if 2 ** len(vae.get("temperal_downsample", [False, True, True])) != 8:
        raise DiffkitError(f"{directory}'s vae has temperal_downsample={vae.get('temperal_downsample')!r}; allowed: "
                           f"3 levels (the pipeline's vae_scale_factor_spatial 2^3 = 8)")
    return index, read_json_object(directory / "scheduler" / "scheduler_config.json", "scheduler config")


def load_cosmos2(directory: Union[str, Path], device="cpu", dtype: torch.dtype = torch.float32,
                 progress: bool = True) -> Cosmos2:
    """Load a Cosmos Predict2 text-to-image folder (never downloads, never unpickles; the safety checker is not
    loaded); what diffkit does not drive is refused in one line before any weight is read
    (:func:`check_cosmos2_folder`). The transformer's ``concat_padding_mask`` is set off in its config: diffkit appends
    the zero padding channel itself (:class:`Cosmos2Net`)."""
    return _load_cosmos2(Cosmos2, directory, device, dtype, progress, check_cosmos2_folder)


def _load_cosmos2(cls, directory, device, dtype, progress: bool, check) -> Cosmos2:
    """:func:`load_cosmos2` of a Cosmos2 (sub)class ``cls``, the folder checked by ``check(directory)``."""
    diffusers = require("diffusers")
    directory = Path(directory)
    index, sched = check(directory)
    model = load_one_text_folder(cls, directory, index, sched, diffusers.CosmosTransformer3DModel,
                                 "T5EncoderModel", device, dtype, progress, "text_embed_dim", "d_model",
                                 "the T5 encoder's width", vae_cls=diffusers.AutoencoderKLWan)
    return take_padding(model)


def take_padding(model):
    """``model`` with ``padding`` set to its transformer's ``concat_padding_mask``, which is set off: diffkit's net
    appends the zero padding channel itself (:class:`Cosmos2Net`)."""
    model.padding = bool(model.transformer.config.concat_padding_mask)
    model.transformer.register_to_config(concat_padding_mask=False)
    return model


def text_to_image(model: Cosmos2, prompts: Union[str, Sequence[str]], *, sampler: Optional[str] = None,
                  steps: Optional[int] = None, nfe: Optional[int] = None, guidance_scale: Optional[float] = None,
                  convention: str = "diffusers", negative_prompt: Union[None, str, Sequence[str]] = None,
                  seed: Optional[int] = 0, latents: Optional[torch.Tensor] = None, height: Optional[int] = None,
                  width: Optional[int] = None, grid: Union[None, str, torch.Tensor] = None,
                  max_sequence_length: Optional[int] = None, output_range: str = "0,1",
                  return_latents: bool = False, progress: bool = False, ip_adapter=None, **options) -> torch.Tensor:
    """Images of a Cosmos Predict2 folder for ``prompts`` as ``Cosmos2TextToImagePipeline`` (module docstring) with
    any diffkit sampler.

    sampler / grid: both None: the pipeline's loop (``ddim`` on its Karras sigmas, 35 steps by default, ending at
    sigma_min); otherwise that sampler on its own grid of the EDM schedule. guidance_scale: in ``convention``
    (diffusers': s = g + 1, default 8, the pipeline's g = 7; ``"seed"``: g itself), against ``negative_prompt``
    (default the pipeline's). latents: eps (B, C, h, w) of the start sigma_max eps (the pipeline's ``latents``),
    default N(0, I) from per-sample ``seed + i``; height / width: default 768 x 1360, multiples of 16.
    max_sequence_length: default 512. ip_adapter: refused (the pipeline has none). options: passed to
    :func:`diffkit.sample`. Returns the images, or with
    ``return_latents`` the VE latents the pipeline decodes."""
    from ..errors import check_choice
    from ..noise import generators_from_seed, randn
    from .stable_diffusion import OUTPUT_RANGES, prompt_list
    check_choice("output_range", output_range, OUTPUT_RANGES)
    if ip_adapter is not None:
        raise DiffkitError("an IP-Adapter is not supported for a Cosmos Predict2 folder: Cosmos2TextToImagePipeline "
                           "(diffusers 0.42.1) has no load_ip_adapter; drop it")
    prompts = prompt_list(prompts)
    noise, expected = start_latents(model, latents, len(prompts), height, width)
    sampler, grid, steps = pipeline_grid(sampler, grid, steps, nfe, model.default_steps, model.scheduler_grid,
                                         options.get("flow_shift"))
    if options.get("flow_shift") is not None:
        raise DiffkitError(f"flow_shift={options['flow_shift']!r} moves a flow schedule's grid; a Cosmos Predict2 "
                           f"folder samples on EDM's Karras sigmas (its grids: spacing / final); drop it")
    max_sequence_length = model.max_sequence_length if max_sequence_length is None else max_sequence_length
    denoiser, cond = model.prompt_guidance(prompts, guidance_scale, convention, negative_prompt, max_sequence_length)
    draws = {"seed": seed}
    if not isinstance(noise, torch.Tensor):  # eps from seed + i, whose generators then go on to the sampler
        draws = {"generator": None if seed is None else generators_from_seed(seed, expected[0])}
        noise = randn(expected, draws["generator"], device=model.device, dtype=model.dtype)
    z = ve_sample(model, denoiser, noise, sampler, steps, nfe, grid, cond, progress, draws, options)
    return finish_images(model, z, return_latents, output_range)


def ve_sample(model: Cosmos2, denoiser, noise: torch.Tensor, sampler: str, steps, nfe, grid, cond: dict,
              progress: bool, draws: dict, options: dict, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """The pipeline's final VE latents: ``sampler`` from the VP start sigma_t eps (``noise`` eps, module docstring)
    over ``grid`` (or its own of ``steps`` / ``nfe``), the VP state at a grid's last time divided by alpha there;
    ``draws``: ``seed`` or the generators the sampler goes on with; ``dtype``: the state's (default the model's)."""
    from ..sampling import sample
    z = sample(denoiser, noise * model.start_scale(), sampler, steps, nfe=nfe, grid=grid, cond=cond,
               progress=progress, device=model.device, dtype=model.dtype if dtype is None else dtype, **draws,
               **options)
    if grid is not None and float(grid[-1]) >= 0:  # the VP state at the grid's last time, as a VE latent
        z = z / float(denoiser.schedule.alpha(torch.as_tensor(float(grid[-1]), dtype=torch.float64)))
    return z


__all__ = ["Cosmos2", "Cosmos2Net", "load_cosmos2", "is_cosmos_folder", "check_cosmos2_folder", "text_to_image",
           "check_size", "ve_sample", "COSMOS2_GUIDANCE", "COSMOS2_STEPS", "COSMOS2_PIPELINE"]
