"""The baseline: FastAPI + PyTorch eager written the way many tutorials do it.

One image per request, decoded and transformed with plain Pillow + torch (torchvision's
``Resize``/``CenterCrop``/``ToTensor``/``Normalize`` written out, since torchvision is not installed),
the model called inline in the request handler, no batching, no ONNX. Same weights as the exported
model: the real CIFAR checkpoint, or the exporter's seeded random init for resnet50.

Run as ``uvicorn benchmarks.naive_app:app`` with ``NAIVE_ARCH`` (and ``NAIVE_WEIGHTS``) set.
"""

from __future__ import annotations

import io
import os

import torch
from fastapi import FastAPI, File, UploadFile
from PIL import Image

import models
from export.exporter import RANDOM_INIT_SEED

ARCH = os.environ.get("NAIVE_ARCH", "resnet20")
WEIGHTS = os.environ.get("NAIVE_WEIGHTS") or None

_checkpoint = models.load_checkpoint(WEIGHTS, arch=ARCH) if WEIGHTS else None
torch.manual_seed(RANDOM_INIT_SEED)
model = models.create_model(ARCH, weights=_checkpoint).eval()
prep = models.preprocessing_for(ARCH, _checkpoint)
labels = models.labels_for(ARCH) or tuple(str(i) for i in range(1000))
_MEAN = torch.tensor(prep.mean).view(3, 1, 1)
_STD = torch.tensor(prep.std).view(3, 1, 1)
_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}[prep.interpolation]

app = FastAPI(title="naive baseline")


def transform(image: Image.Image) -> torch.Tensor:
    """Resize(shorter side) -> CenterCrop -> ToTensor -> Normalize, as torchvision does it."""
    width, height = image.size
    if width <= height:
        size = (prep.resize_size, int(prep.resize_size * height / width))
    else:
        size = (int(prep.resize_size * width / height), prep.resize_size)
    if size != (width, height):
        image = image.resize(size, _RESAMPLE)
    left = int(round((size[0] - prep.crop_size) / 2.0))
    top = int(round((size[1] - prep.crop_size) / 2.0))
    image = image.crop((left, top, left + prep.crop_size, top + prep.crop_size))
    tensor = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    tensor = tensor.view(prep.crop_size, prep.crop_size, 3).permute(2, 0, 1).float().div(255)
    return (tensor - _MEAN) / _STD


@app.post("/predict")
async def predict(file: UploadFile = File(...), top_k: int = 5) -> dict[str, object]:
    image = Image.open(io.BytesIO(await file.read())).convert("RGB")
    batch = transform(image).unsqueeze(0)
    with torch.inference_mode():
        probabilities = model(batch).softmax(dim=1)[0]
    scores, indices = probabilities.topk(top_k)
    return {
        "predictions": [
            {"label": labels[i], "index": int(i), "score": float(s)} for s, i in zip(scores.tolist(), indices.tolist())
        ]
    }


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}
