"""``diffkit video --checkpoint ANIMATEDIFF_FOLDER --controlnet DIR --control-video FILE --prompt TEXT``: an
``AnimateDiffPipeline`` folder with ControlNets, as ``AnimateDiffControlNetPipeline``
(:mod:`diffkit.interop.animatediff_controlnet`; docs/interop/animatediff_controlnet.md). The flags follow ``diffkit
sample``'s ControlNet flags (:mod:`._controlnet`): ``--controlnet DIR`` (repeat for Multi-ControlNet) with one
``--control-video FILE`` each (an animation, a movie or a folder of frame PNGs: the output's frames, every video's
control), ``--controlnet-scale``, ``--control-guidance-start`` / ``--control-guidance-end`` (one value, or one per
ControlNet); no guess mode. A ``SparseControlNetModel`` folder as ``--controlnet`` is SparseCtrl
(``AnimateDiffSparseControlNetPipeline``, :mod:`diffkit.interop.animatediff_sparsectrl`): its ``--control-video``'s
K frames (a still image: one) at the K ``--control-frame-index`` frames (default 0), ``--frames`` the output's.
Everything is checked from the JSON and the control videos before any weight is read."""
from __future__ import annotations

from pathlib import Path

from ..errors import DiffkitError

# the dests of the group (named as the flags, so the video command's messages name the flags)
CONTROL_DESTS = frozenset({"controlnet", "control_video", "controlnet_scale", "control_guidance_start",
                           "control_guidance_end", "control_frame_index"})
SPARSE = "SparseControlNetModel"


def add_animatediff_control_flags(parser) -> None:
    """The "AnimateDiff ControlNet" argument group of ``diffkit video``."""
    from ._common import int_in, non_negative_float, path_arg
    group = parser.add_argument_group("AnimateDiff ControlNet (AnimateDiffPipeline folders; "
                                      "docs/interop/animatediff_controlnet.md)")
    group.add_argument("--controlnet", action="append", type=path_arg, metavar="DIR",
                       help="a Stable Diffusion 1.x diffusers ControlNetModel folder made for the folder's UNet (as "
                            "AnimateDiffControlNetPipeline; repeat for Multi-ControlNet: their residuals add up), or "
                            "one SparseControlNetModel folder (SparseCtrl, see --control-frame-index)")
    group.add_argument("--control-video", action="append", type=path_arg, metavar="FILE",
                       help="the control video of each --controlnet (an animated PNG, WebP or GIF, a movie or a "
                            "folder of frame PNGs): frame f conditions frame f of every video; the output has its "
                            "frames, and its frames are resized to the output's size (SparseCtrl: its keyframes, a "
                            "still image for one)")
    group.add_argument("--controlnet-scale", action="append", type=non_negative_float, metavar="S",
                       help="controlnet_conditioning_scale (default 1; one, or one per --controlnet)")
    group.add_argument("--control-guidance-start", action="append", type=float, metavar="F",
                       help="the fraction of the steps before which the ControlNet is off (default 0)")
    group.add_argument("--control-guidance-end", action="append", type=float, metavar="F",
                       help="the fraction of the steps after which the ControlNet is off (default 1)")
    group.add_argument("--control-frame-index", action="append", type=int_in(0, 100_000), metavar="N",
                       help="SparseCtrl (a SparseControlNetModel --controlnet): the output frame of each frame of its "
                            "--control-video, in order (the pipeline's controlnet_frame_indices; default 0)")


def _options(args, count: int) -> tuple:
    """(scales, starts, ends), one per ControlNet, checked (:func:`~diffkit.interop.controlnet.check_control_options`);
    a single value is every ControlNet's."""
    from ..interop.controlnet import check_control_options
    values = []
    for flag, given, default in (("--controlnet-scale", args.controlnet_scale, 1.0),
                                 ("--control-guidance-start", args.control_guidance_start, 0.0),
                                 ("--control-guidance-end", args.control_guidance_end, 1.0)):
        given = given or [default]
        if len(given) not in (1, count):
            raise DiffkitError(f"{flag} is given {len(given)} times for {count} --controlnet; give it once or once "
                               f"per --controlnet")
        values.append(given * count if len(given) == 1 else given)
    return check_control_options(*values, count)


def read_control_videos(files) -> list:
    """``--control-video`` files as lists of PIL frames (their exact 8-bit pixels, as the pipeline takes them);
    one line for a missing or unreadable one."""
    from PIL import Image

    from ..images import to_uint8
    from ..video import read_video
    videos = []
    for file in files:
        try:
            videos.append([Image.fromarray(frame) for frame in to_uint8(read_video(file))])
        except DiffkitError as err:
            raise DiffkitError(f"--control-video {str(file)!r}: {err}") from None
    return videos


def check_control_request(args) -> tuple:
    """One line, before any weight is read, for control flags without ``--controlnet``, counts that do not fit, a
    bad scale or window, a ControlNet folder of another class, of guess mode (``global_pool_conditions``) or of other
    blocks than the folder's UNet (its JSON), control videos of several frame counts or another count than
    ``--frames``; (the output's frames: the control videos', the flag that set them). A SparseControlNetModel:
    :func:`check_sparse_request`."""
    from types import SimpleNamespace

    from ..errors import read_json_object
    from ..interop.animatediff_controlnet import image_blocks
    from ..interop.controlnet import check_controlnet, model_folder_config
    folders, files = args.controlnet or [], args.control_video or []
    if not folders:
        given = [flag for flag, dest in (("--control-video", "control_video"), ("--controlnet-scale",
                 "controlnet_scale"), ("--control-guidance-start", "control_guidance_start"),
                 ("--control-guidance-end", "control_guidance_end")) if getattr(args, dest)]
        if given:
            raise DiffkitError(f"{given[0]} needs --controlnet DIR")
    if args.control_frame_index and not folders:
        raise DiffkitError("--control-frame-index needs --controlnet DIR (a SparseControlNetModel folder)")
    if len(files) != len(folders):
        raise DiffkitError(f"{len(files)} --control-video for {len(folders)} --controlnet; give one control video per "
                           f"--controlnet")
    classes = [model_folder_config(directory, "--controlnet", ("ControlNetModel", SPARSE),
                                   " (a Stable Diffusion 1.x ControlNet or SparseCtrl model, as the AnimateDiff "
                                   "ControlNet pipelines)")["_class_name"] for directory in folders]
    if SPARSE in classes:
        return check_sparse_request(args, folders[0], files[0], classes)
    if args.control_frame_index:
        raise DiffkitError("--control-frame-index applies to a SparseControlNetModel --controlnet (SparseCtrl); these "
                           "ControlNets take a control video of the output's frames")
    _options(args, len(folders))
    folder = Path(args.checkpoint)
    unet = read_json_object(folder / "unet" / "config.json", "unet config")
    vae = read_json_object(folder / "vae" / "config.json", "vae config")
    factor = 2 ** (len(vae.get("block_out_channels", (0,) * 4)) - 1)
    for directory in folders:
        config = read_json_object(Path(directory) / "config.json", "--controlnet config")
        if config.get("global_pool_conditions"):
            raise DiffkitError(f"--controlnet {directory} has global_pool_conditions (guess mode), which diffkit does "
                               f"not drive with AnimateDiff; give a ControlNet without it")
        check_controlnet(SimpleNamespace(config=config), image_blocks(unet), factor, f"--controlnet {directory}")
    counts = sorted({len(video) for video in read_control_videos(files)})
    if len(counts) > 1:
        raise DiffkitError(f"--control-video files of {' and '.join(map(str, counts))} frames; give control videos of "
                           f"one frame count (the output's)")
    if args.num_frames is not None and args.num_frames != counts[0]:
        raise DiffkitError(f"--frames {args.num_frames} is not allowed with a --control-video of {counts[0]} frames; "
                           f"leave --frames out (the output has the control video's frames)")
    return counts[0], "a --control-video of"


def check_sparse_request(args, directory, file, classes: list) -> tuple:
    """:func:`check_control_request` for SparseCtrl: one ``SparseControlNetModel`` folder alone, no window, one
    scale, its blocks the UNet's (:func:`~diffkit.interop.animatediff_sparsectrl.check_sparse_controlnet`), one
    ``--control-frame-index`` per frame of its ``--control-video`` (one frame: default 0), distinct and below
    ``--frames`` (default 16); (the output's frames, ``--frames``)."""
    from ..errors import read_json_object
    from ..interop.animatediff import ANIMATEDIFF_FRAMES
    from ..interop.animatediff_sparsectrl import check_indices, check_sparse_controlnet
    if len(classes) > 1:
        raise DiffkitError(f"{len(classes)} --controlnet with a SparseControlNetModel; "
                           f"AnimateDiffSparseControlNetPipeline takes one SparseCtrl model alone")
    given = [flag for flag, dest in (("--control-guidance-start", "control_guidance_start"),
                                     ("--control-guidance-end", "control_guidance_end")) if getattr(args, dest)]
    if given or len(args.controlnet_scale or []) > 1:
        raise DiffkitError(f"{given[0] if given else '--controlnet-scale given twice'} with a SparseControlNetModel: "
                           f"AnimateDiffSparseControlNetPipeline takes one scale and no control guidance window")
    config = read_json_object(Path(directory) / "config.json", "--controlnet config")
    check_sparse_controlnet(config, read_json_object(Path(args.checkpoint) / "unet" / "config.json", "unet config"),
                            f"--controlnet {directory}")
    count = len(read_control_videos([file])[0])
    indices = args.control_frame_index or ([0] if count == 1 else [])
    frames = args.num_frames or ANIMATEDIFF_FRAMES
    try:
        check_indices(indices, count, frames)
    except DiffkitError:
        raise DiffkitError(f"--control-frame-index {indices} is not allowed for a --control-video of {count} frames "
                           f"and {frames} output frames; give {count} distinct indices in 0..{frames - 1}") from None
    return frames, "--frames"


def load_controlnet_class(directory) -> str:
    """The ``_class_name`` of a ``--controlnet`` folder's config."""
    from ..errors import read_json_object
    return read_json_object(Path(directory) / "config.json", "--controlnet config").get("_class_name")


def video_controlnets(model, controlnet, control_video, controlnet_scale=None, control_guidance_start=None,
                      control_guidance_end=None, control_frame_index=None, seed=None):
    """The :class:`~diffkit.interop.animatediff_controlnet.VideoControlNets` of the flags (a SparseControlNetModel
    folder: the :class:`~diffkit.interop.animatediff_sparsectrl.SparseControl`), loaded once per model (kept on it:
    ``diffkit video`` calls the kind's ``generate`` once per batch; SparseCtrl's posterior draw from ``seed``, the
    first batch's: ``--seed``, every video's)."""
    from argparse import Namespace

    from ..interop.animatediff_controlnet import VideoControlNets
    from ..interop.controlnet import load_controlnet
    key = (tuple(map(str, controlnet)), tuple(map(str, control_video)), tuple(controlnet_scale or ()),
           tuple(control_guidance_start or ()), tuple(control_guidance_end or ()))
    key += (tuple(control_frame_index or ()),)
    kept = getattr(model, "_command_controlnets", None)
    if (kept is None or kept[0] != key) and load_controlnet_class(controlnet[0]) == SPARSE:
        from ..interop.animatediff_sparsectrl import SparseControl
        from ..interop.controlnet import load_model_folder
        net = load_model_folder(SPARSE, controlnet[0], model.device, model.dtype, progress=False)
        kept = (key, SparseControl(net, read_control_videos(control_video)[0], control_frame_index or [0],
                                   (controlnet_scale or [1.0])[0], seed))
        model._command_controlnets = kept
    if kept is None or kept[0] != key:
        scales, starts, ends = _options(Namespace(controlnet_scale=controlnet_scale, control_guidance_start=
                                                  control_guidance_start, control_guidance_end=control_guidance_end),
                                        len(controlnet))
        models = [load_controlnet(directory, model.device, model.dtype, progress=False) for directory in controlnet]
        kept = (key, VideoControlNets(models, read_control_videos(control_video), scales, starts, ends))
        model._command_controlnets = kept
    return kept[1]


def controlled_video(model, prompts: list, control: dict, **options):
    """The kind's videos with the ControlNet flags ``control`` (their dests): AnimateDiffControlNetPipeline's, or
    SparseCtrl's."""
    from ..interop import animatediff_controlnet, animatediff_sparsectrl
    controls = video_controlnets(model, **control, seed=options.get("seed"))
    sparse = isinstance(controls, animatediff_sparsectrl.SparseControl)
    return (animatediff_sparsectrl if sparse else animatediff_controlnet).text_to_video(model, prompts, controls,
                                                                                       **options)
