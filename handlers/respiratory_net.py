"""The respiratory-sound CNN, how audio becomes its input windows, and its checkpoint files (safetensors and
config.json: nothing is unpickled)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
LABELS = ("healthy", "unhealthy")


@dataclass
class AudioConfig:
    """How audio becomes model input; saved next to the weights."""

    sample_rate: int = 8000  # resample every recording to this rate ...
    decimation: int = 5  # ... then keep every 5th sample (anti-aliased): 1600 Hz into the CNN
    window_s: float = 20.0  # the CNN's window; shorter recordings are zero-padded
    hop_s: float = 10.0  # windows overlap on longer recordings
    threshold: float = 0.5  # decision threshold, chosen on a validation split
    temperature: float = 1.0  # logits are divided by it: fitted on validation so probabilities are calibrated
    aggregate: str = "mean"  # how window probabilities combine: mean or max

    @property
    def model_rate(self) -> int:
        return self.sample_rate // self.decimation

    @property
    def window_samples(self) -> int:
        return int(round(self.window_s * self.model_rate))

    @property
    def hop_samples(self) -> int:
        return max(1, int(round(self.hop_s * self.model_rate)))


class RespiratoryCNN(nn.Module):
    """Raw-waveform CNN: a wide strided first conv, three conv blocks, global pooling."""

    def __init__(self, num_classes: int = 2):
        super().__init__()

        def block(c_in, c_out, kernel, stride=1):
            return nn.Sequential(
                nn.Conv1d(c_in, c_out, kernel, stride=stride, padding=kernel // 2 if stride == 1 else 0),
                nn.BatchNorm1d(c_out),
                nn.ReLU(inplace=True),
                nn.MaxPool1d(4),
            )

        self.features = nn.Sequential(
            block(1, 128, 80, stride=4),
            block(128, 128, 3),
            block(128, 256, 3),
            block(256, 512, 3),
        )
        # Adaptive pooling over time: any window length gives a 512-vector.
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.classifier = nn.Linear(512, num_classes)

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        """(batch, samples) -> (batch, classes) logits."""
        x = self.features(waveforms.unsqueeze(1))
        return self.classifier(self.pool(x).squeeze(-1))


def fold_batchnorm(net: RespiratoryCNN) -> RespiratoryCNN:
    """Each Conv1d+BatchNorm1d pair as one Conv1d (eval mode: the same function, one pass less)."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for block in net.features:
        assert isinstance(block, nn.Sequential)
        conv, norm = block[0], block[1]
        assert isinstance(conv, nn.Conv1d) and isinstance(norm, nn.BatchNorm1d)
        block[0], block[1] = fuse_conv_bn_eval(conv, norm), nn.Identity()
    return net


def windows(waveform: np.ndarray, audio: AudioConfig) -> tuple[np.ndarray, list[float]]:
    """Overlapping windows of window_s every hop_s; the last one is zero-padded."""
    size, hop = audio.window_samples, audio.hop_samples
    starts = [0]
    while starts[-1] + size < len(waveform):
        starts.append(starts[-1] + hop)
    out = np.zeros((len(starts), size), dtype=np.float32)
    for row, start in enumerate(starts):
        chunk = waveform[start : start + size]
        out[row, : len(chunk)] = chunk
    return out, [s / audio.model_rate for s in starts]


def save_checkpoint(path: str, net: RespiratoryCNN, audio: AudioConfig) -> None:
    from safetensors.torch import save_file

    os.makedirs(path, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, os.path.join(path, WEIGHTS_FILE))
    config = {"model_type": "respiratory-cnn", "labels": list(LABELS), **asdict(audio)}
    with open(os.path.join(path, CONFIG_FILE), "w", encoding="utf-8") as fh:
        json.dump(config, fh, indent=2)


def read_checkpoint(path: str) -> tuple[RespiratoryCNN, AudioConfig]:
    """The network (weights loaded, eval mode) and its audio settings from a checkpoint folder."""
    from safetensors.torch import load_file

    with open(os.path.join(path, CONFIG_FILE), encoding="utf-8") as fh:
        stored = json.load(fh)
    known = AudioConfig.__dataclass_fields__
    audio = AudioConfig(**{k: v for k, v in stored.items() if k in known})
    net = RespiratoryCNN()
    net.load_state_dict(load_file(os.path.join(path, WEIGHTS_FILE)))
    return net.eval(), audio
