"""Streaming detokenization (whole characters only) and the reasoning / answer split."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.detok import ANSWER, REASONING, ReasoningSplitter, StreamingDetokenizer
from engine.tokenizer import Tokenizer
from tests.fixtures.tokenizers import CORPUS, FAMILIES, build_tokenizer

TEXTS = [
    "Emoji 🙂🚀👩‍💻🇫🇷 and flags, accents: naïve Ærøskøbing Łódź",
    "中文文本，日本語のテキスト、한국어 문장 — mixed with code: print('é')",
    "<|im_start|>assistant\n<think>\nhé\n</think>\n\n答え 🎉<|im_end|>",
    "€100 ± 5 °C ≤ ∞ → ∑\n\tdef f(): return '🙂'",
]


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Tokenizer]:
    root = tmp_path_factory.mktemp("detok")
    out = {}
    for family in FAMILIES:
        build_tokenizer(root / family, family, 384)
        out[family] = Tokenizer(root / family)
    return out


def _stream(tok: Tokenizer, ids: list[int]) -> list[str]:
    detok = StreamingDetokenizer(tok)
    return [detok.add(i) for i in ids] + [detok.flush()]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("text", TEXTS, ids=["emoji", "cjk", "chat", "symbols"])
def test_stream_equals_full_decode_and_never_breaks_a_character(tokenizers, family, text):
    tok = tokenizers[family]
    ids = tok.encode(text)
    pieces = _stream(tok, ids)
    assert "".join(pieces) == tok.decode(ids) == text
    assert all("\ufffd" not in piece for piece in pieces)
    # The small vocabulary splits multi-byte characters across tokens, so text was really held back.
    assert pieces.count("") > 0


def test_byte_level_path_is_used_for_bpe_families(tokenizers):
    for tok in tokenizers.values():
        assert tok.token_bytes is not None and len(tok.token_bytes) == tok.vocab_size


def test_invalid_bytes_stream_like_the_full_decode(tokenizers):
    tok = tokenizers["qwen3"]
    # A lone continuation byte, then a character cut short by the end of the stream.
    lone = tok.token_bytes.index(b"\x80")
    head = tok.token_bytes.index(b"\xe6")
    ids = [*tok.encode("a"), lone, *tok.encode("b"), head]
    assert "".join(_stream(tok, ids)) == tok.decode(ids)


def test_generic_path_for_non_byte_level_tokenizers(tmp_path: Path):
    from tokenizers import SentencePieceBPETokenizer

    spm = SentencePieceBPETokenizer()
    spm.train_from_iterator(CORPUS * 3, vocab_size=300, min_frequency=2, show_progress=False)
    spm.save(str(tmp_path / "tokenizer.json"))
    tok = Tokenizer(tmp_path)
    assert tok.token_bytes is None
    text = "The quick brown fox answers questions about code. Café, naïve."
    ids = tok.encode(text)
    pieces = _stream(tok, ids)
    assert "".join(pieces) == tok.decode(ids)
    assert all("\ufffd" not in p for p in pieces)


def _split(chunks: list[str], in_reasoning: bool = False) -> tuple[str, str, list[tuple[str, str]]]:
    splitter = ReasoningSplitter(in_reasoning=in_reasoning)
    parts = [p for chunk in chunks for p in splitter.feed(chunk)] + splitter.flush()
    reasoning = "".join(t for k, t in parts if k == REASONING)
    answer = "".join(t for k, t in parts if k == ANSWER)
    return reasoning, answer, parts


def test_reasoning_split_with_tags_cut_at_every_position():
    text = "<think>\nLet me think: a<b.\n\n</think>\n\nThe answer is <b>42</b>."
    for cut in range(len(text) + 1):
        for chunks in ([text[:cut], text[cut:]], list(text)):
            reasoning, answer, parts = _split(chunks)
            assert reasoning == "Let me think: a<b."
            assert answer == "The answer is <b>42</b>."
            assert all(t for _, t in parts)
            assert all("<think>" not in t and "</think>" not in t for _, t in parts)


def test_reasoning_streams_before_the_close_tag_arrives():
    splitter = ReasoningSplitter()
    assert splitter.feed("<think>\nstep one") == [(REASONING, "step one")]
    assert splitter.feed("\n") == []  # a newline may be framing: held until more reasoning comes
    assert splitter.feed("step two</th") == [(REASONING, "\nstep two")]
    assert splitter.feed("ink>\n\nDone") == [(ANSWER, "Done")]


def test_prompt_that_opened_the_block_starts_in_reasoning():
    reasoning, answer, _ = _split(["thinking...", "</think>", "\n\nok"], in_reasoning=True)
    assert (reasoning, answer) == ("thinking...", "ok")


def test_no_think_block_is_all_answer():
    reasoning, answer, _ = _split(["Plain ", "answer with a < sign and <thin", "g>"])
    assert (reasoning, answer) == ("", "Plain answer with a < sign and <thing>")


def test_unclosed_block_stays_reasoning():
    reasoning, answer, _ = _split(["<think>still going\n"])
    assert (reasoning, answer) == ("still going\n", "")
