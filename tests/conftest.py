import os

# Triton's interpreter must be chosen before triton is first imported.
os.environ.setdefault("TRITON_INTERPRET", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from dllm_accel.models import build_model, tiny_config  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared"
MODEL_CONFIGS = SHARED / "data" / "model-configs"
MODEL_TYPES = ["llada", "Dream"]


def shared_path(*parts: str) -> Path:
    """A file of ../shared; the test is skipped where a fresh clone has no shared folder."""
    path = MODEL_CONFIGS.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is not available")
    return path


def tiny_model(model_type: str, *, n_kv_heads: int | None = None, dtype=torch.float32, seed: int = 0, **fields):
    """A tiny model whose norm weights and biases are random too, so a misplaced one shows."""
    model = build_model(tiny_config(model_type, n_kv_heads=n_kv_heads, **fields), dtype=dtype, seed=seed)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name or "ln_f" in name:
                param.copy_(1 + 0.2 * torch.randn(param.shape, generator=generator))
            elif name.endswith("bias"):
                param.copy_(0.1 * torch.randn(param.shape, generator=generator))
    return model


def random_ids(model, batch: int, length: int, seed: int = 0) -> torch.Tensor:
    """Ordinary token ids (no special token) of shape [batch, length]."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.spec.vocab_size - 3, (batch, length), generator=generator)


class StandIn(nn.Module):
    """A module tree with the remote code's parameter names and a transformers-like config."""

    class Config:
        def __init__(self, values):
            self.values = values

        def to_dict(self):
            return dict(self.values)

    def __init__(self, state: dict, config: dict):
        super().__init__()
        self.config = self.Config(config)
        for name, tensor in state.items():
            owner = self
            *path, leaf = name.split(".")
            for part in path:
                if not hasattr(owner, part):
                    owner.add_module(part, nn.Module())
                owner = getattr(owner, part)
            owner.register_parameter(leaf, nn.Parameter(tensor.clone()))


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
