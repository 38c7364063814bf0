"""HF checkpoints: a directory with ``config.json`` and ``*.safetensors`` shards."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch

from plait.engine.errors import ModelLoadError, ModelNotFoundError
from plait.engine.model_config import ModelConfig, config_from_hf


class SafetensorsCheckpoint:
    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        config_path = self.directory / "config.json"
        if not config_path.is_file():
            raise ModelNotFoundError(f"{self.directory} has no config.json (expected an HF model directory)")
        self.files = sorted(self.directory.glob("*.safetensors"))
        if not self.files:
            raise ModelLoadError(f"{self.directory} has no *.safetensors files")
        try:
            hf_config = json.loads(config_path.read_text())
        except json.JSONDecodeError as error:
            raise ModelLoadError(f"{config_path} is not valid JSON: {error}") from None
        self.config: ModelConfig = config_from_hf(hf_config, name=self.directory.name)

    def weights(self, dtype: torch.dtype = torch.float32) -> Iterator[tuple[str, torch.Tensor]]:
        from safetensors import SafetensorError, safe_open

        for file in self.files:
            try:
                with safe_open(str(file), framework="pt") as handle:
                    for name in handle.keys():  # noqa: SIM118 (safe_open handles are not iterable)
                        yield name, handle.get_tensor(name).to(dtype)
            except SafetensorError as error:
                raise ModelLoadError(f"{file.name} is corrupt: {error}") from None
