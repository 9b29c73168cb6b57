"""The workflow sandbox as the workers run it: Temporal's sandbox, with the workflow modules' compiled
code shared by every workflow run of the process.

The sandbox imports a workflow's module afresh for every run (that isolates module state) and would
unmarshal its byte code each time; code objects are immutable, so one copy serves every run and only the
namespace is new. Every sandbox restriction still applies (docs/performance.md has the memory it saves).

The I/O libraries of the activities are passed through: no workflow imports them, but a finalizer of one of
their objects (an unclosed Redis pool) may run inside a workflow's code when the collector does, and its lazy
import would load a second copy of the library into the sandbox, refused its `os.environ` there.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from collections.abc import Sequence
from types import CodeType, ModuleType

from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

WORKFLOW_PACKAGES = ("workflows",)
# Imported from the process, never afresh in the sandbox (see above).
IO_LIBRARIES = ("redis", "aiodocker", "aiohttp", "opentelemetry")


class SharedCodeLoader(importlib.machinery.SourceFileLoader):
    """A source loader that compiles (or unmarshals) a module once per process."""

    _codes: dict[str, CodeType] = {}  # noqa: RUF012 (one cache per process, by design)

    def get_code(self, fullname: str) -> CodeType | None:
        code = self._codes.get(fullname)
        if code is None:
            code = super().get_code(fullname)
            if code is not None:
                self._codes[fullname] = code
        return code


class SharedCodeFinder(importlib.abc.MetaPathFinder):
    """Finds the modules of `packages` as the path finder does, loaded by `SharedCodeLoader`."""

    def __init__(self, packages: Sequence[str]) -> None:
        self.packages = tuple(packages)

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if not any(fullname == p or fullname.startswith(p + ".") for p in self.packages):
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        if spec is None or not isinstance(spec.loader, importlib.machinery.SourceFileLoader):
            return spec
        spec.loader = SharedCodeLoader(spec.loader.name, spec.loader.path)
        return spec


def share_workflow_code(packages: Sequence[str] = WORKFLOW_PACKAGES) -> None:
    """Installs a finder for `packages` once per process (idempotent)."""
    if not any(isinstance(f, SharedCodeFinder) and f.packages == tuple(packages) for f in sys.meta_path):
        sys.meta_path.insert(0, SharedCodeFinder(packages))


def workflow_runner() -> SandboxedWorkflowRunner:
    """The runner every Worker of this process uses: the SDK's sandbox, default restrictions, the I/O
    libraries passed through.
    """
    share_workflow_code()
    return SandboxedWorkflowRunner(restrictions=SandboxRestrictions.default.with_passthrough_modules(*IO_LIBRARIES))
