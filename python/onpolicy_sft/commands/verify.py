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
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    parser.add_argument(
        "--no-fallback",
        action="store_true",
        help="fast path only: undecided pairs count as incorrect instead of asking math-verify",
    )
    parser.add_argument(
        "--timeout", type=float, default=5.0, help="math-verify deadline per pair, seconds"
    )
    parser.add_argument("--threads", type=int, default=None, help="worker threads (default: all)")


def _read_rows(path: str, pred_field: str, gold_field: str) -> tuple[list[dict], list[int]]:
    """The rows and their 1-based line numbers; a bad line raises at file:line."""
    from onpolicy_sft._io import read_jsonl
    from onpolicy_sft.errors import InputError

    rows, lines = [], []
    for lineno, row in read_jsonl(path):
        for field, flag in ((pred_field, "--prediction-field"), (gold_field, "--gold-field")):
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


def _check_out(args: argparse.Namespace) -> None:
    """Refuse to write over the input, or over an existing file without --overwrite."""
    import os

    from onpolicy_sft.errors import OutputExistsError

    if not args.out:
        return
    if os.path.exists(args.out) and (
        os.path.isdir(args.out) or os.path.samefile(args.out, args.file)
    ):
        what = "a directory" if os.path.isdir(args.out) else "the input file"
        raise OutputExistsError(
            f"--out {args.out} is {what}; write the verdicts to a new file "
            "(e.g. --out verified.jsonl)"
        )
    if os.path.exists(args.out) and not args.overwrite:
        raise OutputExistsError(
            f"--out {args.out} exists; pass --overwrite to replace it, or choose another path"
        )


def run(args: argparse.Namespace) -> int:
    import json
    import logging
    import os

    from tqdm import tqdm

    from onpolicy_sft.verify import Verifier

    _check_out(args)
    rows, lines = _read_rows(args.file, args.prediction_field, args.gold_field)
    verifier = Verifier(
        fallback=None if args.no_fallback else "math-verify",
        timeout_s=args.timeout,
        threads=args.threads,
    )
    counts = {"correct": 0, "incorrect": 0, "fast": 0, "fallback": 0, "timeout": 0}
    timed_out: list[int] = []
    # Written beside the target and renamed at the end: a failed or interrupted
    # run leaves an existing --out as it was.
    tmp = f"{args.out}.tmp-{os.getpid()}" if args.out else None
    try:
        out = open(tmp, "w", encoding="utf-8") if tmp else None
    except OSError as exc:  # name the --out the user gave, not the temporary file
        raise OSError(exc.errno, exc.strerror, args.out) from None
    # the Verifier's own notice counts pairs within a chunk; the one below names lines
    logger = logging.getLogger("onpolicy_sft.verify")
    level = logger.level
    logger.setLevel(logging.ERROR)
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
        if out is not None:
            out.flush()
            os.fsync(out.fileno())
            out.close()
            os.replace(tmp, args.out)  # type: ignore[arg-type]
            out = None
    finally:
        logger.setLevel(level)
        verifier.close()
        if out is not None:
            out.close()
            os.unlink(tmp)  # type: ignore[arg-type]
    n = len(rows)
    acc = counts["correct"] / n if n else 0.0
    if timed_out:
        shown = ", ".join(map(str, timed_out[:20])) + (" ..." if len(timed_out) > 20 else "")
        print(
            f"math-verify timed out ({args.timeout:g}s) on {len(timed_out)} pair(s), counted "
            f"incorrect: {args.file} lines {shown}; raise --timeout to give them longer"
        )
    print(
        f"{n} rows: {counts['correct']} correct, {counts['incorrect']} incorrect "
        f"({acc:.2%}); decided by the fast path {counts['fast']}, by math-verify "
        f"{counts['fallback']}, timed out {counts['timeout']} (counted incorrect)"
    )
    if args.out:
        print(f"wrote {args.out}")
    return 0
