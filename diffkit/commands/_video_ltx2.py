"""``diffkit video --checkpoint LTX2_FOLDER --prompt TEXT``: an ``LTX2Pipeline`` folder's joint video + audio
(:func:`diffkit.interop.ltx2.text_to_video`), the sound an AAC track of an .mp4 / .mkv ``--out`` (and of each
``--individual`` movie), else a WAV file beside each animation; ``--guidance-scale`` (the video stream's CFG),
``--guidance-rescale``, ``--decode-timestep``, ``--decode-noise-scale`` (the "LTX-Video" group);
docs/interop/ltx2.md."""
from __future__ import annotations

from pathlib import Path

from ._video_ltx import LTX_FLAGS
from .video import VideoKind


class LTX2Kind(VideoKind):
    """``LTX2Pipeline`` folders: video with sound, 121 frames of 512 x 768 by default, 30 steps, at 24 fps (the
    pipeline's ``frame_rate``, which also sets the audio's length and the RoPE: ``--fps`` is fixed to it)."""

    label = "LTX-2"
    pipelines = ("LTX2Pipeline",)
    takes = frozenset({"negative_prompt", "num_frames", "height", "width", "steps", "sampler", "guidance_scale",
                       *LTX_FLAGS})
    fps = 24.0

    def check_folder(self, directory) -> None:
        from ..interop.ltx2 import check_ltx2_folder
        check_ltx2_folder(directory)

    def check_request(self, args) -> None:
        """One line, from the folder's JSON, for a frame count or size the VAE does not take, an ``--fps`` other
        than the pipeline's frame rate, or decode flags without a timestep-conditioned VAE."""
        from ..errors import DiffkitError, read_json_object
        from ..interop.ltx import check_video, vae_ratios
        from ..interop.ltx2 import LTX2_FRAMES, LTX2_HEIGHT, LTX2_WIDTH
        vae = read_json_object(Path(args.checkpoint) / "vae" / "config.json", "vae config")
        check_video(LTX2_FRAMES if args.num_frames is None else args.num_frames,
                    LTX2_HEIGHT if args.height is None else args.height,
                    LTX2_WIDTH if args.width is None else args.width, *vae_ratios(vae))
        if args.fps is not None and args.fps != self.fps:
            raise DiffkitError(f"--fps {args.fps:g} is not allowed for an LTX-2 folder: the pipeline's frame_rate "
                               f"{self.fps:g} sets the audio's length and the RoPE; drop --fps")
        if (args.decode_timestep or args.decode_noise_scale) and not vae.get("timestep_conditioning", False):
            raise DiffkitError(f"--decode-timestep / --decode-noise-scale do not apply to {args.checkpoint}: its VAE "
                               f"has no timestep conditioning (timestep_conditioning false); drop them")

    def load(self, directory, device, progress: bool, lora=None):
        from ..interop.ltx2 import load_ltx2
        return load_ltx2(directory, device, progress=progress)

    def sample_rate(self, model) -> int:
        """The waveforms' sample rate: the vocoder's."""
        return model.sample_rate

    def generate(self, model, prompts: list, images, *, seed: int, progress: bool, **options):
        """(videos, waveforms) of :func:`diffkit.interop.ltx2.text_to_video` (``--guidance-scale`` in the seed
        convention w: the pipeline's s = 1 + w)."""
        from ..interop.ltx2 import text_to_video
        if options.pop("convention", "diffusers") == "seed" and "guidance_scale" in options:
            options["guidance_scale"] = 1 + options["guidance_scale"]
        return text_to_video(model, prompts, seed=seed, progress=progress, **options)


KIND = LTX2Kind()
