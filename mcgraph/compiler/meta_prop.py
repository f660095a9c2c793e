"""Refresh shape metadata of a rewritten graph by running it once on real example inputs.

Rewrites change sizes (a token subset instead of all tokens), so copied `val` metadata would lie; running
the graph also proves at build time that it executes. Each node gets `meta['val']`: a meta-device tensor of
the real shape and dtype (or the int / tuple it produced)."""

from __future__ import annotations

from typing import Any

import torch
import torch.fx


def _describe(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return torch.empty(value.shape, dtype=value.dtype, device="meta")
    if isinstance(value, (list, tuple)):
        return type(value)(_describe(v) for v in value)
    return value


class _Recorder(torch.fx.Interpreter):
    def run_node(self, n: torch.fx.Node) -> Any:
        result = super().run_node(n)
        if n.op != "output":
            n.meta["val"] = _describe(result)
        return result


def propagate(gm: torch.fx.GraphModule, *inputs) -> Any:
    with torch.no_grad():
        return _Recorder(gm).run(*inputs)
