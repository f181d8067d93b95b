"""FreeU (Si, Huang, Jiang & Liu, "FreeU: Free Lunch in Diffusion U-Net", CVPR 2024, arXiv:2309.11497):
a sampling-time re-weighting of a U-Net's decoder, no training.

In the decoder stage l, before the backbone features h_l and the skip features s_l are concatenated,

    backbone:  h_l[:, :C/2] <- b_l * h_l[:, :C/2]          (the first half of the channels; the rest as they are)
    skip:      s_l <- IFFT( FFT(s_l) * beta_l ),  beta_l(r) = s_l inside the low-frequency window, 1 outside,

so that b_l > 1 strengthens the backbone (its denoising) and s_l < 1 damps the skip path's low frequencies
(against the over-smoothing a stronger backbone brings). The paper's method section (equation numbers not
checked here) writes the backbone factor as structure-related, alpha_l = (b_l - 1) (x_l - min x_l) /
(max x_l - min x_l) + 1 with x_l the channel mean of h_l; diffusers (``diffusers.utils.torch_utils.apply_freeu``,
0.42, "adapted from the official code repository") scales by the constant b_l, and diffkit follows diffusers
exactly: :func:`scale_backbone` and :func:`fourier_filter` are its two operations (threshold 1: a 2x2 window
around the centred zero frequency of ``fftshift``), tested equal to diffusers' on the same tensors.

Stages: diffusers applies FreeU in the first two up blocks of its U-Net (stage 1: ``up_blocks[0]``, the
lowest resolution; stage 2: ``up_blocks[1]``), before each resnet's concatenation of a skip (every resnet
of the block). diffkit's U-Net has ``num_res_blocks + 1`` up chains per level, each concatenating one skip,
levels from the lowest resolution up: up chain i is in stage ``i // (num_res_blocks + 1)``, the same
blocks in the same order as diffusers' (:meth:`FreeU.stage_of`; tests/test_freeu.py checks a converted
``UNet2DModel``). Off (the default) the U-Net runs as before, bit for bit; FreeU never applies in training
unless a caller turns it on: :func:`freeu_enabled` is a context for sampling.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from ..errors import DiffkitError

__all__ = ["FreeU", "SD15_FREEU", "parse_freeu", "scale_backbone", "fourier_filter", "set_freeu", "freeu_enabled",
           "freeu_of"]


@dataclass(frozen=True)
class FreeU:
    """FreeU's factors: b1, b2 scale the backbone of stages 1 and 2 (the two lowest-resolution decoder
    stages), s1, s2 the low frequencies of their skip features. Each a positive finite number (diffusers
    treats a 0 as "off"); b = s = 1 changes nothing but FFT round-off."""

    b1: float
    b2: float
    s1: float
    s2: float

    def __post_init__(self):
        for name in ("b1", "b2", "s1", "s2"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 < float(value) < float("inf")):
                raise DiffkitError(f"FreeU {name}={value!r} is not allowed; give a positive finite number")
            object.__setattr__(self, name, float(value))

    def stage(self, index: int) -> tuple[float, float] | None:
        """(b, s) of stage ``index`` (0: diffusers' stage 1, 1: stage 2), None for the stages above."""
        return {0: (self.b1, self.s1), 1: (self.b2, self.s2)}.get(index)

    @staticmethod
    def stage_of(chain: int, num_res_blocks: int) -> int:
        """The decoder stage (0 = the lowest resolution) of diffkit up chain ``chain``."""
        return chain // (num_res_blocks + 1)

    def apply(self, stage: int, h: torch.Tensor, skip: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(h, skip) of a decoder chain in ``stage`` before their concatenation: :func:`scale_backbone` and
        :func:`fourier_filter` in stages 0 and 1 (as diffusers' ``apply_freeu``), unchanged above."""
        factors = self.stage(stage)
        if factors is None:
            return h, skip
        b, s = factors
        return scale_backbone(h, b), fourier_filter(skip, threshold=1, scale=s)

    def as_list(self) -> list[float]:
        """[b1, b2, s1, s2], the CLI's order (``--freeu B1,B2,S1,S2``)."""
        return [self.b1, self.b2, self.s1, self.s2]

    def label(self) -> str:
        """``"FreeU b,s=B1,B2,S1,S2"``, as the commands report it."""
        return "FreeU b,s=" + ",".join(f"{v:g}" for v in self.as_list())


SD15_FREEU = FreeU(b1=1.5, b2=1.6, s1=0.9, s2=0.2)  # diffusers' docs for Stable Diffusion v1-5


def parse_freeu(text) -> FreeU:
    """``"B1,B2,S1,S2"`` (four positive numbers), a :class:`FreeU`, or a sequence of four numbers, as a
    :class:`FreeU`; a one-line error naming the bad value otherwise."""
    if isinstance(text, FreeU):
        return text
    parts = text.split(",") if isinstance(text, str) else list(text) if isinstance(text, (list, tuple)) else None
    form = "give four positive numbers B1,B2,S1,S2 (e.g. 1.5,1.6,0.9,0.2, diffusers' values for SD 1.5)"
    if parts is None or len(parts) != 4:
        raise DiffkitError(f"FreeU {text!r} is not allowed; {form}")
    values = []
    for name, part in zip(("b1", "b2", "s1", "s2"), parts):
        try:
            value = float(part.strip()) if isinstance(part, str) else part
        except ValueError:
            raise DiffkitError(f"FreeU {name}={part.strip()!r} is not a number; {form}") from None
        values.append(value)
    return FreeU(*values)


def scale_backbone(h: torch.Tensor, b: float) -> torch.Tensor:
    """The backbone factor: the first ``C // 2`` channels of ``h`` (B, C, H, W) times ``b``, the others
    unchanged (diffusers' ``apply_freeu``; a new tensor, ``h`` is not modified in place)."""
    half = h.shape[1] // 2
    return torch.cat([h[:, :half] * b, h[:, half:]], dim=1)


def fourier_filter(x: torch.Tensor, threshold: int = 1, scale: float = 1.0) -> torch.Tensor:
    """The skip factor: the 2-D FFT of ``x`` (B, C, H, W) over (H, W), centred (``fftshift``), times
    ``scale`` in the window [H//2 - threshold, H//2 + threshold) x [W//2 - threshold, W//2 + threshold)
    (the lowest frequencies), back by the inverse FFT, real part, in ``x``'s dtype. Computed in float32 as
    diffusers' ``fourier_filter`` (FFT of half precision is not supported or unstable)."""
    dtype = x.dtype
    freq = torch.fft.fftshift(torch.fft.fftn(x.to(torch.float32), dim=(-2, -1)), dim=(-2, -1))
    batch, channels, height, width = freq.shape
    mask = torch.ones((batch, channels, height, width), device=x.device)
    crow, ccol = height // 2, width // 2
    mask[..., crow - threshold:crow + threshold, ccol - threshold:ccol + threshold] = scale
    freq = torch.fft.ifftshift(freq * mask, dim=(-2, -1))
    return torch.fft.ifftn(freq, dim=(-2, -1)).real.to(dtype)


def _network(model):
    """The U-Net under ``model``: a diffkit U-Net, a diffusers U-Net (anything with ``enable_freeu``), or the
    U-Net under a diffkit denoiser (possibly wrapped, compiled, text-conditional)."""
    from .unet import UNet
    model = getattr(model, "_orig_mod", model)
    if isinstance(model, UNet) or hasattr(model, "enable_freeu"):
        return model
    from ..guidance import _unet_of
    return _unet_of(model)


def freeu_of(model) -> FreeU | None:
    """The FreeU a diffkit U-Net (or the U-Net under a denoiser) samples with now, None when off."""
    net = _network(model)
    return net.__dict__.get("freeu") if isinstance(net, torch.nn.Module) else None


def set_freeu(model, freeu) -> FreeU | None:
    """Turn FreeU on (``freeu``: a :class:`FreeU` or ``"B1,B2,S1,S2"``) or off (None) in the U-Net of ``model`` until
    changed again; returns the FreeU it had (None: off). ``model``: a diffkit denoiser or U-Net (the U-Net's
    ``freeu`` attribute, read by its forward), or a diffusers ``UNet2DConditionModel`` (its own
    ``enable_freeu(s1, s2, b1, b2)`` / ``disable_freeu()``). A DiT or a time-series U-Net is refused in one line.
    :func:`freeu_enabled` is the context that restores the state."""
    freeu = None if freeu is None else parse_freeu(freeu)
    net = _network(model)
    if hasattr(net, "enable_freeu"):  # diffusers' own implementation
        up = getattr(net, "up_blocks", [])
        before = [getattr(up[0], name, None) for name in ("b1", "b2", "s1", "s2")] if len(up) else [None]
        if freeu is None:
            net.disable_freeu()
        else:
            net.enable_freeu(s1=freeu.s1, s2=freeu.s2, b1=freeu.b1, b2=freeu.b2)
        return None if None in before else FreeU(*before)
    from .unet import UNet
    if not isinstance(net, UNet):
        raise DiffkitError(f"FreeU re-weights the skip connections of a diffkit image U-Net's decoder; this network "
                           f"({type(net).__name__}) is not one")
    before = net.__dict__.get("freeu")
    if freeu is None:
        net.__dict__.pop("freeu", None)  # the class's None again
    else:
        net.freeu = freeu
    return before


@contextlib.contextmanager
def freeu_enabled(model, freeu):
    """Within the context, the U-Net of ``model`` samples with FreeU ``freeu`` (a :class:`FreeU`, or
    ``"B1,B2,S1,S2"``; None: nothing changes); ``model`` as :func:`set_freeu` takes it. The state before is
    restored on exit, also when the body raises."""
    if freeu is None:
        yield model
        return
    before = set_freeu(model, freeu)
    try:
        yield model
    finally:
        set_freeu(model, before)
