"""Host syncs per decode step for each refresh policy, at two depths (dllm_accel.syncs):

    python experiments/count_syncs.py --device cuda --layers 2 8

A random-weight tiny LLaDA, a ragged batch of two prompts, 32 new tokens in blocks of 8,
Threshold(0.9). A policy whose count grows with the layers stops the host inside the layer loop
(ARCHITECTURE.md §8). `--sites` prints where the syncs of the deepest model come from.
"""

from __future__ import annotations

import argparse

import torch

from dllm_accel import DualCache, ElasticCache, NoCache, PrefixCache, Sampler, Threshold
from dllm_accel.models import build_model, tiny_config
from dllm_accel.syncs import HostSyncs

POLICIES = {
    "NoCache": NoCache,
    "PrefixCache": PrefixCache,
    "DualCache": DualCache,
    "ElasticCache(gamma=0)": lambda: ElasticCache(gamma=0.0),
    "ElasticCache(gamma=0.9)": lambda: ElasticCache(gamma=0.9),
    "ElasticCache(gamma=2)": lambda: ElasticCache(gamma=2.0),
}


def ragged_prompts(vocab: int, pad_id: int, lengths=(5, 9), seed: int = 0):
    """Left-padded random prompts [B, P] of ordinary tokens and their attention mask."""
    generator = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.full((len(lengths), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, n in enumerate(lengths):
        ids[row, width - n :] = torch.randint(0, vocab - 3, (n,), generator=generator)
        mask[row, width - n :] = 1
    return ids, mask


def count(n_layers: int, make, device: str) -> tuple[float, HostSyncs]:
    """-> (syncs per decode step, the counter) of one generation after a warm-up."""
    model = build_model(tiny_config("llada", n_layers=n_layers), device=device, seed=0)
    ids, mask = ragged_prompts(model.spec.vocab_size, model.spec.pad_id)
    sampler = Sampler(model, unmask=Threshold(0.9), cache=make())
    sampler.generate(ids, mask, max_new_tokens=32, block_length=8)  # warm-up: kernels compiled
    with HostSyncs(sites=True) as syncs:
        out = sampler.generate(ids, mask, max_new_tokens=32, block_length=8)
    return syncs.per_step(out), syncs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--layers", type=int, nargs="+", default=[2, 8])
    parser.add_argument("--sites", action="store_true")
    args = parser.parse_args()
    if min(args.layers) < 1:
        parser.error("--layers must be >= 1")
    print("| policy | " + " | ".join(f"{n} layers" for n in args.layers) + " |")
    print("|---|" + "---:|" * len(args.layers))
    for name, make in POLICIES.items():
        counts = [count(n, make, args.device) for n in args.layers]
        cells = " | ".join(f"{per_step:.2f}" for per_step, _ in counts)
        print(f"| {name} | {cells} |", flush=True)
        if args.sites:
            sites = counts[-1][1].by_site.most_common()
            print("  " + ", ".join(f"{site}: {n}" for site, n in sites))


if __name__ == "__main__":
    main()
