"""SkyReels-V2 diffusion forcing (``SkyReelsV2DiffusionForcingPipeline``, diffusers 0.42.1): text to video with a noise
level per latent frame, with diffkit samplers.

Diffusion forcing (Chen et al. 2024, "Diffusion Forcing: Next-token Prediction Meets Full-Sequence Diffusion";
SkyReels-V2, Sec. 3.4) trains the transformer with an independent noise level per frame, so a video can be denoised
with its frames at different levels. The pipeline groups the F latent frames into blocks of ``causal_block_size``
frames (default the transformer's ``num_frame_per_block``; with blocks of more than one frame the transformer's
attention is block-causal) and walks a schedule of rows (:func:`forcing_schedule`, the pipeline's
``generate_timestep_matrix``): block 0 takes one step of the N-step grid per row, block b lags block b - 1 by
``ar_step`` rows (starting as soon as block b - 1 is clean, whichever is first). Each row is one transformer call on
the whole video (``enable_diffusion_forcing``: a timestep per frame, 999 for a block not started, 0 for a clean one,
and with ``inject_sample_info`` the fps embedding, 0 for 16 fps, else 1), and every block whose step it is takes its
next step with its own copy of the scheduler. So each block runs the whole N-step scheduler on its own frames, in
step with the others' states:

* ``ar_step`` = 0 (synchronous, the default): every block at the same step in every row, i.e. one run of any
  diffkit sampler on the whole latent video, the denoiser's time given to every frame;
* ``ar_step`` > 0 (asynchronous): every block runs its own diffkit sampler (the folder's step by default; any sampler
  of one model call per step) from its own noise on the scheduler's grid, its model calls gathered row by row into
  the pipeline's one transformer call (:class:`ForcingRows`).

Otherwise as ``SkyReelsV2Pipeline`` (:mod:`.skyreels_v2`, Wan's code): UMT5 prompts, CFG s = 6 (diffusers'
convention), 97 frames of 544 x 960, 50 steps of the folder's flow UniPC, the Wan VAE's decoding, 24 fps. diffkit
drives the short-video mode (``base_num_frames`` >= the frames: one window) here, the long-video sliding windows
(``base_num_frames`` with ``overlap_history``) in :mod:`.skyreels_v2_forcing_long` (``addnoise_condition`` not
driven). Clean first frames (``prefix_latents``): the image- and
video-to-video pipelines' (:mod:`.skyreels_v2_forcing_prefix`). Refused in one line before any weight is read
(:func:`.skyreels_v2.check_skyreels_v2_folder`): what a ``SkyReelsV2Pipeline`` folder refuses but the transformer's
``inject_sample_info`` and ``num_frame_per_block``, a scheduler other than flow UniPC (the pipeline's per-frame copies
step at its whole timesteps); and a block size that does not divide the latent frames (the pipeline leaves the frames
past the last whole block as noise; the transformer's causal mask fails there), a negative ``ar_step``, an
asynchronous run with a sampler of more than one model call per step.
"""
from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch

from ..errors import DiffkitError
from .wan import Wan, WanNet

SKYREELS_V2_DF_PIPELINE = "SkyReelsV2DiffusionForcingPipeline"
FORCING_FPS = 24  # the pipeline's fps (its sample-info conditioning, and its documentation's export rate)
NOT_STARTED, CLEAN = 999, 0  # the pipeline's timesteps of a block before its first step and after its last


@dataclass
class SkyReelsV2DF(Wan):
    """The loaded components of a ``SkyReelsV2DiffusionForcingPipeline`` folder
    (:func:`.skyreels_v2.load_skyreels_v2`): a Wan 2.1 folder's, its transformer a diffusion-forcing one."""

    pipeline_name = SKYREELS_V2_DF_PIPELINE
    prompt_module = "diffusers.pipelines.skyreels_v2.pipeline_skyreels_v2_diffusion_forcing"


class ForcingNet(WanNet):
    """``net(z, t, context, fps=None)`` over a SkyReels-V2 transformer with ``enable_diffusion_forcing``: ``t`` the
    network time per video (B,) given to every frame, or per frame (B, F); ``fps`` (B,) the sample-info flag (0 for
    16 fps, else 1). A transformer with ``inject_sample_info`` is called one row at a time: it tiles its fps
    projection over the frames batch-minor (``repeat``) beside its batch-major timestep projection, which fits one
    row only (the pipeline fails on several prompts)."""

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor = None,
                fps: torch.Tensor = None) -> torch.Tensor:
        from . import model_dtype
        t = torch.as_tensor(t, device=x.device, dtype=torch.float32)
        t = (t.reshape(-1, 1) if t.ndim < 2 else t).expand(x.shape[0], x.shape[2])
        t = t.floor() if self.whole_timesteps else t
        flags = [0] * x.shape[0] if fps is None else [int(f) for f in fps.reshape(-1).expand(x.shape[0])]
        rows = [slice(i, i + 1) for i in range(x.shape[0])] if self.model.config.inject_sample_info else [slice(None)]
        dtype = model_dtype(self.model)
        return torch.cat([self.model(hidden_states=x[r].to(dtype), timestep=t[r], enable_diffusion_forcing=True,
                                     encoder_hidden_states=context[r].to(dtype), fps=flags[r],
                                     return_dict=False)[0] for r in rows]).to(x.dtype)


def forcing_schedule(blocks: int, steps: int, ar_step: int, ready: int = 0) -> list:
    """The pipeline's rows (``generate_timestep_matrix`` of one window): per row, each block's step index k (0: not
    started, 1..N: its k-th model call and step, N + 1: clean) and whether it steps in that row. Block 0 advances
    one a row; block b is block b - 1's index minus ``ar_step`` (clamped to [0, N + 1]) until block b - 1 has taken
    its last step, then advances one a row. The first ``ready`` blocks (clean prefix frames, ``num_pre_ready``) start
    clean (N + 1)."""
    rows, before = [], [steps + 1] * ready + [0] * (blocks - ready)
    while min(before) < steps:
        row = []
        for b in range(blocks):
            row.append(before[b] + 1 if b == 0 or before[b - 1] >= steps else row[b - 1] - ar_step)
        row = [min(max(k, 0), steps + 1) for k in row]
        rows.append((row, [k != k0 and k != steps + 1 for k, k0 in zip(row, before)]))
        before = row
    return rows


class _Stop(Exception):
    """Unwinds a block's sampler when the run ends early (another block's error)."""


class ForcingRows:
    """The asynchronous rows: block b's sampler runs in its own thread on a Denoiser whose network is
    :meth:`block_net` (b); each row gathers the stepping blocks' inputs (x, t) with the others' states (a block not
    started: its noise at the pipeline's timestep 999; a clean one: its result at 0) into one :class:`ForcingNet`
    call on the whole video and hands each stepping block its frames' output. The threads take turns: a block
    computes only between the coordinating thread's handing it its output and its next call (or its end)."""

    def __init__(self, net: ForcingNet, latents: torch.Tensor, block: int, schedule: list, steps: int):
        self.net, self.block, self.rows, self.steps = net, block, schedule, steps
        self.states = list(latents.split(block, dim=2))  # flow-space state of each block (its noise at first)
        self.outboxes = [queue.Queue() for _ in self.states]  # block -> coordinator: a call, its end, an error
        self.inboxes = [queue.Queue() for _ in self.states]  # coordinator -> block: its frames' output

    def block_net(self, b: int):
        """Block b's network: posts (x, t, cond) for its row and waits for its frames' output."""
        def net(x, t, **cond):
            self.outboxes[b].put(("call", (x, t, cond)))
            answer = self.inboxes[b].get()
            if isinstance(answer, _Stop):
                raise answer
            return answer
        return net

    def run(self, start_block) -> torch.Tensor:
        """The final latents: ``start_block(b, net)`` runs block b's sampler on ``net`` and returns its final state
        (called in block b's thread when the schedule first steps it)."""
        threads, pending, ready, done = {}, {}, {}, set()

        def body(b):
            try:
                self.outboxes[b].put(("done", start_block(b, self.block_net(b))))
            except _Stop:
                pass
            except BaseException as err:  # noqa: BLE001 - handed to the coordinating thread, raised there
                self.outboxes[b].put(("error", err))

        def resume(b) -> bool:
            """Block b goes on (started, or handed its output) to its next call (True, kept in ``pending``) or
            its end (False, its final state kept)."""
            if b in ready:
                self.inboxes[b].put(ready.pop(b))
            else:
                threads[b] = threading.Thread(target=body, args=(b,), daemon=True)
                threads[b].start()
            what, value = self.outboxes[b].get()
            if what == "error":
                done.add(b)
                raise value
            if what == "done":
                done.add(b)
                self.states[b] = value
                return False
            pending[b] = value
            return True
        try:
            for row, stepping in self.rows:
                for b in [b for b, s in enumerate(stepping) if s]:
                    if not resume(b):
                        raise DiffkitError(f"block {b}'s sampler ended after {row[b] - 1} model calls in "
                                           f"{self.steps} steps; diffusion forcing's rows need one a step")
                ready.update(self._row(row, stepping, pending))
                for b in [b for b, s in enumerate(stepping) if s and row[b] == self.steps]:
                    if resume(b):  # its last step taken: its final state, not another call
                        raise DiffkitError(f"block {b}'s sampler called the model after its {self.steps} steps")
        finally:
            for b in threads.keys() - done:
                self.inboxes[b].put(_Stop())
        return torch.cat(self.states, dim=2)

    def _row(self, row, stepping, pending: dict) -> dict:
        """One transformer call on the whole video: {stepping block: its frames' output}."""
        x0, _, cond = pending[stepping.index(True)]
        copies = x0.shape[0] // self.states[0].shape[0]  # guidance's [cond, null] rows
        xs, ts = [], []
        for b, (k, s) in enumerate(zip(row, stepping)):
            x, t = pending.pop(b)[:2] if s else \
                (self.states[b].to(x0).repeat(copies, 1, 1, 1, 1), NOT_STARTED if k == 0 else CLEAN)
            xs.append(x)
            ts.append(torch.as_tensor(t, dtype=torch.float32, device=x0.device).reshape(-1, 1).expand(
                x0.shape[0], x.shape[2]))
        out = self.net(torch.cat(xs, dim=2), torch.cat(ts, dim=1), **cond)
        return {b: part for b, part in enumerate(out.split(self.block, dim=2)) if stepping[b]}


def check_forcing(frames: int, block: int, ar_step, sampler: str, options: dict, prefix: int = 0) -> None:
    """One line for an ``ar_step`` not a whole number >= 0, a block size that does not divide the latent frames, or
    an asynchronous run (or one with a whole block of ``prefix`` clean first frames) with a sampler of more than one
    model call per step."""
    from ..samplers import get_sampler
    if isinstance(ar_step, bool) or not isinstance(ar_step, int) or ar_step < 0:
        raise DiffkitError(f"ar_step={ar_step!r} is not allowed; give a whole number >= 0 (0: synchronous)")
    if isinstance(block, bool) or not isinstance(block, int) or block < 1 or frames % block:
        raise DiffkitError(f"causal_block_size={block!r} is not allowed for {frames} latent frames; give a divisor "
                           f"of them (the pipeline leaves the frames past the last whole block as noise)")
    if ar_step or prefix >= block:
        info = get_sampler(sampler.split("@")[0].split(":")[0])
        calls = info.calls_per_step_of({**info.options, **options}) if info.calls_per_step_of else \
            info.calls_per_step
        if calls != 1 or info.order == "adaptive" or info.nfe_of_steps is not None or info.stochastic:
            raise DiffkitError(f"sampler {sampler!r} is not allowed with ar_step={ar_step}"
                               f"{f' and {prefix} clean first latent frames' if prefix >= block else ''}: "
                               f"diffusion forcing's rows step each block once a row; give a deterministic sampler of "
                               f"one model call per step (the folder's unipc, ddim, ...)")


def text_to_video(model: SkyReelsV2DF, prompts: Union[str, Sequence[str]], *, ar_step: int = 0,
                  causal_block_size: Optional[int] = None, fps: int = FORCING_FPS, negative_prompt=None,
                  guidance_scale: Optional[float] = None, convention: str = "diffusers",
                  steps: Optional[int] = None, sampler: Optional[str] = None, num_frames: Optional[int] = None,
                  height: Optional[int] = None, width: Optional[int] = None, seed: Optional[int] = 0,
                  latents: Optional[torch.Tensor] = None, output_range: str = "-1,1", return_latents: bool = False,
                  progress: bool = False, prefix_latents: Optional[torch.Tensor] = None,
                  base_num_frames: Optional[int] = None, overlap_history: Optional[int] = None,
                  **options) -> torch.Tensor:
    """Videos (B, T, 3, H, W) of ``prompts`` as ``SkyReelsV2DiffusionForcingPipeline`` in its short-video mode
    (module docstring): ``ar_step`` (0: synchronous), ``causal_block_size`` (latent frames a block; default the
    transformer's ``num_frame_per_block``), ``fps`` (the sample-info conditioning: 16 -> 0, else 1); the rest as
    :func:`.skyreels_v2.text_to_video` (CFG s = 6, 97 frames of 544 x 960, 50 steps of the folder's flow UniPC,
    ``sampler`` any diffkit sampler on its grid, of one model call per step where ``ar_step`` > 0).
    ``prefix_latents`` (1 or B, C, P, h, w): clean first latent frames written over the noise (the image- and
    video-to-video pipelines' ``latents[:, :, :P] = condition``, :mod:`.skyreels_v2_forcing_prefix`); the blocks
    wholly inside them stay clean at timestep 0 (``num_pre_ready``), the others run from there. ``base_num_frames``
    fewer than the frames, with ``overlap_history``: the long-video mode (:mod:`.skyreels_v2_forcing_long`)."""
    from ..denoiser import Denoiser
    from ..errors import check_choice
    from ..guidance import ClassifierFreeGuidance
    from .skyreels_v2 import SKYREELS_V2_GUIDANCE, check_model, pipeline_defaults
    from .stable_diffusion import OUTPUT_RANGES, negative_prompts, prompt_list
    from .wan import check_frames, pipeline_guidance
    check_model(model, SkyReelsV2DF, "skyreels_v2_forcing.text_to_video")
    check_choice("output_range", output_range, OUTPUT_RANGES)
    prompts = prompt_list(prompts)
    given = pipeline_defaults(guidance_scale, convention, SKYREELS_V2_GUIDANCE, num_frames, height, width)
    scale, convention, cfg = pipeline_guidance(given["guidance_scale"], given["convention"], negative_prompt,
                                               SKYREELS_V2_GUIDANCE)
    frames, height, width = check_frames(given["num_frames"]), given["height"], given["width"]
    model.check_size(height, width)
    if base_num_frames is not None and overlap_history is not None and frames > check_frames(base_num_frames):
        from .skyreels_v2_forcing_long import long_video_latents
        if latents is not None:
            raise DiffkitError("latents are not allowed in the long-video mode (base_num_frames fewer than the "
                               "frames); each window draws its noise from seed + i")
        z = long_video_latents(model, prompts, prefix_latents, num_frames=frames, base_num_frames=base_num_frames,
                               overlap_history=overlap_history, height=height, width=width, ar_step=ar_step,
                               causal_block_size=causal_block_size, fps=fps, negative_prompt=negative_prompt,
                               guidance_scale=scale, convention=convention, steps=steps, sampler=sampler,
                               seed=seed, progress=progress, **options)
        return model.output_videos(z, output_range, return_latents)
    shape = model.latent_video_shape(len(prompts), frames, height, width)
    block = int(model.transformer.config.num_frame_per_block) if causal_block_size is None else causal_block_size
    prefix = 0 if prefix_latents is None else int(prefix_latents.shape[2])
    check_forcing(shape[2], block, ar_step, sampler or "unipc", options, prefix)
    steps, grid, sampler, options, latents = model.start_latents(steps, sampler, options, shape, latents, seed)
    if prefix:
        latents = latents.clone()
        latents[:, :, :prefix] = prefix_latents.to(latents)
    cond = {"context": model.encode_prompts(prompts),
            "fps": torch.full((len(prompts),), 0 if fps == 16 else 1, device=model.device)}
    null = model.encode_prompts(negative_prompts(negative_prompt, len(prompts))) if cfg else None

    def denoiser(net):
        inner = Denoiser(net, model.schedule, "flow_prediction")
        inner.model = model.transformer
        return ClassifierFreeGuidance(inner, scale, convention, null_context=null) if cfg else inner
    net = ForcingNet(model.transformer, model.whole_timesteps)
    before = int(model.transformer.config.num_frame_per_block)
    model.transformer._set_ar_attention(block)  # the pipeline's causal blocks (it keeps them; diffkit restores)
    try:
        if ar_step == 0 and prefix < block:
            z = model.sample_latents(denoiser(net), cond, grid, sampler, latents, seed, progress, options)
        else:
            rows = ForcingRows(net, latents.to(model.device, torch.float32), block,
                               forcing_schedule(shape[2] // block, steps, ar_step, prefix // block), steps)
            z = rows.run(lambda b, block_net: model.sample_latents(
                denoiser(block_net), cond, grid, sampler, rows.states[b], None, False, options))
    finally:
        model.transformer._set_ar_attention(before)
    return model.output_videos(z, output_range, return_latents)


__all__ = ["SkyReelsV2DF", "ForcingNet", "ForcingRows", "forcing_schedule", "check_forcing", "text_to_video",
           "SKYREELS_V2_DF_PIPELINE", "FORCING_FPS"]
