"""One process on the CPU or one GPU."""

from __future__ import annotations

import torch

from framework.strategies.base import Strategy


class SingleDeviceStrategy(Strategy):
    name = "single"

    def __init__(self, config=None, capabilities=None, run_config=None):
        super().__init__(config, capabilities, run_config)
        device = getattr(config, "device", "auto")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
