"""Chat templates from GGUF files, rendered in jinja2's immutable sandbox.

A GGUF model carries its chat template as Jinja source (`tokenizer.chat_template`), written by
whoever published the model. The node renders it for every chat request, so the template is
untrusted code and runs under these bounds:

- jinja2's `ImmutableSandboxedEnvironment`: no attribute starting with `_` and no internal
  attribute of functions, frames or generators, no method that changes a list, dict or set. An
  unsafe attribute fails the render at once (the stock sandbox hands back an empty value instead);
  `str.format`, `str.format_map`, `str.translate` and `str.encode` are not callable. No loader,
  so `include`, `import` and `extends` fail. The messages are deep-copied into plain dicts and
  lists first: a template never sees, let alone changes, the caller's objects.
- Size: the rendered text stops at `max_chars` (checked piece by piece while `generate()` runs).
  Every operation that can make a string or list much bigger than its inputs in one step (`*`,
  `+`, `%`, `**`, `~`, block captures and macro results, `str.center/ljust/rjust/zfill/expandtabs/
  replace/join`, the filters `center`, `indent`, `replace`, `join`, `wordwrap`, `batch`, `slice`,
  `format`, `string`, `sum`, `tojson`, and printing a container) is checked against the same bound
  *before* it runs, so a template cannot build a gigabyte in memory and print nothing of it.
- Depth: calls nest at most MAX_CALL_DEPTH levels. A macro that recurses without end would
  otherwise exhaust the C stack before Python's recursion limit and kill the whole process.
- Time: with `max_seconds` set, a trace function on the rendering thread stops the template when its
  time is up (it runs on each line of the template's compiled Python code, so loops that print
  nothing are stopped too). It cannot interrupt one C-level call, which the size checks keep small,
  and it is also what bounds memory grown step by step (a list appended to in nested loops):
  `max_seconds=None` removes both bounds and is for trusted templates only.

Rendering blocks the calling thread for up to `max_seconds`; call `render` from a worker thread
(or the model's worker process) rather than on an event loop.

The context is what llama.cpp and Hugging Face's `apply_chat_template` give templates: `messages`,
`add_generation_prompt`, `bos_token`, `eos_token`, `raise_exception(message)`,
`strftime_now(format)`, and a `tojson` filter that writes JSON as `json.dumps` does (no HTML
escaping, non-ASCII kept, `indent`/`separators`/`sort_keys` honoured). Blocks are trimmed
(`trim_blocks`, `lstrip_blocks`), `{% break %}`/`{% continue %}` work and
`{% generation %}...{% endgeneration %}` (HF's marker for the assistant's part) renders its body.
"""

from __future__ import annotations

import functools
import json
import math
import re
import sys
import threading
import time
import types
from collections.abc import Callable, Iterable, Mapping, Sized
from datetime import datetime
from typing import Any, NoReturn

from jinja2 import Undefined, nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.exceptions import SecurityError, TemplateSyntaxError
from jinja2.ext import Extension, loopcontrols
from jinja2.filters import make_attrgetter
from jinja2.parser import Parser
from jinja2.runtime import markup_join, str_join
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Namespace

__all__ = [
    "DEFAULT_MAX_CHARS",
    "DEFAULT_MAX_SECONDS",
    "FALLBACK_TEMPLATE",
    "ChatTemplate",
    "ChatTemplateError",
]

DEFAULT_MAX_CHARS = 1 << 20  # 1 MiB of prompt text: far above any context window of the models we host
DEFAULT_MAX_SECONDS = 1.0  # real templates render in about a millisecond
MAX_INT_BITS = 1 << 16  # integers a template computes (about 20,000 decimal digits)
MAX_JSON_INDENT = 16
MAX_CALL_DEPTH = 64  # nested calls: recursive macros in real templates (JSON schemas) go ~10 deep
MAX_MESSAGE_DEPTH = 32  # nesting of the messages' JSON data

# For a model without a chat template: one paragraph per message, labelled with its role, then the
# label the model should continue from. Text parts of a multi-part content are joined; other parts
# (images, audio) are left out. Starts with the BOS text like most model templates, so callers
# tokenize every rendered prompt the same way.
FALLBACK_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ message['role'] }}: "
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% elif message['content'] is iterable %}"
    "{% for part in message['content'] %}"
    "{% if part is mapping and part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}"
    "{% endif %}{{ '\\n\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)

ALTERNATE = "Conversation roles must alternate user/assistant/user/assistant/..."

# The Gemma turn format: BOS, then `<start_of_turn>{user|model}\n{text}<end_of_turn>\n` per message,
# a system message merged into the first user turn, roles strictly alternating, text trimmed.
GEMMA_TEMPLATE = (
    """{{ bos_token }}
{%- if messages and messages[0]['role'] == 'system' %}
  {%- set head = messages[0]['content'] %}
  {%- if head is not string %}
    {%- set head = head | selectattr('type', 'equalto', 'text') | map(attribute='text') | join('\\n') %}
  {%- endif %}
  {%- set prefix = head | trim ~ '\\n\\n' %}
  {%- set turns = messages[1:] %}
{%- else %}
  {%- set prefix = '' %}
  {%- set turns = messages %}
{%- endif %}
{%- for message in turns %}
  {%- if (message['role'] == 'user') != (loop.index0 is even) %}
    {{- raise_exception('"""
    + ALTERNATE
    + """') }}
  {%- endif %}
  {%- set role = 'model' if message['role'] == 'assistant' else message['role'] %}
  {%- set text = message['content'] %}
  {%- if text is not string %}
    {%- set text = text | selectattr('type', 'equalto', 'text') | map(attribute='text') | join('') %}
  {%- endif %}
<start_of_turn>{{ role }}
{{ prefix if loop.first else '' }}{{ text | trim }}<end_of_turn>
{% endfor %}
{%- if add_generation_prompt %}
<start_of_turn>model
{% endif %}"""
)


# Built-in templates by `general.architecture`, for GGUF files that carry none (the Gemma 3 270M
# file the project ships is one): the model's own turn format beats the generic fallback.
BUILTIN_TEMPLATES = {"gemma": GEMMA_TEMPLATE, "gemma2": GEMMA_TEMPLATE, "gemma3": GEMMA_TEMPLATE}


def template_source(metadata: dict[str, object]) -> str | None:
    """The template to compile for a model: its GGUF's own, else a built-in for its architecture,
    else None (the fallback)."""
    own = metadata.get("tokenizer.chat_template")
    if isinstance(own, str) and own.strip():
        return own
    architecture = metadata.get("general.architecture")
    return BUILTIN_TEMPLATES.get(architecture) if isinstance(architecture, str) else None


# str methods a template may call as they are: each makes at most a few times its input.
_STR_DENIED = frozenset({"format", "format_map", "translate", "encode"})
_STR_GUARDED = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs", "replace", "join"})
# printf-style conversions: flags, width and precision (either may be `*`, taken from the arguments).
_PRINTF = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?[diouxXeEfFgGcrsa%]")


class ChatTemplateError(Exception):
    """The model's chat template cannot turn these messages into a prompt.

    `reason` says why; `raised_by_template` is True when the template itself refused the messages
    through `raise_exception(...)` (then `reason` is the template's own text, e.g. Gemma's
    "Conversation roles must alternate user/assistant/user/assistant/..."), which the client can fix
    by changing the messages. Either way the client can still send a prompt it formatted itself to
    /v1/completions.
    """

    def __init__(self, reason: str, *, raised_by_template: bool = False) -> None:
        self.reason, self.raised_by_template = reason, raised_by_template
        if raised_by_template:
            message = (
                f"the model's chat template refused the messages: {reason}; change the messages, "
                "or send the prompt to /v1/completions instead"
            )
        else:
            message = (
                f"the model's chat template failed: {reason}; send the prompt to /v1/completions instead"
            )
        super().__init__(message)


class _TimeUp(BaseException):
    """Raised into the template's frames when its time is up. A BaseException, so that no
    `except Exception` in jinja or the standard library swallows it on its way out."""


def _measure(value: Any, limit: int) -> int:
    """About how many characters `value` takes as text, counted until the count passes `limit`.

    Containers are walked; one shared several times is counted each time, as printing it would
    (so `[[x, x], [x, x]]` built by doubling in a loop is caught long before it is printed). Each
    visited item adds at least one, so the walk ends after at most `limit` steps.
    """
    total, stack = 0, [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is str:  # exact types first: the walk is a hot loop and ABC checks are slow
            total += max(len(item), 1)
        elif kind is list or kind is tuple:
            total += 2 + 2 * len(item)
            stack.extend(item)
        elif kind is dict:
            total += 2 + 2 * len(item)
            stack.extend(item.keys())
            stack.extend(item.values())
        elif kind is int or kind is float or kind is bool or item is None:
            total += 8
        elif isinstance(item, str):
            total += max(len(item), 1)
        elif isinstance(item, Mapping):
            total += 2 + 2 * len(item)
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple | set | frozenset):
            total += 2 + 2 * len(item)
            stack.extend(item)
        elif isinstance(item, Namespace):
            attrs = object.__getattribute__(item, "_Namespace__attrs")
            total += 12 + 2 * len(attrs)
            stack.extend(attrs.values())
        else:
            total += 8
        if total > limit:
            break
    return total


def _printf_bound(fmt: str, args: Any, limit: int) -> int:
    """An upper bound on the length of `fmt % args`."""
    if isinstance(args, Mapping):
        values = list(args.values())
    elif isinstance(args, tuple):
        values = list(args)
    else:
        values = [args]
    widest = max((_measure(v, limit) for v in values), default=0)
    bound = len(fmt)
    for spec in _PRINTF.finditer(fmt):
        for number in spec.groups():
            if number == "*":
                bound += max((v for v in values if isinstance(v, int)), default=0)
            elif number:
                bound += int(number) if len(number) <= 12 else limit + 1
        bound += widest
        if bound > limit:
            break
    return bound


class _GenerationTag(Extension):
    """`{% generation %}...{% endgeneration %}`: Hugging Face marks the assistant's tokens with it
    for training masks; for inference it is just its body."""

    tags = frozenset({"generation"})

    def parse(self, parser: Parser) -> list[nodes.Node]:
        next(parser.stream)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


class _SizedCodeGenerator(CodeGenerator):
    """Jinja's code generator with `~` going through `environment.joined`, which checks the parts'
    size before they are stringified and joined."""

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:  # noqa: N802 - jinja names it
        self.write("environment.joined((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("), context.eval_ctx.autoescape)")


class _Sandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox, failing loudly on unsafe access and checking sizes (see the module)."""

    code_generator_class = _SizedCodeGenerator
    intercepted_binops = frozenset({"*", "+", "%", "**"})

    def __init__(self, max_chars: int) -> None:
        super().__init__(
            trim_blocks=True,
            lstrip_blocks=True,
            autoescape=False,
            extensions=[loopcontrols, _GenerationTag],
            finalize=self._printable,
        )
        self.max_chars = max_chars
        self._calls = threading.local()  # call nesting depth of the render running on each thread
        del self.globals["lipsum"]  # random filler text, of no use to a chat template
        del self.filters["pprint"]  # multiplies nesting into indentation; no chat template uses it
        guards: dict[str, Callable[..., None]] = {
            "center": self._center_guard,
            "indent": self._indent_guard,
            "replace": self._replace_guard,
            "join": self._join_guard,
            "wordwrap": self._wordwrap_guard,
            "batch": self._batch_guard,
            "slice": self._slice_guard,
            "format": self._format_guard,
            "string": self._string_guard,
            "sum": self._sum_guard,
        }
        for name, guard in guards.items():
            self.filters[name] = self._guarded(self.filters[name], guard)
        self.filters["tojson"] = self._tojson

    # The checks ---------------------------------------------------------------------------------

    def _too_large(self, what: str, size: int) -> NoReturn:
        raise ChatTemplateError(
            f"it would make {what} of at least {size} characters, above this node's limit of {self.max_chars}"
        )

    def _check(self, what: str, size: int) -> None:
        if size > self.max_chars:
            self._too_large(what, size)

    def _check_value(self, what: str, value: Any) -> None:
        self._check(what, _measure(value, self.max_chars))

    def _printable(self, value: Any) -> Any:
        """`finalize`: every `{{ ... }}` value, before jinja turns it into text."""
        if not isinstance(value, str):
            self._check_value("an output value", value)
        return value

    def joined(self, parts: tuple[Any, ...], autoescape: bool) -> str:
        """`a ~ b ~ ...`"""
        self._check("a string with ~", sum(_measure(p, self.max_chars) for p in parts))
        return markup_join(parts) if autoescape else str_join(parts)

    def concat(self, parts: Iterable[str]) -> str:  # type: ignore[override]
        """What jinja joins captured output with: `{% set x %}...{% endset %}`, macro results."""
        pieces, size = [], 0
        for piece in parts:
            size += len(piece)
            self._check("a captured block", size)
            pieces.append(piece)
        return "".join(pieces)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            if isinstance(left, int) and isinstance(right, str | list | tuple):
                left, right = right, left
            if isinstance(left, str | list | tuple) and isinstance(right, int) and right > 0:
                self._check("a repeated value", _measure(left, self.max_chars) * right)
            elif isinstance(left, int) and isinstance(right, int):
                self._check_bits(left.bit_length() + right.bit_length())
        elif operator == "+":
            if isinstance(left, str | list | tuple) and isinstance(right, str | list | tuple):
                self._check(
                    "a value with +", _measure(left, self.max_chars) + _measure(right, self.max_chars)
                )
        elif operator == "%":
            if isinstance(left, str):
                self._check("a string with %", _printf_bound(left, right, self.max_chars))
        elif (
            operator == "**"
            and isinstance(left, int)
            and isinstance(right, int)
            and right > 0
            and abs(left) > 1
        ):
            self._check_bits(right * math.log2(abs(left)))
        return super().call_binop(context, operator, left, right)

    def _check_bits(self, bits: float) -> None:
        if bits > MAX_INT_BITS:
            raise ChatTemplateError(f"it would compute an integer of about {int(bits)} bits")

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        owner = getattr(__obj, "__self__", None)
        if isinstance(owner, str) and isinstance(__obj, types.BuiltinMethodType | types.MethodType):
            name = __obj.__name__
            if name in _STR_DENIED:
                raise SecurityError(f"str.{name}() is not allowed in chat templates")
            if name in _STR_GUARDED:
                if args and not isinstance(args[0], Sized) and isinstance(args[0], Iterable):
                    args = (list(args[0]), *args[1:])  # `sep.join(xs | map(...))`: measured, then joined
                __self._check_str_method(owner, name, args, kwargs)
        # Calls nest for recursive macros and `loop(...)`; each level costs several C frames, and the
        # C stack can run out before Python's recursion limit does, which kills the process.
        depth = getattr(__self._calls, "depth", 0)
        if depth >= MAX_CALL_DEPTH:
            raise ChatTemplateError(
                f"its calls nest deeper than {MAX_CALL_DEPTH} levels"
                " (a macro or loop that recurses without end?)"
            )
        __self._calls.depth = depth + 1
        try:
            return super().call(__context, __obj, *args, **kwargs)
        finally:
            __self._calls.depth = depth

    def _check_str_method(self, s: str, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        first = args[0] if args else next(iter(kwargs.values()), None)
        if name in ("center", "ljust", "rjust", "zfill") and isinstance(first, int):
            self._check(f"a string with str.{name}()", max(len(s), first))
        elif name == "expandtabs":
            tabsize = first if isinstance(first, int) else 8
            self._check("a string with str.expandtabs()", len(s) + s.count("\t") * tabsize)
        elif name == "replace" and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
            self._check("a string with str.replace()", _replace_bound(s, args[0], args[1], self.max_chars))
        elif name == "join" and isinstance(first, Sized):
            self._check("a string with str.join()", _measure(first, self.max_chars) + len(s) * len(first))

    # Unsafe attributes fail the render instead of printing as empty text.

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        if super().wrap_str_format(value) is None:
            return None
        name = value.__name__

        def denied(*args: Any, **kwargs: Any) -> NoReturn:
            raise SecurityError(f"str.{name}() is not allowed in chat templates")

        return denied

    def unsafe_undefined(self, obj: Any, attribute: str) -> Undefined:
        raise SecurityError(f"access to attribute {attribute!r} of a {type(obj).__name__!r} object is unsafe")

    # Guarded filters: each check takes the filter's own parameters, then the stock filter runs.

    def _guarded(self, original: Callable[..., Any], guard: Callable[..., None]) -> Callable[..., Any]:
        skip = 1 if getattr(original, "jinja_pass_arg", None) is not None else 0

        @functools.wraps(original)  # keeps jinja's pass_eval_context / pass_environment marker
        def guarded(*args: Any, **kwargs: Any) -> Any:
            args = list(args)
            if len(args) > skip and not isinstance(args[skip], Sized) and isinstance(args[skip], Iterable):
                args[skip] = list(args[skip])  # a generator (`map`, `select`): measured, then handed on
            guard(*args[skip:], **kwargs)
            return original(*args, **kwargs)

        return guarded

    def _center_guard(self, value: Any, width: Any = 80) -> None:
        self._check(
            "a string with center", _measure(value, self.max_chars) + (width if isinstance(width, int) else 0)
        )

    def _indent_guard(self, s: Any, width: Any = 4, first: Any = False, blank: Any = False) -> None:
        self._check_value("a string with indent", s)
        text = str(s)
        step = width if isinstance(width, int) else len(str(width))
        self._check("a string with indent", len(text) + (text.count("\n") + 1) * step)

    def _replace_guard(self, s: Any, old: Any, new: Any, count: Any = None) -> None:
        self._check_value("a string with replace", s)
        bound = _replace_bound(str(s), str(old), str(new), self.max_chars)
        if isinstance(count, int) and count >= 0:
            bound = min(bound, len(str(s)) + count * len(str(new)))
        self._check("a string with replace", bound)

    def _join_guard(self, value: Any, d: Any = "", attribute: Any = None) -> None:
        if not isinstance(value, Sized):
            return
        items = value
        if attribute is not None:
            get = make_attrgetter(self, attribute)
            items = [get(item) for item in value]
        self._check("a string with join", _measure(items, self.max_chars) + len(str(d)) * len(value))

    def _wordwrap_guard(
        self,
        s: Any,
        width: Any = 79,
        break_long_words: Any = True,
        wrapstring: Any = None,
        break_on_hyphens: Any = True,
    ) -> None:
        self._check_value("a string with wordwrap", s)
        text = str(s)
        per_line = width if isinstance(width, int) and width > 0 else 1
        inserted = len(str(wrapstring)) if wrapstring is not None else 2
        self._check("a string with wordwrap", len(text) + (len(text) // per_line + 1) * inserted)

    def _batch_guard(self, value: Any, linecount: Any = 1, fill_with: Any = None) -> None:
        if fill_with is not None and isinstance(linecount, int):
            self._check("a batch", linecount * (_measure(fill_with, self.max_chars) + 1))

    def _slice_guard(self, value: Any, slices: Any = 1, fill_with: Any = None) -> None:
        if isinstance(slices, int):  # one list per slice, however short the input
            self._check("slices", slices * (_measure(fill_with, self.max_chars) + 2))

    def _format_guard(self, value: Any, *args: Any, **kwargs: Any) -> None:
        self._check("a string with format", _printf_bound(str(value), kwargs or args, self.max_chars))

    def _string_guard(self, value: Any) -> None:
        self._check_value("a string", value)

    def _sum_guard(self, iterable: Any, attribute: Any = None, start: Any = 0) -> None:
        if isinstance(start, str | list | tuple) or any(isinstance(x, str | list | tuple) for x in iterable):
            self._check("a sum", _measure(start, self.max_chars) + _measure(iterable, self.max_chars))

    def _tojson(
        self,
        value: Any,
        ensure_ascii: bool = False,
        indent: int | str | None = None,
        separators: tuple[str, str] | None = None,
        sort_keys: bool = False,
    ) -> str:
        """`tojson` as templates written for Hugging Face expect: `json.dumps` with its options."""
        if isinstance(indent, int) and not 0 <= indent <= MAX_JSON_INDENT:
            raise ChatTemplateError(f"tojson indent {indent} is outside 0..{MAX_JSON_INDENT}")
        if isinstance(indent, str) and len(indent) > MAX_JSON_INDENT:
            raise ChatTemplateError(f"tojson indent is longer than {MAX_JSON_INDENT} characters")
        if separators is not None and sum(len(str(part)) for part in separators) > MAX_JSON_INDENT:
            raise ChatTemplateError(f"tojson separators are longer than {MAX_JSON_INDENT} characters")
        # Each item gains at most its separators and one indented line.
        padding = (3 if separators is None else sum(len(str(part)) for part in separators)) + (
            len(indent) if isinstance(indent, str) else indent or 0
        )
        self._check("JSON", _measure(value, self.max_chars) * (1 + padding))
        text = json.dumps(
            value,
            ensure_ascii=ensure_ascii,
            indent=indent,
            separators=tuple(separators) if separators is not None else None,
            sort_keys=sort_keys,
            default=_json_default,
        )
        self._check("JSON", len(text))
        return text


def _replace_bound(s: str, old: str, new: str, limit: int) -> int:
    if not new or len(new) <= len(old):
        return len(s)
    hits = len(s) + 1 if not old else s.count(old)
    return len(s) + hits * (len(new) - len(old))


def _json_default(value: Any) -> Any:
    if isinstance(value, Undefined):
        return None
    if isinstance(value, Namespace):
        return dict(object.__getattribute__(value, "_Namespace__attrs"))
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _plain(value: Any, where: str = "messages", depth: int = 0) -> Any:
    """A deep copy of JSON-like data (dict, list, str, int, float, bool, None); TypeError otherwise,
    ValueError when it nests deeper than MAX_MESSAGE_DEPTH."""
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if depth >= MAX_MESSAGE_DEPTH:
        raise ValueError(f"{where} nests deeper than {MAX_MESSAGE_DEPTH} levels")
    if isinstance(value, Mapping):
        copy = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{where} has a key of type {type(key).__name__}; keys must be strings")
            copy[key] = _plain(item, f"{where}.{key}", depth + 1)
        return copy
    if isinstance(value, list | tuple):
        return [_plain(item, f"{where}[{i}]", depth + 1) for i, item in enumerate(value)]
    raise TypeError(
        f"{where} is a {type(value).__name__}; give plain JSON data (dicts, lists, strings, numbers)"
    )


def _raise_exception(message: Any = "") -> NoReturn:
    raise ChatTemplateError(str(message), raised_by_template=True)


def _deadline_tracer(deadline: float) -> Callable[..., Any]:
    """A trace function that stops the template once `deadline` (time.monotonic) has passed.

    Python calls it on every line of every frame it traces, so it stays tiny. The size walk is not
    traced line by line: it ends on its own after at most `max_chars` steps and is the hot loop.
    """

    def trace(frame: types.FrameType, event: str, arg: Any) -> Any:
        if time.monotonic() > deadline:
            raise _TimeUp
        if event == "call" and frame.f_code is _MEASURE_CODE:
            return None
        return trace

    return trace


_MEASURE_CODE = _measure.__code__


class ChatTemplate:
    """A model's chat template, compiled once and rendered per request (thread-safe).

    `source` is the GGUF's `tokenizer.chat_template` (None or empty: `FALLBACK_TEMPLATE`);
    `bos_text`/`eos_text` are the model's BOS and EOS tokens as text. Most templates start the
    prompt with the BOS text, so tokenize the result with special tokens parsed and without adding
    a second BOS. Raises ChatTemplateError when the template does not compile.
    """

    def __init__(
        self,
        source: str | None,
        bos_text: str,
        eos_text: str,
        *,
        max_chars: int = DEFAULT_MAX_CHARS,
        max_seconds: float | None = DEFAULT_MAX_SECONDS,
        clock: Callable[[], datetime] = datetime.now,
    ) -> None:
        if max_chars < 1:
            raise ValueError("max_chars must be at least 1")
        if max_seconds is not None and max_seconds <= 0:
            raise ValueError("max_seconds must be positive (or None for no time limit)")
        self.is_fallback = not source
        self.source = source or FALLBACK_TEMPLATE
        self.bos_text, self.eos_text = bos_text, eos_text
        self.max_chars, self.max_seconds = max_chars, max_seconds
        self._clock = clock
        self._env = _Sandbox(max_chars)
        try:
            self._template = self._env.from_string(self.source)
        except TemplateSyntaxError as exc:
            raise ChatTemplateError(f"it does not compile (line {exc.lineno}: {exc.message})") from None
        except ChatTemplateError:
            raise
        except Exception as exc:  # e.g. RecursionError from absurdly nested expressions
            raise ChatTemplateError(f"it does not compile ({type(exc).__name__}: {exc})") from None

    def _strftime_now(self, fmt: Any) -> str:
        return self._clock().strftime(str(fmt))

    def render(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> str:
        """The prompt for `messages` (OpenAI-style dicts: role, content, ...).

        Raises ChatTemplateError when the template fails, refuses the messages (`raise_exception`),
        touches something unsafe, passes `max_chars` or runs longer than `max_seconds`.
        TypeError (ValueError) when `messages` is not plain JSON-like data (or nests absurdly deep):
        the caller's validation should have refused such messages.
        """
        context = {
            "messages": _plain(messages),
            "add_generation_prompt": bool(add_generation_prompt),
            "bos_token": self.bos_text,
            "eos_token": self.eos_text,
            "raise_exception": _raise_exception,
            "strftime_now": self._strftime_now,
        }
        pieces: list[str] = []
        size = 0
        previous = sys.gettrace()
        stream = self._template.generate(context)
        try:
            if self.max_seconds is not None:
                sys.settrace(_deadline_tracer(time.monotonic() + self.max_seconds))
            for piece in stream:
                size += len(piece)
                if size > self.max_chars:
                    raise ChatTemplateError(
                        f"the prompt it renders passes this node's limit of {self.max_chars} characters"
                    )
                pieces.append(piece)
        except ChatTemplateError:
            raise
        except _TimeUp:
            raise ChatTemplateError(f"it ran longer than {self.max_seconds} s") from None
        except SecurityError as exc:
            raise ChatTemplateError(f"it tried something the sandbox forbids ({exc})") from None
        except RecursionError:
            raise ChatTemplateError("it recursed too deeply") from None
        except Exception as exc:  # anything the template's code raised: its own bug, not ours
            raise ChatTemplateError(f"{type(exc).__name__}: {exc}") from None
        finally:
            sys.settrace(previous)
            stream.close()
        return "".join(pieces)
