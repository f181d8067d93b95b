"""Several IP-Adapters at once on a Stable Diffusion 1.x / 2.x or SD-XL folder, as diffusers'
``load_ip_adapter([...], weight_name=[...])`` + ``set_ip_adapter_scale([s_1, ...])`` + ``ip_adapter_image=[...]``.

Each adapter k brings its own image projection (its tokens c_k) and its own keys and values per cross-attention;
the decoupled cross-attention (Ye et al. 2023, eq. 5) gets one image term per adapter, summed in order:

    Z_new = Attention(Q, K, V) + sum_k lambda_k Attention(Q, K'_k, V'_k),   K'_k = c_k W'_k,k, V'_k = c_k W'_v,k

(diffusers' ``IPAdapterAttnProcessor2_0`` with lists; lambda_k = 0 skips adapter k). An adapter's image prompt may be
several images (diffusers' ``ip_adapter_image=[[a, b], c]``): their tokens are concatenated before its attention.
The adapters share nothing but the UNet; the image encoder is each adapter's own (diffusers loads one for all).
Several FLUX.1 adapters: :class:`~.flux_ip_adapter.FluxIPAdapters`; SD3's pipeline takes one adapter.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from ..errors import DiffkitError
from .ip_adapter import IPAdapter, adapted


def adapter_list(adapters, allowed: type, refusal) -> list:
    """``adapters`` as a list of one or more, each exactly of type ``allowed``; one line otherwise (``refusal(the
    type's name)``)."""
    adapters = list(adapters)
    if not adapters:
        raise DiffkitError("give at least one IP-Adapter")
    for adapter in adapters:
        if type(adapter) is not allowed:
            raise DiffkitError(refusal(type(adapter).__name__))
    return adapters


@dataclass
class IPAdapters:
    """One or more :class:`~.ip_adapter.IPAdapter` (each with its image prompt or prompts and scale) on one UNet;
    :meth:`adapting` as :meth:`IPAdapter.adapting <.ip_adapter.IPAdapter.adapting>` (ControlNets first)."""

    adapters: list
    _built: Optional[tuple] = field(default=None, init=False, repr=False)

    def __post_init__(self):
        def refusal(name):  # FLUX: flux_ip_adapter.FluxIPAdapters; SD3's pipeline takes one
            where = ("several FLUX.1 adapters: FluxIPAdapters of diffkit.interop.flux_ip_adapter"
                     if name == "FluxIPAdapter" else "diffusers' SD3 pipeline takes one")
            return (f"IPAdapters takes Stable Diffusion 1.x / 2.x and SD-XL IP-Adapters; a {name} is not allowed "
                    f"({where})")
        self.adapters = adapter_list(self.adapters, IPAdapter, refusal)

    def adapting(self, sd):
        """A copy of ``sd`` whose UNet gets every adapter's image attention (:class:`.ip_adapter.IPAdaptedNet`)."""
        return adapted(sd, self.adapters, self)


__all__ = ["IPAdapters", "adapter_list"]
