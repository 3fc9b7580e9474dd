"""Hugging Face integration: S'MoRE adapters on a ``transformers`` model, with peft's API.

:mod:`~smore_gnn.hf.model` (``SMoREModel``, ``get_smore_model``), :mod:`~smore_gnn.hf.layer`
(``AdaptedLinear``: a base linear with its adapters by name, as peft holds them),
:mod:`~smore_gnn.hf.mask` (each forward's padding mask, for that forward only),
:mod:`~smore_gnn.hf.targets` (which linears an adapter wraps, by peft's own matching rule),
:mod:`~smore_gnn.hf.adapters`, :mod:`~smore_gnn.hf.folders` and :mod:`~smore_gnn.hf.save`
(named adapters and their folders: ``adapter_config.json`` + ``adapter_model.safetensors``),
:mod:`~smore_gnn.hf.methods` (the one registry of methods: S'MoRE, MoLRE and LoRA through
peft, at equal parameter budgets) and
:mod:`~smore_gnn.hf.loading` (a model and tokenizer from a local folder or a GGUF, offline).
:mod:`~smore_gnn.hf.testing` builds download-free fixtures: a byte tokenizer and a tiny Llama.
"""
