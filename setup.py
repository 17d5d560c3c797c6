"""marport: TorchServe model archives that deploy unchanged to SageMaker."""

from setuptools import find_packages, setup

SAGEMAKER = [
    "sagemaker>=2.257,<3",  # 3.x removed sagemaker.pytorch.PyTorchModel
    "boto3>=1.34",
    "sagemaker-pytorch-inference==2.0.25",  # the container's toolkit; bundles sagemaker_inference
    "setuptools<81",  # the toolkit imports pkg_resources
    "psutil>=5.9",
]

# Ray Serve: SageMaker's successor to its TorchServe image, and clusters. Ray 2.55's generated protobuf
# code does not run beside protobuf 7 (FieldDescriptor lost `label`); 6.33 works.
RAY = ["ray[serve]==2.55.0", "protobuf>=6.33,<7"]

# Repo folder -> the package it installs as.
PARTS = {"marport.handlers": "handlers", "marport.sagemaker_deploy": "sagemaker_deploy", "marport.bench": "bench",
         "marport.connect_lambda": "connect_lambda"}

NOTEBOOKS = ["ipykernel>=6", "nbformat>=5", "librosa>=0.10"]

setup(
    name="marport",
    version="0.1.0",
    description="TorchServe handlers and .mar archives that run locally and on SageMaker unchanged",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # The repo shows the architecture (handlers/ packed into archives, sagemaker_deploy/ deploys,
    # bench/ measures, marport/ is the tooling); the wheel installs them under one name, marport,
    # so nothing generic like `bench` lands in site-packages. Tools find handlers/ and the data
    # through importlib.resources (marport/resources.py), never relative to a checkout.
    packages=[*find_packages(include=["marport", "marport.*"]), *PARTS],
    package_dir={"marport": "marport", **PARTS},
    package_data={
        "marport": ["data/**/*", "templates/*", "ui/*"],
        "marport.handlers": ["config/*.yaml"],
    },
    install_requires=[
        # The CPU build is on disk here; a loose pin pulls a multi-GB CUDA build.
        "torch==2.13.0",
        "torchserve==0.12.0",
        "torch-model-archiver==0.12.0",
        "pyyaml>=6",  # TorchServe imports it without declaring it
        "transformers>=5,<6",
        "tokenizers>=0.20",
        "onnxruntime>=1.20",  # handler.precision: int8 (dynamic int8 through ONNX Runtime)
        "onnx>=1.16",  # exporting and quantising that graph
        "captum>=0.8",  # explanations: integrated gradients on the input embeddings
        "safetensors>=0.4",
        "numpy>=1.26",
        "soundfile>=0.12",
        "soxr>=0.3",
        "scikit-learn>=1.4",
        "imbalanced-learn>=0.12",
        "matplotlib>=3.8",
        "tqdm>=4.66",
        "requests>=2.31",
        "boto3>=1.34",  # handlers read S3 references ({"s3_uri": ...}) with the serving role's credentials
    ],
    extras_require={
        # Deploying to SageMaker, and running its PyTorch container's serving toolkit locally.
        "sagemaker": SAGEMAKER,
        # The notebooks: a Jupyter kernel, and librosa for mel spectrograms.
        "notebooks": NOTEBOOKS,
        # Serving on Ray Serve (`marport serve --runtime ray`, the Ray Serve DLC's tarball).
        "ray": RAY,
        # playwright drives Debian's chromium in the browser tests (no browser download: executable_path).
        "dev": ["pytest>=8", "hypothesis>=6.100", "moto[s3,sagemaker,sts,server]>=5", "nbclient>=0.10",
                "playwright==1.65.2", *SAGEMAKER, *NOTEBOOKS, *RAY],
    },
    entry_points={"console_scripts": ["marport=marport.cli:main"]},
)
