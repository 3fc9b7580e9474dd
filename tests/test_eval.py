"""smore_gnn.train.evaluation: the multiple-choice scorers agree with slow oracles."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import PreTrainedTokenizerFast

from smore_gnn.data.records import mc_prompt
from smore_gnn.hf.methods import smore_paper_config
from smore_gnn.hf.model import get_smore_model
from smore_gnn.hf.testing import byte_tokenizer, tiny_llama
from smore_gnn.train.evaluation import (
    answer_text_accuracy,
    batches,
    evaluate_mc,
    letter_accuracy,
    multiple_choice_accuracy,
)

MC = {"question": "What is 2+2?", "choices": ["3", "4", "5"], "answer": 1}
SFT = {"instruction": "Say hi", "input": "to Bob", "output": "Hi Bob"}
RECORDS = [
    {"question": f"Pick the letter {c}", "choices": ["a", "b", "c", "d"], "answer": i % 4}
    for i, c in enumerate("abcdefghijklmnop")
]


class LetterModel(nn.Module):
    """Fake LM: on its i-th call, every position strongly predicts the byte ``favoured[i]``."""

    def __init__(self, tok: PreTrainedTokenizerFast, favoured: list[str]) -> None:
        super().__init__()
        self.ids = [tok.convert_tokens_to_ids(c) for c in favoured]
        self.vocab = len(tok)
        self.calls: list[tuple[int, ...]] = []

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> object:
        self.calls.append(tuple(input_ids.shape))
        logits = torch.zeros(*input_ids.shape, self.vocab)
        logits[..., self.ids[len(self.calls) - 1]] = 10.0
        return type("Out", (), {"logits": logits})()


def _noisy_smore(seed: int = 5) -> tuple[nn.Module, PreTrainedTokenizerFast]:
    model, tokenizer = tiny_llama(hidden_size=32, intermediate_size=64, seed=seed)
    model = get_smore_model(model, smore_paper_config(rank=[2, 2]))
    torch.manual_seed(4)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.3)
    return model, tokenizer


def _text_oracle(model: nn.Module, tokenizer, record: dict, max_length: int | None = None):
    """One unpadded sequence per option, no cache: the summed log-prob of the choice text."""
    prompt = tokenizer(mc_prompt(record))["input_ids"]
    choices = record["choices"]
    options = [tokenizer(" " + c, add_special_tokens=False)["input_ids"] for c in choices]
    if max_length is not None:
        prompt = prompt[-(max_length - max(map(len, options))) :]
    scores = []
    for ids in options:
        with torch.no_grad():
            logp = model(input_ids=torch.tensor([prompt + ids])).logits[0].log_softmax(-1)
        scores.append(sum(float(logp[len(prompt) - 1 + i, t]) for i, t in enumerate(ids)))
    return scores


def test_multiple_choice_accuracy_with_controlled_logits(capsys: pytest.CaptureFixture) -> None:
    tok = byte_tokenizer()
    records = [
        {"question": "Pick A", "choices": ["x", "y", "z", "w"], "answer": "A"},
        {"question": "Pick B", "choices": ["x", "y"], "answer": 1},
        {"question": "Pick C", "choices": ["x", "y", "z"], "answer": "z"},
    ]
    model = LetterModel(tok, ["A", "B", "A"])  # one forward per question (batch_size=1)
    out = multiple_choice_accuracy(model, tok, records, batch_size=1, progress=False)
    assert out["predictions"] == [0, 1, 0]
    assert out["n"] == 3 and out["accuracy"] == pytest.approx(2 / 3, abs=1e-4)
    assert [shape[0] for shape in model.calls] == [4, 2, 3]  # one row per option
    assert capsys.readouterr().err == ""


def test_multiple_choice_accuracy_is_batch_size_invariant() -> None:
    model, tok = tiny_llama(seed=3)
    records = [{**MC, "question": f"What is {i}+{i}?", "answer": i % 3} for i in range(5)]
    one = multiple_choice_accuracy(model, tok, records, batch_size=1, progress=False)
    many = multiple_choice_accuracy(model, tok, records, batch_size=4, progress=False)
    assert one == many
    assert one["n"] == 5 and len(one["predictions"]) == 5
    with pytest.raises(ValueError, match="multiple-choice"):
        multiple_choice_accuracy(model, tok, [SFT], progress=False)


def test_letter_accuracy_matches_multiple_choice_accuracy():
    model, tokenizer = tiny_llama(hidden_size=32, intermediate_size=64, seed=3)
    model = get_smore_model(model, smore_paper_config())
    records = RECORDS + [{**RECORDS[0], "choices": ["yes", "no"], "answer": 1}]
    fast = letter_accuracy(model, tokenizer, records, batch_size=5, progress=False)
    slow = multiple_choice_accuracy(model, tokenizer, records, batch_size=3, progress=False)
    assert fast["predictions"] == slow["predictions"]
    assert fast["accuracy"] == slow["accuracy"] and fast["n"] == len(records)


def test_answer_text_accuracy_scores_the_choice_text():
    model, tokenizer = _noisy_smore()
    words = ["ab", "abcd", "b", "x", "yy", "hello there", "z"]
    records = [
        {"question": "q" * (1 + i % 5), "choices": words[i % 3 : i % 3 + 2 + i % 3], "answer": 0}
        for i in range(9)
    ]
    result = answer_text_accuracy(model, tokenizer, records, batch_size=4, progress=False)
    for record, pred, got in zip(records, result["predictions"], result["scores"]):
        scores = _text_oracle(model, tokenizer, record)
        assert pred == max(range(len(scores)), key=scores.__getitem__)
        assert got == pytest.approx(scores, abs=1e-4)
    assert len(set(result["predictions"])) > 1


def test_answer_text_accuracy_max_length_cuts_the_prompt_from_the_left():
    model, tokenizer = _noisy_smore(seed=6)
    record = {"question": "Which word is a greeting?", "choices": ["hello", "rock"], "answer": 0}
    result = answer_text_accuracy(model, tokenizer, [record], progress=False, max_length=12)
    cut, whole = _text_oracle(model, tokenizer, record, 12), _text_oracle(model, tokenizer, record)
    assert result["scores"][0] == pytest.approx(cut, abs=1e-4)
    assert result["scores"][0] != pytest.approx(whole, abs=1e-4)


def test_evaluate_mc_reports_per_task_accuracy():
    model, tokenizer = _noisy_smore()
    records = [{**r, "task": "even" if i % 2 == 0 else "odd"} for i, r in enumerate(RECORDS)]
    records.append({k: v for k, v in RECORDS[1].items()})  # no task: counted in "all" only
    for answer, scorer in (("text", answer_text_accuracy), ("letter", letter_accuracy)):
        result = evaluate_mc(model, tokenizer, records, answer=answer, batch_size=5)
        preds = scorer(model, tokenizer, records, batch_size=3)["predictions"]
        assert result["predictions"] == preds and result["n"] == len(records)
        hits = [int(p == r["answer"]) for p, r in zip(preds, records)]
        assert result["accuracy"] == pytest.approx(sum(hits) / len(hits))
        assert set(result["per_task"]) == {"even", "odd"}
        for task, parity in (("even", 0), ("odd", 1)):
            mine = [h for i, h in enumerate(hits[:-1]) if i % 2 == parity]
            assert result["per_task"][task] == {"accuracy": sum(mine) / 8, "n": 8}
    plain = evaluate_mc(model, tokenizer, RECORDS[:3])
    assert plain["per_task"] == {} and plain["n"] == 3


def test_evaluate_mc_rejects_bad_input():
    model, tokenizer = tiny_llama()
    with pytest.raises(ValueError, match="answer must be 'letter' or 'text'"):
        evaluate_mc(model, tokenizer, [MC], answer="word")
    with pytest.raises(ValueError, match=r"records\[1\]: answer index 7 is out of range"):
        evaluate_mc(model, tokenizer, [MC, {**MC, "answer": 7}])
    with pytest.raises(ValueError, match=r"records\[0\]: expected a multiple-choice record"):
        evaluate_mc(model, tokenizer, [SFT])
    with pytest.raises(ValueError, match="at least one"):
        evaluate_mc(model, tokenizer, [])
    with pytest.raises(ValueError, match="max_length must be None or an int >= 2"):
        evaluate_mc(model, tokenizer, [MC], max_length=1)
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        evaluate_mc(model, tokenizer, [MC], batch_size=0)


def test_batches_chunks_in_order():
    assert [list(c) for c in batches(list(range(7)), 3)] == [[0, 1, 2], [3, 4, 5], [6]]
    assert list(batches([], 2)) == []


def _letter_merging_tokenizer() -> PreTrainedTokenizerFast:
    """:func:`byte_tokenizer` plus one merged token per answer letter (``" A"`` -> ``ĠA``)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    letters = [f"Ġ{c}" for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ"]
    vocab = {t: i for i, t in enumerate(["<pad>", "<s>", "</s>", *alphabet, *letters])}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[("Ġ", t[1]) for t in letters]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(["<pad>", "<s>", "</s>"])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )


def test_letter_accuracy_one_forward_per_question_when_letters_are_single_tokens():
    tokenizer = _letter_merging_tokenizer()
    assert tokenizer(" C", add_special_tokens=False)["input_ids"] == [len(tokenizer) - 24]
    model, _ = tiny_llama(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, seed=2)
    with torch.no_grad():  # letter tokens with distinct, large embeddings: varied predictions
        model.get_input_embeddings().weight[-26:].normal_(
            0, 3.0, generator=torch.Generator().manual_seed(1)
        )
    model = get_smore_model(model, smore_paper_config())
    records = RECORDS[:7] + [{"question": "Yes or no?", "choices": ["yes", "no"], "answer": 1}]
    rows: list[int] = []
    hook = model.register_forward_pre_hook(
        lambda _m, args, kwargs: rows.append(kwargs["input_ids"].shape[0]), with_kwargs=True
    )
    fast = letter_accuracy(model, tokenizer, records, batch_size=3, progress=False)
    hook.remove()
    assert rows == [3, 3, 2]  # one row per question, not one per (question, option) pair
    slow = multiple_choice_accuracy(model, tokenizer, records, batch_size=2, progress=False)
    assert fast == slow and fast["n"] == 8
    assert len(set(fast["predictions"])) > 1


def test_scorers_restore_train_mode_even_when_the_forward_fails():
    tok = byte_tokenizer()

    class Broken(LetterModel):
        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> object:
            assert not self.training  # scorers run the model in eval mode
            raise RuntimeError("boom")

    model = Broken(tok, ["A"]).train()
    with pytest.raises(RuntimeError, match="boom"):
        multiple_choice_accuracy(model, tok, [MC], progress=False)
    assert model.training
    model.eval()
    with pytest.raises(RuntimeError, match="boom"):
        multiple_choice_accuracy(model, tok, [MC], progress=False)
    assert not model.training
