"""`onpolicy-sft verify FILE.jsonl --prediction_field F --gold_field G [--output_file OUT.jsonl]`."""

from __future__ import annotations

from typing import Any

from onpolicy_sft.config import VerifyConfig

# rows verified per Rust batch; bounds memory on large files
_CHUNK = 4096


def _read_rows(path: str, pred_field: str, gold_field: str) -> list[dict]:
    from onpolicy_sft._io import iter_jsonl

    rows = []
    for lineno, row in iter_jsonl(path):
        for field, flag in ((pred_field, "--prediction_field"), (gold_field, "--gold_field")):
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


def run(options: dict[str, Any]) -> int:
    import json

    from tqdm import tqdm

    from onpolicy_sft.verify import Verifier

    args = VerifyConfig(**options)
    rows = _read_rows(args.file, args.prediction_field, args.gold_field)
    verifier = Verifier(fallback=args.fallback, timeout_s=args.timeout_s, threads=args.threads)
    counts = {"correct": 0, "incorrect": 0, "fast": 0, "fallback": 0, "timeout": 0}
    out = open(args.output_file, "w", encoding="utf-8") if args.output_file else None
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
    if args.output_file:
        print(f"wrote {args.output_file}")
    return 0


def configs() -> list[type]:
    return [VerifyConfig]
