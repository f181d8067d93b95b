"""The cost of the perturbed-attention hook when it is off: the demo-sized U-Net's forward with the blocks as
they are (one ``identity_attention`` attribute test per self-attention block) against the same blocks with
the forward they had before the hook (written out here), interleaved in one process, median of ``--repeats``
rounds; and a check that both give the same bits.

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/pag_off_path.py --batch 64 --repeats 30
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from diffkit.models import layers  # noqa: E402
from diffkit.models.attention import attention  # noqa: E402
from diffkit.models.unet import UNet, UNetConfig  # noqa: E402


def forward_before_the_hook(self, x, emb=None, context=None):  # AttentionBlock.forward before PAG
    _, _, height, width = x.shape
    q, k, v = self.qkv(layers._to_tokens(self.norm(x))).chunk(3, dim=-1)
    return x + layers._from_tokens(self.proj(attention(q, k, v, self.heads)), height, width)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=30)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    net = UNet(UNetConfig(img_size=16, in_channels=1, channel=32, channel_mult=[1, 2, 2], attn=[1],
                          num_res_blocks=2, dropout=0.0)).eval()  # the demo's shape
    with torch.no_grad():
        for prm in net.parameters():
            if not prm.any():
                prm.normal_(std=0.05)
    x, t = torch.randn(args.batch, 1, 16, 16), torch.full((args.batch,), 500.0)
    hooked = layers.AttentionBlock.forward
    times = {"with the hook (off)": [], "before the hook": []}
    outs = {}
    with torch.inference_mode():
        for _ in range(3):
            net(x, t)
        for _ in range(args.repeats):
            for name, forward in (("with the hook (off)", hooked), ("before the hook", forward_before_the_hook)):
                layers.AttentionBlock.forward = forward
                start = time.perf_counter()
                outs[name] = net(x, t)
                times[name].append(time.perf_counter() - start)
        layers.AttentionBlock.forward = hooked
    for name, ts in times.items():
        print(f"{name:22s} median {1000 * statistics.median(ts):.2f} ms (min {1000 * min(ts):.2f})")
    print("bit-identical:", torch.equal(outs["with the hook (off)"], outs["before the hook"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
