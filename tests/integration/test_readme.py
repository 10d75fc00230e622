"""The README's example runs as written (only the controller address is swapped)."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_example_writes_and_reads_back_every_event(shared_standalone):
    text = README.read_text()
    assert text.index("make run") < text.index("```python"), "the two commands come first"
    assert "make test" in text
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    code = code.replace("tcp://127.0.0.1:9090", shared_standalone.controller)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, str(README), "exec"), {})
    lines = out.getvalue().splitlines()
    assert len(lines) == 1000
    assert sorted(lines) == sorted(repr(b"reading %d" % i) for i in range(1000))
