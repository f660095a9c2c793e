"""Errors that name what went wrong where: the pass, the graph node, the source module and the reason."""

from __future__ import annotations

import torch.fx


def describe_node(node: torch.fx.Node) -> str:
    """'node add_5 (aten.add.Tensor) in module blocks.0.attn1 at causal_dit.py:135' -- as much as is known."""
    parts = [f"node {node.name!r} ({node.op} {_target_name(node)})"]
    module = module_path(node)
    if module:
        parts.append(f"in module {module!r}")
    trace = node.meta.get("stack_trace")
    if trace:
        lines = [ln.strip() for ln in trace.strip().splitlines() if ln.strip().startswith("File ")]
        if lines:
            parts.append(f"from {lines[-1]}")
    return " ".join(parts)


def module_path(node: torch.fx.Node) -> str:
    """Qualified name of the innermost nn.Module a node was traced in ('' for the root)."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path, _ = list(stack.values())[-1]
    return "" if str(path).startswith("_empty_nn_module_stack") else str(path)


def _target_name(node: torch.fx.Node) -> str:
    t = node.target
    return str(t) if hasattr(t, "_schema") else getattr(t, "__name__", str(t))


class McGraphError(RuntimeError):
    """Base class of every error mcgraph raises on purpose."""


class CaptureError(McGraphError):
    """The model could not be captured into the ATen graph IR."""


class PassError(McGraphError):
    """A pass could not run, or left the graph in a state it promised not to."""

    def __init__(self, pass_name: str, reason: str, node: torch.fx.Node | None = None):
        self.pass_name = pass_name
        self.reason = reason
        self.node_name = node.name if node is not None else None
        where = f" at {describe_node(node)}" if node is not None else ""
        super().__init__(f"[{pass_name}] {reason}{where}")


class VerificationError(PassError):
    """The graph verifier found a broken invariant after a pass."""


class StructureNotFound(PassError):
    """An analysis could not find the structure it looks for (no attention, no repeated blocks, ...)."""


class ConfigError(McGraphError, ValueError):
    """An invalid or impossible configuration; the message names the field."""
