"""Chat templates under a budget (issue 18, case 5): each hostile template of the issue ends in
one line that says it is the template's, on time, without the memory it asked for; an honest
template renders exactly what llama-cpp-python's own formatter renders."""

from __future__ import annotations

import resource
import threading
import time

import pytest

from kvgui.runtime import chat_template
from kvgui.runtime.chat_template import RenderBudget, Template, TemplateFailure
from kvgui.testing.tiny_model import CHATML_TEMPLATE

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]


def _fails(source: str, budget: RenderBudget | None = None, **variables) -> tuple[str, float]:
    t0 = time.monotonic()
    with pytest.raises(TemplateFailure) as info:
        Template(source).render(budget, messages=MESSAGES, **variables)
    message = str(info.value)
    assert "\n" not in message and "chat template" in message, message
    return message, time.monotonic() - t0


def test_nested_loops_stop_at_the_deadline() -> None:
    message, took = _fails("{% for i in range(100000) %}{% for j in range(100000) %}"
                           "{% endfor %}{% endfor %}", RenderBudget(seconds=0.5))
    assert "longer than 0.5 s" in message and took < 2.0


def test_a_loop_that_calls_nothing_is_interrupted_by_the_timer() -> None:
    # iterating a string: no call, no operator, no range step for the checks to see
    source = "{% set s = 'ab' * 3000 %}{% for a in s %}{% for b in s %}{% endfor %}{% endfor %}"
    message, took = _fails(source, RenderBudget(seconds=0.3))
    assert "longer than" in message and took < 2.0


def test_stop_interrupts_a_running_template() -> None:
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    message, took = _fails("{% for i in range(100000) %}{% for j in range(100000) %}"
                           "{% endfor %}{% endfor %}",
                           RenderBudget(seconds=60, should_stop=stop.is_set))
    assert "was stopped" in message and took < 2.0


@pytest.mark.parametrize("expr", ["'a' * 10**8", "'a' * 10**11", "[0] * 10**9",
                                  "'x'.center(10**9)", "'x' | center(10**9)",
                                  "2 ** (10**9)", "('a' * 5000000) + ('b' * 5000000)"])
def test_values_past_the_size_limit_are_refused_before_they_are_made(expr: str) -> None:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    message, took = _fails("{{ " + expr + " }}")
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert took < 2.0 and grown_kib < 200_000, (message, grown_kib)


def test_output_past_the_size_limit_is_refused() -> None:
    message, _ = _fails("{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}",
                        RenderBudget(max_chars=1 << 20))
    assert "over the limit" in message


def test_a_syntax_error_names_the_template_and_its_line() -> None:
    tpl = Template("{% for m in messages %}\n{{ m.content }\n{% endfor %}")
    assert tpl.error is not None
    message = str(tpl.error)
    assert "syntax error" in message and "line 2" in message and "m.content" in message
    with pytest.raises(TemplateFailure):
        tpl.render(messages=MESSAGES)


def test_a_runtime_error_names_its_line_and_raise_exception_is_the_templates() -> None:
    message, _ = _fails("line one\n{{ messages[0].content + 1 }}")
    assert "failed (line 2" in message
    message, _ = _fails("{{ raise_exception('Only user and assistant roles') }}",
                        raise_exception=_raise)
    assert "Only user and assistant roles" in message


def _raise(text: str) -> None:
    raise TemplateFailure(f"the model's chat template refused the conversation: {text}")


def test_control_characters_from_the_template_stay_out_of_the_message() -> None:
    tpl = Template("{{ x \x1b[2J\x1b[H }")
    assert tpl.error is not None and "\x1b" not in str(tpl.error)


@pytest.mark.llama
def test_honest_templates_render_what_llama_cpp_python_renders() -> None:
    from llama_cpp import llama_chat_format

    base = llama_chat_format.Jinja2ChatFormatter
    if getattr(base, "_kvgui_budgeted", False):
        base = base.__mro__[1]
    budgeted = chat_template._formatter_class()
    gemma = ("{{ bos_token }}{% for m in messages %}<start_of_turn>{{ m.role }}\n"
             "{{ m.content | trim }}<end_of_turn>\n{% endfor %}"
             "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
             "{{ messages | tojson }}{{ range(3) | list }}{{ loop }}")
    for source in (CHATML_TEMPLATE, gemma):
        ours = budgeted(template=source, eos_token="</s>", bos_token="<s>",
                        stop_token_ids=[2])(messages=MESSAGES)
        theirs = base(template=source, eos_token="</s>", bos_token="<s>",
                      stop_token_ids=[2])(messages=MESSAGES)
        assert ours.prompt == theirs.prompt and ours.stop == theirs.stop
