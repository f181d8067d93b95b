"""Original-format FLUX.1 and SD3 single files (diffkit.interop.single_file_dit): tiny random diffusers folders are
written as Black Forest Labs' / Stability's single files (the inverse of diffusers 0.42.1's
``convert_flux_transformer_checkpoint_to_diffusers`` / ``convert_sd3_transformer_checkpoint_to_diffusers``, built
here and checked: diffusers' own ``from_single_file`` gives every tensor back exactly), then diffkit's converted
folder must hold the very same weights and sample the very same latents as the original folder.

diffusers' FLUX.1 converter splits the single blocks' ``linear1`` at FLUX.1's width 3072 (a constant, not the
config's): for the width-16 test transformer the test scales that one split to the transformer's own width (q, k,
v, mlp rows in the same order) and lowers diffkit's width check with it."""
import json
import shutil
import types

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from diffusers.loaders import single_file_utils  # noqa: E402

from diffkit.cli import main as cli_main  # noqa: E402
from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.interop import library_progress_bars, single_file_dit  # noqa: E402
from diffkit.interop.flux_lora import DOUBLE, SINGLE, TOP  # noqa: E402
from diffkit.interop.single_file import load_single_file  # noqa: E402

from test_interop_flux import tiny_flux_pipeline  # noqa: E402
from test_interop_sd3 import tiny_sd3_pipeline  # noqa: E402
from test_single_file import _max_abs_difference, _write, vae_to_ldm  # noqa: E402

FLUX_NORMS = {"img_attn.norm.query_norm.scale": "attn.norm_q", "img_attn.norm.key_norm.scale": "attn.norm_k",
              "txt_attn.norm.query_norm.scale": "attn.norm_added_q",
              "txt_attn.norm.key_norm.scale": "attn.norm_added_k"}
SINGLE_NORMS = {"norm.query_norm.scale": "attn.norm_q", "norm.key_norm.scale": "attn.norm_k"}
SD3_TOP = {"x_embedder.proj": "pos_embed.proj", "t_embedder.mlp.0": "time_text_embed.timestep_embedder.linear_1",
           "t_embedder.mlp.2": "time_text_embed.timestep_embedder.linear_2", "context_embedder": "context_embedder",
           "y_embedder.mlp.0": "time_text_embed.text_embedder.linear_1",
           "y_embedder.mlp.2": "time_text_embed.text_embedder.linear_2", "final_layer.linear": "proj_out"}
JOINT = {"x_block.attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"), "x_block.attn.proj": ("attn.to_out.0",),
         "context_block.attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
         "context_block.attn.proj": ("attn.to_add_out",), "x_block.adaLN_modulation.1": ("norm1.linear",),
         "context_block.adaLN_modulation.1": ("norm1_context.linear",), "x_block.mlp.fc1": ("ff.net.0.proj",),
         "x_block.mlp.fc2": ("ff.net.2",), "context_block.mlp.fc1": ("ff_context.net.0.proj",),
         "context_block.mlp.fc2": ("ff_context.net.2",)}

SD35 = {"x_block.attn2.qkv": ("attn2.to_q", "attn2.to_k", "attn2.to_v"), "x_block.attn2.proj": ("attn2.to_out.0",),
        **{f"{block}.{attn}.ln_{x}": (f"{attn}.norm_{add}{x}",) for block, add in (("x_block", ""),
                                                                                  ("context_block", "added_"))
           for attn in ("attn", "attn2") for x in "qk" if not (attn == "attn2" and block == "context_block")}}


def _swap(weight):
    """BFL's / SD3's (shift, scale) rows as diffusers' (scale, shift) and back (its own inverse)."""
    shift, scale = weight.chunk(2, dim=0)
    return torch.cat([scale, shift])


class _Original:
    """Collects original-format tensors from a diffusers state dict; ``done`` checks every tensor was used once."""

    def __init__(self, state, prefix):
        self.state, self.prefix, self.out, self.used = state, prefix, {}, set()

    def put(self, name, modules, leaves=("weight", "bias"), swap=False):
        for leaf in leaves:
            keys = [f"{m}.{leaf}" for m in modules if f"{m}.{leaf}" in self.state]
            if keys:
                value = torch.cat([self.state[k] for k in keys])
                self.out[f"{self.prefix}{name}.{leaf}"] = _swap(value) if swap else value
                self.used.update(keys)

    def done(self):
        assert self.used == set(self.state), sorted(set(self.state) - self.used)
        return self.out


def flux_to_bfl(transformer, prefix=""):
    """A FluxTransformer2DModel's state dict under Black Forest Labs' names (flux_lora's tables; the q / k norms'
    ``scale``; the final modulation's rows swapped)."""
    o = _Original(transformer.state_dict(), prefix)
    for bfl, ours in TOP.items():
        o.put(bfl, (ours,), swap=bfl == "final_layer.adaLN_modulation.1")
    for kind, count, table, norms, ours in (("double", transformer.config.num_layers, DOUBLE, FLUX_NORMS,
                                             "transformer_blocks"),
                                            ("single", transformer.config.num_single_layers, SINGLE, SINGLE_NORMS,
                                             "single_transformer_blocks")):
        for i in range(count):
            for bfl, modules in table.items():
                o.put(f"{kind}_blocks.{i}.{bfl}", [f"{ours}.{i}.{m}" for m in modules])
            for bfl, module in norms.items():
                o.put(f"{kind}_blocks.{i}.{bfl.removesuffix('.scale')}", [f"{ours}.{i}.{module}"], leaves=("weight",))
                o.out[f"{prefix}{kind}_blocks.{i}.{bfl}"] = o.out.pop(f"{prefix}{kind}_blocks.{i}.{bfl[:-6]}.weight")
    return o.done()


def sd3_to_original(transformer, prefix="model.diffusion_model."):
    """An SD3Transformer2DModel's state dict under Stability's MM-DiT names (the last block's context modulation
    and the final one's rows swapped)."""
    o = _Original(transformer.state_dict(), prefix)
    o.out[prefix + "pos_embed"] = o.state["pos_embed.pos_embed"]
    o.used.add("pos_embed.pos_embed")
    for name, module in SD3_TOP.items():
        o.put(name, (module,))
    o.put("final_layer.adaLN_modulation.1", ("norm_out.linear",), swap=True)
    last = transformer.config.num_layers - 1
    for i in range(last + 1):
        for name, modules in {**JOINT, **SD35}.items():
            o.put(f"joint_blocks.{i}.{name}", [f"transformer_blocks.{i}.{m}" for m in modules],
                  swap=i == last and name == "context_block.adaLN_modulation.1")
    return o.done()


def _flux_split(monkeypatch, width=16):
    """diffusers' FLUX.1 converter with its single blocks' split at the test transformer's ``width`` (see top)."""
    real = torch.split

    def split(tensor, sizes, dim=0):
        if tuple(sizes) == (3072, 3072, 3072, 4 * 3072):
            sizes = (width, width, width, 4 * width)
        return real(tensor, sizes, dim=dim)
    monkeypatch.setattr(single_file_utils, "torch", types.SimpleNamespace(**{**vars(torch), "split": split}))
    monkeypatch.setattr(single_file_dit, "FLUX_WIDTH", width)


def _config_copy(folder, to, leave_out=("transformer",)):
    """``folder`` without the weights of ``leave_out`` (what --config needs)."""
    shutil.copytree(folder, to, ignore=lambda d, names: [n for n in names if n.endswith(".safetensors")
                                                         and any(d.endswith(c) for c in leave_out)])
    return to


@pytest.fixture(scope="module")
def flux(tmp_path_factory):
    """(pipeline, folder, --config folder, BFL file, ComfyUI file) of a tiny FLUX.1-dev."""
    root = tmp_path_factory.mktemp("flux_single")
    pipe = tiny_flux_pipeline(root, dev=True)
    with library_progress_bars(False):
        pipe.save_pretrained(root / "flux")
    state = {k: v.contiguous() for k, v in flux_to_bfl(pipe.transformer).items()}
    return (pipe, root / "flux", _config_copy(root / "flux", root / "config"),
            _write(root / "flux1.safetensors", state),
            _write(root / "comfy.safetensors", {"model.diffusion_model." + k: v for k, v in state.items()}))


def _sd3_pipeline(root):
    """The tiny SD3 pipeline with SD3's CLIP-L: its projection the identity (what diffusers' converter sets for a
    file's clip_l), so projection_dim = hidden 16 and the pooled width 16 + 6."""
    import transformers
    pipe = tiny_sd3_pipeline(root, pooled_projection_dim=22)
    config = pipe.text_encoder.config.to_dict()
    config["projection_dim"] = config["hidden_size"]
    clip_l = transformers.CLIPTextModelWithProjection(transformers.CLIPTextConfig(**config)).eval()
    with torch.no_grad():
        clip_l.text_projection.weight.copy_(torch.eye(config["hidden_size"]))
    return diffusers.StableDiffusion3Pipeline(**{**pipe.components, "text_encoder": clip_l})


@pytest.fixture(scope="module")
def sd3(tmp_path_factory):
    """(pipeline, folder, --config folder, whole file, file without text encoders, its --config folder)."""
    root = tmp_path_factory.mktemp("sd3_single")
    pipe = _sd3_pipeline(root)
    with library_progress_bars(False):
        pipe.save_pretrained(root / "sd3")
    state = {**sd3_to_original(pipe.transformer), **vae_to_ldm(pipe.vae)}
    encoders = {f"text_encoders.{name}.transformer.{k}": v for name, model in
                (("clip_l", pipe.text_encoder), ("clip_g", pipe.text_encoder_2), ("t5xxl", pipe.text_encoder_3))
                for k, v in model.state_dict().items() if not (name == "clip_l" and k == "text_projection.weight")}
    state = {k: v.detach().contiguous() for k, v in state.items()}
    return (pipe, root / "sd3",
            _config_copy(root / "sd3", root / "config", ("transformer", "vae", "text_encoder", "text_encoder_2",
                                                         "text_encoder_3")),
            _write(root / "sd3.safetensors", {**state, **{k: v.detach().clone() for k, v in encoders.items()}}),
            _write(root / "sd3_no_te.safetensors", state),
            _config_copy(root / "sd3", root / "config_te", ("transformer", "vae")))


def test_flux_files_read_back_exactly_by_from_single_file(flux, monkeypatch):
    pipe, _, config, bfl, comfy = flux
    _flux_split(monkeypatch)
    for file in (bfl, comfy):
        back = diffusers.FluxTransformer2DModel.from_single_file(str(file), config=str(config),
                                                                 subfolder="transformer", local_files_only=True)
        assert _max_abs_difference(types.SimpleNamespace(components={"t": pipe.transformer}),
                                   types.SimpleNamespace(components={"t": back})) == 0.0


def test_sd3_files_read_back_exactly_by_from_single_file(sd3):
    pipe, _, config, whole, no_te, config_te = sd3
    for file, folder in ((whole, config), (no_te, config_te)):
        back = load_single_file(file, folder)
        assert type(back) is diffusers.StableDiffusion3Pipeline
        assert _max_abs_difference(pipe, back) == 0.0


def _same_folder(folder, out):
    from safetensors.torch import load_file
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.safetensors")) == \
        sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.safetensors"))
    for weights in folder.rglob("*.safetensors"):
        ours, theirs = load_file(out / weights.relative_to(folder)), load_file(weights)
        if "encoder.embed_tokens.weight" in ours.keys() - theirs.keys():  # a T5 from the file: saved untied
            assert torch.equal(ours.pop("encoder.embed_tokens.weight"), theirs["shared.weight"])
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in theirs), weights


def test_flux_convert_writes_the_same_weights_and_latents(flux, monkeypatch, tmp_path, capsys):
    from diffkit.interop.flux import load_flux, text_to_image
    _, folder, config, bfl, comfy = flux
    _flux_split(monkeypatch)
    for file in (bfl, comfy):
        out = tmp_path / file.stem
        assert cli_main(["convert", "--single-file", str(file), "--config", str(config), "--out", str(out)]) == 0
        assert "wrote diffusers folder" in capsys.readouterr().out
        _same_folder(folder, out)
    latents = torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(7))
    za, zb = (text_to_image(load_flux(f, progress=False), ["a photo", "hot"], steps=2, latents=latents.clone(),
                            max_sequence_length=12, height=16, width=16, return_latents=True)
              for f in (folder, tmp_path / "comfy"))
    assert torch.equal(za, zb)


def test_sd3_convert_writes_the_same_weights_and_latents(sd3, tmp_path):
    from diffkit.interop.sd3 import load_sd3, text_to_image
    _, folder, config, whole, no_te, config_te = sd3
    for file, cfg in ((whole, config), (no_te, config_te)):
        assert cli_main(["convert", "--single-file", str(file), "--config", str(cfg), "--out",
                         str(tmp_path / file.stem)]) == 0
        _same_folder(folder, tmp_path / file.stem)
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(7))
    za, zb = (text_to_image(load_sd3(f, progress=False), ["a photo", "hot"], steps=2, guidance_scale=4.0,
                            latents=latents.clone(), max_sequence_length=12, return_latents=True)
              for f in (folder, tmp_path / "sd3"))
    assert torch.equal(za, zb)


def test_flux_sample_takes_the_file_with_its_config_folder(flux, monkeypatch, tmp_path):
    """``diffkit sample --checkpoint FLUX_FILE --config FOLDER`` writes the PNG bytes of the original folder."""
    _, folder, config, bfl, _ = flux
    _flux_split(monkeypatch)
    common = ["sample", "--prompt", "hot", "--steps", "2", "--num", "1", "--no-progress", "--device", "cpu",
              "--height", "16", "--width", "16"]
    for name, model in (("a", [str(folder)]), ("b", [str(bfl), "--config", str(config)])):
        assert cli_main(common + ["--checkpoint", *model, "--out", str(tmp_path / f"{name}.png")]) == 0
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()


def test_mismatches_are_refused_in_one_line(flux, sd3, tmp_path, capsys):
    _, _, flux_config, bfl, _ = flux
    _, _, sd3_config, whole, no_te, _ = sd3
    with pytest.raises(DiffkitError, match=r"is a FLUX.1 single file but --config .* is a StableDiffusion3Pipeline "
                                           r"folder whose transformer is SD3Transformer2DModel; allowed: .*Flux"):
        load_single_file(bfl, sd3_config)
    with pytest.raises(DiffkitError, match="is an SD3 single file but --config"):
        load_single_file(whole, flux_config)
    with pytest.raises(DiffkitError, match="transformer of width 16: diffusers 0.42.1's FLUX.1 single-file"):
        load_single_file(bfl, flux_config)  # (the converter's width left at 3072)
    with pytest.raises(DiffkitError, match="has no weights for text_encoder and .* does not hold it"):
        load_single_file(no_te, sd3_config)
    other = shutil.copytree(flux_config, tmp_path / "other")
    cfg = json.loads((other / "transformer" / "config.json").read_text())
    for change, match in (({"in_channels": 384}, r"the file's img_in.weight is \(16, 64\), its transformer config "
                                                 r"gives \(16, 384\)"),
                          ({"guidance_embeds": False}, r"guidance_embeds \(guidance_in\) is False, the file's is True"),
                          ({"num_single_layers": 2}, r"num_single_layers \(single_blocks\) is 2, the file's is 1")):
        (other / "transformer" / "config.json").write_text(json.dumps({**cfg, **change}))
        with pytest.raises(DiffkitError, match=match) as err:
            load_single_file(bfl, other)
        assert "\n" not in str(err.value)
    chroma = _write(tmp_path / "chroma.safetensors", {"double_blocks.0.x": torch.zeros(1),
                                                      "distilled_guidance_layer.in_proj.bias": torch.zeros(1)})
    with pytest.raises(DiffkitError, match="is a Chroma single file: only SD 1.x / 2.x, SD-XL, SD3 and FLUX.1"):
        load_single_file(chroma, flux_config)
    capsys.readouterr()
    for argv, match in (([str(bfl)], "is a FLUX.1 single file and no --config"),
                        ([str(chroma), "--config", str(flux_config)], "is a Chroma single file")):
        assert cli_main(["sample", "--checkpoint", *argv, "--prompt", "x"]) == 2
        err = capsys.readouterr().err.strip()
        assert match in err and "\n" not in err, err


def test_an_sd35_transformer_file_reads_back_into_its_folder(sd3, tmp_path):
    """SD3.5's q / k RMS norms and dual-attention block (MMDiT-X), as a transformer-only file (no VAE: the
    transformer route, the config folder's other models kept)."""
    _, folder, *_ = sd3
    torch.manual_seed(3)
    transformer = diffusers.SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, out_channels=4, num_layers=2, attention_head_dim=8,
        num_attention_heads=4, joint_attention_dim=32, caption_projection_dim=32, pooled_projection_dim=22,
        pos_embed_max_size=16, qk_norm="rms_norm", dual_attention_layers=(0,))
    config = _config_copy(folder, tmp_path / "sd35")
    transformer.save_config(config / "transformer")
    file = _write(tmp_path / "sd35.safetensors", {k: v.contiguous() for k, v in sd3_to_original(transformer).items()})
    back = load_single_file(file, config)
    assert type(back) is single_file_dit.TransformerInFolder
    assert _max_abs_difference(types.SimpleNamespace(components={"t": transformer}),
                               types.SimpleNamespace(components={"t": back.transformer})) == 0.0
    cfg = json.loads((config / "transformer" / "config.json").read_text())
    (config / "transformer" / "config.json").write_text(json.dumps({**cfg, "dual_attention_layers": [1]}))
    with pytest.raises(DiffkitError, match=r"dual_attention_layers \(attn2\) is \[1\], the file's is \[0\]"):
        load_single_file(file, config)
