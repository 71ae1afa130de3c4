"""Tiny, locally built models and tokenizers.

No model hub is reachable in tests or CI, so every model the tests (and the
demo's training script) use is built here from a transformers config and a
`tokenizers` byte-level BPE. Shapes respect vLLM's CPU backend (head dim >= 32).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

# ChatML, as Qwen2.5 uses it. `add_generation_prompt` opens the assistant turn.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


def build_tokenizer(
    corpus: Iterable[str] | None = None,
    *,
    vocab_size: int = 512,
    chat_template: str | None = CHAT_TEMPLATE,
) -> Any:
    """Return a ``PreTrainedTokenizerFast`` with byte-level BPE.

    Without ``corpus`` the vocabulary is the 256 bytes plus the specials (any
    text round-trips). With ``corpus`` a BPE of ``vocab_size`` is trained on
    it, which shortens sequences (the demo's model runs on a CPU).
    ``chat_template=None`` builds a tokenizer without one (for the plain
    prompt fallback).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    if corpus is None:
        vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
        for ch in alphabet:
            vocab[ch] = len(vocab)
        tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=list(SPECIAL_TOKENS),
            initial_alphabet=alphabet,
            show_progress=False,
        )
        tok.train_from_iterator(corpus, trainer=trainer)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        additional_special_tokens=["<|im_start|>"],
    )
    if chat_template is not None:
        fast.chat_template = chat_template
    return fast


def build_tiny_model(
    path: str | os.PathLike[str],
    *,
    arch: str = "qwen2",
    tokenizer: Any = None,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 2,
    num_kv_heads: int = 1,
    intermediate_size: int = 128,
    max_position_embeddings: int = 2048,
    tie_word_embeddings: bool = False,
    seed: int = 0,
    dtype: str = "float32",
) -> Path:
    """Build a randomly initialised causal LM + tokenizer and save both to ``path``.

    arch: "qwen2" or "llama". Head dim = hidden_size / num_heads (keep it >= 32
    for vLLM's CPU backend). Returns the directory.
    """
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    tokenizer = tokenizer if tokenizer is not None else build_tokenizer()
    common: dict[str, Any] = dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    if arch == "qwen2":
        config = Qwen2Config(**common)
    elif arch == "llama":
        config = LlamaConfig(**common)
    else:
        raise ValueError(f"arch={arch!r} is not supported; use 'qwen2' or 'llama'")
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def example_arguments(description: str) -> Any:
    """The flags the examples/ scripts share (``--model``, ``--scheme``, ``--steps``,
    ``--learning_rate``); without ``--model`` a tiny local model is built in a temp dir;
    ``workdir`` is where the script may write, ``training`` the training arguments."""
    import argparse
    import tempfile

    parser = argparse.ArgumentParser(description=description.splitlines()[0])
    parser.add_argument("--model", default=None, help="model dir or name (default: a tiny one)")
    parser.add_argument("--scheme", default="dft", choices=("sft", "dft", "idft"))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--learning_rate", "--learning-rate", type=float, default=3e-3)
    args = parser.parse_args()
    args.workdir = tempfile.mkdtemp(prefix="onpolicy_sft_example_")
    if args.model is None:
        args.model = str(build_tiny_model(f"{args.workdir}/tiny"))
    # what both examples give TrainingArguments / SFTConfig
    args.training = dict(
        output_dir=f"{args.workdir}/out",
        per_device_train_batch_size=4,
        learning_rate=args.learning_rate,
        max_steps=args.steps,
        lr_scheduler_type="constant",
        logging_steps=5,
        save_strategy="no",
        report_to=[],
    )
    return args


def report_example(scheme: str, loss_func: Any, trainer: Any) -> list[dict[str, Any]]:
    """Print the last step's PolicyLoss statistics and the logged losses; return the logs."""
    last = loss_func.last
    assert last is not None
    stats = {k: round(float(v), 4) for k, v in last.output.stats.items()}
    print(f"scheme={scheme}: final step stats {stats}")
    logs = [h for h in trainer.state.log_history if "loss" in h]
    print(f"logged losses: {[round(h['loss'], 4) for h in logs]}")
    return logs
