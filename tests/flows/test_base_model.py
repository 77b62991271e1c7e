"""The real base_model stage: the embedded SmolLM2-135M-Instruct GGUF becomes a plain model that answers."""

from __future__ import annotations

from pathlib import Path

import pytest
from stage_runner import run, stage_command

from benchmarks.harness import copy_repository

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


def test_embedded_generalist_is_converted_and_answers(tmp_path: Path, prefect_api: str) -> None:
    root = copy_repository(tmp_path)
    stage = run(root, *stage_command(root, "base_model"))
    assert stage.returncode == 0, stage.stderr[-3000:]
    assert (root / "models/base/model.safetensors").is_file()
    answer = run(root, "python", "-c", ASK)
    assert answer.returncode == 0, answer.stderr[-2000:]
    assert "Paris" in answer.stdout
