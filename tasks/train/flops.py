"""Training FLOPs per token and model FLOPs utilization (MFU), for full fine-tuning and LoRA alike."""

from __future__ import annotations

import torch
from torch import nn

# Dense (no sparsity) bf16 tensor-core peaks from the vendors' data sheets, in FLOP/s. Matched as substrings of
# torch.cuda.get_device_name, in this order: the more specific name must come before the one it contains.
PEAK_BF16_FLOPS: list[tuple[str, float]] = [
    ("GH200", 989e12),
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),  # SXM
    ("H800", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("L40S", 362e12),
    ("L40", 181e12),
    ("L4", 121e12),
    ("A10G", 125e12),
    ("A10", 125e12),
    ("RTX 4090", 165e12),
    ("RTX 3090", 71e12),
]


def matmul_parameters(model: nn.Module) -> tuple[int, int]:
    """(all, trainable) parameters that multiply activations; the input embedding is a lookup and is left out.

    A tied embedding is also the output projection, so it counts once, as the output projection.
    """
    embedding = model.get_input_embeddings().weight
    output = model.get_output_embeddings()
    tied = output is not None and output.weight is embedding
    # model.parameters() yields a shared (tied) tensor once.
    counted = [p for p in model.parameters() if tied or p is not embedding]
    return sum(p.numel() for p in counted), sum(p.numel() for p in counted if p.requires_grad)


def attention_flops_per_token(model: nn.Module, context_length: int) -> float:
    """Score and value matmuls (QKᵀ, AV), forward and backward: 12 · layers · heads · head_dim · context.

    The PaLM-paper convention: the causal mask is not halved, so MFUs compare with published ones.
    """
    config = model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return 12.0 * config.num_hidden_layers * config.num_attention_heads * head_dim * context_length


def training_flops_per_token(model: nn.Module, context_length: int = 0) -> float:
    """FLOPs of one training token: 4·N + 2·N_trainable (+ attention when context_length is given).

    N: parameters that multiply activations (all but the input embedding lookup; LoRA's A and B included).
    Forward 2·N, backward gradient w.r.t. activations 2·N (it flows through frozen layers too), gradient w.r.t.
    weights 2·N_trainable. Full fine-tuning (everything trainable) gives the usual 6·N; LoRA about 4·N.
    """
    total, trainable = matmul_parameters(model)
    attention = attention_flops_per_token(model, context_length) if context_length else 0.0
    return 4.0 * total + 2.0 * trainable + attention


def peak_flops_for_name(device_name: str) -> float | None:
    """The dense bf16 peak of a GPU given its CUDA device name, or None when it is not in the table."""
    return next((peak for key, peak in PEAK_BF16_FLOPS if key in device_name), None)


def peak_flops(device: torch.device) -> float | None:
    """Dense bf16 peak FLOP/s of a CUDA device; None on CPU or for an unknown GPU (MFU is then not reported)."""
    if device.type != "cuda":
        return None
    return peak_flops_for_name(torch.cuda.get_device_name(device))


def mfu(tokens_per_second: float, flops_per_token: float, peak: float) -> float:
    """Model FLOPs utilization: the fraction of the peak the useful training FLOPs reach."""
    return tokens_per_second * flops_per_token / peak
