"""The Jinja environment a model's chat template runs in: transformers', with bounds.

A chat template is a stranger's program. `compile_template(source)` builds it in the environment
transformers' `apply_chat_template` uses (an immutable sandbox with `trim_blocks`, `lstrip_blocks`,
`loopcontrols` and the `{% generation %}` tag; `raise_exception`, `strftime_now`, `dict`,
`namespace` and a `tojson` that keeps non-ASCII characters), so that it renders what transformers
renders. `render(template, max_chars, **variables)` runs it within bounds transformers does not
set, so that no template can hang a chat or exhaust memory:

- time: every loop iteration, every call and every arithmetic operator checks a deadline
  (`MAX_RENDER_SECONDS`); a loop of 10^5 x 10^5 stops there instead of running for hours;
- size: the output, and every string or list a template builds with `~`, `+` or `*`, stays under
  `max_chars`; `*` and `**` are refused before a huge operand is even allocated.

Every failure, of the template or of a bound, is one `TemplateError` line with escape sequences
removed: a template's `raise_exception('...')` text is a stranger's text too.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime
from functools import lru_cache

from ..model.errors import first_line
from .sanitize import printable

MAX_RENDER_SECONDS = 5.0  # real templates take milliseconds, even for long conversations
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


def _check_size(value) -> None:
    limit = getattr(_state, "max_chars", None)
    if limit is not None and isinstance(value, (str, list, tuple)) and len(value) > limit:
        raise TemplateError(f"the chat template built a text or list longer than {limit:,} items")


def _check_product(left, right) -> None:
    """Refuse `left * right` before computing it, when the result would be too big."""
    limit = getattr(_state, "max_chars", None)
    for seq, times in ((left, right), (right, left)):
        if limit is not None and isinstance(seq, (str, list, tuple)) and isinstance(times, int):
            if len(seq) * max(times, 0) > limit:
                raise TemplateError(f"the chat template built a text or list longer than {limit:,} items")
    if isinstance(left, int) and isinstance(right, int) and left.bit_length() + right.bit_length() > MAX_INT_BITS:
        raise TemplateError("the chat template computed an absurdly large number")


def _check_power(base, exponent) -> None:
    if isinstance(base, int) and isinstance(exponent, int) and exponent > 0 and abs(base) > 1:
        if exponent * abs(base).bit_length() > MAX_INT_BITS:
            raise TemplateError("the chat template computed an absurdly large number")


@lru_cache(maxsize=8)
def compile_template(source: str):
    """The template compiled in the bounded sandbox; TemplateError if it is not valid Jinja."""
    from jinja2 import TemplateSyntaxError

    try:
        return _environment().from_string(source)
    except TemplateSyntaxError as e:
        raise TemplateError(f"the chat template is not valid Jinja (line {e.lineno}: {e.message})") from e
    except Exception as e:  # noqa: BLE001 - a compiler fault on absurd input (deep nesting, say)
        raise TemplateError(f"the chat template cannot be compiled ({type(e).__name__}: {first_line(e)})") from e


def render(template, max_chars: int, **variables) -> str:
    """Render within the bounds (module docstring); TemplateError on any failure."""
    _state.deadline = time.monotonic() + MAX_RENDER_SECONDS
    _state.max_chars = max_chars
    out, size = [], 0
    try:
        for chunk in template.generate(**variables):
            size += len(chunk)
            if size > max_chars:
                raise TemplateError(f"the chat template wrote more than {max_chars:,} characters")
            out.append(chunk)
    except TemplateError:
        raise
    except Exception as e:  # noqa: BLE001 - a template can fail in any way: 1/0, range(10**9), recursion
        raise TemplateError(f"the chat template failed ({type(e).__name__}: {first_line(e)})") from e
    finally:
        _state.deadline = _state.max_chars = None
    return "".join(out)


@lru_cache(maxsize=1)
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
        intercepted_binops = frozenset({"+", "*", "**"})

        def _parse(self, source, name, filename):
            return Rewrite().visit(super()._parse(source, name, filename))

        def call_binop(self, context, operator, left, right):
            _check_time()
            if operator == "*":
                _check_product(left, right)
            elif operator == "**":
                _check_power(left, right)
            result = super().call_binop(context, operator, left, right)
            _check_size(result)
            return result

        def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 - Jinja's own signature
            _check_time()  # a recursive macro, a filter in a loop
            return super().call(__context, __obj, *args, **kwargs)

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

    def raise_exception(message):
        raise TemplateError(f"the chat template refused this conversation: {message}")

    def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = BoundedSandbox(trim_blocks=True, lstrip_blocks=True,
                         extensions=[GenerationTag, Bounds, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals.update(raise_exception=raise_exception, strftime_now=lambda fmt: datetime.now().strftime(fmt),
                       dict=TemplateDict(), namespace=TemplateNamespace)
    return env
