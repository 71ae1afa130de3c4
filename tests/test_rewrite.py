"""The rewrite pipeline with a scripted engine: tiers, selection, rejections, output, resume, shards.

The scripted engine returns fixed texts per problem so every branch of
docs/methods.md's "Three-tier rewriting" is exercised deterministically; the
verifier and the ledger are the real ones.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("onpolicy_sft.ledger")
pytest.importorskip("onpolicy_sft.verify")

from onpolicy_sft import prompts as P
from onpolicy_sft.engines.base import Sample
from onpolicy_sft.rewrite.data import copy_rejection
from onpolicy_sft.testing import build_tokenizer

LONG_SOLUTION = (
    "First we write down the two numbers that the problem gives us and we note that both of "
    "them are positive integers smaller than ten so the product is small and then we "
    "multiply them carefully to get \\boxed{12}."
)
SCORE = -0.5  # the scripted engine's log-prob of every token under any prompt

# problem -> solution, self texts (+ their per-token log-probs), guided texts
SCRIPT = {
    "Add 2 and 3.": dict(
        solution="2 + 3 = 5, so \\boxed{5}.",
        self=[("It is \\boxed{4}.", -0.1), ("2+3 = \\boxed{5}.", -0.3)],
        guided=[],
    ),
    "Multiply 2 and 3.": dict(
        solution="2 * 3 = 6, so \\boxed{6}.",
        self=[("\\boxed{5}", -0.1), ("\\boxed{7}", -0.1)],
        guided=[("Two threes make \\boxed{6}.", -0.2), ("\\boxed{8}", -0.2)],
    ),
    "Multiply 3 and 4.": dict(
        solution=LONG_SOLUTION,
        self=[("\\boxed{1}", -0.1), ("\\boxed{2}", -0.1)],
        guided=[(LONG_SOLUTION, -0.05), ("\\boxed{11}", -0.2)],
    ),
    "Add 3 and 4.": dict(
        solution="3 + 4 = 7, so \\boxed{7}.",
        self=[("\\boxed{1}", -0.1), ("\\boxed{2}", -0.1)],
        guided=[("Following the reference solution, \\boxed{7}.", -0.2), ("\\boxed{3}", -0.2)],
    ),
    "Say something.": dict(solution="Nothing to box here.", self=[], guided=[]),
    "Add 4 and 5.": dict(
        solution="4 + 5 = 9, so \\boxed{9}.",
        self=[("\\boxed{9} indeed", -0.4), ("So \\boxed{9}.", -0.2)],
        guided=[],
    ),
}
EXPECTED_TIERS = {
    "Add 2 and 3.": "self",
    "Multiply 2 and 3.": "guided",
    "Multiply 3 and 4.": "expert",
    "Add 3 and 4.": "expert",
    "Say something.": "expert",
    "Add 4 and 5.": "self",
}


class ScriptedEngine:
    """The Engine protocol with scripted outputs; counts what it is asked."""

    def __init__(self) -> None:
        self.tokenizer = build_tokenizer()
        self.generated: list[str] = []  # problem of every generated prompt
        self.scored = 0

    def _problem(self, prompt: str) -> str:
        hits = [p for p in SCRIPT if p in prompt]
        assert len(hits) == 1, prompt
        return hits[0]

    def _sample(self, text: str, lp: float) -> Sample:
        ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        ids.append(self.tokenizer.eos_token_id)
        return Sample(text, ids, np.full(len(ids), lp, np.float32), "stop")

    def generate(
        self, prompts, *, n=1, temperature=1.0, top_p=1.0, max_tokens=2048, seed=None, stop=None
    ):
        out = []
        for prompt in prompts:
            problem = self._problem(prompt)
            self.generated.append(problem)
            kind = "guided" if "Reference solution" in prompt else "self"
            texts = SCRIPT[problem][kind]
            assert texts, f"{kind} generation was not expected for {problem!r}"
            out.append([self._sample(*texts[j % len(texts)]) for j in range(n)])
        return out

    def score(self, prompts, responses):
        self.scored += len(prompts)
        return [np.full(len(r), SCORE, np.float32) for r in responses]


@pytest.fixture()
def dataset(tmp_path):
    path = tmp_path / "train.jsonl"
    with open(path, "w") as f:
        for problem, s in SCRIPT.items():
            f.write(json.dumps({"problem": problem, "solution": s["solution"]}) + "\n")
    return str(path)


def run(dataset, out, engine=None, **kw):
    from onpolicy_sft.rewrite import rewrite

    engine = engine or ScriptedEngine()
    opts = dict(
        model="scripted",
        dataset=dataset,
        output_dir=str(out),
        k_self=2,
        k_guided=2,
        progress=False,
    )
    opts.update(kw)
    return rewrite(engine=engine, **opts), engine


def read(out):
    import pyarrow.parquet as pq

    return {r["problem"]: r for r in pq.read_table(os.path.join(out, "data.parquet")).to_pylist()}


def test_three_tiers(dataset, tmp_path):
    out = tmp_path / "out"
    res, eng = run(dataset, out)
    rows = read(out)
    assert {p: r["tier"] for p, r in rows.items()} == EXPECTED_TIERS
    assert res.tiers == {"self": 2, "guided": 1, "expert": 3}
    assert "Say something." not in eng.generated  # no reference answer: straight to expert
    tok = eng.tokenizer
    for problem, r in rows.items():
        assert r["prompt"] == P.train_prompt(tok, problem)
        assert r["completion_token_ids"][-1] == tok.eos_token_id
        if r["tier"] == "expert":
            assert r["behavior_logprobs"] is None and r["verdict"] is None
            assert r["completion"] == SCRIPT[problem]["solution"]
            assert r["base_logprobs"] == [SCORE] * len(r["completion_token_ids"])
        else:
            assert r["verdict"] is True
            assert len(r["behavior_logprobs"]) == len(r["completion_token_ids"])
    # self: the only correct sample; behaviour = base (the self prompt is the training prompt)
    s = rows["Add 2 and 3."]
    assert s["completion"] == "2+3 = \\boxed{5}." and s["answer"] == "5"
    assert s["behavior_logprobs"] == s["base_logprobs"]
    assert np.allclose(s["behavior_logprobs"], -0.3)
    # guided: behaviour from the guided prompt, base re-scored under the training prompt
    g = rows["Multiply 2 and 3."]
    assert np.allclose(g["behavior_logprobs"], -0.2) and np.allclose(g["base_logprobs"], SCORE)
    # likeliest of two correct self samples: mean log pi_0 -0.2 beats -0.4
    assert rows["Add 4 and 5."]["completion"] == "So \\boxed{9}."
    assert "no reference answer" in rows["Say something."]["reason"]
    assert "1 rejected as copies" in rows["Multiply 3 and 4."]["reason"]


def test_rejections_are_counted_in_report(dataset, tmp_path):
    out = tmp_path / "out"
    run(dataset, out)
    rep = json.load(open(out / "report.json"))
    reasons = rep["rejections"]
    assert sum(reasons.values()) == 2
    assert any("mentions the reference" in k for k in reasons)
    assert any("consecutive words" in k for k in reasons)
    assert rep["no_reference_answer"] == 1
    assert rep["tiers"] == {"self": 2, "guided": 1, "expert": 3}
    assert rep["per_tier"]["self"]["ess_after"] == pytest.approx(1.0)  # w = exp(0) = 1
    assert rep["per_tier"]["guided"]["nll_after"] == pytest.approx(-SCORE)
    for name in ("tiers.png", "nll.png", "phi.png", "weights.png", "report.md", "config.json"):
        assert (out / name).stat().st_size > 0
    md = (out / "report.md").read_text()
    assert "| self | 2 |" in md and "mentions the reference" in md


def test_rerun_generates_nothing(dataset, tmp_path):
    out = tmp_path / "out"
    run(dataset, out)
    first = read(out)
    _, eng = run(dataset, out)
    assert eng.generated == [] and eng.scored == 0
    assert read(out) == first


def test_rerun_with_other_settings_is_refused(dataset, tmp_path):
    out = tmp_path / "out"
    run(dataset, out)
    with pytest.raises(ValueError, match=r"k_self: 2 -> 3"):
        run(dataset, out, k_self=3)


def test_shards_then_merge(dataset, tmp_path):
    out = tmp_path / "out"
    _, e0 = run(dataset, out, shard="0/2")
    _, e1 = run(dataset, out, shard="1/2")
    assert not set(e0.generated) & set(e1.generated)
    assert (out / "shard-0-of-2" / "data.parquet").exists()
    _, merged = run(dataset, out)
    assert merged.generated == [] and merged.scored == 0
    assert {p: r["tier"] for p, r in read(out).items()} == EXPECTED_TIERS


def test_grape_method_lets_the_expert_compete(dataset, tmp_path):
    out = tmp_path / "out"
    run(dataset, out, method="grape")
    rows = read(out)
    # self samples of "Add 2 and 3." have mean log pi_0 -0.3 > expert -0.5: the sample stays
    assert rows["Add 2 and 3."]["tier"] == "self"
    assert rows["Multiply 2 and 3."]["tier"] == "expert"  # no guided stage in grape


def test_grape_keeps_expert_when_it_is_likelier(dataset, tmp_path, monkeypatch):
    monkeypatch.setattr(
        ScriptedEngine, "score", lambda self, p, r: [np.zeros(len(x), np.float32) for x in r]
    )
    out = tmp_path / "out"
    run(dataset, out, method="grape")
    rows = read(out)
    assert rows["Add 2 and 3."]["tier"] == "expert"
    assert "grape kept the expert" in rows["Add 2 and 3."]["reason"]


@pytest.mark.parametrize(
    "rows, kwargs, message",
    [
        ([{"question": "q", "solution": "s"}], {}, r'has no "problem" column .*--problem_field'),
        (
            [{"problem": "q", "solution": "\\boxed{1}"}, {"problem": "", "solution": "s"}],
            {},
            r'row 2 of bad.jsonl has an empty "problem"; fill it in or drop the row',
        ),
        ([{"problem": "q", "answer_text": "1"}], {}, r'no "solution" column .*--solution_field'),
        (
            [{"problem": "q", "solution": "s"}],
            {"answer_field": "ans"},
            r'no "ans" column .*--answer_field',
        ),
    ],
    ids=[
        "missing-problem-column",
        "empty-problem-row",
        "missing-solution-column",
        "unknown-answer-column",
    ],
)
def test_bad_input_names_field_and_flag(tmp_path, rows, kwargs, message):
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match=message):
        run(str(path), tmp_path / "out", **kwargs)


def test_empty_dataset(tmp_path):
    path = tmp_path / "empty.parquet"
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(
        pa.table({"problem": pa.array([], pa.string()), "solution": pa.array([], pa.string())}),
        path,
    )
    with pytest.raises(ValueError, match="has no rows"):
        run(str(path), tmp_path / "out")


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "onpolicy_sft", *args], capture_output=True, text=True, timeout=300
    )


def test_cli_missing_model_names_path(dataset, tmp_path):
    missing = tmp_path / "no-such-model"
    proc = _cli(
        "rewrite",
        "--model",
        str(missing),
        "--dataset",
        dataset,
        "--output_dir",
        str(tmp_path / "o"),
        "--engine",
        "hf",
        "--no_progress",
    )
    assert proc.returncode == 2
    assert str(missing) in proc.stderr and "Traceback" not in proc.stderr


def test_report_cli_rerenders(dataset, tmp_path):
    out = tmp_path / "out"
    run(dataset, out)
    before = json.load(open(out / "report.json"))
    for name in ("report.md", "report.json", "tiers.png"):
        (out / name).unlink()
    proc = _cli("report", str(out))
    assert proc.returncode == 0, proc.stderr
    after = json.load(open(out / "report.json"))
    assert after["per_tier"] == before["per_tier"] and (out / "tiers.png").exists()


@pytest.mark.parametrize(
    "text, rejected",
    [
        ("We compute 2 + 2 = \\boxed{4}.", None),
        ("As the reference solution shows, \\boxed{4}.", "mentions the reference"),
        ("Using the given solution we get \\boxed{4}.", "mentions the reference"),
        (LONG_SOLUTION, "consecutive words"),
        ("Preamble. " + " ".join(LONG_SOLUTION.split()[3:30]) + " end", "consecutive words"),
        (" ".join(LONG_SOLUTION.split()[:24]) + " and so on", None),
        ("Take the reference frame at O, so v = \\boxed{4}.", None),
        ("The reference shows v = 4, so \\boxed{4}.", "mentions the reference"),
    ],
    ids=[
        "own-words",
        "mention-reference",
        "mention-given",
        "verbatim",
        "copied-span",
        "short-overlap",
        "physics-reference-frame",
        "mention-the-reference-shows",
    ],
)
def test_copy_rejection(text, rejected):
    why = copy_rejection(text, LONG_SOLUTION, span_words=25)
    if rejected is None:
        assert why is None
    else:
        assert why is not None and rejected in why


def test_package_is_callable():
    import onpolicy_sft
    import onpolicy_sft.prompts

    assert callable(onpolicy_sft.rewrite)
    assert callable(onpolicy_sft.select)


def test_plain_fallback_prompt_warns():
    tok = build_tokenizer(chat_template=None)
    with pytest.warns(UserWarning, match="no chat template"):
        prompt = P.train_prompt(tok, "What is 1+1?")
    assert prompt == P.PLAIN_TEMPLATE.format(content=f"What is 1+1?\n{P.SUFFIX}")


@pytest.mark.parametrize("fmt", ["jsonl", "json", "parquet", "csv"])
def test_local_formats_load_the_same_problems(tmp_path, fmt):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from onpolicy_sft.rewrite.data import load_problems

    rows = [{"problem": p, "solution": s["solution"]} for p, s in SCRIPT.items()]
    path = tmp_path / f"train.{fmt}"
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif fmt == "json":
        path.write_text(json.dumps(rows))
    elif fmt == "parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        import csv

        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["problem", "solution"])
            w.writeheader()
            w.writerows(rows)
    probs = load_problems(str(path))
    assert [p.problem for p in probs] == list(SCRIPT)
    assert [p.answer for p in probs] == ["5", "6", "12", "7", None, "9"]


def test_missing_dataset_path(tmp_path):
    from onpolicy_sft.rewrite.data import load_problems

    with pytest.raises(FileNotFoundError, match=r"--dataset .* does not exist"):
        load_problems(str(tmp_path / "nope.jsonl"))


def test_hinted_method_on_a_tiny_model(tiny_qwen2, dataset, tmp_path):
    """--method hinted: self first, then Hinted Decoding for the problems still unsolved."""
    from onpolicy_sft.engines.hf import HFEngine
    from onpolicy_sft.ledger import Ledger
    from onpolicy_sft.rewrite import rewrite
    from onpolicy_sft.rewrite.data import SideStore

    out = tmp_path / "out"
    eng = HFEngine(str(tiny_qwen2))
    res = rewrite(
        engine=eng,
        model=str(tiny_qwen2),
        dataset=dataset,
        output_dir=str(out),
        method="hinted",
        hinted_variant="simple",  # the structured variant's pre-pass: tests/test_hinted_structured.py
        k_self=1,
        max_tokens=6,
        hinted_max_tokens=6,
        limit=3,
        progress=False,
    )
    assert res.tiers == {"expert": 3}  # a random tiny model solves nothing
    with Ledger.open(str(out / "ledger"), readonly=True) as led:
        for pid in ("0", "1", "2"):
            hinted = [a for a in led.attempts(pid) if a.stage == "hinted"]
            assert len(hinted) == 1
            a = hinted[0]
            assert len(a.base_logprobs) == len(a.token_ids) == len(a.behavior_logprobs)
            # base log-probs are pi_0 under the training prompt
            [lp] = eng.score(
                [P.train_prompt(eng.tokenizer, list(SCRIPT)[int(pid)])], [list(a.token_ids)]
            )
            np.testing.assert_allclose(a.base_logprobs, lp, atol=1e-4)
    phis = SideStore(str(out / "scores.jsonl")).phis()
    assert {k for k in phis if k[1] == "hinted"} == {(p, "hinted", 0) for p in ("0", "1", "2")}


def test_weights_and_ess():
    from onpolicy_sft.rewrite.report import _ess, _weights

    base = np.log(np.array([0.5, 0.25, 1.0]))
    np.testing.assert_allclose(_weights(base, None), [0.5, 0.25, 1.0])  # expert: w = p_t
    ratio = np.array([4.0, 1.5, 0.5])
    np.testing.assert_allclose(_weights(base, base - np.log(ratio)), [2.0, 1.5, 0.5])  # clip at 2
    assert _ess(np.ones(5)) == pytest.approx(1.0)
    assert _ess(np.array([1.0, 0.0, 0.0, 0.0])) == pytest.approx(0.25)


def test_an_edited_problem_is_rewritten_again_and_the_rest_kept(dataset, tmp_path, capsys):
    out = tmp_path / "out"
    run(dataset, out)
    first = read(out)
    rows = [json.loads(line) for line in open(dataset)]
    assert rows[0]["problem"] == "Add 2 and 3."
    rows[0]["solution"] = "2 + 3 = 4, so \\boxed{4}."  # edited in place: a new reference answer
    with open(dataset, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    capsys.readouterr()
    _, eng = run(dataset, out)
    err = capsys.readouterr().err
    assert (
        "1 problem(s) changed in " + dataset + " since the earlier run (problem_id '0'): their "
        "2 old attempt(s) were set aside and they are rewritten again"
    ) in err
    assert eng.generated == ["Add 2 and 3."] and eng.scored == 1  # that problem only
    now = read(out)
    edited = now.pop("Add 2 and 3.")
    assert (edited["answer"], edited["tier"], edited["completion"]) == (
        "4",
        "self",
        "It is \\boxed{4}.",
    )
    del first["Add 2 and 3."]
    assert now == first
    _, again = run(dataset, out)
    assert again.generated == [] and again.scored == 0


def test_a_torn_scores_file_is_cut_and_the_lost_record_recomputed(dataset, tmp_path):
    from onpolicy_sft._journal import JournalWarning

    out = tmp_path / "out"
    run(dataset, out)
    first = read(out)
    scores = out / "scores.jsonl"
    data = scores.read_bytes()
    scores.write_bytes(data[:-10])  # killed in the middle of the last record
    with pytest.warns(JournalWarning, match=r"scores\.jsonl: cut a torn last line"):
        _, eng = run(dataset, out)
    assert eng.generated == [] and eng.scored == 1  # the lost expert score, and nothing else
    assert read(out) == first
    lines = scores.read_bytes().splitlines(keepends=True)
    assert all(line.endswith(b"\n") for line in lines)
    assert all(json.loads(line) for line in lines)


def test_rewrite_output_loads_as_a_dataset_and_trains_with_trl(dataset, tmp_path):
    """load_dataset(out) gives the rows (not the report's files); TRL trains on them as they are."""
    import datasets

    out = tmp_path / "out"
    run(dataset, out, save_to_disk=True)
    assert any(p.suffix == ".png" for p in out.iterdir())  # the report is there too
    rows = datasets.load_dataset(str(out), split="train")
    want = {"prompt", "completion", "completion_token_ids", "tier", "behavior_logprobs"}
    assert want <= set(rows.column_names) and len(rows) == len(EXPECTED_TIERS)
    on_disk = datasets.load_from_disk(str(out / "dataset"))
    assert on_disk.to_list() == rows.to_list()
    trl = pytest.importorskip("trl")
    from onpolicy_sft.integrations import PolicySFTConfig, PolicySFTTrainer
    from onpolicy_sft.testing import build_tiny_model

    model = build_tiny_model(tmp_path / "tiny")
    common = dict(max_steps=1, per_device_train_batch_size=2, report_to=[], use_cpu=True, logging_steps=1,
                  bf16=False, save_strategy="no", dataloader_pin_memory=False)  # fmt: skip
    trl.SFTTrainer(
        model=str(model), train_dataset=rows,
        args=trl.SFTConfig(output_dir=str(tmp_path / "a"), **common),
    ).train()  # fmt: skip
    ours = PolicySFTTrainer(
        model=str(model), train_dataset=rows,
        args=PolicySFTConfig(output_dir=str(tmp_path / "b"), loss_scheme="is", **common),
    )  # fmt: skip
    ours.train()
    assert ours.expert_rows == list(EXPECTED_TIERS.values()).count("expert") > 0
    logs = [h for h in ours.state.log_history if "loss" in h]
    assert logs and logs[0]["loss"] > 0


def test_load_dataset_never_returns_another_runs_rows(tmp_path):
    """datasets caches a card-configured directory by its name: two runs in directories
    called ``out``, and a rerun that changed the rows, must each load their own rows."""
    import datasets

    from onpolicy_sft.rewrite.report import write_data

    def rows(text: str) -> list[dict]:
        return [{"prompt": "p", "response": text, "response_token_ids": [1], "problem_id": "0",
                 "problem": "q", "tier": "self", "behavior_logprobs": [-0.5]}]  # fmt: skip

    first, second = tmp_path / "a" / "out", tmp_path / "b" / "out"
    for out, text in ((first, "one"), (second, "two")):
        out.mkdir(parents=True)
        write_data(rows(text), str(out / "data.parquet"))
    for out, text in ((first, "one"), (second, "two")):
        assert datasets.load_dataset(str(out), split="train")["completion"] == [text]
    write_data(rows("six"), str(first / "data.parquet"))  # same size, new content
    assert datasets.load_dataset(str(first), split="train")["completion"] == ["six"]
