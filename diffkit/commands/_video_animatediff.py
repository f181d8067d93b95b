"""``diffkit video --checkpoint ANIMATEDIFF_FOLDER --prompt TEXT``: text-to-video as ``AnimateDiffPipeline``
(:func:`diffkit.interop.animatediff.text_to_video`; docs/interop/animatediff.md), as ``AnimateDiffSDXLPipeline``
(:data:`SDXL_KIND`; the same page), and ``--video FILE [--strength S]`` on an
``AnimateDiffVideoToVideoPipeline`` folder (:func:`diffkit.interop.animatediff.video_to_video`, :data:`V2V_KIND`).
``--controlnet DIR --control-video FILE`` on an ``AnimateDiffPipeline`` folder: as ``AnimateDiffControlNetPipeline``
(:mod:`._video_animatediff_controlnet`).
``diffkit sample`` / ``diffkit edit`` on such a folder: one line naming ``diffkit video``
(:func:`diffkit.interop.animatediff.refuse_animatediff_folder`)."""
from __future__ import annotations

from ._video_animatediff_controlnet import CONTROL_DESTS
from .video import VideoKind

PAG_DESTS = frozenset({"pag_scale", "pag_layers", "pag_adaptive_scale"})  # AnimateDiffPAGPipeline's options


class AnimateDiffKind(VideoKind):
    """An ``AnimateDiffPipeline`` folder: 16 frames of 512 x 512, 50 steps of the folder's scheduler, CFG s = 7.5
    against ``--negative-prompt`` (default ""), ``--clip-skip``, ``--lora`` (SD and motion LoRA files); 10 fps (the
    pipeline's docstring example writes its frames with ``export_to_gif(frames, "animation.gif")``, whose default fps
    is 10 in diffusers 0.42.1); ``--controlnet`` with ``--control-video``: ``AnimateDiffControlNetPipeline``
    (:mod:`._video_animatediff_controlnet`)."""

    label = "AnimateDiff"
    pipelines = ("AnimateDiffPipeline",)
    takes = frozenset({"negative_prompt", "num_frames", "height", "width", "steps", "sampler", "guidance_scale",
                       "guidance_convention", "clip_skip", "lora"}) | CONTROL_DESTS | PAG_DESTS
    fps = 10.0

    def check_folder(self, directory) -> None:
        from ..interop.animatediff import check_animatediff_folder
        check_animatediff_folder(directory, self.pipelines)

    def check_request(self, args) -> None:
        """One line, from the folder's JSON, for a frame count past the motion modules' frame positions, a guidance
        scale that turns CFG off with a negative prompt, or a folder scheduler no sampler computes (no --sampler); with
        the ControlNet flags also theirs (:func:`._video_animatediff_controlnet.check_control_request`)."""
        from pathlib import Path

        from ..errors import DiffkitError, read_json_object
        from ..interop.animatediff import ANIMATEDIFF_FRAMES, folder_sampler
        from ..interop.auraflow import guided
        frames, flag = args.num_frames or ANIMATEDIFF_FRAMES, "--frames"
        if "controlnet" in self.takes and any(getattr(args, dest, None) for dest in CONTROL_DESTS):
            from ._video_animatediff_controlnet import check_control_request
            frames, flag = check_control_request(args)  # the control videos' frames (SparseCtrl: --frames)
        folder = Path(args.checkpoint)
        unet = read_json_object(folder / "unet" / "config.json", "unet config")
        adapter = folder / "motion_adapter" / "config.json"
        if "motion_max_seq_length" not in unet and adapter.is_file():  # a UNet2DConditionModel + motion_adapter/
            unet = read_json_object(adapter, "motion adapter config")
        most = int(unet.get("motion_max_seq_length", 32))
        if frames > most:
            raise DiffkitError(f"{flag} {frames}{'' if flag == '--frames' else ' frames'} is not allowed for "
                               f"{args.checkpoint}; give 1 to {most} (its motion modules' motion_max_seq_length)")
        if args.guidance_scale is not None:
            guided(args.guidance_scale, args.guidance_convention, args.negative_prompt)
        if "pag_scale" in self.takes:
            check_pag_request(args)
        if args.sampler is None:
            folder_sampler(read_json_object(folder / "scheduler" / "scheduler_config.json",
                                            "scheduler config"))

    def load(self, directory, device, progress: bool, lora=None):
        from ..interop.animatediff import load_animatediff
        return load_animatediff(directory, device, progress=progress, lora=lora)

    def generate(self, model, prompts: list, images, *, seed: int, progress: bool, **options):
        from ..interop.animatediff import text_to_video
        control = {dest: options.pop(dest) for dest in CONTROL_DESTS if dest in options}
        if control:  # AnimateDiffControlNetPipeline, AnimateDiffSparseControlNetPipeline
            from ._video_animatediff_controlnet import controlled_video
            return controlled_video(model, prompts, control, seed=seed, progress=progress, output_range="-1,1",
                                    **options)
        return text_to_video(model, prompts, seed=seed, progress=progress, output_range="-1,1", **options)


class AnimateDiffSDXLKind(AnimateDiffKind):
    """An ``AnimateDiffSDXLPipeline`` folder: AnimateDiff's flags and checks on SD-XL (16 frames of 1024 x 1024, 50
    steps, CFG s = 5; :mod:`diffkit.interop.animatediff_sdxl`); 10 fps as the AnimateDiff kind (the pipeline's
    docstring example also exports with ``export_to_gif(frames, "animation.gif")``)."""

    label = "AnimateDiff SD-XL"
    pipelines = ("AnimateDiffSDXLPipeline",)
    takes = AnimateDiffKind.takes - CONTROL_DESTS - PAG_DESTS  # (no SD-XL ControlNet / PAG pipeline in diffusers)

    def check_folder(self, directory) -> None:
        from ..interop.animatediff_sdxl import check_animatediff_sdxl_folder
        check_animatediff_sdxl_folder(directory)

    def load(self, directory, device, progress: bool, lora=None):
        from ..interop.animatediff_sdxl import load_animatediff_sdxl
        return load_animatediff_sdxl(directory, device, progress=progress, lora=lora)


class AnimateDiffVideoKind(AnimateDiffKind):
    """An ``AnimateDiffVideoToVideoPipeline`` folder: ``--video`` noised to ``--strength`` (default 0.8), its frame
    count the output's (``--frames`` refused)."""

    label = "AnimateDiff video-to-video"
    pipelines = ("AnimateDiffVideoToVideoPipeline",)
    takes = AnimateDiffKind.takes - {"num_frames"} - CONTROL_DESTS - PAG_DESTS | {"videos", "strength"}
    needs_video = True

    def check_request(self, args) -> None:
        """:class:`AnimateDiffKind`'s, and a strength that keeps at least one of the steps."""
        from argparse import Namespace

        from ..interop.animatediff import ANIMATEDIFF_STEPS, ANIMATEDIFF_STRENGTH
        from .video import check_strength
        super().check_request(Namespace(**{**vars(args), "num_frames": 1}))  # the videos' frames: check_videos
        check_strength(args, ANIMATEDIFF_STEPS, ANIMATEDIFF_STRENGTH)

    def check_videos(self, args, videos: list) -> None:
        """One frame count, up to the motion modules' frame positions."""
        from argparse import Namespace

        from ..errors import DiffkitError
        from .video import video_frames
        frames = video_frames(videos)
        try:
            super().check_request(Namespace(**{**vars(args), "num_frames": frames}))
        except DiffkitError as err:
            raise DiffkitError(f"--video of {frames} frames: {err}") from None

    def generate(self, model, prompts: list, images, *, seed: int, progress: bool, videos=None, **options):
        from ..interop.animatediff import video_to_video
        return video_to_video(model, videos, prompts, seed=seed, progress=progress, output_range="-1,1", **options)


def check_pag_request(args) -> None:
    """``--pag-scale`` / ``--pag-layers`` / ``--pag-adaptive-scale`` before any weight is read: the options without a
    scale, a negative scale, a layer name that is no regular expression, PAG with ``--controlnet``; one line."""
    from ..errors import DiffkitError, check_range
    from ..interop.sd_pag import check_layer_names
    given = [dest for dest in ("pag_layers", "pag_adaptive_scale") if getattr(args, dest, None) is not None]
    if not args.pag_scale:
        if given and args.pag_scale is None:
            raise DiffkitError(f"--{given[0].replace('_', '-')} needs --pag-scale S (perturbed-attention guidance)")
        check_range("pag_scale", args.pag_scale or 0.0, 0.0, None)
        return
    check_range("pag_scale", args.pag_scale, 0.0, None)
    check_range("pag_adaptive_scale", args.pag_adaptive_scale or 0.0, 0.0, None)
    if args.pag_layers is not None:
        check_layer_names(args.pag_layers)
    if getattr(args, "controlnet", None):
        raise DiffkitError("--pag-scale does not apply with --controlnet (diffusers has no AnimateDiff ControlNet PAG "
                           "pipeline); give one of them")


def add_animatediff_pag_flags(p) -> None:
    """``--pag-scale``, ``--pag-layers``, ``--pag-adaptive-scale`` of ``diffkit video`` (AnimateDiffPipeline folders,
    as ``AnimateDiffPAGPipeline``), in their own group."""
    group = p.add_argument_group("AnimateDiff perturbed-attention guidance")
    group.add_argument("--pag-scale", type=float, metavar="S",
                       help="AnimateDiff folders: perturbed-attention guidance eps + S (eps - eps-hat) as "
                            "AnimateDiffPAGPipeline (Ahn et al. 2024); 0 = off")
    group.add_argument("--pag-layers", metavar="L,...",
                       help="with --pag-scale: diffusers' pag_applied_layers, regular expressions searched in the "
                            "UNet's self-attention names (default mid_block.*attn1)")
    group.add_argument("--pag-adaptive-scale", type=float, metavar="A",
                       help="with --pag-scale: diffusers' pag_adaptive_scale, S_t = max(S - A (1000 - t), 0)")


KIND = AnimateDiffKind()
SDXL_KIND = AnimateDiffSDXLKind()
V2V_KIND = AnimateDiffVideoKind()
