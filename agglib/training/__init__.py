"""Training of the new method: the image encoder and the set-level posterior over θ.

The paper's networks are trained by :mod:`agglib.train`.
"""

from agglib.training._contracts import EncoderConfig, NotTrainedError, PosteriorConfig
from agglib.training.encoder import train_encoder

__all__ = ["EncoderConfig", "PosteriorConfig", "NotTrainedError", "train_encoder"]
