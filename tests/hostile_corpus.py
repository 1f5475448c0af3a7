"""List the hostile request corpus (the ``hostile`` package): ``python tests/hostile_corpus.py``.

One line a case (name, target, size, how it is sent, the answer it must get and why), then the count by door.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from hostile import build_corpus, describe


def main() -> None:
    corpus = build_corpus()
    for case in corpus:
        print(describe(case))
    by_door = Counter("/v2 REST" if case.path.startswith("/v2") else case.path for case in corpus)
    print(f"{len(corpus)} cases ({', '.join(f'{count} {door}' for door, count in by_door.items())})")


if __name__ == "__main__":
    main()
