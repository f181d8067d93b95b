"""Original-format SD / SD-XL single files (diffkit.interop.single_file): a tiny random diffusers folder is written as
an LDM / SGM single file (diffusers 0.42.1 ships no diffusers -> original converter, so the inverse map is built
here, and checked: diffusers' own ``from_single_file`` gives every tensor back exactly), then diffkit's converted
folder must hold the very same weights and sample the very same latents as the original folder."""
import shutil

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from diffkit.cli import main as cli_main  # noqa: E402
from diffkit.errors import DiffkitError  # noqa: E402
from diffkit.interop.ldm_names import ldm_names  # noqa: E402
from diffkit.interop.single_file import load_single_file  # noqa: E402
from diffkit.interop.stable_diffusion import load_stable_diffusion, text_to_image  # noqa: E402

from test_interop_diffusers import tiny_sd_pipeline  # noqa: E402
from test_interop_sd_xl import tiny_sd_xl_pipeline  # noqa: E402

# -------------------------------------------------------------- diffusers -> original names (test only)
RESNET_NORMS = {"norm1": "in_layers.0", "norm2": "out_layers.0"}  # what ldm_names (LoRA layers) leaves out


def unet_to_ldm(unet) -> dict:
    """The UNet's state dict under its LDM / SGM names (``model.diffusion_model.``): ldm_names' module map, plus
    the resnets' norms and ``out.0``."""
    state = unet.state_dict()
    modules = {name.rpartition(".")[0] for name in state}
    names = ldm_names(unet, modules)
    out = {}
    for key, value in state.items():
        module, _, leaf = key.rpartition(".")
        head, _, last = module.rpartition(".")
        if module in names:
            ldm = names[module]
        elif module == "conv_norm_out":
            ldm = "out.0"
        elif last in RESNET_NORMS:
            ldm = f"{ldm_names(unet, [head + '.conv1'])[head + '.conv1'].rsplit('.', 2)[0]}.{RESNET_NORMS[last]}"
        else:
            raise AssertionError(f"no LDM name for {key}")
        out[f"model.diffusion_model.{ldm}.{leaf}"] = value
    return out


def vae_to_ldm(vae) -> dict:
    """The AutoencoderKL's state dict under ``first_stage_model.`` names (the inverse of diffusers'
    ``convert_ldm_vae_checkpoint``; the mid attention's linear layers as LDM's 1x1 convolutions)."""
    n = len(vae.config.up_block_types)
    renames = [(r"encoder\.down_blocks\.(\d+)\.resnets\.", lambda m: f"encoder.down.{m[1]}.block."),
               (r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", lambda m: f"encoder.down.{m[1]}.downsample."),
               (r"decoder\.up_blocks\.(\d+)\.resnets\.", lambda m: f"decoder.up.{n - 1 - int(m[1])}.block."),
               (r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.", lambda m: f"decoder.up.{n - 1 - int(m[1])}.upsample."),
               (r"mid_block\.resnets\.(\d+)\.", lambda m: f"mid.block_{int(m[1]) + 1}."),
               (r"mid_block\.attentions\.0\.", lambda m: "mid.attn_1."), (r"conv_shortcut", lambda m: "nin_shortcut"),
               (r"conv_norm_out", lambda m: "norm_out"), (r"group_norm", lambda m: "norm"),
               (r"attn_1\.to_([qkv])\.", lambda m: f"attn_1.{m[1]}."), (r"to_out\.0", lambda m: "proj_out")]
    import re
    out = {}
    for key, value in vae.state_dict().items():
        for pattern, repl in renames:
            key = re.sub(pattern, repl, key)
        if ".attn_1." in key and key.endswith("weight") and value.dim() == 2:
            value = value[:, :, None, None]
        out["first_stage_model." + key] = value
    return out


def clip_to_ldm(encoder, prefix: str) -> dict:
    """A CLIPTextModel under ``prefix`` + ``text_model.`` (as ``cond_stage_model.transformer.``)."""
    return {f"{prefix}text_model.{key.removeprefix('text_model.')}": value
            for key, value in encoder.state_dict().items()}


def open_clip_to_ldm(encoder, prefix: str = "conditioner.embedders.1.model.") -> dict:
    """A CLIPTextModelWithProjection as OpenCLIP (SD-XL's second embedder): q / k / v fused into ``in_proj``,
    the projection transposed (the inverse of diffusers' ``convert_open_clip_checkpoint``)."""
    state, out = encoder.state_dict(), {}
    top = {"text_model.embeddings.position_embedding.weight": "positional_embedding",
           "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
           "text_model.final_layer_norm.weight": "ln_final.weight", "text_model.final_layer_norm.bias": "ln_final.bias"}
    out.update({prefix + ldm: state[key] for key, ldm in top.items()})
    out[prefix + "text_projection"] = state["text_projection.weight"].T.contiguous()
    for i in range(encoder.config.num_hidden_layers):
        ours, theirs = f"text_model.encoder.layers.{i}.", f"{prefix}transformer.resblocks.{i}."
        for leaf in ("weight", "bias"):
            out[f"{theirs}attn.in_proj_{leaf}"] = torch.cat([state[f"{ours}self_attn.{p}_proj.{leaf}"] for p in "qkv"])
            for a, b in (("self_attn.out_proj", "attn.out_proj"), ("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"),
                         ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")):
                out[f"{theirs}{b}.{leaf}"] = state[f"{ours}{a}.{leaf}"]
    return out


def single_file_of(pipe) -> dict:
    """The original-format single file of a diffusers SD / SD-XL pipeline."""
    state = {**unet_to_ldm(pipe.unet), **vae_to_ldm(pipe.vae)}
    if getattr(pipe, "text_encoder_2", None) is None:
        state.update(clip_to_ldm(pipe.text_encoder, "cond_stage_model.transformer."))
    else:
        state.update(clip_to_ldm(pipe.text_encoder, "conditioner.embedders.0.transformer."))
        state.update(open_clip_to_ldm(pipe.text_encoder_2))
    return {key: value.detach().contiguous() for key, value in state.items()}


def _models(pipe) -> dict:
    return {name: module for name, module in pipe.components.items() if isinstance(module, torch.nn.Module)}


def _max_abs_difference(pipe_a, pipe_b) -> float:
    """Largest |difference| over every tensor of every model of two pipelines (names and shapes must agree)."""
    worst = 0.0
    for name, model in _models(pipe_a).items():
        a, b = model.state_dict(), _models(pipe_b)[name].state_dict()
        assert a.keys() == b.keys(), name
        for key in a:
            assert a[key].shape == b[key].shape and a[key].dtype == b[key].dtype, (name, key)
            worst = max(worst, (a[key].double() - b[key].double()).abs().max().item())
    return worst


def _write(path, state):
    from safetensors.torch import save_file
    save_file(state, str(path))
    return path


@pytest.fixture(scope="module", params=["sd", "sd_xl"])
def single(request, tmp_path_factory):
    """(original pipeline, its folder, a config-only copy (no weights), the single file) for SD and SD-XL."""
    root = tmp_path_factory.mktemp(request.param)
    pipe = (tiny_sd_pipeline if request.param == "sd" else tiny_sd_xl_pipeline)(root)
    pipe.save_pretrained(root / "folder")
    shutil.copytree(root / "folder", root / "config", ignore=shutil.ignore_patterns("*.safetensors"))
    return pipe, root / "folder", root / "config", _write(root / "model.safetensors", single_file_of(pipe))


def test_the_inverse_map_is_what_from_single_file_reads_back_exactly(single):
    pipe, _, config, file = single
    back = load_single_file(file, config)
    assert type(back) is type(pipe)
    assert _max_abs_difference(pipe, back) == 0.0  # every tensor of every model: the inversion is exact


def test_convert_command_writes_the_same_weights_and_the_same_latents(single, tmp_path, capsys):
    pipe, folder, config, file = single
    assert cli_main(["convert", "--single-file", str(file), "--config", str(config), "--out",
                     str(tmp_path / "new")]) == 0
    assert "wrote diffusers folder" in capsys.readouterr().out
    out = tmp_path / "new"
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in folder.iterdir())
    assert not list(tmp_path.glob(".*partial*"))
    from safetensors.torch import load_file
    for weights in folder.glob("*/*.safetensors"):
        ours, theirs = load_file(out / weights.relative_to(folder)), load_file(weights)
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in theirs), weights
    a, b = load_stable_diffusion(folder, progress=False), load_stable_diffusion(out, progress=False)
    latents = torch.randn(a.latent_shape(2), generator=torch.Generator().manual_seed(7))
    za, zb = (text_to_image(sd, ["a photo", "hot"], sampler="ddim", steps=2, guidance_scale=5.0,
                            latents=latents.clone(), return_latents=True) for sd in (a, b))
    assert torch.equal(za, zb)
    if hasattr(pipe, "text_encoder_2"):
        return
    assert cli_main(["convert", "--single-file", str(file), "--config", str(config), "--dtype", "float16", "--out",
                     str(tmp_path / "half")]) == 0  # diffusers' torch_dtype: each weight rounded once
    for weights in folder.glob("*/*.safetensors"):
        ours, theirs = load_file(tmp_path / "half" / weights.relative_to(folder)), load_file(weights)
        assert all(torch.equal(ours[k], theirs[k].half()) for k in theirs), weights


def test_sample_and_edit_take_the_single_file_with_its_config_folder(single, tmp_path, capsys):
    """SD: ``diffkit sample``, SD-XL: ``diffkit edit`` with ``--checkpoint FILE --config FOLDER`` write the very PNG
    bytes of the same command on the original folder."""
    from test_latent_editing import cli, write_pngs
    pipe, folder, config, file = single
    if hasattr(pipe, "text_encoder_2"):
        pngs = write_pngs(tmp_path / "in", 1, 16, "RGB")
        for name, model in (("a", [str(folder)]), ("b", [str(file), "--config", str(config)])):
            code, _, err = cli(capsys, "--checkpoint", *model, "--images", pngs, "--prompt", "hot", "--strength", 0.5,
                               "--steps", 2, "--out", tmp_path / name)
            assert code == 0, err
        assert (tmp_path / "a" / "edit_00000.png").read_bytes() == (tmp_path / "b" / "edit_00000.png").read_bytes()
        return
    common = ["sample", "--prompt", "hot", "--steps", "2", "--num", "1", "--no-progress", "--device", "cpu"]
    for name, model in (("a", [str(folder)]), ("b", [str(file), "--config", str(config)])):
        assert cli_main(common + ["--checkpoint", *model, "--out", str(tmp_path / f"{name}.png")]) == 0
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()


def test_bad_single_files_and_configs_are_refused_in_one_line(single, tmp_path, capsys):
    _, folder, config, file = single
    cases = [(["--config", str(config), "--out", str(tmp_path / "o")], file.with_suffix(".ckpt"),
              f"--single-file {str(file.with_suffix('.ckpt'))!r} is a pickle checkpoint"),
             (["--out", str(tmp_path / "o")], file, "needs --config"),
             (["--config", str(folder / "unet"), "--out", str(tmp_path / "o")], file, "is not a diffusers folder"),
             (["--config", str(config), "--out", str(folder)], file, "is not an empty folder")]
    file.with_suffix(".ckpt").write_bytes(b"x")
    for flags, path, match in cases:
        assert cli_main(["convert", "--single-file", str(path)] + flags) == 2
        err = capsys.readouterr().err.strip()
        assert match in err and "\n" not in err, err
    ckpt = file.with_suffix(".ckpt")
    for argv, match in ((["sample", "--checkpoint", str(file), "--prompt", "x"], "single file and no --config"),
                        (["sample", "--checkpoint", str(ckpt), "--config", str(config), "--prompt", "x"], "pickle"),
                        (["edit", "--checkpoint", str(folder), "--config", str(config), "--out", "o"], "not one")):
        assert cli_main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert match in err and "\n" not in err, err
    unet_only = _write(tmp_path / "vae.safetensors", {"first_stage_model.a": torch.zeros(1), "vae.b": torch.zeros(1)})
    with pytest.raises(DiffkitError, match=r"not an SD 1.x / 2.x, SD-XL, SD3 or FLUX.1 single file.*"
                                           r"first_stage_model., vae\."):
        load_single_file(unet_only, config)
    sd3 = _write(tmp_path / "sd3.safetensors", {"model.diffusion_model.joint_blocks.0.x": torch.zeros(1)})
    with pytest.raises(DiffkitError, match="is an SD3 single file but --config .* transformer is missing"):
        load_single_file(sd3, config)
    assert not (tmp_path / "o").exists()


def test_a_config_of_another_family_or_shape_is_refused(single, tmp_path):
    import json
    pipe, _, config, file = single
    other = tmp_path / "other"
    shutil.copytree(config, other)
    index = json.loads((other / "model_index.json").read_text())
    xl = hasattr(pipe, "text_encoder_2")
    index["_class_name"] = "StableDiffusionPipeline" if xl else "StableDiffusionXLPipeline"
    (other / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(DiffkitError, match="single file but --config .* is a Stable"):
        load_single_file(file, other)
    index["_class_name"] = type(pipe).__name__
    (other / "model_index.json").write_text(json.dumps(index))
    unet = json.loads((other / "unet" / "config.json").read_text())
    unet["cross_attention_dim"] = 768
    (other / "unet" / "config.json").write_text(json.dumps(unet))
    with pytest.raises(DiffkitError, match="its UNet's cross_attention_dim is 768, the file's is"):
        load_single_file(file, other)
