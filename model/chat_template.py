"""Render a checkpoint's chat template (a Jinja string) into a prompt.

jinja2 is not one of qtha's dependencies. When it is importable the template is rendered exactly, in a sandbox;
otherwise the template is recognised as one of the families we meet (ChatML, as used by SmolLM2 and Qwen2, and
Llama 3's header format) and rendered by a small equivalent renderer, including a default system prompt the
template inserts. Anything else fails with :class:`ChatTemplateError` rather than guessing.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Mapping, Sequence

CHATML_START, CHATML_END = "<|im_start|>", "<|im_end|>"
LLAMA3_HEADER_START, LLAMA3_HEADER_END, LLAMA3_EOT = "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"


class ChatTemplateError(ValueError):
    """A chat template that cannot be rendered, or messages that do not fit one."""


def render_chat(
    template: str | None,
    messages: Sequence[Mapping[str, str]],
    *,
    add_generation_prompt: bool,
    bos_token: str = "",
    eos_token: str = "",
    use_jinja: bool | None = None,
) -> str:
    """The prompt text for ``messages`` (each ``{"role": ..., "content": ...}``) under ``template``.

    Args:
        template: the Jinja chat template from the checkpoint; ``None`` means plain ChatML.
        messages: the conversation; roles are ``system``, ``user`` or ``assistant``.
        add_generation_prompt: end with the header that opens the assistant's turn.
        bos_token: substituted for ``bos_token`` in Jinja templates.
        eos_token: substituted for ``eos_token`` in Jinja templates.
        use_jinja: force (True) or forbid (False) jinja2; default: use it when installed.

    Raises:
        ChatTemplateError: malformed messages, or a template of an unknown family when jinja2 is unavailable.
    """
    _check_messages(messages)
    if use_jinja is None:
        use_jinja = importlib.util.find_spec("jinja2") is not None
    if template is not None and use_jinja:
        return _render_jinja(template, messages, add_generation_prompt, bos_token, eos_token)
    if template is None or CHATML_START in template:
        return _render_chatml(template or "", messages, add_generation_prompt)
    if LLAMA3_HEADER_START in template:
        return _render_llama3(template, messages, add_generation_prompt, bos_token)
    raise ChatTemplateError(
        "this checkpoint's chat template is neither ChatML nor Llama 3 style and jinja2 is not installed; "
        f"`pip install jinja2` to render it exactly (template starts {template[:80]!r})"
    )


def _check_messages(messages: Sequence[Mapping[str, str]]) -> None:
    if not messages:
        raise ChatTemplateError("no messages to render; pass at least one {'role': 'user', 'content': ...}")
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise ChatTemplateError(f"message {i} is {m!r}; each must be {{'role': str, 'content': str}}")


def _jinja_literal(text: str) -> str:
    # Template string literals spell newlines as backslash-n; the rendered prompt holds real ones.
    return text.replace("\\n", "\n").replace("\\'", "'")


def default_system_prompt(template: str) -> str | None:
    """The system message a ChatML template inserts when the conversation has none, if it inserts one.

    Raises:
        ChatTemplateError: the template branches on the first message's role but its default system message is
            not a plain string literal (e.g. Qwen2.5's tool-aware template); only jinja2 renders that faithfully.
    """
    if not re.search(r"messages\[0\]\[['\"]role['\"]\]", template):
        return None
    found = re.search(
        r"['\"]" + re.escape(CHATML_START) + r"system(?:\\n|\n)([^'\"{}]*?)" + re.escape(CHATML_END), template
    )
    if found is None:
        raise ChatTemplateError(
            "this chat template inserts a default system message that qtha cannot read without jinja2; "
            "`pip install jinja2` to render it exactly"
        )
    return _jinja_literal(found.group(1))


def _render_chatml(template: str, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool) -> str:
    system = default_system_prompt(template)
    head = f"{CHATML_START}system\n{system}{CHATML_END}\n" if system is not None and messages[0]["role"] != "system" else ""
    turns = "".join(f"{CHATML_START}{m['role']}\n{m['content']}{CHATML_END}\n" for m in messages)
    return head + turns + (f"{CHATML_START}assistant\n" if add_generation_prompt else "")


def _render_llama3(
    template: str, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool, bos_token: str
) -> str:
    head = bos_token if "bos_token" in template else ""
    turns = "".join(
        f"{LLAMA3_HEADER_START}{m['role']}{LLAMA3_HEADER_END}\n\n{m['content'].strip()}{LLAMA3_EOT}" for m in messages
    )
    return head + turns + (f"{LLAMA3_HEADER_START}assistant{LLAMA3_HEADER_END}\n\n" if add_generation_prompt else "")


def _render_jinja(
    template: str,
    messages: Sequence[Mapping[str, str]],
    add_generation_prompt: bool,
    bos_token: str,
    eos_token: str,
) -> str:
    from jinja2 import TemplateError  # optional dependency, imported only when installed
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise ChatTemplateError(f"the chat template refused the messages: {message}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    try:
        return env.from_string(template).render(
            messages=[dict(m) for m in messages],
            add_generation_prompt=add_generation_prompt,
            bos_token=bos_token,
            eos_token=eos_token,
        )
    except TemplateError as exc:
        raise ChatTemplateError(f"the chat template failed to render: {exc}") from exc
