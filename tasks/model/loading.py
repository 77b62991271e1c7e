"""The runtime side of a model: loading models/base (or a model folder) on a device, and the chat-token record
models/base carries. Kept apart from tasks/model/sources.py, so a fix to how a base model is downloaded re-runs the
base_model stage only, not every stage that loads a model."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from tasks.core.errors import UserError

# torch and transformers are imported where a model is loaded: importing this module stays cheap.
if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

# The config.json key where models/base lists the special tokens its chat template writes, when the template was
# chosen in params (tasks/model/chat_templates.py): those the tokenizer lacked were added with new embedding rows, and a
# base model may never have trained the ones it had (Llama 3 base's <|eot_id|>), so LoRA trains their rows too
# (tasks/train/adapters.py).
CHAT_TOKENS_KEY = "tailor_chat_token_ids"


def record_chat_tokens(model: PreTrainedModel, token_ids: list[int]) -> None:
    setattr(model.config, CHAT_TOKENS_KEY, list(token_ids))


def chat_token_ids(model: PreTrainedModel) -> list[int]:
    """The ids record_chat_tokens wrote into the model's config; none where the model's own template is used."""
    return list(getattr(model.config, CHAT_TOKENS_KEY, None) or [])


def load_model(model_dir: Path, device: torch.device) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load the base model written by the base_model stage, in the dtype that suits the device."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, use_safetensors=True).to(device)
    return model, tokenizer


def padding_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The tokenizer's pad token, or its end-of-sequence token when it has none (many chat models)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def pick_device(requested: str) -> torch.device:
    """`auto` takes CUDA when there is one; asking for CUDA without one is a params error."""
    import torch

    if requested == "cuda" and not torch.cuda.is_available():
        raise UserError("finetune.device is cuda but no CUDA device is visible; set it to auto or cpu")
    if requested == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))  # torchrun: one GPU per process
