"""Summaries of py-spy's collapsed stacks (``py-spy record -f raw``): where the time went."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

_LINE = re.compile(r":\d+\)$")


def summarize(paths: list[Path], top: int = 40) -> str:
    """Inclusive and self shares per function over all samples of ``paths``."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    total = 0
    for path in paths:
        for line in path.read_text(errors="replace").splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack or not count.isdigit():
                continue
            n = int(count)
            frames = stack.split(";")
            total += n
            threads[re.sub(r"[\d()]|0x[0-9a-f]+", "", frames[0]).strip()] += n
            seen = set()
            for frame in frames[1:]:
                name = _LINE.sub(")", frame)
                if name not in seen:
                    inclusive[name] += n
                    seen.add(name)
            own[_LINE.sub(")", frames[-1])] += n
    if not total:
        return "no samples\n"
    out = [f"{total} samples (threads holding the GIL) from {len(paths)} worker(s)", "", "by thread:"]
    out += [f"  {100 * n / total:5.1f}%  {name}" for name, n in threads.most_common()]
    out += ["", "inclusive (a function and what it calls):"]
    out += [f"  {100 * n / total:5.1f}%  {name}" for name, n in inclusive.most_common(top)]
    out += ["", "self:"]
    out += [f"  {100 * n / total:5.1f}%  {name}" for name, n in own.most_common(top)]
    return "\n".join(out) + "\n"
