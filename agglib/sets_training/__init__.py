"""Training of the new method: the image encoder and the set-level posterior over θ.

The paper's networks are trained by :mod:`agglib.paper_training`.
"""

from agglib.sets_training._contracts import EncoderConfig, NotTrainedError, PosteriorConfig
from agglib.sets_training.encoder import train_encoder

__all__ = ["EncoderConfig", "PosteriorConfig", "NotTrainedError", "train_encoder"]
