"""The training core: model, losses, metrics, augmentations and the training loops, on tensors only (torch, numpy)."""
