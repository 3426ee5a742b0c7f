"""BENCHMARKS.md is shared by several benchmark scripts: each owns one marked section."""

from __future__ import annotations

import os
import re
from pathlib import Path


def update_section(name: str, markdown: str, path: Path = Path("BENCHMARKS.md")) -> None:
    """Replace what lies between `<!-- bench:NAME -->` and `<!-- /bench:NAME -->` in `path`.

    The section is appended (and the file created) when absent. Other sections are left
    byte for byte. Raises ValueError if the markers are unbalanced.
    """
    path = Path(path)
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    block = f"{start}\n{markdown.strip()}\n{end}"
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    found = len(pattern.findall(text))
    if found == 1 and text.count(start) == 1 and text.count(end) == 1:
        text = pattern.sub(lambda _: block, text)
    elif found == 0 and start not in text and end not in text:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    else:
        raise ValueError(f"{path}: markers of section {name!r} are unbalanced or repeated")
    # Write then rename, so a crash never leaves the shared file half written.
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
