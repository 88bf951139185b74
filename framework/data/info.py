"""What a model needs to know about its data, read from the manifest (torch-free)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class DataInfo:
    name: str
    tasks: dict[str, int]  # task -> number of classes
    image_shape: tuple[int, int, int]  # C, H, W
    label_spaces: dict[str, list[str]] = field(default_factory=dict)  # task -> class names
    extra: dict[str, Any] = field(default_factory=dict)  # dataset-specific manifest fields

    @classmethod
    def from_manifest(cls, manifest: dict) -> DataInfo:
        tasks = manifest["tasks"]
        return cls(
            name=manifest["name"],
            tasks={t: len(v["classes"]) for t, v in tasks.items()},
            image_shape=tuple(manifest["image_shape"]),
            label_spaces={t: list(v["classes"]) for t, v in tasks.items()},
            extra=manifest.get("extra", {}),
        )
