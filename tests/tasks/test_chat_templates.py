"""Chat templates chosen in params for a base model without one: each renders as its family's instruct models do,
the special tokens it needs are added with embedding rows, its end-of-turn token becomes eos, and LoRA trains and
saves exactly the new rows. The end-to-end run through `dvc repro` is the conversations specialization of
tests/e2e/test_portfolio.py."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import yaml
from bare_model import build_bare_model
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from tasks.core.errors import UserError
from tasks.core.params import CHAT_TEMPLATES, FinetuneParams, parse_params
from tasks.data.tokenization import IGNORE_INDEX, tokenize_conversations
from tasks.evaluate.prompting import Recipe
from tasks.model.chat_templates import NAMED_TEMPLATES, chosen_template, use_chat_template
from tasks.model.loading import chat_token_ids
from tasks.model.sources import save_model_dir
from tasks.release.bundle import Bundle
from tasks.release.promotion import model_card
from tasks.train.adapters import with_lora

REPO = Path(__file__).resolve().parents[2]
TEMPLATES_DIR = REPO / "chat_templates"
CONVERSATION = [{"role": "system", "content": "S"}, {"role": "user", "content": "Q1"},
                {"role": "assistant", "content": "A1"}, {"role": "user", "content": "Q2"}]
# The bare tokenizer's bos and eos are both <|endoftext|>; a Llama 3 model writes <|begin_of_text|> there, etc.
# Each: the rendering, the tokens added, the eos (end of turn), the special tokens whose rows LoRA trains.
EXPECTED = {
    "chatml": ("<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nQ1<|im_end|>\n<|im_start|>assistant\nA1<|im_end|>\n"
               "<|im_start|>user\nQ2<|im_end|>\n<|im_start|>assistant\n", ["<|im_start|>", "<|im_end|>"],
               "<|im_end|>", ["<|im_start|>", "<|im_end|>"]),
    "llama3": ("<|endoftext|><|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|><|start_header_id|>user"
               "<|end_header_id|>\n\nQ1<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nA1<|eot_id|>"
               "<|start_header_id|>user<|end_header_id|>\n\nQ2<|eot_id|><|start_header_id|>assistant<|end_header_id|>"
               "\n\n", ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"], "<|eot_id|>",
               ["<|endoftext|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]),
    "mistral": ("<|endoftext|> [INST] S\n\nQ1 [/INST] A1<|endoftext|> [INST] Q2 [/INST]", [], "<|endoftext|>",
                ["<|endoftext|>"]),
    "gemma": ("<|endoftext|><start_of_turn>user\nS\n\nQ1<end_of_turn>\n<start_of_turn>model\nA1<end_of_turn>\n"
              "<start_of_turn>user\nQ2<end_of_turn>\n<start_of_turn>model\n", ["<start_of_turn>", "<end_of_turn>"],
              "<end_of_turn>", ["<|endoftext|>", "<start_of_turn>", "<end_of_turn>"]),
}
# Gemma 3's own template (google/gemma-3 instruct models), images included; ours is its text-only part.
GEMMA3_OFFICIAL = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\\n\\n' -%}
    {%- endif -%}
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
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\\n'}}
{%- endif -%}
"""


@pytest.fixture(scope="module")
def bare_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_bare_model(tmp_path_factory.mktemp("bare"))


def given_template(bare_dir: Path, choice: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, list[str]]:
    tokenizer = AutoTokenizer.from_pretrained(bare_dir)
    model = AutoModelForCausalLM.from_pretrained(bare_dir)
    added = use_chat_template.fn(model, tokenizer, chosen_template(choice, TEMPLATES_DIR))
    return model, tokenizer, added


def test_the_schema_offers_exactly_the_named_templates() -> None:
    assert sorted(CHAT_TEMPLATES) == sorted(NAMED_TEMPLATES)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_named_template_renders_its_family_and_adds_what_the_tokenizer_lacks(bare_dir: Path, name: str) -> None:
    expected, added_tokens, end_of_turn, trained_tokens = EXPECTED[name]
    model, tokenizer, added = given_template(bare_dir, name)
    assert tokenizer.apply_chat_template(CONVERSATION, add_generation_prompt=True, tokenize=False) == expected
    assert added == added_tokens and tokenizer.eos_token == end_of_turn
    ids = tokenizer.convert_tokens_to_ids(added)
    assert ids == list(range(600, 600 + len(added)))
    assert chat_token_ids(model) == tokenizer.convert_tokens_to_ids(trained_tokens)
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer)
    known_mean = model.get_input_embeddings().weight[:600].mean(dim=0)
    for row in ids:  # new rows start at the mean of the known ones (the output rows too: the weights are tied)
        torch.testing.assert_close(model.get_output_embeddings().weight[row], known_mean)
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id == model.config.eos_token_id
    # Trained on: the answer ends with the end-of-turn token, the one generation stops on.
    [example] = tokenize_conversations(tokenizer, [[{"role": "user", "content": "Q"},
                                                {"role": "assistant", "content": "A."}]], "S", 256, "last_turn")
    assert tokenizer.eos_token_id in [t for t in example.labels if t != IGNORE_INDEX]


@pytest.mark.parametrize("conversation", [CONVERSATION, CONVERSATION[1:], CONVERSATION[:3], CONVERSATION[1:3]])
@pytest.mark.parametrize("generation_prompt", [True, False])
def test_gemma_renders_text_as_gemma3_does(bare_dir: Path, conversation: list, generation_prompt: bool) -> None:
    tokenizer = AutoTokenizer.from_pretrained(bare_dir)
    rendered = [tokenizer.apply_chat_template(conversation, chat_template=template, tokenize=False,
                                              add_generation_prompt=generation_prompt)
                for template in (NAMED_TEMPLATES["gemma"], GEMMA3_OFFICIAL)]
    assert rendered[0] == rendered[1]


def test_a_template_file_of_your_own(bare_dir: Path, tmp_path: Path) -> None:
    model, tokenizer, added = given_template(bare_dir, "chat_templates/alpaca.jinja")
    assert added == [] and tokenizer.eos_token == "<|endoftext|>"  # Alpaca ends a turn with the model's own eos
    assert chat_token_ids(model) == [tokenizer.eos_token_id]
    assert tokenizer.apply_chat_template(CONVERSATION, add_generation_prompt=True, tokenize=False) == (
        "S\n\n### Instruction:\nQ1\n\n### Response:\nA1<|endoftext|>\n\n### Instruction:\nQ2\n\n### Response:\n")
    outside = tmp_path / "mine.jinja"
    outside.write_text(NAMED_TEMPLATES["chatml"])
    with pytest.raises(UserError, match=r"is outside .*chat_templates/, the folder the base_model stage depends on"):
        chosen_template(str(outside), TEMPLATES_DIR)


@pytest.mark.parametrize(("template", "named"), [
    ("{% for m in messages %}{{ m['content'] }}{% endfor %}", "writes nothing after the assistant's answer"),
    ("{% if messages[0]['role'] == 'system' %}{{ raise_exception('no system') }}{% endif %}"
     "{% for m in messages %}{{ m['content'] + eos_token }}{% endfor %}", "must take one"),
])
def test_a_template_a_model_cannot_be_trained_with_is_refused(bare_dir: Path, template: str, named: str) -> None:
    tokenizer = AutoTokenizer.from_pretrained(bare_dir)
    with pytest.raises(UserError, match=named):
        use_chat_template.fn(AutoModelForCausalLM.from_pretrained(bare_dir), tokenizer, template)


def test_saved_base_keeps_template_tokens_and_eos(bare_dir: Path, tmp_path: Path) -> None:
    model, tokenizer, _ = given_template(bare_dir, "chatml")
    saved = save_model_dir.fn(model, tokenizer, tmp_path / "base")
    reloaded = AutoTokenizer.from_pretrained(saved)
    assert reloaded.chat_template == NAMED_TEMPLATES["chatml"] and reloaded.eos_token == "<|im_end|>"
    assert reloaded.decode(reloaded.encode("x<|im_end|>"), skip_special_tokens=True) == "x"
    assert chat_token_ids(AutoModelForCausalLM.from_pretrained(saved)) == [600, 601]


def test_no_template_is_refused_only_where_the_format_needs_one(bare_dir: Path, tmp_path: Path) -> None:
    model, tokenizer = AutoModelForCausalLM.from_pretrained(bare_dir), AutoTokenizer.from_pretrained(bare_dir)
    with pytest.raises(UserError, match="has no chat template, and data.format needs one: set tokenize.chat_template"):
        save_model_dir.fn(model, tokenizer, tmp_path / "instruction")
    saved = save_model_dir.fn(model, tokenizer, tmp_path / "text", needs_chat_template=False)
    assert AutoTokenizer.from_pretrained(saved).chat_template is None


@pytest.mark.parametrize("tied", [True, False])
def test_lora_trains_and_saves_only_the_new_rows(tmp_path: Path, tied: bool) -> None:
    bare = build_bare_model(tmp_path / "bare", tied=tied)
    model, tokenizer, _ = given_template(bare, "chatml")
    base = save_model_dir.fn(model, tokenizer, tmp_path / "base")
    peft = with_lora(AutoModelForCausalLM.from_pretrained(base), FinetuneParams())
    delta = [name for name, p in peft.named_parameters() if p.requires_grad and "lora_" not in name]
    assert len(delta) == (1 if tied else 2) and all("trainable_tokens_delta" in name for name in delta)
    ids = tokenizer.apply_chat_template(CONVERSATION[1:3], tokenize=True, return_dict=True,
                                        return_tensors="pt")["input_ids"]
    optimizer = torch.optim.AdamW([p for p in peft.parameters() if p.requires_grad], lr=0.05)
    for _ in range(2):
        peft(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    peft.save_pretrained(tmp_path / "adapter")
    saved = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    rows = {name: tuple(t.shape) for name, t in saved.items() if "lora_" not in name}
    assert sorted(rows.values()) == [(2, 64)] * len(delta)  # two rows, not the 602-row matrices
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), tmp_path / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, peft.eval()(input_ids=ids).logits)
        merged = reloaded.merge_and_unload().state_dict()
    plain = AutoModelForCausalLM.from_pretrained(base).state_dict()
    for weight in ("model.embed_tokens.weight", "lm_head.weight"):
        assert not torch.equal(merged[weight][600:], plain[weight][600:])  # the new rows were trained
        torch.testing.assert_close(merged[weight][:600], plain[weight][:600])  # and only they


def test_template_choices_in_params() -> None:
    shipped = yaml.safe_load((REPO / "params.yaml").read_text())
    for choice in ("auto", "chatml", "chat_templates/alpaca.jinja"):
        raw = copy.deepcopy(shipped)
        raw["tokenize"]["chat_template"] = choice
        assert parse_params(raw).tokenize.chat_template == choice


def test_model_card_says_how_the_template_came_and_where_the_adapter_loads() -> None:
    lineage = {"metrics": {"finetuned": {"loss": 1.0}}, "params": {}}
    bundle = Bundle("finetuned", Recipe(None), 48, "adapter")
    assert "Chat template" not in model_card(lineage, [], bundle, Path("models/base"), Path("models/production"))
    card = model_card({**lineage, "params": {"tokenize": {"chat_template": "chatml"}}}, [], bundle, Path("bases/b"),
                      Path("prod/p"))
    assert "## Chat template\n\n`chatml`" in card and "load it on `bases/b`" in card
    assert 'PeftModel.from_pretrained(base, "prod/p")' in card and "models/" not in card
