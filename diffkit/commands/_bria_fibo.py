"""``diffkit sample --checkpoint FIBO_FOLDER --prompt JSON``: a Bria FIBO diffusers folder
(:mod:`diffkit.interop.bria_fibo`) as ``BriaFiboPipeline`` with any diffkit sampler: Chroma's command code
(:mod:`._chroma`) with :class:`BriaFiboFamily`, dispatched from :func:`diffkit.commands.sample.sample_to_files`
and ``diffkit edit --checkpoint FIBO_EDIT_FOLDER --images PNG|DIR --prompt JSON``: a ``BriaFiboEditPipeline``
folder's edits (:func:`diffkit.interop.bria_fibo_edit.edit_image`, :class:`BriaFiboEditFamily`), dispatched from
:func:`diffkit.commands.edit.run`."""
from __future__ import annotations

from ._bria import BriaFamily
from ._chroma import EDIT_FLAGS

TAKES = ("--prompt (FIBO's JSON prompt string), --negative-prompt, --guidance-scale (--guidance-convention), "
         "--max-sequence-length, --height / --width (multiples of 16), --steps / --nfe, --sampler and its grid "
         "options (--flow-shift with another sampler than the pipeline's loop)")


class BriaFiboFamily(BriaFamily):
    """A Bria FIBO folder's: sampling only, no LoRA, textual inversion or IP-Adapter (refused in one line: diffkit
    drives no FIBO LoRA, BriaFiboPipeline has no textual-inversion or IP-Adapter loader); CFG against
    ``--negative-prompt`` (default "")."""

    kind, takes = "Bria FIBO", TAKES
    options = ()  # (BriaFiboPipeline has no normalize / clip_value)
    no_edit = "BriaFiboPipeline generates; diffkit edit takes a BriaFiboEditPipeline folder"

    @staticmethod
    def load(directory, device, progress, lora=None, textual_inversion=None):
        from ..interop.bria_fibo import load_bria_fibo
        return load_bria_fibo(directory, device, progress=progress)

    @staticmethod
    def functions() -> tuple:
        from ..interop.bria_fibo import text_to_image
        return text_to_image, None


def _edit_call(model, images, prompts, strength=None, *, mask=None, posterior=None, max_sequence_length=None,
               ip_adapter=None, seed=0, edit_image=None, **options):
    """:func:`._chroma.edit_chroma`'s image_to_image call on :func:`diffkit.interop.bria_fibo_edit.edit_image`
    (``edit_image``: another library edit of that signature, Bria FIBO 2's, :mod:`._bria_fibo2`): image i (in
    [-1, 1], back to 8-bit PIL as read) its own reference with its own prompt and ``--mask`` (the pipeline's one
    reference per call), from ``seed + i``; the arguments an Edit folder does not take come from flags it refuses
    first (``edit_flags``), at their defaults."""
    import torch
    from PIL import Image

    if edit_image is None:
        from ..interop.bria_fibo_edit import edit_image
    if max_sequence_length is not None:
        options["max_sequence_length"] = max_sequence_length
    edited = []
    for i in range(images.shape[0]):
        pixels = ((images[i].float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
        masked = None if mask is None else mask[min(i, mask.shape[0] - 1), 0].float().cpu()
        edited.append(edit_image(model, Image.fromarray(pixels), [prompts[i]], mask=masked, seed=seed + i,
                                 **options))
    return torch.cat(edited)


class BriaFiboEditFamily(BriaFiboFamily):
    """A BriaFiboEditPipeline folder's: ``diffkit edit`` only, each image its own reference (resized by the pipeline's
    rules, the output at its snapped default size), ``--mask`` pasted on it as grey; no strength, posterior, size or
    adapters (the pipeline has none)."""

    kind, samples, edits, resizes = "Bria FIBO Edit", False, True, True
    edit_takes = ("--images (each its own reference), --prompt (an edit JSON string with \"edit_instruction\"), --mask "
                  "(pasted as grey), --negative-prompt, --guidance-scale (--guidance-convention), "
                  "--max-sequence-length, --steps, --sampler and its grid options, --eta")
    edit_flags = EDIT_FLAGS - {"strength", "posterior", "height", "width", "lora", "textual_inversion", "ip_adapter",
                               "ip_adapter_image", "image_encoder", "negative_ip_adapter_image"}

    @staticmethod
    def functions() -> tuple:
        from ..interop.bria_fibo import text_to_image
        return text_to_image, _edit_call
