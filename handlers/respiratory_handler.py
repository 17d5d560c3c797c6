"""TorchServe entry point of respiratory.mar (the archive's --handler)."""

from .respiratory import Respiratory
from .torchserve_adapter import CoreHandler


class RespiratoryHandler(CoreHandler):
    core = Respiratory
