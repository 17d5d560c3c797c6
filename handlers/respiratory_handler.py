"""TorchServe entry point of respiratory.mar (the archive's --handler)."""

from typing import ClassVar

from . import respiratory
from .serving_common import ModelCore
from .torchserve_adapter import CoreHandler


class RespiratoryHandler(CoreHandler):
    core: ClassVar[ModelCore] = respiratory  # the module is the core: mypy holds it to serving_common.ModelCore
