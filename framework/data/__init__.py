"""Shards, manifests and loaders. (Torch-free to import; see ``module`` and ``loader``.)"""
