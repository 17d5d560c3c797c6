"""TorchServe entry point of sentiment.mar (the archive's --handler)."""

from .sentiment import Sentiment
from .torchserve_adapter import CoreHandler


class SentimentHandler(CoreHandler):
    core = Sentiment
