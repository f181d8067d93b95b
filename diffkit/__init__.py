"""diffkit: diffusion models in PyTorch, correct to the formula.

The data flow (see README "Design"):
data -> training (objective + loop) -> checkpoint -> Denoiser -> sampler (+ guidance) -> images -> metrics

The names below (and the submodules, e.g. ``diffkit.samplers``) are imported on first use
(PEP 562), so that ``import diffkit`` does not import torch: the command line catches a Ctrl-C
only once its own code runs, and torch's import takes about a second.
"""
import importlib as _importlib

__version__ = "0.1.0"

from .errors import DiffkitError, DiffkitWarning  # noqa: E402

_LAZY = {"Denoiser": "denoiser", "Prediction": "denoiser", "sample": "sampling", "NoiseSchedule": "schedule",
         "img2img": "editing", "inpaint": "editing", "interpolate": "editing",
         "forecast": "forecasting", "impute": "forecasting", "upscale": "super_res"}

__all__ = ["Denoiser", "DiffkitError", "DiffkitWarning", "NoiseSchedule", "Prediction", "forecast", "img2img",
           "impute", "inpaint", "interpolate", "sample", "upscale", "__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(_importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    if not name.startswith("__"):
        try:
            return _importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as err:
            if err.name != f"{__name__}.{name}":
                raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
