"""The Jinja environment a model's chat template runs in: transformers', with bounds.

A chat template is a stranger's program. `compile_template(source)` builds it in the environment
transformers' `apply_chat_template` uses (an immutable sandbox with `trim_blocks`, `lstrip_blocks`,
`loopcontrols` and the `{% generation %}` tag; `raise_exception`, `strftime_now`, `dict`,
`namespace` and a `tojson` that keeps non-ASCII characters), so that it renders what transformers
renders. `render(template, max_chars, **variables)` runs it within bounds transformers does not
set, so that no template can hang a chat or exhaust memory:

- time: every loop iteration, every call and every arithmetic operator checks a deadline
  (`MAX_RENDER_SECONDS`); a loop of 10^5 x 10^5 stops there instead of running for hours;
- size: the output, and every string or list a template builds (with `~`, `+`, `*`, `%`, a filter
  or a method) stays under `max_chars`; what can make a result far longer than its input (`*`,
  `**`, a join's separator, a width for `center` or a format, a replacement) is refused before the
  result is even allocated. Compiling is bounded too: Jinja computes constant expressions then.

Every failure, of the template or of a bound, is one `TemplateError` line with escape sequences
removed: a template's `raise_exception('...')` text is a stranger's text too.
"""

from __future__ import annotations

import functools
import json
import re
import threading
import time
from contextlib import contextmanager
from datetime import datetime
from typing import Iterator

from ...model.errors import first_line
from ..sanitize import printable

MAX_RENDER_SECONDS = 5.0  # real templates take milliseconds, even for long conversations
# The most a template may write: one that writes more (looping over its input, say) gets one line
# instead of exhausting memory in the tokenizer (tokenizers takes about 0.5 GB and 4 s for 2 MB
# of text without spaces).
MAX_RENDERED_CHARS = 2_000_000
MAX_INT_BITS = 1 << 16  # integers a template computes: far beyond any count or index
_state = threading.local()  # the bounds of the render running on this thread


class TemplateError(ValueError):
    """The chat template failed to render (a syntax error, it raised for this conversation, or a
    bound was exceeded). The message is one printable line."""

    def __init__(self, message: str) -> None:
        super().__init__(printable(" ".join(message.split()))[:400])


def _check_time() -> None:
    deadline = getattr(_state, "deadline", None)
    if deadline is not None and time.monotonic() > deadline:
        raise TemplateError(f"the chat template ran for more than {MAX_RENDER_SECONDS:g} s; it may loop without end")


def _check_estimate(size: int) -> None:
    """Refuse a result that holds (or would hold) `size` characters or items."""
    limit = getattr(_state, "max_chars", None)
    if limit is not None and size > limit:
        raise TemplateError(f"the chat template built a text or list longer than {limit:,} items")


def _check_size(value) -> None:
    if isinstance(value, (str, list, tuple)):
        _check_estimate(len(value))


def _check_product(left, right) -> None:
    """Refuse `left * right` before computing it, when the result would be too big."""
    for seq, times in ((left, right), (right, left)):
        if isinstance(seq, (str, list, tuple)) and isinstance(times, int):
            _check_estimate(len(seq) * max(times, 0))
    if isinstance(left, int) and isinstance(right, int) and left.bit_length() + right.bit_length() > MAX_INT_BITS:
        raise TemplateError("the chat template computed an absurdly large number")


def _joined_size(items, separator) -> int:
    if not isinstance(items, (list, tuple)):
        return 0  # a generator's items cannot be counted before they are made; the result is checked
    text = sum(len(item) for item in items if isinstance(item, str))
    return text + len(str(separator)) * max(len(items) - 1, 0)


def _replaced_size(text, old, new, count=None) -> int:
    text, old, new = str(text), str(old), str(new)
    found = text.count(old) if old else len(text) + 1
    if isinstance(count, int) and count >= 0:
        found = min(found, count)
    return len(text) + found * max(len(new) - len(old), 0)


def _width(value) -> int:
    return value if isinstance(value, int) else 0


_BRACE_WIDTH = re.compile(r"\{[^{}]*:[^{}\d]*(\d{1,12})")  # "{:>30}", "{0:030d}"
_PERCENT_WIDTH = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\d{1,12})")  # "%30s", "%(name)-30s"


def _format_width(text, pattern=_BRACE_WIDTH) -> int:
    """The widest field a format string asks for (a width of 10**9 allocates a gigabyte)."""
    return max((int(w) for w in pattern.findall(text)), default=0) if isinstance(text, str) else 0


# What a filter or string method's result would hold, from its arguments: the ones that can make a
# text far longer than their input (a separator, a width, a replacement), so that `'x'|center(10**10)`
# or a 200,000-item list joined by a 200,000-character separator is refused before it is allocated.
_FILTER_SIZES = {
    "join": lambda value, d="", attribute=None: _joined_size(value, d),
    "center": lambda value, width=80: _width(width),
    "indent": lambda s, width=4, first=False, blank=False: len(str(s)) + (str(s).count("\n") + 1) * (
        width if isinstance(width, int) else len(str(width))),
    "replace": _replaced_size,
    "format": lambda value, *args, **kwargs: _format_width(value, _PERCENT_WIDTH),
}
_STR_METHOD_SIZES = {
    "join": lambda text, items: _joined_size(items, text),
    "replace": _replaced_size,
    "center": lambda text, width, *_: _width(width),
    "ljust": lambda text, width, *_: _width(width),
    "rjust": lambda text, width, *_: _width(width),
    "zfill": lambda text, width: _width(width),
    "expandtabs": lambda text, tabsize=8: len(text) + text.count("\t") * _width(tabsize),
}


def _asked(size, *args, **kwargs) -> int:
    """What `size` says of these arguments; 0 for arguments the call itself will refuse."""
    kwargs = {k: v for k, v in kwargs.items() if not k.startswith("_")}  # Jinja's _loop_vars, _block_vars
    try:
        return size(*args, **kwargs)
    except (TypeError, ValueError, AttributeError):
        return 0


def _check_power(base, exponent) -> None:
    if isinstance(base, int) and isinstance(exponent, int) and exponent > 0 and abs(base) > 1:
        if exponent * abs(base).bit_length() > MAX_INT_BITS:
            raise TemplateError("the chat template computed an absurdly large number")


@functools.lru_cache(maxsize=8)
def compile_template(source: str):
    """The template compiled in the bounded sandbox; TemplateError if it is not valid Jinja."""
    from jinja2 import TemplateSyntaxError

    try:
        with _bounds(MAX_RENDERED_CHARS):  # Jinja computes constant expressions as it compiles
            return _environment().from_string(source)
    except TemplateSyntaxError as e:
        raise TemplateError(f"the chat template is not valid Jinja (line {e.lineno}: {e.message})") from e
    except Exception as e:  # noqa: BLE001 - a compiler fault on absurd input (deep nesting, say)
        raise TemplateError(f"the chat template cannot be compiled ({type(e).__name__}: {first_line(e)})") from e


def render(template, max_chars: int, **variables) -> str:
    """Render within the bounds (module docstring); TemplateError on any failure."""
    out, size = [], 0
    try:
        with _bounds(max_chars):
            for chunk in template.generate(**variables):
                size += len(chunk)
                if size > max_chars:
                    raise TemplateError(f"the chat template wrote more than {max_chars:,} characters")
                out.append(chunk)
    except TemplateError:
        raise
    except Exception as e:  # noqa: BLE001 - a template can fail in any way: 1/0, range(10**9), recursion
        raise TemplateError(f"the chat template failed ({type(e).__name__}: {first_line(e)})") from e
    return "".join(out)


@contextmanager
def _bounds(max_chars: int) -> Iterator[None]:
    """The bounds (module docstring) on this thread, while the template runs."""
    _state.deadline = time.monotonic() + MAX_RENDER_SECONDS
    _state.max_chars = max_chars
    try:
        yield
    finally:
        _state.deadline = _state.max_chars = None


@functools.lru_cache(maxsize=1)
def _environment():
    """transformers' chat-template environment (utils/chat_template_utils.py), bounded."""
    import jinja2.ext
    from jinja2 import nodes
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    from jinja2.utils import Namespace
    from jinja2.visitor import NodeTransformer

    class GenerationTag(jinja2.ext.Extension):
        """`{% generation %}...{% endgeneration %}` marks the assistant's text for training masks
        in transformers; rendering, it is its body."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    class Bounds(jinja2.ext.Extension):
        """What the rewritten templates call: a loop's iterable that checks the clock, and `~`."""

        def iterate(self, iterable):
            for item in iterable:
                _check_time()
                yield item

        def concat(self, *parts):
            text = "".join(map(str, parts))
            _check_size(text)
            return text

    def bounded(name: str, *args) -> nodes.Call:
        return nodes.Call(nodes.ExtensionAttribute(Bounds.identifier, name), list(args), [], None, None)

    class Rewrite(NodeTransformer):
        def visit_For(self, node):
            self.generic_visit(node)
            node.iter = bounded("iterate", node.iter).set_lineno(node.lineno)
            return node

        def visit_Concat(self, node):
            self.generic_visit(node)
            return bounded("concat", *node.nodes).set_lineno(node.lineno)

    class BoundedSandbox(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset({"+", "*", "**", "%"})

        def wrap_str_format(self, value):
            """`str.format` is wrapped when it is looked up, not called: its widths are checked then."""
            wrapped = super().wrap_str_format(value)
            if wrapped is not None:
                _check_estimate(_format_width(value.__self__))
            return wrapped

        def _parse(self, source, name, filename):
            return Rewrite().visit(super()._parse(source, name, filename))

        def call_binop(self, context, operator, left, right):
            _check_time()
            if operator == "*":
                _check_product(left, right)
            elif operator == "**":
                _check_power(left, right)
            elif operator == "%":
                _check_estimate(_format_width(left, _PERCENT_WIDTH))
            result = super().call_binop(context, operator, left, right)
            _check_size(result)
            return result

        def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 - Jinja's own signature
            _check_time()  # a recursive macro, a method in a loop
            size = _STR_METHOD_SIZES.get(getattr(__obj, "__name__", ""))
            if size is not None and isinstance(getattr(__obj, "__self__", None), str):
                _check_estimate(_asked(size, __obj.__self__, *args, **kwargs))
            result = super().call(__context, __obj, *args, **kwargs)
            _check_size(result)  # whatever else grows: refused once made
            return result

    class TemplateDict:  # `dict` without its class attributes, as transformers gives it
        def __call__(self, *args, **kwargs):
            return dict(*args, **kwargs)

        def fromkeys(self, *args, **kwargs):
            return dict.fromkeys(*args, **kwargs)

    class TemplateNamespace(Namespace):  # no underscore attributes: nothing reaches CPython's internals
        def __init__(*args, **kwargs):  # noqa: N805 - Jinja's Namespace takes `self` this way
            self, args = args[0], args[1:]
            attrs = dict(*args, **kwargs)
            for key in attrs:
                TemplateNamespace.check(key)
            Namespace.__init__(self, attrs)

        def __setitem__(self, key, value):
            TemplateNamespace.check(key)
            Namespace.__setitem__(self, key, value)

        @staticmethod
        def check(key):
            if isinstance(key, str) and key.startswith("_"):
                raise jinja2.exceptions.SecurityError(f"a namespace attribute may not start with '_' ({key!r})")

    def bounded_filter(filter_, size):
        """The filter, checking the clock, the size its arguments ask for, and its result's."""
        skip = 1 if getattr(filter_, "jinja_pass_arg", None) else 0  # the context Jinja passes first

        @functools.wraps(filter_)  # keeps `jinja_pass_arg`
        def bounded(*args, **kwargs):
            _check_time()
            if size is not None:
                _check_estimate(_asked(size, *args[skip:], **kwargs))
            result = filter_(*args, **kwargs)
            _check_size(result)
            return result

        return bounded

    def raise_exception(message):
        raise TemplateError(f"the chat template refused this conversation: {message}")

    def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = BoundedSandbox(trim_blocks=True, lstrip_blocks=True,
                         extensions=[GenerationTag, Bounds, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    for name, filter_ in list(env.filters.items()):
        env.filters[name] = bounded_filter(filter_, _FILTER_SIZES.get(name))
    env.globals.update(raise_exception=raise_exception, strftime_now=lambda fmt: datetime.now().strftime(fmt),
                       dict=TemplateDict(), namespace=TemplateNamespace)
    return env
