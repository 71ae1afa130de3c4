"""onpolicy_sft.rewards: TRL / verl reward conventions, bad input, threads, fork, a real GRPO step."""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import pickle
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from _helpers import trainer_args

from onpolicy_sft import rewards
from onpolicy_sft.rewards import MathReward, MissingColumnError, compute_score, math_reward

# decided by the Rust fast path
FAST = [
    ("The answer is $\\boxed{42}$.", "42", 1.0),
    ("so the result is \\boxed{\\frac{1}{2}}", "0.5", 1.0),
    ("\\boxed{41}", "42", 0.0),
    ("So \\boxed{\\text{(B)}}", "B", 1.0),
    ("$(x, y) = (1, -5)$", "(1,-5)", 1.0),
    ("\\boxed{27\\pi}", "84.8230", 0.0),
]
# undecided by the fast path; math-verify 0.9.0 says True / False
SLOW = [
    ("$\\det \\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}$", "-2", 1.0),
    ("$\\begin{pmatrix} 2 \\\\ -9 \\end{pmatrix}$", "7", 0.0),
    ("$1 + 3 + (2 + 2\u221a2) = 6 + 2\u221a2$", "12", 0.0),
]


def test_trl_signature_with_strings_chat_messages_and_numeric_references() -> None:
    r = math_reward()
    comps = [p for p, _, _ in FAST]
    golds = [g for _, g, _ in FAST]
    assert r(prompts=["q"] * len(comps), completions=comps, answer=golds) == [e for *_, e in FAST]
    chat = [[{"role": "assistant", "content": c}] for c in comps]
    assert r(prompts=["q"] * len(chat), completions=chat, answer=golds) == [e for *_, e in FAST]
    parts = [[{"role": "assistant", "content": [{"type": "text", "text": "\\boxed{7}"}]}]]
    assert r(prompts=["q"], completions=parts, answer=[7]) == [1.0]
    assert r.stats["correct"] == 2 * 4 + 1
    assert r.__name__ == "math_accuracy"


def test_factory_reads_another_column_and_a_missing_column_names_the_present_ones() -> None:
    r = math_reward(answer_column="solution")
    assert r(prompts=["q"], completions=["\\boxed{3}"], solution=["3"]) == [1.0]
    with pytest.raises(MissingColumnError) as e:
        r(prompts=["q"], completions=["\\boxed{3}"], answer=["3"], trainer_state=None)
    msg = str(e.value)
    assert "'solution'" in msg and "['answer']" in msg and "trainer_state" not in msg
    with pytest.raises(ValueError, match="2 completions but 1 references"):
        r(prompts=["q", "q"], completions=["1", "2"], solution=["1"])


def test_bad_items_score_zero_are_counted_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    rewards._LOGGED.discard("completion is None")
    r = MathReward()
    huge = "x" * (10 << 20) + " \\boxed{1}"
    nested = "\\boxed{" + "{" * 100_000 + "1" + "}" * 100_000 + "}"
    comps = [None, "", "   ", 5, ["not a message"], [], huge, nested, "\\boxed{1}", None]
    refs = ["1", "1", "1", "1", "1", "1", "1", "1", None, "1"]
    with caplog.at_level(logging.WARNING, logger="onpolicy_sft.rewards"):
        t = time.monotonic()
        out = r(prompts=[""] * len(comps), completions=comps, answer=refs)
        assert time.monotonic() - t < 60
    assert out == [0.0] * len(comps)
    assert r.stats["completion is None"] == 2
    assert r.stats["completion is empty"] == 2
    assert r.stats["completion is int, not str"] == 1
    assert r.stats["reference is None"] == 1
    assert any("over" in k for k in r.stats), r.stats
    none_logs = [m for m in caplog.messages if "completion is None" in m]
    assert len(none_logs) == 1


def test_undecided_pairs_go_to_math_verify_within_the_batch_deadline() -> None:
    r = MathReward(deadline_s=120)
    comps = [p for p, _, _ in FAST + SLOW]
    golds = [g for _, g, _ in FAST + SLOW]
    assert r.grade(comps, golds) == [e for *_, e in FAST + SLOW]
    assert r.stats["fallback"] == len(SLOW)


def test_a_short_deadline_bounds_the_whole_batch() -> None:
    r = MathReward(deadline_s=0.2)
    # a fresh pool: the workers cannot even import math-verify in 0.2 s
    rewards._POOL.__init__()  # type: ignore[misc]
    slow = [p for p, _, _ in SLOW] * 4
    t = time.monotonic()
    out = r.grade(slow, [g for _, g, _ in SLOW] * 4)
    assert time.monotonic() - t < 5
    assert out == [0.0] * len(slow)
    assert r.stats["deadline"] == len(slow)


def test_eight_threads_at_once_give_identical_results() -> None:
    r = MathReward(deadline_s=120)
    comps = [p for p, _, _ in FAST + SLOW] * 8
    golds = [g for _, g, _ in FAST + SLOW] * 8
    want = [e for *_, e in FAST + SLOW] * 8
    with ThreadPoolExecutor(8) as ex:
        outs = list(ex.map(lambda _: r(prompts=None, completions=comps, answer=golds), range(8)))
    assert all(o == want for o in outs)
    assert r.stats["correct"] + r.stats["incorrect"] == 8 * len(comps)


def _child(q: mp.Queue) -> None:
    r = MathReward(deadline_s=120)
    out = r.grade([p for p, _, _ in SLOW], [g for _, g, _ in SLOW])
    v = rewards._POOL._verifier
    pids = [w.proc.pid for w in v._workers] if v is not None else []
    q.put((out, os.getpid(), pids))


@pytest.mark.skipif("fork" not in mp.get_all_start_methods(), reason="needs fork")
def test_a_forked_child_starts_its_own_pool_and_leaves_the_parents_alone() -> None:
    r = MathReward(deadline_s=120)
    want = [e for *_, e in SLOW]
    assert r.grade([p for p, _, _ in SLOW], [g for _, g, _ in SLOW]) == want
    parent_workers = [w.proc.pid for w in rewards._POOL._verifier._workers]  # type: ignore[union-attr]
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(q,))
    p.start()
    out, child_pid, child_workers = q.get(timeout=180)
    p.join(30)
    assert out == want and child_pid != os.getpid()
    assert child_workers and not set(child_workers) & set(parent_workers)
    # the parent's workers survived the child's exit and still answer
    assert all(w.proc.poll() is None for w in rewards._POOL._verifier._workers)  # type: ignore[union-attr]
    assert r.grade([p for p, _, _ in SLOW], [g for _, g, _ in SLOW]) == want


def test_verl_conventions_and_pickling() -> None:
    assert compute_score("math", "so \\boxed{12}", "12", extra_info={"split": "train"}) == 1.0
    assert compute_score("math", None, "12") == 0.0
    out = rewards.compute_score_batch(
        ["m", "m"], ["\\boxed{1}", "\\boxed{3}"], ["1", "2"], [None, None]
    )
    assert out == [1.0, 0.0]
    r = pickle.loads(pickle.dumps(math_reward("solution")))
    assert r(prompts=None, completions=["\\boxed{2}"], solution=["2"]) == [1.0]


def test_strict_reads_residues_mathematically_and_the_default_agrees_with_math_verify() -> None:
    comps = ["So $x \\equiv$ ... the answer is $14 \\pmod{17}$", "\\boxed{\\text{answer: 12}}"]
    golds = ["14", "12"]
    assert MathReward().grade(comps, golds) == [0.0, 0.0]  # math-verify's verdicts
    assert MathReward(strict=True).grade(comps, golds) == [1.0, 1.0]
    assert MathReward(strict=True).grade(["\\boxed{41}"], ["42"]) == [0.0]


def test_bad_options_are_refused() -> None:
    with pytest.raises(ValueError, match="fallback"):
        MathReward(fallback="sympy")
    with pytest.raises(ValueError, match="deadline_s"):
        MathReward(deadline_s=0)
    with pytest.raises(ValueError, match="threads"):
        MathReward(threads=-1)


def test_grpo_trainer_step_with_the_reward(tiny_qwen2, tmp_path) -> None:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    reward = math_reward()
    ds = Dataset.from_dict(
        {"prompt": ["1+1=", "2+2=", "3+3=", "4+4="], "answer": ["2", "4", "6", "8"]}
    )
    tok = AutoTokenizer.from_pretrained(tiny_qwen2)
    model = AutoModelForCausalLM.from_pretrained(tiny_qwen2)
    args = trainer_args(
        GRPOConfig,
        tmp_path,
        max_steps=1,
        per_device_train_batch_size=4,
        num_generations=2,
        max_completion_length=8,
    )
    trainer = GRPOTrainer(
        model=model, reward_funcs=[reward], args=args, train_dataset=ds, processing_class=tok
    )
    trainer.train()
    # every generated completion was graded: a batch of 4 = 2 prompts x 2 generations
    graded = sum(v for k, v in reward.stats.items() if k != "fallback")
    assert graded >= 4 and graded % args.num_generations == 0, reward.stats
    logged = [h for h in trainer.state.log_history if "rewards/math_accuracy/mean" in h]
    assert logged and 0.0 <= logged[0]["rewards/math_accuracy/mean"] <= 1.0
