"""Textual-inversion embeddings (diffkit.interop.sd_textual_inversion, ``diffkit sample --checkpoint SD_FOLDER
--textual-inversion FILE[:TOKEN]``) against diffusers' own ``pipe.load_textual_inversion(file, token=...)`` on a
tiny random folder: diffusers-format files ({token: tensor}, .safetensors and .bin) and A1111 ones
({"string_to_param": {"*": tensor}, "name": ...}, .pt), single and multi-vector (diffusers'
``maybe_convert_prompt`` expands a multi-vector token in the prompt and the negative prompt)."""
import pytest
import torch
from safetensors.torch import load_file, save_file

from diffkit.cli import main
from diffkit.errors import DiffkitError

diffusers = pytest.importorskip("diffusers")
from test_interop_diffusers import relative_error, tiny_sd_components, tiny_sd_pipeline  # noqa: E402

WIDTH = 32  # the tiny text encoder's hidden size
PROMPTS = ["hot {} o", "{} ph"]
NEGATIVE = "x {}"
STEPS, GUIDANCE = 2, 5.0


def _vectors(seed, n):
    return torch.randn(n, WIDTH, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def sd_ti(tmp_path_factory):
    """{"folder", name: (file, its own token)} for single / multi-vector files of both formats."""
    root = tmp_path_factory.mktemp("sd_ti")
    tiny_sd_pipeline(root).save_pretrained(root / "sd")
    out = {"folder": root / "sd"}
    save_file({"<cat-toy>": _vectors(1, 1)[0]}, root / "single.safetensors")  # (d,), diffusers' training script
    out["single"] = (root / "single.safetensors", "<cat-toy>")
    torch.save({"<multi>": _vectors(2, 3)}, root / "multi.bin")
    out["multi"] = (root / "multi.bin", "<multi>")
    for name, n in (("a1111", 4), ("a1111_single", 1)):
        torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": _vectors(n + 10, n).requires_grad_()},
                    "name": f"{name}-emb", "step": 500, "sd_checkpoint": "abc", "sd_checkpoint_name": "x"},
                   root / f"{name}.pt")
        out[name] = (root / f"{name}.pt", f"{name}-emb")
    return out


def _pipe(folder, files):
    """diffusers' pipeline with ``files`` [(path, token or None)] loaded by ``load_textual_inversion``."""
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(folder, local_files_only=True, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    for path, token in files:
        pipe.load_textual_inversion(str(path), token=token)
    return pipe


def _sd(folder, files):
    from diffkit.interop.stable_diffusion import load_stable_diffusion
    return load_stable_diffusion(folder, progress=False, textual_inversion=files)


def _latents():
    return torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(7))


@pytest.mark.parametrize("name", ["single", "multi", "a1111", "a1111_single"])
@pytest.mark.parametrize("explicit", [False, True])
def test_prompt_embeddings_match_diffusers_load_textual_inversion(sd_ti, name, explicit):
    """The prompt and negative-prompt embeddings equal diffusers' ``encode_prompt`` after
    ``load_textual_inversion(file, token=...)``, under the file's own token or an explicit one."""
    path, own = sd_ti[name]
    token = "<tok>" if explicit else own
    files = [(path, "<tok>" if explicit else None)]
    ours = _sd(sd_ti["folder"], files)
    pipe = _pipe(sd_ti["folder"], files)
    prompts = [p.format(token) for p in PROMPTS]
    with torch.no_grad():
        cond, uncond = pipe.encode_prompt(prompts, "cpu", 1, True, negative_prompt=[NEGATIVE.format(token)] * 2)
    assert relative_error(ours.encode_prompts(prompts), cond) < 1e-6
    assert relative_error(ours.encode_prompts([NEGATIVE.format(token)] * 2), uncond) < 1e-6
    base = _sd(sd_ti["folder"], None)
    assert relative_error(ours.encode_prompts(prompts), base.encode_prompts(prompts)) > 1e-2  # the embedding matters


def test_sampled_latents_match_diffusers_with_two_files_and_a_negative_prompt(sd_ti):
    """z_0 of text_to_image with a single- and a multi-vector file, both tokens in the prompts and one in
    the negative prompt, equals diffusers' pipeline with both files loaded (DDIM, the folder's grid)."""
    from diffkit.interop.stable_diffusion import text_to_image
    files = [(sd_ti["multi"][0], None), (sd_ti["a1111_single"][0], "<b>")]
    prompts = ["hot <multi> <b>", "<b> o"]
    ours = text_to_image(_sd(sd_ti["folder"], files), prompts, sampler="ddim", steps=STEPS, grid="scheduler",
                         guidance_scale=GUIDANCE, negative_prompt="x <multi>", latents=_latents(), eta=0.0,
                         return_latents=True)
    with torch.no_grad():
        theirs = _pipe(sd_ti["folder"], files)(prompts, negative_prompt=["x <multi>"] * 2, num_inference_steps=STEPS,
                                                guidance_scale=GUIDANCE, latents=_latents(), eta=0.0,
                                                output_type="latent").images
    assert relative_error(ours, theirs) < 1e-5


def test_multi_vector_order_and_rows(sd_ti):
    """Each vector i of a multi-vector file is the input embedding of token S*_i (S*_0 = S*), and a prompt
    holding S* tokenizes to S*, S*_1, ..., S*_{n-1} in that order (diffusers' maybe_convert_prompt)."""
    path, token = sd_ti["a1111"]
    sd = _sd(sd_ti["folder"], [(path, None)])
    vectors = torch.load(path, weights_only=True)["string_to_param"]["*"]
    names = [token] + [f"{token}_{i}" for i in range(1, 4)]
    ids = sd.tokenizer.convert_tokens_to_ids(names)
    table = sd.text_encoder.get_input_embeddings().weight
    assert torch.equal(table[ids], vectors.detach())
    from diffkit.interop.sd_textual_inversion import expand_prompt
    expanded = expand_prompt(f"hot {token}", sd.tokenizer, sd.prompt_expansions)
    assert sd.tokenizer(expanded).input_ids[-5:-1] == ids  # then the end token


def test_a_prompt_without_the_token_is_unchanged_bit_for_bit(sd_ti):
    """Loading embeddings changes nothing for prompts that do not use them (embeddings and z_0)."""
    from diffkit.interop.stable_diffusion import text_to_image
    base = _sd(sd_ti["folder"], None)
    loaded = _sd(sd_ti["folder"], [(sd_ti["multi"][0], None), (sd_ti["single"][0], None)])
    prompts = ["hot o", "ph"]
    assert torch.equal(base.encode_prompts(prompts), loaded.encode_prompts(prompts))
    run = [text_to_image(sd, prompts, steps=STEPS, latents=_latents(), return_latents=True) for sd in (base, loaded)]
    assert torch.equal(*run)


def _sample(folder, out, *extra, prompt="hot <cat-toy>"):
    return main(["sample", "--checkpoint", str(folder), "--prompt", prompt, "--num", "1", "--steps", "2",
                 "--out", str(out), "--no-progress", "--device", "cpu", *map(str, extra)])


def test_sample_command_adds_textual_inversion_files(sd_ti, tmp_path):
    """`diffkit sample --textual-inversion FILE --textual-inversion FILE:TOKEN`: the grid of text_to_image."""
    from diffkit.images import save_grid
    from diffkit.interop.stable_diffusion import text_to_image
    prompt = "hot <cat-toy> <m>"
    assert _sample(sd_ti["folder"], tmp_path / "s.png", "--textual-inversion", sd_ti["single"][0],
                   "--textual-inversion", f"{sd_ti['multi'][0]}:<m>", prompt=prompt) == 0
    sd = _sd(sd_ti["folder"], [(sd_ti["single"][0], None), (sd_ti["multi"][0], "<m>")])
    save_grid(text_to_image(sd, [prompt], steps=2, seed=0, output_range="-1,1"), tmp_path / "expected.png", 8)
    assert (tmp_path / "s.png").read_bytes() == (tmp_path / "expected.png").read_bytes()


def test_bad_files_are_one_line_errors_before_output(sd_ti, tmp_path, capsys):
    torch.save({"<w>": torch.zeros(2, WIDTH + 1)}, tmp_path / "width.bin")
    save_file({"ph": torch.zeros(WIDTH)}, tmp_path / "vocab.safetensors")  # "ph" is a merge of the tiny vocabulary
    save_file({"<cat-toy>_1": torch.zeros(WIDTH)}, tmp_path / "expanded.safetensors")
    save_file({"a": torch.zeros(WIDTH), "b": torch.zeros(WIDTH)}, tmp_path / "two.safetensors")
    torch.save({"<p>": torch.nn.Linear(2, 2)}, tmp_path / "pickle.bin")  # not a plain tensor dict
    torch.save(torch.zeros(WIDTH), tmp_path / "bare.pt")
    torch.save({"string_to_param": {"x": torch.zeros(WIDTH)}, "name": "n"}, tmp_path / "star.pt")
    torch.save({"<i>": torch.zeros(WIDTH, dtype=torch.long)}, tmp_path / "int.bin")
    torch.save({"<s>": torch.zeros(1, 2, WIDTH)}, tmp_path / "ndim.bin")
    torch.save({"<n>": torch.full((WIDTH,), float("nan"))}, tmp_path / "nan.bin")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    save_file({"clip_l": torch.zeros(WIDTH), "clip_g": torch.zeros(24)}, tmp_path / "xl.safetensors")  # SD-XL's
    multi = sd_ti["multi"][0]
    for files, needle in (([tmp_path / "missing.pt"], "does not exist"),
                          ([tmp_path / "junk.safetensors"], "is not a safetensors file"),
                          ([tmp_path / "width.bin"], "has width 33; this text encoder's token embeddings have "
                                                     "width 32"),
                          ([tmp_path / "vocab.safetensors"], "token ph is already in the tokenizer's vocabulary"),
                          ([f"{multi}:<cat-toy>", tmp_path / "expanded.safetensors"], "token <cat-toy>_1 is also"),
                          ([sd_ti["single"][0], f"{multi}:<cat-toy>"], "token <cat-toy> is also"),
                          ([tmp_path / "two.safetensors"], "holds a dict with 2 entries"),
                          ([tmp_path / "pickle.bin"], "is not a plain tensor file (torch.load weights_only"),
                          ([tmp_path / "bare.pt"], "names no token; give --textual-inversion"),
                          ([tmp_path / "star.pt"], "string_to_param has no '*' entry"),
                          ([tmp_path / "int.bin"], "is a tensor of shape (32,) (torch.int64)"),
                          ([tmp_path / "ndim.bin"], "is a tensor of shape (1, 2, 32)"),
                          ([tmp_path / "nan.bin"], "holds non-finite values"),
                          ([f"{multi}:a b"], "token 'a b' is not allowed"),
                          ([f"{tmp_path / 'xl.safetensors'}:<x>"], "is an SD-XL embedding (clip_l and clip_g); this "
                                                                    "folder has one text encoder")):
        out = tmp_path / "o" / "s.png"
        code = _sample(sd_ti["folder"], out, *[a for f in files for a in ("--textual-inversion", f)])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and needle in err[0], (files, err)
        assert not (tmp_path / "o").exists(), files
    with pytest.raises(SystemExit):  # argparse's usage error
        _sample(sd_ti["folder"], tmp_path / "o" / "s.png", "--textual-inversion", f"{multi}:")
    assert "has an empty token" in capsys.readouterr().err


def test_a_failed_add_leaves_the_tokenizer_and_text_encoder_as_they_were(sd_ti, tmp_path):
    from diffkit.interop.sd_textual_inversion import add_textual_inversions, read_textual_inversions
    torch.save({"<w>": torch.zeros(WIDTH + 1)}, tmp_path / "width.bin")
    sd = _sd(sd_ti["folder"], None)
    table, size = sd.text_encoder.get_input_embeddings().weight.clone(), len(sd.tokenizer)
    with pytest.raises(DiffkitError, match="has width 33"):
        add_textual_inversions(sd, read_textual_inversions([sd_ti["multi"][0], tmp_path / "width.bin"]))
    assert len(sd.tokenizer) == size and torch.equal(sd.text_encoder.get_input_embeddings().weight, table)
    assert sd.prompt_expansions == {}


def test_edit_command_as_the_img2img_pipeline_with_the_embedding(sd_ti, tmp_path, capsys):
    """``diffkit edit --checkpoint SD --textual-inversion FILE``: StableDiffusionImg2ImgPipeline with the
    file loaded (to the PNGs' 1/255), as tests/test_sd_lora.py compares with a LoRA."""
    import numpy as np
    from PIL import Image
    from test_latent_editing import _generators, write_pngs
    pngs = write_pngs(tmp_path / "in", 2, 16, "RGB")
    prompts = ["hot a1111-emb", "a1111-emb ph"]
    assert main(["edit", "--no-progress", "--device", "cpu", "--checkpoint", str(sd_ti["folder"]), "--images",
                 str(pngs), "--prompt", prompts[0], "--prompt", prompts[1], "--strength", "0.5", "--steps", "4",
                 "--spacing", "leading", "--final", "zero", "--guidance-scale", "5", "--guidance-convention",
                 "diffusers", "--seed", "10", "--textual-inversion", str(sd_ti["a1111"][0]),
                 "--out", str(tmp_path / "out")]) == 0
    capsys.readouterr()
    pipe = diffusers.StableDiffusionImg2ImgPipeline.from_pretrained(sd_ti["folder"], local_files_only=True,
                                                                    safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = diffusers.DDIMScheduler.from_config(pipe.scheduler.config, steps_offset=0, set_alpha_to_one=True)
    pipe.load_textual_inversion(str(sd_ti["a1111"][0]))
    image = torch.stack([torch.from_numpy(np.array(Image.open(pngs / f"in_{i}.png"))).permute(2, 0, 1)
                         for i in range(2)]).float() / 255
    with torch.no_grad():
        theirs = pipe(prompts, image=image, strength=0.5, num_inference_steps=4, guidance_scale=5.0, eta=0.0,
                      output_type="np", generator=_generators()).images
    ours = np.stack([np.asarray(Image.open(tmp_path / "out" / f"edit_{i:05d}.png")) for i in range(2)])
    assert np.abs(ours.astype(int) - np.round(theirs * 255).astype(int)).max() <= 1


def test_textual_inversion_is_refused_for_diffkit_checkpoints(tmp_path, capsys):
    (tmp_path / "ckpt").mkdir()
    assert main(["sample", "--checkpoint", str(tmp_path / "ckpt"), "--textual-inversion", "e.pt", "--num", "1",
                 "--out", str(tmp_path / "o" / "s.png"), "--no-progress", "--device", "cpu"]) == 2
    assert "--textual-inversion applies to a Stable Diffusion folder" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.fixture(scope="module")
def ti_lora(tmp_path_factory):
    """A LoRA file (UNet and text encoder, diffusers format) for the folder of ``sd_ti``: built on fresh copies
    of the same tiny networks, as tests/test_sd_lora.py builds its own."""
    pytest.importorskip("peft")
    from test_sd_lora import save_unet_text_lora
    root = tmp_path_factory.mktemp("ti_lora")
    unet, _, text_encoder, _ = tiny_sd_components(root)
    return save_unet_text_lora(root, unet, text_encoder, 3)


def test_textual_inversion_with_a_lora_matches_diffusers(sd_ti, ti_lora):
    """``load_stable_diffusion(textual_inversion=..., lora=...)``: z_0 equals diffusers' pipeline after
    ``load_textual_inversion`` (each file) + ``load_lora_weights`` + ``fuse_lora(lora_scale=s)``; the LoRA and
    its text-encoder part alone each change z_0."""
    from diffkit.interop.stable_diffusion import load_stable_diffusion, text_to_image
    files, scale = [(sd_ti["multi"][0], None), (sd_ti["a1111_single"][0], "<b>")], 0.7
    prompts = ["hot <multi> <b>", "<b> o"]

    def ours(textual_inversion, lora):
        sd = load_stable_diffusion(sd_ti["folder"], progress=False, textual_inversion=textual_inversion, lora=lora)
        return text_to_image(sd, prompts, sampler="ddim", steps=STEPS, grid="scheduler", guidance_scale=GUIDANCE,
                             negative_prompt="x <multi>", latents=_latents(), eta=0.0, return_latents=True)
    pipe = _pipe(sd_ti["folder"], files)
    pipe.load_lora_weights(str(ti_lora))
    pipe.fuse_lora(lora_scale=scale)
    with torch.no_grad():
        theirs = pipe(prompts, negative_prompt=["x <multi>"] * 2, num_inference_steps=STEPS, guidance_scale=GUIDANCE,
                      latents=_latents(), eta=0.0, output_type="latent").images
    both = ours(files, [(ti_lora, scale)])
    assert relative_error(both, theirs) < 1e-5
    assert relative_error(both, ours(files, None)) > 1e-2  # the LoRA matters
    text_only = [(ti_lora.parent / "text.safetensors", scale)]  # only the text encoder's adapters
    save_file({k: v for k, v in load_file(ti_lora).items() if k.startswith("text_encoder.")}, text_only[0][0])
    assert relative_error(ours(files, text_only), ours(files, None)) > 1e-3  # the text encoder's part matters
