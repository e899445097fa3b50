"""CRNN recognizer: model and CTC loss."""

from .loss import ctc_loss, encode_texts
from .model import CRNN

__all__ = ["CRNN", "ctc_loss", "encode_texts"]
