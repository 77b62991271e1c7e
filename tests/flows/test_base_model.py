"""The real base_model stage: the embedded SmolLM2-135M-Instruct GGUF becomes a plain model that answers; and
`tailor export` turns a LoRA specialist with its architecture and tokenizer back into a GGUF that llama.cpp's
converter wrote and that matches the merged model."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from canonical import canonical
from gguf import GGUFReader
from peft import LoraConfig, get_peft_model
from stage_runner import run, stage_command
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from benchmarks.harness import copy_repository
from tasks.core.errors import UserError
from tasks.evaluate.prompting import Recipe
from tasks.formats import hermes
from tasks.release.bundle import Bundle, stage_bundle
from tasks.release.export import export_production

pytestmark = pytest.mark.slow

ASK = (
    "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
    "tok = AutoTokenizer.from_pretrained('models/base')\n"
    "model = AutoModelForCausalLM.from_pretrained('models/base', use_safetensors=True)\n"
    "assert 'quantization_config' not in model.config.to_dict()\n"
    "ids = tok.apply_chat_template([{'role': 'user', 'content': 'What is the capital of France?'}],"
    " add_generation_prompt=True, return_tensors='pt', return_dict=True)\n"
    "out = model.generate(**ids, max_new_tokens=20, do_sample=False)\n"
    "print(tok.decode(out[0, ids['input_ids'].shape[1]:], skip_special_tokens=True))\n"
)


@pytest.fixture(scope="module")
def real_base(tmp_path_factory: pytest.TempPathFactory, prefect_api: str) -> Path:
    """A copy of the repository where the real base_model stage has run."""
    root = copy_repository(tmp_path_factory.mktemp("real-base"))
    stage = run(root, *stage_command(root, "base_model"))
    assert stage.returncode == 0, stage.stderr[-3000:]
    return root


def test_embedded_generalist_is_converted_and_answers(real_base: Path) -> None:
    assert (real_base / "models/base/model.safetensors").is_file()
    answer = run(real_base, "python", "-c", ASK)
    assert answer.returncode == 0, answer.stderr[-2000:]
    assert "Paris" in answer.stdout


def shrunk(model_dir: Path, out: Path) -> Path:
    """model_dir's architecture and tokenizer with 2 small random layers: the converter's work on the real
    tokenizer, in seconds instead of a minute."""
    config = AutoConfig.from_pretrained(model_dir)
    config.update({"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                   "num_key_value_heads": 2, "head_dim": 16})
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(out)
    return out


def test_gguf_export_matches_the_merged_model(real_base: Path) -> None:
    """A LoRA specialist (random B, so that the merge changes every answer) on the real base's architecture and
    tokenizer, exported to f16 GGUF by llama.cpp's converter, loaded back: the same next token on every held-out
    prompt, logits within 0.1."""
    base = shrunk(real_base / "models/base", real_base / "models/small")
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    parameters = sum(p.numel() for p in model.get_base_model().parameters())
    production = real_base / "models/production"
    model.save_pretrained(production)
    eval_file = real_base / "eval.parquet"  # as validate writes it: two instructions and two tool conversations
    tool_rows = pd.read_json(real_base / "data/demo_tools/eval.jsonl", lines=True).head(2)
    pd.concat([canonical(pd.read_json(real_base / "data/demo/eval.jsonl", lines=True).head(2)),
               canonical(tool_rows, "tools")], ignore_index=True).to_parquet(eval_file)

    report = export_production(production, base, eval_file, real_base / "models/export", prompts=4)
    out = real_base / "models/export"
    assert (out / "model.gguf").stat().st_size > 2 * parameters and (out / "merged/model.safetensors").is_file()
    assert report["next_token_agreement"] == 1.0 and report["max_abs_logit_difference"] < 0.1, report
    assert json.loads((out / "export.json").read_text())["prompts"] == 4
    modelfile = (out / "Modelfile").read_text()
    assert "FROM ./model.gguf" in modelfile and 'PARAMETER stop "<|im_end|>"' in modelfile
    assert "<tool_call>" in modelfile and "<tool_response>" in modelfile
    # The GGUF's own chat template renders a tool conversation (definitions, calls, results) as training did.
    field = GGUFReader(out / "model.gguf").get_field("tokenizer.chat_template")
    template = bytes(field.parts[field.data[0]]).decode("utf-8")
    tokenizer = AutoTokenizer.from_pretrained(base)
    for row in tool_rows.to_dict("records"):
        trained = tokenizer.apply_chat_template(hermes.render(row["messages"], row["tools"], keep_reasoning=True),
                                                tokenize=False)
        assert tokenizer.apply_chat_template(row["messages"], tools=row["tools"], chat_template=template,
                                             tokenize=False) == trained

    # A prompted bundle exports the base weights with its prompt in the Modelfile, checked on prompts built as the
    # bundle builds them; a retrieval bundle, which searches an index per request, is refused before any work.
    prompted = real_base / "models/prompted"
    stage_bundle(prompted, Bundle("prompted", Recipe("Answer in one sentence.", (("What is 1+1?", "2."),)), 24,
                                  "base"), None)
    report = export_production(prompted, base, eval_file, real_base / "models/export-prompted", prompts=2)
    assert report["approach"] == "prompted" and report["next_token_agreement"] == 1.0, report
    modelfile = (real_base / "models/export-prompted/Modelfile").read_text()
    assert 'SYSTEM """Answer in one sentence."""' in modelfile and "PARAMETER num_predict 24" in modelfile
    assert 'MESSAGE user """What is 1+1?"""\nMESSAGE assistant """2."""' in modelfile
    retrieval = real_base / "models/retrieval"
    stage_bundle(retrieval, Bundle("retrieval", Recipe(None, retrieval_k=2), 24, "base"), None,
                 real_base / "models/small", eval_file)
    with pytest.raises(UserError, match="retrieval bundle: it searches its retrieval index for every request"):
        export_production(retrieval, base, eval_file, real_base / "models/export-retrieval")
    assert not (real_base / "models/export-retrieval").exists()
