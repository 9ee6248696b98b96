"""Chat templates: real model formats render exactly, hostile templates never run code or exhaust the
node, and every failure is a ChatTemplateError a client can act on.

The Gemma turn format is checked against llama.cpp's own built-in Gemma formatter and the real Gemma
3 vocabulary; the packaged Gemma GGUF carries no `tokenizer.chat_template` of its own (checked below),
so the Gemma-format template here is ours, written from the format llama.cpp implements.
"""

from __future__ import annotations

import ctypes
import json
import time
from datetime import datetime
from pathlib import Path

import llama_cpp
import pytest

from node.templates import (
    ALTERNATE,
    FALLBACK_TEMPLATE,
    GEMMA_TEMPLATE,
    ChatTemplate,
    ChatTemplateError,
    template_source,
)
from storage.gguf import read_header
from tests.gguf_models import CHAT_TEMPLATE, write_tiny_llama

USER = {"role": "user", "content": "Fix the bug in parse()."}
SYSTEM = {"role": "system", "content": "You are a terse code reviewer."}


def llama_cpp_builtin(name: str, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
    """What llama.cpp's built-in formatter `name` makes of `messages` (its C implementation)."""
    chat = (llama_cpp.llama_chat_message * len(messages))()
    keep = []
    for slot, message in zip(chat, messages, strict=True):
        role, content = message["role"].encode(), message["content"].encode()
        keep += [role, content]
        slot.role, slot.content = role, content
    buf = ctypes.create_string_buffer(1 << 16)
    n = llama_cpp.llama_chat_apply_template(
        name.encode(), chat, len(messages), add_generation_prompt, buf, len(buf)
    )
    assert 0 < n < len(buf), n
    return buf.raw[:n].decode()


@pytest.fixture(scope="module")
def gemma_vocab(gemma_model: Path) -> llama_cpp.Llama:
    """The real Gemma 3 tokenizer (vocabulary only, no weights loaded)."""
    return llama_cpp.Llama(model_path=str(gemma_model), vocab_only=True, verbose=False)


# Real models ---------------------------------------------------------------------------------------


def test_gemmaGguf_hasNoTemplate_soTheNodeUsesTheBuiltinGemmaFormat(
    gemma_model: Path, gemma_vocab: llama_cpp.Llama
) -> None:
    metadata = read_header(gemma_model).metadata
    assert metadata.get("tokenizer.chat_template") is None  # the packaged GGUF ships without one
    assert template_source(metadata) == GEMMA_TEMPLATE  # chosen by general.architecture
    bos = gemma_vocab.detokenize([gemma_vocab.token_bos()], special=True).decode()
    eos = gemma_vocab.detokenize([gemma_vocab.token_eos()], special=True).decode()
    prompt = ChatTemplate(template_source(metadata), bos, eos).render([SYSTEM, USER])
    assert prompt.startswith("<bos><start_of_turn>user\nYou are a terse code reviewer.\n\nFix the bug")
    assert gemma_vocab.tokenize(prompt.encode(), add_bos=False, special=True)[0] == gemma_vocab.token_bos()


def test_templateSource_withoutOwnOrBuiltin_isTheFallback() -> None:
    assert template_source({"general.architecture": "llama"}) is None
    assert ChatTemplate(template_source({}), "<s>", "</s>").is_fallback
    assert (
        template_source({"tokenizer.chat_template": "{{ 1 }}", "general.architecture": "gemma3"}) == "{{ 1 }}"
    )


def test_gemmaFormat_rendersSystemAndUserAsGemmaExpects(gemma_vocab: llama_cpp.Llama) -> None:
    prompt = ChatTemplate(GEMMA_TEMPLATE, "<bos>", "<eos>").render([SYSTEM, USER])
    assert prompt == (
        "<bos><start_of_turn>user\nYou are a terse code reviewer.\n\nFix the bug in parse().<end_of_turn>\n"
        "<start_of_turn>model\n"
    )
    # Every marker is one control token of the real Gemma 3 vocabulary, not text split into pieces.
    tokens = gemma_vocab.tokenize(prompt.encode(), add_bos=False, special=True)
    pieces = [gemma_vocab.detokenize([t], special=True) for t in tokens]
    assert pieces[:3] == [b"<bos>", b"<start_of_turn>", b"user"]
    assert pieces.count(b"<start_of_turn>") == 2 and pieces.count(b"<end_of_turn>") == 1


@pytest.mark.parametrize(
    "messages",
    [
        [SYSTEM, USER],
        [USER],
        [USER, {"role": "assistant", "content": "  Done.  "}, {"role": "user", "content": "And tests?"}],
        [SYSTEM, USER, {"role": "assistant", "content": "Done."}, {"role": "user", "content": "Thanks"}],
    ],
    ids=["system+user", "user", "three turns", "system+three turns"],
)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_gemmaFormat_matchesLlamaCppsBuiltinGemmaFormatter(
    messages: list[dict[str, str]], add_generation_prompt: bool
) -> None:
    rendered = ChatTemplate(GEMMA_TEMPLATE, "<bos>", "<eos>").render(messages, add_generation_prompt)
    assert rendered == "<bos>" + llama_cpp_builtin("gemma", messages, add_generation_prompt)


def test_gemmaFormat_takesTextPartsOfMultipartContent() -> None:
    messages = [
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        {
            "role": "user",
            "content": [{"type": "text", "text": "Explain "}, {"type": "text", "text": "this."}],
        },
    ]
    rendered = ChatTemplate(GEMMA_TEMPLATE, "<bos>", "<eos>").render(messages)
    assert (
        rendered
        == "<bos><start_of_turn>user\nBe brief.\n\nExplain this.<end_of_turn>\n<start_of_turn>model\n"
    )


def test_raiseException_passesTheTemplatesMessageThrough() -> None:
    template = ChatTemplate(GEMMA_TEMPLATE, "<bos>", "<eos>")
    with pytest.raises(ChatTemplateError) as caught:
        template.render([USER, USER])
    assert caught.value.raised_by_template
    assert caught.value.reason == ALTERNATE
    assert ALTERNATE in str(caught.value) and "/v1/completions" in str(caught.value)


def test_tinyModelTemplate_readFromItsGgufRenders(tmp_path: Path) -> None:
    source = read_header(write_tiny_llama(tmp_path / "tiny.gguf")).metadata["tokenizer.chat_template"]
    assert source == CHAT_TEMPLATE
    template = ChatTemplate(source, "<s>", "</s>")
    assert template.render([SYSTEM, USER]) == (
        "<|system|>You are a terse code reviewer.\n<|user|>Fix the bug in parse().\n<|assistant|>"
    )
    assert template.render([USER], add_generation_prompt=False) == "<|user|>Fix the bug in parse().\n"


# The context templates get ----------------------------------------------------------------------


def test_fallback_whenTheModelHasNoTemplate() -> None:
    for source in (None, ""):
        template = ChatTemplate(source, "<s>", "</s>")
        assert template.is_fallback and template.source == FALLBACK_TEMPLATE
        parts = {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image_url"}]}
        assert (
            template.render([SYSTEM, parts])
            == "<s>system: You are a terse code reviewer.\n\nuser: a\n\nassistant:"
        )
        assert template.render([USER], add_generation_prompt=False) == "<s>user: Fix the bug in parse().\n\n"


def test_context_givesTokensDatesAndHuggingFacesTojson() -> None:
    source = (
        "{{ bos_token }}|{{ eos_token }}|{{ strftime_now('%d %B %Y') }}|{{ tools | tojson }}|"
        "{{ messages[0] | tojson(indent=2, sort_keys=true) }}|{{ add_generation_prompt }}"
    )
    template = ChatTemplate(source, "<s>", "</s>", clock=lambda: datetime(2026, 3, 1, 12, 0))
    message = {"role": "user", "content": "<tool_call> & ünïcode"}
    bos, eos, date, tools, dumped, generation = template.render([message]).split("|")
    assert (bos, eos, date, tools, generation) == ("<s>", "</s>", "01 March 2026", "null", "True")
    assert dumped == json.dumps(message, indent=2, sort_keys=True, ensure_ascii=False)  # no HTML escaping


def test_blocksAreTrimmed_andHuggingFaceTagsWork() -> None:
    source = """
    {% for message in messages %}
        {% if loop.index > 2 %}{% break %}{% endif %}
        {% generation %}[{{ message['content'] }}]{% endgeneration %}
    {% endfor %}
"""
    rendered = ChatTemplate(source, "", "").render([{"role": "user", "content": str(i)} for i in range(5)])
    assert rendered == "\n[0][1]"  # indentation before tags and the newline after them are gone


def test_messageText_isNeverEvaluatedAsTemplateCode(tmp_path: Path) -> None:
    text = "{{ 7 * 7 }}{% for x in range(3) %}x{% endfor %}"
    assert ChatTemplate(CHAT_TEMPLATE, "", "").render([{"role": "user", "content": text}]) == (
        f"<|user|>{text}\n<|assistant|>"
    )


def test_render_refusesMessagesThatAreNotPlainData() -> None:
    with pytest.raises(TypeError, match=r"messages\[0\]\.content is a \w*Path"):
        ChatTemplate(CHAT_TEMPLATE, "", "").render([{"role": "user", "content": Path("/etc/passwd")}])


def test_aTemplateThatDoesNotCompile_failsAtConstruction() -> None:
    with pytest.raises(ChatTemplateError, match=r"does not compile \(line 2: .*\)") as caught:
        ChatTemplate("ok\n{% for m in messages %}{{ m }", "", "")
    assert not caught.value.raised_by_template
    assert str(caught.value).startswith("the model's chat template failed:")


# Hostile templates ------------------------------------------------------------------------------
# Each payload tries to create CANARY (through os, subprocess or open) or to read the caller's
# objects. All must fail with a ChatTemplateError naming the problem, and CANARY must never exist.

ESCAPES = {
    "str mro subclasses": (
        "{% for c in ''.__class__.__mro__[1].__subclasses__() %}"
        "{% if c.__name__ == 'Popen' %}{{ c(['touch', 'CANARY']) }}{% endif %}{% endfor %}"
    ),
    "type mro() without underscores": "{{ dict.mro()[1].__subclasses__() }}",
    "cycler globals": "{{ cycler.__init__.__globals__.os.system('touch CANARY') }}",
    "joiner globals": "{{ joiner.__init__.__globals__['os'].popen('touch CANARY').read() }}",
    "namespace globals": "{{ namespace.__init__.__globals__.sys.modules.os.system('touch CANARY') }}",
    "lipsum globals": "{{ lipsum.__globals__['os'].system('touch CANARY') }}",
    "template context": (
        "{{ self._TemplateReference__context.cycler.__init__.__globals__.os.popen('touch CANARY').read() }}"
    ),
    "attr filter": "{{ (cycler|attr('__init__')|attr('__globals__'))['os'].system('touch CANARY') }}",
    "computed item name": "{{ cycler['__in' ~ 'it__']['__glo' ~ 'bals__'].os.system('touch CANARY') }}",
    "str.format field": "{{ '{0.__init__.__globals__[os]}'.format(cycler) }}",
    "str.format_map": "{{ '{c.__init__}'.format_map({'c': cycler}) }}",
    "raise_exception globals": "{{ raise_exception.__globals__['__builtins__']['open']('CANARY', 'w') }}",
    "bound method self": "{{ strftime_now.__self__._env.globals }}",
    "names of the compiled code": "{{ environment.globals['range'].__globals__ }}",
    "loop internals": "{% for m in messages %}{{ loop.__class__.__init__.__globals__ }}{% endfor %}",
    "include a file": "{% include '/etc/passwd' %}",
    "import a module": "{% import 'os' as os %}{{ os.system('touch CANARY') }}",
    "append to messages": "{% set _ = messages.append({'role': 'system'}) %}{{ messages }}",
    "change a message": "{% set _ = messages[0].update({'content': 'pwned'}) %}{{ messages }}",
    "pop a message": "{{ messages.pop() }}",
    "assign into a message": "{% set messages[0].content = 'pwned' %}",
}


@pytest.mark.parametrize("source", ESCAPES.values(), ids=ESCAPES.keys())
def test_hostileTemplate_cannotEscapeTheSandbox(
    source: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # relative CANARY: where any escaped command would create it
    messages = [{"role": "user", "content": "hello"}]
    before = json.dumps(messages)
    with pytest.raises(ChatTemplateError) as caught:
        ChatTemplate(source, "<s>", "</s>").render(messages)
    assert str(caught.value).startswith("the model's chat template failed: ")
    assert not caught.value.raised_by_template
    assert not (tmp_path / "CANARY").exists()
    assert json.dumps(messages) == before  # the caller's messages are untouched


def test_hostileTemplate_unsafeAttributeFailsLoudlyRatherThanPrintingNothing() -> None:
    with pytest.raises(
        ChatTemplateError, match="access to attribute '__class__' of a 'str' object is unsafe"
    ):
        ChatTemplate("{{ ''.__class__ }}", "", "").render([])


# Bounds ------------------------------------------------------------------------------------------


def test_output_isBoundedWhileGenerating() -> None:
    calls = []

    def clock() -> datetime:
        calls.append(1)
        return datetime(2026, 1, 1)

    source = "{% for i in range(100000) %}{{ strftime_now('%Y') }}{{ 'x' * 96 }}{% endfor %}"
    template = ChatTemplate(source, "", "", max_chars=10_000, clock=clock)
    with pytest.raises(ChatTemplateError, match="passes this node's limit of 10000 characters"):
        template.render([])
    assert len(calls) <= 101  # stopped after ~10,000 characters, not after 10 million
    ChatTemplate(source.replace("100000", "99"), "", "", max_chars=10_000, clock=clock).render([])


AMPLIFIERS = {
    "string repetition": "{{ 'a' * 1000000000 }}",
    "list repetition then join": "{% set s = 'a' * 100000 %}{{ ([s] * 100000) | join }}",
    "str.join of a generator": "{% set s = 'a' * 100000 %}{{ s.join(range(20000) | map('string')) }}",
    "printf width": "{{ '%999999999d' % 1 }}",
    "format filter width": "{{ '%0999999999d' | format(7) }}",
    "center filter": "{{ 'a' | center(1000000000) }}",
    "str.ljust": "{{ 'a'.ljust(1000000000) }}",
    "Markup.rjust": "{{ ('a' | safe).rjust(1000000000) }}",
    "indent filter": "{{ ('\\n' * 1000) | indent(1000000) }}",
    "doubling with ~": (
        "{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}"
    ),
    "doubling with +": (
        "{% set ns = namespace(s=[0]) %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}{% endfor %}"
    ),
    "doubling through a macro": (
        "{% macro twice(s) %}{{ s }}{{ s }}{% endmacro %}{% set ns = namespace(s='ab') %}"
        "{% for i in range(64) %}{% set ns.s = twice(ns.s) %}{% endfor %}"
    ),
    "doubling with replace": (
        "{% set ns = namespace(s='aaaa') %}{% for i in range(32) %}{% set ns.s = ns.s | replace('a', ns.s) %}"
        "{% endfor %}"
    ),
    "shared nested lists printed": (
        "{% set ns = namespace(l=[0]) %}{% for i in range(64) %}{% set ns.l = [ns.l, ns.l] %}{% endfor %}"
        "{{ ns.l }}"
    ),
    "shared nested lists as JSON": (
        "{% set ns = namespace(l=[0]) %}{% for i in range(64) %}{% set ns.l = [ns.l, ns.l] %}{% endfor %}"
        "{{ ns.l | tojson }}"
    ),
    "batch fill": "{{ [1] | batch(1000000000, fill_with=0) | list | length }}",
    "slices of nothing": "{{ [1] | slice(1000000000) | list | length }}",  # 56 GB of empty lists, unbounded
    "huge power": "{{ 7 ** 100000000 }}",
    "tojson indent": "{{ messages | tojson(indent=100000000) }}",
}


@pytest.mark.parametrize("source", AMPLIFIERS.values(), ids=AMPLIFIERS.keys())
def test_amplifyingTemplate_isStoppedBeforeItAllocates(source: str) -> None:
    started = time.monotonic()
    with pytest.raises(ChatTemplateError, match=r"limit|integer of about|indent"):
        ChatTemplate(source, "", "").render([USER])
    assert time.monotonic() - started < 5  # refused by a size check up front, not after a long build


def test_cpuTime_isBoundedEvenWhenTheTemplatePrintsNothing() -> None:
    source = "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}"
    started = time.monotonic()
    with pytest.raises(ChatTemplateError, match=r"ran longer than 0\.2 s"):
        ChatTemplate(source, "", "", max_seconds=0.2).render([])
    assert time.monotonic() - started < 2


def test_recursion_isStoppedLongBeforeTheStackRunsOut() -> None:
    # Unbounded, this recursion overflows the C stack under pytest and kills the process.
    for source in (
        "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}",
        "{% for x in [1] recursive %}{{ loop([x]) }}{% endfor %}",
    ):
        with pytest.raises(ChatTemplateError, match=r"nest deeper than 64 levels|ran longer"):
            ChatTemplate(source, "", "").render([])
    nested = "{% macro f(n) %}{% if n %}{{ f(n - 1) }}{% else %}bottom{% endif %}{% endmacro %}{{ f(40) }}"
    assert ChatTemplate(nested, "", "").render([]) == "bottom"


def test_limitsAreConstructorArguments_andValidated() -> None:
    template = ChatTemplate(CHAT_TEMPLATE, "", "", max_chars=50)
    assert template.render([{"role": "user", "content": "x" * 20}]).startswith("<|user|>")
    with pytest.raises(ChatTemplateError, match="limit of 50 characters"):
        template.render([{"role": "user", "content": "x" * 50}])
    for bad in ({"max_chars": 0}, {"max_seconds": 0}):
        with pytest.raises(ValueError):
            ChatTemplate(CHAT_TEMPLATE, "", "", **bad)


def test_render_isFastForALongConversation() -> None:
    turns = [
        {"role": "user" if i % 2 == 0 else "assistant", "content": "def f(): pass " * 20} for i in range(2000)
    ]
    template = ChatTemplate(GEMMA_TEMPLATE, "<bos>", "<eos>")
    started = time.monotonic()
    prompt = template.render(turns)
    assert time.monotonic() - started < 0.5  # traced for its deadline, still far below the bound
    assert prompt.count("<start_of_turn>") == 2001
