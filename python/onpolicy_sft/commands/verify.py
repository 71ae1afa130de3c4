"""`onpolicy-sft verify FILE.jsonl --prediction-field F --gold-field G [--out OUT.jsonl]`."""

from __future__ import annotations

import argparse

HELP = "check each row's prediction against its gold answer (fast Rust path + math-verify fallback)"

# rows verified per Rust batch; bounds memory on large files
_CHUNK = 4096


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE.jsonl", help="one JSON object per line")
    parser.add_argument(
        "--prediction-field", required=True, help="field holding the model's full output"
    )
    parser.add_argument(
        "--gold-field", required=True, help="field holding the reference answer (no \\boxed)"
    )
    parser.add_argument(
        "--out",
        metavar="OUT.jsonl",
        help="write each row with verdict fields added (correct, pred_answer, gold_answer, reason)",
    )
    parser.add_argument(
        "--no-fallback",
        action="store_true",
        help="fast path only: undecided pairs count as incorrect instead of asking math-verify",
    )
    parser.add_argument(
        "--timeout", type=float, default=5.0, help="math-verify deadline per pair, seconds"
    )
    parser.add_argument("--threads", type=int, default=None, help="worker threads (default: all)")


def _read_rows(path: str, pred_field: str, gold_field: str) -> list[dict]:
    import json

    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"line {lineno} of {path} is not valid JSON ({e})") from None
            if not isinstance(row, dict):
                raise ValueError(f"line {lineno} of {path} is not a JSON object")
            for field, flag in ((pred_field, "--prediction-field"), (gold_field, "--gold-field")):
                if field not in row:
                    raise ValueError(
                        f'line {lineno} of {path} has no "{field}" field; '
                        f"name the right field with {flag}"
                    )
                if not isinstance(row[field], (str, int, float)):
                    raise ValueError(
                        f'line {lineno} of {path}: "{field}" is {type(row[field]).__name__}, '
                        "expected a string"
                    )
            rows.append(row)
    return rows


def run(args: argparse.Namespace) -> int:
    import json

    from tqdm import tqdm

    from onpolicy_sft.verify import Verifier

    rows = _read_rows(args.file, args.prediction_field, args.gold_field)
    verifier = Verifier(
        fallback=None if args.no_fallback else "math-verify",
        timeout_s=args.timeout,
        threads=args.threads,
    )
    counts = {"correct": 0, "incorrect": 0, "fast": 0, "fallback": 0, "timeout": 0}
    out = open(args.out, "w", encoding="utf-8") if args.out else None
    try:
        with tqdm(total=len(rows), unit="pair", disable=len(rows) < 1000) as bar:
            for s in range(0, len(rows), _CHUNK):
                chunk = rows[s : s + _CHUNK]
                preds = [str(r[args.prediction_field]) for r in chunk]
                golds = [str(r[args.gold_field]) for r in chunk]
                verdicts = verifier.verdicts(preds, golds)
                st = verifier.last_stats
                counts["fast"] += st["fast"]
                counts["fallback"] += st["fallback"] + st["errors"]
                counts["timeout"] += st["timeouts"]
                for row, v in zip(chunk, verdicts):
                    counts["correct" if v.correct else "incorrect"] += 1
                    if out is not None:
                        row = dict(row)
                        row["correct"] = bool(v.correct)
                        row["pred_answer"] = v.pred_answer
                        row["gold_answer"] = v.gold_answer
                        row["reason"] = v.reason
                        out.write(json.dumps(row, ensure_ascii=False) + "\n")
                bar.update(len(chunk))
    finally:
        verifier.close()
        if out is not None:
            out.close()
    n = len(rows)
    acc = counts["correct"] / n if n else 0.0
    print(
        f"{n} rows: {counts['correct']} correct, {counts['incorrect']} incorrect "
        f"({acc:.2%}); decided by the fast path {counts['fast']}, by math-verify "
        f"{counts['fallback']}, timed out {counts['timeout']} (counted incorrect)"
    )
    if args.out:
        print(f"wrote {args.out}")
    return 0
