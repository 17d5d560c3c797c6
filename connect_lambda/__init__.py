"""The Amazon Connect contact-flow hook (lambda_function.py), zipped by `marport sagemaker lambda-package`."""
