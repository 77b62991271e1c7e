"""Chat templates chosen in params (tokenize.chat_template), for base models that have none of their own.

The base_model stage applies the choice, so models/base carries the tokenizer that every later stage, generation,
the production model and its exports use unchanged: the template, the special tokens it writes (added, with their
embedding rows), and its end-of-turn token as the eos token, so generation stops where a trained turn ends.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from jinja2 import TemplateError
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.core.errors import UserError
from tasks.model.loading import record_chat_tokens

if TYPE_CHECKING:  # imported where used, as in tasks/model/loading.py
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

# The common families, each as its instruct models ship it; tests/tasks/test_chat_templates.py checks what
# transformers renders from each (Gemma's against Gemma 3's own template). A system message is kept (the prompted
# baseline sends one): Mistral and Gemma have no system turn, so theirs goes before the first user message, as their
# own templates do.
CHATML = (  # ChatML (Qwen, SmolLM, Hermes) as TRL's setup_chat_format writes it: no default system message
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
LLAMA3 = (  # Meta-Llama-3-8B-Instruct's, verbatim
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
MISTRAL = """{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}

{{- bos_token }}
{%- for message in loop_messages %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('After the optional system message, conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif %}
    {%- if message['role'] == 'user' %}
        {%- if loop.first and system_message is defined %}
            {{- ' [INST] ' + system_message + '\\n\\n' + message['content'] + ' [/INST]' }}
        {%- else %}
            {{- ' [INST] ' + message['content'] + ' [/INST]' }}
        {%- endif %}
    {%- elif message['role'] == 'assistant' %}
        {{- ' ' + message['content'] + eos_token}}
    {%- else %}
        {{- raise_exception('Only user and assistant roles are supported, with the exception of an initial optional system message!') }}
    {%- endif %}
{%- endfor %}"""  # Mixtral-8x7B-Instruct-v0.1's, verbatim: the [INST] format of Mistral's instruct models
GEMMA = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else "") }}
    {{- message['content'] | trim }}
    {{- '<end_of_turn>\\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\\n'}}
{%- endif -%}
"""  # Gemma 3's, text only
# tasks/core/params.py lists the same names (a test checks it): the schema module stays free of this one's imports.
NAMED_TEMPLATES = {"chatml": CHATML, "llama3": LLAMA3, "mistral": MISTRAL, "gemma": GEMMA}

# What a template writes around the messages that is a special token by its shape: <|im_start|>, <|eot_id|>,
# <start_of_turn>. Other scaffolding ([INST], "### Response:") stays ordinary text, as in the models that use it.
MARKER = re.compile(r"<\|[^<>|\s]+\|>|</?[A-Za-z][\w.-]*>")
# Probe messages whose text cannot be mistaken for the template's own.
PROBE = {"system": "tailor-probe-system", "user": "tailor-probe-user", "assistant": "tailor-probe-answer"}


def chosen_template(choice: str, templates_dir: Path) -> str | None:
    """The template text tokenize.chat_template names: None for auto (the model's own), a named one, or a file,
    which must lie in templates_dir: the folder base_model depends on in dvc.yaml, so that editing it re-runs the
    stage. The schema has checked the name or that the file exists."""
    if choice == "auto":
        return None
    if choice in NAMED_TEMPLATES:
        return NAMED_TEMPLATES[choice]
    path = Path(choice)
    if not path.resolve().is_relative_to(templates_dir.resolve()):
        raise UserError(f"tokenize.chat_template: {choice} is outside {templates_dir}/, the folder the base_model "
                        f"stage depends on (dvc.yaml), so editing it would not re-run the pipeline; move it into "
                        f"{templates_dir}/")
    return path.read_text(encoding="utf-8")


def render_probe(tokenizer: PreTrainedTokenizerBase) -> str:
    """The tokenizer's template applied to a system, user and assistant message."""
    messages = [{"role": role, "content": text} for role, text in PROBE.items()]
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False)
    except TemplateError as exc:
        raise UserError(f"the chat template (tokenize.chat_template) fails on a system, user and assistant message "
                        f"({exc}); the prompted baseline sends a system message, so the template must take one"
                        ) from None


def end_of_turn(rendered: str) -> str:
    """What the template writes right after the assistant's answer: the token a trained model ends its turn with."""
    after = rendered.split(PROBE["assistant"], 1)[1].lstrip()
    if not after:
        raise UserError("the chat template (tokenize.chat_template) writes nothing after the assistant's answer, so a "
                        "model could not learn to end its turn; end it with {{ eos_token }} or a marker like "
                        "<|im_end|>")
    marker = MARKER.match(after)
    return marker.group(0) if marker else after.split()[0]


def is_one_token(tokenizer: PreTrainedTokenizerBase, text: str) -> bool:
    ids = tokenizer.encode(text, add_special_tokens=False)
    return len(ids) == 1 and tokenizer.decode(ids) == text


def grow_embeddings(model: PreTrainedModel, known_rows: int, new_ids: list[int], vocabulary: int) -> None:
    """Room for the new tokens, their input and output rows set to the mean of the known ones.

    The mean (rather than transformers' default random draw around it) keeps models/base byte-identical from run
    to run, so DVC re-runs nothing after it when nothing changed.
    """
    import torch

    if vocabulary > model.get_input_embeddings().weight.shape[0]:  # a padded vocabulary may already have room
        model.resize_token_embeddings(vocabulary, mean_resizing=False)
    with torch.no_grad():
        for layer in (model.get_input_embeddings(), model.get_output_embeddings()):
            if layer is not None:  # tied weights get the same rows twice, harmlessly
                layer.weight[new_ids] = layer.weight[:known_rows].mean(dim=0)


@task(cache_policy=NO_CACHE)
def use_chat_template(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, template: str) -> list[str]:
    """Give the model the chosen template; returns the special tokens it needed that the tokenizer lacked.

    Those are added and the embeddings resized; the model's config records every special token the template
    writes, whose rows finetune trains with the adapter (tasks/train/adapters.py, with_lora). The end-of-turn token
    becomes eos: generation stops on it, and plain texts end with it.
    """
    tokenizer.chat_template = template
    rendered = render_probe(tokenizer)
    end = end_of_turn(rendered)
    scaffolding = re.sub("|".join(PROBE.values()), " ", rendered)  # what the template itself writes
    wanted = list(dict.fromkeys([*MARKER.findall(scaffolding), end]))
    missing = [token for token in wanted if not is_one_token(tokenizer, token)]
    known_rows = len(tokenizer)
    tokenizer.add_tokens(missing, special_tokens=True)
    if missing:
        grow_embeddings(model, known_rows, tokenizer.convert_tokens_to_ids(missing), len(tokenizer))
    tokenizer.eos_token = end
    record_chat_tokens(model, [tokenizer.encode(token, add_special_tokens=False)[0] for token in wanted])
    model.config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return missing
