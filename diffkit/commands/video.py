"""``diffkit video``: generate videos with a diffusers video folder (text-to-video, image-to-video), written as
animations (:mod:`diffkit.video`; docs/video.md).

``--checkpoint`` is a diffusers folder whose ``model_index.json`` names a video pipeline diffkit drives (the
``VIDEO_KINDS`` table: its ``_class_name`` -> the module under :mod:`diffkit.commands` whose ``KIND`` drives it).
``--prompt`` is given once (every video) or once per video; ``--image PNG`` (image-to-video folders) and ``--video
FILE`` (the kinds that take input videos: an animated PNG / WebP / GIF, a movie or a folder of frame PNGs)
likewise; ``--num N`` videos (default: as many as prompts, images or input videos). Video i draws its noise from
``--seed`` + i, whatever ``--batch-size`` (default 1; a batch out of accelerator memory is halved and redrawn). The
videos are written as one grid animation ``--out`` (default videos.png: an animated PNG; .webp and .gif too, and
H.264 .mp4 / .mkv at constant rate factor ``--crf`` through PyAV), frame t tiling frame t of every video (``--nrow``
per row), and with ``--individual DIR`` one animation each (video_00000.png ..., of ``--out``'s format), at ``--fps``
(default the kind's: its pipeline's documented frame rate). A flag the folder kind does not take is refused in one
line before any weight is read, as are a folder no kind drives, a bad output file and counts that do not fit; a
failure leaves no partial file and no new empty folder.
"""
from __future__ import annotations

import abc
import importlib
from pathlib import Path

from ._common import (add_lora_flags, add_progress_flag, int_in, missing_dirs, non_negative_float, path_arg,
                      positive_float, positive_int, seed_int, unit_float)

# A video folder's pipeline class (model_index.json's _class_name) -> the module under diffkit.commands whose KIND (a
# VideoKind) drives it ("module:NAME": its attribute NAME instead). One line per pipeline class.
VIDEO_KINDS: dict[str, str] = {
    "HunyuanVideoPipeline": "._video_hunyuan",
    "HunyuanVideoImageToVideoPipeline": "._video_hunyuan:I2V_KIND",
    "HunyuanSkyreelsImageToVideoPipeline": "._video_hunyuan:SKYREELS_KIND",
    "AnimateDiffPipeline": "._video_animatediff",
    "AnimateDiffSDXLPipeline": "._video_animatediff:SDXL_KIND",
    "AnimateDiffVideoToVideoPipeline": "._video_animatediff:V2V_KIND",
    "PIAPipeline": "._video_pia",
    "StableVideoDiffusionPipeline": "._video_svd",
    "MochiPipeline": "._video_mochi",
    "WanPipeline": "._video_wan",
    "WanImageToVideoPipeline": "._video_wan_i2v",
    "WanVACEPipeline": "._video_wan_vace",
    "WanVideoToVideoPipeline": "._video_wan_v2v",
    "LucyEditPipeline": "._video_lucy_edit",
    "CogVideoXPipeline": "._video_cogvideox",
    "CogVideoXImageToVideoPipeline": "._video_cogvideox:I2V_KIND",
    "CogVideoXVideoToVideoPipeline": "._video_cogvideox:V2V_KIND",
    "CogVideoXFunControlPipeline": "._video_cogvideox:FUN_KIND",
    "LTXPipeline": "._video_ltx",
    "LTXImageToVideoPipeline": "._video_ltx:IMAGE_KIND",
    "LTXConditionPipeline": "._video_ltx_condition",
    "Cosmos2VideoToWorldPipeline": "._video_cosmos2",
    "Cosmos2_5_PredictBasePipeline": "._video_cosmos2_5",
    "Kandinsky5T2VPipeline": "._video_kandinsky5",
    "Kandinsky5I2VPipeline": "._video_kandinsky5:I2V_KIND",
    "LattePipeline": "._video_latte",
    "SkyReelsV2Pipeline": "._video_skyreels_v2",
    "SkyReelsV2ImageToVideoPipeline": "._video_skyreels_v2:I2V_KIND",
    "SkyReelsV2DiffusionForcingPipeline": "._video_skyreels_v2:DF_KIND",
    "SkyReelsV2DiffusionForcingImageToVideoPipeline": "._video_skyreels_v2_forcing_prefix:I2V_KIND",
    "SkyReelsV2DiffusionForcingVideoToVideoPipeline": "._video_skyreels_v2_forcing_prefix:V2V_KIND",
    "TextToVideoSDPipeline": "._video_modelscope",
    "VideoToVideoSDPipeline": "._video_modelscope:V2V_KIND",
    "I2VGenXLPipeline": "._video_modelscope:I2V_KIND",
    "HunyuanVideo15Pipeline": "._video_hunyuan15",
    "HunyuanVideo15ImageToVideoPipeline": "._video_hunyuan15:I2V_KIND",
    "AllegroPipeline": "._video_allegro",
    "SanaVideoPipeline": "._video_sana",
    "SanaImageToVideoPipeline": "._video_sana:I2V_KIND",
    "EasyAnimatePipeline": "._video_easyanimate",
    "EasyAnimateInpaintPipeline": "._video_easyanimate:I2V_KIND",
    "HunyuanVideoFramepackPipeline": "._video_hunyuan_framepack",
    "MotifVideoPipeline": "._video_motif",
    "MotifVideoImage2VideoPipeline": "._video_motif:I2V_KIND",
    "LTX2Pipeline": "._video_ltx2",
}
DEFAULT_OUT = "videos.png"
COMMON_FLAGS = {"command", "func", "checkpoint", "prompts", "num", "seed", "batch_size", "out", "individual", "fps",
                "crf", "nrow", "device", "progress"}


class VideoKind(abc.ABC):
    """What ``diffkit video`` needs of a video folder kind: its label, the pipeline classes it drives, the flags'
    dests it takes beyond :data:`COMMON_FLAGS` (``takes``: negative_prompt, images, videos, num_frames, height, width,
    steps, sampler, guidance_scale, guidance_convention, lora), whether it needs ``--image`` (image-to-video; a kind
    that takes ``--video`` also takes a video there), ``--video`` (video-to-video) or a prompt, its default frame rate,
    and its loader and generator (the abstract :meth:`load` and :meth:`generate`; a kind that takes ``videos`` gets
    them as ``generate``'s keyword ``videos``)."""

    label = "video"
    pipelines: tuple = ()
    takes: frozenset = frozenset()
    needs_image = False  # image-to-video: --image required
    needs_prompt = True  # text-conditioned: --prompt required
    needs_video = False  # video-to-video: --video required
    fps = 8.0  # default --fps: the frame rate its pipeline's documentation exports at

    def check_folder(self, directory) -> None:
        """One line, before any weight is read, for a folder of this pipeline class diffkit cannot drive."""

    def check_request(self, args) -> None:
        """One line, before any weight is read, for flag values the kind refuses (frame counts, sizes, ...)."""

    def check_videos(self, args, videos: list) -> None:
        """One line, before any weight is read, for ``--video``'s videos (T, C, H, W) in [-1, 1] the kind refuses
        (frame counts, frame sizes, ...)."""

    @abc.abstractmethod
    def load(self, directory, device, progress: bool, lora=None):
        """The loaded folder (``lora``: ``--lora``'s [(file, scale)], where the kind takes it)."""

    @abc.abstractmethod
    def generate(self, model, prompts: list, images, *, seed: int, progress: bool, **options):
        """(B, T, C, H, W) videos in [-1, 1] (a kind with sound: (videos, waveforms (B, channels, samples)) at its
        :meth:`sample_rate`) for ``prompts`` (B of them; None entries where the kind takes no
        prompt) and ``images`` (B PIL images, or None), video i's noise from ``seed`` + i; ``options``: the dests of
        ``takes`` that were given, and with ``guidance_scale`` its ``convention`` (``--guidance-convention``); a kind
        that takes ``videos``: ``videos=`` B input videos (T, C, H, W) in [-1, 1] (``--video``), or None."""


def register(sub) -> None:
    p = sub.add_parser("video", help="generate videos with a diffusers video folder (text- or image-to-video)",
                       description=__doc__)
    p.add_argument("--checkpoint", type=path_arg, required=True, metavar="DIR",
                   help="a diffusers video folder (see docs/video.md for the pipelines diffkit drives)")
    p.add_argument("--prompt", dest="prompts", action="append", metavar="TEXT",
                   help="the text of every video, or repeat it once per video")
    p.add_argument("--negative-prompt", metavar="TEXT",
                   help="classifier-free guidance's null condition, for every video (default the pipeline's)")
    p.add_argument("--image", dest="images", action="append", type=path_arg, metavar="PNG",
                   help="image-to-video folders: the first frame (condition image) of every video, or repeat it once "
                        "per video")
    p.add_argument("--video", dest="videos", action="append", type=path_arg, metavar="FILE",
                   help="video-to-video folders: the input video (an animated PNG, WebP or GIF, a movie PyAV reads: "
                        ".mp4 ..., or a folder of frame PNGs) of every video, or repeat it once per video")
    p.add_argument("--strength", type=unit_float, metavar="S",
                   help="video-to-video folders: how far the input videos are noised, the last int(steps S) of "
                        "--steps run (SDEdit; default the pipeline's, 0.8)")
    p.add_argument("--num", type=int_in(1, 65536), metavar="N",
                   help="videos to generate (default: as many as --prompt / --image / --video are given, at least 1)")
    p.add_argument("--frames", dest="num_frames", type=positive_int, metavar="N",
                   help="frames per video (default the pipeline's)")
    p.add_argument("--height", type=positive_int, help="frame height in pixels (default the pipeline's)")
    p.add_argument("--width", type=positive_int, help="frame width in pixels (default the pipeline's)")
    p.add_argument("--steps", type=positive_int, help="sampling steps (default the pipeline's)")
    p.add_argument("--sampler", help="any diffkit sampler on the folder's grid (see 'diffkit samplers'; default the "
                                     "folder's scheduler's own step)")
    p.add_argument("--guidance-scale", type=float, metavar="S",
                   help="classifier-free guidance scale (default the pipeline's)")
    from .sample import add_guidance_convention_flag
    add_guidance_convention_flag(p, needs="with --guidance-scale: ")
    p.add_argument("--seed", type=seed_int, default=0, help="video i uses seed + i (default 0)")
    p.add_argument("--batch-size", type=int_in(1, 65536), default=1, help="videos per batch (default 1)")
    p.add_argument("--out", type=path_arg, default=DEFAULT_OUT, metavar="FILE",
                   help=f"the grid animation: .png (animated PNG), .webp or .gif, or an H.264 .mp4 / .mkv "
                        f"(pip install 'diffkit[video]') (default {DEFAULT_OUT})")
    p.add_argument("--individual", type=path_arg, metavar="DIR",
                   help="also write each video as its own animation, video_00000.png ... (--out's format)")
    p.add_argument("--fps", type=positive_float, metavar="F", help="frames per second (default the pipeline's)")
    p.add_argument("--crf", type=int_in(0, 51), metavar="N",
                   help=".mp4 / .mkv: libx264's constant rate factor, 0 (lossless) .. 51 (default 18)")
    p.add_argument("--nrow", type=int_in(1, 1024), default=4, help="videos per grid row (default 4)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, mps")
    add_lora_flags(p, help="a LoRA .safetensors file for the folder's transformer (the kinds that take it: "
                           "docs/video.md), merged at load as W0 + SCALE (alpha/r) B A (SCALE default 1; repeat for "
                           "several: they add)")
    group = p.add_argument_group("AnimateDiff")
    group.add_argument("--clip-skip", type=int_in(0, 10_000), metavar="N",
                       help="AnimateDiff folders: the prompts' CLIP states N layers below the last (the pipeline's "
                            "clip_skip; the negative prompt is not skipped); N < the text encoder's layers")
    from ._video_animatediff_controlnet import add_animatediff_control_flags
    add_animatediff_control_flags(p)  # --controlnet, --control-video, ... (AnimateDiff folders)
    from ._video_pia import add_pia_flags
    add_pia_flags(p)  # --motion-scale (PIA folders)
    from ._video_animatediff import add_animatediff_pag_flags
    add_animatediff_pag_flags(p)  # --pag-scale, --pag-layers, --pag-adaptive-scale (AnimateDiff folders)
    wan = p.add_argument_group("Wan")
    wan.add_argument("--guidance-scale-2", type=float, metavar="S",
                     help="Wan 2.2 A14B folders: the low-noise expert's (transformer_2's) guidance scale, read as "
                          "--guidance-scale is (default --guidance-scale; without --guidance-scale both are in "
                          "diffusers' convention, the pipeline's default 5 and this S)")
    wan_i2v = p.add_argument_group("First-last-frame (Wan image-to-video, SkyReels-V2, FramePack)")
    wan_i2v.add_argument("--last-image", type=path_arg, metavar="PNG",
                         help="every video's last frame (first-last-frame to video: a Wan 2.2 A14B or Wan2.1-FLF2V "
                              "folder, SkyReels-V2 image-to-video, HunyuanVideo FramePack; the pipeline's last_image)")
    vace = p.add_argument_group("Wan VACE")
    vace.add_argument("--mask", type=path_arg, metavar="FILE",
                      help="Wan VACE folders, with --video: a mask video of the control video's frames and size, "
                           "every video's (white: regenerate, black: keep; the pipeline's mask)")
    vace.add_argument("--reference-image", dest="reference_image", action="append", type=path_arg, metavar="PNG",
                      help="Wan VACE folders: a reference image of every video (repeat for several; the pipeline's "
                           "reference_images)")
    vace.add_argument("--conditioning-scale", type=float, metavar="S",
                      help="Wan VACE folders: the control hints' scale at every VACE layer (default 1)")
    from ._video_ltx import add_ltx_flags
    add_ltx_flags(p)  # --guidance-rescale, --decode-timestep, --decode-noise-scale (LTX-Video folders)
    from ._video_ltx_condition import add_ltx_condition_flags
    add_ltx_condition_flags(p)  # --condition, --condition-frame, --condition-strength, --image-cond-noise-scale
    add_progress_flag(p)
    hunyuan = p.add_argument_group("HunyuanVideo")
    hunyuan.add_argument("--true-cfg-scale", type=float, metavar="S",
                         help="HunyuanVideo folders, with --negative-prompt: true classifier-free guidance s > 1 "
                              "(diffusers' convention; HunyuanVideoPipeline's true_cfg_scale); their --guidance-scale "
                              "is the transformer's embedded guidance")
    framepack = p.add_argument_group("HunyuanVideo FramePack")
    framepack.add_argument("--sampling-type", choices=("inverted_anti_drifting", "vanilla"),
                           help="FramePack folders: inverted_anti_drifting (default: sections from the end, "
                                "--last-image allowed) or vanilla (forwards); the pipeline's sampling_type")
    framepack.add_argument("--latent-window-size", type=positive_int, metavar="N",
                           help="FramePack folders: latent frames per section (default 9); --frames sets the "
                                "number of sections")
    svd = p.add_argument_group("Stable Video Diffusion")
    svd.add_argument("--motion-bucket-id", type=int_in(0, 1_000_000), metavar="N",
                     help="the motion conditioning, added_time_ids (default 127; higher: more motion)")
    svd.add_argument("--noise-aug-strength", type=non_negative_float, metavar="A",
                     help="noise added to the image before encoding, x + A n (default 0.02)")
    svd.add_argument("--min-guidance-scale", type=float, metavar="S",
                     help="the first frame's guidance scale, diffusers' s (default 1); the frames' scales rise "
                          "linearly to --max-guidance-scale")
    svd.add_argument("--max-guidance-scale", type=float, metavar="S",
                     help="the last frame's guidance scale (default 3; <= 1: no guidance)")
    cogvideox = p.add_argument_group("CogVideoX")
    cogvideox.add_argument("--dynamic-cfg", action="store_true",
                           help="CogVideoX folders: the pipeline's use_dynamic_cfg (a cosine schedule of the guidance "
                                "scale over the steps)")
    latte = p.add_argument_group("Latte")
    latte.add_argument("--no-temporal-attention", action="store_true",
                       help="Latte folders: skip the transformer's temporal blocks (LattePipeline's "
                            "enable_temporal_attentions=False)")
    forcing = p.add_argument_group("SkyReels-V2 diffusion forcing")
    forcing.add_argument("--ar-step", type=int_in(0, 100_000), metavar="N",
                         help="asynchronous diffusion forcing: each block of latent frames N steps behind the one "
                              "before (default 0: synchronous; the pipeline's ar_step)")
    forcing.add_argument("--causal-block-size", type=positive_int, metavar="N",
                         help="latent frames a block (block-causal attention where N > 1; default the transformer's "
                              "num_frame_per_block; the pipeline's causal_block_size)")
    forcing.add_argument("--overlap-history", type=positive_int, metavar="N",
                         help="the frames each long-video window starts from (with --base-num-frames); "
                              "video-to-video folders: the input video's last N frames the extension starts from "
                              "(default 17; the pipeline's overlap_history)")
    forcing.add_argument("--base-num-frames", type=positive_int, metavar="N",
                         help="long-video mode: windows of N frames (4 k + 1) when --frames is more, each starting "
                              "from the last --overlap-history frames so far (the pipeline's base_num_frames)")
    p.set_defaults(func=run)


def article(name: str) -> str:
    """"an" before a name read with a vowel sound first ("an AnimateDiff", "an LTX-Video": a capital initialism whose
    letter is read "el", "em", ...), else "a"."""
    spelled = len(name) > 1 and name[:2].isupper() and name[0] in "FHLMNRSX"
    return "an" if name[:1] in "AEIOUaeiou" or spelled else "a"


def kind_of(pipeline: str) -> VideoKind:
    """The :class:`VideoKind` of a pipeline class of :data:`VIDEO_KINDS` (``module`` -> its ``KIND``,
    ``module:NAME`` -> its ``NAME``)."""
    module, _, attribute = VIDEO_KINDS[pipeline].partition(":")
    return getattr(importlib.import_module(module, __package__), attribute or "KIND")


def video_kind(directory) -> VideoKind:
    """The :class:`VideoKind` that drives ``directory``'s pipeline class; one line for any other folder."""
    from ..errors import DiffkitError
    from ..interop.sd_xl import pipeline_class
    name = pipeline_class(directory)
    if name in VIDEO_KINDS:
        return kind_of(name)
    kinds = ", ".join(sorted(VIDEO_KINDS)) or "none yet"
    what = f"{article(name)} {name} folder" if name else \
        "not a diffusers folder (no model_index.json naming a pipeline)"
    raise DiffkitError(f"--checkpoint {str(directory)!r} is {what}, which diffkit video does not drive; it takes "
                       f"{kinds} (images: diffkit sample / diffkit edit)")


def refuse_video_folder(directory, command: str) -> None:
    """One line for ``diffkit COMMAND`` (sample, edit) on a folder whose pipeline ``diffkit video`` drives, from its
    ``model_index.json`` alone (nothing else is read)."""
    from ..errors import DiffkitError
    from ..interop.sd_xl import pipeline_class
    name = pipeline_class(directory)
    if name in VIDEO_KINDS:
        kind = kind_of(name)
        needs = (" --image PNG" if kind.needs_image else "") + (" --video FILE" if kind.needs_video else "") \
            + (" --prompt TEXT" if kind.needs_prompt else "")
        raise DiffkitError(f"{directory} is {article(name)} {name} "
                           f"folder, which diffkit {command} does not take (it makes videos); generate videos with "
                           f"diffkit video --checkpoint {directory}{needs} (docs/video.md)")


def check_flags(args, kind: VideoKind) -> None:
    """One line for the first flag set away from its default that ``kind`` does not take."""
    from ..errors import DiffkitError
    defaults = vars(build_defaults())
    for dest, value in vars(args).items():
        if dest in COMMON_FLAGS or dest in kind.takes or dest not in defaults or value == defaults[dest]:
            continue
        if dest == "guidance_convention" and "guidance_scale" in kind.takes:
            continue
        takes = sorted(flag_name(d) for d in kind.takes)
        raise DiffkitError(f"{flag_name(dest)} does not apply to {article(kind.label)} {kind.label} folder "
                           f"({args.checkpoint}); besides --prompt, --num, --seed, --out and the output flags it takes "
                           f"{', '.join(takes) or 'nothing'}")


def flag_name(dest: str) -> str:
    """The command-line flag of a ``diffkit video`` dest (``num_frames`` -> ``--frames``)."""
    return "--" + {"prompts": "prompt", "images": "image", "videos": "video",
                   "num_frames": "frames"}.get(dest, dest).replace("_", "-")


def build_defaults():
    """``diffkit video``'s parsed defaults (what :func:`check_flags` compares against)."""
    from ..cli import build_parser
    return build_parser().parse_args(["video", "--checkpoint", "x"])


def request_count(args, kind: VideoKind) -> int:
    """How many videos: ``--num``, else as many as ``--prompt`` / ``--image`` / ``--video`` are given (at least 1); one
    line for a missing prompt, image or input video, or a count of them other than 1 or the videos'."""
    from ..errors import DiffkitError
    prompts, images, videos = args.prompts or [], args.images or [], getattr(args, "videos", None) or []
    if kind.needs_prompt and not prompts:
        raise DiffkitError(f"{args.checkpoint} is {article(kind.label)} {kind.label} folder: give --prompt TEXT (once, "
                           f"or once per video)")
    if kind.needs_image and not images and not videos:
        alternative = " (or --video FILE likewise)" if "videos" in kind.takes else ""
        raise DiffkitError(f"{args.checkpoint} is {article(kind.label)} {kind.label} "
                           f"folder (image-to-video): give --image PNG (once, or once per video){alternative}")
    if kind.needs_video and not videos:
        raise DiffkitError(f"{args.checkpoint} is {article(kind.label)} {kind.label} folder (video-to-video): give "
                           f"--video FILE (once, or once per video)")
    count = args.num or max(len(prompts), len(images), len(videos), 1)
    for flag, given in (("--prompt", prompts), ("--image", images), ("--video", videos)):
        if len(given) not in (0, 1, count):
            raise DiffkitError(f"{flag} is given {len(given)} times for {count} videos; give it once (every video) "
                               f"or once per video ({count})")
    return count


def check_outputs(out, individual, count: int, crf=None) -> list[Path]:
    """Check ``--out`` (an animation or movie file name, ``--crf`` for a movie only) and ``--individual`` (a folder
    without ``count`` or more videos of an earlier run) before any work; the folders they make, for removal after a
    failure."""
    from ..errors import DiffkitError
    from ..movie import MOVIE_CONTAINERS
    from ..video import VIDEO_FORMATS, check_video_folder, video_format
    from ._common import check_writable_dir
    out = Path(out)
    video_format(out)
    if crf is not None and out.suffix.lower() not in MOVIE_CONTAINERS:
        raise DiffkitError(f"--crf applies to an --out ending in {' or '.join(MOVIE_CONTAINERS)}; "
                           f"{out.suffix.lower() or 'no suffix'} is lossless or has no rate factor")
    if out.is_dir():
        raise DiffkitError(f"--out {str(out)!r} is a folder; give a file name ending in {', '.join(VIDEO_FORMATS)}")
    made = missing_dirs(out.parent) + (missing_dirs(individual) if individual else [])
    check_writable_dir(out.parent)
    if individual:
        check_writable_dir(individual)
        check_video_folder(individual, count, suffix=out.suffix.lower())
    return made


def read_images(files) -> list:
    """``--image`` files as RGB PIL images; one line for a missing or unreadable one."""
    from PIL import Image

    from ..errors import DiffkitError
    images = []
    for file in files:
        try:
            with Image.open(file) as image:
                images.append(image.convert("RGB"))
        except FileNotFoundError:
            raise DiffkitError(f"--image {str(file)!r} does not exist; give a PNG file") from None
        except (OSError, SyntaxError, ValueError) as err:
            raise DiffkitError(f"--image {str(file)!r} is not a readable image: {err}") from None
    return images


def check_strength(args, steps: int, strength: float) -> None:
    """One line for a ``--strength`` (default ``strength``) that keeps no step of ``--steps`` (default ``steps``):
    min(int(N S), N) < 1 (:func:`diffkit.editing.strength_grid`), before any weight is read."""
    from ..errors import DiffkitError
    steps = args.steps or steps
    strength = strength if args.strength is None else args.strength
    if min(int(steps * strength), steps) < 1:
        raise DiffkitError(f"--strength {strength:g} keeps int({steps} * {strength:g}) = 0 of {steps} steps; allowed: "
                           f"at least 1/{steps} (or more --steps)")


def video_frames(videos: list) -> int:
    """The one frame count of ``--video``'s videos, where a kind's output has its input's frames; one line for
    several counts."""
    from ..errors import DiffkitError
    counts = sorted({len(v) for v in videos})
    if len(counts) > 1:
        raise DiffkitError(f"--video files of {counts} frames are not allowed; give videos of one frame count (the "
                           f"output's)")
    return counts[0]


def read_videos(files) -> list:
    """``--video`` files (animations, or folders of frame PNGs) as (T, 3, H, W) videos in [-1, 1]
    (:func:`diffkit.video.read_video`); one line for a missing or unreadable one."""
    from ..errors import DiffkitError
    from ..video import read_video
    videos = []
    for file in files:
        if not Path(file).exists():
            raise DiffkitError(f"--video {str(file)!r} does not exist; give an animated PNG, WebP or GIF, a movie "
                               f"(.mp4 ...) or a folder of frame PNGs")
        try:
            videos.append(read_video(file))
        except DiffkitError as err:
            raise DiffkitError(f"--video {str(file)!r}: {err}") from None
    return videos


def run(args) -> int:
    import torch

    from ..config import resolve_device
    from ..memory import batches_with_oom_retry
    from ..video import save_video_grid, save_videos
    from ._common import check_lora_flags, removed_if_empty_on_failure

    kind = video_kind(args.checkpoint)
    check_flags(args, kind)
    check_lora_flags(args)
    count = request_count(args, kind)
    kind.check_folder(args.checkpoint)
    kind.check_request(args)
    images = read_images(args.images) if args.images else None
    videos_in = read_videos(args.videos) if args.videos else None
    if videos_in is not None:
        kind.check_videos(args, videos_in)
    made = check_outputs(args.out, args.individual, count, args.crf)
    fps = kind.fps if args.fps is None else args.fps
    options = {dest: getattr(args, dest) for dest in kind.takes - {"images", "videos", "lora", "guidance_convention"}
               if getattr(args, dest, None) is not None}
    if "guidance_scale" in options:
        options["convention"] = args.guidance_convention
    with removed_if_empty_on_failure(made):
        model = kind.load(args.checkpoint, resolve_device(args.device), args.progress,
                          **({"lora": args.lora} if "lora" in kind.takes else {}))

        def generate(start: int, n: int):
            prompts = (args.prompts or [None]) * n if len(args.prompts or []) <= 1 else args.prompts[start:start + n]
            batch = None if images is None else (images * n if len(images) == 1 else images[start:start + n])
            clips = {} if "videos" not in kind.takes else {"videos": None if videos_in is None else (
                videos_in * n if len(videos_in) == 1 else videos_in[start:start + n])}
            out = kind.generate(model, prompts, batch, seed=args.seed + start, progress=args.progress,
                                **clips, **options)
            return tuple(o.cpu() for o in (out if isinstance(out, tuple) else (out,)))  # (videos[, audio])

        results = [r[1:] for r in batches_with_oom_retry(generate, count, args.batch_size)]
        videos = torch.cat([r[0] for r in results])
        quality = {} if args.crf is None else {"crf": args.crf}
        if len(results[0]) > 1:  # a kind with sound (LTX-2): the waveforms at its sample rate
            quality.update(audio=torch.cat([r[1] for r in results]), sample_rate=kind.sample_rate(model))
        save_video_grid(videos, args.out, nrow=args.nrow, fps=fps, **quality)
        if args.individual:
            save_videos(videos, args.individual, suffix=Path(args.out).suffix.lower(), fps=fps, **quality)
    frames, size = videos.shape[1], f"{videos.shape[4]}x{videos.shape[3]}"
    print(f"wrote {count} videos of {frames} frames ({size}, {fps:g} fps) to {args.out}"
          + (f" and {args.individual} (video_00000{Path(args.out).suffix.lower()} ...)" if args.individual else "")
          + f"; {kind.label} folder {args.checkpoint}")
    return 0
