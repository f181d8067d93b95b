"""Networks: the DDPM/ADM U-Net, the noisy-image classifier and a 1-D U-Net for time series
(README "Design"; the team's design sketch, abstraction 5)."""
from .classifier import ClassifierConfig, EncoderClassifier
from .layers import TrunkConfig, num_parameters, timestep_embedding
from .temporal import TemporalUNet, TemporalUNetConfig
from .unet import UNet, UNetConfig

__all__ = ["ClassifierConfig", "EncoderClassifier", "TemporalUNet", "TemporalUNetConfig", "TrunkConfig", "UNet",
           "UNetConfig", "num_parameters", "timestep_embedding"]
