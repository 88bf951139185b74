"""DeepSpeed ZeRO (stages 0–3) through ``deepspeed.initialize``.

Started by ``torchrun`` or the ``deepspeed`` launcher (a plain ``python`` run is a world of one).
The DeepSpeed config is built from the Hydra config alone (``launch.deepspeed_config``): ZeRO
stage from ``strategy.zero_stage``, precision, accumulation and clipping from ``trainer.*``.

Checkpoints (every rank takes part):

1. ``engine.save_checkpoint(checkpoints/, tag=".step-N.ds.tmp", save_latest=False)`` — each rank
   writes its own shards into a hidden directory;
2. a barrier: every shard is on disk;
3. rank 0 fsyncs the shards, renames the directory to ``step-N.ds`` (atomic), then writes
   Medley's pointer ``step-N.pt`` atomically. Only the pointer makes a checkpoint visible to
   ``resume=auto``, so a crash at any point leaves the previous checkpoint in charge.

The pointer holds the trainer state, the data position and RNG of every rank, and the
consolidated model weights (plain tensors: ``torch.load(weights_only=True)``). The shard files
hold DeepSpeed's own objects and are read by DeepSpeed with ``weights_only=False``: load them
only from a run directory you trust.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from framework.checkpoint import fsync_dir, inside, save_atomic, write_error
from framework.strategies.launch import deepspeed_config
from framework.strategies.process_group import ProcessGroupStrategy, ensure_rendezvous_env, start_group_for_this_attempt


class DeepSpeedStrategy(ProcessGroupStrategy):
    name = "deepspeed"
    sharded_checkpoints = True
    supports_phases = False  # the engine owns one model and one optimizer for its whole life

    def __init__(self, config: Any = None, capabilities: Any = None, run_config: Any = None):
        super().__init__(config, capabilities, run_config)
        ensure_rendezvous_env()
        import deepspeed
        import deepspeed.ops

        if not torch.cuda.is_available() and not getattr(config, "cpu_shm_allreduce", False):
            # DeepSpeed JIT-compiles a shared-memory all-reduce op when its comm backend starts on
            # CPU (30 s to minutes); gloo's all-reduce gives the same numbers
            deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        started_here = not dist.is_initialized()
        start_group_for_this_attempt(self._backend(), self._timeout())
        deepspeed.init_distributed(dist_backend=self._backend(), auto_mpi_discovery=False,
                                   timeout=self._timeout(), verbose=False)
        self.owns_process_group = started_here
        self.device = self._pick_device(int(os.environ.get("LOCAL_RANK", "0")))
        self.stage = int(getattr(config, "zero_stage", 2))
        self.engine: Any = None

    # --- model ---------------------------------------------------------------------
    def setup(self, model: nn.Module, optimizers: dict[str, Any], algorithm: Any) -> tuple[nn.Module, dict]:
        import deepspeed

        name = type(algorithm).__name__
        if len(optimizers) != 1:
            raise ValueError(f"strategy=deepspeed drives exactly one optimizer; algorithm {name} configured "
                             f"{len(optimizers)} ({', '.join(optimizers)})")
        if algorithm.owned_module() is not None:
            raise ValueError(f"strategy=deepspeed cannot shard parameters outside the model; algorithm {name} "
                             f"owns some (declare Capabilities(strategies=...) without 'deepspeed')")
        (opt_name, optimizer), = optimizers.items()
        ds_config = deepspeed_config(self.run_config, self.world_size)
        self.engine, ds_optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config,
                                                               dist_init_required=False)
        return self.engine, {opt_name: ds_optimizer}

    def unwrap(self, model: nn.Module) -> nn.Module:
        return getattr(model, "module", model)

    def backward(self, loss: torch.Tensor, model: nn.Module) -> None:
        # the trainer has already divided by the accumulation count
        self.engine.backward(loss, scale_wrt_gas=False)

    def clip_grad_norm(self, model: nn.Module, max_norm: float) -> torch.Tensor:
        """DeepSpeed clips inside ``engine.step()`` (``gradient_clipping`` = ``trainer.grad_clip``) over
        its partitioned gradients; the norm is known only then, so nothing is logged here."""
        return torch.tensor(float("nan"))

    def optimizer_step(self, optimizer: Any, model: nn.Module) -> None:
        self.engine.step()  # the accumulation boundary: reduce, clip, step, zero

    def zero_grad(self, optimizer: Any, model: nn.Module) -> None:
        optimizer.zero_grad()
        self.engine.zero_grad()

    def _release_wrappers(self) -> None:
        """ZeRO-3 keeps hooks and a parameter coordinator on the module until the engine is destroyed."""
        if self.engine is not None:
            self.engine.destroy()
            self.engine = None

    # --- weights ---------------------------------------------------------------------
    def _gathered(self, modifier_rank: int | None):
        """Under ZeRO-3 parameters are partitioned; gather them for the duration of the block."""
        import contextlib

        import deepspeed

        if self.stage != 3:
            return contextlib.nullcontext()
        params = list(self.unwrap(self.engine).parameters())
        return deepspeed.zero.GatheredParameters(params, modifier_rank=modifier_rank)

    def full_state_dict(self, model: nn.Module) -> dict:
        """Whole fp32 weights on every rank: ZeRO's fp32 master copies where they exist (under ZeRO-3
        the module holds only this rank's partition), the module's own tensors otherwise."""
        from deepspeed.utils import safe_get_full_fp32_param

        module = self.unwrap(model)
        masters = {}
        for name, param in module.named_parameters():
            full = safe_get_full_fp32_param(param)  # a collective under ZeRO: every rank calls it
            if full is not None:
                masters[name] = full.detach().cpu().clone()
        with self._gathered(modifier_rank=None):
            return {k: masters[k] if k in masters else v.detach().cpu().clone()
                    for k, v in module.state_dict().items()}

    def load_weights(self, model: nn.Module, state_dict: dict) -> None:
        from deepspeed.utils import safe_set_full_fp32_param

        module = self.unwrap(model)
        with self._gathered(modifier_rank=0):  # rank 0's values are scattered back on exit
            if self.stage != 3 or self.is_global_zero:
                module.load_state_dict(state_dict)
        # ZeRO keeps fp32 master partitions apart from the module: the next step would otherwise
        # write the old weights back
        for name, param in module.named_parameters():
            if hasattr(param, "ds_id") or hasattr(param, "_hp_mapping"):
                safe_set_full_fp32_param(param, state_dict[name].to(self.device, torch.float32))

    # --- checkpoints ----------------------------------------------------------------
    def save_checkpoint(self, path: Path, model: nn.Module, optimizers: dict[str, Any], state: dict) -> None:
        path = Path(path)
        ckpt_dir, final = path.parent, path.parent / f"{path.stem}.ds"
        tmp_tag = f".{path.stem}.ds.tmp"
        if self.is_global_zero:
            shutil.rmtree(ckpt_dir / tmp_tag, ignore_errors=True)  # left by a crash mid-save
            ckpt_dir.mkdir(parents=True, exist_ok=True)
        self.barrier()
        try:
            self.engine.save_checkpoint(str(ckpt_dir), tag=tmp_tag, client_state={}, save_latest=False)
        except (OSError, RuntimeError) as exc:  # a full disk: name it; the hidden directory goes next save
            raise write_error(ckpt_dir / tmp_tag, exc) from exc
        weights = self.full_state_dict(model)
        self.barrier()  # every rank's shards are written
        if not self.is_global_zero:
            return
        _fsync_tree(ckpt_dir / tmp_tag)
        shutil.rmtree(final, ignore_errors=True)  # a directory renamed but never pointed to
        os.replace(ckpt_dir / tmp_tag, final)
        fsync_dir(ckpt_dir)
        pointer = {**state, "format": "deepspeed", "model": weights,
                   "deepspeed": {"dir": final.name, "zero_stage": self.stage, "world_size": self.world_size}}
        save_atomic(pointer, path)

    def load_optimizers(self, optimizers: dict[str, Any], state: dict, path: Path) -> None:
        info = state.get("deepspeed")
        if state.get("format") != "deepspeed" or info is None:
            raise ValueError(f"checkpoint {path} was written by strategy '{state.get('format', 'torch')}' and "
                             f"holds no DeepSpeed optimizer shards; resume it with that strategy or pass "
                             f"resume_weights_only=true")
        if info["zero_stage"] != self.stage:
            raise ValueError(f"checkpoint {path} was written at ZeRO stage {info['zero_stage']}, this run uses "
                             f"strategy.zero_stage={self.stage}; pass resume_weights_only=true to load only "
                             f"the weights")
        inside(Path(path).parent, str(info["dir"]), f"checkpoint {path}: deepspeed.dir")
        loaded, _ = self.engine.load_checkpoint(str(Path(path).parent), tag=info["dir"], load_optimizer_states=True,
                                                load_lr_scheduler_states=False)
        if loaded is None:
            raise FileNotFoundError(f"DeepSpeed found no checkpoint in {Path(path).parent / info['dir']}")


def _fsync_tree(root: Path) -> None:
    for dirpath, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))
