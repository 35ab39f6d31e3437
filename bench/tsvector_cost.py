"""Tsvector bench: the crawler CPU that crawler/store/pg/tsvector.py's page_vector spends per page.

    python bench/tsvector_cost.py [--pages 200] [--rounds 5] [--tree DIR ...]

Pages are the benchmark site's 15 KB HTML (bench/sitegen.py), parsed with crawler.parse the
way the engine does; a second set keeps each page's title and swaps its text for the same length
of words drawn from a 20,000-word Zipf vocabulary (fts_cost.py's), closer to real prose than
sitegen's 150 words repeated. Each tree (default: this one) is timed in a child process of its
own, rounds alternating between the trees; prints the median µs per page, and each tree's ratio
to the first.
"""

from __future__ import annotations

import argparse
import json
import pickle
import random
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
sys.path.insert(0, str(REPO_ROOT))

from fts_cost import zipf_text, zipf_vocabulary  # noqa: E402
from sitegen import generate_site, multi_host_spec  # noqa: E402

from crawler.parse import parse_page  # noqa: E402

# Run in the child: times page_vector over each set of pages and prints µs per page as JSON.
_TIMER = """
import json, pickle, sys, time
from crawler.store.pg.tsvector import page_vector
sets = pickle.load(sys.stdin.buffer)
out = {}
for name, pages in sets.items():
    for title, text in pages[:10]:
        page_vector(title, text)
    began = time.process_time()
    for title, text in pages:
        page_vector(title, text)
    out[name] = (time.process_time() - began) / len(pages) * 1e6
print(json.dumps(out))
"""


def page_sets(count: int) -> dict[str, list[tuple[str | None, str | None]]]:
    """(title, text) of `count` sitegen pages, and the same titles with Zipf text of the same length."""
    rng = random.Random(1)
    vocabulary, weights = zipf_vocabulary(rng)
    with tempfile.TemporaryDirectory() as tmp:
        generate_site(multi_host_spec(max(1, count // 100 + 1), 100), Path(tmp), 8080)
        files = sorted(Path(tmp).rglob("*.html"))[:count]
        parsed = [
            parse_page(f.read_bytes(), "text/html", f"http://h/{f.name}", max_links=1000, robots_name="bench")
            for f in files
        ]
    sitegen = [(p.title, p.text) for p in parsed]
    zipf = [(p.title, zipf_text(len(p.text or ""), rng, vocabulary, weights)) for p in parsed]
    return {"sitegen": sitegen, "zipf": zipf}


def time_tree(tree: Path, payload: bytes) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-c", _TIMER],
        input=payload,
        capture_output=True,
        check=True,
        cwd=tree,  # `-c` puts the working directory first on the path
        env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"},
    )
    result: dict[str, float] = json.loads(done.stdout)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pages", type=int, default=200)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--tree", type=Path, action="append", help="a source tree to time (repeat to compare)")
    args = p.parse_args(argv)
    trees = [t.resolve() for t in (args.tree or [REPO_ROOT])]
    sets = page_sets(args.pages)
    payload = pickle.dumps(sets)
    words = {name: statistics.mean(len((text or "").split()) for _, text in pages) for name, pages in sets.items()}
    print(f"{args.pages} pages; words per page: " + ", ".join(f"{n} {w:.0f}" for n, w in words.items()))
    runs: dict[Path, list[dict[str, float]]] = {tree: [] for tree in trees}
    for _ in range(args.rounds):
        for tree in trees:
            runs[tree].append(time_tree(tree, payload))
    heads = [f"{name} µs/page" for name in sets] + [f"{name} ÷ first" for name in sets]
    print("\n| tree | " + " | ".join(heads) + " |")
    print("|---|" + "---:|" * (2 * len(sets)))
    first = {name: statistics.median(r[name] for r in runs[trees[0]]) for name in sets}
    for tree in trees:
        medians = {name: statistics.median(r[name] for r in runs[tree]) for name in sets}
        cells = " | ".join(f"{medians[n]:.0f}" for n in sets)
        ratios = " | ".join(f"{medians[n] / first[n]:.2f}×" for n in sets)
        print(f"| {tree} | {cells} | {ratios} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
