"""LyCORIS LoKr factors shaped as peft's ``LoKrConfig`` makes them (``factorization(n, -1)``; W2 factorised when
r < max(b, d) / 2, W1 with ``decompose_both`` when r < max(a, c) / 2), so that diffusers' inferred config
(``peft_utils._create_lokr_config``) loads them: the FLUX.2 and Z-Image LoKr tests' files (tests/test_flux2.py,
tests/test_z_image.py)."""
import torch


def lokr_factors(out: int, inp: int, rank, gen, both: bool = False, alpha=None) -> dict:
    """{key tail: tensor} of one Linear's LoKr: ``rank`` None for W1 and W2 both full; ``alpha``: an ``.alpha``."""
    from peft.tuners.lokr.layer import factorization
    (a, b), (c, d) = factorization(out), factorization(inp)
    tensors = {}
    if both and rank and rank < max(a, c) / 2:
        tensors.update(lokr_w1_a=torch.randn(a, rank, generator=gen), lokr_w1_b=torch.randn(rank, c, generator=gen))
    else:
        tensors["lokr_w1"] = torch.randn(a, c, generator=gen)
    if rank and rank < max(b, d) / 2:
        tensors.update(lokr_w2_a=torch.randn(b, rank, generator=gen) * 0.3,
                       lokr_w2_b=torch.randn(rank, d, generator=gen) * 0.3)
    else:
        tensors["lokr_w2"] = torch.randn(b, d, generator=gen) * 0.1
    if alpha is not None:
        tensors["alpha"] = torch.tensor(float(alpha))
    return tensors


def lokr_file(modules: dict, seed: int = 0, both: bool = False, alpha=None) -> dict:
    """A LoKr file's tensors: ``modules`` {key prefix (the file's module name): (out, in, rank)}."""
    gen, out = torch.Generator().manual_seed(seed), {}
    for name, (rows, cols, rank) in modules.items():
        out.update({f"{name}.{tail}": value for tail, value in lokr_factors(
            rows, cols, rank, gen, both, alpha if rank else None).items()})
    return out
