"""``--clip-skip``, ``--prompt-2`` and ``--negative-prompt-2``: the prompt-encoding flags of Stable Diffusion, SD-XL
and SD3 folders in ``diffkit sample`` and ``diffkit edit`` (:mod:`diffkit.interop.sd_prompts`), and SD3's
``--prompt-3``, ``--negative-prompt-3``, ``--max-sequence-length`` (its T5 encoder, :mod:`diffkit.interop.sd3`);
a FLUX.1 folder's ``--prompt-2`` / ``--negative-prompt-2`` (its T5's text), ``--max-sequence-length`` and
``diffkit sample``'s ``--true-cfg-scale`` (:mod:`diffkit.interop.flux`), checked before any weight is read."""
from __future__ import annotations

from ..errors import DiffkitError


def add_prompt_encoding_flags(group, true_cfg: bool = False, lumina: bool = False, z_image: bool = False) -> None:
    """The flags, into ``group`` (a parser or an argument group); ``true_cfg``: with ``--true-cfg-scale``;
    ``lumina``: with a Lumina-Image 2.0 folder's :data:`LUMINA2_FLAGS` and a Lumina-Next one's
    :data:`LUMINA_NEXT_FLAGS`; ``z_image``: with a Z-Image folder's
    :data:`Z_IMAGE_FLAGS`."""
    from ._common import int_in, non_negative_float, positive_float
    if lumina or z_image:
        group.add_argument("--cfg-trunc-ratio", type=non_negative_float, metavar="R",
                           help=("Lumina-Image 2.0 folders: guide only steps i of N with (i + 1) / N <= R "
                                 "(Lumina2Pipeline's cfg_trunc_ratio; default 1, every step); " if lumina else "") +
                           "Z-Image folders: guide only steps with (1000 - t) / 1000 <= R (ZImagePipeline's "
                           "cfg_truncation; default 1)")
        group.add_argument("--cfg-normalization", dest="cfg_norm_cap", type=positive_float, nargs="?", const=1.0,
                           metavar="K", help="Z-Image folders: cap the guided prediction's norm at K (default 1) "
                                             "times the conditional one's (ZImagePipeline's cfg_normalization; "
                                             "default off)")
    if lumina:
        group.add_argument("--no-cfg-normalization", dest="cfg_normalization", action="store_false", default=None,
                           help="Lumina-Image 2.0 folders: no renormalisation of the guided prediction "
                                "(Lumina2Pipeline's cfg_normalization=False)")
        group.add_argument("--scaling-watershed", type=non_negative_float, metavar="W",
                           help="Lumina-Next folders: the RoPE is interpolated while the transformer's time 1 - sigma "
                                "< W, NTK-scaled from there on (LuminaPipeline's scaling_watershed; default 1.0)")
        group.add_argument("--no-proportional-attn", dest="proportional_attn", action="store_false", default=None,
                           help="Lumina-Next folders: no proportional attention (LuminaPipeline's "
                                "proportional_attn=False)")
    group.add_argument("--clip-skip", type=int_in(0, 10_000), metavar="N",
                       help="Stable Diffusion / SD-XL / SD3 folders: the prompts' embeddings N layers below the "
                            "default "
                            "(diffusers' clip_skip; A1111's 'CLIP skip' N + 1; the negative prompt is not skipped, "
                            "as the pipelines'); N < the text encoder's layers")
    group.add_argument("--prompt-2", dest="prompts_2", action="append", metavar="TEXT",
                       help="SD-XL / SD3 / FLUX folders: the text of the second text encoder (FLUX: its T5; "
                            "default: --prompt); once for every prompt, or once per --prompt")
    group.add_argument("--negative-prompt-2", metavar="TEXT",
                       help="SD-XL / SD3 / FLUX folders: the second text encoder's negative prompt (default: "
                            "--negative-prompt)")
    group.add_argument("--prompt-3", dest="prompts_3", action="append", metavar="TEXT",
                       help="SD3 folders: the text of the T5 encoder (default: --prompt); once for every prompt, or "
                            "once per --prompt")
    group.add_argument("--negative-prompt-3", metavar="TEXT",
                       help="SD3 folders: the T5 encoder's negative prompt "
                            "(default: --negative-prompt)")
    group.add_argument("--max-sequence-length", type=int_in(1, 512), metavar="L",
                       help="SD3 / FLUX / Chroma / Bria / PixArt / Sana / Z-Image / Qwen-Image / HiDream / Ovis-Image "
                            "folders: the T5 (Sana: Gemma, Z-Image and Ovis-Image: Qwen3, Qwen-Image: Qwen2.5-VL; "
                            "HiDream: each encoder's, CLIP at most 218) tokens of every prompt (default the "
                            "pipelines': SD3 256, FLUX.1 512, Chroma 512 (inpainting 256), PixArt-α 120, PixArt-Σ and "
                            "Sana 300, Z-Image and Qwen-Image 512, HiDream 128, Bria 128, Ovis-Image 256 (its most), "
                            "Bria FIBO 3000 (SmolLM3; its library takes up to 3000); at most 512)")
    if true_cfg:
        from ._common import positive_float
        group.add_argument("--true-cfg-scale", type=positive_float, metavar="S",
                           help="FLUX folders: FluxPipeline's true classifier-free guidance u_neg + S (u_c - u_neg) "
                                "against --negative-prompt (S > 1; both or neither)")


FLUX_FLAGS = ("--prompt-2", "--negative-prompt-2", "--max-sequence-length", "--true-cfg-scale")  # a FLUX folder's


SD3_ONLY = ("--prompt-3", "--negative-prompt-3", "--max-sequence-length")
LUMINA2_FLAGS = ("--cfg-trunc-ratio", "--no-cfg-normalization")  # a Lumina-Image 2.0 folder's (diffkit sample)
Z_IMAGE_FLAGS = ("--cfg-trunc-ratio", "--cfg-normalization")  # a Z-Image folder's (diffkit sample and edit)
LUMINA_NEXT_FLAGS = ("--scaling-watershed", "--no-proportional-attn")  # a Lumina-Next folder's (diffkit sample)


def given_flags(request) -> list:
    """(flag, value) of the prompt-encoding flags a :class:`~diffkit.commands.sample.GuidanceRequest` holds."""
    return [(flag, value) for flag, value in (
        ("--clip-skip", request.clip_skip), ("--prompt-2", request.prompts_2),
        ("--negative-prompt-2", request.negative_prompt_2), ("--prompt-3", getattr(request, "prompts_3", None)),
        ("--negative-prompt-3", getattr(request, "negative_prompt_3", None)),
        ("--max-sequence-length", getattr(request, "max_sequence_length", None)),
        ("--true-cfg-scale", getattr(request, "true_cfg_scale", None)),
        ("--cfg-trunc-ratio", getattr(request, "cfg_trunc_ratio", None)),
        ("--no-cfg-normalization", getattr(request, "cfg_normalization", None)),
        ("--cfg-normalization", getattr(request, "cfg_norm_cap", None)),
        ("--scaling-watershed", getattr(request, "scaling_watershed", None)),
        ("--no-proportional-attn", getattr(request, "proportional_attn", None))) if value is not None]


def check_prompt_encoding(request, checkpoint) -> None:
    """One-line errors, before loading: the flags on a checkpoint that is not a Stable Diffusion / SD3 folder, the
    ``-2`` flags on a folder with one text encoder, the SD3 flags (:data:`SD3_ONLY`) on another folder,
    ``--clip-skip`` beyond its text encoders' layers (their configs), ``--prompt-2`` / ``--prompt-3`` neither once
    nor once per ``--prompt``; on a FLUX folder any but :data:`FLUX_FLAGS`, and ``--true-cfg-scale`` S > 1 without
    ``--negative-prompt`` (or the reverse); ``--true-cfg-scale`` on another checkpoint."""
    from ..interop.flux import is_flux_folder
    from ..interop.sd3 import is_sd3_folder
    from ..interop.sd_xl import is_sd_xl_folder
    from ..interop.stable_diffusion import is_stable_diffusion_folder
    from ..interop.lumina2 import is_lumina2_folder
    from ..interop.lumina_next import is_lumina_next_folder
    from ..interop.z_image import is_z_image_folder
    given = given_flags(request)
    z_image = checkpoint is not None and is_z_image_folder(checkpoint)
    cfg = Z_IMAGE_FLAGS if z_image else LUMINA2_FLAGS
    lumina = [flag for flag, _ in given if flag in LUMINA2_FLAGS + Z_IMAGE_FLAGS]
    where = 'the model sampled' if checkpoint is None else checkpoint
    if lumina and not z_image and not (checkpoint is not None and is_lumina2_folder(checkpoint)):
        if lumina[0] == "--cfg-normalization":
            raise DiffkitError(f"--cfg-normalization applies to a Z-Image folder (ZImagePipeline's guidance); {where} "
                               f"is not one")
        also = " or a Z-Image folder (ZImagePipeline's)" if lumina[0] == "--cfg-trunc-ratio" else ""
        raise DiffkitError(f"{lumina[0]} applies to a Lumina-Image 2.0 folder (Lumina2Pipeline's guidance){also}; "
                           f"{where} is not one")
    if z_image and "--no-cfg-normalization" in lumina:
        raise DiffkitError(f"--no-cfg-normalization does not apply to a Z-Image folder ({where}): its "
                           f"cfg_normalization is off by default (--cfg-normalization K turns it on)")
    next_flags = [flag for flag, _ in given if flag in LUMINA_NEXT_FLAGS]
    if next_flags and not (checkpoint is not None and is_lumina_next_folder(checkpoint)):
        raise DiffkitError(f"{next_flags[0]} applies to a Lumina-Next folder "
                           "(LuminaPipeline's RoPE scaling and attention)" f"; {where} is not one")
    if checkpoint is None or not given and request.negative_prompt is None:
        return
    from ..interop.chroma import is_chroma_folder
    from ..interop.pixart import masked_text_folder
    from ..interop.qwen_image import is_qwen_image_folder
    from ..interop.flux2 import is_flux2_folder
    from ..interop.bria import is_bria_folder
    from ..interop.bria_fibo import is_bria_fibo_folder
    from ..interop.ovis_image import is_ovis_image_folder
    from ..interop.krea2 import is_krea2_folder
    from ..interop.nucleusmoe import is_nucleusmoe_folder
    from ..interop.qwen_image21 import is_qwen_image21_folder
    from ..interop.dreamlite import is_dreamlite_folder
    from ..interop.bria_fibo2 import is_bria_fibo2_folder
    from ..interop.cosmos2 import is_cosmos_folder
    label = masked_text_folder(checkpoint) or ("Chroma" if is_chroma_folder(checkpoint) else
                                               "Cosmos Predict2" if is_cosmos_folder(checkpoint) else
                                               "DreamLite" if is_dreamlite_folder(checkpoint) else
                                               "Krea 2" if is_krea2_folder(checkpoint) else
                                               "NucleusMoE-Image" if is_nucleusmoe_folder(checkpoint) else
                                               "Qwen-Image 2.1" if is_qwen_image21_folder(checkpoint) else
                                               "Bria FIBO 2" if is_bria_fibo2_folder(checkpoint) else
                                               "Bria FIBO" if is_bria_fibo_folder(checkpoint) else
                                               "Bria" if is_bria_folder(checkpoint) else
                                               "Ovis-Image" if is_ovis_image_folder(checkpoint) else
                                               "Qwen-Image" if is_qwen_image_folder(checkpoint) else
                                               "FLUX.2" if is_flux2_folder(checkpoint) else
                                               "Z-Image" if z_image else None)
    lumina = [flag for flag in lumina if flag in cfg] + next_flags
    if label:  # its one text encoder (T5, Sana's Gemma-2): --max-sequence-length only (Lumina: its own flags too)
        length = label not in ("Qwen-Image 2.1", "Bria FIBO 2")  # (their pipelines take no length)
        other = [flag for flag, _ in given if (flag != "--max-sequence-length" or not length) and flag not in lumina]
        if other:
            from ._pixart import articled
            raise DiffkitError(articled(
                f"{other[0]} does not apply to a {label} folder ({checkpoint}); its prompt flags are "
                + ("--prompt, --negative-prompt and --max-sequence-length" if length else "--prompt and "
                   "--negative-prompt") + " (one text encoder)"))
        return
    from ..interop.longcat_image import is_longcat_folder
    if given and is_longcat_folder(checkpoint):
        raise DiffkitError(f"{given[0][0]} does not apply to a LongCat-Image folder ({checkpoint}); its prompt flags "
                           f"are --prompt and --negative-prompt (one text encoder, Qwen2.5-VL, 512 tokens)")
    from ..interop.hunyuan_image import is_hunyuan_image_folder
    if given and is_hunyuan_image_folder(checkpoint):
        raise DiffkitError(f"{given[0][0]} does not apply to a HunyuanImage folder ({checkpoint}); its prompt flags "
                           f"are --prompt and --negative-prompt (Qwen2.5-VL at a fixed 1000 tokens; the ByT5 glyph "
                           f"encoder reads the prompt's quoted text)")
    from ..interop.ernie_image import is_ernie_image_folder
    if given and is_ernie_image_folder(checkpoint):
        raise DiffkitError(f"{given[0][0]} does not apply to an ERNIE-Image folder ({checkpoint}); its prompt flags "
                           f"are --prompt and --negative-prompt (one text encoder, Mistral-3, each prompt's own "
                           f"tokens)")
    from ..interop.ideogram4 import is_ideogram4_folder
    if is_ideogram4_folder(checkpoint):  # (--negative-prompt: its family's check_request, ._ideogram4)
        other = [flag for flag, _ in given if flag != "--max-sequence-length"]
        if other:
            raise DiffkitError(f"{other[0]} does not apply to an Ideogram 4 folder ({checkpoint}); its prompt flags "
                               f"are --prompt and --max-sequence-length (one text encoder, Qwen3-VL)")
        return
    from ..interop.kolors import is_kolors_folder
    if given and is_kolors_folder(checkpoint):
        raise DiffkitError(f"{given[0][0]} does not apply to a Kolors folder ({checkpoint}); its prompt flags are "
                           f"--prompt and --negative-prompt (one text encoder, ChatGLM3, 256 tokens)")
    sd3 = is_sd3_folder(checkpoint)
    if not sd3 and is_flux_folder(checkpoint):
        _check_flux(request, given, checkpoint)
        return
    if not given:
        return
    if "--true-cfg-scale" in dict(given):
        raise DiffkitError(f"--true-cfg-scale applies to a FLUX folder (FluxPipeline's true CFG); {checkpoint} is "
                           f"not one")
    if not sd3 and not is_stable_diffusion_folder(checkpoint):
        raise DiffkitError(f"{given[0][0]} applies to a Stable Diffusion / SD-XL / SD3 / FLUX folder (diffusers "
                           f"format); {checkpoint} is not one")
    third = [flag for flag, _ in given if flag in SD3_ONLY]
    if third and not sd3:
        raise DiffkitError(f"{third[0]} applies to an SD3 folder (its T5 text encoder); {checkpoint} is not one")
    second = [flag for flag, _ in given if flag != "--clip-skip"]
    if second and not sd3 and not is_sd_xl_folder(checkpoint):
        raise DiffkitError(f"{second[0]} applies to an SD-XL folder (its second text encoder); {checkpoint} has one "
                           f"text encoder")
    from ..interop.sd_prompts import check_clip_skip, folder_layer_counts
    check_clip_skip(request.clip_skip, folder_layer_counts(checkpoint))  # N < the layers, from the configs
    _check_counts(request)


def _check_counts(request) -> None:
    """``--prompt-2`` / ``--prompt-3`` once, or once per ``--prompt``."""
    count = len(request.prompts or [])
    for flag, rows in (("--prompt-2", request.prompts_2), ("--prompt-3", getattr(request, "prompts_3", None))):
        if rows is not None and len(rows) not in (1, count):
            raise DiffkitError(f"{flag} is given {len(rows)} times for {count} --prompt; give it once (every prompt) "
                               f"or once per --prompt")


def _check_flux(request, given: list, checkpoint) -> None:
    """A FLUX folder's flags (:data:`FLUX_FLAGS`): one line for any other, for true CFG's scale without its
    negative prompt (or the reverse), and for ``--prompt-2`` counts."""
    other = [flag for flag, _ in given if flag not in FLUX_FLAGS]
    if other:
        raise DiffkitError(f"{other[0]} does not apply to a FLUX folder ({checkpoint}); its prompt flags are "
                           f"{', '.join(FLUX_FLAGS)} and --negative-prompt (with --true-cfg-scale)")
    scale, negative = request.true_cfg_scale, request.negative_prompt
    if (scale is not None and scale > 1) != (negative is not None):
        given = f"--true-cfg-scale {scale:g}" if negative is None else f"--negative-prompt {negative!r}" + (
            "" if scale is None else f" with --true-cfg-scale {scale:g}")
        raise DiffkitError(f"{given} is not allowed on a FLUX folder: its true CFG takes both --true-cfg-scale S > 1 "
                           f"and --negative-prompt ('' for the empty one), or neither")
    if request.negative_prompt_2 is not None and negative is None:  # (it was ignored, as FluxPipeline does)
        raise DiffkitError(f"--negative-prompt-2 {request.negative_prompt_2!r} feeds only true CFG's negative pass on "
                           f"a FLUX folder; give --true-cfg-scale S > 1 with --negative-prompt, or drop it")
    _check_counts(request)


def flux_prompt_options(request, prompts_2=None) -> dict:
    """A FLUX folder's ``text_to_image`` options of ``request``: ``prompt_2`` (as :func:`prompt_options`),
    ``negative_prompt_2``, ``negative_prompt``, ``true_cfg_scale`` and ``max_sequence_length`` where given."""
    options = prompt_options(request, prompts_2)
    del options["clip_skip"]
    options["negative_prompt"] = request.negative_prompt
    if request.true_cfg_scale is not None:
        options["true_cfg_scale"] = request.true_cfg_scale
    if request.max_sequence_length is not None:
        options["max_sequence_length"] = request.max_sequence_length
    return options


def prompt_options(request, prompts_2=None) -> dict:
    """``text_to_image`` / ``prompt_guidance``'s ``clip_skip``, ``prompt_2`` and ``negative_prompt_2`` of
    ``request``; ``prompts_2``: the second prompts of the batch, where ``--prompt-2`` was given once per prompt."""
    if prompts_2 is None and request.prompts_2 is not None:
        prompts_2 = request.prompts_2[0] if len(request.prompts_2) == 1 else list(request.prompts_2)
    return {"clip_skip": request.clip_skip, "prompt_2": prompts_2, "negative_prompt_2": request.negative_prompt_2}


def sd3_prompt_options(request, prompts_2=None, prompts_3=None) -> dict:
    """:func:`prompt_options` and an SD3 folder's ``prompt_3`` / ``negative_prompt_3`` / ``max_sequence_length``
    (``text_to_image`` / ``image_to_image`` of :mod:`diffkit.interop.sd3`; ``prompts_3`` as ``prompts_2``)."""
    rows = request.prompts_3
    if prompts_3 is None and rows is not None:
        prompts_3 = rows[0] if len(rows) == 1 else list(rows)
    length = {} if request.max_sequence_length is None else {"max_sequence_length": request.max_sequence_length}
    return {**prompt_options(request, prompts_2), "prompt_3": prompts_3,
            "negative_prompt_3": request.negative_prompt_3, **length}
