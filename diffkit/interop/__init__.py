"""Interoperability with Hugging Face diffusers (optional extra: ``pip install diffkit[diffusers]``).

* :mod:`.schedulers` - diffusers scheduler configs <-> :class:`~diffkit.schedule.NoiseSchedule`.
* :mod:`.diffusers_unet` - diffkit's pixel-space :class:`~diffkit.models.unet.UNet` <->
  diffusers ``UNet2DModel`` (config and state-dict name map), diffusers-format folders
  (:func:`export_diffusers`, :func:`import_diffusers`).
* :mod:`.dit` - diffkit's :class:`~diffkit.models.dit.DiT` <-> diffusers ``DiTTransformer2DModel``
  (config and state-dict name map: :func:`dit_to_diffusers`, :func:`dit_from_diffusers`).
* :mod:`.dit_pipeline` - DiT checkpoints <-> diffusers ``DiTPipeline`` folders (``export_diffusers`` /
  ``import_diffusers`` of a DiT; ``diffkit sample`` on a folder, with its ``AutoencoderKL`` if it has one).
* :mod:`.denoiser` - any diffusers U-Net as a diffkit :class:`~diffkit.denoiser.Denoiser`.
* :mod:`.stable_diffusion` - a diffusers-format Stable Diffusion folder sampled with diffkit.
* :mod:`.sd_xl` - an SD-XL folder (two text encoders, pooled text and size conditions), the same way.
* :mod:`.kolors` - a Kolors folder (SD-XL's UNet conditioned by ChatGLM3), the same way.
* :mod:`.deepfloyd_if` - DeepFloyd IF folders (a pixel-space cascade: stage I from T5 states through :mod:`.pixart`'s
  code, stage II super-resolution with noise augmentation), their DDPMScheduler as ``ddpm`` with dynamic thresholding;
  their img2img and inpainting pipelines: :mod:`.deepfloyd_if_edit`.
* :mod:`.kandinsky3` - a Kandinsky 3 folder (T5 states cut to the batch's longest mask, ``Kandinsky3UNet``, Kandinsky
  2.2's MoVQ decoder class), through :mod:`.pixart`'s code; img2img with Kandinsky 2.2's start.
* :mod:`.longcat_image` - a LongCat-Image / LongCat-Image-Edit folder (Qwen2.5-VL states padded to 512, 3-axis RoPE
  ids, CFG with per-token renormalisation), through :mod:`.chroma`'s and :mod:`.flux`'s code.
* :mod:`.sd3` - a Stable Diffusion 3 folder (two CLIPs + T5, a flow-matching MM-DiT), the same way.
* :mod:`.flux` - a FLUX.1 folder (CLIP pooled + T5, a flow-matching transformer on packed latents), the same way.
* :mod:`.pixart` - a PixArt-α / PixArt-Σ folder (T5 with attention masks, a DiT with adaLN-single and a learned
  variance, the folder's DPM-Solver), the same way.
* :mod:`.sana` - a Sana folder (Gemma-2 with the complex human instruction and selected tokens, a linear-attention
  flow DiT, DC-AE), through :mod:`.pixart`'s code; :mod:`.sana_sprint` its Sprint folders (sCM steps as the
  ``consistency`` sampler), :mod:`.sana_lora` its LoRA files.
* :mod:`.lumina2` - a Lumina-Image 2.0 folder (Gemma-2 after a system prompt, a unified next-DiT, CFG truncation and
  normalisation), through :mod:`.pixart`'s code.
* :mod:`.hidream` - a HiDream-I1 folder (two CLIP projections pooled, T5 and every Llama layer, a sparse-MoE flow
  transformer, FlowMatchEuler or flow UniPC), through :mod:`.pixart`'s code.
* :mod:`.chroma` - a Chroma folder (FLUX.1-schnell's packing with a T5-only, masked prompt and real CFG), the same
  way, img2img and inpainting as ``ChromaImg2ImgPipeline`` / ``ChromaInpaintPipeline``.
* :mod:`.bria` - a Bria 3.2 folder (FLUX.1's packing, unpadded T5 states zero-filled, zero negative states, real
  CFG), through :mod:`.chroma`'s code.
* :mod:`.bria_fibo` - a Bria FIBO folder (JSON prompts read by SmolLM3, every hidden state fed to its own block,
  unpacked latents, the Wan 2.2 VAE on one frame, real CFG), through :mod:`.chroma`'s code; :mod:`.bria_fibo_edit`
  ``BriaFiboEditPipeline``'s edits from reference tokens (``bria_fibo_edit_image``).
* :mod:`.bria_fibo2` - a Bria FIBO 2 folder (cleaned JSON captions and images of their text read by Qwen3-VL in
  bundles of three RMS-normalised states, FLUX.2's VAE, real CFG), through :mod:`.chroma`'s code; its edits of up to
  five images as clean context tokens (``bria_fibo2_edit_image``).
* :mod:`.cosmos2` - a Cosmos Predict2 text-to-image folder (T5 states, a rectified-flow ``CosmosTransformer3DModel``
  sampled on EDM's Karras sigmas as a flow Denoiser, the Wan VAE on one frame, CFG g = w); :mod:`.cosmos2_video` a
  Video2World folder's image-to-video (``cosmos2_image_to_video``: the conditioning frames held at low noise;
  ``diffkit video``).
* :mod:`.chronoedit` - a ChronoEdit folder's instruction edits (``chronoedit_edit_image``: Wan 2.1's image-to-video
  transformer, the edit read from the last frame of a short video, optional temporal reasoning, flow UniPC).
* :mod:`.hunyuan_video` - a HunyuanVideo text-to-video folder (``hunyuan_video_text_to_video``: Llama template states
  and CLIP pooled, the guidance-distilled video transformer's embedded guidance, true CFG; ``diffkit video``);
  :mod:`.hunyuan_video_i2v` its image-to-video folder (``hunyuan_video_image_to_video``: LLaVA states of the
  template with the image's tokens, the image's latents concatenated or as the clean first frame); and
  :mod:`.hunyuan_skyreels` SkyReels-V1's (``hunyuan_skyreels_image_to_video``: the image's latents beside the noise).
* :mod:`.kandinsky5_video` - a Kandinsky 5 text-to-video folder (``kandinsky5_text_to_video``: :mod:`.kandinsky5`'s
  prompts, CFG and flow grid in the video template, HunyuanVideo's causal 3-D VAE; ``diffkit video``) and its
  image-to-video folder (``kandinsky5_image_to_video``: the image's latents as the kept first frame).
* :mod:`.svd` - a Stable Video Diffusion folder's image-to-video (``svd_image_to_video``: CLIP image embeddings and
  noise-augmented image latents, EDM's v-prediction UNet on Karras sigmas, per-frame guidance; ``diffkit video``).
* :mod:`.wan` - a Wan text-to-video folder's videos (``wan_text_to_video``: UMT5 prompts, CFG, flow UniPC, the Wan
  VAE's whole video; ``diffkit video``); :mod:`.wan_i2v` a Wan image-to-video folder's (``wan_i2v_image_to_video``:
  the same pieces with the image's condition video and CLIP states; Wan 2.2 A14B's experts, first-last-frame).
* :mod:`.ltx` - an LTX-Video folder's text-to-video (``ltx_text_to_video``: T5 prompts, the resolution-shifted
  FlowMatchEuler grid, CFG with guidance rescale, the timestep-conditioned video VAE; ``diffkit video``).
* :mod:`.qwen_image` - a Qwen-Image folder (Qwen2.5-VL prompt states, FLUX.1's packing, true CFG with its norm
  rescaling, the 3-D VAE's normalised latents), the same way, with img2img and inpainting; :mod:`.qwen_image_edit`
  a Qwen-Image-Edit folder's instruction edits (``qwen_image_edit_image``; Plus: several pictures, 2511's
  ``zero_cond_t``); :mod:`.qwen_image_layered` a Qwen-Image-Layered folder's decomposition into RGBA layers
  (``qwen_image_decompose``).
* :mod:`.joyimage` - a JoyImage Edit folder's instruction edits (``joyimage_edit_image``; Plus: several pictures):
  Qwen3-VL prompts seeing the images, diffusers' bucket sizes, the Wan VAE, norm-rescaled CFG.
* :mod:`.flux2` - a FLUX.2 folder (``Flux2Pipeline``: Mistral-3; ``Flux2KleinPipeline``: Qwen3, real CFG) on FLUX.1's
  flow Denoiser and grid; :mod:`.flux2_reference` its reference images in context; :mod:`.flux2_inpaint` a Klein
  folder's inpainting (``Flux2KleinInpaintPipeline``).
* :mod:`.flux_kontext` - FLUX.1 Kontext editing (the reference image's latents as extra tokens), as
  ``FluxKontextPipeline`` / ``FluxKontextInpaintPipeline``.
* :mod:`.marigold` - a Marigold folder (MarigoldDepthPipeline / Normals / Intrinsics: an 8-channel SD 2 UNet's dense
  prediction, the test-time ensemble, ``diffkit predict``); :mod:`.marigold_outputs` its maps, ensembles and pictures.
* :mod:`.lcm` - a Stable Diffusion folder with an LCMScheduler (a latent consistency model, with or
  without the UNet's guidance input ``time_cond_proj_dim``) as a consistency model.
* :mod:`.single_file` - original-format SD 1.x / 2.x and SD-XL single files (LDM / SGM keys) as diffusers folders,
  by diffusers' ``from_single_file`` with a local config folder (``diffkit convert --single-file``);
  :mod:`.single_file_dit` SD3 / SD3.5 and FLUX.1 ones.
* :mod:`.sd_scheduler` - ``load_stable_diffusion(..., scheduler="lcm" / "tcd")``: a plain folder sampled as
  diffusers' ``LCMScheduler`` / ``TCDScheduler.from_config(pipe.scheduler.config)`` (LCM-LoRA, TCD-LoRA).

diffusers (and transformers, for Stable Diffusion) are imported only when a function needs them;
without them a one-line :class:`~diffkit.errors.DiffkitError` says what to install.
See docs/interop.md.
"""
from __future__ import annotations

import contextlib
import importlib
import logging

from ..errors import DiffkitError, first_line

_EXPORTS = {
    "schedule_from_diffusers": "schedulers", "scheduler_config": "schedulers",
    "scheduler_from_schedule": "schedulers", "grid_from_diffusers": "schedulers",
    "flow_scheduler_config": "schedulers",
    "unet2d_config": "diffusers_unet", "unet_config_from_diffusers": "diffusers_unet",
    "state_dict_to_diffusers": "diffusers_unet", "state_dict_from_diffusers": "diffusers_unet",
    "to_diffusers": "diffusers_unet", "from_diffusers": "diffusers_unet",
    "export_diffusers": "diffusers_unet", "import_diffusers": "diffusers_unet",
    "DiffusersNet": "denoiser", "diffusers_denoiser": "denoiser", "write_checkpoint": "diffusers_unet",
    "StableDiffusion": "stable_diffusion", "load_stable_diffusion": "stable_diffusion",
    "text_to_image": "stable_diffusion", "is_stable_diffusion_folder": "stable_diffusion",
    "is_lcm_folder": "lcm",
    "StableDiffusionXL": "sd_xl", "load_sd_xl": "sd_xl", "is_sd_xl_folder": "sd_xl",
    "Kolors": "kolors", "load_kolors": "kolors", "is_kolors_folder": "kolors",
    "DeepFloydIF": "deepfloyd_if", "load_deepfloyd_if": "deepfloyd_if", "is_deepfloyd_if_folder": "deepfloyd_if",
    "super_resolve": "deepfloyd_if",
    "StableDiffusion3": "sd3", "load_sd3": "sd3", "is_sd3_folder": "sd3",
    "Flux": "flux", "load_flux": "flux", "is_flux_folder": "flux",
    "kontext_edit": "flux_kontext", "kontext_inpaint": "flux_kontext", "is_kontext_folder": "flux_kontext",
    "PixArt": "pixart", "load_pixart": "pixart", "is_pixart_folder": "pixart",
    "Sana": "sana", "load_sana": "sana", "is_sana_folder": "sana",
    "Lumina2": "lumina2", "load_lumina2": "lumina2", "is_lumina2_folder": "lumina2",
    "LuminaNext": "lumina_next", "load_lumina_next": "lumina_next", "is_lumina_next_folder": "lumina_next",
    "Chroma": "chroma", "load_chroma": "chroma", "is_chroma_folder": "chroma",
    "Bria": "bria", "load_bria": "bria", "is_bria_folder": "bria",
    "BriaFibo": "bria_fibo", "load_bria_fibo": "bria_fibo", "is_bria_fibo_folder": "bria_fibo",
    "BriaFibo2": "bria_fibo2", "load_bria_fibo2": "bria_fibo2", "is_bria_fibo2_folder": "bria_fibo2",
    "Cosmos2": "cosmos2", "load_cosmos2": "cosmos2", "is_cosmos_folder": "cosmos2",
    "Cosmos2Video": "cosmos2_video", "load_cosmos2_video": "cosmos2_video", "is_cosmos2_video_folder": "cosmos2_video",
    "ChronoEdit": "chronoedit", "load_chronoedit": "chronoedit", "is_chronoedit_folder": "chronoedit",
    "WanI2V": "wan_i2v", "load_wan_i2v": "wan_i2v", "is_wan_i2v_folder": "wan_i2v",
    "HunyuanVideo": "hunyuan_video", "load_hunyuan_video": "hunyuan_video",
    "is_hunyuan_video_folder": "hunyuan_video",
    "HunyuanVideoI2V": "hunyuan_video_i2v", "load_hunyuan_video_i2v": "hunyuan_video_i2v",
    "is_hunyuan_video_i2v_folder": "hunyuan_video_i2v",
    "HunyuanSkyreels": "hunyuan_skyreels", "load_hunyuan_skyreels": "hunyuan_skyreels",
    "is_hunyuan_skyreels_folder": "hunyuan_skyreels",
    "SVD": "svd", "load_svd": "svd", "is_svd_folder": "svd",
    "Wan": "wan", "load_wan": "wan", "is_wan_folder": "wan",
    "LTX": "ltx", "load_ltx": "ltx", "is_ltx_folder": "ltx",
    "AuraFlow": "auraflow", "load_auraflow": "auraflow", "is_auraflow_folder": "auraflow",
    "PRX": "prx", "load_prx": "prx", "is_prx_folder": "prx",
    "PRXPixel": "prx_pixel", "load_prx_pixel": "prx_pixel", "is_prx_pixel_folder": "prx_pixel",
    "Kandinsky5": "kandinsky5", "load_kandinsky5": "kandinsky5", "is_kandinsky5_folder": "kandinsky5",
    "Kandinsky5Video": "kandinsky5_video", "load_kandinsky5_video": "kandinsky5_video",
    "is_kandinsky5_video_folder": "kandinsky5_video", "is_kandinsky5_i2v_folder": "kandinsky5_video",
    "HunyuanDiT": "hunyuan_dit", "load_hunyuan_dit": "hunyuan_dit", "is_hunyuan_dit_folder": "hunyuan_dit",
    "QwenImage": "qwen_image", "load_qwen_image": "qwen_image", "is_qwen_image_folder": "qwen_image",
    "Flux2": "flux2", "load_flux2": "flux2", "is_flux2_folder": "flux2",
    "ZImage": "z_image", "load_z_image": "z_image", "is_z_image_folder": "z_image",
    "OvisImage": "ovis_image", "load_ovis_image": "ovis_image", "is_ovis_image_folder": "ovis_image",
    "ErnieImage": "ernie_image", "load_ernie_image": "ernie_image", "is_ernie_image_folder": "ernie_image",
    "Krea2": "krea2", "load_krea2": "krea2", "is_krea2_folder": "krea2",
    "Ideogram4": "ideogram4", "load_ideogram4": "ideogram4", "is_ideogram4_folder": "ideogram4",
    "NucleusMoEImage": "nucleusmoe", "load_nucleusmoe": "nucleusmoe", "is_nucleusmoe_folder": "nucleusmoe",
    "QwenImage21": "qwen_image21", "load_qwen_image21": "qwen_image21", "is_qwen_image21_folder": "qwen_image21",
    "DreamLite": "dreamlite", "load_dreamlite": "dreamlite", "is_dreamlite_folder": "dreamlite",
    "JoyImage": "joyimage", "load_joyimage": "joyimage", "is_joyimage_folder": "joyimage",
    "HunyuanImage": "hunyuan_image", "load_hunyuan_image": "hunyuan_image",
    "is_hunyuan_image_folder": "hunyuan_image",
    "CogView4": "cogview4", "load_cogview4": "cogview4", "is_cogview4_folder": "cogview4",
    "GlmImage": "glm_image", "load_glm_image": "glm_image", "is_glm_image_folder": "glm_image",
    "CogView3Plus": "cogview3plus", "load_cogview3plus": "cogview3plus", "is_cogview3plus_folder": "cogview3plus",
    "HiDream": "hidream", "load_hidream": "hidream", "is_hidream_folder": "hidream",
    "StableCascade": "stable_cascade", "load_stable_cascade": "stable_cascade",
    "is_stable_cascade_folder": "stable_cascade",
    "Kandinsky3": "kandinsky3", "load_kandinsky3": "kandinsky3", "is_kandinsky3_folder": "kandinsky3",
    "LongCatImage": "longcat_image", "load_longcat_image": "longcat_image", "is_longcat_folder": "longcat_image",
    "Marigold": "marigold", "load_marigold": "marigold", "is_marigold_folder": "marigold",
    "ImageVariation": "sd_image_variation", "load_image_variation": "sd_image_variation",
    "image_variation": "sd_image_variation", "is_image_variation_folder": "sd_image_variation",
    "StableUnCLIP": "stable_unclip", "load_stable_unclip": "stable_unclip",
    "is_stable_unclip_folder": "stable_unclip",
}
_RENAMED = {"dit_to_diffusers": ("dit", "to_diffusers"), "dit_from_diffusers": ("dit", "from_diffusers"),
            "sd3_text_to_image": ("sd3", "text_to_image"), "flux_text_to_image": ("flux", "text_to_image"),
            "flux_image_to_image": ("flux", "image_to_image"), "pixart_text_to_image": ("pixart", "text_to_image"),
            "sana_text_to_image": ("sana", "text_to_image"), "lumina2_text_to_image": ("lumina2", "text_to_image"),
            "lumina_next_text_to_image": ("lumina_next", "text_to_image"),
            "chroma_text_to_image": ("chroma", "text_to_image"), "chroma_image_to_image": ("chroma", "image_to_image"),
            "bria_text_to_image": ("bria", "text_to_image"),
            "bria_fibo_text_to_image": ("bria_fibo", "text_to_image"),
            "bria_fibo_edit_image": ("bria_fibo_edit", "edit_image"),
            "bria_fibo2_text_to_image": ("bria_fibo2", "text_to_image"),
            "bria_fibo2_edit_image": ("bria_fibo2", "edit_image"),
            "cosmos2_text_to_image": ("cosmos2", "text_to_image"),
            "cosmos2_image_to_video": ("cosmos2_video", "image_to_video"),
            "chronoedit_edit_image": ("chronoedit", "edit_image"),
            "wan_i2v_image_to_video": ("wan_i2v", "image_to_video"),
            "hunyuan_video_text_to_video": ("hunyuan_video", "text_to_video"),
            "hunyuan_video_image_to_video": ("hunyuan_video_i2v", "image_to_video"),
            "hunyuan_skyreels_image_to_video": ("hunyuan_skyreels", "image_to_video"),
            "svd_image_to_video": ("svd", "image_to_video"),
            "wan_text_to_video": ("wan", "text_to_video"),
            "ltx_text_to_video": ("ltx", "text_to_video"),
            "auraflow_text_to_image": ("auraflow", "text_to_image"),
            "kandinsky5_text_to_image": ("kandinsky5", "text_to_image"),
            "kandinsky5_text_to_video": ("kandinsky5_video", "text_to_video"),
            "kandinsky5_image_to_video": ("kandinsky5_video", "image_to_video"),
            "prx_text_to_image": ("prx", "text_to_image"),
            "hunyuan_dit_text_to_image": ("hunyuan_dit", "text_to_image"),
            "qwen_image_text_to_image": ("qwen_image", "text_to_image"),
            "qwen_image_image_to_image": ("qwen_image", "image_to_image"),
            "qwen_image_edit_image": ("qwen_image_edit", "edit_image"),
            "qwen_image_decompose": ("qwen_image_layered", "decompose"),
            "flux2_text_to_image": ("flux2", "text_to_image"),
            "flux2_image_to_image": ("flux2_inpaint", "image_to_image"),
            "z_image_text_to_image": ("z_image", "text_to_image"),
            "z_image_image_to_image": ("z_image", "image_to_image"),
            "ovis_image_text_to_image": ("ovis_image", "text_to_image"),
            "ernie_image_text_to_image": ("ernie_image", "text_to_image"),
            "krea2_text_to_image": ("krea2", "text_to_image"),
            "ideogram4_text_to_image": ("ideogram4", "text_to_image"),
            "nucleusmoe_text_to_image": ("nucleusmoe", "text_to_image"),
            "qwen_image21_text_to_image": ("qwen_image21", "text_to_image"),
            "qwen_image21_edit_image": ("qwen_image21", "edit_image"),
            "dreamlite_text_to_image": ("dreamlite", "text_to_image"),
            "dreamlite_edit_image": ("dreamlite", "edit_image"),
            "joyimage_edit_image": ("joyimage", "edit_image"),
            "hunyuan_image_text_to_image": ("hunyuan_image", "text_to_image"),
            "cogview4_text_to_image": ("cogview4", "text_to_image"),
            "glm_image_text_to_image": ("glm_image", "text_to_image"),
            "glm_image_image_to_image": ("glm_image_edit", "image_to_image"),
            "cogview3plus_text_to_image": ("cogview3plus", "text_to_image"),
            "hidream_text_to_image": ("hidream", "text_to_image"),
            "stable_cascade_text_to_image": ("stable_cascade", "text_to_image"),
            "kandinsky3_text_to_image": ("kandinsky3", "text_to_image"),
            "kandinsky3_image_to_image": ("kandinsky3", "image_to_image"),
            "longcat_text_to_image": ("longcat_image", "text_to_image"),
            "longcat_edit_image": ("longcat_image", "edit_image"),
            "marigold_predict": ("marigold", "predict")}

__all__ = sorted(_EXPORTS) + sorted(_RENAMED) + ["check_finite_model", "from_pretrained", "library_progress_bars",
                                                  "load_weights_pickle", "model_dtype", "require", "weights_file"]


def require(module: str = "diffusers"):
    """Import ``diffusers`` or ``transformers``, or raise a one-line DiffkitError naming the extra."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise DiffkitError(f"this needs the optional package {module!r}; install it with "
                           f"pip install diffkit[diffusers]") from None


@contextlib.contextmanager
def library_progress_bars(enabled: bool, libraries=("diffusers", "transformers")):
    """Run the block with the progress bars of diffusers' and transformers' own loaders (e.g.
    transformers' "Loading weights") on or off as diffkit's ``--no-progress`` says, and restore
    each library's previous setting afterwards. A library that is not installed is skipped."""
    restore = []
    for name in libraries:
        try:
            logs = importlib.import_module(f"{name}.utils.logging")
        except ImportError:
            continue
        was = logs.is_progress_bar_enabled()
        if was != enabled:
            (logs.enable_progress_bar if enabled else logs.disable_progress_bar)()
            restore.append((logs, was))
    try:
        yield
    finally:
        for logs, was in restore:
            (logs.enable_progress_bar if was else logs.disable_progress_bar)()


@contextlib.contextmanager
def _library_logs_held():
    """What diffusers and transformers log inside: shown once the block succeeds, dropped when it
    raises (the one-line error says it; diffusers logs its error as a line of its own first)."""
    held = []

    def hold(record):
        if record not in held:  # once, however many handlers see it
            held.append(record)
        return False

    handlers = [h for name in ("diffusers", "transformers") for h in logging.getLogger(name).handlers]
    for handler in handlers:
        handler.addFilter(hold)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(hold)
    for record in held:
        logging.getLogger(record.name).handle(record)


def from_pretrained(cls, directory, flag: str = "--checkpoint", **kwargs):
    """``cls.from_pretrained(directory, **kwargs)`` (local files only) with a one-line DiffkitError
    when the folder's weights or configuration are missing or unreadable, or hold NaN or infinite values (a
    damaged file drew black images silently: :func:`check_finite_model`, naming ``flag``). diffkit's callers pass
    ``use_safetensors=True``: weights come from ``.safetensors`` files only, never from a pickle."""
    try:
        with _library_logs_held():
            loaded = cls.from_pretrained(directory, **kwargs)
    except (OSError, ValueError, KeyError, TypeError) as err:  # diffusers / transformers: missing or bad files
        raise DiffkitError(f"could not load {getattr(cls, '__name__', cls)} from {str(directory)!r}: "
                           f"{first_line(err, 200)}") from None
    except Exception as err:  # noqa: BLE001 - sorted below: only a damaged folder's errors become one line
        detail = damaged_weights(err)
        if detail is None:
            raise
        raise DiffkitError(f"could not load {getattr(cls, '__name__', cls)} from {str(directory)!r}: {detail}; "
                           f"give a folder whose weights are whole and fit its config.json") from None
    return check_finite_model(loaded, directory, flag)


def check_finite_model(model, directory, flag: str = "--checkpoint"):
    """``model`` (anything ``from_pretrained`` gives; a tokenizer passes) if its weights are finite; else one line
    naming the ``.safetensors`` file of ``directory`` that holds the first bad tensor and the tensor
    (:func:`diffkit.lora_files.first_non_finite`: one ``aminmax`` pass a tensor, BENCHMARKS.md "Refusing non-finite
    weights at load")."""
    import torch

    from ..lora_files import first_non_finite, non_finite_error
    if not isinstance(model, torch.nn.Module):
        return model
    key = first_non_finite(model.state_dict())
    if key is not None:
        raise non_finite_error(flag, weights_file(directory, key), key)
    return model


def weights_file(directory, key: str):
    """The ``.safetensors`` file of the diffusers / transformers folder ``directory`` holding tensor ``key`` (a
    sharded folder's ``*.safetensors.index.json`` says which; a folder of one such file: that one), else the folder."""
    import json
    from pathlib import Path
    directory = Path(directory)
    for index in sorted(directory.glob("*.safetensors.index.json")):
        try:
            shard = json.loads(index.read_text()).get("weight_map", {}).get(key)
        except (OSError, ValueError, AttributeError):
            shard = None
        if isinstance(shard, str):
            return directory / shard
    files = sorted(directory.glob("*.safetensors"))
    return files[0] if len(files) == 1 else directory


def damaged_weights(err: BaseException):
    """What a truncated ``.safetensors`` file (safetensors' SafetensorError) or weights of other shapes than the
    config gives (transformers' RuntimeError 'ignore_mismatched_sizes', torch's 'size mismatch') say, in one
    line; None for any other error (a bug or out of memory keeps its traceback)."""
    text = str(err)
    if type(err).__name__ == "SafetensorError":
        return f"not a whole safetensors file ({first_line(err, 120)})"
    if isinstance(err, RuntimeError) and ("ignore_mismatched_sizes" in text or "size mismatch" in text):
        return "its weights have other shapes than its config.json gives (size mismatch)"
    return None


def load_weights_pickle(path, flag: str):
    """What a pickled adapter file (diffusers' ``.bin``: textual inversion, IP-Adapter) holds, read with
    ``torch.load(weights_only=True)`` on the CPU, so no code in it runs; one line naming ``flag`` and the file
    for anything else."""
    import torch
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - unpickling raises many kinds; the user gets one line
        detail = first_line(err, 100)
        if isinstance(err, KeyError):  # the legacy reader's bare "101" of a file that is no torch file at all
            detail = f"no torch zip or pickle file (KeyError {detail})"
        marker = "WeightsUnpickler error:"  # a refused global: torch gives the reason after advice to load unsafely
        if marker in str(err):
            import re
            detail = re.split(r"\. |\n| Check the documentation", str(err).split(marker, 1)[1].strip())[0][:100]
        raise DiffkitError(f"{flag} {path} is not a plain tensor file (torch.load weights_only: {detail})") from None


def model_dtype(model, default=None):
    """diffusers' ``ModelMixin.dtype`` of ``model`` (``default`` for a module without that property), re-read only
    when its first parameter's dtype or device changes: the property walks every submodule for casting hooks
    (about 1.3 ms a read on a tiny UNet; BENCHMARKS.md "Stable Diffusion folders: diffkit's overhead around
    the network"), and
    the denoisers ask on every network call."""
    if not hasattr(type(model), "dtype"):
        return default
    first = next(model.parameters(), None)
    key = None if first is None else (first.dtype, first.device)
    cached = model.__dict__.get("_diffkit_dtype")
    if cached is None or cached[0] != key:
        cached = (key, model.dtype)
        model.__dict__["_diffkit_dtype"] = cached
    return cached[1]


def __getattr__(name):  # lazy: importing diffkit.interop never imports diffusers
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    if name in _RENAMED:
        module, attr = _RENAMED[name]
        return getattr(importlib.import_module(f".{module}", __name__), attr)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
