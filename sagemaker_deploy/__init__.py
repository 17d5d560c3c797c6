"""Deploy marport archives to SageMaker's PyTorch TorchServe container, unchanged."""
