"""FLOPs per token and MFU on a tiny Llama, checked against counts worked out by hand."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from tasks.train.flops import mfu, peak_flops, peak_flops_for_name, training_flops_per_token

# hidden 64, intermediate 128, 2 layers, 4 heads of 16, 2 key/value heads (k and v project to 32), vocab 600.
LAYER = (64 * 64 + 64 * 32 + 64 * 32 + 64 * 64) + 3 * 64 * 128 + 2 * 64  # attention + MLP + two RMSNorms
BODY = 2 * LAYER + 64  # two layers + the final norm
HEAD = 600 * 64  # output projection (the vocabulary logits)
LORA = 2 * ((64 * 4 + 4 * 64) + (64 * 4 + 4 * 32))  # r=4 on q_proj (64→64) and v_proj (64→32), two layers


def tiny_llama(tied: bool) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=600, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=tied)
    return LlamaForCausalLM(config)


@pytest.mark.parametrize("tied", [True, False])
def test_full_finetuning_is_six_n_without_the_embedding_lookup(tied: bool) -> None:
    model = tiny_llama(tied)
    assert sum(p.numel() for p in model.parameters()) == BODY + HEAD * (1 if tied else 2)
    assert training_flops_per_token(model) == 6 * (BODY + HEAD)


def test_lora_pays_the_weight_gradient_only_for_the_adapters() -> None:
    model = get_peft_model(tiny_llama(tied=True), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    total = BODY + HEAD + LORA
    assert training_flops_per_token(model) == 4 * total + 2 * LORA
    # About two thirds of full fine-tuning: the frozen weights still need forward and activation gradients.
    assert training_flops_per_token(model) / training_flops_per_token(tiny_llama(tied=True)) == pytest.approx(
        (4 * total + 2 * LORA) / (6 * (BODY + HEAD)))


def test_attention_term_grows_with_the_context() -> None:
    model = tiny_llama(tied=True)
    # 12 · layers · heads · head_dim · context = 12 · 2 · 4 · 16 · 128
    assert training_flops_per_token(model, context_length=128) == 6 * (BODY + HEAD) + 12 * 2 * 4 * 16 * 128


def test_peak_flops_by_device_name() -> None:
    assert peak_flops_for_name("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops_for_name("NVIDIA H100 PCIe") == 756e12
    assert peak_flops_for_name("NVIDIA H200") == 989e12
    assert peak_flops_for_name("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_flops_for_name("NVIDIA L4") == 121e12
    assert peak_flops_for_name("NVIDIA L40S") == 362e12
    assert peak_flops_for_name("NVIDIA A10G") == 125e12
    assert peak_flops_for_name("Tesla T4") is None  # no bf16 tensor cores: no peak to compare against
    assert peak_flops(torch.device("cpu")) is None


def test_mfu_arithmetic() -> None:
    # 10,000 tokens/s of a 1e9-parameter full fine-tune (6e9 FLOPs per token) on a 989 TFLOP/s GPU.
    assert mfu(10_000, 6e9, 989e12) == pytest.approx(6e13 / 989e12)
    assert mfu(0, 6e9, 989e12) == 0
