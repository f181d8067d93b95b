"""Flag helpers shared by the sub-commands (validation happens before any work starts)."""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import tempfile
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no advisory locks
    fcntl = None

from ..errors import FLOAT32_MAX, DiffkitError, DiffkitWarning


MAX_COUNT = 10**9


def int_in(low: int, high: int):
    """An argparse type: an integer in [low, high]."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is out of range; allowed: {low}..{high}")
        return value
    parse.__name__ = "integer"
    return parse


def int_list(text: str) -> list[int]:
    """An argparse type: a comma-separated list of integers (``1,2,2``, brackets allowed; ``""`` is the
    empty list, e.g. ``--attn ""``); an empty entry (``1,,2``, ``1,2,``) is refused, not skipped."""
    inner = text.replace("[", "").replace("]", "")
    if not inner.strip():  # "" and "[]": no entries
        return []
    entries = inner.split(",")
    try:
        return [int(v) for v in entries]  # int("") fails: "1,,2" is refused, not read as [1, 2]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers (e.g. 1,2,2)") from None


int_list.__name__ = "integer list"


# data.DATASET_NAMES and its image sets, here so that parsing imports no torch (test_cli_bad_input keeps them equal)
DATASET_NAMES = ("digits", "mnist", "fashion-mnist", "cifar10", "folder", "sines", "series")
IMAGE_DATASETS = DATASET_NAMES[:5]


def path_arg(text: str) -> str:
    """An argparse type for a file or folder name: ``''`` is refused (``Path('')`` is the current
    folder, and an empty value quietly meant the default or ``.``)."""
    if text == "":
        raise argparse.ArgumentTypeError("'' is an empty path; give a file or folder name")
    return text


path_arg.__name__ = "path"


def dataset_arg(allowed):
    """An argparse type for a data set name: ``''`` is refused naming ``allowed`` (the command's own
    sets); any other name passes on to the command's own check (its message names the sets too)."""
    def parse(text: str) -> str:
        if text == "":
            raise argparse.ArgumentTypeError(f"'' is not a data set; choose {', '.join(allowed)}")
        return text
    parse.__name__ = "data set"
    return parse


def positive_int(text: str) -> int:
    """An integer in 1..10^9 (larger counts are mistakes, not plans)."""
    return int_in(1, MAX_COUNT)(text)


def batch_size_or_auto(text: str):
    """``auto`` (fit the batch to free memory, :mod:`diffkit.memory`) or an integer in 1..65536."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return int_in(1, 65536)(text)
    except argparse.ArgumentTypeError as err:
        raise argparse.ArgumentTypeError(f"{err}; or 'auto'") from None


batch_size_or_auto.__name__ = "batch size"

MAX_SEED = 2**63 - 1


def seed_int(text: str) -> int:
    """A seed: an integer in 0..2**63-1 (sample i uses seed + i, which must stay in range)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"{value} is out of range; allowed: 0..{MAX_SEED}")
    return value


def file_stem(text: str) -> str:
    """A plain file-name stem: not empty, no folder separators, not hidden (files land in --out)."""
    if not text or text.startswith(".") or "/" in text or "\\" in text or "\0" in text:
        raise argparse.ArgumentTypeError(f"{text!r} is not allowed; give a plain file name stem such as "
                                         "'ddim_table' (no folders, not starting with '.')")
    return text


def eta_value(text: str):
    """A DDIM eta: a number >= 0 or ``sigma_hat`` (:func:`diffkit.samplers.ddim.parse_eta`)."""
    from ..samplers.ddim import parse_eta
    try:
        return parse_eta(text)
    except DiffkitError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def restarts_value(text: str) -> list:
    """Restart intervals ``T_MIN:T_MAX:K:N`` joined by ``+`` (``none``: no interval, plain Heun) as the
    (t_min, t_max, K, n) list of :func:`diffkit.samplers.restart.check_restarts`; K >= 1 here (an interval
    of K = 0 restarts nothing: ``none`` says that)."""
    from ..samplers.restart import check_restarts
    if text.strip().lower() == "none":
        return []
    intervals = []
    for part in text.split("+"):
        fields = part.strip().split(":")
        try:
            if len(fields) != 4:
                raise ValueError
            intervals.append((float(fields[0]), float(fields[1]), int(fields[2]), int(fields[3])))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{part.strip()!r} is not an interval T_MIN:T_MAX:K:N (numbers, K and N "
                                             f"integers), e.g. 0.1:2:1:5; or 'none'") from None
        if intervals[-1][2] < 1:  # the library takes K = 0 (that interval does nothing); the flag says so
            raise argparse.ArgumentTypeError(f"{part.strip()!r}: K={intervals[-1][2]} restarts; K must be >= 1 (use "
                                             f"'none' for no restarts, plain Heun)")
    try:
        return check_restarts(intervals)
    except DiffkitError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def positive_float(text: str) -> float:
    """A finite number > 0 (a tolerance)."""
    value = non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"{value} must be a finite number > 0")
    return value


def unit_float(text: str) -> float:
    """A number in [0, 1] (TCD's gamma)."""
    from ..errors import check_range
    try:
        return check_range("value", float(text), 0.0, 1.0)
    except (ValueError, DiffkitError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number in [0, 1]") from None


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{value} must be a finite number >= 0")
    if value > FLOAT32_MAX:  # a scale of 1e308 (--controlnet-scale) overflowed the float32 sampling to inf
        raise argparse.ArgumentTypeError(f"{value} must be a finite number >= 0 and at most {FLOAT32_MAX:.4g} "
                                         f"(the sampling runs in float32)")
    return value


def lora_arg(text: str) -> tuple[str, float]:
    """An argparse type for ``--lora FILE[:SCALE]``: (FILE, SCALE), SCALE 1 when not given. The text
    after the last ``:`` is the scale unless it holds a path separator (``C:\\a.safetensors``); it must
    be a finite number (negative allowed, as diffusers' adapter weights)."""
    path, scale = text, 1.0
    head, sep, tail = text.rpartition(":")
    if sep and "/" not in tail and "\\" not in tail:
        path = head
        try:
            scale = float(tail)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: scale {tail!r} is not a number; give FILE or FILE:SCALE "
                                             f"(e.g. adapter.safetensors:0.8; a FILE with a ':' in its name takes "
                                             f"an explicit :SCALE, {text + ':1'!r})") from None
        if not math.isfinite(scale) or abs(scale) > FLOAT32_MAX:  # 1e308: torch's float32 overflow traceback
            raise argparse.ArgumentTypeError(f"{text!r}: scale {tail!r} is not allowed; give a finite number (at "
                                             f"most {FLOAT32_MAX:.4g} in size: float32)")
    if path == "":
        raise argparse.ArgumentTypeError(f"{text!r} has an empty path; give FILE or FILE:SCALE")
    return path, scale


lora_arg.__name__ = "adapter file"


def add_lora_flags(parser: argparse.ArgumentParser, help: str | None = None) -> None:
    """``--lora FILE[:SCALE]`` (repeatable) and ``--lora-any-base``: LoRA adapter files merged into the
    --checkpoint's weights at load (``load_denoiser(lora=..., lora_any_base=...)``); ``help``: another text for
    ``--lora`` (diffkit video's)."""
    parser.add_argument("--lora", type=lora_arg, action="append", metavar="FILE[:SCALE]",
                        help=help or "a LoRA adapter file (diffkit convert --lora-only; for a diffusers folder, SD / SD-XL / "
                             "SD3 / FLUX.1 / Sana / Lumina-Image 2.0 / AuraFlow / CogView4 / Chroma / Kolors / "
                             "Qwen-Image / Qwen-Image 2.1 / FLUX.2 / Z-Image / HiDream-I1 / ERNIE-Image / Krea 2 / "
                             "Ideogram 4 / Bria FIBO 2 / Kandinsky 5, a diffusers, PEFT or kohya LoRA .safetensors; "
                             "SD3, Sana, Lumina-Image 2.0, AuraFlow, CogView4, Bria FIBO 2, Kandinsky 5: diffusers / "
                             "PEFT only (Lumina-Image 2.0: also its original diffusion_model. keys); Chroma: its "
                             "transformer only; Kolors: its UNet, diffusers / PEFT keys; Qwen-Image (and 2.1), "
                             "FLUX.2, Z-Image: the transformer, diffusers / PEFT, diffusion_model. (ComfyUI, "
                             "ai-toolkit) or kohya lora_unet_ keys (Qwen-Image 2.1: not those diffusers re-dots as "
                             "another module); FLUX.2, Z-Image: also LyCORIS LoKr files as diffusers converts them; "
                             "HiDream-I1, ERNIE-Image: the transformer, diffusers / PEFT or diffusion_model. keys; "
                             "ERNIE-Image: also peft's base_model.model. keys; Krea 2: the transformer, diffusers / "
                             "PEFT or the original krea-2 names under diffusion_model. / base_model.model.; Ideogram "
                             "4: the conditional transformer, diffusers / PEFT or ai-toolkit / kohya diffusion_model. "
                             "files with a fused attention.qkv; ChronoEdit (diffkit edit): the transformer, diffusers "
                             "/ PEFT, Wan diffusion_model. or musubi lora_unet_ keys) merged into --checkpoint's "
                             "weights at load, W0 + SCALE (alpha/r) B A (SCALE default 1; repeat for several: they "
                             "add)")
    parser.add_argument("--lora-any-base", action="store_true",
                        help="merge --lora adapters into base weights other than the ones they were trained on "
                             "(same network; by default another base is refused)")


def textual_inversion_arg(text: str) -> tuple[str, "str | None"]:
    """An argparse type for ``--textual-inversion FILE[:TOKEN]``: (FILE, TOKEN or None: the file's own).
    The text after the last ``:`` is the token unless it holds a path separator (``C:\\a.pt``)."""
    head, sep, tail = text.rpartition(":")
    path, token = (head, tail) if sep and "/" not in tail and "\\" not in tail else (text, None)
    if path == "" or token == "":
        raise argparse.ArgumentTypeError(f"{text!r} has an empty {'path' if path == '' else 'token'}; give FILE or "
                                         f"FILE:TOKEN (e.g. learned_embeds.safetensors:<cat-toy>)")
    return path, token


textual_inversion_arg.__name__ = "embedding file"


def add_textual_inversion_flag(parser: argparse.ArgumentParser) -> None:
    """``--textual-inversion FILE[:TOKEN]`` (repeatable): embeddings added to a Stable Diffusion folder's
    tokenizer and text encoder (``load_stable_diffusion(textual_inversion=...)``; a FLUX.1 folder's CLIP ones,
    ``load_flux(textual_inversion=...)``; a Chroma folder's T5 ones, ``load_chroma(textual_inversion=...)``)."""
    parser.add_argument("--textual-inversion", type=textual_inversion_arg, action="append", metavar="FILE[:TOKEN]",
                        help="a textual-inversion embedding (diffusers learned_embeds .safetensors/.bin or A1111 "
                             ".pt; SD-XL: clip_l + clip_g) added to a Stable Diffusion folder's tokenizer(s) and text "
                             "encoder(s) (FLUX.1: its CLIP ones; Chroma: its T5, T5-width files) as diffusers' "
                             "load_textual_inversion, under TOKEN "
                             "(default: the file's own); use the token in "
                             "--prompt; repeatable (docs/interop.md)")


def freeu_arg(text: str):
    """An argparse type for ``--freeu B1,B2,S1,S2``: a :class:`diffkit.models.freeu.FreeU` (four positive
    finite numbers)."""
    from ..models.freeu import parse_freeu
    try:
        return parse_freeu(text)
    except DiffkitError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


freeu_arg.__name__ = "FreeU factors"


def add_freeu_flag(parser) -> None:
    """``--freeu B1,B2,S1,S2``: FreeU (Si et al. 2024) in the U-Net's decoder while sampling
    (:mod:`diffkit.models.freeu`)."""
    parser.add_argument("--freeu", type=freeu_arg, metavar="B1,B2,S1,S2",
                        help="FreeU while sampling (Si et al. 2024): backbone factors B1, B2 on half the channels "
                             "and low-frequency skip factors S1, S2 in the two lowest-resolution decoder stages, "
                             "e.g. 1.5,1.6,0.9,0.2 (diffusers' values for SD 1.5); a diffkit U-Net or a Stable "
                             "Diffusion / SD-XL folder (docs/guidance.md)")


def check_freeu_checkpoint(checkpoint, freeu) -> None:
    """--freeu for a checkpoint whose header says it has no image U-Net (a DiT, a time-series model): one line,
    before any work. A Stable Diffusion folder takes it (diffusers' enable_freeu); a legacy .pt is checked
    once loaded."""
    if freeu is None or checkpoint is None:
        return
    unet = (peek_checkpoint(checkpoint) or {}).get("unet")
    if isinstance(unet, dict):
        from ..models.network import is_dit, is_series_model
        if is_series_model(unet) or is_dit(unet):
            what = "time-series model" if is_series_model(unet) else "DiT"
            raise DiffkitError(f"--freeu re-weights the decoder skip connections of an image U-Net; this {what} has "
                               f"none (drop --freeu)")


def check_lora_flags(args) -> None:
    """--lora-any-base goes with --lora."""
    if getattr(args, "lora_any_base", False) and not getattr(args, "lora", None):
        raise DiffkitError("--lora-any-base applies to --lora adapters; give --lora FILE[:SCALE] or drop it")


def check_writable_dir(path: str | Path, what: str = "output directory") -> Path:
    """Create ``path`` if needed and check that a file can be written there, before any work
    starts (a real probe file, so read-only mounts and full disks are caught, not only modes)."""
    path = Path(path)
    if path.exists() and not path.is_dir():  # mkdir's message was "File exists"
        raise DiffkitError(f"{what} {str(path)!r} is a file, not a folder; give a folder (new or existing)")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (OSError, ValueError) as err:  # ValueError: NUL byte or unencodable character in the name
        raise DiffkitError(f"{what} {str(path)!r} cannot be created: {getattr(err, 'strerror', None) or err}") from None
    try:
        with tempfile.TemporaryFile(dir=path, prefix=".diffkit-write-test-") as probe:
            probe.write(b"x")
            probe.flush()
    except OSError as err:
        raise DiffkitError(f"{what} {str(path)!r} is not writable: {err.strerror or err}") from None
    return path


def missing_dirs(path) -> list[Path]:
    """The folders on the way to ``path`` (itself included) that do not exist yet, deepest first:
    what :func:`check_writable_dir` will create, for :func:`remove_if_empty` after a failure."""
    out, path = [], Path(path)
    while not path.exists() and path != path.parent:
        out.append(path)
        path = path.parent
    return out


def remove_if_empty(dirs) -> None:
    """Remove the folders of ``dirs`` (deepest first) that are empty; leave anything with content."""
    for path in sorted(set(dirs), key=lambda p: len(p.parts), reverse=True):
        try:
            path.rmdir()
        except OSError:  # not empty, or gone
            pass


@contextlib.contextmanager
def removed_if_empty_on_failure(dirs):
    """Run the block; if it fails or is interrupted, remove the folders of ``dirs`` (made for it)
    that are still empty, so a failed command leaves no empty output folder behind."""
    try:
        yield
    except BaseException:
        remove_if_empty(dirs)
        raise


RUN_LOCK_ENV = "DIFFKIT_RUN_FOLDER_LOCKED"  # set while a process (and the ranks it starts) holds the lock


@contextlib.contextmanager
def run_folder_lock(folder):
    """Hold an exclusive lock (``flock``) on a run's checkpoint folder for the block, so that a
    second run into the same folder at the same moment is refused in one line (the check for an
    existing run cannot see a run that has not saved yet). The lock goes with the process: a kill
    releases it. The ranks of ``--nproc N`` run under their launcher's lock; under a plain
    ``torchrun`` rank 0 takes it."""
    if fcntl is None or os.environ.get(RUN_LOCK_ENV) or int(os.environ.get("RANK", "0") or 0) > 0:
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DiffkitError(f"another diffkit run is writing into {folder} right now; wait for it to end or "
                               f"give another --out") from None
        except OSError as err:  # a file system without flock (NFS without lockd, some FUSE mounts)
            import warnings
            warnings.warn(f"{folder}: cannot lock the run folder ({err.strerror or err}); running without the "
                          f"lock: do not start a second run into it", DiffkitWarning)
            yield
            return
        os.environ[RUN_LOCK_ENV] = "1"
        try:
            yield
        finally:
            os.environ.pop(RUN_LOCK_ENV, None)
    finally:
        os.close(fd)


def check_output_file(path: str | Path, what: str, suffix: str, writes: str | None = None) -> Path:
    """Check an output file before any work: it must end in ``suffix``, must not be a folder, and
    must not be a diffusion training checkpoint (writing over one would lose the run) or another
    kind of diffkit file than the one written (``writes``: a :func:`diffkit.checkpoint.file_kind`;
    e.g. an evaluator over the autoencoder a latent run depends on); its folder is created and
    probed for writing. The suffix is compared case-insensitively (``.PNG`` is a PNG)."""
    from ..checkpoint import file_kind  # torch: imported when a command runs, not for --help
    path = Path(path)
    if path.suffix.lower() != suffix:
        raise DiffkitError(f"{what} {str(path)!r} must end in {suffix}")
    if path.is_dir():
        raise DiffkitError(f"{what} {str(path)!r} is a folder; give a file name ending in {suffix}")
    kind = file_kind(path) if suffix == ".safetensors" else None
    if kind == "training checkpoint":
        raise DiffkitError(f"{what} {str(path)!r} is a diffusion training checkpoint; writing over it would lose "
                           f"the run; choose another file")
    if kind is not None and kind != writes:
        raise DiffkitError(f"{what} {str(path)!r} holds a diffkit {kind}; writing "
                           f"{'the ' + writes + ' file' if writes else 'this file'} over it would lose it; choose "
                           f"another file")
    check_writable_dir(path.parent, "output directory")
    return path


def add_mixed_precision_flag(parser: argparse.ArgumentParser) -> None:
    """``--mixed-precision``: the network's autocast dtype (``Denoiser(mixed_precision=...)``)."""
    from ..config import MIXED_PRECISION
    parser.add_argument("--mixed-precision", default="no", choices=list(MIXED_PRECISION),
                        help="run the network under autocast in this dtype (bf16 on cpu/cuda, fp16 on cuda); "
                             "the samplers' arithmetic stays fp32 (default no)")


def add_compile_flag(parser: argparse.ArgumentParser) -> None:
    """``--compile``: ``torch.compile`` the network (``Denoiser.compile``)."""
    from ..denoiser import COMPILE_MODES
    parser.add_argument("--compile", default="no", choices=list(COMPILE_MODES),
                        help="torch.compile the network in this mode; reduce-overhead uses CUDA graphs on a GPU "
                             "(default no; the first batch compiles, minutes on a CPU)")


def add_network_flags(parser: argparse.ArgumentParser) -> None:
    """How a checkpoint's network is loaded and run: ``--device``, ``--no-ema``, ``--mixed-precision``
    and ``--compile`` (``load_denoiser``'s device, use_ema, mixed_precision and compile)."""
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda, mps")
    parser.add_argument("--no-ema", dest="ema", action="store_false", help="use the raw weights, not the EMA")
    add_mixed_precision_flag(parser)
    add_compile_flag(parser)


def add_thresholding_flag(parser) -> None:
    """``--thresholding clip|dynamic``: ``diffkit.sample(..., thresholding=)``, the predicted x_0 clipped to
    [-1, 1] or dynamically thresholded (Saharia et al. 2022, Sec. 2.3) at every step (``diffkit sample`` and
    ``eval``, ``experiment sampler-table``)."""
    parser.add_argument("--thresholding", choices=("clip", "dynamic"), help="clip the predicted x0 while sampling "
                        "(clip: to [-1, 1]; dynamic: Imagen's, per sample at its 99.5%% quantile of |x0|)")


def add_flow_shift_flag(parser) -> None:
    """``--flow-shift S``: a flow-matching model's grid moved to the sampling shift S (SD3, Esser et al. 2024,
    eq. 23; ``diffkit.sample(..., flow_shift=S)``, :func:`diffkit.timesteps.reshift_flow_grid`) in ``diffkit
    sample``, ``eval`` and ``edit``; checked by :func:`check_flow_shift`."""
    parser.add_argument("--flow-shift", type=positive_float, help="a flow-matching model only: move the grid to "
                        "this sampling shift (SD3 eq. 23, diffusers' FlowMatchEulerDiscreteScheduler shift; default: "
                        "the training flow_shift, the grid unchanged)")


def check_flow_shift(checkpoint, info, shift: float) -> None:
    """``--flow-shift``: a one-line error, before any output, unless the checkpoint is a flow-matching model (its
    header says so; other checkpoints are checked when loaded) sampled on a fixed grid."""
    info.check_fixed_steps(f"--flow-shift {shift:g}")
    meta = peek_checkpoint(checkpoint)
    if meta is not None and meta.get("prediction_type") != "flow_prediction":
        raise DiffkitError(f"--flow-shift {shift:g} moves the grid of a flow-matching model (prediction_type "
                           f"flow_prediction); {checkpoint} predicts {meta.get('prediction_type')!r}")


def add_restarts_flag(parser, whose: str = "--sampler restart: its intervals") -> None:
    """``--restarts T_MIN:T_MAX:K:N[+...]|none``: the restart sampler's intervals (:func:`restarts_value`;
    checked against ``--sampler`` by :func:`tolerance_options`); ``whose`` starts the help (``experiment
    sampler-table``: its restart rows')."""
    parser.add_argument("--restarts", type=restarts_value, metavar="T_MIN:T_MAX:K:N[+...]",
                        help=f"{whose} (sigma~ t_min < t_max, K restarts, N Heun steps each; '+' between intervals, "
                             f"'none' for plain Heun), e.g. 0.06:0.3:2:3 (default 0.1:2:1:5)")


# a sampler-specific stochasticity option: its flag's dest -> the one sampler that takes it
STOCHASTICITY_SAMPLERS = {"gamma": "tcd", "tau": "sa-solver"}


def add_stochasticity_flags(parser, recorded: str = "") -> None:
    """``--gamma`` (the tcd sampler's stochasticity in [0, 1]) and ``--tau`` (the sa-solver sampler's, >= 0 at every
    step), each checked against ``--sampler`` by :func:`tolerance_options`; ``recorded`` ends their help (eval's
    ", recorded in the settings")."""
    parser.add_argument("--gamma", type=unit_float, help="--sampler tcd: its stochasticity in [0, 1] (default 0.3, "
                        f"diffusers' eta; 0 = deterministic){recorded}")
    parser.add_argument("--tau", type=non_negative_float, help="--sampler sa-solver: its stochasticity tau >= 0 at "
                        "every step (default 1, the reverse SDE; 0 = the probability-flow ODE, deterministic)"
                        f"{recorded}")


def add_solver_flags(parser: argparse.ArgumentParser, adaptive: bool = True) -> None:
    """``--rtol`` / ``--atol`` (an adaptive sampler's tolerances; not for commands that refuse adaptive samplers,
    ``adaptive=False``) and ``--restarts`` (the restart sampler's intervals, :func:`add_restarts_flag`), checked
    by :func:`tolerance_options`, and ``--spacing`` / ``--final`` (the time grid, checked by ``resolve_sampler``)."""
    from ..timesteps import FINALS, SPACINGS
    if adaptive:
        parser.add_argument("--rtol", type=positive_float, help="adaptive samplers: relative tolerance of their "
                            "steps (default: ode 1e-5, dpm-adaptive 0.05)")
        parser.add_argument("--atol", type=positive_float, help="adaptive samplers: absolute tolerance (default: "
                            "ode 1e-5, dpm-adaptive 0.0078)")
    parser.add_argument("--spacing", help="time grid (default: the sampler's own, see 'diffkit samplers'): "
                        + ", ".join(SPACINGS))
    parser.add_argument("--final", choices=FINALS, help="the last step's target: zero (clean data) or sigma_min "
                        "(the schedule's smallest noise level; diffusers' final_sigmas_type); default: the "
                        "sampler's own")
    add_restarts_flag(parser)


def tolerance_options(args, info) -> dict:
    """The sampler options given by :func:`add_solver_flags`' flags (those a command registered):
    ``rtol`` / ``atol``, a one-line error when the sampler (``info``) is not adaptive, ``gamma`` (a command's
    ``--gamma``), one when it is not tcd, ``tau`` (``--tau``), one when it is not sa-solver, and ``restarts``,
    one when it is not restart. With ``restarts``, ``info.with_options(options)`` has its NFE rule."""
    options = {}
    for name in ("rtol", "atol"):
        if getattr(args, name, None) is not None:
            if not info.adaptive:
                raise DiffkitError(f"--{name} sets the tolerance of an adaptive sampler (ode, dpm-adaptive), not of "
                                   f"{info.name!r}")
            options[name] = getattr(args, name)
    for name, sampler in STOCHASTICITY_SAMPLERS.items():  # --gamma: tcd's, --tau: sa-solver's
        if getattr(args, name, None) is not None:
            if info.name != sampler:
                raise DiffkitError(f"--{name} {getattr(args, name):g} sets the stochasticity of the {sampler} "
                                   f"sampler, not of {info.name!r}; give --sampler {sampler}")
            options[name] = getattr(args, name)
    if getattr(args, "restarts", None) is not None:
        if info.name != "restart":
            raise DiffkitError(f"--restarts sets the intervals of the restart sampler, not of {info.name!r}; give "
                               f"--sampler restart")
        options["restarts"] = args.restarts
    return options


def add_progress_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="hide progress bars")


def peek_checkpoint(checkpoint) -> dict | None:
    """The metadata of a diffkit checkpoint (a file, or a folder's ``latest.safetensors``) read from its
    header alone (:func:`diffkit.checkpoint.peek_metadata`: no tensors); None for anything else (a legacy
    .pt, a Stable Diffusion folder, a missing path)."""
    from ..checkpoint import peek_metadata
    path = Path(checkpoint) / "latest.safetensors" if Path(checkpoint).is_dir() else Path(checkpoint)
    return peek_metadata(path) if path.is_file() else None


def default_sampling(checkpoint, sampler, steps, nfe=None, spacing=None, scheduler=None) -> tuple:
    """(sampler, steps) with the defaults filled in for ``checkpoint``: a consistency model
    (``diffkit distill``) samples with ``consistency`` in its config's ``sample_steps`` (4), as does a
    Stable Diffusion folder with an LCMScheduler (4, LatentConsistencyModelPipeline's default; the
    ``tcd`` sampler given there takes the same steps), any
    other checkpoint with ``ddim`` (steps None: the command's own default); what the user gave is
    kept. On the model's own grid (the ``lcm`` spacing, the consistency sampler's default; ``spacing``
    is ``--spacing``) the default steps are at most its source times. Only the file's header (or the
    folder's JSON) is read. ``scheduler``: a Stable Diffusion folder's ``--scheduler lcm`` (as an LCMScheduler
    folder) or ``tcd`` (the ``tcd`` sampler in 4 steps, also for a TCDScheduler folder;
    :mod:`diffkit.interop.sd_scheduler`)."""
    meta = None
    lcm_folder = False
    if checkpoint is not None:
        from ..interop.lcm import is_lcm_folder
        meta = peek_checkpoint(checkpoint)
        if meta is None and scheduler is None:  # a TCDScheduler folder: as --scheduler tcd
            from ..interop.sd_scheduler import own_override
            scheduler = own_override(checkpoint)
        lcm_folder = meta is None and (scheduler is not None or is_lcm_folder(checkpoint))
    consistency = bool(meta and meta.get("consistency")) or lcm_folder
    if sampler is None and meta is None and checkpoint is not None:
        from ..interop.kolors import is_kolors_folder
        from ..interop.pixart import masked_text_folder
        if masked_text_folder(checkpoint) or is_kolors_folder(checkpoint):  # its scheduler's step (._pixart)
            from ._pixart import folder_default_sampler
            sampler = folder_default_sampler(checkpoint)
        from ..interop.stable_cascade import SAMPLER, is_stable_cascade_folder
        if is_stable_cascade_folder(checkpoint):  # DDPMWuerstchenScheduler's step (._stable_cascade)
            sampler = SAMPLER
        from ..interop.consistency_models import is_consistency_models_folder
        if is_consistency_models_folder(checkpoint):  # CMStochasticIterativeScheduler's step (._consistency_models)
            sampler = "consistency"
        from ..interop.ldm import folder_sampler as ldm_sampler, ldm_kind
        if ldm_kind(checkpoint):  # a latent-diffusion folder: its DDIM / PNDM scheduler's step (.interop.ldm)
            from ..errors import read_json_object
            sampler = ldm_sampler(read_json_object(Path(checkpoint) / "scheduler" / "scheduler_config.json",
                                                   "scheduler config"))
        from ..interop.sd_image_variation import folder_default_sampler, is_image_variation_folder
        from ..interop.stable_unclip import is_stable_unclip_folder
        if is_image_variation_folder(checkpoint) or is_stable_unclip_folder(checkpoint):  # its scheduler's step
            sampler = folder_default_sampler(checkpoint)  # (.interop.sd_image_variation, .interop.stable_unclip)
        from ..interop.kandinsky import is_kandinsky_folder
        if is_kandinsky_folder(checkpoint):  # the decoder's scheduler's step (._kandinsky)
            from ._kandinsky import folder_default_sampler as kandinsky_sampler
            sampler = kandinsky_sampler(checkpoint)
    if sampler is None:
        from ..interop.sd_scheduler import default_sampler
        sampler = default_sampler(scheduler if lcm_folder else None, consistency)
    from ..samplers.registry import CONSISTENCY_SAMPLERS, REGISTRY, split_sampler_spec
    name, spec_spacing, _ = split_sampler_spec(sampler)
    if steps is None and nfe is None and consistency and name in CONSISTENCY_SAMPLERS:
        steps = int(((meta or {}).get("config") or {}).get("sample_steps") or 4)
        grid = ((meta or {}).get("consistency") or {}).get("grid")
        if grid and (spacing or spec_spacing or REGISTRY[name].default_spacing) == "lcm":
            # the model's own grid: at most one step per source time
            from ..consistency import source_times
            steps = min(steps, len(source_times(grid, meta["consistency"].get("curriculum") or "fixed")))
    return sampler, steps

