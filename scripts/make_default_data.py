"""Generate the embedded default preference data set (python/simper_rs/data/default/).

Task, verifiable by exact match: the prompt is ``sort : <letters> =`` and the correct response
lists the letters in alphabetical order. The chosen response is correct; the rejected one is a
near miss that still looks sorted (one letter replaced by a letter missing from the prompt), so
a model must check the prompt to prefer the chosen one. Deterministic: the same seed writes the same files.

    python scripts/make_default_data.py [OUT_DIR]
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

LETTERS = "abcdefghijklmnop"
OUT = Path(__file__).resolve().parent.parent / "python" / "simper_rs" / "data" / "default"


def near_miss(answer: list, rng: random.Random) -> list:
    """A wrong answer that still looks sorted: one letter replaced by a letter that is not in the
    prompt but fits between its neighbours. Telling it apart needs a look back at the prompt."""
    positions = list(range(len(answer)))
    rng.shuffle(positions)
    for i in positions:
        low = answer[i - 1] if i > 0 else ""
        high = answer[i + 1] if i + 1 < len(answer) else "~"
        candidates = [c for c in LETTERS if low < c < high and c not in answer]
        if candidates:
            wrong = list(answer)
            wrong[i] = rng.choice(candidates)
            return wrong
    wrong = list(answer)  # every gap is full (rare): swap two neighbours instead
    i = rng.randrange(len(wrong) - 1)
    wrong[i], wrong[i + 1] = wrong[i + 1], wrong[i]
    return wrong


def record(rng: random.Random) -> dict:
    letters = rng.sample(LETTERS, rng.randint(4, 8))
    answer = sorted(letters)
    return {
        "prompt": "sort : " + " ".join(letters) + " =",
        "chosen": " ".join(answer),
        "rejected": " ".join(near_miss(answer, rng)),
    }


def main(seed: int = 1234, train: int = 3000, test: int = 300, out: Path = OUT) -> None:
    rng = random.Random(seed)
    seen, rows = set(), []
    while len(rows) < train + test:
        r = record(rng)
        if r["prompt"] not in seen:  # held-out prompts never appear in training
            seen.add(r["prompt"])
            rows.append(r)
    out.mkdir(parents=True, exist_ok=True)
    for name, part in (("train", rows[:train]), ("test", rows[train:])):
        with open(out / f"{name}.jsonl", "w") as f:
            for r in part:
                f.write(json.dumps(r) + "\n")
    print(f"wrote {train} train and {test} test records to {out}")


if __name__ == "__main__":
    main(out=Path(sys.argv[1]) if len(sys.argv) > 1 else OUT)
