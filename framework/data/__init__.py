"""Shards, manifests, loaders and the built-in datasets (see README.md in this folder).

Torch-free to import; ``module``, ``loader``, ``cursor``, ``mixing`` and ``episodic`` import torch.
"""
