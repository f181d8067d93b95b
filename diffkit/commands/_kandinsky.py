"""``diffkit sample --checkpoint KANDINSKY_DECODER_FOLDER --prior KANDINSKY_PRIOR_FOLDER --prompt TEXT``: Kandinsky
2.2 (:mod:`diffkit.interop.kandinsky`), as ``KandinskyV22CombinedPipeline``: the prior folder draws each sample's CLIP
image embedding (and the negative one: the zero image's, or the prior's sample for ``--negative-prompt``) with its
own loop (``--prior-guidance-scale``, default diffusers' s = 4; ``--prior-steps``, default 25), the decoder folder
(``--checkpoint``, as ``--refiner`` / ``--redux`` name the second folder of SD-XL's and FLUX.1 Redux's flows) draws
the image from it (``--guidance-scale``, default s = 4, both scales in ``--guidance-convention``; ``--steps``,
default 100; ``--sampler`` and its grid options; ``--height`` / ``--width``, default 512, multiples of the MoVQ
factor squared). Sample i draws from seed + i in both folders (the prior: x_T then its steps' noise, from a
generator of its own; the decoder: z_T then its steps' noise), so a row equals the two pipelines chained with
generators of those seeds. A ControlNet decoder (``addition_embed_type="image_hint"``) takes its hint as
``--control-image`` (:mod:`diffkit.interop.kandinsky_controlnet`); ``--prior-image`` starts the prior from an image's
embedding (:mod:`diffkit.interop.kandinsky_emb2emb`). A Kandinsky 2.1 decoder folder (``KandinskyPipeline``,
:mod:`diffkit.interop.kandinsky21`) runs the same way with its ``KandinskyPriorPipeline`` folder as ``--prior``, the
prompts given to the decoder too (``KandinskyCombinedPipeline``: ``--negative-prompt`` to the prior alone). Dispatched
from :func:`diffkit.commands.sample.sample_to_files`."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..errors import DiffkitError
from ._common import path_arg, positive_int

TAKES = ("--prior, --prompt, --negative-prompt, --guidance-scale (--guidance-convention), --prior-guidance-scale, "
         "--prior-steps, --prior-image (--prior-strength), --height / --width, --steps / --nfe, --sampler and its grid "
         "options")


def add_prior_flags(parser) -> None:
    g = parser.add_argument_group("Kandinsky 2.2 / 2.1 prior + decoder (docs/interop.md)")
    g.add_argument("--prior", type=path_arg, metavar="FOLDER",
                   help="a Kandinsky 2.2 decoder --checkpoint (KandinskyV22Pipeline): its prior folder "
                        "(KandinskyV22PriorPipeline), which draws the image embeddings the decoder is conditioned on; "
                        "a Kandinsky 2.1 decoder (KandinskyPipeline): its KandinskyPriorPipeline folder")
    g.add_argument("--prior-guidance-scale", type=float, metavar="S",
                   help="with --prior: the prior's classifier-free guidance in --guidance-convention (default "
                        "diffusers' s = 4)")
    g.add_argument("--prior-steps", type=positive_int, metavar="N",
                   help="with --prior: the prior's UnCLIPScheduler steps, at least 2 (default 25)")
    g.add_argument("--prior-image", type=path_arg, metavar="PNG", action="append",
                   help="an image the prior is conditioned on (Kandinsky 2.2 with --prior: emb2emb, the prior starts "
                        "from its CLIP embedding noised to --prior-strength, one image; Stable Cascade prior "
                        "--checkpoint: image prompts, repeat for several)")
    g.add_argument("--prior-strength", type=float, metavar="S",
                   help="with --prior-image: the share of the prior's steps run from the noised embedding, in (0, 1] "
                        "(default 0.3)")


@dataclass
class PriorRequest:
    """``--prior FOLDER [--prior-guidance-scale S] [--prior-steps N] [--prior-image PNG [--prior-strength S]]``,
    checked from the folders' JSON."""

    folder: Path
    guidance_scale: float
    steps: int
    image: Optional[Path] = None  # --prior-image: KandinskyV22PriorEmb2EmbPipeline (.interop.kandinsky_emb2emb)
    strength: float = 0.3
    _pixels: object = field(default=None, repr=False)  # the image's CLIP pixel values, made once

    @classmethod
    def from_args(cls, args, checkpoint) -> Optional["PriorRequest"]:
        """The request (None without ``--prior`` on another folder); one line for ``--prior`` on anything but a
        Kandinsky 2.2 decoder folder, a decoder folder without it, or the prior flags without ``--prior``."""
        from ..interop.kandinsky import (PRIOR_DEFAULTS, check_decoder_folder, check_prior_folder,
                                         is_kandinsky_folder, kandinsky_kind)
        from ..interop.kandinsky21 import kandinsky_names
        from ..interop.kandinsky_emb2emb import EMB2EMB_STRENGTH
        decoder = checkpoint is not None and is_kandinsky_folder(checkpoint)
        version, prior_pipeline, decoder_pipeline, _ = kandinsky_names(checkpoint) if checkpoint else ("2.2",) * 4
        if args.prior is None:
            if decoder:
                raise missing_prior(checkpoint)
            if checkpoint is not None and kandinsky_kind(checkpoint) == prior_pipeline:
                raise DiffkitError(f"{checkpoint} is a Kandinsky {version} prior folder: give it as --prior, with "
                                   f"the decoder folder ({decoder_pipeline}) as --checkpoint")
            from ..interop.stable_cascade import is_stable_cascade_folder
            cascade = checkpoint is not None and is_stable_cascade_folder(checkpoint)  # its image prompts
            from ..interop.stable_unclip import is_stable_unclip_folder
            if checkpoint is not None and is_stable_unclip_folder(checkpoint):  # its prior's flags (._stable_unclip)
                return None
            for flag, value in (("--prior-guidance-scale", args.prior_guidance_scale),
                                ("--prior-steps", args.prior_steps),
                                ("--prior-image", None if cascade else args.prior_image),
                                ("--prior-strength", args.prior_strength)):
                if value is not None:
                    raise DiffkitError(f"{flag} needs --prior FOLDER (a Kandinsky 2.2 or 2.1 prior) with a "
                                       f"Kandinsky decoder --checkpoint of the same version")
            return None
        if not decoder:
            raise DiffkitError(f"--prior applies to a Kandinsky 2.2 decoder folder (KandinskyV22Pipeline) or a "
                               f"Kandinsky 2.1 one (KandinskyPipeline) as --checkpoint; {checkpoint} is not one")
        check_decoder_folder(checkpoint)
        check_prior_folder(args.prior, prior_pipeline)  # the decoder's own generation's prior
        if version == "2.1" and args.prior_image is not None:
            raise DiffkitError("--prior-image applies to a Kandinsky 2.2 prior (KandinskyV22PriorEmb2EmbPipeline); "
                               "diffusers has no Kandinsky 2.1 prior pipeline from an image")
        steps = PRIOR_DEFAULTS[1] if args.prior_steps is None else args.prior_steps
        if steps < 2:
            raise DiffkitError(f"--prior-steps {steps} is not allowed; give at least 2 (UnCLIPScheduler's timesteps "
                               f"divide by steps - 1)")
        from ..guidance import guidance_weight
        convention = getattr(args, "guidance_convention", "diffusers")
        scale = args.prior_guidance_scale
        scale = PRIOR_DEFAULTS[0] if scale is None else 1 + guidance_weight(scale, convention)  # diffusers' s
        image, strength = args.prior_image, args.prior_strength
        if isinstance(image, list):  # (--prior-image appends: Stable Cascade takes several)
            if len(image) > 1:
                raise DiffkitError(f"--prior-image given {len(image)} times; a Kandinsky 2.2 prior takes one "
                                   f"(KandinskyV22PriorEmb2EmbPipeline's image)")
            image = image[0]
        if image is None and strength is not None:
            raise DiffkitError("--prior-strength needs --prior-image PNG (the image whose embedding the prior starts "
                               "from)")
        strength = EMB2EMB_STRENGTH if strength is None else strength
        if image is not None:
            from ..interop.controlnet import open_control_image
            if not 0 < strength <= 1 or int(steps * strength) < 1:
                raise DiffkitError(f"--prior-strength {strength:g} is not allowed with --prior-steps {steps}; give "
                                   f"a number in (0, 1] that keeps at least one of the steps (int(steps * strength))")
            open_control_image(image, "--prior-image")  # one line for a file that is not an image
        return cls(Path(args.prior), float(scale), int(steps), None if image is None else Path(image),
                   float(strength))

    def embeddings(self, model, prompts, negative_prompt, generators) -> tuple:
        """(image_embeds, negative_image_embeds) of ``prompts`` by the loaded prior ``model``: its loop
        (:func:`~diffkit.interop.kandinsky.prior_embeddings`) or, with ``--prior-image``, from the image's
        embedding (:func:`~diffkit.interop.kandinsky_emb2emb.prior_emb2emb`); row i from ``generators[i]``."""
        from ..interop.kandinsky import prior_embeddings
        from ..interop.kandinsky_emb2emb import prior_emb2emb, prior_pixels
        common = {"negative_prompt": negative_prompt, "guidance_scale": self.guidance_scale, "steps": self.steps,
                  "generator": generators}
        if self.image is None:
            return prior_embeddings(model, prompts, **common)
        if self._pixels is None:
            self._pixels = prior_pixels(self.folder, self.image)
        return prior_emb2emb(model, prompts, self._pixels, strength=self.strength, **common)

    def describe(self) -> str:
        """The prior's part of the commands' last line."""
        image = "" if self.image is None else f", from {self.image} at strength {self.strength:g}"
        return f"{self.folder} ({self.steps} steps, guidance {self.guidance_scale:g}{image})"


def missing_prior(checkpoint) -> DiffkitError:
    """The one line for a Kandinsky 2.2 (or 2.1) decoder folder sampled without ``--prior``."""
    from ..interop.kandinsky21 import kandinsky_names
    version, prior, decoder, _ = kandinsky_names(checkpoint)
    return DiffkitError(f"{checkpoint} is a Kandinsky {version} decoder folder ({decoder}): give --prior FOLDER "
                        f"(its {prior} folder) and --prompt TEXT")


def check_hint_flag(checkpoint, given: bool) -> None:
    """One line for ``--control-image`` on a Kandinsky 2.2 decoder folder whose UNet takes no hint (its
    ``addition_embed_type``, read from the folder's JSON), and for none on one whose UNet does
    (``"image_hint"``: a ``KandinskyV22ControlnetPipeline`` decoder, :mod:`diffkit.interop.kandinsky_controlnet`)."""
    from ..errors import read_json_object
    from ..interop.kandinsky_controlnet import CONTROLNET_PIPELINE, takes_hint
    unet = read_json_object(Path(checkpoint) / "unet" / "config.json", "unet config")
    if given and not takes_hint(unet):
        raise DiffkitError(f"--control-image does not apply to {checkpoint}: its UNet has addition_embed_type="
                           f"{unet.get('addition_embed_type')!r}; allowed: a Kandinsky 2.2 ControlNet decoder "
                           f"({CONTROLNET_PIPELINE}, addition_embed_type 'image_hint') as --checkpoint")
    if takes_hint(unet) and not given:
        raise DiffkitError(f"{checkpoint} is a Kandinsky 2.2 ControlNet decoder (addition_embed_type 'image_hint'): "
                           f"give --control-image PNG (its hint, e.g. a depth map)")


def hints(files, shape) -> list:
    """The (1, 3, 8h, 8w) hints in [0, 1] of the ``--control-image`` file(s) ``files`` (one, or a list: one per row)
    for latents of ``shape`` (:func:`diffkit.interop.kandinsky_controlnet.prepare_hint`)."""
    from ..interop.kandinsky_controlnet import prepare_hint
    return [prepare_hint(one, shape) for one in (files if isinstance(files, list) else [files])]


def folder_default_sampler(checkpoint) -> str:
    """The decoder folder's scheduler's sampler (:func:`~diffkit.interop.kandinsky.decoder_sampler`)."""
    from ..errors import read_json_object
    from ..interop.kandinsky import decoder_sampler
    return decoder_sampler(read_json_object(Path(checkpoint) / "scheduler" / "scheduler_config.json",
                                            "scheduler config"))[0]


def sample_kandinsky(directory, *, prior: PriorRequest, sampler=None, steps=None, nfe=None, num=None, nrow=None,
                     out=None, individual=None, seed=0, device="cpu", batch_size="auto", spacing=None, final=None,
                     scale=1, progress=True, guidance=None, refused: Optional[dict] = None, height=None, width=None,
                     control=None, **options):
    """Sample a Kandinsky 2.2 decoder folder with its ``prior`` to a grid (and single PNGs): rows as
    :func:`~.sample.condition_rows` (module docstring). ``refused``: {flag: value} of flags it does not take.
    ``control``: a ControlNet decoder's ``--control-image`` (a :class:`~._controlnet.ControlRequest` without folders:
    one file, or one per ``--prompt``), as ``KandinskyV22ControlnetPipeline(hint=...)``."""
    import torch

    from ..interop.kandinsky import load_decoder, load_prior, decode_embeddings
    from ..noise import generators_from_seed
    from ._pixart import checked_request, own_loop
    from ._sd3 import prompted_rows
    from .sample import draw_prompted_grid
    from ..interop.kandinsky import kandinsky_kind
    from ..interop.kandinsky21 import kandinsky_names
    version, _, _, inpaint_pipeline = kandinsky_names(directory)
    if kandinsky_kind(directory) == inpaint_pipeline:
        raise DiffkitError(f"{directory} is a {inpaint_pipeline} folder: it only inpaints; use diffkit edit --images "
                           f"PNG|DIR --mask PNG --prior FOLDER --prompt TEXT")
    check_hint_flag(directory, control is not None)
    takes = TAKES + (", --control-image" if control is not None else "")
    if version == "2.1":
        takes = takes.replace("--prior-image (--prior-strength), ", "")
    guidance = checked_request(directory, f"Kandinsky {version} decoder", takes, guidance, options, refused)
    decoder = load_decoder(directory, device, progress=progress)
    shape = decoder.latent_shape(1, height, width)[1:]
    controls = None if control is None else hints(control.images[0], (1,) + shape)
    model = load_prior(prior.folder, device, progress=progress)
    _, _, prompts, index, num, nrow, per_sample = prompted_rows(decoder, guidance, None, None, num, nrow, seed, device,
                                                            progress)
    per_sample["seeds"] = [seed + i for i in range(num)]
    if controls is not None and len(controls) > 1:  # one --control-image per --prompt
        per_sample["control_rows"] = index.tolist()
    scale_s, convention = (decoder.default_guidance_scale, "diffusers") if guidance.guidance_scale is None else \
        (guidance.guidance_scale, guidance.convention)
    if convention != "diffusers":
        scale_s = scale_s + 1  # the seed convention's w: diffusers' s = 1 + w
    own_grid, options = own_loop(decoder, sampler, spacing, final, nfe, options)
    steps = decoder.default_steps if steps is None and nfe is None else steps
    negatives = guidance.negative_prompt

    def prompted(_, noise, sampler, steps, *, cond, spacing=None, final=None, nfe=None, generator=None, **how):
        seeds = cond["seeds"]
        copies = 1 if negatives is None else 2  # the negative prompt's rows: again from seed + i
        gens = [g for _ in range(copies) for s in seeds for g in generators_from_seed(s, 1)]
        embeds, negative = prior.embeddings(model, cond["prompts"], negatives, gens)
        grid = {"grid": "scheduler"} if own_grid else {"spacing": spacing, "final": final, "nfe": nfe}
        if controls is not None:
            how["hint"] = torch.cat([controls[r] for r in cond["control_rows"]]) if "control_rows" in cond else \
                controls[0]
        if decoder.takes_prompts:  # Kandinsky 2.1: as KandinskyCombinedPipeline, guided against the empty prompt
            how["prompts"] = cond["prompts"]
        return decode_embeddings(decoder, embeds, negative, guidance_scale=scale_s, sampler=sampler, steps=steps,
                                 latents=noise, generator=generator, return_latents=True, **grid, **how)

    images, out = draw_prompted_grid(
        decoder.denoiser, num, shape, prompted,
        per_sample,
        decoder.decode, out, individual, nrow, scale, seed=seed, sampler=sampler, steps=steps, nfe=nfe,
        spacing=spacing, final=final, batch_size=batch_size, device=device, dtype=torch.float32, progress=progress,
        **options)
    grid = "the scheduler's timesteps" if own_grid else "its diffkit grid"
    hinted = "" if control is None else f", hint {control.images[0]}"
    print(f"wrote {out} ({num} samples, {sampler} on {grid}, Kandinsky {version} decoder {directory} with prior "
          f"{prior.describe()}{hinted}, prompts {prompts})")
    return images


EDIT_TAKES = ("--prior, --images, --prompt, --negative-prompt, --strength, --guidance-scale (--guidance-convention), "
              "--prior-guidance-scale, --prior-steps, --prior-image (--prior-strength), --steps, --height / --width, "
              "--seed, --batch-size")
EDIT_FLAGS = {  # diffkit edit's dests a Kandinsky 2.2 decoder folder takes (the rest must stay at their defaults)
    "command", "func", "checkpoint", "images", "out", "prompts", "negative_prompt", "strength", "steps",
    "guidance_scale", "guidance_convention", "seed", "batch_size", "device", "progress", "height", "width", "prior",
    "prior_guidance_scale", "prior_steps", "prior_image", "prior_strength"}
IMG2IMG_STRENGTH = 0.3  # KandinskyV22Img2ImgPipeline's default strength
INPAINT_TAKES = EDIT_TAKES.replace("--strength", "--mask")  # KandinskyV22InpaintPipeline: no strength, a mask
INPAINT_FLAGS = EDIT_FLAGS - {"strength"} | {"mask"}
HINT_TAKES = EDIT_TAKES + ", --control-image"  # KandinskyV22ControlnetImg2ImgPipeline: img2img with a hint
HINT_FLAGS = EDIT_FLAGS | {"control_images"}


def check_inpaint_request(args) -> bool:
    """True for a ``KandinskyV22InpaintPipeline`` decoder folder with ``--mask``; one line for one without it, and
    for ``--mask`` on a ``KandinskyV22Pipeline`` folder (its UNet takes the latents alone)."""
    from ..interop.kandinsky import kandinsky_kind
    from ..interop.kandinsky21 import kandinsky_names
    version, _, _, inpaint_pipeline = kandinsky_names(args.checkpoint)
    inpainting = kandinsky_kind(args.checkpoint) == inpaint_pipeline
    if inpainting and args.mask is None:
        raise DiffkitError(f"{args.checkpoint} is a {inpaint_pipeline} folder: it only inpaints; give --mask PNG "
                           f"(white = repaint)")
    if args.mask is not None and not inpainting:
        raise DiffkitError(f"--mask does not apply to a Kandinsky {version} decoder folder whose UNet takes the "
                           f"latents alone ({args.checkpoint}); allowed: a {inpaint_pipeline} folder as --checkpoint")
    return inpainting


def edit_kandinsky(args) -> int:
    """``diffkit edit --checkpoint DECODER --prior PRIOR --images PNG|DIR --prompt TEXT``: each image edited as
    ``KandinskyV22Img2ImgPipeline`` fed the prior's embeddings of its prompt
    (:func:`diffkit.interop.kandinsky.image_to_image`: strength 0.3, 100 steps by default; image i from ``--seed``
    + i in both folders); a Kandinsky 2.1 decoder as ``KandinskyImg2ImgPipeline`` / ``KandinskyInpaintPipeline``
    (the prompt to the decoder too, guided against the empty prompt as the combined pipelines do). Every other edit
    flag: one line, before any weight is read or any folder is made."""
    import torch

    from ..config import resolve_device
    from ..images import check_image_folder, save_images
    from ..interop.kandinsky import DECODER_DEFAULTS, image_to_image, load_decoder, load_prior
    from ..interop.kandinsky21 import IMG2IMG21_PIPELINE, kandinsky_names
    from ..interop.kandinsky_controlnet import CONTROLNET_IMG2IMG_PIPELINE, CONTROLNET_PIPELINE
    from ..interop.kandinsky_inpaint import inpaint
    from ..memory import batches_with_oom_retry
    from ..noise import generators_from_seed
    from ._common import check_writable_dir, missing_dirs, removed_if_empty_on_failure
    from ._pixart import prompted_edit_inputs

    directory = args.checkpoint
    inpainting = check_inpaint_request(args)
    version, _, _, inpaint_pipeline = kandinsky_names(directory)
    found = []  # the --prior request, checked after the flags
    control = getattr(args, "control_images", None)
    flags, takes, runs = (INPAINT_FLAGS, INPAINT_TAKES, inpaint_pipeline) if inpainting else \
        (HINT_FLAGS, HINT_TAKES, CONTROLNET_IMG2IMG_PIPELINE) if control else \
        (EDIT_FLAGS, EDIT_TAKES, IMG2IMG21_PIPELINE if version == "2.1" else "KandinskyV22Img2ImgPipeline")
    if version == "2.1":
        takes = takes.replace("--prior-image (--prior-strength), ", "")
    check_hint_flag(directory, bool(control))
    images, count, mask = prompted_edit_inputs(args, flags, f"Kandinsky {version} decoder", runs, takes,
                                               with_mask=True, check=lambda: found.append(
                                                   PriorRequest.from_args(args, directory)))
    prior = found[0]
    if control:  # one file, or a folder of one per --images file (as FLUX.1 Depth's)
        from ._controlnet import ControlRequest
        control = ControlRequest.transformer_image(control, None, count, CONTROLNET_PIPELINE).images[0]
    out, device = args.out, resolve_device(args.device)
    new_dirs = missing_dirs(out)
    decoder = load_decoder(directory, device, progress=args.progress)
    controls = hints(control, decoder.latent_shape(1, images.shape[2], images.shape[3])) if control else None
    check_writable_dir(out)
    check_image_folder(out, count, prefix="edit")
    model = load_prior(prior.folder, device, progress=args.progress)
    scale = DECODER_DEFAULTS[0] if args.guidance_scale is None else \
        args.guidance_scale + (1 if args.guidance_convention == "seed" else 0)
    strength = IMG2IMG_STRENGTH if args.strength is None else args.strength
    negatives = args.negative_prompt

    def edit(start: int, n: int):
        prompts = args.prompts * n if len(args.prompts) == 1 else args.prompts[start:start + n]
        copies = 1 if negatives is None else 2
        gens = [g for _ in range(copies) for g in generators_from_seed(args.seed + start, n)]
        embeds, negative = prior.embeddings(model, prompts, negatives, gens)
        common = {"guidance_scale": scale, "steps": args.steps, "seed": args.seed + start, "output_range": "-1,1",
                  "progress": args.progress, **({"prompts": prompts} if decoder.takes_prompts else {})}
        if inpainting:
            return (inpaint(decoder, images[start:start + n], mask, embeds, negative, **common).cpu(),)
        if controls is not None:  # KandinskyV22ControlnetImg2ImgPipeline: each image's hint (or the one)
            common["hint"] = controls[0] if len(controls) == 1 else torch.cat(controls[start:start + n])
        return (image_to_image(decoder, images[start:start + n], embeds, negative, strength=strength,
                               **common).cpu(),)

    with removed_if_empty_on_failure(new_dirs):  # a batch out of memory is halved and redrawn (seed + i)
        results = [edited for _, edited in batches_with_oom_retry(edit, count, args.batch_size or 16)]
        save_images(torch.cat(results), out, prefix="edit")
    how = f"as {inpaint_pipeline}, mask {args.mask}" if inpainting else f"as {runs}, strength {strength}" + \
        (f", hint {args.control_images[0]}" if control else "")
    print(f"wrote {count} edited images to {out} (edit_00000.png ...; Kandinsky {version} decoder {directory} with "
          f"prior {prior.describe()} {how}, prompts {list(args.prompts)})")
    return 0
