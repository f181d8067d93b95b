"""``diffkit sample|edit --checkpoint FLUX_FOLDER --redux REDUX_DIR --redux-image PNG [--prompt TEXT]``: FLUX.1
Redux, diffusers' ``FluxPriorReduxPipeline`` then any FLUX pipeline given its output (``FluxPipeline`` with true CFG,
the ControlNet, Fill, Depth / Canny, img2img / inpainting and Kontext pipelines: :mod:`diffkit.interop.flux_redux`)
as ``prompt_embeds`` / ``pooled_prompt_embeds``."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..errors import DiffkitError
from ._common import path_arg

SCALE_FLAGS = (("--redux-prompt-scale", "redux_prompt_scales"), ("--redux-pooled-scale", "redux_pooled_scales"))


def add_redux_flags(parser) -> None:
    g = parser.add_argument_group("FLUX.1 Redux (FLUX.1 folders: plain, Fill, Depth / Canny, Kontext; docs/interop.md)")
    g.add_argument("--redux", type=path_arg, metavar="DIR",
                   help="a FluxPriorReduxPipeline folder (FLUX.1-Redux-dev): --redux-image becomes the prompt, as "
                        "FluxPipeline(**FluxPriorReduxPipeline(image)) (or the ControlNet / Fill / Depth / Canny / "
                        "img2img / inpainting / Kontext pipeline's); --prompt is optional (default: none, the "
                        "prior's zeros), all samples (edited images) share the one conditioning")
    g.add_argument("--redux-image", action="append", dest="redux_images", type=path_arg, metavar="PNG",
                   help="the image prompt of --redux; repeat to mix several (the prior's weighted sum over its list "
                        "of images)")
    g.add_argument("--redux-prompt-scale", action="append", dest="redux_prompt_scales", type=float, metavar="S",
                   help="the prior's prompt_embeds_scale: once (every --redux-image) or once per image (default 1)")
    g.add_argument("--redux-pooled-scale", action="append", dest="redux_pooled_scales", type=float, metavar="S",
                   help="the prior's pooled_prompt_embeds_scale: once or once per --redux-image (default 1)")


@dataclass
class ReduxRequest:
    """The checked Redux flags; :meth:`embeds` gives FluxPipeline's ``prompt_embeds`` / ``pooled_prompt_embeds``."""

    folder: str
    images: list
    prompt_scales: list
    pooled_scales: list

    @classmethod
    def from_args(cls, args, checkpoint, edit: bool = False) -> Optional["ReduxRequest"]:
        """None without ``--redux``; one line for a Redux flag without it, a checkpoint that is not a FLUX.1 folder,
        a folder that is not a Redux one (JSON only), no ``--redux-image`` or one that is no image, scale counts
        that do not fit, flags Redux does not go with (``--max-sequence-length``; true CFG with a
        ControlNet, or in an ``edit`` of a folder other than Kontext: diffusers 0.42.1's pipelines fail there; all
        before any weight is read)."""
        from ..interop.flux import is_flux_folder
        from ..interop.flux_redux import check_redux_folder
        from ..interop.ip_adapter import open_image
        images = list(getattr(args, "redux_images", None) or [])
        if getattr(args, "redux", None) is None:
            given = [flag for flag, value in (("--redux-image", images),) + tuple(
                (flag, getattr(args, dest, None)) for flag, dest in SCALE_FLAGS) if value]
            if given:
                raise DiffkitError(f"{given[0]} needs --redux DIR (a FLUX.1 Redux folder)")
            return None
        if checkpoint is None or not is_flux_folder(checkpoint):
            raise DiffkitError(f"--redux applies to a FLUX.1 folder (FluxPipeline); {checkpoint} is not one")
        check_redux_folder(args.redux)
        if not images:
            raise DiffkitError("--redux needs --redux-image PNG (the image prompt; repeat to mix several)")
        for image in images:
            try:
                open_image(image)
            except DiffkitError:
                raise DiffkitError(f"--redux-image {image}: cannot be read as an image; give a PNG or JPEG") from None
        scales = []
        for flag, dest in SCALE_FLAGS:
            values = list(getattr(args, dest, None) or [1.0])
            if len(values) not in (1, len(images)):
                raise DiffkitError(f"{flag} is given {len(values)} times for {len(images)} --redux-image; give it "
                                   f"once (every image) or once per image")
            scales.append(values)
        if getattr(args, "max_sequence_length", None):
            raise DiffkitError("--max-sequence-length does not go with --redux in diffkit (Redux conditions the "
                               "pipeline through prompt_embeds; the prompt is encoded at the prior's 512 T5 tokens); "
                               "drop one")
        if getattr(args, "negative_prompt", None) is not None:
            from ..interop.flux import NO_EMBEDS_CONTROLNET_TRUE_CFG, NO_EMBEDS_EDIT_TRUE_CFG
            from ..interop.flux_kontext import is_kontext_folder
            if getattr(args, "controlnets", None):
                raise DiffkitError(f"--redux with --negative-prompt and --controlnet: {NO_EMBEDS_CONTROLNET_TRUE_CFG}")
            if edit and not is_kontext_folder(checkpoint):
                raise DiffkitError(f"--redux with --negative-prompt: {NO_EMBEDS_EDIT_TRUE_CFG}")
        prompts = getattr(args, "prompts", None) or []
        if len(prompts) not in (0, 1, len(images)):
            raise DiffkitError(f"--prompt is given {len(prompts)} times for {len(images)} --redux-image; with --redux "
                               f"give none, one (every image) or one per image: the prior mixes them into one "
                               f"conditioning")
        return cls(str(args.redux), images, *scales)

    def embeds(self, flux, guidance, device, progress: bool) -> tuple:
        """(context, pooled) (one row) of the FLUX folder ``flux`` for the request's images and ``guidance``'s
        ``--prompt`` / ``--prompt-2`` (none: the prior's zeros)."""
        from ..interop.flux_redux import load_flux_redux, redux_embeds
        redux = load_flux_redux(self.folder, device, flux.dtype, progress)
        prompts_2 = guidance.prompts_2
        prompts_2 = prompts_2[0] if prompts_2 is not None and len(prompts_2) == 1 else prompts_2
        return redux_embeds(flux, redux, self.images, list(guidance.prompts or []) or None, prompts_2,
                            self.prompt_scales, self.pooled_scales)


def redux_text(embeds: tuple, options: dict) -> dict:
    """The FLUX functions' prompt keywords with Redux's ``embeds`` (context, pooled): ``prompt_embeds`` /
    ``pooled_prompt_embeds`` and the true-CFG ones of ``options`` (:func:`._sd_prompts.flux_prompt_options`'s; the
    prompts and ``prompt_2`` went into the prior)."""
    kept = {key: options[key] for key in ("negative_prompt", "negative_prompt_2", "true_cfg_scale") if key in options}
    return {**kept, "prompt_embeds": embeds[0], "pooled_prompt_embeds": embeds[1]}


__all__ = ["ReduxRequest", "add_redux_flags", "redux_text"]
