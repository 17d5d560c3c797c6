"""TorchServe entry point of sentiment.mar (the archive's --handler)."""

from typing import ClassVar

from . import sentiment
from .serving_common import ModelCore
from .torchserve_adapter import CoreHandler


class SentimentHandler(CoreHandler):
    core: ClassVar[ModelCore] = sentiment  # the module is the core: mypy holds it to serving_common.ModelCore
