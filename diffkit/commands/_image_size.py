"""``diffkit sample --height H --width W``: the size of the images a diffusers folder draws (Stable Diffusion
1.x/2.x, SD-XL, SD3, FLUX.1), checked from the folder's JSON configs before anything loads.

The multiple each pipeline requires (its ``check_inputs``): Stable Diffusion / SD-XL 8, and the VAE factor f
(8 in real folders), so lcm(8, f); SD3 f x the transformer's ``patch_size`` (16); FLUX.1 2 f (16: latents are
packed in 2 x 2 patches). FluxPipeline floors other sizes to that multiple with a warning; diffkit refuses them
in one line instead, naming the multiple, so that the grid is always the size asked for."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

from ..errors import DiffkitError, read_json_object


def size_multiple(directory) -> tuple:
    """(multiple, what it is) that ``--height`` / ``--width`` must be for the diffusers folder ``directory``."""
    from ..interop.flux import is_flux_folder
    from ..interop.sd3 import is_sd3_folder
    vae = read_json_object(Path(directory) / "vae" / "config.json", "VAE config")
    f = 2 ** (len(vae.get("block_out_channels", [0])) - 1)
    if is_sd3_folder(directory):
        patch = int(read_json_object(Path(directory) / "transformer" / "config.json",
                                     "transformer config").get("patch_size", 2))
        return f * patch, f"the VAE factor {f} x the transformer's patch size {patch}"
    if is_flux_folder(directory):
        return 2 * f, f"the VAE factor {f} x the 2 x 2 packing; FluxPipeline would floor other sizes"
    return math.lcm(8, f), f"the pipeline's 8 and the VAE factor {f}"


def check_image_size(checkpoint, height: Optional[int], width: Optional[int], t2i_adapter: bool = False) -> None:
    """One-line DiffkitError for ``--height`` / ``--width`` (either may be None: the folder's default) that the
    checkpoint cannot draw: not a diffusers folder (a diffkit checkpoint's size is fixed by training), with
    ``t2i_adapter`` (the control image sets the size: the adapter pipelines resize it with their own
    ``_preprocess_adapter_image``, not checked against the library's), or not a positive multiple of
    :func:`size_multiple`. ControlNets take the size: their images are resized to it as diffusers' ControlNet
    pipelines do (:func:`diffkit.interop.controlnet.prepare_control_image`, the same ``VaeImageProcessor``)."""
    if height is None and width is None:
        return
    from ..interop.flux import is_flux_folder
    from ..interop.sd3 import is_sd3_folder
    from ..interop.stable_diffusion import is_stable_diffusion_folder
    flag = "--height" if height is not None else "--width"
    if not (is_stable_diffusion_folder(checkpoint) or is_sd3_folder(checkpoint) or is_flux_folder(checkpoint)):
        raise DiffkitError(f"{flag} applies to diffusers folders (Stable Diffusion, SD-XL, SD3, FLUX.1); {checkpoint}"
                           f" draws at the size it was trained at")
    if t2i_adapter:
        raise DiffkitError(f"{flag} with --t2i-adapter: the control image sets the size; resize the control image "
                           f"instead")
    multiple, why = size_multiple(checkpoint)
    for name, value in (("--height", height), ("--width", width)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0
                                  or value % multiple):
            raise DiffkitError(f"{name} {value} is not allowed; give a positive multiple of {multiple} ({why})")
