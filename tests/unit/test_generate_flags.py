"""`ftl generate` flags refused before the model loads: a --prompt that is not UTF-8 (a tokenizer
TypeError traceback), a temperature or top-p that is not a number (nan went greedy, inf garbage)."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.conftest import FTL, REPO


@pytest.mark.parametrize(
    "flags,said",
    [
        ([b"--prompt", b"\xff hi"], "--prompt is not UTF-8 text"),
        ([b"--prompt", b"hi", b"--system", b"\xfe"], "--system is not UTF-8 text"),
        ([b"--prompt", b"hi", b"--temperature", b"nan"], "--temperature and --top-p must be numbers"),
        ([b"--prompt", b"hi", b"--top-p", b"inf"], "--temperature and --top-p must be numbers"),
    ],
)
def test_generate_flags_refused_before_the_model_loads(flags: list[bytes], said: str) -> None:
    args = [os.fsencode(part) for part in FTL] + [b"generate", b"no-such-run", *flags]
    out = subprocess.run(args, cwd=REPO, capture_output=True, timeout=120)
    stderr = out.stderr.decode(errors="replace")
    assert out.returncode == 2 and said in stderr and "Traceback" not in stderr, stderr[-2000:]
