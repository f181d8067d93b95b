"""The per-call cost of putting an IP-Adapter's processors into a Stable Diffusion UNet and taking them out again
(:class:`diffkit.interop.ip_adapter.IPAdaptedNet` does it around every network call, so a loaded folder stays
plain). Two ways, interleaved in one process, median of ``--repeats`` rounds of ``--calls`` calls:

* ``walk``: diffusers' ``unet.attn_processors`` + ``unet.set_attn_processor`` twice (every module visited, three
  times a call; how the first version did it, written out here);
* ``direct``: ``IPAdaptedNet.installed()`` as it is now (the cross-attentions found once, their processors
  swapped).

On SD 1.5's UNet structure (its config, built on the meta device: no weights, no download) only the swap is timed;
on the tests' tiny random UNet also the forward pass, plain and with the adapter, to put the swap in proportion.

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/ip_adapter_calls.py --repeats 5 --calls 20
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import diffusers  # noqa: E402
import torch  # noqa: E402
from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0  # noqa: E402
from diffusers.models.embeddings import ImageProjection, MultiIPAdapterImageProjection  # noqa: E402

from diffkit.interop.ip_adapter import IPAdaptedNet  # noqa: E402

SD15 = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
            block_out_channels=(320, 640, 1280, 1280),
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, cross_attention_dim=768, attention_head_dim=8)
TINY = dict(block_out_channels=(32, 64), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8)  # tests' tiny_sd_components


def adapted(unet, embed_dim=24) -> IPAdaptedNet:
    """An IPAdaptedNet of random IP processors for ``unet``'s cross-attentions (no inner net: only installed())."""
    dim = unet.config.cross_attention_dim
    processors = {}
    for name in unet.attn_processors:
        if not name.endswith("attn1.processor"):
            width = unet.get_submodule(name.rsplit(".", 1)[0]).to_k.weight.shape[0]
            processors[name] = IPAdapterAttnProcessor2_0(width, dim, num_tokens=(4,), scale=[1.0])
    projection = MultiIPAdapterImageProjection([ImageProjection(embed_dim, dim, 4)])
    for module in (*processors.values(), projection):
        module.to(unet.device).eval()
    embeds = torch.randn(1, embed_dim, device=unet.device)
    return IPAdaptedNet(None, unet, processors, projection, embeds, torch.zeros_like(embeds))


@contextlib.contextmanager
def walked(net: IPAdaptedNet):
    """The first version's installed(): whole-UNet walks."""
    unet = net._unet[0]
    names = [f"{n}.processor" for n, m in unet.named_modules() if any(m is a for a in net._attentions)]
    saved, hid, hid_type = unet.attn_processors, unet.encoder_hid_proj, unet.config.encoder_hid_dim_type
    try:
        unet.set_attn_processor({**saved, **dict(zip(names, net.processors))})
        unet.encoder_hid_proj = net.projection
        unet.config.encoder_hid_dim_type = "ip_image_proj"
        yield
    finally:
        unet.encoder_hid_proj = hid
        unet.config.encoder_hid_dim_type = hid_type
        unet.set_attn_processor(saved)


def per_call_ms(fn, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--calls", type=int, default=20)
    args = parser.parse_args()
    torch.manual_seed(0)
    with torch.device("meta"):
        big = diffusers.UNet2DConditionModel(**SD15)
    tiny = diffusers.UNet2DConditionModel(**TINY).eval()
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([500, 500])
    context = torch.randn(2, 16, 32)
    for label, unet in (("SD 1.5 structure (meta)", big), ("tiny", tiny)):
        with torch.device("meta") if unet is big else contextlib.nullcontext():
            net = adapted(unet)
        embeds = [net.positive.expand(2, -1)[:, None]]

        def swap(how):
            with how(net):
                pass

        def forward(how):
            with how(net), torch.no_grad():
                unet(x, t, context, added_cond_kwargs={"image_embeds": embeds})

        def plain():
            with torch.no_grad():
                unet(x, t, context)
        cases = {"swap, walk": lambda: swap(walked), "swap, direct": lambda: swap(IPAdaptedNet.installed)}
        if unet is tiny:
            cases.update({"forward, plain": plain, "forward + adapter, walk": lambda: forward(walked),
                          "forward + adapter, direct": lambda: forward(IPAdaptedNet.installed)})
            with torch.no_grad(), IPAdaptedNet.installed(net):
                a = unet(x, t, context, added_cond_kwargs={"image_embeds": embeds}).sample
            with torch.no_grad(), walked(net):
                b = unet(x, t, context, added_cond_kwargs={"image_embeds": embeds}).sample
            assert torch.equal(a, b)
        times = {name: [] for name in cases}
        for fn in cases.values():
            fn()  # warm up
        for _ in range(args.repeats):
            for name, fn in cases.items():
                times[name].append(per_call_ms(fn, args.calls))
        modules = sum(1 for _ in unet.modules())
        print(f"{label}: {modules} modules, {len(net.processors)} cross-attentions")
        for name, values in times.items():
            print(f"  {name:28s} median {statistics.median(values):7.2f} ms a call (min {min(values):.2f})")


if __name__ == "__main__":
    main()
