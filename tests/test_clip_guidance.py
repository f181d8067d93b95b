"""CLIP guidance (GLIDE, Nichol et al. 2022; diffkit.guidance.CLIPGuidance) and the local CLIP
(diffkit.clip): the guided eps against the closed form eps - sqrt(1 - abar_t) s grad cos worked
out by hand for a linear "CLIP" and a linear denoiser, the preprocessing against transformers'
CLIPImageProcessor, the similarity against CLIPModel's own logits, a tiny random CLIP guiding a
tiny model end to end, and the command line. The CLIPs here have random weights: they check the
mechanism, never image-text agreement."""
import json
import math

import pytest
import torch

import diffkit
from diffkit import Denoiser, NoiseSchedule
from diffkit.checkpoint import save_checkpoint
from diffkit.errors import DiffkitError
from diffkit.guidance import CLIPGuidance
from diffkit.models.unet import UNet, UNetConfig
from test_guidance import run_cli  # the CLI's exit code and captured output

transformers = pytest.importorskip("transformers")
from diffkit.clip import CLIP_MEAN, CLIP_STD, clip_preprocess, load_clip, write_random_clip  # noqa: E402

SCHEDULE = NoiseSchedule.linear(1000)
PROMPT = "a red square"


# ------------------------------------------------------------------ the guided eps in closed form
class LinearEps(torch.nn.Module):
    """eps(x_t, t) = c(t) A vec(x_t): x0-hat(x_t) = M vec(x_t), M = (I - sigma_t c(t) A) / alpha_t."""

    def __init__(self, dim, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.A = torch.nn.Parameter(torch.randn(dim, dim, generator=g, dtype=torch.float64) / math.sqrt(dim))

    def scale(self, t):
        return 0.5 + t / 1000

    def forward(self, x, t):
        c = self.scale(t.to(x.dtype)).reshape(-1, 1)
        return (c * (x.reshape(x.shape[0], -1) @ self.A.T)).reshape(x.shape)


class LinearCLIP:
    """A "CLIP" whose image embedding is W vec(images) (+ t b for a noise-aware one)."""

    def __init__(self, dim, emb, seed=1):
        g = torch.Generator().manual_seed(seed)
        self.W = torch.randn(emb, dim, generator=g, dtype=torch.float64)
        self.b = torch.randn(emb, generator=g, dtype=torch.float64)
        self.times = []

    def __call__(self, images, t=None):
        self.times.append(t)
        u = images.reshape(images.shape[0], -1) @ self.W.T
        return u if t is None else u + t.to(u.dtype)[:, None] / 1000 * self.b


def cosine_grad_u(u, g):
    """d/du cos(u, g) = g_hat / |u| - (u . g_hat) u / |u|^3, by hand."""
    g_hat = g / g.norm()
    norm = u.norm(dim=1, keepdim=True)
    return g_hat / norm - (u @ g_hat)[:, None] * u / norm ** 3


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("on", ["x0", "x_t"])
def test_guided_eps_is_the_closed_form(on, prediction):
    """eps-hat = eps - sqrt(1 - abar_t) s grad_{x_t} cos(f(z), g(c)), z = x0-hat(x_t) (gradient
    through the network: M^T W^T dcos/du) or z = x_t (W^T dcos/du), and x0-hat consistent. With
    v-prediction the network's c A x_t is v: x0-hat = alpha x_t - sigma v, eps = sigma x_t + alpha v."""
    shape, emb = (3, 3, 2, 2), 5
    dim = 12
    net, clip = LinearEps(dim), LinearCLIP(dim, emb)
    den = Denoiser(net, SCHEDULE, prediction_type=prediction)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    text = torch.randn(emb, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    s, t = 7.0, 420
    with torch.no_grad():
        guided = CLIPGuidance(den, clip, text, s, on=on)(x, t)
    abar = SCHEDULE.alphas_cumprod[t].item()
    alpha, sigma = math.sqrt(abar), math.sqrt(1 - abar)
    c = net.scale(torch.tensor(float(t), dtype=torch.float64)).item()
    A = net.A.detach()
    vec = x.reshape(3, -1)
    eye = torch.eye(dim, dtype=torch.float64)
    if prediction == "epsilon":
        eps, M = c * vec @ A.T, (eye - sigma * c * A) / alpha
    else:
        eps, M = sigma * vec + alpha * c * vec @ A.T, alpha * eye - sigma * c * A
    if on == "x0":
        u = vec @ M.T @ clip.W.T
        grad = cosine_grad_u(u, text) @ clip.W @ M  # rows: (M^T W^T dcos/du)^T
        assert clip.times[-1] is None  # a clean image: no time
    else:
        u = vec @ clip.W.T + t / 1000 * clip.b
        grad = cosine_grad_u(u, text) @ clip.W
        assert torch.equal(clip.times[-1], torch.full((3,), float(t)))  # f(x_t, t): training timesteps
    expected = eps - sigma * s * grad
    torch.testing.assert_close(guided.eps.reshape(3, -1), expected, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(guided.x0.reshape(3, -1), (vec - sigma * expected) / alpha, rtol=1e-9, atol=1e-9)


class LinearConditionalEps(LinearEps):
    """eps(x_t, t, y) = c(t) A vec(x_t) + B[y]; label ``classes`` is the null class."""

    def __init__(self, dim, classes, seed=0):
        super().__init__(dim, seed)
        g = torch.Generator().manual_seed(seed + 10)
        self.B = torch.nn.Parameter(torch.randn(classes + 1, dim, generator=g, dtype=torch.float64))

    def forward(self, x, t, y):
        return super().forward(x, t) + self.B[y].reshape(x.shape)


def test_clip_guidance_on_classifier_free_guidance_is_the_closed_form():
    """CLIP guidance stacked on classifier-free guidance (as ``diffkit sample --guidance-scale W
    --clip-guidance`` builds it): eps-bar = c A x + (1 + w) B[y] - w B[null], x0-hat = M x - (sigma /
    alpha) b, and eps-hat = eps-bar - sigma s W^T M^T-chain of cos, through both passes of the network."""
    from diffkit.guidance import ClassifierFreeGuidance
    dim, emb, classes, w, s, t = 12, 5, 3, 2.0, 4.0, 350
    net, clip = LinearConditionalEps(dim, classes), LinearCLIP(dim, emb)
    cfg = ClassifierFreeGuidance(Denoiser(net, SCHEDULE), w, null_class=classes)
    x = torch.randn(3, 3, 2, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    y = torch.tensor([0, 2, 1])
    text = torch.randn(emb, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    with torch.no_grad():
        guided = CLIPGuidance(cfg, clip, text, s)(x, t, y=y)
    abar = SCHEDULE.alphas_cumprod[t].item()
    alpha, sigma = math.sqrt(abar), math.sqrt(1 - abar)
    c = net.scale(torch.tensor(float(t), dtype=torch.float64)).item()
    A, B = net.A.detach(), net.B.detach()
    vec = x.reshape(3, -1)
    b = (1 + w) * B[y] - w * B[classes]
    eps_bar = c * vec @ A.T + b
    M = (torch.eye(dim, dtype=torch.float64) - sigma * c * A) / alpha
    u = (vec @ M.T - sigma / alpha * b) @ clip.W.T
    expected = eps_bar - sigma * s * cosine_grad_u(u, text) @ clip.W @ M
    torch.testing.assert_close(guided.eps.reshape(3, -1), expected, rtol=1e-9, atol=1e-9)


def test_scale_zero_is_the_denoiser_and_bad_settings_are_one_line():
    den = Denoiser(LinearEps(12), SCHEDULE)
    clip = LinearCLIP(12, 5)
    x = torch.randn(2, 3, 2, 2, dtype=torch.float64)
    plain = den(x, 300)
    zero = CLIPGuidance(den, clip, torch.ones(5), 0.0)(x, 300)
    assert torch.equal(zero.eps, plain.eps) and torch.equal(zero.x0, plain.x0) and clip.times == []
    for kwargs, pattern in (({"scale": -1.0}, "CLIP guidance scale"), ({"on": "xt"}, "CLIP guidance input"),
                            ({"text_embedding": torch.ones(2, 2, 5)}, "text embedding of shape")):
        with pytest.raises(DiffkitError, match=pattern) as err:
            CLIPGuidance(den, clip, **{"text_embedding": torch.ones(5), **kwargs})
        assert "\n" not in str(err.value)
    with pytest.raises(DiffkitError, match="3 text embeddings for a batch of 2"):
        CLIPGuidance(den, clip, torch.ones(3, 5), 1.0)(x, 300)
    with pytest.raises(DiffkitError, match=r"embeddings \(batch, dim\) = \(2, 4\)"):
        CLIPGuidance(den, clip, torch.ones(4), 1.0)(x, 300)  # the CLIP gives 5-d embeddings


# ------------------------------------------------------------------ the local CLIP
@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return write_random_clip(tmp_path_factory.mktemp("clip"), image_size=16, patch_size=4, width=32,
                             projection_dim=16)


@pytest.mark.parametrize("size", [(16, 16), (12, 20), (40, 24), (8, 8)])
def test_preprocessing_is_clip_image_processor(size):
    """transformers' CLIPImageProcessor (PIL backend: resize the shorter edge, bicubic; centre crop;
    / 255; CLIP's mean and std) on uint8 images: equal to float precision where no resize is
    needed (the constants), within one uint8 step (PIL rounds after resizing) where it is."""
    h, w = size
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    noise = torch.rand(3, h, w, generator=torch.Generator().manual_seed(0))
    image = (torch.stack([yy, xx, yy * xx]) * 200 + 20 + 30 * noise).round().to(torch.uint8)
    processor = transformers.CLIPImageProcessorPil(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})
    assert tuple(processor.image_mean) == CLIP_MEAN and tuple(processor.image_std) == CLIP_STD
    ref = processor(images=[image.permute(1, 2, 0).numpy()], return_tensors="pt").pixel_values
    ours = clip_preprocess(image[None].float() / 127.5 - 1, 16)
    step = 1 / 255 / min(CLIP_STD)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6 if size == (16, 16) else 1.05 * step)


def test_local_clip_similarity_is_clipmodels_logits(clip_dir):
    """cos = CLIPModel(input_ids, pixel_values).logits_per_image / exp(logit_scale), with the
    processor's pixel values and the tokenizer's ids; the embedding is differentiable."""
    clip = load_clip(clip_dir, progress=False)
    images = torch.randint(0, 256, (2, 16, 16, 3), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    prompts = [PROMPT, "a blue circle"]
    model = transformers.CLIPModel.from_pretrained(str(clip_dir)).eval()
    pixels = transformers.CLIPImageProcessorPil(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})(
        images=list(images.numpy()), return_tensors="pt").pixel_values
    tokens = clip.tokenizer(prompts, padding="max_length", max_length=16, return_tensors="pt")
    with torch.no_grad():
        out = model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask, pixel_values=pixels)
    expected = out.logits_per_image / model.logit_scale.exp()
    x = images.permute(0, 3, 1, 2).float() / 127.5 - 1
    torch.testing.assert_close(clip.similarity(x, prompts), expected, rtol=1e-5, atol=1e-5)
    x.requires_grad_(True)
    (grad,) = torch.autograd.grad(clip(x).sum(), x)
    assert grad.abs().sum() > 0 and not any(p.requires_grad for p in clip.model.parameters())


def test_load_clip_errors_are_one_line(clip_dir, tmp_path):
    text_only = tmp_path / "text_only"
    transformers.CLIPTextModel(transformers.CLIPTextConfig(
        vocab_size=80, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=16)).save_pretrained(str(text_only))
    no_tokenizer = tmp_path / "no_tokenizer"
    no_tokenizer.mkdir()
    for name in ("config.json", "model.safetensors"):
        (no_tokenizer / name).write_bytes((clip_dir / name).read_bytes())
    (tmp_path / "empty").mkdir()
    cases = [(tmp_path / "missing", "does not exist"), (tmp_path / "empty", "not a CLIP model folder (no config.json)"),
             (text_only, "model_type 'clip_text_model'"), (no_tokenizer, "no CLIP tokenizer in")]
    for path, pattern in cases:
        with pytest.raises(DiffkitError) as err:
            load_clip(path, progress=False)
        assert pattern in str(err.value) and "\n" not in str(err.value), (path, err.value)


def test_a_folders_preprocessor_constants_are_used(clip_dir, tmp_path):
    folder = tmp_path / "clip"
    folder.mkdir()
    for f in clip_dir.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    mean, std = [0.5, 0.25, 0.125], [0.2, 0.4, 0.8]
    (folder / "preprocessor_config.json").write_text(json.dumps({"image_mean": mean, "image_std": std}))
    clip = load_clip(folder, progress=False)
    x = torch.zeros(1, 3, 16, 16)  # 0.5 after rescaling
    expected = torch.tensor([(0.5 - m) / s for m, s in zip(mean, std)]).reshape(1, 3, 1, 1).expand(1, 3, 16, 16)
    torch.testing.assert_close(clip.preprocess(x), expected)


# ------------------------------------------------------------------ end to end
def tiny_rgb_unet(seed=0):
    torch.manual_seed(seed)
    return UNet(UNetConfig(channel=8, channel_mult=[1, 2], attn=[], num_res_blocks=1, dropout=0.0, img_size=8,
                           in_channels=3, scale_shift_norm=True)).eval()


@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "dpm-solver++-2m", "euler"])
def test_a_random_clip_guides_a_tiny_model_with_every_sampler_family(clip_dir, sampler):
    """s = 0 is bit-identical to the unguided model; s > 0 moves the samples (finite) and raises
    their CLIP similarity to the prompt, in both modes."""
    clip = load_clip(clip_dir, progress=False)
    den = Denoiser(tiny_rgb_unet(), SCHEDULE)
    text = clip.text_embeddings([PROMPT])[0]

    def draw(d):
        return diffkit.sample(d, (4, 3, 8, 8), sampler, steps=3, seed=0, progress=False)
    plain = draw(den)
    assert torch.equal(draw(CLIPGuidance(den, clip, text, 0.0)), plain)
    before = clip.similarity(plain, [PROMPT]).mean()
    for on in ("x0", "x_t"):
        guided = CLIPGuidance(den, clip, text, 300.0, on=on)
        samples = draw(guided)
        assert torch.isfinite(samples).all() and not torch.allclose(samples, plain)
        assert clip.similarity(samples, [PROMPT]).mean() > before + 0.02, on
        assert guided.clip_calls > 0


def test_clip_guidance_on_x0_runs_under_inference_mode(clip_dir):
    clip = load_clip(clip_dir, progress=False)
    den = Denoiser(tiny_rgb_unet(), SCHEDULE)
    guided = CLIPGuidance(den, clip, clip.text_embeddings([PROMPT])[0], 100.0)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = guided(x, 500).eps
    with torch.inference_mode():
        got = guided(x.clone(), 500).eps
    torch.testing.assert_close(got, expected)


# ------------------------------------------------------------------ command line
def write_checkpoint(path, in_channels):
    net = tiny_rgb_unet() if in_channels == 3 else UNet(UNetConfig(
        channel=8, channel_mult=[1, 2], attn=[], num_res_blocks=1, dropout=0.0, img_size=8, in_channels=1,
        scale_shift_norm=True))
    unet = {"channel": 8, "channel_mult": [1, 2], "attn": [], "num_res_blocks": 1, "dropout": 0.0, "img_size": 8,
            "in_channels": in_channels, "scale_shift_norm": True}
    tensors = {f"model.{k}": v for k, v in net.state_dict().items()}
    tensors["schedule.betas"] = SCHEDULE.betas
    save_checkpoint(path, tensors, {"unet": unet, "config": {"nrow": 4}})
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory, clip_dir):
    d = tmp_path_factory.mktemp("clip_cli")
    sd = d / "sd"  # a folder that names a Stable Diffusion UNet: refused before any weight is read
    sd.mkdir()
    (sd / "model_index.json").write_text(json.dumps({"unet": ["diffusers", "UNet2DConditionModel"]}))
    return {"rgb": write_checkpoint(d / "rgb.safetensors", 3), "gray": write_checkpoint(d / "gray.safetensors", 1),
            "clip": clip_dir, "dir": d, "sd": sd}


def read_pngs(folder):
    """The images of a folder of PNGs, in [-1, 1] (B, 3, H, W)."""
    import numpy as np
    from PIL import Image
    arrays = [np.asarray(Image.open(f).convert("RGB")) for f in sorted(folder.glob("*.png"))]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 127.5 - 1


def test_cli_clip_guidance_round_trip(files, capsys):
    """--clip-scale 0 writes the unguided grid byte for byte; s > 0 another one, whose images are
    closer to the prompt in the CLIP's embedding."""
    d = files["dir"]

    def grid(name, *flags):
        code, out = run_cli(capsys, "sample", "--checkpoint", files["rgb"], "--steps", 3, "--num", 4, "--out",
                            d / f"{name}.png", "--individual", d / name, "--no-progress", "--device", "cpu", *flags)
        assert code == 0, out.err
        return (d / f"{name}.png").read_bytes(), out.out
    plain, _ = grid("plain")
    zero, _ = grid("zero", "--clip-guidance", PROMPT, "--clip-model", files["clip"], "--clip-scale", 0)
    assert zero == plain
    guided, summary = grid("guided", "--clip-guidance", PROMPT, "--clip-model", files["clip"], "--clip-scale", 300)
    assert guided != plain and "CLIP guidance 'a red square' s=300" in summary
    clip = load_clip(files["clip"], progress=False)
    sims = {name: clip.similarity(read_pngs(d / name), [PROMPT]).mean().item() for name in ("plain", "guided")}
    assert sims["guided"] > sims["plain"], sims
    _, summary = grid("xt", "--clip-guidance", PROMPT, "--clip-model", files["clip"], "--clip-input", "x_t",
                      "--clip-scale", 300)
    assert (d / "xt.png").read_bytes() not in (plain, guided)


@pytest.mark.parametrize("extra,pattern", [
    (["--clip-guidance", PROMPT, "--clip-model", "missing", "--clip-scale", "10"], "does not exist"),
    (["--clip-guidance", PROMPT, "--clip-model", "rgb", "--clip-scale", "10"], "is a file, not a folder"),
    (["--clip-guidance", PROMPT, "--clip-model", "dir", "--clip-scale", "10"],
     "is not a CLIP model folder (no config.json)"),
    (["--clip-guidance", PROMPT, "--clip-model", "clip", "--clip-scale", "-1"], "--clip-scale"),
    (["--clip-guidance", PROMPT, "--clip-model", "clip", "--clip-scale", "10", "--checkpoint", "gray"],
     "needs a model of RGB images (3 channels); this checkpoint makes 1-channel 8x8 images"),
    (["--clip-guidance", PROMPT], "--clip-guidance needs --clip-model DIR"),
    (["--clip-model", "clip"], "--clip-model needs --clip-guidance TEXT"),
    (["--clip-scale", "2"], "--clip-scale needs --clip-guidance TEXT"),
    (["--clip-input", "x_t"], "--clip-input needs --clip-guidance TEXT"),
    (["--clip-guidance", " ", "--clip-model", "clip"], "--clip-guidance ' ' is empty"),
    (["--clip-guidance", PROMPT, "--clip-model", "clip", "--clip-scale", "10", "--checkpoint", "sd",
      "--prompt", "a cat"],
     "--clip-guidance does not apply to a Stable Diffusion folder"),
    (["--thresholding", "dynamic", "--checkpoint", "sd", "--prompt", "a cat"],  # its latents are not in [-1, 1]
     "--thresholding does not apply to a Stable Diffusion folder"),
])
def test_cli_bad_clip_input_is_one_line_exit_2(extra, pattern, files, capsys):
    args = [str(files.get(a, a)) for a in extra]
    if "--checkpoint" not in args:
        args += ["--checkpoint", str(files["rgb"])]
    out_png = files["dir"] / "bad" / "bad.png"
    code, out = run_cli(capsys, "sample", *args, "--steps", 1, "--num", 2, "--out", out_png, "--no-progress",
                        "--device", "cpu")
    err = out.err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and pattern in err and "Traceback" not in err, err
    assert not out_png.parent.exists()  # no partial files


def test_a_latent_checkpoint_is_refused_before_the_clip_is_loaded():
    from diffkit.commands.sample import GuidanceRequest
    request = GuidanceRequest(clip_prompt=PROMPT, clip_model="/nonexistent")
    with pytest.raises(DiffkitError, match="applies to pixel-space checkpoints; this one is latent"):
        request.clip_guided(object(), {"in_channels": 4, "img_size": 8}, decoder=object())


# ------------------------------------------------------------------ review fixes (session 30)
def copy_clip(clip_dir, folder):
    folder.mkdir()
    for f in clip_dir.iterdir():
        if f.is_file():
            (folder / f.name).write_bytes(f.read_bytes())
    return folder


def test_truncated_weights_are_one_line_naming_the_folder(clip_dir, tmp_path):
    folder = copy_clip(clip_dir, tmp_path / "truncated")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:weights.stat().st_size // 2])
    with pytest.raises(DiffkitError) as err:
        load_clip(folder, progress=False)
    message = str(err.value)
    assert "cannot load a CLIP model from" in message and str(folder) in message and "\n" not in message, message


def test_non_finite_weights_are_one_line_naming_the_file_and_tensor(clip_dir, tmp_path):
    """A CLIP of NaN weights loaded, and CLIP guidance pulled every image to NaN (as from_pretrained checks now)."""
    from test_latent_text import damage_weights
    folder = copy_clip(clip_dir, tmp_path / "nan")
    key = damage_weights(folder, float("inf"))
    with pytest.raises(DiffkitError) as err:
        load_clip(folder, progress=False)
    assert str(err.value) == f"--clip-model {folder / 'model.safetensors'}: tensor {key!r} holds NaN or infinite " \
                             f"values; the file is damaged (give a file of finite weights)"


def test_a_scalar_preprocessor_mean_is_spread_to_rgb(clip_dir, tmp_path):
    """transformers' CLIPImageProcessor takes a float image_mean / image_std for every channel."""
    folder = copy_clip(clip_dir, tmp_path / "scalar")
    (folder / "preprocessor_config.json").write_text(json.dumps({"image_mean": 0.5, "image_std": [0.2, 0.4, 0.8]}))
    clip = load_clip(folder, progress=False)
    assert clip.mean == (0.5, 0.5, 0.5) and clip.std == (0.2, 0.4, 0.8)


@pytest.mark.parametrize("content,pattern", [
    ("[1, 2]", "is not a JSON object"),
    ("{not json", "cannot read"),
    ('{"image_mean": [0.5, 0.5]}', "needs 3 values each"),
    ('{"image_mean": "0.5"}', "needs 3 values each"),
    ('{"image_std": [0.5, "a", 0.5]}', "needs 3 values each"),
    ('{"image_std": [0.5, 0.0, 0.5]}', "image_std must be > 0"),
])
def test_a_bad_preprocessor_config_is_one_line(clip_dir, tmp_path, content, pattern):
    folder = copy_clip(clip_dir, tmp_path / "bad")
    (folder / "preprocessor_config.json").write_text(content)
    with pytest.raises(DiffkitError) as err:
        load_clip(folder, progress=False)
    assert pattern in str(err.value) and "preprocessor_config.json" in str(err.value), err.value
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("on", ["x0", "x_t"])
def test_a_text_embedding_made_under_inference_mode_guides(clip_dir, on):
    """g(c) computed under torch.inference_mode() (as a script wrapping everything in it would) gives
    the same guided eps as one computed normally, with the sampling itself under inference mode too."""
    clip = load_clip(clip_dir, progress=False)
    den = Denoiser(tiny_rgb_unet(), SCHEDULE)
    text = clip.text_embeddings([PROMPT])[0]
    with torch.inference_mode():
        text_inf = clip.text_embeddings([PROMPT])[0]
    assert torch.is_inference(text_inf)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = CLIPGuidance(den, clip, text, 100.0, on=on)(x, 500).eps
        got = CLIPGuidance(den, clip, text_inf, 100.0, on=on)(x, 500).eps
    with torch.inference_mode():
        got_inf = CLIPGuidance(den, clip, text_inf, 100.0, on=on)(x.clone(), 500).eps
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    torch.testing.assert_close(got_inf, expected)


class ElementwiseEps(torch.nn.Module):
    """eps = c(t) a * x_t elementwise (no matmul: autocast leaves it in float32)."""

    def __init__(self, dim):
        super().__init__()
        self.a = torch.nn.Parameter(torch.linspace(0.3, 1.2, dim))

    def forward(self, x, t):
        return (x.reshape(x.shape[0], -1) * self.a * (0.5 + t.to(x.dtype)[:, None] / 1000)).reshape(x.shape)


class MatmulCLIP(torch.nn.Module):
    """A "CLIP" nn.Module: images -> W vec(images), a matmul that autocast would run in bfloat16;
    W a parameter or (``buffer=True``) a buffer, in ``dtype``."""

    def __init__(self, dim, emb, dtype=torch.float32, buffer=False):
        super().__init__()
        W = torch.randn(emb, dim, generator=torch.Generator().manual_seed(1)).to(dtype)
        if buffer:
            self.register_buffer("W", W)
        else:
            self.W = torch.nn.Parameter(W, requires_grad=False)

    def forward(self, images, t=None):
        return images.reshape(images.shape[0], -1) @ self.W.T


@pytest.mark.parametrize("on", ["x0", "x_t"])
def test_clip_gradient_is_float32_under_autocast(on):
    """diffkit.sample holds a mixed-precision denoiser's autocast open around the whole loop; the
    CLIP's forward and backward still run in float32 (before the fix the backward ran in bfloat16:
    the guided eps was off by ~u_bf16 = 4e-3 relative). The network here has no matmul, so its own
    part is float32 either way."""
    x = torch.randn(4, 3, 4, 4, generator=torch.Generator().manual_seed(2))
    text = torch.randn(8, generator=torch.Generator().manual_seed(3))
    guided = CLIPGuidance(Denoiser(ElementwiseEps(48), SCHEDULE), MatmulCLIP(48, 8), text, 5.0, on=on)
    with torch.no_grad():
        expected = guided(x, 500).eps
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = guided(x, 500).eps
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("buffer", [False, True])
@pytest.mark.parametrize("on", ["x0", "x_t"])
def test_a_bfloat16_clip_module_gets_its_dtype_and_the_gradient_returns_in_x_dtype(on, buffer):
    """A plain nn.Module CLIP in bfloat16 (weights as parameters, or as buffers only) receives
    bfloat16 images (float32 ones made its matmul raise); the guided eps comes back in float32, close
    to that of the same CLIP in float32 (one bfloat16 rounding of inputs and weights: ~u_bf16)."""
    x = torch.randn(4, 3, 4, 4, generator=torch.Generator().manual_seed(2))
    text = torch.randn(8, generator=torch.Generator().manual_seed(3))
    den = Denoiser(ElementwiseEps(48), SCHEDULE)
    with torch.no_grad():
        plain = den(x, 500).eps
        ref = CLIPGuidance(den, MatmulCLIP(48, 8), text, 5.0, on=on)(x, 500).eps
        got = CLIPGuidance(den, MatmulCLIP(48, 8, torch.bfloat16, buffer), text, 5.0, on=on)(x, 500).eps
    assert got.dtype == torch.float32
    shift, ref_shift = got - plain, ref - plain
    assert ref_shift.abs().max() > 1e-3  # the guidance moves eps
    assert (shift - ref_shift).abs().max() < 0.05 * ref_shift.abs().max()


def test_a_prompt_longer_than_the_context_warns(clip_dir):
    """The random CLIP reads 16 tokens (start and end included); a longer prompt is truncated, with
    one warning naming the count and the limit."""
    from diffkit.errors import DiffkitWarning
    clip = load_clip(clip_dir, progress=False)
    long = "abcdefghijklmnopqrst"  # 20 characters -> 20 + 2 tokens with the character tokenizer
    with pytest.warns(DiffkitWarning, match="22 tokens.*at most 16") as record:
        clip.text_embeddings([long, PROMPT])
    assert len(record) == 1
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        clip.text_embeddings(["abcdefghijklmn"])  # 14 + 2 = 16 tokens: no warning


def test_cli_clip_guidance_needs_a_scale(files, capsys):
    """No default s: a cosine similarity's gradient at s = 1 barely moves a sample (GLIDE's scale
    0.01 with a trained CLIP), so the message asks for one and says its magnitude."""
    out_png = files["dir"] / "noscale" / "s.png"
    code, out = run_cli(capsys, "sample", "--checkpoint", files["rgb"], "--clip-guidance", PROMPT, "--clip-model",
                        files["clip"], "--steps", 1, "--num", 2, "--out", out_png, "--no-progress", "--device", "cpu")
    err = out.err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "--clip-guidance needs --clip-scale S" in err and "100" in err, err
    assert not out_png.parent.exists()


@pytest.mark.parametrize("broken,pattern", [("weights", "no safetensors weights"), ("config", "model_type 'unet'"),
                                            ("tokenizer", "no CLIP tokenizer in")])
def test_cli_clip_folder_is_checked_before_the_checkpoint_is_loaded(files, tmp_path, capsys, monkeypatch, broken,
                                                                     pattern):
    """The CLIP folder's cheap checks run with the flags, before the model is loaded or the output
    folder made (the loader is never called)."""
    import diffkit.loading
    loaded = []
    monkeypatch.setattr(diffkit.loading, "load_denoiser", lambda *a, **k: loaded.append(a))
    folder = copy_clip(files["clip"], tmp_path / "clip")
    if broken == "weights":
        (folder / "model.safetensors").unlink()
    elif broken == "config":
        (folder / "config.json").write_text(json.dumps({"model_type": "unet"}))
    else:
        (folder / "vocab.json").unlink()
    out_png = tmp_path / "out" / "s.png"
    code, out = run_cli(capsys, "sample", "--checkpoint", files["rgb"], "--clip-guidance", PROMPT,
                        "--clip-model", folder, "--clip-scale", 10, "--steps", 1, "--num", 2, "--out", out_png,
                        "--no-progress", "--device", "cpu")
    err = out.err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and pattern in err, err
    assert loaded == [] and not out_png.parent.exists()


def test_cli_refuses_clip_guidance_on_a_latent_checkpoint(files, capsys, monkeypatch):
    """Through the command line: a checkpoint with a decoder (a latent model) is refused, one line."""
    import diffkit.loading
    load = diffkit.loading.load_denoiser

    def load_latent(*args, **kwargs):
        d = load(*args, **kwargs)
        d.decoder = lambda z: z
        return d
    monkeypatch.setattr(diffkit.loading, "load_denoiser", load_latent)
    out_png = files["dir"] / "latent" / "s.png"
    code, out = run_cli(capsys, "sample", "--checkpoint", files["rgb"], "--clip-guidance", PROMPT, "--clip-model",
                        files["clip"], "--clip-scale", 10, "--steps", 1, "--num", 2, "--out", out_png, "--no-progress",
                        "--device", "cpu")
    err = out.err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "applies to pixel-space checkpoints; this one is latent" in err
    assert not out_png.parent.exists()


@pytest.mark.parametrize("kind,pattern", [
    ("sd", "--clip-guidance does not apply to a Stable Diffusion folder"),
    ("series", "--clip-guidance applies to image models; this checkpoint is a time-series model"),
    ("latent", "--clip-guidance applies to pixel-space checkpoints; this one is latent"),
    ("gray", "--clip-guidance needs a model of RGB images (3 channels); this checkpoint makes 1-channel 8x8 images"),
])
@pytest.mark.parametrize("clip_flags", [[], ["--clip-model", "missing", "--clip-scale", "10"]])
def test_cli_a_model_that_cannot_take_clip_guidance_is_refused_before_the_clip_flags(files, tmp_path, capsys,
                                                                                   monkeypatch, kind, pattern,
                                                                                   clip_flags):
    """From the checkpoint's header (or the folder's model_index.json) alone: --clip-guidance on a Stable
    Diffusion folder, a time-series, latent or gray model is refused first, not after asking for --clip-model,
    --clip-scale or a valid CLIP folder; the loader is never called."""
    import diffkit.loading
    from diffkit.models.network import TEMPORAL_UNET
    loaded = []
    monkeypatch.setattr(diffkit.loading, "load_denoiser", lambda *a, **k: loaded.append(a))
    headers = {"series": {"unet": {"network": TEMPORAL_UNET, "in_channels": 2, "seq_length": 8}},
               "latent": {"unet": {"in_channels": 4, "img_size": 8}, "latent": {"scale_factor": 1.0}}}
    checkpoint = files.get(kind)
    if checkpoint is None:  # a header only: nothing past it is read
        checkpoint = tmp_path / f"{kind}.safetensors"
        save_checkpoint(checkpoint, {"schedule.betas": SCHEDULE.betas}, headers[kind])
    out_png = tmp_path / "out" / "s.png"
    code, out = run_cli(capsys, "sample", "--checkpoint", checkpoint, "--clip-guidance", PROMPT,
                        *[str(tmp_path / f) if f == "missing" else f for f in clip_flags], "--steps", 1, "--num", 2,
                        "--out", out_png, "--no-progress", "--device", "cpu")
    err = out.err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and pattern in err, err
    assert loaded == [] and not out_png.parent.exists()


@pytest.mark.parametrize("on", ["x0", "x_t"])
def test_clip_weights_made_under_inference_mode_are_one_line(on):
    """A CLIP module built under torch.inference_mode() has inference-tensor weights, which autograd
    cannot save for backward: one line naming the CLIP (not the network) and what to do."""
    with torch.inference_mode():
        clip = MatmulCLIP(48, 8)
    guided = CLIPGuidance(Denoiser(ElementwiseEps(48), SCHEDULE), clip, torch.ones(8), 5.0, on=on)
    with pytest.raises(DiffkitError) as err:
        with torch.no_grad():
            guided(torch.randn(2, 3, 4, 4), 500)
    message = str(err.value)
    assert f"CLIP guidance on {on} needs gradients through the CLIP" in message and "\n" not in message, message
    assert "inference_mode" in message


@pytest.mark.parametrize("kind", ["clip", "classifier"])
def test_thresholding_clips_the_guided_x0(kind):
    """The order docs/guidance.md states: diffkit.sample(thresholding='clip') wraps the guidance, so
    the x0 a sampler sees is the *guided* x0-hat clipped (guided-diffusion clips before guiding and
    leaves the guided x0 unclipped). The first step's guided x0 exceeds 1 here; the reported one is
    clip(it, -1, 1) exactly, with the same unclipped x0 as without thresholding."""
    from diffkit.guidance import ClassifierGuidance
    den = Denoiser(LinearEps(12), SCHEDULE)
    if kind == "clip":
        guided, cond = CLIPGuidance(den, LinearCLIP(12, 5), torch.ones(5, dtype=torch.float64), 400.0), None
    else:
        clf = torch.nn.Linear(12, 3).double()
        guided = ClassifierGuidance(den, lambda x, t: clf(x.reshape(x.shape[0], -1)), 400.0)
        cond = {"y": torch.tensor([0, 1, 2])}
    noise = torch.randn(3, 3, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    seen = {}
    for thresholding in (None, "clip"):
        steps_x0 = []
        diffkit.sample(guided, noise, "ddim", steps=3, thresholding=thresholding, cond=cond, progress=False,
                       callback=lambda state: steps_x0.append(state["x0"].clone()))
        seen[thresholding] = steps_x0[0]
    assert seen[None].abs().max() > 1.5
    torch.testing.assert_close(seen["clip"], seen[None].clamp(-1, 1), rtol=0, atol=1e-12)
