"""The comparison point: a handler that works the way TorchServe's Hugging Face example does.

TorchServe's `examples/Huggingface_Transformers/Transformer_handler_generalized.py` is the
handler most TorchServe transformer endpoints start from. It is not shipped in the torchserve
wheel, so this module re-creates its per-request behaviour (our own code, same work) for the
side-by-side benchmarks: a `BaseHandler` subclass that, for every request of a batch, decodes
the body, logs it, calls the tokenizer on it alone padded to `max_length` (150 in its
setup_config.json), moves the tensors to the device and concatenates them; runs the model in
fp32; prints the logits (it does, to the worker's log); and takes each row's argmax with one
`.item()` per row, answering with the label name. TorchServe's own `BaseHandler.handle` drives it.
"""

from __future__ import annotations

import logging
import time

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

log = logging.getLogger(__name__)

try:
    from ts.torch_handler.base_handler import BaseHandler
except ImportError:  # a GPU machine without TorchServe: the same three stages, timed as BaseHandler.handle times them
    class BaseHandler:  # type: ignore[no-redef]
        def __init__(self):
            self.context = None
            self.initialized = False

        def handle(self, data, context):
            started = time.time()
            self.context = context
            output = self.postprocess(self.inference(self.preprocess(data)))
            context.metrics.add_time("HandlerTime", round((time.time() - started) * 1000, 2), None, "ms")
            return output

EXAMPLE_MAX_LENGTH = 150  # the example's setup_config.json


class ExampleHandler(BaseHandler):
    """Sequence classification as the HF example handler does it, on a checkpoint folder."""

    def __init__(self, max_length: int = EXAMPLE_MAX_LENGTH):
        super().__init__()
        self.max_length = max_length

    def initialize(self, context) -> None:
        properties = context.system_properties
        gpu = properties.get("gpu_id")
        self.device = torch.device(f"cuda:{gpu}" if torch.cuda.is_available() and gpu is not None else "cpu")
        model_dir = properties["model_dir"]
        self.model = AutoModelForSequenceClassification.from_pretrained(model_dir).to(self.device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.mapping = {str(i): name for i, name in self.model.config.id2label.items()}
        self.initialized = True

    def preprocess(self, requests):
        ids_batch = mask_batch = None
        for row in requests:
            text = row.get("data")
            if text is None:
                text = row.get("body")
            if isinstance(text, (bytes, bytearray)):
                text = text.decode("utf-8")
            log.info("Received text: '%s'", text)
            encoded = self.tokenizer(text, max_length=self.max_length, padding="max_length", truncation=True,
                                     add_special_tokens=True, return_tensors="pt")
            ids, mask = encoded["input_ids"].to(self.device), encoded["attention_mask"].to(self.device)
            if ids_batch is None:
                ids_batch, mask_batch = ids, mask
            else:
                ids_batch, mask_batch = torch.cat((ids_batch, ids), 0), torch.cat((mask_batch, mask), 0)
        return ids_batch, mask_batch

    def inference(self, data, *args, **kwargs):
        ids_batch, mask_batch = data
        predictions = self.model(ids_batch, mask_batch)
        print("This the output size from the Seq classification model", predictions[0].size())
        print("This the output from the Seq classification model", predictions)
        labels = []
        for i in range(predictions[0].shape[0]):
            labels.append(self.mapping[str(predictions[0][i].unsqueeze(0).argmax(1).item())])
        return labels

    def postprocess(self, data):
        return data
