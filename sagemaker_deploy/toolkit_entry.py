"""Start SageMaker's PyTorch serving toolkit as the container's entry point does.

Run by local.py (LocalEndpoint) in its own process; argv[1] is a writable path for
the TorchServe config the toolkit generates (the container writes /etc).
"""

import sys


def main() -> None:
    from sagemaker_pytorch_serving_container import serving, torchserve

    torchserve.TS_CONFIG_FILE = sys.argv[1]
    serving.main()  # blocks until SIGTERM


if __name__ == "__main__":
    main()
