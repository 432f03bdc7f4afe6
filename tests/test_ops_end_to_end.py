"""Generation through the kernels (Triton's interpreter here, the GPU in gpu_check.sh) gives the
torch path's tokens on the bundled trained models."""

import pytest
import torch
from conftest import KERNEL_DEVICE

import dllm_accel
from dllm_accel import DualCache, ElasticCache, Sampler, StopAtEOS, Threshold
from dllm_accel.tasks import arith


def generate(name, cache, lengths):
    model = dllm_accel.load_model(name, dtype="float32", device=KERNEL_DEVICE)
    tokenizer = dllm_accel.load_tokenizer(name)
    problems = arith.problems(len(lengths), seed=lengths[0], split="test")
    conversations = [arith.messages(p, shots) for p, shots in zip(problems, lengths, strict=True)]
    batch = dllm_accel.encode_chat(tokenizer, conversations, device=KERNEL_DEVICE)
    out = Sampler(model, unmask=Threshold(0.9), cache=cache, stop=StopAtEOS()).generate(
        batch["input_ids"], batch["attention_mask"], max_new_tokens=48, block_length=24
    )
    return out.sequences, out.recompute_fraction


# (model, shots per row, cache): every cache at batch 1; ragged prompts (a row with one solved
# example before its question) under each ElasticCache boundary and DualCache, one model each (the
# interpreter takes about a minute per ragged ElasticCache case)
CASES = [
    *(
        pytest.param(name, (0,), cache, id=f"{name}-B1-{cache}")
        for name in ("tiny-llada", "tiny-dream")
        for cache in ("elastic", "elastic-drifting-keys", "dual")
    ),
    pytest.param("tiny-dream", (0, 1), "elastic", id="tiny-dream-B2-ragged-elastic"),
    pytest.param(
        "tiny-llada", (0, 1), "elastic-drifting-keys", id="tiny-llada-B2-ragged-drifting-keys"
    ),
    pytest.param("tiny-llada", (0, 1), "dual", id="tiny-llada-B2-ragged-dual"),
]


@pytest.mark.parametrize("name, lengths, cache", CASES)
def test_kernel_path_gives_the_torch_path_tokens(name, lengths, cache, impl):
    policy = {
        "elastic": ElasticCache(),
        "dual": DualCache(),
        "elastic-drifting-keys": ElasticCache(refresh_from="drifting", drift="keys"),
    }[cache]
    impl("torch")
    twin, twin_fraction = generate(name, policy, lengths)
    impl("triton")
    kernel, kernel_fraction = generate(name, policy, lengths)
    assert torch.equal(kernel, twin) and kernel_fraction == twin_fraction
