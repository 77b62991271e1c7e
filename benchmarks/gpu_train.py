"""GPU training throughput: LoRA on a 1B-class Llama with random weights, packed 2k-token sequences, bf16.

Needs no downloads: the model is built from a LlamaConfig and the tokens are random ids. Each step is one row of
--tokens-per-step tokens holding several --seq-len sequences told apart by position_ids resets (the pipeline's
padding-free layout). The first --warmup-steps are not timed. Prints tokens/s, MFU (tasks/train/flops.py) and peak GPU
memory, and writes them as JSON. `--tiny` shrinks everything so it runs on a CPU in seconds (fp32, no MFU).

    python -m benchmarks.gpu_train [--gradient-checkpointing] [--liger] [--steps 20]
    python -m benchmarks.gpu_train --tiny
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedModel

from benchmarks.report import RESULTS_DIR, print_table, write_json
from tasks.data.tokenization import IGNORE_INDEX
from tasks.train.flops import mfu, peak_flops, training_flops_per_token


@dataclass(frozen=True)
class Size:
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int


@dataclass(frozen=True)
class Preset:
    size: Size
    seq_len: int
    tokens_per_step: int
    steps: int
    warmup_steps: int


# About 1.1B parameters (TinyLlama-like shape); one 8k-token step fits an 80 GB GPU without checkpointing.
FULL = Preset(Size(2048, 8192, 16, 32, 8, 32000), seq_len=2048, tokens_per_step=8192, steps=20, warmup_steps=3)
TINY = Preset(Size(64, 128, 2, 4, 2, 512), seq_len=64, tokens_per_step=256, steps=6, warmup_steps=1)


def attention_implementation(requested: str, device: torch.device) -> str:
    """flash_attention_2 when installed on CUDA (true variable-length attention), else PyTorch SDPA."""
    if requested != "auto":
        return requested
    if device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def build_model(size: Size, seq_len: int, device: torch.device, dtype: torch.dtype, attention: str,
                lora_r: int, gradient_checkpointing: bool) -> PreTrainedModel:
    """A randomly initialized Llama with LoRA on every linear projection, built directly on the device."""
    config = LlamaConfig(**asdict(size), max_position_embeddings=seq_len, tie_word_embeddings=False, use_cache=False)
    with device:  # initialize on the device: building 1B parameters on the CPU first would take minutes
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attention)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    lora = LoraConfig(task_type="CAUSAL_LM", r=lora_r, lora_alpha=2 * lora_r, lora_dropout=0.0,
                      target_modules="all-linear")
    return get_peft_model(model, lora).to(device)


def packed_batch(tokens: int, seq_len: int, vocab_size: int, generator: torch.Generator,
                 device: torch.device) -> dict[str, torch.Tensor]:
    """One row of random token ids holding tokens/seq_len sequences, as DataCollatorWithFlattening lays them out."""
    input_ids = torch.randint(vocab_size, (1, tokens), generator=generator)
    position_ids = (torch.arange(tokens) % seq_len).unsqueeze(0)
    labels = input_ids.clone()
    labels[position_ids == 0] = IGNORE_INDEX  # a sequence's first token is not predicted from the one before it
    return {name: t.to(device) for name, t in
            {"input_ids": input_ids, "position_ids": position_ids, "labels": labels}.items()}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train(model: PreTrainedModel, preset: Preset, device: torch.device, bf16: bool, seed: int) -> dict[str, Any]:
    """Warm-up steps, then timed steps; the losses of all of them and the timed throughput."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4,
                                  fused=device.type == "cuda")
    generator = torch.Generator().manual_seed(seed)
    model.train()
    losses: list[float] = []
    started = 0.0
    for step in range(preset.warmup_steps + preset.steps):
        if step == preset.warmup_steps:
            synchronize(device)
            started = time.perf_counter()
        batch = packed_batch(preset.tokens_per_step, preset.seq_len, preset.size.vocab_size, generator, device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())  # .item() waits for the step, as logging a loss would
    synchronize(device)
    seconds = time.perf_counter() - started
    return {"timed_seconds": round(seconds, 3), "tokens_per_second": preset.steps * preset.tokens_per_step / seconds,
            "losses": [round(loss, 4) for loss in losses]}


def preset_from(args: argparse.Namespace) -> Preset:
    """The chosen preset with any size given on the command line."""
    base = TINY if args.tiny else FULL
    return Preset(base.size, args.seq_len or base.seq_len, args.tokens_per_step or base.tokens_per_step,
                  args.steps or base.steps, base.warmup_steps if args.warmup_steps is None else args.warmup_steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="a few layers, short sequences, fp32: runs on a CPU")
    parser.add_argument("--steps", type=int, help="timed steps (default 20, tiny 6)")
    parser.add_argument("--warmup-steps", type=int, help="untimed steps first (default 3, tiny 1)")
    parser.add_argument("--seq-len", type=int, help="tokens per packed sequence (default 2048, tiny 64)")
    parser.add_argument("--tokens-per-step", type=int, help="tokens in each step's row (default 8192, tiny 256)")
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--liger", action="store_true", help="Liger kernels (needs the liger_kernel package)")
    parser.add_argument("--attention", default="auto", choices=["auto", "sdpa", "flash_attention_2", "eager"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "gpu_train.json")
    args = parser.parse_args()
    preset = preset_from(args)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    bf16 = device.type == "cuda" and not args.tiny
    if args.liger:
        if importlib.util.find_spec("liger_kernel") is None:
            parser.error("--liger needs the liger_kernel package (pip install liger-kernel)")
        from liger_kernel.transformers import apply_liger_kernel_to_llama
        apply_liger_kernel_to_llama()  # patches the Llama classes, so it must come before the model is built
    torch.manual_seed(args.seed)
    attention = attention_implementation(args.attention, device)
    model = build_model(preset.size, preset.seq_len, device, torch.bfloat16 if bf16 else torch.float32, attention,
                        args.lora_r, args.gradient_checkpointing)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    run = train(model, preset, device, bf16, args.seed)
    per_token = training_flops_per_token(model, context_length=preset.seq_len)
    peak = peak_flops(device)
    result = {
        "benchmark": "gpu_train",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": "bf16" if bf16 else "fp32",
        "attention": attention,
        "gradient_checkpointing": args.gradient_checkpointing,
        "liger": args.liger,
        **asdict(preset),
        "parameters": sum(p.numel() for p in model.parameters()),
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "flops_per_token": per_token,
        "tokens_per_second": round(run["tokens_per_second"], 2),
        "mfu": round(mfu(run["tokens_per_second"], per_token, peak), 4) if peak else None,
        "peak_memory_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None,
        "timed_seconds": run["timed_seconds"],
        "losses": run["losses"],
        "loss_at_init_expected": round(math.log(preset.size.vocab_size), 4),  # random ids: about ln(vocab)
    }
    print_table(f"GPU training benchmark ({'tiny, ' if args.tiny else ''}{result['device']}, {result['dtype']}, "
                f"{attention})", ["tokens_per_second", "mfu", "peak_memory_gib", "timed_seconds"],
                {f"LoRA r={args.lora_r}": result})
    write_json(args.out, result)


if __name__ == "__main__":
    main()
