"""Data: sources → tokenize → pack → MDS shards, and the loaders that read them back.

Submodules import their heavy dependencies (transformers, streaming, torch) lazily where they can,
so that the tokenizer worker processes stay light.
"""
