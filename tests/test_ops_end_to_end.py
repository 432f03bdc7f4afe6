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


@pytest.mark.parametrize("cache", ["elastic", "elastic-drifting-keys", "dual"])
# lengths: shots per row, so ragged prompts
@pytest.mark.parametrize("lengths", [(0,), (0, 1)], ids=["B1", "B2-ragged"])
@pytest.mark.parametrize("name", ["tiny-llada", "tiny-dream"])
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
