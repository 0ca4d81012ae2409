"""Chat templates: the bundle's Jinja template rendered as Hugging Face `transformers` does.

`transformers.utils.chat_template_utils` compiles a chat template in an
`ImmutableSandboxedEnvironment` with `trim_blocks=True`, `lstrip_blocks=True`, the
`loopcontrols` extension and a `{% generation %}` tag, the globals `raise_exception`,
`strftime_now`, `dict` and `namespace`, and a `tojson` filter that does not escape HTML; it
renders with `messages`, `tools=None`, `documents=None`, `add_generation_prompt` and the
tokenizer's named special tokens (`bos_token`, `eos_token`, ...). This module does the same
with `jinja2` alone (no torch, no transformers), so a template renders to the same text.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

from tandem.errors import BundleError, InvalidArgumentError

MIN_JINJA2 = (3, 1, 6)  # older versions have known sandbox escapes; templates are untrusted code


def _jinja2() -> Any:
    try:
        import jinja2
        import jinja2.ext
        import jinja2.sandbox
    except ModuleNotFoundError as exc:  # pragma: no cover - a dependency of the package
        raise BundleError("chat templates need jinja2: pip install 'jinja2>=3.1.6'") from exc
    version = tuple(int(p) for p in jinja2.__version__.split(".")[:3] if p.isdigit())
    if version < MIN_JINJA2:
        raise BundleError(f"chat templates need jinja2 >= 3.1.6 (sandbox fixes), found {jinja2.__version__}: "
                          "pip install -U jinja2")
    return jinja2


def _environment() -> Any:
    jinja2 = _jinja2()

    class GenerationTag(jinja2.ext.Extension):
        """`{% generation %}...{% endgeneration %}` (transformers marks assistant spans with
        it): renders its body unchanged."""

        tags = {"generation"}

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller: Any) -> str:
            return caller()

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
               sort_keys: bool = False) -> str:
        # jinja2's own filter escapes HTML characters; transformers' does not
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(format: str) -> str:
        return datetime.now().strftime(format)

    class TemplateDict:
        """`dict(...)` without the attributes of the `dict` type."""

        def __call__(self, *args: Any, **kwargs: Any) -> dict:
            return dict(*args, **kwargs)

        def fromkeys(self, *args: Any, **kwargs: Any) -> dict:
            return dict.fromkeys(*args, **kwargs)

    class TemplateNamespace(jinja2.utils.Namespace):
        """`namespace(...)` that refuses underscore-prefixed attributes."""

        def __init__(*args: Any, **kwargs: Any) -> None:  # jinja2 Namespace's signature trick
            self, args = args[0], args[1:]
            attrs = dict(*args, **kwargs)
            for name in attrs:
                TemplateNamespace._check_name(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name: str, value: Any) -> None:
            TemplateNamespace._check_name(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check_name(name: Any) -> None:
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(
                    f"chat templates cannot store underscore-prefixed attributes on a namespace ({name!r})")

    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[GenerationTag, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    env.globals["dict"] = TemplateDict()
    env.globals["namespace"] = TemplateNamespace
    return env


@lru_cache(maxsize=16)
def compile_template(source: str) -> Any:
    """The compiled template; a syntax error raises BundleError (the template is the bundle's)."""
    jinja2 = _jinja2()
    try:
        return _environment().from_string(source)
    except jinja2.exceptions.TemplateSyntaxError as exc:
        raise BundleError(f"the bundle's chat template is not valid Jinja (line {exc.lineno}: {exc.message}); "
                          "fix chat_template.jinja in the bundle or re-export it") from exc


def _plain(value: Any, where: str) -> Any:
    """`value` rebuilt from plain JSON types (what transformers lets a template see)."""
    if value is None or type(value) in (str, int, bool):
        return value
    if type(value) is float:
        if not math.isfinite(value):
            raise InvalidArgumentError(f"{where} is {value}: give a finite number")
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return _plain(float.__float__(value), where)
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidArgumentError(f"{where} has the key {key!r}: keys must be strings")
            out[str.__str__(key)] = _plain(item, f"{where}[{key!r}]")
        return out
    if isinstance(value, list | tuple):
        return [_plain(item, f"{where}[{i}]") for i, item in enumerate(value)]
    raise InvalidArgumentError(f"{where} is a {type(value).__name__}: messages may hold only text, numbers, "
                               "booleans, None, lists and dicts")


def _check_text(text: str, where: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidArgumentError(f"{where} is not valid Unicode text ({exc.reason} at index {exc.start}); "
                                   "remove the lone surrogate") from exc


def check_messages(messages: Any) -> list[dict[str, Any]]:
    """Validated copies of `messages`: a non-empty list of {"role": str, "content": str} dicts
    (other keys, such as "name", pass through to the template; keys whose value is None are
    dropped, as transformers does)."""
    example = '[{"role": "user", "content": "Hello!"}]'
    if isinstance(messages, str | bytes | Mapping) or not isinstance(messages, Sequence):
        raise InvalidArgumentError(f"messages must be a list of {{'role', 'content'}} dicts, e.g. {example}; "
                                   f"got {type(messages).__name__} (use generate() for plain text)")
    if not messages:
        raise InvalidArgumentError(f"messages is empty: give at least one message, e.g. {example}")
    out = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, Mapping):
            raise InvalidArgumentError(f"{where} is a {type(message).__name__}, not a dict: each message is "
                                       '{"role": ..., "content": ...}')
        message = {k: v for k, v in message.items() if v is not None}
        for key in ("role", "content"):
            if key not in message:
                raise InvalidArgumentError(f'{where} has no "{key}": each message is '
                                           '{"role": "system" | "user" | "assistant", "content": "text"}')
        role, content = message["role"], message["content"]
        if not isinstance(role, str) or not role.strip():
            raise InvalidArgumentError(f'{where}["role"] must be a non-empty string such as "user", got {role!r}')
        if not isinstance(content, str):
            raise InvalidArgumentError(f'{where}["content"] must be a string, got {type(content).__name__}')
        _check_text(role, f'{where}["role"]')
        _check_text(content, f'{where}["content"]')
        plain = _plain(message, where)
        for key, value in plain.items():
            if isinstance(value, str):
                _check_text(value, f"{where}[{key!r}]")
        out.append(plain)
    return out


def render(source: str, messages: Any, special_tokens: Mapping[str, str] | None = None,
           add_generation_prompt: bool = True, **kwargs: Any) -> str:
    """Render chat template `source` over `messages` like transformers'
    `tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=...)`.

    `special_tokens`: the named special tokens (`bos_token`, `eos_token`, ...) the template
    sees; `kwargs` are extra template variables and override them. A template's
    `raise_exception(...)` (e.g. a role it does not know) raises InvalidArgumentError."""
    jinja2 = _jinja2()
    chat = check_messages(messages)
    template = compile_template(source)
    reserved = {"messages", "tools", "documents", "add_generation_prompt"} & set(kwargs)
    if reserved:
        raise InvalidArgumentError(f"{', '.join(sorted(reserved))} cannot be passed as template variables")
    variables = _plain({**(special_tokens or {}), **kwargs}, "template variables")
    try:
        return template.render(messages=chat, tools=None, documents=None,
                               add_generation_prompt=bool(add_generation_prompt), **variables)
    except jinja2.exceptions.TemplateError as exc:
        raise InvalidArgumentError(f"the chat template refused these messages: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - a template is code: a type error there is the input's
        raise InvalidArgumentError(f"the chat template failed on these messages ({type(exc).__name__}: {exc}); "
                                   "check the messages' fields against what the template expects") from exc
