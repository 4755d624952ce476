"""The UP-Fusion network: only the model (no file I/O, device choice or argument parsing)."""

from .blocks import GDFN, MDTA, Down, LayerNorm2d, TransformerBlock, Up
from .gam import GAM
from .network import ModelConfig, SharedStatistics, UPFusion
from .scpm import SCPM
from .tcpm import TCPM, TopKCrossAttention

__all__ = [
    "GAM",
    "GDFN",
    "MDTA",
    "SCPM",
    "SharedStatistics",
    "TCPM",
    "Down",
    "LayerNorm2d",
    "ModelConfig",
    "TopKCrossAttention",
    "TransformerBlock",
    "UPFusion",
    "Up",
]
