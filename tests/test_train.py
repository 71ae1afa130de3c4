"""Trainer: every scheme learns, resuming reproduces, data shaping is exact (tiny CPU models)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from _helpers import train_opts

from onpolicy_sft.config import ConfigError, LossConfig, TrainConfig
from onpolicy_sft.training import (
    Collator,
    build_examples,
    pack_examples,
    read_data,
    resolve,
    train,
)

N_ROWS = 8


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _behavior_logprobs(model_dir: Path, prompt_ids: list[int], resp_ids: list[int]) -> list[float]:
    """log pi_0(y_t | x, y_<t) under the initial model: on-policy behaviour log-probs."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    ids = torch.tensor([prompt_ids + resp_ids])
    with torch.no_grad():
        logits = model(ids).logits[0].float()
    lp = torch.log_softmax(logits[len(prompt_ids) - 1 : -1], dim=-1)
    return lp.gather(1, torch.tensor(resp_ids)[:, None])[:, 0].tolist()


def make_data(model_dir: Path, out: Path, *, n: int = N_ROWS, expert_rows: int = 0) -> Path:
    """A rewrite-style data.parquet: templated prompt, response token ids (EOS), blogp."""
    from transformers import AutoTokenizer

    from onpolicy_sft.prompts import train_prompt

    tok = AutoTokenizer.from_pretrained(model_dir)
    rows = []
    for i in range(n):
        a, b = 3 + i, 11 + 2 * i
        problem = f"{a}+{b}?"
        prompt = train_prompt(tok, problem)
        response = f"{a}+{b}={a + b}. \\boxed{{{a + b}}}"
        resp_ids = [*tok(response, add_special_tokens=False).input_ids, tok.eos_token_id]
        expert = i < expert_rows
        blp = (
            None
            if expert
            else _behavior_logprobs(
                model_dir, tok(prompt, add_special_tokens=False).input_ids, resp_ids
            )
        )
        rows.append(
            {
                "problem_id": f"p{i}",
                "problem": problem,
                "prompt": prompt,
                "response": response,
                "response_token_ids": resp_ids,
                "tier": "expert" if expert else "self",
                "behavior_logprobs": blp,
                "base_logprobs": blp,
                "answer": str(a + b),
                "verdict": None if expert else True,
                "reason": "",
            }
        )
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), out / "data.parquet")
    return out


@pytest.fixture(scope="module")
def data_dir(tiny_qwen2: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_data(tiny_qwen2, tmp_path_factory.mktemp("train_data"))


def _cfg(model: Path, data: Path, out: Path, **kw: Any) -> TrainConfig:
    return resolve(**train_opts(model, data, out, **kw))[0]


def _losses(history: list[dict[str, Any]], key: str = "loss") -> dict[int, float]:
    return {h["step"]: h[key] for h in history if key in h and "train_runtime" not in h}


def _params(model_dir: str | Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(Path(model_dir) / "model.safetensors"))


SCHEMES = [
    pytest.param({"scheme": "sft"}, id="sft"),
    pytest.param({"scheme": "dft"}, id="dft"),
    pytest.param({"scheme": "is"}, id="is-token"),
    pytest.param({"scheme": "is", "level": "sequence"}, id="is-sequence"),
    pytest.param({"scheme": "idft"}, id="idft"),
    pytest.param({"scheme": "pear"}, id="pear-token"),
    pytest.param({"scheme": "pear", "level": "block", "pear_block": 4}, id="pear-block4"),
    pytest.param({"scheme": "sft", "normalize": "sequence"}, id="sft-per-sequence"),
]


@pytest.mark.parametrize("scheme", SCHEMES)
def test_each_scheme_fits_the_data_in_30_steps(
    scheme: dict[str, Any], tiny_qwen2: Path, data_dir: Path, tmp_path: Path
) -> None:
    res = train(**train_opts(tiny_qwen2, data_dir, tmp_path / "out", **scheme))
    assert res.global_step == 30
    nll = _losses(res.log_history, "nll")
    assert sorted(nll) == list(range(1, 31))
    first = sum(nll[s] for s in (1, 2, 3)) / 3
    last = sum(nll[s] for s in (28, 29, 30)) / 3
    # -log p of the training responses must fall clearly (random init: ~log V = 5.6)
    assert last < first - 0.3, (first, last)
    for key in ("loss", "mean_weight", "ess_fraction", "clipped_fraction", "mean_entropy"):
        assert all(math.isfinite(h[key]) for h in res.log_history if "nll" in h), key
    assert all("learning_rate" in h for h in res.log_history if "nll" in h)
    before, after = _params(tiny_qwen2), _params(res.out)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) >= len(before) - 1, sorted(set(before) - set(changed))
    if scheme == {"scheme": "sft"}:
        loss = _losses(res.log_history)
        assert loss[30] < loss[1] - 0.3  # sft: the logged loss is the nll itself
        assert all(h["mean_weight"] == pytest.approx(1.0) for h in res.log_history if "nll" in h)


def test_resume_reproduces_the_losses_of_an_uninterrupted_run(
    tiny_qwen2: Path, data_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    cfg = train_opts(
        tiny_qwen2,
        data_dir,
        out,
        scheme="is",
        max_steps=8,
        save_steps=4,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
    )
    full = _losses(train(**cfg).log_history)
    assert (out / "checkpoint-4" / "train_config.json").is_file()
    saved = json.loads((out / "checkpoint-4" / "train_config.json").read_text())
    assert saved["loss"]["scheme"] == "is"
    assert saved["training_args"]["per_device_train_batch_size"] == 2
    resumed = _losses(train(**cfg, resume_from_checkpoint=str(out / "checkpoint-4")).log_history)
    for step in range(5, 9):
        assert resumed[step] == pytest.approx(full[step], rel=1e-5, abs=1e-7), step
    # "latest" picks the newest checkpoint in output_dir (checkpoint-8: its
    # history covers steps 1-8, and training continues at 9)
    again = _losses(train(**{**cfg, "max_steps": 10}, resume_from_checkpoint="latest").log_history)
    assert sorted(again) == list(range(1, 11))
    assert again[8] == pytest.approx(full[8], rel=1e-5)
    # a checkpoint is only resumed with the settings that wrote it
    with pytest.raises(ValueError, match=r"scheme: checkpoint 'is', now 'dft'"):
        train(**{**cfg, "max_steps": 12, "scheme": "dft"}, resume_from_checkpoint="true")


def test_gradient_accumulation_equals_one_big_batch(
    tiny_qwen2: Path, data_dir: Path, tmp_path: Path
) -> None:
    runs = {}
    for normalize in ("tokens", "sequence"):
        for micro in (4, 1):
            res = train(
                **train_opts(
                    tiny_qwen2,
                    data_dir,
                    tmp_path / f"{normalize}{micro}",
                    scheme="dft",
                    normalize=normalize,
                    per_device_train_batch_size=micro,
                    gradient_accumulation_steps=4 // micro,
                    max_steps=2,
                )
            )
            runs[normalize, micro] = (_losses(res.log_history), _params(res.out))
        (l4, p4), (l1, p1) = runs[normalize, 4], runs[normalize, 1]
        assert l1[1] == pytest.approx(l4[1], rel=1e-5)
        assert l1[2] == pytest.approx(l4[2], rel=1e-4)
        for k in p4:
            torch.testing.assert_close(p1[k], p4[k], rtol=1e-4, atol=1e-6)
    # the two normalisations differ (rows have different lengths), so both were exercised
    assert runs["tokens", 4][0][1] != pytest.approx(runs["sequence", 4][0][1], rel=1e-6)


def test_a_truncated_newest_checkpoint_is_set_aside_and_the_newest_whole_one_resumed(
    tiny_qwen2: Path, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    opts = train_opts(tiny_qwen2, data_dir, out, max_steps=4, save_steps=2)
    full = _losses(train(**opts).log_history)
    # a rerun into a used output_dir needs --resume_from_checkpoint or --overwrite_output_dir
    with pytest.raises(FileExistsError, match=r"holds an earlier training run \(checkpoint-4, "):
        train(**opts)
    weights = out / "checkpoint-4" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # killed mid-save
    capsys.readouterr()
    resumed = train(**opts, resume_from_checkpoint="latest")
    err = capsys.readouterr().err
    assert f"{out / 'checkpoint-4'} cannot be resumed (model.safetensors is truncated" in err
    assert "moved it to checkpoint-4.damaged and resuming from checkpoint-2" in err
    assert resumed.global_step == 4
    assert _losses(resumed.log_history)[4] == pytest.approx(full[4], rel=1e-5)
    assert (out / "checkpoint-4.damaged").is_dir() and (out / "checkpoint-4").is_dir()
    # --overwrite_output_dir starts afresh: the earlier run's checkpoints are removed first
    again = train(**{**opts, "max_steps": 2}, overwrite_output_dir=True)
    assert again.global_step == 2
    assert sorted(p.name for p in out.glob("checkpoint-*")) == [
        "checkpoint-2",
        "checkpoint-4.damaged",
    ]


def test_cli_trains_and_saves_the_resolved_config_next_to_the_weights(
    tiny_qwen2: Path, data_dir: Path, tmp_path: Path
) -> None:
    from onpolicy_sft.cli import main

    out = tmp_path / "cli"
    argv = ["train", "--model", str(tiny_qwen2), "--dataset", str(data_dir)]
    argv += ["--output_dir", str(out), "--scheme", "pear", "--pear-gamma", "0.99"]
    argv += ["--clip", "0", "3", "--max_steps", "2", "--per_device_train_batch_size", "2"]
    argv += ["--gradient_accumulation_steps", "2", "--save_steps", "1"]
    argv += ["--packing", "--max_length", "256", "--learning_rate", "1e-3"]
    assert main(argv) == 0
    cfg = TrainConfig.load(out / "train_config.json")
    loss = cfg.loss
    assert (loss.scheme, loss.pear_gamma, loss.clip, cfg.packing) == ("pear", 0.99, (0, 3), True)
    assert cfg.max_length == 256 and cfg.warmup_ratio == 0.1  # default kept
    saved = json.loads((out / "train_config.json").read_text())
    assert saved["training_args"]["learning_rate"] == 1e-3
    assert (out / "model.safetensors").is_file() and (out / "tokenizer_config.json").is_file()
    assert (out / "checkpoint-2" / "train_config.json").is_file()
    stats = json.loads((out / "data_stats.json").read_text())
    assert stats["used"] == N_ROWS and stats["packed_rows"] >= 1
    # bad flags are reported, not raised
    assert main([*argv[:7], "--scheme", "dft", "--level", "sequence"]) == 2


# ------------------------------------------------------------------ data shaping


def _tok(model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def test_tokenisation_puts_the_loss_on_response_tokens_and_eos(
    tiny_qwen2: Path, data_dir: Path
) -> None:
    tok = _tok(tiny_qwen2)
    cols = read_data(str(data_dir))
    cfg = _cfg(tiny_qwen2, data_dir, data_dir / "unused", scheme="is")
    examples, stats = build_examples(cols, tok, cfg)
    assert stats.used == N_ROWS and stats.tiers == {"self": N_ROWS}
    for i, ex in enumerate(examples):
        prompt_ids = tok(cols["prompt"][i], add_special_tokens=False).input_ids
        resp = cols["response_token_ids"][i]
        assert ex.input_ids.tolist() == prompt_ids + list(resp)
        assert ex.labels.tolist() == [-100] * len(prompt_ids) + list(resp)
        assert ex.labels[-1] == tok.eos_token_id
        assert ex.behavior is not None
        assert ex.behavior[len(prompt_ids) :] == pytest.approx(cols["behavior_logprobs"][i])
        assert not ex.behavior[: len(prompt_ids)].any()


def test_plain_dataset_is_templated_and_gets_eos(tiny_qwen2: Path, tmp_path: Path) -> None:
    from onpolicy_sft.prompts import train_prompt

    tok = _tok(tiny_qwen2)
    path = tmp_path / "plain.jsonl"
    path.write_text(
        json.dumps({"question": "1+1?", "solution": "2. \\boxed{2}"}) + "\n", encoding="utf-8"
    )
    cfg = _cfg(
        tiny_qwen2, path, tmp_path / "o", problem_field="question", response_field="solution"
    )
    (ex,), _ = build_examples(read_data(str(path)), tok, cfg)
    p = tok(train_prompt(tok, "1+1?"), add_special_tokens=False).input_ids
    r = tok("2. \\boxed{2}", add_special_tokens=False).input_ids
    assert ex.input_ids.tolist() == [*p, *r, tok.eos_token_id]
    assert ex.labels.tolist() == [-100] * len(p) + r + [tok.eos_token_id]


def _one_row(tiny_qwen2: Path, tmp_path: Path, **row: Any) -> Path:
    tok = _tok(tiny_qwen2)
    base = {
        "problem_id": "x7",
        "prompt": "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n",
        "response_token_ids": [*tok("abcdefgh", add_special_tokens=False).input_ids, 2],
        "behavior_logprobs": [-0.5] * 9,
        "tier": "self",
    }
    bad = {**base, **row}
    path = tmp_path / "one.jsonl"
    path.write_text(
        json.dumps({**base, "problem_id": "ok"}) + "\n" + json.dumps(bad) + "\n",
        encoding="utf-8",
    )
    return path


def test_behaviour_length_mismatch_names_the_row(tiny_qwen2: Path, tmp_path: Path) -> None:
    good = _one_row(tiny_qwen2, tmp_path)
    cols = {k: list(v) for k, v in read_data(str(good)).items()}
    cols["behavior_logprobs"][1] = [-0.5] * 8  # one short
    with pytest.raises(ValueError, match=r"row 2 \(problem_id 'x7'\).*8 values.*9 tokens"):
        build_examples(cols, _tok(tiny_qwen2), _cfg(tiny_qwen2, good, tmp_path, scheme="is"))
    # schemes that do not use behaviour log-probs do not look at them
    examples, _ = build_examples(cols, _tok(tiny_qwen2), _cfg(tiny_qwen2, good, tmp_path))
    assert len(examples) == 2


@pytest.mark.parametrize(
    ("overlong", "max_length", "used", "truncated", "dropped"),
    [
        pytest.param("truncate", 25, 2, 2, 0, id="truncate"),
        pytest.param("drop", 25, 0, 0, 2, id="drop"),
        pytest.param("truncate", 10, 0, 0, 2, id="prompt-alone-too-long"),
        pytest.param("drop", 4096, 2, 0, 0, id="fits"),
    ],
)
def test_overlong_rows_are_counted_and_truncated_or_dropped(
    tiny_qwen2: Path,
    tmp_path: Path,
    overlong: str,
    max_length: int,
    used: int,
    truncated: int,
    dropped: int,
) -> None:
    path = _one_row(tiny_qwen2, tmp_path)
    cfg = _cfg(tiny_qwen2, path, tmp_path, scheme="is", overlong=overlong, max_length=max_length)
    examples, stats = build_examples(read_data(str(path)), _tok(tiny_qwen2), cfg)
    assert (stats.used, stats.truncated) == (used, truncated)
    assert stats.dropped_overlong + stats.dropped_prompt_too_long == dropped
    for ex in examples:
        assert len(ex.input_ids) <= max_length
        assert ex.behavior is not None and len(ex.behavior) == len(ex.input_ids)


@pytest.mark.parametrize(
    ("loss", "missing", "outcome"),
    [
        pytest.param("is", "auto", "zero", id="is-auto-uses-blogp-0-for-expert-rows"),
        pytest.param("is", "auto", "error-not-expert", id="is-auto-refuses-other-rows"),
        pytest.param("pear", "auto", "error", id="pear-auto-refuses"),
        pytest.param("pear", "zero", "zero", id="pear-opt-in-zero"),
        pytest.param("is", "drop", "drop", id="is-drop"),
        pytest.param("is", "error", "error", id="is-error"),
    ],
)
def test_rows_without_behaviour_logprobs(
    tiny_qwen2: Path, tmp_path: Path, loss: str, missing: str, outcome: str
) -> None:
    tier = "self" if outcome == "error-not-expert" else "expert"
    path = _one_row(tiny_qwen2, tmp_path, behavior_logprobs=None, tier=tier)
    cfg = _cfg(tiny_qwen2, path, tmp_path, scheme=loss, missing_behavior=missing)
    cols = read_data(str(path))
    if outcome == "error-not-expert":
        with pytest.raises(ValueError, match=r"row 2 .*tier 'self'.*only 'expert' rows may lack"):
            build_examples(cols, _tok(tiny_qwen2), cfg)
        return
    if outcome == "error":
        with pytest.raises(ValueError, match=r"row 2 \(problem_id 'x7'\).*--missing_behavior"):
            build_examples(cols, _tok(tiny_qwen2), cfg)
        return
    examples, stats = build_examples(cols, _tok(tiny_qwen2), cfg)
    if outcome == "drop":
        assert (stats.used, stats.dropped_no_behavior) == (1, 1)
    else:
        assert (stats.used, stats.zero_behavior) == (2, 1)
        import numpy as np

        # the response's values are the explicit NaN (PolicyLoss: 0, counted); the prompt's 0
        b, lab = examples[1].behavior, examples[1].labels
        assert b is not None and np.isnan(b[lab != -100]).all() and (b[lab == -100] == 0).all()


def test_config_reports_every_problem_at_once() -> None:
    with pytest.raises(ConfigError) as err:
        LossConfig(scheme="ppo", level="block")
    msg = str(err.value)
    assert "2 problem(s)" in msg and "'ppo'" in msg and "level='block'" in msg
    with pytest.raises(ConfigError, match="max_length=1 must be >= 2"):
        TrainConfig(model="m", dataset="d", max_length=1)


# ------------------------------------------------------------------ packing


@pytest.mark.parametrize("loss", ["sft", "pear", "is-sequence"])
def test_packed_rows_give_the_same_loss_and_gradient_as_padded_rows(
    loss: str, tiny_qwen2: Path, data_dir: Path
) -> None:
    from transformers import AutoModelForCausalLM

    from onpolicy_sft.integrations import LossHead
    from onpolicy_sft.losses import PolicyLoss

    level = "sequence" if loss == "is-sequence" else "token"
    scheme = loss.split("-")[0]
    tok = _tok(tiny_qwen2)
    cfg = _cfg(tiny_qwen2, data_dir, data_dir, scheme=scheme, level=level)
    examples, _ = build_examples(read_data(str(data_dir)), tok, cfg)
    examples = examples[:4]
    collate = Collator(pad_token_id=tok.pad_token_id, with_behavior=scheme != "sft")
    padded = collate(examples)
    packed_rows = pack_examples(examples, max_length=4096, seed=0)
    assert len(packed_rows) == 1
    packed = collate(packed_rows)
    assert "attention_mask" not in packed and packed["seq_ids"].max() == 3

    model = AutoModelForCausalLM.from_pretrained(tiny_qwen2)
    head = LossHead.install(model, PolicyLoss(scheme, level=level, backend="torch"))
    results = []
    for batch in (padded, packed):
        model.zero_grad()
        batch = dict(batch)
        labels = batch.pop("labels")
        blp = batch.pop("behavior_logprobs", None)
        sid = batch.pop("seq_ids", None)
        with head.batch(labels, blp, sid):
            out = model(**batch, use_cache=False)
        assert out.logits.shape[-1] == 0  # the logits were never built
        assert head.result is not None
        head.result.output.loss.backward()
        grad = model.model.layers[0].self_attn.q_proj.weight.grad.clone()
        results.append((head.result.output.loss.detach(), grad, head.result.num_tokens))
    (l_pad, g_pad, n_pad), (l_pack, g_pack, n_pack) = results
    assert n_pad == n_pack
    torch.testing.assert_close(l_pack, l_pad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(g_pack, g_pad, rtol=1e-3, atol=1e-6)


def test_package_level_train_is_callable_after_importing_the_module() -> None:
    import onpolicy_sft
    import onpolicy_sft.training as training_module

    assert callable(onpolicy_sft.train) and callable(onpolicy_sft.evaluate)
    assert onpolicy_sft.train is training_module.train is train


@pytest.mark.gpu
@pytest.mark.parametrize("loss", ["dft", "pear"])
def test_cuda_bf16_training_with_the_triton_backend(
    loss: str, tiny_qwen2: Path, data_dir: Path, tmp_path: Path
) -> None:
    res = train(
        **train_opts(
            tiny_qwen2,
            data_dir,
            tmp_path / "out",
            scheme=loss,
            bf16=True,
            backend="triton",
            gradient_checkpointing=True,
            max_steps=20,
        )
    )
    nll = _losses(res.log_history, "nll")
    assert nll[20] < nll[1] - 0.3


def test_raw_prompt_column_goes_through_the_chat_template(tiny_qwen2):
    """A prompt/response dataset (not written by rewrite) gets the chat template;
    a prompt that already ends in the template's assistant opening is kept as is."""
    from transformers import AutoTokenizer

    from onpolicy_sft.config import TrainConfig
    from onpolicy_sft.prompts import chat

    tok = AutoTokenizer.from_pretrained(tiny_qwen2)
    templated = chat(tok, "What is 2+2?")
    columns = {"prompt": ["What is 1+1?", templated], "response": ["2", "4"]}
    cfg = TrainConfig(model=str(tiny_qwen2), dataset="unused")
    examples, stats = build_examples(columns, tok, cfg)
    assert stats.prompts_templated == 1
    assert tok.decode(examples[0].input_ids.tolist()).startswith(chat(tok, "What is 1+1?"))
    assert tok.decode(examples[1].input_ids.tolist()).startswith(templated)
    assert not tok.decode(examples[1].input_ids.tolist()).startswith(chat(tok, templated))
