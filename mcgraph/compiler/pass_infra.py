"""Pass contract and pipeline.

A pass declares whether it may change the graph; `requires` checks its preconditions, `call` does the
work and returns a `PassResult` saying whether anything changed, `ensures` checks its postconditions.
The `PassManager` runs passes in order, verifies the graph after each one (always on by default),
enforces the declared read-only-ness of analyses by fingerprinting the graph, wraps every failure in a
`PassError` naming the pass, and can dump the graph before/after each pass for debugging.
Modelled on torch.fx.passes.infra (PassResult) and onnx-ir's pass infra (declared in-place-ness,
pre/postcondition errors).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch.fx

from mcgraph.errors import McGraphError, PassError
from mcgraph.compiler.verifier import verify_graph


@dataclass
class PassResult:
    """What a pass returns: the graph, whether it changed, its typed product (what a rewrite built besides
    the graph, e.g. SplitStack's `StackSplit`; None for most passes) and plain statistics in `info`."""

    graph_module: torch.fx.GraphModule
    modified: bool
    info: dict[str, Any] = field(default_factory=dict)
    product: Any = None
    products: dict[str, Any] = field(default_factory=dict)  # PassManager.run: each pass's product by name


class GraphPass:
    """Base class. Subclasses set `name`, `mutates`, and implement `call` (and optionally requires/ensures)."""

    name: ClassVar[str] = "pass"
    mutates: ClassVar[bool] = False  # analyses are read-only; the manager enforces it

    def requires(self, gm: torch.fx.GraphModule) -> None:
        """Raise PassError if the graph lacks what this pass needs (e.g. an earlier analysis)."""

    def call(self, gm: torch.fx.GraphModule) -> PassResult:
        raise NotImplementedError

    def ensures(self, gm: torch.fx.GraphModule) -> None:
        """Raise PassError if the pass's guarantees do not hold on its output."""

    def config(self) -> dict[str, Any]:
        """What, besides the code, determines this pass's output (hashed into `uuid`)."""
        return {}

    def uuid(self) -> str:
        """Stable identity of (pass, config): safe as an Inductor custom-pass cache key."""
        payload = json.dumps({"pass": f"{type(self).__module__}.{type(self).__qualname__}", **self.config()},
                             sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def fail(self, reason: str, node: torch.fx.Node | None = None, cls: type[PassError] = PassError):
        raise cls(self.name, reason, node)

    def __call__(self, gm: torch.fx.GraphModule) -> PassResult:
        self.requires(gm)
        result = self.call(gm)
        self.ensures(result.graph_module)
        return result


def graph_fingerprint(gm: torch.fx.GraphModule) -> str:
    """Hash of the graph's structure (ops, args, targets); node.meta is excluded on purpose."""
    h = hashlib.sha256()
    for n in gm.graph.nodes:
        h.update(f"{n.op}|{n.name}|{n.target}|{n.args}|{sorted(n.kwargs.items())}\n".encode())
    return h.hexdigest()


class PassManager:
    """Run passes in order; verify after each; enforce read-only analyses; optional debug dumps."""

    def __init__(self, passes: Sequence[GraphPass], *, verify: bool = True, dump_dir: str | Path | None = None):
        self.passes = list(passes)
        self.verify = verify
        self.dump_dir = Path(dump_dir) if dump_dir else None
        self.results: list[tuple[str, PassResult]] = []

    def _dump(self, index: int, p: GraphPass, when: str, gm: torch.fx.GraphModule):
        if self.dump_dir is None:
            return
        self.dump_dir.mkdir(parents=True, exist_ok=True)
        path = self.dump_dir / f"{index:02d}_{p.name}_{when}.txt"
        path.write_text(str(gm.graph))

    def run(self, gm: torch.fx.GraphModule) -> PassResult:
        modified_any = False
        for i, p in enumerate(self.passes):
            self._dump(i, p, "before", gm)
            before = None if p.mutates else graph_fingerprint(gm)
            try:
                result = p(gm)
            except McGraphError:
                raise
            except Exception as exc:  # a bug or an unexpected graph: still name the pass
                raise PassError(p.name, f"crashed with {type(exc).__name__}: {exc}") from exc
            if not p.mutates and graph_fingerprint(gm) != before:
                raise PassError(p.name, "declared read-only (mutates=False) but changed the graph")
            gm = result.graph_module  # a read-only pass may still return a new graph it built
            if p.mutates and result.modified:
                gm.recompile()
            if self.verify:
                verify_graph(gm, p.name)
            self._dump(i, p, "after", gm)
            self.results.append((p.name, result))
            modified_any |= result.modified
        return PassResult(gm, modified_any, {name: r.info for name, r in self.results},
                          product=self.results[-1][1].product if self.results else None,
                          products={name: r.product for name, r in self.results if r.product is not None})
