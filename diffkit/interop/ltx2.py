"""An LTX-2 diffusers folder (``LTX2Pipeline``, diffusers 0.42.1): joint video + audio generation with any diffkit
sampler.

LTX-2 (Lightricks 2025) is a rectified-flow audio-video transformer (Esser et al. 2024, Sec. 2, eq. 1: x_s = (1 - s)
x_0 + s eps, velocity u = eps - x_0) over two latent streams denoised together: the LTX-2 video VAE's latents
(B, C, F, h, w), as LTX-Video's (:mod:`.ltx`), and the audio VAE's mel-spectrogram latents (B, C_a, L, M). As
``LTX2Pipeline.__call__``:

* prompts: a Gemma-3 encoder's hidden states of every layer (left-padded to ``max_sequence_length`` 1024, the
  attention mask passed), stacked on a last axis and flattened to (B, S, d (layers + 1)); the negative prompt
  (default "") the same; both (null first) through the ``LTX2TextConnectors``, which give the video and the audio
  stream their contexts and the attention mask.
* the latents: N(0, I) video latents (B, C, (F - 1) / r_t + 1, H / r, W / r), then audio latents (B, C_a, L, M / r_m)
  from the same per-video generators (``seed + i``), L = round(F / fps * rate / hop / r_a) (the audio VAE's sample
  rate, mel hop and temporal ratio r_a); after the loop the video generators draw the decode noise.
* the joint state: diffkit's samplers run elementwise on one tensor, so the pair is one state (B, N_v + N_a), the
  video latents flattened then the audio latents flattened (:class:`JointLayout`); one flow-prediction Denoiser over
  it (:class:`LTX2Net`) splits it, packs both streams into tokens and returns the guided velocity of both. Both
  streams share the pipeline's grid: the folder's ``FlowMatchEulerDiscreteScheduler`` after ``set_timesteps(sigmas=
  linspace(1, 1/N, N), mu)``, mu of the video sequence length F h w (LTX-2's shift defaults 0.95 / 2.05 at 1024 /
  4096), the pipeline's audio scheduler a deep copy of the video's; its step is flow Euler, diffkit's ``ddim``.
* guidance, per stream, on x_0 = x - s u (the pipeline's "delta formulation"): x0_c + (g - 1)(x0_c - x0_u) +
  g_stg (x0_c - x0_stg) + (g_mod - 1)(x0_c - x0_mod), x0_u the negative prompt's (one batched call of 2B with the
  conditional), x0_stg the conditional pass with self-attention skipped in ``stg_blocks`` (spatio-temporal guidance),
  x0_mod the conditional pass with the audio-video cross-attention off (modality isolation); then guidance rescale
  phi (Lin et al. 2024, Sec. 3.4, eq. 15-16) of that x_0 against x0_c; each stream has its own scales (the audio's
  default to the video's where None or 0, as the pipeline's ``or``). A pass runs where any stream needs it (CFG if g
  > 1 for either stream, STG if g_stg > 0, isolation if g_mod > 1); the velocity is (x - x_0) / s.
* decoding: the video as the pipeline: a timestep-conditioned VAE mixes (1 - n) z + n noise before z std /
  scaling_factor + mean, decodes at ``decode_timestep``; the audio latents * std + mean (the audio VAE's per-feature
  buffers over the packed C_a M features), the audio VAE's mel spectrogram, the vocoder's waveform (B, channels,
  samples) at its ``output_sampling_rate``.

Refused in one line before any weight is read (:func:`check_ltx2_folder`): another pipeline class, a missing
component, parts of other classes, transformer patch sizes other than 1 (audio too), channels other than the VAEs',
a scheduler other than flow Euler. Not driven: the optional ``duration_head`` (give ``num_frames``), prompt
enhancement, LoRA, given ``latents`` / ``audio_latents`` and their ``noise_scale``, LTX-2.3's vocoder with bandwidth
extension and Gemma-4 encoders (other classes: refused).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from ..errors import DiffkitError
from . import model_dtype, require
from .ltx import LTX

LTX2_PIPELINE = "LTX2Pipeline"
REQUIRED = ("transformer", "vae", "audio_vae", "vocoder", "connectors", "text_encoder", "tokenizer", "scheduler")
LTX2_CLASSES = {"transformer": ("LTX2VideoTransformer3DModel",), "vae": ("AutoencoderKLLTX2Video",),
                "audio_vae": ("AutoencoderKLLTX2Audio",), "vocoder": ("LTX2Vocoder",),
                "connectors": ("LTX2TextConnectors",), "text_encoder": ("Gemma3ForConditionalGeneration",),
                "scheduler": ("FlowMatchEulerDiscreteScheduler",)}
LTX2_STEPS, LTX2_FRAMES, LTX2_HEIGHT, LTX2_WIDTH, LTX2_FRAME_RATE = 30, 121, 512, 768, 24.0  # __call__'s defaults
LTX2_GUIDANCE = dict(guidance_scale=3.0, stg_scale=1.0, modality_scale=3.0, guidance_rescale=0.7,
                     audio_guidance_scale=7.0, audio_stg_scale=1.0, audio_modality_scale=3.0,
                     audio_guidance_rescale=0.7)
LTX2_STG_BLOCKS = (28,)
MAX_SEQUENCE_LENGTH = 1024
SHIFT_DEFAULTS = {"base_image_seq_len": 1024, "max_image_seq_len": 4096, "base_shift": 0.95, "max_shift": 2.05}


@dataclass(frozen=True)
class JointLayout:
    """The shapes of the two streams in one flat state (B, N_v + N_a): video (B, C, F, h, w) then audio (B, C_a, L,
    M), each flattened in that order."""

    video: tuple
    audio: tuple

    @property
    def sizes(self) -> tuple:
        return (int(torch.Size(self.video[1:]).numel()), int(torch.Size(self.audio[1:]).numel()))

    def join(self, video: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        return torch.cat([video.flatten(1), audio.flatten(1)], dim=1)

    def split(self, state: torch.Tensor) -> tuple:
        video, audio = state.split(self.sizes, dim=1)
        b = state.shape[0]
        return video.reshape(b, *self.video[1:]), audio.reshape(b, *self.audio[1:])


def guided_x0(x0: dict, scales: tuple, rescale: float) -> torch.Tensor:
    """The pipeline's guided x_0 of one stream: x0_c + (g - 1)(x0_c - x0_u) + g_stg (x0_c - x0_stg) + (g_mod - 1)
    (x0_c - x0_mod) over the passes present in ``x0`` ({"c", "u", "stg", "mod"}), then rescale phi against x0_c
    (Lin et al. 2024, eq. 15-16, per sample)."""
    g, g_stg, g_mod = scales
    c = x0["c"]
    out = c.clone()
    for key, weight in (("u", g - 1), ("stg", g_stg), ("mod", g_mod - 1)):
        if key in x0:
            out = out + weight * (c - x0[key])
    if rescale > 0:
        dims = tuple(range(1, c.ndim))
        rescaled = out * c.std(dim=dims, keepdim=True) / out.std(dim=dims, keepdim=True)
        out = rescale * rescaled + (1 - rescale) * out
    return out


class LTX2Net(torch.nn.Module):
    """``net(x, t, **cond)`` over an ``LTX2VideoTransformer3DModel`` on the joint flat state x (:class:`JointLayout`
    ``layout`` in cond) at flow time t = s T: the guided velocity of both streams (module docstring), flat.

    cond: layout, context / audio_context / mask (the connectors' conditional outputs), null (the same three for
    the negative prompt, or None without CFG), fps, scales ((g, g_stg, g_mod) per stream: video, audio), rescales
    (phi per stream), stg_blocks, cross_timestep (``use_cross_timestep``), passes (a subset of "u", "stg", "mod")."""

    def __init__(self, transformer, num_timesteps: int):
        super().__init__()
        self.model, self.num_timesteps = transformer, num_timesteps

    def _call(self, video, audio, t, context, audio_context, mask, cond, **extra) -> tuple:
        b, c, f, h, w = video.shape
        dtype, m = model_dtype(self.model), self.model
        tokens = video.flatten(2).transpose(1, 2)
        audio_tokens = audio.transpose(1, 2).flatten(2)
        timestep = t
        v, a = m(hidden_states=tokens.to(dtype), audio_hidden_states=audio_tokens.to(dtype),
                 encoder_hidden_states=context, audio_encoder_hidden_states=audio_context, timestep=timestep,
                 sigma=timestep, encoder_attention_mask=mask, audio_encoder_attention_mask=mask, num_frames=f,
                 height=h, width=w, fps=cond["fps"], audio_num_frames=audio.shape[2],
                 video_coords=m.rope.prepare_video_coords(b, f, h, w, video.device, fps=cond["fps"]),
                 audio_coords=m.audio_rope.prepare_audio_coords(b, audio.shape[2], video.device),
                 use_cross_timestep=cond["cross_timestep"], return_dict=False, **extra)
        v = v.float().transpose(1, 2).reshape(video.shape)
        a = a.float().unflatten(2, (audio.shape[1], audio.shape[3])).transpose(1, 2)
        return v, a

    def forward(self, x: torch.Tensor, t: torch.Tensor, **cond) -> torch.Tensor:
        layout: JointLayout = cond["layout"]
        video, audio = layout.split(x.float())
        t = torch.as_tensor(t, device=x.device, dtype=torch.float32).reshape(-1).expand(x.shape[0])
        sigma = t.double() / self.num_timesteps  # per sample
        ctx = (cond["context"], cond["audio_context"], cond["mask"])
        preds = {}
        if "u" in cond["passes"]:
            both = [torch.cat([n, c]) for n, c in zip(cond["null"], ctx)]
            v, a = self._call(torch.cat([video] * 2), torch.cat([audio] * 2), torch.cat([t] * 2), *both, cond,
                              isolate_modalities=False, spatio_temporal_guidance_blocks=None,
                              perturbation_mask=None)
            (vu, vc), (au, ac) = v.chunk(2), a.chunk(2)
            preds["c"], preds["u"] = (vc, ac), (vu, au)
        else:
            preds["c"] = self._call(video, audio, t, *ctx, cond, isolate_modalities=False,
                                    spatio_temporal_guidance_blocks=None, perturbation_mask=None)
        if "stg" in cond["passes"]:
            preds["stg"] = self._call(video, audio, t, *ctx, cond, isolate_modalities=False,
                                      spatio_temporal_guidance_blocks=list(cond["stg_blocks"]),
                                      perturbation_mask=None)
        if "mod" in cond["passes"]:
            preds["mod"] = self._call(video, audio, t, *ctx, cond, isolate_modalities=True,
                                      spatio_temporal_guidance_blocks=None, perturbation_mask=None)
        out = []
        for i, state in enumerate((video, audio)):
            s = sigma.to(state.dtype).view(-1, *[1] * (state.ndim - 1))
            x0 = {k: state - p[i] * s for k, p in preds.items()}
            out.append((state - guided_x0(x0, cond["scales"][i], cond["rescales"][i])) / s)
        return layout.join(*out).to(x.dtype)


@dataclass
class LTX2(LTX):
    """The loaded components of an ``LTX2Pipeline`` folder (:func:`load_ltx2`); LTX-Video's ratios, video checks
    and scheduler grid (:class:`.ltx.LTX`) with the audio parts added."""

    audio_vae: object = None
    vocoder: object = None
    connectors: object = None
    pipeline: str = LTX2_PIPELINE
    _denoisers: dict = field(default_factory=dict, repr=False)

    default_steps = LTX2_STEPS

    def mu(self, seq: int) -> float:
        """The pipeline's mu: ``calculate_shift`` of the video sequence length with LTX-2's defaults (0.95 at 1024
        tokens, 2.05 at 4096) for keys the scheduler config lacks."""
        from .flux import calculate_shift
        return calculate_shift(seq, self.scheduler_config, SHIFT_DEFAULTS)

    def denoiser_for(self, shape: tuple):
        """The flow-prediction Denoiser (:class:`LTX2Net`, guidance inside) for video latents ``shape``: its shift
        the scheduler's at the video sequence length F h w."""
        from ..denoiser import Denoiser
        from ..schedule import NoiseSchedule
        from .flux import scheduler_shift
        shift = scheduler_shift(self.scheduler_config, lambda: self.mu(shape[2] * shape[3] * shape[4]),
                                shape[3], shape[4])
        if shift not in self._denoisers:
            steps = int(self.scheduler_config.get("num_train_timesteps", 1000))
            self._denoisers[shift] = Denoiser(LTX2Net(self.transformer, steps), NoiseSchedule.flow(steps, shift),
                                              "flow_prediction")
            self._denoisers[shift].model = self.transformer
        return self._denoisers[shift]

    def audio_shape(self, batch: int, frames: int, frame_rate: float) -> tuple:
        """(B, C_a, L, M / r_m) of the audio latents of ``frames`` frames at ``frame_rate``: L = round(frames /
        frame_rate * rate / hop / r_a) (``prepare_audio_latents``)."""
        cfg = self.audio_vae.config
        per_second = cfg.sample_rate / cfg.mel_hop_length / float(self.audio_vae.temporal_compression_ratio)
        length = round(frames / frame_rate * per_second)
        if length < 1:
            raise DiffkitError(f"num_frames={frames} at frame_rate={frame_rate:g} gives no audio latent frame; "
                               f"give a longer video")
        return (batch, int(cfg.latent_channels), length, int(cfg.mel_bins) // int(self.audio_vae.mel_compression_ratio))

    def encode_prompts(self, prompts: Sequence[str], max_sequence_length: int = MAX_SEQUENCE_LENGTH) -> tuple:
        """(Gemma-3's stacked hidden states (B, S, d (layers + 1)), the attention mask (B, S)) of ``prompts``
        (``_get_gemma_prompt_embeds``: stripped, left-padded to ``max_sequence_length``)."""
        from .stable_diffusion import prompt_list
        tok = self.tokenizer
        tok.padding_side = "left"
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        tokens = tok([p.strip() for p in prompt_list(prompts)], padding="max_length", truncation=True,
                     max_length=max_sequence_length, add_special_tokens=True, return_tensors="pt")
        ids, mask = tokens.input_ids.to(self.device), tokens.attention_mask.to(self.device)
        with torch.no_grad():
            states = self.text_encoder(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        return torch.stack(states, dim=-1).flatten(2, 3), mask

    def contexts(self, states: torch.Tensor, mask: torch.Tensor) -> tuple:
        """(video context, audio context, mask) of the connectors over Gemma's states (left padding)."""
        with torch.no_grad():
            return tuple(self.connectors(states.to(model_dtype(self.connectors)), mask, padding_side="left"))

    def decode(self, latents: torch.Tensor, decode_timestep: float = 0.0, decode_noise_scale: Optional[float] = None,
               generators=None) -> torch.Tensor:
        """Videos (B, T, C, H, W) in [-1, 1] (not clamped) of normalised latents (B, C, F, h, w) as the pipeline:
        a timestep-conditioned VAE's noise mix (1 - n) z + n noise first (``generators``, one per video), then z std
        / scaling_factor + mean, decoded at ``decode_timestep``."""
        from ..errors import check_range
        from ..noise import randn
        with torch.no_grad():
            z = latents.to(self.device, torch.float32)
            temb = None
            if self.vae.config.timestep_conditioning:
                scale = decode_timestep if decode_noise_scale is None else decode_noise_scale
                for name, value in (("decode_timestep", decode_timestep), ("decode_noise_scale", scale)):
                    check_range(name, value, 0.0, 1.0)
                noise = randn(z.shape, generators, device=z.device, dtype=z.dtype)
                z = (1 - scale) * z + scale * noise
                temb = torch.full((z.shape[0],), float(decode_timestep), device=z.device, dtype=z.dtype)
            elif decode_timestep or decode_noise_scale:
                raise DiffkitError(f"decode_timestep={decode_timestep!r} / decode_noise_scale={decode_noise_scale!r} "
                                   f"is not allowed: this folder's VAE has no timestep conditioning; drop them")
            mean, std = (self.vae.get_buffer(k).view(1, -1, 1, 1, 1).to(z) for k in ("latents_mean", "latents_std"))
            z = z * std / float(self.vae.config.scaling_factor) + mean
            video = self.vae.decode(z.to(self.vae.dtype), temb, return_dict=False)[0]
        return video.float().transpose(1, 2)

    def audio_latents(self, audio: torch.Tensor) -> torch.Tensor:
        """The audio VAE's latents (B, C_a, L, M) of normalised ones: * std + mean over the packed C_a M features."""
        b, c, length, mels = audio.shape
        packed = audio.transpose(1, 2).flatten(2)
        mean, std = (self.audio_vae.get_buffer(k).to(packed) for k in ("latents_mean", "latents_std"))
        return (packed * std + mean).unflatten(2, (c, mels)).transpose(1, 2)

    def waveform(self, audio: torch.Tensor) -> torch.Tensor:
        """The vocoder's waveform (B, channels, samples) of normalised audio latents (B, C_a, L, M), at
        :attr:`sample_rate`."""
        with torch.no_grad():
            z = self.audio_latents(audio.to(self.device, torch.float32)).to(self.audio_vae.dtype)
            mel = self.audio_vae.decode(z, return_dict=False)[0]
            return self.vocoder(mel.to(model_dtype(self.vocoder))).float()

    @property
    def sample_rate(self) -> int:
        """The waveform's sample rate: the vocoder's ``output_sampling_rate``."""
        return int(self.vocoder.config.output_sampling_rate)


def check_ltx2_folder(directory) -> tuple:
    """(model_index dict, scheduler config) of an ``LTX2Pipeline`` folder, checked from its JSON alone (module
    docstring); a one-line DiffkitError for what diffkit does not drive."""
    from ..errors import read_json_object
    from .flow_latents import check_part_configs
    from .pixart import check_classes, folder_sampler, named_index
    directory = Path(directory)
    index = named_index(directory, (LTX2_PIPELINE,), "LTX-2")
    check_classes(directory, index, REQUIRED, "LTX-2", LTX2_CLASSES)
    configs = {part: read_json_object(directory / part / "config.json", f"{part} config")
               for part in ("transformer", "vae", "audio_vae")}
    latent = configs["vae"].get("latent_channels", 128)
    audio = configs["audio_vae"]
    audio_features = (audio.get("latent_channels") or 8) * ((audio.get("mel_bins") or 64) // 4)  # mel ratio 4
    rule = "the pipeline's RoPE grid is the latent grid"
    check_part_configs(directory, configs, (
        ("transformer", "patch_size", 1, 1, rule), ("transformer", "patch_size_t", 1, 1, rule),
        ("transformer", "audio_patch_size", 1, 1, rule), ("transformer", "audio_patch_size_t", 1, 1, rule),
        ("transformer", "in_channels", 128, latent, "the VAE's latent_channels"),
        ("transformer", "out_channels", 128, latent, "the VAE's latent_channels"),
        ("transformer", "audio_in_channels", 128, audio_features, "the audio VAE's latent_channels x mel_bins / 4"),
        ("transformer", "audio_out_channels", 128, audio_features,
         "the audio VAE's latent_channels x mel_bins / 4")))
    sched = read_json_object(directory / "scheduler" / "scheduler_config.json", "scheduler config")
    folder_sampler(sched, flow=True)
    return index, sched


def load_ltx2(directory: Union[str, Path], device="cpu", dtype: torch.dtype = torch.float32,
              progress: bool = True) -> LTX2:
    """Load an ``LTX2Pipeline`` folder (never downloads, never unpickles), checked first (:func:`check_ltx2_folder`)."""
    from . import from_pretrained, library_progress_bars
    from .flow_latents import frozen_on, load_flow_parts
    diffusers = require("diffusers")
    from diffusers.pipelines.ltx2 import LTX2TextConnectors
    from diffusers.pipelines.ltx2.vocoder import LTX2Vocoder
    directory = Path(directory)
    index, sched = check_ltx2_folder(directory)
    parts = load_flow_parts(directory, index, diffusers.LTX2VideoTransformer3DModel,
                            {"": "Gemma3ForConditionalGeneration"}, dtype, progress,
                            vae_cls=diffusers.AutoencoderKLLTX2Video)
    common = {"local_files_only": True, "torch_dtype": dtype, "use_safetensors": True}
    with library_progress_bars(progress):
        extra = {name: from_pretrained(cls, directory / name, low_cpu_mem_usage=False, **common)
                 for name, cls in (("audio_vae", diffusers.AutoencoderKLLTX2Audio), ("vocoder", LTX2Vocoder),
                                   ("connectors", LTX2TextConnectors))}
    device = frozen_on(parts, device)
    for module in extra.values():
        module.to(device).eval().requires_grad_(False)
    return LTX2(**parts, **extra, scheduler_config=sched, device=device, dtype=dtype)


def _guidance_options(options: dict, stg_blocks) -> tuple:
    """((video, audio) (g, g_stg, g_mod), (phi_v, phi_a), passes) of the pipeline's guidance keywords (``options``
    over :data:`LTX2_GUIDANCE`; an audio value None or 0 takes the video's, as ``__call__``'s ``or``)."""
    from ..errors import check_range
    o = {**LTX2_GUIDANCE, **{k: v for k, v in options.items() if k in LTX2_GUIDANCE}}
    for key in ("guidance_scale", "stg_scale", "modality_scale", "guidance_rescale"):
        o["audio_" + key] = o["audio_" + key] or o[key]
    for key in ("guidance_rescale", "audio_guidance_rescale"):
        check_range(key, o[key], 0.0, 1.0)
    for key in ("stg_scale", "audio_stg_scale"):
        check_range(key, o[key], 0.0, None)
    video = (o["guidance_scale"], o["stg_scale"], o["modality_scale"])
    audio = (o["audio_guidance_scale"], o["audio_stg_scale"], o["audio_modality_scale"])
    passes = set()
    if video[0] > 1 or audio[0] > 1:
        passes.add("u")
    if video[1] > 0 or audio[1] > 0:
        if not stg_blocks:
            raise DiffkitError("stg_scale > 0 needs stg_blocks (the transformer blocks whose self-attention STG "
                               "skips); give them or set stg_scale=0 and audio_stg_scale=0")
        passes.add("stg")
    if video[2] > 1 or audio[2] > 1:
        passes.add("mod")
    return (video, audio), (o["guidance_rescale"], o["audio_guidance_rescale"]), passes


def text_to_video(model: LTX2, prompts: Union[str, Sequence[str]], *, negative_prompt=None,
                  steps: Optional[int] = None, sampler: Optional[str] = None, num_frames: Optional[int] = None,
                  height: Optional[int] = None, width: Optional[int] = None, frame_rate: Optional[float] = None,
                  stg_blocks: Sequence[int] = LTX2_STG_BLOCKS, cross_timestep: bool = True,
                  max_sequence_length: int = MAX_SEQUENCE_LENGTH, decode_timestep: float = 0.0,
                  decode_noise_scale: Optional[float] = None, seed: Optional[int] = 0,
                  output_range: str = "-1,1", return_latents: bool = False, progress: bool = False,
                  **options) -> tuple:
    """(videos (B, T, C, H, W), waveforms (B, channels, samples) at ``model.sample_rate``) of ``prompts`` as
    ``LTX2Pipeline`` (module docstring); ``return_latents``: (video latents (B, C, F, h, w), audio latents (B, C_a,
    L, M)), both normalised (the pipeline's before its denormalisation).

    Keyword arguments: negative_prompt, the guidance scales of :data:`LTX2_GUIDANCE` (guidance_scale, stg_scale,
    modality_scale, guidance_rescale and their ``audio_`` twins), stg_blocks (default (28,)), cross_timestep
    (``use_cross_timestep``), steps (default 30), sampler (None: the scheduler's own step, flow Euler ``ddim``; any
    diffkit sampler on its grid; further keywords: the sampler's), num_frames / height / width / frame_rate
    (default 121 / 512 / 768 / 24), max_sequence_length (Gemma's, 1024), decode_timestep / decode_noise_scale, seed
    (video i from ``seed + i``), output_range ("-1,1" or "0,1"), progress."""
    from ..errors import check_choice
    from ..noise import generators_from_seed, randn
    from ..sampling import sample
    from .pixart import flow_start, folder_sampler
    from .stable_diffusion import OUTPUT_RANGES, negative_prompts, prompt_list
    check_choice("output_range", output_range, OUTPUT_RANGES)
    guide = {k: options.pop(k) for k in list(options) if k in LTX2_GUIDANCE}
    scales, rescales, passes = _guidance_options(guide, stg_blocks)
    prompts = prompt_list(prompts)
    frames = LTX2_FRAMES if num_frames is None else num_frames
    height, width = LTX2_HEIGHT if height is None else height, LTX2_WIDTH if width is None else width
    rate = LTX2_FRAME_RATE if frame_rate is None else frame_rate
    shape = model.latent_shape(len(prompts), frames, height, width)
    model.rope_scale(rate)  # (one line for a bad rate)
    layout = JointLayout(shape, model.audio_shape(len(prompts), frames, rate))
    steps = model.default_steps if steps is None else steps
    grid = model.scheduler_grid(steps, shape)
    if sampler is None:
        sampler, own = folder_sampler(model.scheduler_config, flow=True)
        options = {**own, **options}
    generators = None if seed is None else generators_from_seed(seed, shape[0])
    state = torch.float32
    video = randn(layout.video, generators, device=model.device, dtype=state)
    audio = randn(layout.audio, generators, device=model.device, dtype=state)
    states, mask = model.encode_prompts(prompts, max_sequence_length)
    cond = {"layout": layout, "fps": rate, "scales": scales, "rescales": rescales, "stg_blocks": tuple(stg_blocks),
            "cross_timestep": bool(cross_timestep), "passes": passes, "null": None}
    if "u" in passes:  # the connectors over [negative, positive], as the pipeline's one batch
        null, null_mask = model.encode_prompts(negative_prompts(negative_prompt, len(prompts)), max_sequence_length)
        both = model.contexts(torch.cat([null, states]), torch.cat([null_mask, mask]))
        cond["null"] = tuple(p.chunk(2)[0] for p in both)
        cond["context"], cond["audio_context"], cond["mask"] = (p.chunk(2)[1] for p in both)
    else:
        cond["context"], cond["audio_context"], cond["mask"] = model.contexts(states, mask)
    denoiser = model.denoiser_for(shape)
    x = flow_start(denoiser.schedule, layout.join(video, audio), grid, seed, model.device, state)
    z = sample(denoiser, x, sampler, grid=grid, seed=seed, cond=cond, progress=progress, device=model.device,
               dtype=state, **options)
    video, audio = layout.split(z)
    if return_latents:
        return video, audio
    videos = model.decode(video, decode_timestep, decode_noise_scale, generators)
    videos = (videos / 2 + 0.5).clamp(0, 1) if output_range == "0,1" else videos.clamp(-1, 1)
    return videos, model.waveform(audio)


def is_ltx2_folder(path) -> bool:
    """True for a folder whose ``model_index.json`` names ``LTX2Pipeline``."""
    from .sd_xl import pipeline_class
    return pipeline_class(path) == LTX2_PIPELINE


__all__ = ["LTX2", "LTX2Net", "JointLayout", "guided_x0", "load_ltx2", "check_ltx2_folder", "is_ltx2_folder",
           "text_to_video", "LTX2_PIPELINE", "LTX2_GUIDANCE", "LTX2_STEPS", "LTX2_FRAMES", "LTX2_FRAME_RATE"]
