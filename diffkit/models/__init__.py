"""Networks: the DDPM/ADM U-Net and the noisy-image classifier (DESIGN.md, abstraction 5)."""
from .layers import TrunkConfig, num_parameters, timestep_embedding
from .unet import UNet, UNetConfig

__all__ = ["TrunkConfig", "UNet", "UNetConfig", "num_parameters", "timestep_embedding"]
