"""Tokenizers built from GGUF metadata alone, giving the reference's token ids.

`core` holds the `Tokenizer` (vocabulary, special tokens, detokenizing); `spm` and `bpe` (with `bpe_merges`
and the `unicode_categories` table) are the two model families; `cxx_order` reproduces the reference's
hash-map iteration order where it picks a token by walking its map.
"""
from .core import Tokenizer

__all__ = ["Tokenizer"]
