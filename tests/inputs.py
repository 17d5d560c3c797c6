"""Request bodies the serving tests send on every runtime: good ones (whose answers must agree) and one bad."""

from __future__ import annotations

import json

from tests.audio_helpers import cough_like, encode
from tests.hostile import GOOD_TEXT

TEXT = "The staff were friendly and the room was spotless"
INPUTS = {
    "sentiment": {
        "text": (TEXT.encode(), "text/plain"),
        "json": (json.dumps({"text": "The parcel arrived broken and late"}).encode(), "application/json"),
        "list": (json.dumps({"inputs": [TEXT, "The meeting is on Monday"]}).encode(), "application/json"),
    },
    "respiratory": {
        "wav": (encode(cough_like(12, 44100, 5), 44100, "wav-16"), "audio/wav"),
        "flac": (encode(cough_like(25, 16000, 6), 16000, "flac"), "audio/flac"),
    },
}
BAD = {
    "sentiment": ((b"{not json", "application/json"), 400, "invalid_json"),
    "respiratory": ((b"not a recording at all " * 10, "audio/wav"), 400, "unreadable_audio"),
}
# one good request of each model, as TorchServe rows: (body, headers)
GOOD = {
    "sentiment": (GOOD_TEXT.encode(), {"Content-Type": "text/plain"}),
    "respiratory": (encode(cough_like(4, 22050, 5), 22050, "flac"), {"Content-Type": "audio/flac"}),
}
