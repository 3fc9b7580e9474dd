"""Download-free test fixtures: a byte-level tokenizer and a tiny random Llama.

They let tests, examples and smoke runs exercise the whole Hugging Face path (tokenize, wrap,
train, save, load) in seconds and fully offline. They are not meant for real fine-tuning: use
:func:`smore_gnn.hf.loading.load_model_and_tokenizer` for that.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["byte_tokenizer", "tiny_llama"]


def byte_tokenizer() -> Any:
    """A download-free byte-level tokenizer: every UTF-8 byte is a token (BPE with no merges).

    Special tokens: ``<pad>`` (0), ``<s>`` (1, bos), ``</s>`` (2, eos); no token is added
    automatically, so any text round-trips exactly through encode/decode.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>"]
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {tok: i for i, tok in enumerate(specials + alphabet)}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(specials)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        padding_side="right",
    )


def tiny_llama(
    vocab_size: int | None = None,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int = 128,
    max_position_embeddings: int = 512,
    seed: int = 0,
) -> tuple[Any, Any]:
    """A tiny randomly initialised ``LlamaForCausalLM`` plus :func:`byte_tokenizer`, for tests.

    Args:
        vocab_size: Model vocabulary; defaults to the tokenizer size (259) and must not be smaller.
        hidden_size: Hidden width (divisible by ``num_heads``).
        num_layers: Decoder layers.
        num_heads: Attention heads (also key/value heads).
        intermediate_size: MLP width.
        max_position_embeddings: Longest sequence.
        seed: Seed of the weight initialisation (global RNG state is left untouched).

    Returns:
        ``(model, tokenizer)`` with the model in eval mode.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = byte_tokenizer()
    vocab_size = len(tokenizer) if vocab_size is None else vocab_size
    if vocab_size < len(tokenizer):
        raise ValueError(
            f"vocab_size must be >= the tokenizer size {len(tokenizer)}, got "
            f"{vocab_size}; pass None to use the tokenizer size"
        )
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size {hidden_size} must be divisible by num_heads {num_heads}")
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_position_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model.eval(), tokenizer
