"""Build hook: a wheel carries the generated gRPC code (vault.gen) without it being committed.

Everything else about the package is declared in pyproject.toml. build_py runs
scripts/gen_proto.py into the build directory, so a wheel built from a clean checkout or from
the sdist (which ships proto/ and the script, see MANIFEST.in) contains vault/gen. An editable
install imports vault/gen from the work tree, which `make proto` keeps current.
"""

from __future__ import annotations

import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


class BuildPyWithProtos(build_py):
    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return
        sys.path.insert(0, str(ROOT / "scripts"))
        try:
            import gen_proto
        finally:
            sys.path.remove(str(ROOT / "scripts"))
        self._generated = gen_proto.generate(out_dir=Path(self.build_lib) / "vault" / "gen")

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        generated = [str(path) for path in getattr(self, "_generated", [])]
        return [*super().get_outputs(include_bytecode), *generated]


setup(cmdclass={"build_py": BuildPyWithProtos})
