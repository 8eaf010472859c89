"""Real English text derived at run time from the installed Python standard library's docstrings.

Nothing is downloaded and no text is pasted into the repo: the prose of the stdlib's documentation strings is
collected in a fixed module order, so the text is the same for a given Python version.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import re

# Modules whose docstrings are long, prose-heavy and present in every CPython build.
SOURCE_MODULES = (
    "argparse", "asyncio.events", "collections", "configparser", "contextlib", "csv", "dataclasses", "datetime",
    "decimal", "difflib", "email.message", "enum", "fractions", "functools", "heapq", "http.client",
    "http.cookiejar", "inspect", "ipaddress", "itertools", "json", "logging", "mailbox", "multiprocessing.pool",
    "optparse", "os", "pathlib", "pickle", "pydoc", "random", "shutil", "socket", "statistics", "string",
    "subprocess", "tarfile", "textwrap", "threading", "typing", "unittest.case", "urllib.parse", "uuid", "zipfile",
)
_PROSE_LINE = re.compile(r"^[A-Z][^<>{}\[\]|=#$@\\]*[a-z][^<>{}\[\]|=#$@\\]*$")


def _paragraphs(doc: str) -> list[str]:
    out = []
    for block in re.split(r"\n\s*\n", inspect.cleandoc(doc)):
        lines = [line.strip() for line in block.splitlines()]
        text = " ".join(lines)
        words = text.split()
        # Keep prose: sentences of ordinary words, no doctest, no indented code or tables.
        if (len(words) >= 12 and text.isascii() and text.rstrip().endswith(".") and _PROSE_LINE.match(text)
                and not any(line.startswith((">>>", "...", "-", "*", ":")) for line in lines)):
            out.append(text)
    return out


@functools.cache
def stdlib_prose() -> str:
    """Paragraphs of English prose from stdlib docstrings, deduplicated, in a fixed order."""
    seen: set[str] = set()
    paragraphs: list[str] = []
    for name in SOURCE_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        objects = [module] + [obj for _, obj in sorted(vars(module).items()) if inspect.isclass(obj)
                              or inspect.isfunction(obj)]
        for obj in objects:
            members = [obj] + ([m for _, m in sorted(vars(obj).items()) if inspect.isfunction(m)]
                               if inspect.isclass(obj) else [])
            for member in members:
                if getattr(member, "__module__", name) != name:
                    continue
                for para in _paragraphs(inspect.getdoc(member) or ""):
                    if para not in seen:
                        seen.add(para)
                        paragraphs.append(para)
    return "\n\n".join(paragraphs)
