"""The LoRA adapter a run trains: a fresh one, finetune.init_adapter's, or none for full fine-tuning."""

from __future__ import annotations

import json

from peft import LoraConfig, PeftModel, get_peft_model
from transformers import PreTrainedModel

from tasks.core.errors import UserError
from tasks.core.params import FinetuneParams
from tasks.model.loading import chat_token_ids


def lora_config(model: PreTrainedModel, params: FinetuneParams, chat_token_rows: bool = True) -> LoraConfig:
    """The LoRA adapter a fresh run trains."""
    # The special tokens of a chat template chosen for a base model (tokenize.chat_template) have untrained rows:
    # added by the base_model stage (<|im_end|> on a model without it) or never trained in pretraining (Llama 3
    # base's <|eot_id|>), and a model that cannot write its end-of-turn token never stops. Their input and output
    # rows train with the adapter and are saved in it (PEFT trainable tokens: those rows only, not whole matrices),
    # so the adapter works on models/base. With tied weights PEFT trains the shared rows once.
    # A method may leave them as they are (chat_token_rows False: DPO, tasks/train/dpo.py says why).
    chat_tokens = chat_token_ids(model) if chat_token_rows else []
    names = {module: name for name, module in model.named_modules()}
    embeddings = [layer for layer in (model.get_input_embeddings(), model.get_output_embeddings()) if layer is not None]
    embedding_rows = {names[layer]: chat_tokens for layer in embeddings}
    return LoraConfig(
        task_type="CAUSAL_LM",
        r=params.lora.r,
        lora_alpha=params.lora.alpha,
        lora_dropout=params.lora.dropout,
        # PEFT takes "all-linear" as a string (every linear layer but the head), or a list of module names.
        target_modules=params.lora.target_modules if isinstance(params.lora.target_modules, str)
        else list(params.lora.target_modules),
        trainable_token_indices=embedding_rows if chat_tokens else None,
    )


def with_lora(model: PreTrainedModel, params: FinetuneParams) -> PreTrainedModel:
    """Wrap the model with the adapter to train: finetune.init_adapter's, or a fresh LoRA one (or leave it whole
    for full fine-tuning)."""
    if params.method == "full":
        return model
    if params.init_adapter is not None:
        return PeftModel.from_pretrained(model, str(params.init_adapter), is_trainable=True)
    return get_peft_model(model, lora_config(model, params))


def for_trl(model: PreTrainedModel, params: FinetuneParams) -> tuple[PreTrainedModel, LoraConfig | None]:
    """The model and peft_config a TRL trainer (DPO, GRPO) starts from: the base model and a fresh adapter's config
    (TRL wraps it), or the base model wrapped with finetune.init_adapter's adapter and no config."""
    if params.init_adapter is None:
        return model, lora_config(model, params, chat_token_rows=False)
    if json.loads((params.init_adapter / "adapter_config.json").read_text()).get("trainable_token_indices"):
        raise UserError(f"finetune.init_adapter {params.init_adapter} trains the rows of the chat template's tokens "
                        f"(the base model lacked them), which method {params.method} (TRL) does not train further; "
                        "start from a base model with its own chat template (tokenize.chat_template: auto), or "
                        "without init_adapter")
    return with_lora(model, params), None
