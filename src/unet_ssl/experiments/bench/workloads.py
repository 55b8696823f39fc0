"""The loops `unet-ssl bench` measures. Each step is the core's own (the inputs and loss functions that
`pretrain` and `finetune` call, `predict` for evaluation), so the bench times the code the pipeline runs."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import torch

from unet_ssl.config import FinetuneConfig, PretrainConfig
from unet_ssl.core.finetuning import NUM_CLASSES, build_model, finetune_inputs, finetune_loss
from unet_ssl.core.inference import predict
from unet_ssl.core.metrics import ConfusionMatrix
from unet_ssl.core.pretraining import pretrain_inputs, pretrain_loss, pretraining_networks, trained_network
from unet_ssl.core.runtime import Runtime
from unet_ssl.experiments.bench.loading import BenchData

WORKLOADS = ("simclr", "mae", "finetune", "evaluate")


@dataclass(frozen=True)
class BenchConfig:
    workloads: tuple[str, ...] = WORKLOADS
    precisions: tuple[str, ...] = ("fp32", "bf16")
    channels_last: tuple[bool, ...] = (False, True)
    simclr_batch: int = 32  # images per SimCLR step (two views each), at 64 px
    batch: int = 8  # images per step at 128 px
    seconds: float = 1.0  # least timed seconds per measurement (after one warm-up step)
    min_steps: int = 2
    naive: bool = True
    compile: bool = False
    device: str = "auto"
    threads: int = 0  # 0 = torch's default
    seed: int = 0

    def __post_init__(self):
        unknown = set(self.workloads) - set(WORKLOADS)
        if unknown:
            raise ValueError(f"unknown bench workloads {sorted(unknown)}; choose from {WORKLOADS}")
        if set(self.precisions) - {"fp32", "bf16"}:
            raise ValueError(f"bench precisions must be fp32 and/or bf16, got {self.precisions}")


# The pipeline's settings for each measured loop (the sizes the labels name).
SIMCLR = PretrainConfig(method="simclr", image_size=64)
MAE = PretrainConfig(method="mae_patch", image_size=128)
FINETUNE = FinetuneConfig(image_size=128, augment="flip")


@dataclass
class Workload:
    """One measured loop: how to make inputs from batch indices (the tensor data path), the step
    on ready inputs, and how the naive pipeline's batches become the same inputs."""

    name: str
    label: str
    image_size: int
    batch_size: int
    n_images: int
    make_inputs: Callable[[torch.Tensor], tuple]
    step: Callable[[tuple], None]
    from_naive: Callable[[object], tuple]
    module: torch.nn.Module


def training_step(loss: Callable[..., torch.Tensor], params: Iterable[torch.nn.Parameter],
                  lr: float) -> Callable[[tuple], None]:
    """Forward and loss by `loss(*inputs)`, then backward and an Adam update, as the training loops do."""
    optimizer = torch.optim.Adam(params, lr=lr)

    def step(inputs: tuple) -> None:
        value = loss(*inputs)
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        optimizer.step()

    return step


def build_workload(name: str, data: BenchData, runtime: Runtime, cfg: BenchConfig, views: torch.Generator) -> Workload:
    """The model, inputs, loss and optimiser of the pipeline's loop for `name`, on `runtime`; `views`
    (on the device) draws the views, masks and flips."""
    if name in ("simclr", "mae"):
        images = runtime.resident(data.pretrain)
    else:
        images, masks = runtime.resident(data.pets), runtime.resident(data.masks)

    def gather(source: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return runtime.to_device(source[idx.to(source.device)])

    if name in ("simclr", "mae"):
        pcfg = SIMCLR if name == "simclr" else MAE
        net = trained_network(*pretraining_networks(pcfg, True, runtime), pcfg)
        step = training_step(lambda *inputs: pretrain_loss(net, inputs, pcfg, runtime), net.parameters(), pcfg.lr)
        make = lambda idx: pretrain_inputs(gather(images, idx), pcfg, runtime, views)  # noqa: E731
        if name == "simclr":
            return Workload(name, "SimCLR pretraining", pcfg.image_size, cfg.simclr_batch, data.pretrain.shape[0],
                            make, step, lambda b: (runtime.batch(torch.cat(b)),), net)
        return Workload(name, "MAE pretraining (patch mask)", pcfg.image_size, cfg.batch, data.pretrain.shape[0],
                        make, step, lambda b: (runtime.batch(b[0]), runtime.batch(b[1])), net)
    model = runtime.model(build_model(FINETUNE, None))
    if name == "finetune":
        step = training_step(lambda x, y: finetune_loss(model, x, y, runtime),
                             [p for p in model.parameters() if p.requires_grad], FINETUNE.lr)
        return Workload(name, "fine-tuning (Dice, flips)", FINETUNE.image_size, cfg.batch, data.pets.shape[0],
                        lambda idx: finetune_inputs(gather(images, idx), gather(masks, idx), FINETUNE, runtime, views),
                        step, lambda b: (runtime.batch(b[0]), runtime.to_device(b[1])), model)
    matrix = ConfusionMatrix(NUM_CLASSES)

    def evaluate(inputs: tuple) -> None:
        matrix.update(predict(model, inputs[0], runtime, inputs[0].shape[0]), inputs[1])

    return Workload(name, "evaluation (predict + confusion matrix)", FINETUNE.image_size, cfg.batch,
                    data.pets.shape[0], lambda idx: (gather(images, idx), gather(masks, idx)), evaluate,
                    lambda b: (runtime.batch(b[0]), runtime.to_device(b[1])), model)
