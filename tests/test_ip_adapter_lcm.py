"""IP-Adapter (Ye et al. 2023) on latent consistency model folders against diffusers' pipelines with
``load_ip_adapter`` + ``set_ip_adapter_scale`` + ``ip_adapter_image``: an LCM UNet with a guidance input
(time_cond_proj_dim; LatentConsistencyModelPipeline: no classifier-free pass, the negative image embeds unused),
an LCM-LoRA-style LCMScheduler folder (StableDiffusionPipeline + its LCMScheduler: s > 1 is classifier-free
guidance with the negative image embeds on the null half, s = 1 none), and ``scheduler="lcm"`` with an LCM-LoRA
merged (``LCMScheduler.from_config`` + ``fuse_lora``). The LCMScheduler has timestep_scaling 0.0005 so the
boundary condition changes the result. Tiny random models (tests/test_interop_lcm.py's folders,
tests/test_ip_adapter.py's image encoder and adapter files, tests/test_sd_lora.py's LoRA); same prompts, z_T and
per-sample step noise on both sides."""
import json

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from diffkit.interop.ip_adapter import IPAdapter, load_ip_adapter  # noqa: E402
from diffkit.interop.stable_diffusion import load_stable_diffusion, text_to_image  # noqa: E402
from diffkit.noise import generators_from_seed  # noqa: E402
from test_interop_diffusers import relative_error, tiny_sd_components, tiny_sd_pipeline  # noqa: E402
from test_interop_lcm import PROMPTS, SMALL_SCALING, _save  # noqa: E402
from test_ip_adapter import image_png, ip_adapter_state, save_ip_adapter, tiny_image_encoder  # noqa: E402
from test_sd_lora import UNET_LORA, _add_lora  # noqa: E402


def _adapter_files(root, unet):
    """image_encoder/, ip.safetensors (basic) and plus.bin (Plus) fitting ``unet``, and the image prompt PNG."""
    encoder = tiny_image_encoder(root / "image_encoder")
    save_ip_adapter(ip_adapter_state(unet, encoder), root / "ip.safetensors")
    save_ip_adapter(ip_adapter_state(unet, encoder, "ip-adapter-plus", seed=1), root / "plus.bin")
    return image_png(root / "image.png", width=26)


@pytest.fixture(scope="module")
def lcm_ip(tmp_path_factory):
    """(LatentConsistencyModelPipeline, our SD, root, image PNG): an LCM UNet with time_cond_proj_dim."""
    root = tmp_path_factory.mktemp("lcm_ip")
    pipe, folder = _save(root, "lcm", **SMALL_SCALING)
    png = _adapter_files(root, pipe.unet)
    sd = load_stable_diffusion(folder, progress=False)
    assert sd.guidance_embedding_dim and sd.consistency is not None
    return pipe, sd, root, png


@pytest.fixture(scope="module")
def lcm_lora_ip(tmp_path_factory):
    """(StableDiffusionPipeline with the folder's LCMScheduler, our SD, root, image PNG): no guidance input."""
    root = tmp_path_factory.mktemp("lcm_lora_ip")
    pipe, folder = _save(root, "lcm_lora", lora=True, **SMALL_SCALING)
    png = _adapter_files(root, pipe.unet)
    sd = load_stable_diffusion(folder, progress=False)
    assert not sd.guidance_embedding_dim and sd.consistency is not None
    return pipe, sd, root, png


def _latents(seed=7):
    return torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(seed))


def _theirs(pipe, root, weight, png, scale, steps, guidance, latents, seed):
    """The pipeline's z_0 with the adapter loaded (unloaded again after: the pipeline is a module fixture's)."""
    from PIL import Image
    pipe.load_ip_adapter(str(root), subfolder="", weight_name=weight, local_files_only=True)
    try:
        pipe.set_ip_adapter_scale(scale)
        with torch.no_grad():
            return pipe(PROMPTS, ip_adapter_image=Image.open(png).convert("RGB"), num_inference_steps=steps,
                        guidance_scale=guidance, latents=latents.clone(), generator=generators_from_seed(seed, 2),
                        output_type="latent").images
    finally:
        pipe.unload_ip_adapter()


def _ours(sd, adapter, steps, guidance, latents, seed):
    return text_to_image(sd, PROMPTS, steps=steps, guidance_scale=guidance, latents=latents, seed=seed,
                         return_latents=True, ip_adapter=adapter)


@pytest.mark.parametrize("weight, scale, steps, guidance", [("ip.safetensors", 0.8, 3, 6.0), ("plus.bin", 1.0, 2, 8.5)])
def test_ip_adapter_on_an_lcm_folder_matches_the_lcm_pipeline(lcm_ip, weight, scale, steps, guidance):
    """LCM UNet with w as input (the default consistency sampler): LatentConsistencyModelPipeline with the adapter,
    one UNet call of batch B per step, every row with the positive image embeds; the negative does not matter,
    a negative in place of the positive does."""
    pipe, sd, root, png = lcm_ip
    latents = _latents()
    theirs = _theirs(pipe, root, weight, png, scale, steps, guidance, latents, 3)
    adapter = load_ip_adapter(root / weight, png, scale, progress=False)
    ours = _ours(sd, adapter, steps, guidance, latents, 3)
    assert relative_error(ours, theirs) < 1e-5, relative_error(ours, theirs)
    assert relative_error(_ours(sd, None, steps, guidance, latents, 3), theirs) > 1e-3  # the image prompt acts
    positive, negative = adapter.embeddings()
    other = IPAdapter(adapter.state, adapter.image_encoder, png, scale)
    other.embeddings = lambda: (positive, negative + 1)
    assert torch.equal(_ours(sd, other, steps, guidance, latents, 3), ours)  # no classifier-free pass
    other = IPAdapter(adapter.state, adapter.image_encoder, png, scale)
    other.embeddings = lambda: (negative, negative)
    assert relative_error(_ours(sd, other, steps, guidance, latents, 3), theirs) > 1e-3


@pytest.mark.parametrize("steps, guidance", [(3, 1.0), (3, 1.8)])
def test_ip_adapter_on_an_lcm_lora_folder_matches_the_pipeline(lcm_lora_ip, steps, guidance):
    """An LCMScheduler folder without a guidance input: StableDiffusionPipeline + LCMScheduler + the adapter; at
    s = 1 no classifier-free pass (the positive image embeds), at s > 1 the negative on the null half."""
    pipe, sd, root, png = lcm_lora_ip
    latents = _latents(11)
    theirs = _theirs(pipe, root, "ip.safetensors", png, 0.7, steps, guidance, latents, 5)
    adapter = load_ip_adapter(root / "ip.safetensors", png, 0.7, progress=False)
    ours = _ours(sd, adapter, steps, guidance, latents, 5)
    assert relative_error(ours, theirs) < 1e-5, relative_error(ours, theirs)
    assert relative_error(_ours(sd, None, steps, guidance, latents, 5), theirs) > 1e-3
    positive, _ = adapter.embeddings()
    wrong = IPAdapter(adapter.state, adapter.image_encoder, png, 0.7)
    wrong.embeddings = lambda: (positive, positive)  # the wrong negative matters with guidance only
    if guidance > 1:
        assert relative_error(_ours(sd, wrong, steps, guidance, latents, 5), theirs) > 1e-3
    else:
        assert torch.equal(_ours(sd, wrong, steps, guidance, latents, 5), ours)


@pytest.fixture(scope="module")
def override_ip(tmp_path_factory):
    """(StableDiffusionPipeline with LCMScheduler.from_config and the LoRA fused, root, folder, LoRA, PNG): a
    plain DDIM folder whose scheduler JSON also carries SMALL_SCALING (from_config keeps it)."""
    root = tmp_path_factory.mktemp("override_ip")
    pipe = tiny_sd_pipeline(root)
    pipe.save_pretrained(root / "sd")
    config_file = root / "sd" / "scheduler" / "scheduler_config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), **SMALL_SCALING}))
    base = diffusers.DDIMScheduler.from_pretrained(root / "sd" / "scheduler")
    state, config = _add_lora(tiny_sd_components(root)[0], 5, **UNET_LORA)
    diffusers.StableDiffusionPipeline.save_lora_weights(root / "lora", weight_name="lcm_lora.safetensors",
                                                        unet_lora_layers=state, unet_lora_adapter_metadata=config)
    lora = root / "lora" / "lcm_lora.safetensors"
    png = _adapter_files(root, pipe.unet)
    fused = type(pipe)(**{**pipe.components, "scheduler": diffusers.LCMScheduler.from_config(base.config)})
    fused.set_progress_bar_config(disable=True)
    fused.load_lora_weights(str(lora))
    fused.fuse_lora(lora_scale=1.0)
    return fused, root, root / "sd", lora, png


def test_ip_adapter_with_the_lcm_scheduler_override_matches_the_pipeline(override_ip):
    """``load_stable_diffusion(..., lora=[LCM-LoRA], scheduler="lcm")`` with an IP-Adapter (Plus) = the pipeline
    with ``LCMScheduler.from_config``, the fused LoRA and the adapter, at s = 1 and s = 1.5."""
    pipe, root, folder, lora, png = override_ip
    sd = load_stable_diffusion(folder, lora=[lora], scheduler="lcm", progress=False)
    assert sd.consistency["timestep_scaling"] == SMALL_SCALING["timestep_scaling"]
    adapter = load_ip_adapter(root / "plus.bin", png, 0.6, progress=False)
    latents = _latents(3)
    for guidance in (1.0, 1.5):
        theirs = _theirs(pipe, root, "plus.bin", png, 0.6, 3, guidance, latents, 4)
        ours = _ours(sd, adapter, 3, guidance, latents, 4)
        assert relative_error(ours, theirs) < 1e-5, relative_error(ours, theirs)
        assert relative_error(_ours(sd, None, 3, guidance, latents, 4), theirs) > 1e-3
