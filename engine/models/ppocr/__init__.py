"""PP-OCRv6 small detector and recognizer (PaddleOCR, Apache-2.0) as trainable torch modules."""

from .detector import PPOCRv6Detector
from .recognizer import PPOCRv6Recognizer

__all__ = ["PPOCRv6Detector", "PPOCRv6Recognizer"]
