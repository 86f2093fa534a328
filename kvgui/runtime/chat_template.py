"""A model's chat template, rendered under a budget of time and size, and stoppable.

A GGUF's chat template is a program written by whoever made the file. llama-cpp-python renders
it in Jinja2's sandbox, which keeps it from running code but not from running long or growing
large: nested ``range(100000)`` loops ran past 120 s at full CPU with Stop and Ctrl-C ignored;
``'a'*10**8`` took 6.4 GiB; ``'a'*10**11`` ended in a MemoryError whose message is empty. A
template with a syntax error stopped the model from loading at all ("llama.cpp could not load
the model: unexpected '}'"), although llama.cpp itself never reads the template.

``BudgetedFormatter`` replaces llama-cpp-python's ``Jinja2ChatFormatter`` in the chat worker
(``install()``; the worker is kvgui's own process) and renders the same prompt, byte for byte,
with:

- a deadline and Stop: a timer signal (POSIX, the worker's main thread) checks both every
  ``TICK_S`` and interrupts any Python loop; every call, filter and loop step the template
  makes checks them too (the only check where there is no timer signal);
- a size limit: ``*``, ``**`` and ``+`` on strings, lists and numbers, filter and method
  arguments (``center(10**9)``) and the rendered text are held under ``max_chars`` before
  Python allocates them;
- errors that say they are the template's, with its line: a syntax error is kept and reported
  when the template is first used (the model still loads; completion mode and the other chat
  formats still work), as is ``raise_exception`` from the template itself.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import FrameType, TracebackType
from typing import Any

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

log = logging.getLogger(__name__)

TICK_S = 0.05
DEFAULT_SECONDS = 10.0
DEFAULT_MAX_CHARS = 8 << 20  # 8 Mi characters: far beyond any context's prompt
MAX_POWER_BITS = 1 << 16  # an integer ** with a result past 64 Ki bits is not a prompt
SHOWN_LINE_CHARS = 120


class TemplateFailure(Exception):
    """The chat template failed: the message is one line that says so and where."""


@dataclass(frozen=True)
class RenderBudget:
    seconds: float = DEFAULT_SECONDS
    max_chars: int = DEFAULT_MAX_CHARS
    should_stop: Callable[[], bool] = lambda: False


_budget = threading.local()


@contextlib.contextmanager
def budget(value: RenderBudget) -> Iterator[None]:
    """Render templates in this thread under ``value`` (the chat worker sets one per turn)."""
    before = getattr(_budget, "value", None)
    _budget.value = value
    try:
        yield
    finally:
        _budget.value = before


def current_budget() -> RenderBudget:
    return getattr(_budget, "value", None) or RenderBudget()


class _Interrupted(BaseException):
    """Raised inside the template's code by a budget check (BaseException: a template's own
    error handling, if Jinja ever grows any, cannot swallow it)."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


class _Meter:
    """The running render's deadline and Stop check."""

    def __init__(self, spec: RenderBudget) -> None:
        self.spec = spec
        self.deadline = time.monotonic() + spec.seconds

    def check(self) -> None:
        if self.spec.should_stop():
            raise _Interrupted("stopped")
        if time.monotonic() > self.deadline:
            raise _Interrupted(f"took longer than {self.spec.seconds:g} s")

    def size(self, n: int) -> None:
        if n > self.spec.max_chars:
            raise _Interrupted(f"made a value of {n:,} items, over the limit of "
                               f"{self.spec.max_chars:,}")


_meter = threading.local()


def _active() -> _Meter:
    meter = getattr(_meter, "value", None)
    if meter is None:  # the environment used outside render(): a budget of its own
        meter = _meter.value = _Meter(current_budget())
    return meter


def _sized(value: Any) -> int | None:
    return len(value) if isinstance(value, (str, bytes, list, tuple)) else None


def _check_args(meter: _Meter, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """A number argument larger than the size limit would make a value larger than it
    (``'x'.center(n)``, ``indent(n)``, ``wordwrap``…): refused before the call."""
    for value in (*args, *kwargs.values()):
        if isinstance(value, int) and not isinstance(value, bool) and \
                abs(value) > meter.spec.max_chars:
            raise _Interrupted(f"passed the number {value:.3g} to a function, over the limit "
                               f"of {meter.spec.max_chars:,}")


class _Range:
    """``range`` for templates: Jinja's sandbox bound (MAX_RANGE items), plus a budget check
    at every step, so that nested loops with empty bodies stop on time."""

    def __init__(self, *args: int) -> None:
        from jinja2.sandbox import safe_range

        self._range = safe_range(*args)

    def __len__(self) -> int:
        return len(self._range)

    def __iter__(self) -> Iterator[int]:
        meter = _active()
        for i in self._range:
            meter.check()
            yield i


class _BudgetedEnvironment(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**", "+"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        meter = _active()
        meter.check()
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                length = _sized(seq)
                if length is not None and isinstance(n, int):
                    meter.size(length * max(n, 0))
        elif operator == "**" and isinstance(left, int) and isinstance(right, int) and \
                abs(left) > 1 and right > 0:
            if right * left.bit_length() > MAX_POWER_BITS:
                raise _Interrupted(f"raised a number to the power {right:,}")
        elif operator == "+":
            a, b = _sized(left), _sized(right)
            if a is not None and b is not None:
                meter.size(a + b)
        return super().call_binop(context, operator, left, right)

    def call(__self, __context: Any, __obj: Any, *args: Any,
             **kwargs: Any) -> Any:
        meter = _active()
        meter.check()
        _check_args(meter, args, kwargs)
        result = super().call(__context, __obj, *args, **kwargs)
        length = _sized(result)
        if length is not None:
            meter.size(length)
        return result


def _guard_filter(fn: Callable[..., Any]) -> Callable[..., Any]:
    def guarded(*args: Any, **kwargs: Any) -> Any:
        meter = _active()
        meter.check()
        _check_args(meter, args[1:] if args else args, kwargs)
        result = fn(*args, **kwargs)
        length = _sized(result)
        if length is not None:
            meter.size(length)
        return result

    for attr in ("jinja_pass_arg",):  # pass_context / pass_environment markers
        if hasattr(fn, attr):
            setattr(guarded, attr, getattr(fn, attr))
    return guarded


def _template_line(tb: TracebackType | None) -> int | None:
    """The template's line where an error was raised (Jinja rewrites its frames to the
    template's file name and line)."""
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def _show_line(source: str, lineno: int | None) -> str:
    if not lineno:
        return ""
    lines = source.splitlines()
    if not 1 <= lineno <= len(lines):
        return f" (line {lineno})"
    text = "".join(ch if ch.isprintable() else " " for ch in lines[lineno - 1].strip())
    if len(text) > SHOWN_LINE_CHARS:
        text = text[:SHOWN_LINE_CHARS - 1] + "…"
    return f" (line {lineno}: {text})"


def _one_line(text: str, limit: int = 300) -> str:
    flat = " ".join("".join(ch if ch.isprintable() else " " for ch in text).split())
    return flat if len(flat) <= limit else flat[:limit - 1] + "…"


@contextlib.contextmanager
def _ticking(meter: _Meter) -> Iterator[None]:
    """A timer signal that checks the budget while the template runs: it interrupts any
    Python loop, also those that call nothing. POSIX main thread only; elsewhere the checks
    in calls, filters, operators and ``range`` steps stand alone."""
    usable = hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    if not usable:
        yield
        return

    def on_tick(signum: int, frame: FrameType | None) -> None:
        meter.check()

    previous = signal.signal(signal.SIGALRM, on_tick)
    signal.setitimer(signal.ITIMER_REAL, TICK_S, TICK_S)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0, 0)
        signal.signal(signal.SIGALRM, previous)


class Template:
    """A chat template compiled in the budgeted sandbox; compile errors are kept for render."""

    def __init__(self, source: str,
                 filters: dict[str, Callable[..., Any]] | None = None) -> None:
        """``filters`` replace Jinja's of the same name (before compiling: Jinja decides at
        compile time what a filter is passed)."""
        self.source = source
        env = _BudgetedEnvironment(
            loader=jinja2.BaseLoader(), trim_blocks=True, lstrip_blocks=True,
            extensions=[_IgnoreGenerationTags, jinja2.ext.loopcontrols])
        env.globals["range"] = _Range
        env.filters = {name: _guard_filter(fn)
                       for name, fn in {**env.filters, **(filters or {})}.items()}
        self.env = env
        self.error: TemplateFailure | None = None
        self._compiled: jinja2.Template | None = None
        try:
            self._compiled = env.from_string(source)
        except jinja2.TemplateSyntaxError as exc:
            self.error = TemplateFailure(
                f"the model's chat template has a syntax error{_show_line(source, exc.lineno)}:"
                f" {_one_line(exc.message or str(exc))}")
        except Exception as exc:  # any compile failure is the template's
            self.error = TemplateFailure(
                f"the model's chat template cannot be read: {_one_line(str(exc))}")
        if self.error is not None:
            log.warning("%s", self.error)

    def render(self, spec: RenderBudget | None = None, **variables: Any) -> str:
        if self.error is not None or self._compiled is None:
            raise self.error or TemplateFailure("the model's chat template cannot be read")
        meter = _Meter(spec or current_budget())
        _meter.value = meter
        parts: list[str] = []
        total = 0
        try:
            with _ticking(meter):
                for chunk in self._compiled.generate(**variables):
                    total += len(chunk)
                    meter.size(total)
                    parts.append(chunk)
                    meter.check()
        except _Interrupted as exc:
            why = "was stopped" if exc.why == "stopped" else exc.why
            raise TemplateFailure(f"the model's chat template {why}; nothing was sent to "
                                  "the model (choose another chat format, or use completion"
                                  " mode)") from None
        except MemoryError:
            raise TemplateFailure("the model's chat template needed more memory than there "
                                  "is; nothing was sent to the model") from None
        except RecursionError:
            raise TemplateFailure("the model's chat template recursed too deeply") from None
        except TemplateFailure:
            raise
        except Exception as exc:  # whatever the template raised is its own
            where = _show_line(self.source, _template_line(exc.__traceback__))
            text = _one_line(str(exc)) or type(exc).__name__
            raise TemplateFailure(f"the model's chat template failed{where}: {text}") from None
        finally:
            _meter.value = None
        return "".join(parts)


class _IgnoreGenerationTags(jinja2.ext.Extension):
    """HuggingFace's ``{% generation %}`` tag, passed through (as llama-cpp-python does)."""

    tags = {"generation"}  # noqa: RUF012 - Extension declares it so

    def parse(self, parser: Any) -> Any:
        parser.stream.skip(1)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


def _formatter_class() -> type:
    """llama-cpp-python's Jinja2ChatFormatter with the budgeted Template (imported here:
    kvgui's modules that never chat do not load llama_cpp)."""
    from llama_cpp import llama_chat_format

    base = llama_chat_format.Jinja2ChatFormatter

    class BudgetedFormatter(base):  # type: ignore[misc,valid-type]
        def __init__(self, template: str, eos_token: str, bos_token: str,
                     add_generation_prompt: bool = True,
                     stop_token_ids: list[int] | None = None) -> None:
            # base.__init__ compiles the template in the plain sandbox (and raises on a
            # syntax error): the same attributes, our environment
            self.template = template
            self.eos_token = eos_token
            self.bos_token = bos_token
            self.add_generation_prompt = add_generation_prompt
            self.stop_token_ids = set(stop_token_ids) if stop_token_ids is not None else None
            # transformers' JSON rendering, as llama-cpp-python's own formatter sets it
            self._budgeted = Template(template, filters={"tojson": base.tojson})

        def __call__(self, *, messages: Any, functions: Any = None, function_call: Any = None,
                     tools: Any = None, tool_choice: Any = None, **kwargs: Any) -> Any:
            def raise_exception(message: str) -> None:
                raise TemplateFailure(f"the model's chat template refused the conversation: "
                                      f"{_one_line(str(message))}")

            prompt = self._budgeted.render(
                None, messages=messages, eos_token=self.eos_token, bos_token=self.bos_token,
                raise_exception=raise_exception,
                add_generation_prompt=self.add_generation_prompt, functions=functions,
                function_call=function_call, tools=tools, tool_choice=tool_choice,
                strftime_now=self.strftime_now, **kwargs)
            stopping_criteria = None
            if self.stop_token_ids is not None:
                from llama_cpp import llama

                stops = self.stop_token_ids

                def stop_on_last_token(tokens: Any, logits: Any) -> bool:
                    return tokens[-1] in stops

                stopping_criteria = llama.StoppingCriteriaList([stop_on_last_token])
            return llama_chat_format.ChatFormatterResponse(
                prompt=prompt, stop=[self.eos_token], stopping_criteria=stopping_criteria,
                added_special=True)

    return BudgetedFormatter


def install() -> type:
    """Make llama-cpp-python build every GGUF template handler with the budgeted formatter
    (Llama.__init__ looks the class up on the module at construction). Idempotent."""
    from llama_cpp import llama_chat_format

    current = llama_chat_format.Jinja2ChatFormatter
    if getattr(current, "_kvgui_budgeted", False):
        return current
    cls = _formatter_class()
    setattr(cls, "_kvgui_budgeted", True)  # noqa: B010 - a marker on a class made at run time
    setattr(llama_chat_format, "Jinja2ChatFormatter", cls)  # noqa: B010 - replaced on purpose
    return cls
