"""Tiny models built offline: a base model as they are released before instruction tuning (a tokenizer with no chat
template and no chat tokens, only <|endoftext|>), optionally pretrained on the demo text so that fine-tuning has
something to build on; and the ChatML model most tests run, its tokenizer trained on the texts it will see."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

DEMO = Path(__file__).resolve().parents[1] / "data" / "demo"
# ChatML with a default system message, as Qwen's and SmolLM's templates have one.
CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def demo_texts(limit: int = 2000) -> list[str]:
    rows = map(json.loads, (DEMO / "train.jsonl").read_text(encoding="utf-8").splitlines()[:limit])
    return [r["prompt"] + " " + r["response"] for r in rows]


def pretrain(model: LlamaForCausalLM, stream: list[int], steps: int, lr: float, rows: int = 24,
             length: int = 64) -> float:
    """Plain language modelling on random windows of the token stream (texts one after another, as pretraining
    corpora are); returns the last loss."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    draw = torch.Generator().manual_seed(0)
    tokens = torch.tensor(stream)
    loss = float("nan")
    for _ in range(steps):
        starts = torch.randint(len(tokens) - length, (rows,), generator=draw)
        batch = torch.stack([tokens[start:start + length] for start in starts.tolist()])
        step = model(input_ids=batch, labels=batch).loss
        step.backward()
        optimizer.step()
        optimizer.zero_grad()
        loss = step.item()
    return loss


def build_bare_model(out: Path, tied: bool = True, pretrain_steps: int = 0, pretrain_lr: float = 1e-2) -> Path:
    """A 2-layer Llama with a 600-token BPE vocabulary trained on the demo text; no chat template."""
    texts = demo_texts()
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=600, special_tokens=["<|endoftext|>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                        unk_token="<|endoftext|>")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         tie_word_embeddings=tied)
    model = LlamaForCausalLM(config)
    if pretrain_steps:
        stream = [t for text in texts for t in tokenizer(text)["input_ids"] + [tokenizer.eos_token_id]]
        pretrain(model, stream, pretrain_steps, pretrain_lr)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def build_chat_model(out: Path, texts: list[str], max_positions: int = 512) -> Path:
    """A 2-layer Llama with ChatML and a 600-token BPE vocabulary trained on `texts`."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=600, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                        pad_token="<|im_end|>", unk_token="<|endoftext|>")
    tokenizer.chat_template = CHATML
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_positions,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
