"""``diffkit sample --checkpoint NUCLEUSMOE_FOLDER --prompt TEXT``: a NucleusMoE-Image diffusers folder
(:mod:`diffkit.interop.nucleusmoe`) as ``NucleusMoEImagePipeline`` with any diffkit sampler: Chroma's command code
(:mod:`._chroma`) with :class:`NucleusMoEFamily` (``diffkit edit`` refuses it: diffusers 0.42.1 has no NucleusMoE
img2img pipeline)."""
from __future__ import annotations

from ._chroma import Family

TAKES = ("--prompt, --negative-prompt, --guidance-scale (--guidance-convention), --max-sequence-length, --height / "
         "--width, --steps / --nfe, --sampler and its grid options (--flow-shift with another sampler than the "
         "pipeline's loop)")


class NucleusMoEFamily(Family):
    """A NucleusMoE-Image folder's: sampling only, norm-matched CFG s = 4.0 against ``--negative-prompt`` (default
    ""), 50 steps; no LoRA, textual inversion or IP-Adapter (refused in one line)."""

    kind, takes, adapters, lora, edits = "NucleusMoE-Image", TAKES, False, False, False

    @staticmethod
    def load(directory, device, progress, lora=None, textual_inversion=None):
        from ..interop.nucleusmoe import load_nucleusmoe
        return load_nucleusmoe(directory, device, progress=progress)

    @staticmethod
    def functions() -> tuple:
        from ..interop.nucleusmoe import text_to_image
        return text_to_image, None
