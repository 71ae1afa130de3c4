"""`onpolicy-sft verify FILE.jsonl --prediction_field F --gold_field G [--output_file OUT.jsonl]`."""

from __future__ import annotations

from typing import Any

from onpolicy_sft.config import VerifyConfig

# rows verified per Rust batch; bounds memory on large files
_CHUNK = 4096


def _read_rows(path: str, pred_field: str, gold_field: str) -> tuple[list[dict], list[int]]:
    """The rows and their 1-based line numbers; a bad line raises at file:line."""
    from onpolicy_sft._io import iter_jsonl
    from onpolicy_sft.errors import InputError

    rows, lines = [], []
    for lineno, row in iter_jsonl(path):
        for field, flag in ((pred_field, "--prediction_field"), (gold_field, "--gold_field")):
            if field not in row:
                raise InputError(
                    f'{path}:{lineno}: no "{field}" field (it has {sorted(row)}); '
                    f"name the right field with {flag}"
                )
            if not isinstance(row[field], (str, int, float)) or isinstance(row[field], bool):
                raise InputError(
                    f'{path}:{lineno}: "{field}" is {type(row[field]).__name__}, expected a string'
                )
        rows.append(row)
        lines.append(lineno)
    return rows, lines


def _check_output(args: VerifyConfig) -> None:
    """Refuse to write over the input, or over an existing file without --overwrite."""
    import os

    from onpolicy_sft.errors import OutputExistsError

    out = args.output_file
    if not out or not os.path.exists(out):
        return
    if os.path.isdir(out) or os.path.samefile(out, args.file):
        what = "a directory" if os.path.isdir(out) else "the input file"
        raise OutputExistsError(
            f"--output_file {out} is {what}; write the verdicts to a new file "
            "(e.g. --output_file verified.jsonl)"
        )
    if not args.overwrite:
        raise OutputExistsError(
            f"--output_file {out} exists; pass --overwrite to replace it, or choose another path"
        )


def run(options: dict[str, Any]) -> int:
    import contextlib
    import json
    import logging

    from tqdm import tqdm

    from onpolicy_sft._io import atomic_path
    from onpolicy_sft.verify import Verifier

    args = VerifyConfig(**options)
    _check_output(args)
    rows, lines = _read_rows(args.file, args.prediction_field, args.gold_field)
    verifier = Verifier(fallback=args.fallback, timeout_s=args.timeout_s, threads=args.threads)
    counts = {"correct": 0, "incorrect": 0, "fast": 0, "fallback": 0, "timeout": 0}
    timed_out: list[int] = []
    # the Verifier's own notice counts pairs within a chunk; the one below names lines
    logger = logging.getLogger("onpolicy_sft.verify")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        # Written beside the target and renamed at the end: a failed or interrupted
        # run leaves an existing --output_file as it was.
        target = args.output_file
        with atomic_path(target) if target else contextlib.nullcontext(None) as tmp:
            try:
                out = open(tmp, "w", encoding="utf-8") if tmp else None
            except OSError as exc:  # name the file the user gave, not the temporary one
                raise OSError(exc.errno, exc.strerror, target) from None
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
                        timed_out += [lines[s + i] for i in verifier.timeouts]
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
                if out is not None:
                    out.close()
    finally:
        logger.setLevel(level)
        verifier.close()
    n = len(rows)
    acc = counts["correct"] / n if n else 0.0
    if timed_out:
        shown = ", ".join(map(str, timed_out[:20])) + (" ..." if len(timed_out) > 20 else "")
        print(
            f"math-verify timed out ({args.timeout_s:g}s) on {len(timed_out)} pair(s), counted "
            f"incorrect: {args.file} lines {shown}; raise --timeout_s to give them longer"
        )
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
