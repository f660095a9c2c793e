"""The traced mode of the one step as a module of tensors only, for torch.compile and ONNX export.

    StepGraph(flat inputs..., state...) -> (flat outputs..., recomputed [B, L] bool, executed [] int64, new state...)

Matches: a `CacheStep`. Requires: static capacity buckets (the config's, else `DEFAULT_GRAPH_BUCKETS`).
Guarantees: it computes `CacheStep(flat, state, traced=True)`, nothing else: the decision, the skip / bucket /
full branches and the state update are the step's own code. The state is a flat list in `state_names` order
(see `docs/ARCHITECTURE.md`); `initial_state` gives a context's first-call tensors (computes 0).
"""

from __future__ import annotations

import torch

from mcgraph.runtime.step import DEFAULT_GRAPH_BUCKETS, CacheStep

DECISION_OUTPUTS = ("mcgraph_recomputed", "mcgraph_executed")


class StepGraph(torch.nn.Module):
    """See module docstring. `example_flat`: the flat inputs of one call, fixing the state's layout."""

    def __init__(self, step: CacheStep, example_flat: list, buckets: tuple[float, ...] | None = None):
        super().__init__()
        self.__dict__["step"] = step  # not a module; its graphs are registered below so their weights are ours
        g = step.graphs
        self.prologue, self.stack, self.epilogue = g.prologue, g.stack, g.epilogue
        self.subset_stack = g.subset_stack_functional
        self.buckets = tuple(buckets or step.config.capacity_buckets or DEFAULT_GRAPH_BUCKETS)
        self.num_inputs = len(g.input_names)
        with torch.no_grad():
            front = step.front(example_flat)
            template = step.initial_state(front)
            self.num_outputs = len(g.epilogue(front.h0, *[front.values[n] for n in g.epilogue_inputs]))
        self.tokens = front.tokens
        self.frames = front.frames
        self.plain_state = [k for k in template if k != "kv"]
        self.state_names = self.plain_state + [f"{kind}_cache_{i}" for i in range(len(template["kv"]) // 2)
                                               for kind in ("k", "v")]

    def state_to_list(self, state: dict) -> list[torch.Tensor]:
        return [state[k] for k in self.plain_state] + list(state["kv"])

    def state_from_list(self, values) -> dict:
        values = list(values)
        state = dict(zip(self.plain_state, values[:len(self.plain_state)]))
        state["kv"] = values[len(self.plain_state):]
        return state

    def initial_state(self, flat: list) -> list[torch.Tensor]:
        with torch.no_grad():
            return self.state_to_list(self.step.initial_state(self.step.front(flat)))

    def forward(self, *args):
        flat, state = list(args[:self.num_inputs]), self.state_from_list(args[self.num_inputs:])
        result = self.step(flat, state, traced=True, buckets=self.buckets)
        new = self.state_to_list(result.new_state)
        if torch.compiler.is_exporting():
            # a state the policy leaves as is (TeaCache's weights) would be an input returned as an output, which
            # export turns into one value with the output's name: the file would lose the state_<name> input.
            # (Export only: under dynamo this identity test would become a guard on object ids.)
            given = {id(t) for t in args[self.num_inputs:]}
            new = [t.clone() if id(t) in given else t for t in new]
        return (*result.outputs, result.recomputed, result.executed, *new)

    def output_names(self) -> list[str]:
        outs = [f"output_{i}" for i in range(self.num_outputs)]
        return outs + list(DECISION_OUTPUTS) + [f"new_state_{n}" for n in self.state_names]

