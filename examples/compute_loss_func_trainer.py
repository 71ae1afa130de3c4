"""Drop PolicyLoss into an existing transformers Trainer script via ``compute_loss_func``.

The script is an ordinary SFT setup -- a tokenizer, a causal LM, a dataset of
(prompt, response) pairs, a collator that puts ``-100`` on prompt tokens and
a ``transformers.Trainer`` -- with one line changed: the loss.

    python examples/compute_loss_func_trainer.py                # tiny local model, CPU
    python examples/compute_loss_func_trainer.py --model Qwen/Qwen2.5-0.5B --scheme dft

Schemes ``is`` and ``pear`` also need per-token behaviour log-probs in the
batch (``behavior_logprobs``, (B, T) aligned with ``labels``); see
``onpolicy_sft.training.Collator``. With TRL use ``PolicySFTTrainer``:
``examples/policy_sft_trainer.py``.
"""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

from onpolicy_sft.integrations import compute_loss_func
from onpolicy_sft.testing import example_arguments, report_example

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
    args = example_arguments(__doc__)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model)

    # The one line that differs from a plain SFT script:
    loss_func = compute_loss_func(args.scheme, model=model)

    trainer = Trainer(
        model=model,
        args=TrainingArguments(
            **args.training,  # output_dir, batch 4, learning_rate, max_steps, ...
        ),
        train_dataset=PairDataset(tokenizer, PAIRS),
        data_collator=lambda b: collate(b, tokenizer.pad_token_id),
        compute_loss_func=loss_func,
    )
    trainer.train()
    report_example(args.scheme, loss_func, trainer)


if __name__ == "__main__":
    main()
