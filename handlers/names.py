"""Names the handlers and marport's tools share, importable without torch (`marport --help` loads none).

Packed into every archive (its marport_serving package).
"""

PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")  # handler.precision (placement.py says what each means)
ARCHIVE_PACKAGE = "marport_serving"  # what the handler modules are called inside an archive (one package, no bare names)
CHECKPOINT_SUBDIR = "checkpoint"  # where an archive keeps its weights and their config
CONFIG_DIR = "config"  # each model's shipped model-config.yaml, config/<model>.yaml beside these modules (archives too)
