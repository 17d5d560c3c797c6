"""TorchServe entry point of respiratory.mar (the archive's --handler)."""

from . import respiratory
from .torchserve_adapter import CoreHandler


class RespiratoryHandler(CoreHandler):
    core = respiratory
