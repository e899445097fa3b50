"""DBNet detector: model, label generation and loss."""

from .labels import make_db_targets
from .loss import DBLoss
from .model import DBNet

__all__ = ["DBLoss", "DBNet", "make_db_targets"]
