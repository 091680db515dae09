"""Real models' chat templates render as transformers renders them (issue 23).

The templates are llama.cpp's `models/templates/*.jinja` (about 70: Qwen2.5, Qwen3, QwQ, DeepSeek-R1
distills, Gemma, Granite, Llama 3.x, Mistral, SmolLM3 and more), from the llama-cpp-python 0.3.36
sdist on PyPI. They are not committed: `.ci/run` downloads the sdist and extracts them into
`.ci/templates`, and this test reads the folder that CHATTERM_LLAMA_CPP_TEMPLATES names; without it
the test is skipped. Each template gets one user message, a system prompt and a user message, and
a five-turn conversation (with and without a system prompt). A conversation transformers renders
renders alike here, and the prompt built from it (segmented per turn or, for templates that
render earlier turns differently, whole) decodes to transformers' text; one transformers fails
on fails here with one line, and one that fails for want of tools says so.
"""

import os
from pathlib import Path

import pytest

from chatterm.engine.hf_tokenizer import HFTokenizer
from chatterm.session import Conversation
from chatterm.session.prompts.jinja_template import JinjaChatTemplate, JinjaPromptBuilder, TemplateError
from tiny_llama import byte_bpe

FOLDER = Path(os.environ.get("CHATTERM_LLAMA_CPP_TEMPLATES", "/nonexistent"))
PATHS = sorted(FOLDER.glob("*.jinja")) if FOLDER.is_dir() else []
pytestmark = pytest.mark.skipif(not PATHS, reason="set CHATTERM_LLAMA_CPP_TEMPLATES to llama.cpp's models/templates "
                                "folder (.ci/run extracts it from the llama-cpp-python 0.3.36 sdist)")
SPECIAL = dict(bos_token="<|endoftext|>", eos_token="<|im_end|>")
TURNS = [("user", "hi"), ("assistant", "hello, friend!"), ("user", "The capital of France?"),
         ("assistant", "Paris."), ("user", "Thanks")]
CONVERSATIONS = {
    "user": ("", TURNS[:1]),
    "system+user": ("You are terse.", TURNS[:1]),
    "five turns": ("", TURNS),
    "system+five turns": ("Be kind.", TURNS),
}
# Templates whose every earlier turn renders as it did in the prompt before: each turn's ids are
# encoded once and the next prompt extends the previous one.
SEGMENTED = ["Qwen-Qwen2.5-7B-Instruct", "meta-llama-Llama-3.1-8B-Instruct", "meta-llama-Llama-3.2-3B-Instruct",
             "HuggingFaceTB-SmolLM3-3B", "ibm-granite-granite-3.3-2B-Instruct"]


@pytest.fixture(scope="module")
def tokenizer():
    return HFTokenizer(byte_bpe(), {"type": "huggingface"}, bos="<|endoftext|>", eos="<|im_end|>")


def transformers_render(source, messages):
    """transformers' rendering, or the exception it fails with."""
    from transformers.utils.chat_template_utils import render_jinja_template

    try:
        return render_jinja_template([messages], chat_template=source, add_generation_prompt=True, **SPECIAL)[0][0]
    except Exception as e:  # noqa: BLE001 - whatever the template raises
        return e


@pytest.mark.parametrize("path", PATHS, ids=[p.stem for p in PATHS])
def test_a_real_template_renders_as_in_transformers(path, tokenizer):
    source = path.read_text(encoding="utf-8")
    template = JinjaChatTemplate(source, **SPECIAL)
    for name, (system, turns) in CONVERSATIONS.items():
        conversation = Conversation(system=system)
        for role, text in turns:
            conversation.add(role, text)
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": r, "content": t} for r, t in turns]
        want = transformers_render(source, messages)
        builder = JinjaPromptBuilder(tokenizer, template, context_window=65536)
        if isinstance(want, Exception):
            with pytest.raises(TemplateError) as failure:
                builder.build(conversation, 16)
            assert "\n" not in str(failure.value)
            if "tools" in source and "not iterable" in str(want) or "'functions' is undefined" in str(want):
                assert "only renders with a list of tools" in str(failure.value)
            continue
        assert template.render(messages, add_generation_prompt=True) == want, name
        assert tokenizer.decode(builder.build(conversation, 16).ids) == want, name
        if path.stem in SEGMENTED:
            assert len(builder._segments(conversation, 0)) == len(turns), name


def test_most_templates_render():
    """A census, so that a change that breaks many templates at once says so plainly."""
    rendered = sum(not isinstance(transformers_render(p.read_text(encoding="utf-8"), [{"role": "user", "content": "hi"}]),
                                  Exception) for p in PATHS)
    assert rendered >= len(PATHS) - 5
