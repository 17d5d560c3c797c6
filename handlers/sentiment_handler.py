"""TorchServe entry point of sentiment.mar (the archive's --handler)."""

from . import sentiment
from .torchserve_adapter import CoreHandler


class SentimentHandler(CoreHandler):
    core = sentiment
