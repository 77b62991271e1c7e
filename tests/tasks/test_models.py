"""Base model materialization from a local directory, safetensors only (the GGUF default: tests/flows)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from tasks.models import load_pretrained, save_model_dir


def test_local_model_dir_becomes_a_plain_safetensors_dir(tiny_model_dir: Path, tmp_path: Path) -> None:
    model, tokenizer = load_pretrained.fn(str(tiny_model_dir), None, False)
    out = save_model_dir.fn(model, tokenizer, tmp_path / "base")
    assert (out / "model.safetensors").is_file() and (out / "chat_template.jinja").is_file()
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, reloaded.state_dict()[name])


def test_pickle_weights_are_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_model_dir, pickled)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    (pickled / "model.safetensors").unlink()
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")
    with pytest.raises(OSError, match="safetensors"):
        load_pretrained.fn(str(pickled), None, False)
