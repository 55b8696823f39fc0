"""The MLflow pyfunc flavour of a pets-unet checkpoint, logged as code (models-from-code): MLflow runs
this file to build the model, so nothing is unpickled at load time; the checkpoint travels as the
artifact `checkpoint` and loads with `torch.load(weights_only=True)`.

Input: a numpy batch (N, H, W, 3) of RGB photos, uint8 in 0-255, channels last (as PIL and numpy
hold photos), any H and W. Output: uint8 class maps (N, H, W) at the input's size in the official
trimap values 1 (pet), 2 (background), 3 (border). Each photo is resized to the model's resolution
and its logits upsampled back before the argmax, exactly as `unet-ssl predict` does."""
from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import torch

from unet_ssl.core.inference import INFERENCE_RUNTIME, classes_to_trimap, load_segmenter, segment
from unet_ssl.core.runtime import make_runtime

CHECKPOINT_ARTIFACT = "checkpoint"
CHUNK = 16  # photos per forward pass, bounding memory for large requests


class PetsSegmenter(mlflow.pyfunc.PythonModel):
    """Photos in, trimap-valued class maps out (not logits), so a client needs no post-processing."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        self.runtime = make_runtime(INFERENCE_RUNTIME)
        model, self.image_size = load_segmenter(Path(context.artifacts[CHECKPOINT_ARTIFACT]))
        self.model = self.runtime.model(model)

    def predict(self, context: mlflow.pyfunc.PythonModelContext, model_input: np.ndarray,
                params: dict | None = None) -> np.ndarray:
        batch = np.asarray(model_input)
        if batch.ndim != 4 or batch.shape[-1] != 3:
            raise ValueError(f"expected RGB photos as (N, H, W, 3) uint8, got shape {batch.shape}")
        photos = torch.from_numpy(np.array(batch, dtype=np.uint8)).permute(0, 3, 1, 2)  # a writable copy
        maps = []
        for i in range(0, len(photos), CHUNK):
            maps += segment(self.model, list(photos[i:i + CHUNK]), self.runtime, self.image_size)
        if not maps:
            return np.empty((0, *batch.shape[1:3]), np.uint8)
        return np.stack([classes_to_trimap(m).numpy() for m in maps])


mlflow.models.set_model(PetsSegmenter())
