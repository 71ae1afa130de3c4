"""Drop PolicyLoss into an existing transformers Trainer script via ``compute_loss_func``.

The script is an ordinary SFT setup -- a tokenizer, a causal LM, a dataset of
(prompt, response) pairs, a collator that puts ``-100`` on prompt tokens and
a ``transformers.Trainer`` -- with one line changed: the loss.

    python examples/compute_loss_func_trainer.py                # tiny local model, CPU
    python examples/compute_loss_func_trainer.py --model Qwen/Qwen2.5-0.5B --scheme dft

Schemes ``is`` and ``pear`` also need per-token behaviour log-probs in the
batch (``behavior_logprobs``, (B, T) aligned with ``labels``); see
``onpolicy_sft.training.Collator``. For TRL's ``SFTTrainer`` see
``examples/compute_loss_func_sft_trainer.py``.
"""

from __future__ import annotations

import argparse
import tempfile

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

from onpolicy_sft.integrations import compute_loss_func

PAIRS = [(f"What is {a} + {b}?", f"{a} + {b} = {a + b}. \\boxed{{{a + b}}}") for a, b in
         [(2, 3), (7, 5), (11, 4), (6, 9), (13, 8), (3, 14), (21, 5), (9, 9)]]  # fmt: skip


class PairDataset(torch.utils.data.Dataset):
    """(prompt, response) -> input_ids + labels (-100 on the prompt, EOS on the response)."""

    def __init__(self, tokenizer, pairs):
        self.items = []
        for problem, answer in pairs:
            prompt = tokenizer.apply_chat_template(
                [{"role": "user", "content": problem}], tokenize=False, add_generation_prompt=True
            )
            p = tokenizer(prompt, add_special_tokens=False).input_ids
            r = [*tokenizer(answer, add_special_tokens=False).input_ids, tokenizer.eos_token_id]
            self.items.append({"input_ids": p + r, "labels": [-100] * len(p) + r})

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def collate(batch, pad_id):
    width = max(len(x["input_ids"]) for x in batch)
    ids = torch.full((len(batch), width), pad_id)
    labels = torch.full((len(batch), width), -100)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, x in enumerate(batch):
        n = len(x["input_ids"])
        ids[i, :n] = torch.tensor(x["input_ids"])
        labels[i, :n] = torch.tensor(x["labels"])
        mask[i, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default=None, help="model dir or name (default: a tiny local one)"
    )
    parser.add_argument("--scheme", default="dft", choices=("sft", "dft", "idft"))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--lr", type=float, default=3e-3)
    args = parser.parse_args()

    workdir = tempfile.mkdtemp(prefix="onpolicy_sft_example_")
    model_path = args.model
    if model_path is None:
        from onpolicy_sft.testing import build_tiny_model

        model_path = str(build_tiny_model(f"{workdir}/tiny"))
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path)

    # The one line that differs from a plain SFT script:
    loss_func = compute_loss_func(args.scheme, model=model)

    trainer = Trainer(
        model=model,
        args=TrainingArguments(
            output_dir=f"{workdir}/out",
            per_device_train_batch_size=4,
            gradient_accumulation_steps=1,
            learning_rate=args.lr,
            max_steps=args.steps,
            lr_scheduler_type="constant",
            logging_steps=5,
            save_strategy="no",
            report_to=[],
        ),
        train_dataset=PairDataset(tokenizer, PAIRS),
        data_collator=lambda b: collate(b, tokenizer.pad_token_id),
        compute_loss_func=loss_func,
    )
    trainer.train()
    last = loss_func.last
    assert last is not None
    stats = {k: round(float(v), 4) for k, v in last.output.stats.items()}
    print(f"scheme={args.scheme}: final step stats {stats}")
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    print(f"logged losses: {[round(x, 4) for x in losses]}")


if __name__ == "__main__":
    main()
