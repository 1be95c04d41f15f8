"""Where the time goes: summarises the py-spy raw profiles that `python -m bench.throughput --profile DIR`
records (collapsed stacks, one `frame;frame;... count` line each) per process kind.

    python -m bench.profile_summary DIR [--top 15]

For each kind: samples (py-spy samples active threads only, at 100 Hz: a sample is 10 ms on a CPU
or waiting in a syscall that is not idle), the share of each category (database driver and
SQLAlchemy, Redis, validation, logging, ...) by the innermost frame that belongs to one, and the
heaviest project functions by inclusive share.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter, defaultdict
from pathlib import Path

# First match wins, tested from the leaf upwards: the innermost recognisable layer gets the sample.
CATEGORIES: list[tuple[str, re.Pattern[str]]] = [
    ("logging (structlog)", re.compile(r"structlog/|logging/__init__|config/logging\.py")),
    ("validation (marshmallow)", re.compile(r"marshmallow/")),
    ("json (orjson/json)", re.compile(r"\bjson/|orjson")),
    ("postgres driver (psycopg)", re.compile(r"psycopg/|psycopg_binary")),
    ("sqlite driver", re.compile(r"sqlite3/")),
    ("redis client", re.compile(r"redis/|hiredis")),
    ("sqlalchemy core (compile, execute, results)", re.compile(r"sqlalchemy/")),
    ("http server (gunicorn, werkzeug, flask)", re.compile(r"gunicorn/|werkzeug/|flask/|flask_smorest/")),
    ("deepcopy", re.compile(r"copy\.py")),
    ("baton lifecycle (pure)", re.compile(r"controller/domain/lifecycle\.py")),
    ("baton code", re.compile(r"(controller|participants|contracts|config)/")),
]
FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*):(?P<line>\d+)\)$")


def parse(path: Path) -> list[tuple[list[str], int]]:
    stacks = []
    for line in path.read_text(errors="replace").splitlines():
        head, _, count = line.rpartition(" ")
        if not head or not count.isdigit():
            continue
        stacks.append((head.split(";"), int(count)))
    return stacks


def category(frames: list[str]) -> str:
    for frame in reversed(frames):
        for name, pattern in CATEGORIES:
            if pattern.search(frame):
                return name
    return "other"


def summarise(paths: list[Path], top: int) -> str:
    stacks = [s for p in paths for s in parse(p)]
    total = sum(c for _, c in stacks)
    if not total:
        return "  (no samples)\n"
    cats: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for frames, count in stacks:
        cats[category(frames)] += count
        seen = set()
        for frame in frames:
            m = FRAME.match(frame)
            if not m or not re.match(r"(controller|participants|contracts|config)/", m["file"]):
                continue
            key = f"{m['func']} ({m['file']})"
            if key not in seen:
                seen.add(key)
                inclusive[key] += count
    out = [f"  samples: {total} ({total / 100:.1f} s active)\n", "  by layer (innermost):\n"]
    out += [f"    {100 * n / total:5.1f} %  {name}\n" for name, n in cats.most_common()]
    out.append("  heaviest Baton functions (inclusive):\n")
    out += [f"    {100 * n / total:5.1f} %  {name}\n" for name, n in inclusive.most_common(top)]
    return "".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("dir", type=Path)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    groups: dict[str, list[Path]] = defaultdict(list)
    for path in sorted(args.dir.glob("*.txt")):
        scenario, kind, *_ = path.name.split(".")
        groups[f"{scenario} {kind}"].append(path)
    for name, paths in groups.items():
        print(f"{name}:")
        print(summarise(paths, args.top))


if __name__ == "__main__":
    main()
