"""Torch DistributedDataParallel, set up through Accelerate.

Started by ``accelerate launch`` (one node or many), ``torchrun``, or Ray Train (whose process
group is reused). Accelerate only starts the process group and wraps the model; optimizers stay
plain torch optimizers, and precision stays with the trainer (``trainer.precision`` autocast),
so a checkpoint written here is the same file a single process writes.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from framework.strategies.launch import launched_world_size
from framework.strategies.process_group import ProcessGroupStrategy, ensure_rendezvous_env, start_group_for_this_attempt


class DDPStrategy(ProcessGroupStrategy):
    name = "ddp"

    def __init__(self, config: Any = None, capabilities: Any = None, run_config: Any = None):
        super().__init__(config, capabilities, run_config)
        ensure_rendezvous_env()  # a plain `python` run is a world of one
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs

        started_here = not dist.is_initialized()
        start_group_for_this_attempt(self._backend(), self._timeout())
        find_unused = bool(getattr(capabilities, "find_unused_parameters", False))
        self.accelerator = Accelerator(
            # without cpu=True, Accelerate on a machine without GPUs starts no process group and
            # every rank trains alone, with no error
            cpu=not torch.cuda.is_available(),
            mixed_precision="no",  # the trainer autocasts from trainer.precision
            kwargs_handlers=[
                InitProcessGroupKwargs(backend=self._backend(), timeout=self._timeout()),
                DistributedDataParallelKwargs(find_unused_parameters=find_unused),
            ],
        )
        self.owns_process_group = started_here and dist.is_initialized()
        launched = launched_world_size()
        if self.accelerator.num_processes != launched:
            raise RuntimeError(
                f"strategy=ddp: Accelerate set up {self.accelerator.num_processes} process(es) but the "
                f"launcher started {launched} (WORLD_SIZE); with accelerate launch use a config with "
                f"distributed_type MULTI_GPU (e.g. launchers/accelerate/cpu_2proc.yaml), not --cpu"
            )
        self.device = self.accelerator.device

    def setup(self, model: nn.Module, optimizers: dict[str, Any], algorithm: Any) -> tuple[nn.Module, dict]:
        # moves to the device and wraps in DDP when there is more than one process (DDP broadcasts
        # rank 0's parameters and buffers: a model grown at a phase boundary agrees everywhere); the
        # optimizers keep pointing at the same Parameter objects
        self.accelerator.free_memory()  # a re-wrap: the old wrapper's gradient hooks must go
        return self.accelerator.prepare_model(model), optimizers

    def unwrap(self, model: nn.Module) -> nn.Module:
        return self.accelerator.unwrap_model(model)

    def backward(self, loss: torch.Tensor, model: nn.Module) -> None:
        self.accelerator.backward(loss)

    def no_sync(self, model: nn.Module, accumulating: bool):
        """Skip DDP's gradient all-reduce on micro-batches that do not end a step."""
        return self.accelerator.no_sync(model) if accumulating else contextlib.nullcontext()

    def _release_wrappers(self) -> None:
        """Accelerate keeps every prepared model (and so the DDP reducer and its group) alive."""
        self.accelerator.free_memory()
