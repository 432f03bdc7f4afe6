"""A checkpoint's tokenizer and its chat template, without remote code.

LLaDA's template starts with the BOS token itself; Dream's never has one. Either way the rendered
text is tokenised with add_special_tokens=False, so BOS appears exactly as the template says.
"""

from __future__ import annotations

import json

import torch
import transformers

from ..assets import checkpoint_directory
from .loading import model_class, read_config


def load_tokenizer(path):
    """The tokenizer of a checkpoint directory or bundled model: the class its tokenizer_config.json
    names, when transformers has it; else the model family's (Dream's remote DreamTokenizer loads as
    Qwen2's), so no remote code runs."""
    directory = checkpoint_directory(path)
    settings = directory / "tokenizer_config.json"
    name = json.loads(settings.read_text()).get("tokenizer_class") if settings.is_file() else None
    if not hasattr(transformers, name or ""):
        name = model_class(read_config(directory)).tokenizer_class
    return getattr(transformers, name).from_pretrained(directory, local_files_only=True)


def encode_chat(
    tokenizer, conversations, *, add_generation_prompt: bool = True, device=None
) -> dict:
    """Chat-formatted, left-padded prompts: {"input_ids": [B, P], "attention_mask": [B, P]}.

    conversations: a user message (str), one conversation (list of {"role", "content"} dicts), or a
    list of either.
    """
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError(
            "this tokenizer has no chat_template; tokenise plain text with encode_texts instead"
        )
    texts = [
        tokenizer.apply_chat_template(
            conversation, add_generation_prompt=add_generation_prompt, tokenize=False
        )
        for conversation in _as_batch(conversations)
    ]
    return encode_texts(tokenizer, texts, add_special_tokens=False, device=device)


def encode_texts(
    tokenizer, texts: list[str], *, add_special_tokens: bool = True, device=None
) -> dict:
    """Plain-text prompts (base models; or chat text already rendered, with
    add_special_tokens=False), left-padded: {"input_ids": [B, P], "attention_mask": [B, P]}."""
    if tokenizer.pad_token_id is None:
        raise ValueError("this tokenizer has no pad token, which left padding needs")
    if isinstance(texts, str) or not texts:
        raise ValueError("texts must be a non-empty list of strings")
    rows = [tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"] for text in texts]
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        attention_mask[i, width - len(row) :] = 1
    return {"input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device)}


def _as_batch(conversations) -> list[list[dict]]:
    if isinstance(conversations, str):
        return [[{"role": "user", "content": conversations}]]
    if not isinstance(conversations, (list, tuple)) or not conversations:
        raise ValueError(
            "conversations must be a str, a list of messages, or a non-empty list of those"
        )
    if isinstance(conversations[0], dict):
        return [list(conversations)]
    return [
        [{"role": "user", "content": c}] if isinstance(c, str) else list(c) for c in conversations
    ]
