"""The sources' training recipes (--recipe mtg|dft|idft), the per-micro-batch normaliser, the
IDFT exponent schedule and p clamp, and the expert-row rule of `is`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from onpolicy_sft.config import ConfigError, LossConfig, TrainConfig
from onpolicy_sft.recipes import RECIPES, load_recipe
from onpolicy_sft.training import resolve

PATHS = {"model": "m", "dataset": "d.jsonl", "output_dir": "o"}

# what each recipe must resolve to (docs/methods.md, "Training recipes of the sources")
VERL = {
    "learning_rate": 5e-5,
    "adam_beta1": 0.9,
    "adam_beta2": 0.95,
    "weight_decay": 0.01,
    "bf16": True,
    "per_device_train_batch_size": 4,
    "gradient_accumulation_steps": 64,  # 256 sequences on one device
    "num_train_epochs": 1.0,
    "lr_scheduler_type": "cosine",
    "max_grad_norm": 1.0,
}
EXPECTED = {
    "mtg": ({"scheme": "dft", "max_length": 2048, "global_batch_size": 256}, VERL),
    "dft": ({"scheme": "dft", "max_length": 2048, "global_batch_size": 256}, VERL),
    "idft": (
        {"scheme": "idft", "max_length": 4096, "global_batch_size": 128},
        {**VERL, "learning_rate": 6e-5, "gradient_accumulation_steps": 32, "num_train_epochs": 3.0},
    ),
}


@pytest.mark.parametrize("name", RECIPES)
def test_each_recipe_resolves_to_the_sources_settings(name):
    cfg, args = resolve(recipe=name, **PATHS)
    ours, hf = EXPECTED[name]
    assert cfg.loss.scheme == ours["scheme"] and cfg.max_length == ours["max_length"]
    assert cfg.global_batch_size == ours["global_batch_size"]
    assert cfg.loss.normalize == "micro_batch"  # verl's normaliser
    assert cfg.prompt_field == "problem"  # chat template over the raw question, no suffix
    assert cfg.model_dtype == "bfloat16" and cfg.warmup_ratio == 0.1
    for key, value in hf.items():
        got = getattr(args, key)
        assert (getattr(got, "value", got)) == value, key
    if name == "idft":
        assert (cfg.loss.idft_warmup_ratio, cfg.loss.idft_transition_ratio) == (0.0, 0.0)
        assert cfg.loss.idft_gamma == (0.1, 2.0) and not cfg.loss.idft_ramped


def test_flags_override_a_recipe_field_by_field():
    cfg, args = resolve(
        recipe="mtg", learning_rate=1e-5, per_device_train_batch_size=8, scheme="sft", **PATHS
    )
    assert args.learning_rate == 1e-5 and cfg.loss.scheme == "sft"
    assert args.gradient_accumulation_steps == 32  # 256 / 8: the global batch stays
    assert args.adam_beta2 == 0.95 and cfg.max_length == 2048  # the rest stays


def test_the_cli_takes_recipe_then_config_file_then_flags(tmp_path):
    from onpolicy_sft.commands import parse

    extra = tmp_path / "extra.yaml"
    extra.write_text("max_length: 1024\nweight_decay: 0.0\n")
    argv = ["--recipe", "idft", "--model", "m", "--dataset", "d", "--output_dir", "o"]
    options = parse("train", [*argv, "--config", str(extra), "--weight_decay", "0.05"])
    cfg, args = resolve(**options)
    assert cfg.recipe == "idft" and cfg.loss.scheme == "idft"
    assert cfg.max_length == 1024  # the file over the recipe
    assert args.weight_decay == 0.05  # the flag over the file
    assert args.learning_rate == 6e-5  # the recipe where nothing else says


def test_unknown_recipe_lists_the_recipes(capsys):
    from onpolicy_sft.cli import main

    rc = main(["train", "--recipe", "verl", "--model", "m", "--dataset", "d", "--output_dir", "o"])
    err = capsys.readouterr().err
    assert rc == 2 and all(r in err for r in RECIPES), err
    with pytest.raises(ValueError, match="unknown recipe 'verl'; the recipes are dft, idft, mtg"):
        load_recipe("verl")


def test_global_batch_that_does_not_divide_is_an_error():
    with pytest.raises(ConfigError, match="not a multiple of per_device_train_batch_size"):
        resolve(recipe="dft", per_device_train_batch_size=3, **PATHS)
    with pytest.raises(ConfigError, match="contradicts global_batch_size"):
        resolve(recipe="dft", gradient_accumulation_steps=2, **PATHS)


# ------------------------------------------------------------------ normaliser


def _micro_batches(tok):
    """Two micro-batches of one sequence each, with 3 and 9 supervised tokens."""
    import numpy as np

    from onpolicy_sft.training import Collator, Example

    out = []
    for prompt, resp in (("2+2?", "4."), ("Say more:", "a b c d.")):
        p = tok(prompt, add_special_tokens=False)["input_ids"]
        r = tok(resp, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        ids = np.asarray(p + r, np.int32)
        labels = np.asarray([-100] * len(p) + r, np.int32)
        out.append(Collator(pad_token_id=tok.pad_token_id)([Example(ids, labels)]))
    return out


@pytest.mark.parametrize("normalize", ["micro_batch", "tokens"])
def test_normaliser_gradient_equals_the_hand_computation(tiny_qwen2, tmp_path, normalize):
    """Two accumulated micro-batches through PolicyTrainer.training_step: micro_batch gives
    the gradient of (L1/n1 + L2/n2)/2, tokens that of (L1 + L2)/(n1 + n2)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from onpolicy_sft.losses import PolicyLoss
    from onpolicy_sft.training import PolicyTrainer, training_arguments

    tok = AutoTokenizer.from_pretrained(tiny_qwen2)
    batches = _micro_batches(tok)
    counts = [int((b["labels"] != -100).sum()) for b in batches]
    assert counts[0] != counts[1]
    model = AutoModelForCausalLM.from_pretrained(tiny_qwen2)
    cfg = TrainConfig(model=str(tiny_qwen2), dataset="d", loss=LossConfig(normalize=normalize))
    args = training_arguments(
        cfg,
        output_dir=str(tmp_path),
        per_device_train_batch_size=1,
        gradient_accumulation_steps=2,
        use_cpu=True,
    )
    trainer = PolicyTrainer(model=model, args=args, loss_fn=PolicyLoss(cfg.loss))
    trainer.current_gradient_accumulation_steps = 2
    model.zero_grad()
    for b in batches:
        trainer.training_step(model, dict(b), num_items_in_batch=torch.tensor(sum(counts)))
    ours = [p.grad.clone() for p in model.parameters()]
    trainer.loss_head.remove()

    # by hand: token NLL sums of each micro-batch from the plain model
    model.zero_grad()
    sums = []
    for b in batches:
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        lp = torch.log_softmax(logits[0, :-1].float(), -1)
        y = b["labels"][0, 1:]
        m = y != -100
        sums.append(-lp[m].gather(1, y[m][:, None]).sum())
    if normalize == "micro_batch":
        hand = (sums[0] / counts[0] + sums[1] / counts[1]) / 2
    else:
        hand = (sums[0] + sums[1]) / sum(counts)
    hand.backward()
    for g, p in zip(ours, model.parameters()):
        torch.testing.assert_close(g, p.grad, atol=1e-6, rtol=1e-4)


# ------------------------------------------------------------------ IDFT


def test_idft_lambda_schedule_is_the_authors():
    cfg = LossConfig(scheme="idft", idft_warmup_ratio=0.2, idft_transition_ratio=0.1)
    got = [cfg.idft_lambda_at(p) for p in (0.0, 0.19, 0.2, 0.25, 0.3, 0.9)]
    assert got == pytest.approx([0.0, 0.0, 0.0, 0.5, 1.0, 1.0])
    assert cfg.idft_ramped and not LossConfig(scheme="idft").idft_ramped
    with pytest.raises(ConfigError, match="must be <= 1"):
        LossConfig(scheme="idft", idft_warmup_ratio=0.8, idft_transition_ratio=0.5)


def _case(v=32, n=6, h=8):
    torch.manual_seed(0)
    hidden, weight = torch.randn(n, h), torch.randn(v, h)
    labels = torch.randint(0, v, (n,))
    # token 2's label gets p < 1e-10: below the authors' clamp
    weight[labels[2]] = -40.0 * hidden[2] / hidden[2].norm() ** 2
    return hidden.double(), weight.double(), labels


@pytest.mark.parametrize("lam", [0.0, 0.5, 1.0])
def test_idft_ramp_and_clamp_match_the_reference_and_the_formula(lam):
    from onpolicy_sft.kernels.reference import policy_loss_reference
    from onpolicy_sft.losses import PolicyLoss

    hidden, weight, labels = _case()
    h1, w1 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    out = PolicyLoss(scheme="idft", idft_lambda=lam, backend="torch")(h1, w1, labels)
    out.loss.backward()
    h2, w2 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    ref = policy_loss_reference(h2, w2, labels, scheme="idft", idft_lambda=lam)
    ref.loss.backward()
    torch.testing.assert_close(out.loss.double(), ref.loss, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(h1.grad, h2.grad, atol=1e-6, rtol=1e-5)
    # the formula: gamma_t = 1 + lambda (clip(exp(-phi / beta)) - 1), w = p^gamma, 0 below 1e-10
    logits = hidden @ weight.T
    logp = torch.log_softmax(logits, -1)
    lp = logp.gather(1, labels[:, None])[:, 0]
    ent = -(logp.exp() * logp).sum(-1)
    gamma = 1 + lam * (torch.exp(-(lp + ent)).clamp(0.1, 2.0) - 1)
    want = torch.where(lp >= math.log(1e-10), torch.exp(gamma * lp), torch.zeros_like(lp))
    assert lp[2] < math.log(1e-10)
    torch.testing.assert_close(out.weights.double(), want, atol=1e-6, rtol=1e-5)
    if lam == 0.0:  # no ramp yet: the DFT weight
        torch.testing.assert_close(out.weights[[0, 1, 3]].double(), lp[[0, 1, 3]].exp())


def test_trainer_ramps_idft_lambda_over_the_steps(tiny_qwen2, tmp_path):
    from onpolicy_sft.training import train

    rows = [{"prompt": f"{i}+1?", "response": f"{i + 1}"} for i in range(4)]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = train(
        model=str(tiny_qwen2),
        dataset=str(data),
        output_dir=str(tmp_path / "o"),
        scheme="idft",
        idft_warmup_ratio=0.5,
        idft_transition_ratio=0.5,
        max_steps=4,
        per_device_train_batch_size=1,
        gradient_accumulation_steps=1,
        logging_steps=1,
        learning_rate=1e-4,
        save_strategy="no",
    )
    lams = [h["idft_lambda"] for h in res.log_history if "idft_lambda" in h]
    # progress = steps done / 4 at each step: 0, .25, .5, .75 -> lambda 0, 0, 0, .5
    assert lams == pytest.approx([0.0, 0.0, 0.0, 0.5])


# ------------------------------------------------------------------ is: expert rows


def _is_rows(tmp_path: Path, tier: str) -> str:
    rows = [
        {"prompt": "1+1?", "response": "2", "tier": "expert", "behavior_logprobs": None},
        {"prompt": "2+2?", "response": "4", "tier": tier, "behavior_logprobs": None},
    ]
    path = tmp_path / f"{tier}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_is_refuses_a_sampled_row_without_behaviour_logprobs(tiny_qwen2, tmp_path):
    from transformers import AutoTokenizer

    from onpolicy_sft.training import build_examples, read_data

    tok = AutoTokenizer.from_pretrained(tiny_qwen2)
    cfg = TrainConfig(model="m", dataset="d", loss=LossConfig(scheme="is"))
    with pytest.raises(ValueError, match=r"row 2 has no behaviour log-probs .*tier 'guided'"):
        build_examples(read_data(_is_rows(tmp_path, "guided")), tok, cfg)
    # expert rows keep the convention (blogp = 0, the DFT weight), counted
    examples, stats = build_examples(read_data(_is_rows(tmp_path, "expert")), tok, cfg)
    assert len(examples) == 2 and stats.zero_behavior == 2
    # NaN on the supervised tokens marks "no behaviour log-probs": the loss reads blogp = 0
    for e in examples:
        sup = e.labels != -100
        assert np.isnan(e.behavior[sup]).all() and (e.behavior[~sup] == 0).all()
    # and --missing_behavior zero opts every row into it
    zero = TrainConfig(
        model="m", dataset="d", loss=LossConfig(scheme="is", missing_behavior="zero")
    )
    _, stats = build_examples(read_data(_is_rows(tmp_path, "guided")), tok, zero)
    assert stats.zero_behavior == 2
