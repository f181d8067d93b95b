"""FLUX.1 LoRA files in kohya / BFL format (diffkit.interop.flux_lora, ``--lora FILE[:S]`` on a FLUX folder) against
diffusers' FluxPipeline ``load_lora_weights`` + ``fuse_lora`` on the tiny dev folder of test_interop_flux: a random
LoRA on every BFL module diffusers converts (fused qkv / linear1 included) and on CLIP, written with kohya's keys,
with BFL's (``diffusion_model.`` + lora_A / lora_B) and with ComfyUI's (``diffusion_model.`` + lora_down / lora_up)."""
import pytest
import torch
from safetensors.torch import save_file

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("peft")

from diffkit.interop.flux import load_flux, text_to_image  # noqa: E402
from diffkit.interop.flux_lora import DOUBLE, SINGLE, TOP, bfl_targets  # noqa: E402

from test_interop_diffusers import relative_error  # noqa: E402
import test_interop_flux  # noqa: E402
import test_interop_flux_more  # noqa: E402

tiny_flux = test_interop_flux.tiny_flux  # the folder fixture, shared
SCALE = 0.7
CLIP = ["text_model.encoder.layers.0.self_attn.q_proj", "text_model.encoder.layers.1.mlp.fc1"]


def _bfl_modules(transformer):
    """{BFL module name: (in features, out rows)} of every module diffusers converts, for this transformer."""
    layers = dict(transformer.named_modules())
    names = [f"double_blocks.0.{k}" for k in DOUBLE] + [f"single_blocks.0.{k}" for k in SINGLE] + list(TOP)
    out = {}
    for name in names:
        targets = [layers[t] for t in bfl_targets(name.replace(".", "_"))]
        out[name] = (targets[0].in_features, sum(t.out_features for t in targets))
    return out


def _lora(transformer, clip, seed=0):
    """{(component, module): (A, B, alpha or None)}: rank 2 (alpha 3), txt_attn.qkv rank 3 with a block-diagonal B
    (diffusers' "sparse" split), the final layer's without alpha (diffusers drops it), two CLIP layers."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, (fan_in, rows) in _bfl_modules(transformer).items():
        rank = 3 if name.endswith("txt_attn.qkv") else 2
        up = torch.randn(rows, rank, generator=gen) * 0.3
        if rank == 3:
            up = up * torch.block_diag(*[torch.ones(rows // 3, 1)] * 3)
        alpha = None if name.startswith("final_layer") else torch.tensor(1.5 if rank == 3 else 3.0)
        out["unet", name] = (torch.randn(rank, fan_in, generator=gen) * 0.3, up, alpha)
    layers = dict(clip.named_modules())
    for name in CLIP:
        layer = layers.get(name) or layers[name[len("text_model."):]]
        out["te", name] = (torch.randn(2, layer.in_features, generator=gen) * 0.3,
                           torch.randn(layer.out_features, 2, generator=gen) * 0.3, torch.tensor(1.0))
    return out


def _file(lora, style):
    """The adapters under ``style``'s keys: kohya, bfl (diffusion_model. + lora_A / lora_B), comfy (diffusion_model.
    + lora_down / lora_up, ComfyUI's text_encoders.clip_l.transformer. for CLIP)."""
    out = {}
    for (component, name), (down, up, alpha) in lora.items():
        if style == "kohya" or component == "te" and style == "bfl":
            base, parts = f"lora_{component}_{name.replace('.', '_')}", ("lora_down.weight", "lora_up.weight")
        else:
            base = ("diffusion_model." if component == "unet" else "text_encoders.clip_l.transformer.") + name
            parts = ("lora_A.weight", "lora_B.weight") if style == "bfl" else ("lora_down.weight", "lora_up.weight")
        out.update({f"{base}.{parts[0]}": down, f"{base}.{parts[1]}": up})
        if alpha is not None:
            out[f"{base}.alpha"] = alpha
    return out


def _fused(layer, down, up, alpha):
    """W0 + s (alpha / r) B A (Hu et al. 2021, eq. 3)."""
    rank = down.shape[0]
    return layer.weight + SCALE * (rank if alpha is None else float(alpha)) / rank * (up @ down)


@pytest.fixture(scope="module")
def bfl_lora(tiny_flux, tmp_path_factory):
    """(adapters, {style: file}, the dev pipeline after load_lora_weights(kohya dict) + fuse_lora(0.7), the prefix its
    converter forgets on the top-level modules restored). Merged by the closed form instead: the single block's
    linear1 (diffusers 0.42.1 splits it at FLUX.1's 3072 / 12288 only) and CLIP's (diffusers' kohya text-encoder
    keys are "unexpected" to transformers 5's load_adapter, which drops them)."""
    _, folder, flux = tiny_flux[True]
    lora = _lora(flux.transformer, flux.text_encoder)
    root = tmp_path_factory.mktemp("flux_bfl_lora")
    files = {}
    for style in ("kohya", "bfl", "comfy"):
        files[style] = root / f"{style}.safetensors"
        save_file(_file(lora, style), files[style])
    pipe = diffusers.FluxPipeline.from_pretrained(folder, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    kohya = {k: v for k, v in _file(lora, "kohya").items() if "linear1" not in k and "_te" not in k}
    converted = diffusers.FluxPipeline.lora_state_dict(kohya)  # diffusers' own conversion, whose img_in / txt_in /
    pipe.load_lora_weights({k if k.startswith("transformer.") else "transformer." + k: v  # *_in / final_layer keys
                            for k, v in converted.items()})  # lack "transformer.": load_lora_weights drops them
    pipe.fuse_lora(lora_scale=SCALE, components=["transformer"])
    pipe.unload_lora_weights()
    block, clip = pipe.transformer.single_transformer_blocks[0], dict(pipe.text_encoder.named_modules())
    closed = {"single_blocks.0.linear1": [block.attn.to_q, block.attn.to_k, block.attn.to_v, block.proj_mlp]}
    closed.update({name: [clip.get(name) or clip[name[len("text_model."):]]] for name in CLIP})
    with torch.no_grad():
        for name, layers in closed.items():
            down, up, alpha = lora["unet" if name.startswith("single") else "te", name]
            delta = SCALE * float(alpha) / down.shape[0] * (up @ down)  # the (fused) layer's update, split by rows
            for layer, rows in zip(layers, delta.split([layer.out_features for layer in layers])):
                layer.weight += rows
    return lora, files, pipe


def test_flux_kohya_lora_matches_load_lora_weights_and_fuse_lora(tiny_flux, bfl_lora):
    """A kohya-format file: the transformer's and CLIP's weights are the pipeline's after load_lora_weights +
    fuse_lora(0.7) (the fused qkv / linear1 split into diffusers' layers, alpha / r, the final modulation's halves
    swapped), and so are 3 sampled steps' latents; scale 0 changes nothing, bit for bit."""
    _, folder, flux = tiny_flux[True]
    lora, files, pipe = bfl_lora
    merged = load_flux(folder, progress=False, lora=[(files["kohya"], SCALE)])
    worst, changed = 0.0, []
    for name in ("transformer", "text_encoder", "text_encoder_2"):
        theirs, base = dict(getattr(pipe, name).state_dict()), dict(getattr(flux, name).state_dict())
        for key, value in getattr(merged, name).state_dict().items():
            worst = max(worst, float((value - theirs[key]).abs().max()))
            changed.append(not torch.equal(value, base[key]))
    print("flux kohya lora weights", worst, sum(changed))
    assert worst < 1e-6 and sum(changed) == (8 + 2 * 3) + (2 + 4) + 10 + 2  # every adapted layer (qkv: 3, linear1: 4)
    latents = test_interop_flux._latents()
    theirs = test_interop_flux._theirs(pipe, latents, steps=3)
    ours = text_to_image(merged, test_interop_flux.PROMPTS, steps=3, latents=latents, max_sequence_length=12,
                         return_latents=True)
    print("flux kohya lora latents", float((ours - theirs).abs().max()), relative_error(ours, theirs))
    assert relative_error(ours, theirs) < 1e-5
    off = load_flux(folder, progress=False, lora=[(files["kohya"], 0.0)])
    assert all(torch.equal(a, b) for a, b in zip(off.transformer.state_dict().values(),
                                                 flux.transformer.state_dict().values()))


def test_flux_bfl_and_comfy_files_equal_the_kohya_file(tiny_flux, bfl_lora):
    """The same tensors under BFL's (diffusion_model. + lora_A / lora_B) and ComfyUI's keys merge bit for bit as the
    kohya file; a final-layer alpha != r is applied as alpha / r (sd-scripts; diffusers 0.42.1 drops it)."""
    from safetensors.torch import load_file
    _, folder, flux = tiny_flux[True]
    lora, files, _ = bfl_lora
    kohya = load_flux(folder, progress=False, lora=[(files["kohya"], SCALE)])
    for style in ("bfl", "comfy"):
        other = load_flux(folder, progress=False, lora=[(files[style], SCALE)])
        for name in ("transformer", "text_encoder"):
            assert all(torch.equal(a, b) for a, b in zip(getattr(other, name).state_dict().values(),
                                                         getattr(kohya, name).state_dict().values())), style
    down, up, _ = lora["unet", "final_layer.adaLN_modulation.1"]
    tensors = {k: v for k, v in load_file(files["bfl"]).items() if "adaLN" in k}
    tensors["diffusion_model.final_layer.adaLN_modulation.1.alpha"] = torch.tensor(5.0)
    save_file(tensors, files["bfl"].with_name("final.safetensors"))
    final = load_flux(folder, progress=False, lora=[(files["bfl"].with_name("final.safetensors"), SCALE)])
    expected = _fused(flux.transformer.norm_out.linear, down, torch.cat(up.chunk(2)[::-1]), 5.0)
    assert float((final.transformer.norm_out.linear.weight - expected).abs().max()) < 1e-6


def test_flux_lora_keys_diffusers_does_not_convert_are_refused_in_one_line(tiny_flux, tmp_path, capsys):
    """Unknown modules (q / k norms), diff / diff_b / dora_scale tensors, T5 keys, a block the transformer lacks, two
    keys for one tensor and an up matrix of the wrong rows: one line each naming the key, before any output."""
    _, folder, _ = tiny_flux[True]
    a, b = torch.zeros(2, 16), torch.zeros(48, 2)
    cases = {
        "norm": ({"diffusion_model.double_blocks.0.img_attn.norm.query_norm.lora_A.weight": a},
                 "key 'diffusion_model.double_blocks.0.img_attn.norm.query_norm.lora_A.weight' is not supported in a "
                 "FLUX LoRA file; allowed: .* double_blocks.N"),
        "diff_b": ({"lora_unet_double_blocks_0_img_attn_qkv.diff_b": torch.zeros(48)},
                   "key 'lora_unet_double_blocks_0_img_attn_qkv.diff_b' is not supported"),
        "t5": ({"lora_te2_encoder_block_0_layer_0_SelfAttention_q.lora_down.weight": a},
               "key 'lora_te2_encoder_block_0_layer_0_SelfAttention_q.lora_down.weight' is not supported .* CLIP"),
        "comfy_t5": ({"text_encoders.t5xxl.transformer.encoder.block.0.layer.0.SelfAttention.q.lora_A.weight": a},
                     "key 'text_encoders.t5xxl.transformer.encoder.block.0.layer.0.SelfAttention.q.lora_A.weight' is "
                     "not supported"),
        "block": ({"lora_unet_double_blocks_3_img_attn_qkv.lora_down.weight": a,
                   "lora_unet_double_blocks_3_img_attn_qkv.lora_up.weight": b},
                  "key 'lora_unet_double_blocks_3_img_attn_qkv.lora_down.weight' adapts transformer_blocks.3.attn.to_q"
                  ", which this FLUX transformer lacks \\(num_layers=1"),
        "twice": ({"diffusion_model.img_in.lora_A.weight": torch.zeros(2, 64),
                   "diffusion_model.img_in.lora_down.weight": torch.zeros(2, 64)},
                  "keys 'diffusion_model.img_in.lora_A.weight' and 'diffusion_model.img_in.lora_down.weight' are "
                  "the same tensor"),
        "rows": ({"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": a,
                  "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight": torch.zeros(16, 2)},
                 "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight is \\(16, 2\\); allowed: \\(48, r\\), the rows "
                 "of transformer_blocks.0.attn.to_q \\+"),
        "loha": ({"lora_unet_img_in.hada_w1_a": torch.zeros(16, 2), "lora_unet_img_in.hada_w1_b": torch.zeros(2, 64),
                  "lora_unet_img_in.hada_w2_a": torch.zeros(16, 2), "lora_unet_img_in.hada_w2_b": torch.zeros(2, 64)},
                 "key 'lora_unet_img_in.hada_w1_a' is a LyCORIS LoHa tensor; diffusers 0.42.1's "
                 "FluxPipeline.load_lora_weights loads LoRA files only")}
    test_interop_flux_more.assert_lora_refused(folder, cases, tmp_path, capsys)
