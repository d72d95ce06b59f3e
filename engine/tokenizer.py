"""A model's tokenizer: `tokenizers` for text <-> ids, the model's own chat template, its EOS ids.

Reads the files of a Hugging Face model directory: tokenizer.json (required), tokenizer_config.json,
chat_template.jinja, generation_config.json and config.json (each optional).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

from engine import chat
from engine.errors import ModelFormatError

# The named special tokens transformers hands to chat templates (its SPECIAL_TOKENS_ATTRIBUTES).
_NAMED_SPECIALS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFormatError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ModelFormatError(f"{path} must hold a JSON object, found {type(data).__name__}")
    return data


def _token_text(value: Any) -> str | None:
    """A special token as written in tokenizer_config.json: a string or a serialized AddedToken."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def _as_id_list(value: Any) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, int) and not isinstance(v, bool)]
    return []


class Tokenizer:
    """Text <-> token ids for one model directory, plus its chat template and stop tokens."""

    def __init__(self, model_dir: str | Path) -> None:
        from tokenizers import Tokenizer as _HFTokenizer

        self.path = Path(model_dir)
        tokenizer_file = self.path / "tokenizer.json"
        if not tokenizer_file.is_file():
            raise ModelFormatError(f"{tokenizer_file} is missing: the model directory has no tokenizer")
        raw = tokenizer_file.read_bytes()
        self.identity = hashlib.sha256(raw).hexdigest()
        try:
            self._tok = _HFTokenizer.from_str(raw.decode("utf-8"))
        except Exception as exc:  # tokenizers raises a bare Exception on malformed files
            raise ModelFormatError(f"{tokenizer_file} cannot be loaded by tokenizers: {exc}") from None
        self._config = _read_json(self.path / "tokenizer_config.json")
        self._generation = _read_json(self.path / "generation_config.json")
        self._model_config = _read_json(self.path / "config.json")
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)

    # --- text <-> ids ---------------------------------------------------------------------------

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of `text`. Special-token strings in `text` (e.g. from a rendered chat) become their
        ids. `add_special_tokens=True` adds what the tokenizer's post-processor adds (Llama 3's BOS);
        rendered chats already carry the BOS, so the default adds nothing."""
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self._tok.id_to_token(token_id)

    # --- special tokens -------------------------------------------------------------------------

    @cached_property
    def added_tokens(self) -> dict[int, tuple[str, bool]]:
        """id -> (content, special) for every added token in tokenizer.json."""
        return {i: (t.content, bool(t.special)) for i, t in self._tok.get_added_tokens_decoder().items()}

    @cached_property
    def special_tokens(self) -> dict[str, int]:
        """content -> id of the added tokens marked special (control tokens such as <|im_end|>)."""
        return {content: i for i, (content, special) in self.added_tokens.items() if special}

    @cached_property
    def named_special_tokens(self) -> dict[str, str]:
        """bos_token, eos_token, pad_token... -> their strings: the variables chat templates receive."""
        named = {}
        for key in _NAMED_SPECIALS:
            text = _token_text(self._config.get(key))
            if text is not None:
                named[key] = text
        return named

    @cached_property
    def bos_token_id(self) -> int | None:
        text = self.named_special_tokens.get("bos_token")
        return self._tok.token_to_id(text) if text is not None else None

    @cached_property
    def adds_bos(self) -> bool:
        """True when encoding with add_special_tokens puts a BOS first (Llama 3); Qwen adds none."""
        return self.bos_token_id is not None and self.encode("a", add_special_tokens=True)[:1] == [
            self.bos_token_id
        ]

    @cached_property
    def eos_token_ids(self) -> set[int]:
        """Every id that ends a reply: generation_config.json's eos_token_id (a list for chat models),
        config.json's, and tokenizer_config.json's eos_token."""
        ids = set(_as_id_list(self._generation.get("eos_token_id")))
        ids.update(_as_id_list(self._model_config.get("eos_token_id")))
        text = self.named_special_tokens.get("eos_token")
        if text is not None:
            eos = self._tok.token_to_id(text)
            if eos is None:
                raise ModelFormatError(
                    f"{self.path / 'tokenizer_config.json'} names eos_token {text!r}, "
                    "which is not in tokenizer.json"
                )
            ids.add(eos)
        return ids

    @cached_property
    def generation_defaults(self) -> dict[str, Any]:
        """Sampling settings the model ships with (temperature, top_p, top_k, ...), for callers to offer."""
        keys = ("temperature", "top_k", "top_p", "min_p", "repetition_penalty")
        return {k: self._generation[k] for k in keys if k in self._generation}

    @cached_property
    def token_bytes(self) -> list[bytes] | None:
        """The bytes each id stands for, when the tokenizer is byte-level BPE (Qwen, Llama 3, GPT-2);
        None otherwise. Used by the streaming detokenizer to decode incrementally in O(1) per token."""
        if type(self._tok.decoder).__name__ != "ByteLevel" or type(self._tok.model).__name__ != "BPE":
            return None
        byte_of_char = _byte_level_table()
        vocab = self._tok.get_vocab(with_added_tokens=False)
        size = 1 + max([*vocab.values(), *self.added_tokens, -1])  # ids may have gaps
        table = [b""] * size
        for token, i in vocab.items():
            try:
                table[i] = bytes(byte_of_char[c] for c in token)
            except KeyError:
                return None  # not a byte-level vocabulary after all: use the generic path
        for i, (content, _special) in self.added_tokens.items():
            table[i] = content.encode("utf-8")
        return table

    # --- chat -----------------------------------------------------------------------------------

    @cached_property
    def chat_template(self) -> str | dict[str, str] | None:
        """chat_template.jinja if present (the newer hub layout), else tokenizer_config.json's."""
        jinja_file = self.path / "chat_template.jinja"
        if jinja_file.is_file():
            return jinja_file.read_text(encoding="utf-8")
        value = self._config.get("chat_template")
        if isinstance(value, list):  # the serialized form of named templates
            return {t["name"]: t["template"] for t in value if isinstance(t, dict) and "name" in t}
        return value

    def render_chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        add_generation_prompt: bool = True,
        enable_thinking: bool = False,
        tools: Sequence[Mapping[str, Any]] | None = None,
        **kwargs: Any,
    ) -> str:
        """The prompt text for `messages`, identical to transformers' apply_chat_template(tokenize=False,
        enable_thinking=...). Templates without a thinking switch ignore enable_thinking."""
        template = chat.select_template(self.chat_template, bool(tools), str(self.path))
        return chat.render(
            template,
            messages,
            special_tokens=self.named_special_tokens,
            add_generation_prompt=add_generation_prompt,
            tools=tools,
            enable_thinking=enable_thinking,
            **kwargs,
        )

    def __repr__(self) -> str:
        return f"Tokenizer({str(self.path)!r}, vocab={self.vocab_size}, id={self.identity[:12]})"


def _byte_level_table() -> dict[str, int]:
    """GPT-2's byte <-> printable-char map, inverted: the char a byte-level vocab uses -> the byte."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    )
    chars = list(printable)
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}
