"""``diffkit sample --checkpoint CHROMA_FOLDER --prompt TEXT`` and ``diffkit edit --checkpoint CHROMA_FOLDER --images
PNG|DIR --prompt TEXT``: a Chroma diffusers folder (:mod:`diffkit.interop.chroma`) as ``ChromaPipeline`` /
``ChromaImg2ImgPipeline`` / ``ChromaInpaintPipeline`` with any diffkit sampler, dispatched from
:func:`diffkit.commands.sample.sample_to_files` and :func:`diffkit.commands.edit.run`."""
from __future__ import annotations

from typing import Optional

from ..errors import DiffkitError

TAKES = ("--prompt, --negative-prompt, --guidance-scale (--guidance-convention), --max-sequence-length, --height / "
         "--width, --ip-adapter (XLabs), --lora, --textual-inversion (T5's width), --steps / --nfe, --sampler and its "
         "grid options (--flow-shift with another sampler than the pipeline's loop)")
EDIT_TAKES = ("--images, --mask, --prompt, --negative-prompt, --guidance-scale (--guidance-convention), --strength, "
              "--max-sequence-length, --posterior, --height / --width, --ip-adapter (XLabs), --lora, "
              "--textual-inversion (T5's width), --steps, --sampler and its grid options, --eta")
EDIT_FLAGS = {  # diffkit edit's dests a Chroma folder takes (the rest must stay at their defaults)
    "command", "func", "checkpoint", "images", "mask", "out", "prompts", "negative_prompt", "max_sequence_length",
    "strength", "sampler", "steps", "spacing", "final", "eta", "guidance_scale", "guidance_convention", "posterior",
    "seed", "batch_size", "device", "progress", "height", "width", "lora", "textual_inversion",
    "ip_adapter", "ip_adapter_image", "image_encoder", "negative_ip_adapter_image"}  # (._ip_adapter checks them)
NO_ADAPTER_EDIT_FLAGS = EDIT_FLAGS - {"lora", "textual_inversion", "ip_adapter", "ip_adapter_image", "image_encoder",
                                     "negative_ip_adapter_image"}  # Qwen-Image's and Z-Image's (they take no adapters)


def _guidance(guidance) -> dict:
    """``text_to_image`` / ``image_to_image``'s guidance options of ``--guidance-scale`` (default the pipeline's
    5.0 in diffusers' convention; given: in ``--guidance-convention``'s)."""
    if guidance.guidance_scale is None:
        return {"guidance_scale": None, "convention": "diffusers"}
    return {"guidance_scale": guidance.guidance_scale, "convention": guidance.convention}


class Family:
    """What ``diffkit sample`` / ``diffkit edit`` need of a Chroma-like folder kind (Chroma here; Qwen-Image:
    :mod:`._qwen_image`, Z-Image: :mod:`._z_image`): its label, the flags it takes (``lora``: --lora;
    ``adapters``: --textual-inversion and --ip-adapter too), its loader and library functions, its own guidance
    options."""

    kind, takes, edit_takes, edit_flags, adapters, lora = "Chroma", TAKES, EDIT_TAKES, EDIT_FLAGS, True, True
    samples, resizes = True, False  # diffkit sample takes it; diffkit edit resizes its images itself (Qwen-Image-Edit)
    image_mode = "RGB"  # diffkit edit reads its --images so (Qwen-Image 2.1's: RGBA, ._qwen_image21)
    edits = True  # diffkit edit takes it (not Bria 3.2, Ovis-Image nor a LongCat-Image text-to-image folder)
    no_edit = "diffusers 0.42.1 has no img2img or inpainting pipeline for it"  # (edits False: diffkit edit's refusal)
    controlnet = False  # diffkit sample / edit take --controlnet (Z-Image's, ._z_image; Qwen-Image's, ._qwen_image)
    options = ()  # diffkit sample's dests of the kind's own library options it takes (._family_options)

    @staticmethod
    def load(directory, device, progress, lora=None, textual_inversion=None):
        from ..interop.chroma import load_chroma
        return load_chroma(directory, device, progress=progress, lora=lora, textual_inversion=textual_inversion)

    @staticmethod
    def functions() -> tuple:
        """(text_to_image, image_to_image) of the kind's interop module."""
        from ..interop.chroma import image_to_image, text_to_image
        return text_to_image, image_to_image

    @staticmethod
    def guide(request) -> dict:
        """More keyword arguments of the library functions, from the prompt request (none for Chroma)."""
        return {}

    @staticmethod
    def reference_options(model, files, height, width) -> tuple:
        """({text_to_image keywords}, height, width) of ``--reference-image`` files (None here: only a Z-Image Omni
        folder takes them, :mod:`._z_image`; ``diffkit sample`` refuses them on the others first)."""
        return {}, height, width

    @classmethod
    def check_request(cls, directory, request, edit: bool = False) -> None:
        """One line, before loading, for a prompt request (of ``diffkit sample``, or with ``edit`` of ``diffkit
        edit``) the kind does not take (none for Chroma; OmniGen's: :mod:`._omnigen`)."""

    control_from_noise = False  # diffkit edit --controlnet samples from noise, its images the control images (Qwen)

    @staticmethod
    def check_control(control, mask=False, strength=None) -> None:
        """One line, before any weight is read, for ControlNet flags the kind's pipeline does not take (``mask`` /
        ``strength``: diffkit edit's; none here)."""

    @classmethod
    def edit_control(cls, args, count: int, mask):
        """``diffkit edit``'s ControlNet request (a :class:`~._controlnet.ControlRequest` or None), checked."""
        from ._controlnet import ControlRequest
        control = ControlRequest.from_args(args, args.checkpoint, edited=count)
        if control is not None:
            cls.check_control(control, mask, args.strength)
        return control

    @staticmethod
    def control_options(controlnet, cond: dict) -> dict:
        """The library function's ControlNet keywords for a batch of ``diffkit sample`` (``cond``: its rows)."""
        return {}

    @staticmethod
    def edit_control_options(controlnet, start: int, n: int) -> dict:
        """The image_to_image ControlNet keywords for ``diffkit edit``'s images start .. start + n - 1."""
        return {}

    @staticmethod
    def edit_inputs(args) -> dict:
        """More image_to_image keywords of ``diffkit edit``'s own flags of the kind, read and checked before any
        weight (none here; a Qwen-Image-Edit-Plus folder's ``--image-reference`` pictures: :mod:`._qwen_image`)."""
        return {}

    @staticmethod
    def edit_batch_inputs(inputs: dict, count: int):
        """``(start, n) -> dict``: :meth:`edit_inputs`' keywords for ``diffkit edit``'s images start .. start + n - 1
        of ``count``, checked against ``count`` before any weight (the same for every batch here; a GLM-Image
        folder's ``--prompt-references``: each image's own, :mod:`._glm_image`)."""
        return lambda start, n: inputs


def folder_family(directory) -> Optional[type]:
    """The :class:`Family` of a Chroma, Qwen-Image, Z-Image, Bria 3.2 / FIBO / FIBO 2, LongCat-Image, Ovis-Image,
    OmniGen, ERNIE-Image, Krea 2, NucleusMoE-Image, Qwen-Image 2.1, HunyuanImage (refiner), GLM-Image, DreamLite
    (Mobile), JoyImage Edit, Cosmos or Ideogram 4 folder; None for any other checkpoint."""
    from ..interop.chroma import is_chroma_folder
    from ..interop.qwen_image import is_qwen_image_folder
    from ..interop.z_image import is_z_image_folder
    if is_chroma_folder(directory):
        return Family
    if is_qwen_image_folder(directory):
        from ..interop.sd_xl import pipeline_class
        from ._qwen_image import QwenImageEditFamily, QwenImageFamily
        from ..interop.qwen_image import EDIT_PIPELINES, LAYERED_PIPELINE
        if pipeline_class(directory) == LAYERED_PIPELINE:
            from ._qwen_image_layered import QwenImageLayeredFamily
            return QwenImageLayeredFamily
        return QwenImageEditFamily if pipeline_class(directory) in EDIT_PIPELINES else QwenImageFamily
    if is_z_image_folder(directory):
        from ..interop.sd_xl import pipeline_class
        from ..interop.z_image import Z_IMAGE_OMNI_PIPELINE
        from ._z_image import ZImageFamily, ZImageOmniFamily
        return ZImageOmniFamily if pipeline_class(directory) == Z_IMAGE_OMNI_PIPELINE else ZImageFamily
    from ..interop.bria import is_bria_folder
    from ..interop.bria_fibo import is_bria_fibo_folder
    from ..interop.bria_fibo2 import is_bria_fibo2_folder
    if is_bria_fibo2_folder(directory):
        from ._bria_fibo2 import BriaFibo2Family
        return BriaFibo2Family
    if is_bria_fibo_folder(directory):
        from ..interop.bria_fibo import FIBO_EDIT_PIPELINE
        from ..interop.sd_xl import pipeline_class
        from ._bria_fibo import BriaFiboEditFamily, BriaFiboFamily
        return BriaFiboEditFamily if pipeline_class(directory) == FIBO_EDIT_PIPELINE else BriaFiboFamily
    if is_bria_folder(directory):
        from ._bria import BriaFamily
        return BriaFamily
    from ..interop.longcat_image import EDIT_PIPELINE, is_longcat_folder
    if is_longcat_folder(directory):
        from ..interop.sd_xl import pipeline_class
        from ._longcat_image import LongCatImageEditFamily, LongCatImageFamily
        return LongCatImageEditFamily if pipeline_class(directory) == EDIT_PIPELINE else LongCatImageFamily
    from ..interop.ovis_image import is_ovis_image_folder
    if is_ovis_image_folder(directory):
        from ._ovis_image import OvisImageFamily
        return OvisImageFamily
    from ..interop.omnigen import is_omnigen_folder
    if is_omnigen_folder(directory):
        from ._omnigen import OmniGenFamily
        return OmniGenFamily
    from ..interop.ernie_image import is_ernie_image_folder
    if is_ernie_image_folder(directory):
        from ._ernie_image import ErnieImageFamily
        return ErnieImageFamily
    from ..interop.krea2 import is_krea2_folder
    if is_krea2_folder(directory):
        from ._krea2 import Krea2Family
        return Krea2Family
    from ..interop.nucleusmoe import is_nucleusmoe_folder
    if is_nucleusmoe_folder(directory):
        from ._nucleusmoe import NucleusMoEFamily
        return NucleusMoEFamily
    from ..interop.qwen_image21 import is_qwen_image21_folder
    if is_qwen_image21_folder(directory):
        from ._qwen_image21 import QwenImage21Family
        return QwenImage21Family
    from ..interop.hunyuan_image import is_hunyuan_image_folder
    if is_hunyuan_image_folder(directory):
        from ..interop.hunyuan_image import HUNYUAN_IMAGE_REFINER
        from ..interop.sd_xl import pipeline_class
        from ._hunyuan_image import HunyuanImageFamily, HunyuanImageRefinerFamily
        return HunyuanImageRefinerFamily if pipeline_class(directory) == HUNYUAN_IMAGE_REFINER else HunyuanImageFamily
    from ..interop.glm_image import is_glm_image_folder
    if is_glm_image_folder(directory):
        from ._glm_image import GlmImageFamily
        return GlmImageFamily
    from ..interop.dreamlite import MOBILE_PIPELINE, is_dreamlite_folder
    if is_dreamlite_folder(directory):
        from ..interop.sd_xl import pipeline_class
        from ._dreamlite import DreamLiteFamily, DreamLiteMobileFamily
        return DreamLiteMobileFamily if pipeline_class(directory) == MOBILE_PIPELINE else DreamLiteFamily
    from ..interop.joyimage import is_joyimage_folder
    if is_joyimage_folder(directory):
        from ._joyimage import JoyImageFamily
        return JoyImageFamily
    from ..interop.cosmos2 import is_cosmos_folder
    if is_cosmos_folder(directory):  # every Cosmos pipeline's: load_cosmos2 refuses all but Predict2 text-to-image
        from ._cosmos2 import Cosmos2Family
        return Cosmos2Family
    from ..interop.ideogram4 import is_ideogram4_folder
    if is_ideogram4_folder(directory):
        from ._ideogram4 import Ideogram4Family
        return Ideogram4Family
    return None


def sample_chroma(directory, *, sampler="ddim", steps=None, nfe=None, num=None, nrow=None, out=None, individual=None,
                  seed=0, device="cpu", batch_size="auto", spacing=None, final=None, scale=1, progress=True,
                  guidance=None, refused: Optional[dict] = None, height=None, width=None, ip_adapter=None,
                  lora=None, textual_inversion=None, family=Family, control=None, **options):
    """Sample a Chroma folder to a grid (and single PNGs) at ``height`` x ``width`` (default 128 f; multiples of
    2 f; the shift follows the size): rows as :func:`~.sample.condition_rows`, sample i from ``seed + i`` (z at
    s = 1, drawn unpacked as the pipeline), 35 steps, CFG against ``--negative-prompt`` (default "") with s = 5.0
    by default; ``ddim`` without a grid option steps on the pipeline's sigmas (ChromaPipeline's loop), any other
    sampler on its diffkit grid of the size's flow schedule. ``refused``: {flag: value} of flags a Chroma folder
    does not take (one line for the first given, as for every other guidance kind, ``--controlnet``, ...).
    ``ip_adapter``: an XLabs-format IP-Adapter (a :class:`~._ip_adapter.IPAdapterRequest`, ``--negative-ip-adapter-
    image`` for CFG's negative pass), as the pipeline's ``load_ip_adapter`` + ``ip_adapter_image``. ``lora``: LoRA
    files ((path, scale) pairs) merged into the transformer as the pipeline's ``load_lora_weights`` + ``fuse_lora``
    (:func:`~diffkit.interop.chroma.load_chroma`); ``textual_inversion``: embeddings of T5's width added to its
    tokenizer and encoder as the pipeline's ``load_textual_inversion``. ``family``: the folder kind (:class:`Family`;
    a Qwen-Image folder's, :mod:`._qwen_image`: 50 steps, true CFG s = 4.0 only with ``--negative-prompt``, LoRA
    files; a Z-Image folder's, :mod:`._z_image`, LoRA files; neither takes the other adapters: ``refused`` holds
    them). ``control``: the family's ControlNet (:attr:`Family.controlnet`; a :class:`~._controlnet.ControlRequest`,
    checked by ``family.check_control`` before any weight is read; :meth:`Family.control_options` passes it on).
    """
    from ._pixart import checked_request
    from ._sd3 import pipeline_loop, prompted_rows
    from .sample import draw_prompted_grid

    files = options.pop("reference_images", None)  # --reference-image: a Z-Image Omni folder's (._z_image)
    guidance = checked_request(directory, family.kind, family.takes, guidance, options, refused,
                               keys=("refiner", "t2i_adapter", "redux", "thresholding"))
    family.check_request(directory, guidance)
    if control is not None:
        family.check_control(control)
    text_to_image = family.functions()[0]
    chroma = family.load(directory, device, progress, lora=lora, textual_inversion=textual_inversion)
    references, height, width = family.reference_options(chroma, files, height, width)
    controlnet, adapter, prompts, _, num, nrow, per_sample = prompted_rows(chroma, guidance, control, ip_adapter,
                                                                           num, nrow, seed, device, progress)
    own = pipeline_loop(sampler, spacing, final, nfe)
    steps = chroma.default_steps if steps is None and nfe is None else steps
    how_guided = {**_guidance(guidance), **family.guide(guidance), **(guidance.family_options or {})}
    chroma.check_guidance_scale(how_guided["guidance_scale"])  # before any sampling
    from ._family_options import check_schedule_length, probe_guidance
    check_schedule_length(how_guided, own, steps)
    if own:  # --flow-shift's and the scheduler's refusals (Qwen-Image's shift_terminal at one step) before sampling
        from ..interop.flow_latents import pipeline_grid
        h, w = chroma.latent_shape(1, height, width)[2:]
        pipeline_grid(None, None, steps, None, steps, lambda n: chroma.scheduler_grid(n, h, w),
                      options.get("flow_shift"))
    one_step = bool(chroma.scheduler_config.get("shift_terminal")) or getattr(chroma, "min_loop_steps", 1) > 1
    # (refused above: only the batch-size probe's one step; Cosmos Predict2's loop needs 2)

    def prompted(_, noise, sampler, steps, *, cond, spacing=None, final=None, nfe=None, **how):
        grid = {"grid": "scheduler"} if own and pipeline_loop(sampler, spacing, final, nfe) else \
            {"spacing": spacing, "final": final, "nfe": nfe}
        steps = 2 if one_step and steps == 1 and grid.get("grid") else steps  # the probe: the same peak memory
        return text_to_image(chroma, cond["prompts"], sampler=sampler, steps=steps, seed=None, latents=noise,
                             negative_prompt=guidance.negative_prompt, return_latents=True,
                             max_sequence_length=guidance.max_sequence_length, ip_adapter=adapter,
                             **probe_guidance(how_guided, steps, bool(grid.get("grid"))), **grid, **how,
                             **family.control_options(controlnet, cond), **references)

    images, out = draw_prompted_grid(
        chroma.denoiser, num, chroma.latent_shape(1, height, width)[1:], prompted,
        per_sample, chroma.decode, out,
        individual, nrow, scale, seed=seed, sampler=sampler, steps=steps, nfe=nfe, spacing=spacing, final=final,
        batch_size=batch_size, device=device, dtype=chroma.dtype, progress=progress, **options)
    grid = "the pipeline's sigmas" if own else "its diffkit grid"
    print(f"wrote {out} ({num} samples, {sampler} on {grid}, {family.kind} folder {directory}, prompts {prompts})")
    return images


def edit_chroma(args, family=Family) -> int:
    """``diffkit edit`` on a Chroma folder: each ``--images`` file edited as ChromaImg2ImgPipeline
    (:func:`diffkit.interop.chroma.image_to_image`: strength 0.9, 35 steps, CFG s = 5.0 against
    ``--negative-prompt`` by default; image i from ``--seed`` + i, the posterior sample then the noise; ``ddim``
    without a grid option on the pipeline's sigmas cut by get_timesteps); with ``--mask`` inpainted as
    ChromaInpaintPipeline (its strength 0.6, 28 steps, CFG 7.0, T5 length 256 by default). Every other edit flag
    (``--padding-mask-crop``: :func:`~diffkit.interop.mask_crop.check_mask_crop`): one line, before any weight is
    read or any folder is made. ``--ip-adapter FILE[:S]
    --ip-adapter-image PNG`` (``--negative-ip-adapter-image``): the pipeline's XLabs IP-Adapter, as in sampling;
    ``--lora FILE[:S]`` / ``--textual-inversion FILE[:TOKEN]``: as in sampling. ``family``: the folder kind
    (:class:`Family`; a Qwen-Image folder's, :mod:`._qwen_image`: QwenImageImg2ImgPipeline /
    QwenImageInpaintPipeline, strength 0.6 and 50 steps both, true CFG s = 4.0 only with ``--negative-prompt``; a
    Z-Image folder's, :mod:`._z_image`; both take ``--lora`` alone; a Z-Image folder's ``--mask`` with ``--controlnet``:
    ZImageControlNetInpaintPipeline, :mod:`diffkit.interop.z_image_controlnet`)."""
    import torch

    from ..config import resolve_device
    from ..images import check_image_folder, save_images
    from ..memory import batches_with_oom_retry
    from ._common import check_writable_dir, missing_dirs, removed_if_empty_on_failure
    from ._ip_adapter import IPAdapterRequest
    from ._pixart import check_folder_edit_args
    from ._sd3 import edit_sampling
    from .edit import read_edit_inputs

    directory = args.checkpoint
    check_folder_edit_args(args, family.edit_flags, family.kind, family.edit_takes)
    inputs = family.edit_inputs(args)  # the kind's own inputs (a Qwen-Image-Edit-Plus folder's --image-reference)
    info, own, options, request = edit_sampling(args, directory)
    family.check_request(directory, request, edit=True)
    images, files, mask = read_edit_inputs(args, family.image_mode)  # --height / --width: resized as the pipeline
    count = len(files)
    if len(args.prompts) not in (1, count):
        raise DiffkitError(f"--prompt is given {len(args.prompts)} times for {count} images; give it once (every "
                           f"image) or once per image ({count}, in the files' order)")
    inputs_of = family.edit_batch_inputs(inputs, count)
    ip_adapter = IPAdapterRequest.from_args(args, directory)
    control = family.edit_control(args, count, mask) if family.controlnet else None
    out, device = args.out, resolve_device(args.device)
    new_dirs = missing_dirs(out)
    chroma = family.load(directory, device, args.progress, lora=args.lora, textual_inversion=args.textual_inversion)
    image_to_image = family.functions()[1]
    adapter = None if ip_adapter is None else ip_adapter.load(device, chroma.dtype, args.progress)
    controlnet = None if control is None else control.load(device, chroma.dtype, args.progress)
    if not family.resizes:
        chroma.latent_shape(1, images.shape[2], images.shape[3])  # the images' size fits the VAE and patches
    how_guided = {**_guidance(request), **family.guide(request)}
    chroma.check_guidance_scale(how_guided["guidance_scale"])
    check_writable_dir(out)
    check_image_folder(out, count, prefix="edit")

    area = {"area": args.max_area} if family.resizes and args.max_area else {}  # Qwen-Image-Edit's target area

    def edit(start: int, n: int):
        prompts = args.prompts * n if len(args.prompts) == 1 else args.prompts[start:start + n]
        if controlnet is not None and family.control_from_noise:  # Qwen-Image's inpainting ControlNet: the
            # images are its control images, sampled from noise (QwenImageControlNetInpaintPipeline)
            return (family.functions()[0](
                chroma, prompts, sampler=None if own else info.name, steps=args.steps, seed=args.seed + start,
                height=images.shape[2], width=images.shape[3], negative_prompt=args.negative_prompt,
                max_sequence_length=args.max_sequence_length, output_range="-1,1", progress=args.progress,
                controlnet=controlnet, control_seed=args.seed + start, control_mask=mask,
                control_posterior=args.posterior or "sample",
                control_rows=list(range(start, start + n)) if controlnet.per_prompt > 1 else None, **how_guided,
                **({} if own else options)).cpu(),)
        controls = {} if controlnet is None else family.edit_control_options(controlnet, start, n)
        return (image_to_image(chroma, images[start:start + n], prompts, args.strength, mask=mask,
                               sampler=None if own else info.name, steps=args.steps,
                               negative_prompt=args.negative_prompt, posterior=args.posterior or "sample",
                               seed=args.seed + start, max_sequence_length=args.max_sequence_length,
                               output_range="-1,1", progress=args.progress, ip_adapter=adapter, **how_guided,
                               **area, **controls, **inputs_of(start, n), **({} if own else options)).cpu(),)

    with removed_if_empty_on_failure(new_dirs):  # a batch out of memory is halved and redrawn (seed + i)
        results = [edited for _, edited in batches_with_oom_retry(edit, count, args.batch_size or 16)]
        save_images(torch.cat(results), out, prefix="edit")
    how = "the scheduler's sigmas" if own else f"{info.name} on its diffkit grid"
    strength = "" if family.resizes else (", an inpainting ControlNet, from noise" if family.control_from_noise else
                                          f", ControlNet {control.folders[0]}") if control is not None else \
        f", strength {args.strength or (chroma.img2img_defaults if mask is None else chroma.inpaint_defaults)[1]}"
    print(f"wrote {count} {'edited' if mask is None else 'inpainted'} images to {out} (edit_00000.png ...; "
          f"{family.kind} folder {directory}{strength}, {how}, prompts {list(args.prompts)})")
    return 0
