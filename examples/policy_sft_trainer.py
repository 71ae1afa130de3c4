"""PolicySFTTrainer: TRL's SFTTrainer with a policy-weighted loss, one forward per step.

pip install 'onpolicy-sft[trl]'
python examples/policy_sft_trainer.py                       # a tiny local model, CPU
python examples/policy_sft_trainer.py Qwen/Qwen2.5-0.5B-Instruct
"""

import sys
import tempfile

import torch
from datasets import Dataset

from onpolicy_sft.integrations import PolicySFTConfig, PolicySFTTrainer
from onpolicy_sft.testing import build_tiny_model

model = sys.argv[1] if len(sys.argv) > 1 else str(build_tiny_model(tempfile.mkdtemp()))
data = Dataset.from_list(
    [
        {
            "prompt": [{"role": "user", "content": f"What is {a} + {b}?"}],
            "completion": [{"role": "assistant", "content": f"{a} + {b} = {a + b}"}],
        }
        for a in range(8)
        for b in range(8)
    ]
)
args = PolicySFTConfig(
    output_dir=tempfile.mkdtemp(),
    loss_scheme="dft",  # or sft, is, idft, pear (is/pear: a behavior_logprobs column)
    max_steps=10,
    logging_steps=5,
    bf16=torch.cuda.is_available(),
    use_cpu=not torch.cuda.is_available(),
)
trainer = PolicySFTTrainer(model=model, args=args, train_dataset=data)
trainer.train()
print("logged:", [(h["loss"], h["mean_weight"]) for h in trainer.state.log_history if "loss" in h])
