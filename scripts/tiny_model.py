"""A tiny random-weight Llama that vLLM can serve, made here because no model can be downloaded: run with
the vLLM tools' Python (it needs transformers, tokenizers and torch). Deterministic: the same bytes each time.

    .tools/vllm/venv/bin/python scripts/tiny_model.py DIR

2 layers, hidden size 128, 4 attention heads (head size 32: vLLM's CPU attention kernels need 32 or more; 16
fails on the first request), a byte-level BPE tokenizer trained on a few lines of text, and a chat template;
saved as safetensors (under 2 MB). It generates noise, which is all a throughput test needs.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

VOCABULARY = 512
CORPUS = [
    "An agent calls a tool, reads the answer and decides what to do next.",
    "Tokens per second is what an inference fleet sells; latency is how it feels.",
    "The quick brown fox jumps over the lazy dog. 0123456789 {}[]()<>:;,.!?'\"-_=+*/\\|@#$%^&~`",
]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def tokenizer() -> Any:
    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCABULARY,
        special_tokens=["<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(CORPUS * 20, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def main(directory: Path) -> None:
    torch.manual_seed(0)
    words = tokenizer()
    config = LlamaConfig(
        vocab_size=len(words),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=2048,
        bos_token_id=words.bos_token_id,
        eos_token_id=words.eos_token_id,
        pad_token_id=words.pad_token_id,
        torch_dtype="bfloat16",
    )
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory, safe_serialization=True)
    words.save_pretrained(directory)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
