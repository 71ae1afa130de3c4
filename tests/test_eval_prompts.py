"""Evaluation as the papers' harness: prompt families (rendered text), auto choice, avg@k and acc."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from onpolicy_sft.prompts import SUFFIX, eval_prompt, resolve_prompt_type
from onpolicy_sft.testing import build_tokenizer

PROBLEM = "What is $7 + 5$?"


@pytest.fixture(scope="module")
def tok():
    t = build_tokenizer()
    t.bos_token = "<|im_start|>"  # any BOS, to see where the base families put it
    return t


@pytest.mark.parametrize(
    ("prompt_type", "text"),
    [
        pytest.param(
            "qwen-boxed",
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
            f"<|im_start|>user\n{PROBLEM}\n{SUFFIX}<|im_end|>\n<|im_start|>assistant\n",
            id="qwen-boxed",
        ),
        pytest.param(
            "llama-base", f"<|im_start|>Question: {PROBLEM}\n{SUFFIX}\nAnswer: ", id="llama-base"
        ),
        pytest.param(
            "llama-instruct",
            f"<|im_start|><|start_header_id|>user<|end_header_id|>\n\n{PROBLEM}\n{SUFFIX}"
            "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
            id="llama-instruct",
        ),
        pytest.param(
            "chat-template",
            f"<|im_start|>user\n{PROBLEM}\n{SUFFIX}<|im_end|>\n<|im_start|>assistant\n",
            id="chat-template",
        ),
    ],
)
def test_prompt_types_render_the_documented_text(tok, prompt_type, text):
    assert eval_prompt(tok, PROBLEM, prompt_type) == text


@pytest.mark.parametrize(
    ("model_type", "resolved"),
    [
        ("qwen2", "qwen-boxed"),
        ("Qwen3", "qwen-boxed"),
        ("llama", "chat-template"),
        (None, "chat-template"),
    ],
)
def test_auto_is_the_harness_family_for_qwen_models_only(model_type, resolved):
    assert resolve_prompt_type("auto", model_type) == resolved
    assert resolve_prompt_type("llama-base", model_type) == "llama-base"


def test_unknown_prompt_type_lists_the_types():
    from onpolicy_sft.config import ConfigError, EvalConfig

    with pytest.raises(ConfigError, match="'qwen-boxed', 'llama-base', 'llama-instruct'"):
        EvalConfig(model="m", output_dir="o", prompt_type="qwen")


class _Engine:
    """Answers every prompt with n samples whose first is wrong on problem p1 only."""

    def __init__(self, tokenizer, model_type):
        import types

        self.tokenizer = tokenizer
        self.model = types.SimpleNamespace(config=types.SimpleNamespace(model_type=model_type))
        self.prompts: list[str] = []

    def generate(self, prompts, *, n, **_):
        from onpolicy_sft.engines.base import Sample

        self.prompts += prompts
        out = []
        for p in prompts:
            right = "\\boxed{12}" if "7 + 5" in p else "\\boxed{4}"
            first = "\\boxed{0}" if "7 + 5" in p else right
            out.append([Sample(first, [1])] + [Sample(right, [1]) for _ in range(n - 1)])
        return out


def test_eval_reports_avg_at_k_and_first_sample_acc_labelled(tmp_path: Path):
    from onpolicy_sft.evaluate import evaluate

    bench = tmp_path / "b"
    bench.mkdir()
    (bench / "tiny.jsonl").write_text(
        json.dumps({"id": "p1", "problem": PROBLEM, "answer": "12"})
        + "\n"
        + json.dumps({"id": "p2", "problem": "What is 2 + 2?", "answer": "4"})
        + "\n"
    )
    eng = _Engine(build_tokenizer(), "qwen2")
    res = evaluate(
        model="m",
        output_dir=str(tmp_path / "o"),
        benchmarks="tiny",
        benchmark_dir=str(bench),
        n=4,
        engine=eng,
        verifier_fallback=None,
    )
    entry = res.results["benchmarks"]["tiny"]
    assert entry["avg@4"] == pytest.approx(100 * (3 / 4 + 4 / 4) / 2)
    assert entry["acc"] == pytest.approx(50.0)  # p1's first sample is wrong
    assert res.results["config"]["resolved_prompt_type"] == "qwen-boxed"
    assert eng.prompts[0].startswith("<|im_start|>system\nYou are a helpful assistant.")
    md = res.markdown
    assert "### avg@4 (%)" in md and "### acc (%): first sample" in md
    assert "prompt type qwen-boxed" in md and "math_equal" in md
