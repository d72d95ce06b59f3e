"""Tokenizer and chat templates: our rendering equals transformers' apply_chat_template for every family."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.chat import ChatTemplateError
from engine.errors import ModelFormatError
from engine.tokenizer import Tokenizer
from tests.fixtures.tokenizers import FAMILIES, build_tokenizer

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "read_file",
            "description": "Read a file of the repository <with> 'quotes' & ampersands",
            "parameters": {
                "type": "object",
                "properties": {"path": {"type": "string", "description": "relative path, e.g. src/é.py"}},
                "required": ["path"],
            },
        },
    }
]

CONVERSATIONS = {
    "user": [{"role": "user", "content": "Hello 🙂, what does café mean?"}],
    "system_user": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "def f(x):\n    return x * 2\n\nExplain."},
    ],
    "multi_turn": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "First question?"},
        {"role": "assistant", "content": "First answer."},
        {"role": "user", "content": "日本語で答えて。"},
    ],
    "multi_turn_with_thinking": [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "<think>\nadd them\n</think>\n\n4"},
        {"role": "user", "content": "and 3+3?"},
        {"role": "assistant", "content": "<think>\nagain\n</think>\n\n6"},
    ],
    "reasoning_field": [
        {"role": "user", "content": "Why?"},
        {"role": "assistant", "content": "Because.", "reasoning_content": "the user asks why"},
    ],
}

TOOL_CONVERSATION = [
    {"role": "system", "content": "Use tools when useful."},
    {"role": "user", "content": "Show README.md"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"type": "function", "function": {"name": "read_file", "arguments": {"path": "README.md"}}}
        ],
    },
    {"role": "tool", "content": "# Workbench"},
]


@pytest.fixture(scope="module")
def tokenizer_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tokenizers")
    dirs = {}
    for family in FAMILIES:
        build_tokenizer(root / family, family, 384)
        dirs[family] = root / family
    return dirs


@pytest.fixture(scope="module")
def hf_tokenizers(tokenizer_dirs: dict[str, Path]) -> dict[str, object]:
    transformers = pytest.importorskip("transformers")
    return {f: transformers.AutoTokenizer.from_pretrained(str(d)) for f, d in tokenizer_dirs.items()}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("enable_thinking", [False, True])
@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
def test_render_chat_equals_transformers(tokenizer_dirs, hf_tokenizers, family, enable_thinking, name):
    tok = Tokenizer(tokenizer_dirs[family])
    hf = hf_tokenizers[family]
    messages = CONVERSATIONS[name]
    for add_generation_prompt in (True, False):
        ours = tok.render_chat(
            messages, add_generation_prompt=add_generation_prompt, enable_thinking=enable_thinking
        )
        theirs = hf.apply_chat_template(
            messages,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            enable_thinking=enable_thinking,
        )
        assert ours == theirs
        # The token ids agree too: apply_chat_template(tokenize=True) encodes without adding specials.
        ids = hf.apply_chat_template(
            messages, tokenize=True, return_dict=False, add_generation_prompt=add_generation_prompt,
            enable_thinking=enable_thinking,
        )  # fmt: skip
        assert tok.encode(ours) == list(ids)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("enable_thinking", [False, True])
def test_render_chat_with_tools_equals_transformers(tokenizer_dirs, hf_tokenizers, family, enable_thinking):
    tok = Tokenizer(tokenizer_dirs[family])
    hf = hf_tokenizers[family]
    for messages in (CONVERSATIONS["system_user"], TOOL_CONVERSATION):
        ours = tok.render_chat(messages, enable_thinking=enable_thinking, tools=TOOLS)
        theirs = hf.apply_chat_template(
            messages, tools=TOOLS, tokenize=False, add_generation_prompt=True, enable_thinking=enable_thinking
        )
        assert ours == theirs
        assert '"name": "read_file"' in ours  # tools really reached the prompt, as plain (unescaped) JSON
        assert "<with> 'quotes' & ampersands" in ours


def test_qwen3_thinking_switch(tokenizer_dirs):
    tok = Tokenizer(tokenizer_dirs["qwen3"])
    messages = CONVERSATIONS["user"]
    off = tok.render_chat(messages, enable_thinking=False)
    on = tok.render_chat(messages, enable_thinking=True)
    assert off.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert on.endswith("<|im_start|>assistant\n")
    # Earlier turns lose their reasoning; the one after the last user message keeps it.
    history = tok.render_chat(CONVERSATIONS["multi_turn_with_thinking"], add_generation_prompt=False)
    assert "add them" not in history and "<think>\nagain\n</think>\n\n6" in history


def test_llama3_prompt_starts_with_bos_once(tokenizer_dirs):
    tok = Tokenizer(tokenizer_dirs["llama3"])
    ids = tok.encode(tok.render_chat(CONVERSATIONS["user"]))
    assert ids[0] == tok.bos_token_id
    assert ids.count(tok.bos_token_id) == 1
    assert tok.adds_bos and tok.encode("hi", add_special_tokens=True)[0] == tok.bos_token_id


@pytest.mark.parametrize(
    ("family", "eos_tokens"),
    [
        ("qwen3", ["<|im_end|>", "<|endoftext|>"]),
        ("qwen2", ["<|im_end|>", "<|endoftext|>"]),
        ("llama3", ["<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"]),
    ],
)
def test_eos_ids_come_from_generation_config(tokenizer_dirs, family, eos_tokens):
    tok = Tokenizer(tokenizer_dirs[family])
    assert tok.eos_token_ids == {tok.token_to_id(t) for t in eos_tokens}


def test_tokenizer_identity_is_sha256_of_tokenizer_json(tokenizer_dirs):
    import hashlib

    path = tokenizer_dirs["qwen3"] / "tokenizer.json"
    assert Tokenizer(tokenizer_dirs["qwen3"]).identity == hashlib.sha256(path.read_bytes()).hexdigest()
    assert Tokenizer(tokenizer_dirs["qwen3"]).identity != Tokenizer(tokenizer_dirs["qwen2"]).identity


@pytest.mark.parametrize("family", FAMILIES)
def test_encode_decode_round_trip_multibyte(tokenizer_dirs, hf_tokenizers, family):
    tok = Tokenizer(tokenizer_dirs[family])
    text = "naïve café — 日本語 🙂👩‍💻 <|im_end|> x = {'a': 1}\n\tdone"
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert ids == hf_tokenizers[family].encode(text, add_special_tokens=False)


def test_chat_template_jinja_file_wins(tokenizer_dirs, tmp_path):
    import shutil

    directory = tmp_path / "m"
    shutil.copytree(tokenizer_dirs["qwen2"], directory)
    (directory / "chat_template.jinja").write_text(
        "{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}"
    )
    assert Tokenizer(directory).render_chat([{"role": "user", "content": "hi"}]) == "[user]hi"


def test_missing_template_and_template_errors_are_named(tokenizer_dirs, tmp_path):
    import shutil

    directory = tmp_path / "m"
    shutil.copytree(tokenizer_dirs["qwen2"], directory)
    config = json.loads((directory / "tokenizer_config.json").read_text())
    del config["chat_template"]
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ChatTemplateError, match="has no chat template"):
        Tokenizer(directory).render_chat([{"role": "user", "content": "hi"}])
    # raise_exception in a template surfaces as a ChatTemplateError with the template's message.
    llama = Tokenizer(tokenizer_dirs["llama3"])
    with pytest.raises(ChatTemplateError, match="single tool-calls"):
        two_calls = {"name": "f", "arguments": {}}
        llama.render_chat(
            [{"role": "assistant", "tool_calls": [{"function": two_calls}, {"function": two_calls}]}]
        )


def test_bad_tokenizer_files_name_the_file(tmp_path):
    with pytest.raises(ModelFormatError, match=r"tokenizer\.json is missing"):
        Tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ModelFormatError, match=r"tokenizer\.json cannot be loaded"):
        Tokenizer(tmp_path)


def test_sandbox_blocks_attribute_escapes(tokenizer_dirs, tmp_path):
    import shutil

    directory = tmp_path / "m"
    shutil.copytree(tokenizer_dirs["qwen2"], directory)
    (directory / "chat_template.jinja").write_text("{{ messages.__class__.__mro__ }}")
    with pytest.raises(ChatTemplateError):
        Tokenizer(directory).render_chat([{"role": "user", "content": "hi"}])


def test_fixture_tokenizers_are_deterministic_and_fit_the_vocabulary(tokenizer_dirs, tmp_path):
    for family in FAMILIES:
        build_tokenizer(tmp_path / family, family, 384)
        again = (tmp_path / family / "tokenizer.json").read_bytes()
        assert again == (tokenizer_dirs[family] / "tokenizer.json").read_bytes()
        assert Tokenizer(tmp_path / family).vocab_size <= 384
    with pytest.raises(ValueError, match="vocab_size 200"):
        build_tokenizer(tmp_path / "small", "qwen3", 200)
