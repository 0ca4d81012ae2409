"""Chat templates: the exporter copies M_L's template into the bundle; `TandemModel.chat`,
`apply_chat_template` and `tandem generate --chat` render it as transformers does.

Two tiny M_L folders carry realistic templates in tokenizer_config.json: a ChatML one
(Qwen2-style, written with plain `{% %}` tags so trim_blocks / lstrip_blocks matter) and a
Llama-3-style one (bos_token, namespace, raise_exception on a bad role). Every rendering is
compared with `AutoTokenizer.from_pretrained(folder).apply_chat_template(...)`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_models import SAMPLE_TEXT, TINY_VOCAB, tiny_large, tiny_tokenizer

from tandem._core import read_manifest
from tandem.errors import BundleError, ExportError, InvalidArgumentError
from tandem.export.bundle import export_bundle, read_chat_template
from tandem.runtime import load
from tandem.runtime.chat import render

CHATML = """\
{% for message in messages %}
    {% if loop.first and message['role'] != 'system' %}
<|im_start|>system
You are a helpful assistant.<|im_end|>
    {% endif %}
<|im_start|>{{ message['role'] }}
{{ message['content'] }}<|im_end|>
{% endfor %}
{% if add_generation_prompt %}
<|im_start|>assistant
{% endif %}
"""

LLAMA3 = """\
{{- bos_token }}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] | trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{%- if tools is not none %}
    {{- raise_exception('tools are not supported') }}
{%- endif %}
{%- if system_message %}
    {{- '<|start_header_id|>system<|end_header_id|>\\n\\n' + system_message + '<|eot_id|>' }}
{%- endif %}
{%- set ns = namespace(turns=0) %}
{%- for message in messages %}
    {%- if message['role'] not in ['user', 'assistant'] %}
        {{- raise_exception('Unknown role ' + message['role'] + ': only user and assistant follow the system message') }}
    {%- endif %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif %}
    {%- set ns.turns = ns.turns + 1 %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""

# Smaller templates for what else transformers' environment offers: tojson without HTML
# escaping, loop controls, {% generation %}, dict(), the named special tokens.
EXTRA_TEMPLATES = {
    "tojson": "{% for m in messages %}{{ m | tojson }}\n{% endfor %}{{ {'b': '<b>é</b>'} | tojson(indent=1) }}",
    "loopcontrols": "{% for m in messages %}{% if loop.index > 2 %}{% break %}{% endif %}"
                    "{% if m.role == 'system' %}{% continue %}{% endif %}[{{ m.content }}]{% endfor %}",
    "generation": "{% for m in messages %}{% if m.role == 'assistant' %}{% generation %}A: {{ m.content }}"
                  "{% endgeneration %}{% else %}{{ m.role }}: {{ m.content }}{% endif %}\n{% endfor %}"
                  "{% if add_generation_prompt %}A:{% endif %}",
    "dict_and_tokens": "{% set d = dict(a=1, b=bos_token) %}{{ d.b }}|{{ eos_token }}|{{ pad_token }}|"
                       "{{ documents is none }}|{{ messages | length }}",
}

SPECIALS = ["<|im_start|>", "<|im_end|>", "<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
            "<|eot_id|>"]

CONVERSATIONS = {
    "user": [{"role": "user", "content": "Hello!"}],
    "system_user": [{"role": "system", "content": "You are terse."},
                    {"role": "user", "content": "What is 2+2?"}],
    "multi_turn": [{"role": "system", "content": "Answer in code."},
                   {"role": "user", "content": "def fib(n):"},
                   {"role": "assistant", "content": "    return n if n < 2 else fib(n - 1) + fib(n - 2)\n"},
                   {"role": "user", "content": "  And iteratively?  "}],
    "unicode": [{"role": "user", "content": "Grüße, 世界! 🎉 — ¿qué tal?"},
                {"role": "assistant", "content": "Ça va ✓ «très bien»"},
                {"role": "user", "content": "Ελληνικά\nи русский\ttab"}],
}


def _tokenizer_folder(folder: Path, template: str | list | None, bos: str, eos: str,
                      bos_post_processor: bool = False) -> Path:
    """A byte-level BPE (M_L's 300 ids) with the chat special tokens, saved as an HF folder
    whose tokenizer_config.json carries `template`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=TINY_VOCAB, special_tokens=["<|endoftext|>", *SPECIALS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([SAMPLE_TEXT], trainer=trainer)
    if bos_post_processor:  # like Llama 3's tokenizer.json: encoding adds BOS
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))])
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos,
                            pad_token="<|endoftext|>").save_pretrained(folder)
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    if template is not None:
        config["chat_template"] = template
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False))
    return folder


def _large_folder(folder: Path, template: str | list | None, bos: str, eos: str, **kwargs: bool) -> Path:
    folder.mkdir(parents=True)
    tiny_large("llama", num_layers=2).save_pretrained(folder)
    return _tokenizer_folder(folder, template, bos, eos, **kwargs)


class Chat:
    def __init__(self, folder: Path, bundle: Path) -> None:
        self.folder, self.bundle = folder, bundle
        self.model = load(bundle, threads=1)
        self._hf = None

    @property
    def hf(self):
        if self._hf is None:
            from transformers import AutoTokenizer

            self._hf = AutoTokenizer.from_pretrained(self.folder)
        return self._hf


@pytest.fixture(scope="module")
def chats(tmp_path_factory) -> dict[str, Chat]:
    root = tmp_path_factory.mktemp("chat")
    out = {}
    for name, template, bos, eos, post in (("chatml", CHATML, "<|endoftext|>", "<|im_end|>", False),
                                           ("llama3", LLAMA3, "<|begin_of_text|>", "<|eot_id|>", True)):
        folder = _large_folder(root / name, template, bos, eos, bos_post_processor=post)
        bundle = root / f"{name}-bundle"
        export_bundle(folder, bundle, context_length=256, validate=False, progress=None)
        out[name] = Chat(folder, bundle)
    return out


# --------------------------------------------------------------------------- the bundle


def test_export_copies_the_template_and_special_tokens(chats):
    for name, template in (("chatml", CHATML), ("llama3", LLAMA3)):
        bundle = chats[name].bundle
        manifest = read_manifest(str(bundle))
        assert Path(manifest.chat_template) == bundle.resolve() / "chat_template.jinja"
        assert Path(manifest.chat_template).read_text(encoding="utf-8") == template
        assert chats[name].model.chat_template == template
    assert read_manifest(str(chats["llama3"].bundle)).special_tokens == {
        "bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>", "pad_token": "<|endoftext|>"}


def test_read_chat_template_forms(tmp_path):
    folder = tmp_path / "f"
    folder.mkdir()
    assert read_chat_template(folder) == (None, {})
    config = {"bos_token": {"content": "<s>", "__type": "AddedToken"}, "eos_token": "</s>", "unk_token": None}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    assert read_chat_template(folder) == (None, {"bos_token": "<s>", "eos_token": "</s>"})
    (folder / "special_tokens_map.json").write_text(json.dumps({"unk_token": "<unk>", "eos_token": "ignored"}))
    assert read_chat_template(folder)[1] == {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    # the list of named templates: the one named "default"
    config["chat_template"] = [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    assert read_chat_template(folder)[0] == "D"
    config["chat_template"] = [{"name": "tool_use", "template": "T"}]
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ExportError, match="none named 'default'.*chat_template.jinja"):
        read_chat_template(folder)
    # chat_template.jinja wins over tokenizer_config.json, as in transformers
    (folder / "chat_template.jinja").write_text("J {{ bos_token }}", encoding="utf-8")
    assert read_chat_template(folder)[0] == "J {{ bos_token }}"
    config["chat_template"] = 3
    (folder / "chat_template.jinja").unlink()
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ExportError, match="must be a string"):
        read_chat_template(folder)


def test_template_from_the_tokenizer_folder_and_bundles_without_one(tmp_path):
    large = tiny_large("llama", num_layers=1)
    tok = _tokenizer_folder(tmp_path / "tok", [{"name": "default", "template": CHATML}], "<|endoftext|>",
                            "<|im_end|>")
    export_bundle(large, tmp_path / "b", tokenizer=tok / "tokenizer.json", context_length=64, validate=False,
                  progress=None)
    model = load(tmp_path / "b", threads=1)
    assert model.chat_template == CHATML
    assert model.apply_chat_template(CONVERSATIONS["user"]).endswith("<|im_start|>assistant\n")

    # no template: the bundle is valid and generates; chat use is a BundleError that says what to do
    export_bundle(large, tmp_path / "plain", tokenizer=tiny_tokenizer(tmp_path / "plain-tok"), context_length=64,
                  validate=False, progress=None)
    model = load(tmp_path / "plain", threads=1)
    assert model.chat_template is None and read_manifest(str(tmp_path / "plain")).chat_template == ""
    assert len(model.generate([1, 2], mode="large", max_new_tokens=3, ignore_eos=True).ids) == 3
    with pytest.raises(BundleError, match="no chat template.*re-export.*generate"):
        model.chat(CONVERSATIONS["user"], max_new_tokens=2)
    with pytest.raises(BundleError, match="no chat template"):
        model.apply_chat_template(CONVERSATIONS["user"])

    # a template that does not compile is refused at export, naming the folder
    (tok / "chat_template.jinja").write_text("{% for m in messages %}", encoding="utf-8")
    with pytest.raises(ExportError, match="does not compile.*not valid Jinja"):
        export_bundle(large, tmp_path / "bad", tokenizer=tok, context_length=64, validate=False, progress=None)
    assert not (tmp_path / "bad").exists()


def test_manifest_naming_a_missing_or_outside_template_is_a_bundle_error(chats, tmp_path):
    import shutil

    bundle = tmp_path / "b"
    shutil.copytree(chats["chatml"].bundle, bundle)
    manifest = json.loads((bundle / "tandem.json").read_text())
    for name, message in (("missing.jinja", "chat_template: file \"missing.jinja\" is missing from the bundle"),
                          ("../chat_template.jinja", "outside the bundle"), ("/etc/hostname", "relative")):
        manifest["chat_template"] = name
        (bundle / "tandem.json").write_text(json.dumps(manifest))
        with pytest.raises(BundleError, match=message):
            load(bundle, threads=1)


# --------------------------------------------------------------------------- rendering


@pytest.mark.parametrize("conversation", list(CONVERSATIONS))
@pytest.mark.parametrize("name", ["chatml", "llama3"])
def test_rendering_equals_transformers(chats, name, conversation):
    chat = chats[name]
    messages = CONVERSATIONS[conversation]
    if name == "llama3" and conversation == "unicode":
        messages = [{"role": "system", "content": "  Ünïcödé system  "}, *messages]
    text = chat.model.apply_chat_template(messages)
    assert text == chat.hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = chat.model.apply_chat_template(messages, tokenize=True)
    assert ids == list(chat.hf.apply_chat_template(messages, tokenize=True, add_generation_prompt=True,
                                                   return_dict=False))
    no_prompt = chat.model.apply_chat_template(messages, add_generation_prompt=False)
    assert no_prompt == chat.hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    assert text != no_prompt


def test_llama3_template_details(chats):
    model = chats["llama3"].model
    ids = model.apply_chat_template(CONVERSATIONS["user"], tokenize=True)
    bos = model.tokenizer.token_to_id("<|begin_of_text|>")
    # the template writes BOS; the tokenizer's own BOS (its post-processor) is not added again
    assert ids[0] == bos and ids.count(bos) == 1
    assert model.tokenizer.encode("x")[0] == bos


@pytest.mark.parametrize("name", list(EXTRA_TEMPLATES))
def test_environment_equals_transformers(chats, name):
    hf = chats["chatml"].hf
    template = EXTRA_TEMPLATES[name]
    special = read_manifest(str(chats["chatml"].bundle)).special_tokens
    for messages in CONVERSATIONS.values():
        expected = hf.apply_chat_template(messages, chat_template=template, tokenize=False,
                                          add_generation_prompt=True)
        assert render(template, messages, special) == expected


# --------------------------------------------------------------------------- generation


@pytest.mark.parametrize("name", ["chatml", "llama3"])
def test_chat_equals_generate_on_the_rendered_prompt(chats, name):
    model = chats[name].model
    messages = CONVERSATIONS["multi_turn"] if name == "chatml" else CONVERSATIONS["system_user"]
    options = dict(mode="large", max_new_tokens=12, ignore_eos=True)
    got = model.chat(messages, **options)
    ids = model.apply_chat_template(messages, tokenize=True)
    want = model.generate(ids, **options)
    assert got.prompt_ids == ids and got.ids == want.ids and got.text == want.text
    assert len(got.ids) == 12 and got.finish_reason == "max_new_tokens"
    if name == "chatml":  # no BOS post-processor: the rendered text encodes to the same prompt
        assert model.generate(model.apply_chat_template(messages), **options).ids == got.ids
    sampled = model.chat(messages, mode="large", max_new_tokens=6, do_sample=True, seed=5, ignore_eos=True)
    assert sampled.ids == model.generate(ids, mode="large", max_new_tokens=6, do_sample=True, seed=5,
                                         ignore_eos=True).ids


BAD_MESSAGES = [
    ("Hello", "must be a list of"),
    ({"role": "user", "content": "hi"}, "must be a list of"),
    (None, "must be a list of"),
    ([], "messages is empty"),
    (["hi"], r"messages\[0\] is a str, not a dict"),
    ([{"content": "hi"}], r'messages\[0\] has no "role"'),
    ([{"role": "user"}], r'messages\[0\] has no "content"'),
    ([{"role": "user", "content": None}], r'messages\[0\] has no "content"'),
    ([{"role": "user", "content": "a"}, {"role": "", "content": "b"}], r'messages\[1\]\["role"\] must be a non-empty'),
    ([{"role": 3, "content": "b"}], r'\["role"\] must be a non-empty string'),
    ([{"role": "user", "content": 7}], r'\["content"\] must be a string, got int'),
    ([{"role": "user", "content": "a\ud800b"}], r'\["content"\] is not valid Unicode'),
    ([{"role": "user", "content": "a", "extra": object()}], r"\['extra'\] is a object"),
    ([{"role": "user", "content": "a", "score": float("nan")}], "finite number"),
]


@pytest.mark.parametrize(("messages", "match"), BAD_MESSAGES, ids=[repr(m)[:30] for m, _ in BAD_MESSAGES])
def test_bad_messages_are_typed_errors(chats, messages, match):
    with pytest.raises(InvalidArgumentError, match=match):
        chats["chatml"].model.chat(messages, max_new_tokens=2)


def test_template_refusals_are_invalid_argument_errors(chats):
    model = chats["llama3"].model
    with pytest.raises(InvalidArgumentError, match="refused these messages: Unknown role tool"):
        model.chat([{"role": "user", "content": "a"}, {"role": "tool", "content": "b"}])
    with pytest.raises(InvalidArgumentError, match="must alternate"):
        model.apply_chat_template([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])
    # extra keys pass through to the template, None values are dropped (as transformers does)
    messages = [{"role": "user", "content": "hi", "name": "ann", "tool_calls": None}]
    assert model.apply_chat_template(messages) == chats["llama3"].hf.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True)


def test_chat_does_not_import_torch(chats):
    code = ("import sys, tandem; m = tandem.load(sys.argv[1], threads=1); "
            "r = m.chat([{'role': 'user', 'content': 'hi'}], mode='large', max_new_tokens=3, ignore_eos=True); "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules; print(len(r.ids))")
    out = subprocess.run([sys.executable, "-c", code, str(chats["chatml"].bundle)], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "3"


# --------------------------------------------------------------------------- CLI


def _cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tandem.cli", "generate", *argv], capture_output=True, text=True)


def test_cli_chat(chats):
    chat = chats["llama3"]
    got = _cli(str(chat.bundle), "--chat", "--system", "Be brief.", "--prompt", "Grüße!", "--mode", "large",
               "--max-new-tokens", "5", "--ignore-eos", "--json")
    assert got.returncode == 0, got.stderr
    out = json.loads(got.stdout)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Grüße!"}]
    want = chat.model.chat(messages, mode="large", max_new_tokens=5, ignore_eos=True)
    assert out["ids"] == want.ids and out["text"] == want.text
    # streamed text, user message only
    got = _cli(str(chat.bundle), "--chat", "--prompt", "hi", "--mode", "large", "--max-new-tokens", "4",
               "--ignore-eos")
    assert got.returncode == 0, got.stderr
    want = chat.model.chat([{"role": "user", "content": "hi"}], mode="large", max_new_tokens=4, ignore_eos=True)
    assert got.stdout == want.text + "\n"


def test_cli_chat_errors(chats, tmp_path):
    bundle = str(chats["chatml"].bundle)
    got = _cli(bundle, "--chat", "--ids", "1,2")
    assert got.returncode != 0 and "pass --prompt TEXT" in got.stderr
    got = _cli(bundle, "--system", "x", "--prompt", "hi")
    assert got.returncode != 0 and "--system needs --chat" in got.stderr
    export_bundle(tiny_large("llama", num_layers=1), tmp_path / "plain", tokenizer=tiny_tokenizer(tmp_path / "t"),
                  context_length=64, validate=False, progress=None)
    got = _cli(str(tmp_path / "plain"), "--chat", "--prompt", "hi")
    assert got.returncode == 1 and got.stderr.startswith("error: ") and "no chat template" in got.stderr
    assert "Traceback" not in got.stderr
