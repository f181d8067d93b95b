"""Networks: the DDPM/ADM U-Net and the noisy-image classifier (README "Design"; the team's design
sketch, abstraction 5)."""
from .classifier import ClassifierConfig, EncoderClassifier
from .layers import TrunkConfig, num_parameters, timestep_embedding
from .unet import UNet, UNetConfig

__all__ = ["ClassifierConfig", "EncoderClassifier", "TrunkConfig", "UNet", "UNetConfig", "num_parameters",
           "timestep_embedding"]
