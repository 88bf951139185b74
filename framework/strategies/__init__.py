"""Built-in strategies (registration is torch-free; implementations load on use).

``single`` — one process; ``ddp`` — torch DDP set up through Accelerate (``accelerate launch``,
``torchrun``, Ray Train); ``deepspeed`` — ZeRO stage 0–3 through ``deepspeed.initialize``
(``torchrun`` or the ``deepspeed`` launcher). Precision, accumulation and clipping always come
from ``trainer.*``; a strategy only adds what is specific to its backend.
"""

from dataclasses import dataclass, field

from framework.config import StrategyConfig, ranged
from framework.registry import register_strategy


@register_strategy("single", impl="framework.strategies.single:SingleDeviceStrategy")
@dataclass
class SingleConfig(StrategyConfig):
    """One process on the CPU or one GPU."""

    name: str = "single"
    device: str = "auto"  # auto | cpu | cuda | cuda:N


@register_strategy("ddp", impl="framework.strategies.ddp:DDPStrategy")
@dataclass
class DDPConfig(StrategyConfig):
    """Torch DistributedDataParallel through Accelerate (one process per device)."""

    name: str = "ddp"
    backend: str = "auto"  # auto (nccl with GPUs, gloo on CPU) | nccl | gloo
    timeout_s: int = ranged(1800, ge=1)  # collective timeout: a desynchronised rank fails after this long


@register_strategy("deepspeed", impl="framework.strategies.deepspeed:DeepSpeedStrategy")
@dataclass
class DeepSpeedConfig(StrategyConfig):
    """DeepSpeed ZeRO data parallelism (sharded optimizer state / gradients / parameters)."""

    name: str = "deepspeed"
    # 0 (plain data parallel) | 1 optimizer state | 2 + gradients | 3 + parameters
    zero_stage: int = ranged(2, ge=0, le=3)
    backend: str = "auto"  # auto (nccl with GPUs, gloo on CPU) | nccl | gloo
    timeout_s: int = ranged(1800, ge=1)
    cpu_shm_allreduce: bool = False  # compile DeepSpeed's shared-memory CPU all-reduce op (minutes, once)
    extra: dict = field(default_factory=dict)  # further DeepSpeed config keys (e.g. zero_optimization.*)
