"""marport: TorchServe archives that run unchanged locally, on SageMaker and on Ray Serve (`marport`: cli.py)."""

__version__ = "0.1.0"
