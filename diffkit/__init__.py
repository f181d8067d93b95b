"""diffkit: diffusion models in PyTorch, correct to the formula.

The data flow (see README "Design"):
data -> training (objective + loop) -> checkpoint -> Denoiser -> sampler (+ guidance) -> images -> metrics
"""
__version__ = "0.1.0"

from .denoiser import Denoiser, Prediction  # noqa: E402
from .editing import img2img, inpaint, interpolate  # noqa: E402
from .errors import DiffkitError  # noqa: E402
from .sampling import sample  # noqa: E402
from .schedule import NoiseSchedule  # noqa: E402

__all__ = ["Denoiser", "DiffkitError", "NoiseSchedule", "Prediction", "img2img", "inpaint", "interpolate", "sample",
           "__version__"]
