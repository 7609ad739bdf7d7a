"""Runs a model part by part, as bias correction needs it: each round
computes some tensors whose upstream changes (corrected biases) are all
done, and the next round changes the nodes that produced them. Instead of
running the model from its inputs every round (a cost that grows with the
square of the depth), the tensors that no later change can reach are kept,
per batch, at the frontier between what is final and what is not, and the
next round starts from them.

Memory: the kept tensors for every batch. Past ``budget_bytes`` the runner
drops them and runs from the model's inputs from then on (the same values,
at the old cost)."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx
import onnx.helper
import onnx.numpy_helper

from onnxquant._recovery_runs import _reads, _session

# Past this, the kept tensors are dropped (see the module's docstring).
BUDGET_BYTES = 2 << 30


class FrontierRunner:
    """``model``'s tensors on ``feeds`` (batches of graph inputs), round by
    round. ``upstream[i]``: the names of the changeable nodes upstream of
    node i, itself included if it is one; a node is final once all of them
    are in the ``done`` set passed to :meth:`run`."""

    def __init__(self, model: onnx.ModelProto, feeds: list[dict[str, np.ndarray]],
                 upstream: list[frozenset[str]], budget_bytes: int | None = None) -> None:
        self.model = model
        self.feeds = feeds
        self.upstream = upstream
        self.budget = BUDGET_BYTES if budget_bytes is None else budget_bytes
        self.nodes = list(model.graph.node)
        self.producer = {o: i for i, n in enumerate(self.nodes) for o in n.output if o}
        self.readers: dict[str, list[int]] = defaultdict(list)
        for i, n in enumerate(self.nodes):
            for name in _reads(n):
                self.readers[name].append(i)
        # Inputs fed by the caller: not an initializer listed as an input too.
        self.graph_inputs = ({i.name for i in model.graph.input}
                             - {t.name for t in model.graph.initializer})
        self.kept: dict[str, list[np.ndarray]] = {}
        self.settled: set[int] = set()
        self.node_runs = 0  # nodes run over all rounds (per batch)

    def _available(self, name: str) -> bool:
        return name in self.kept or name in self.graph_inputs

    def _slice(self, wanted: list[str]) -> list[int]:
        """The nodes that compute ``wanted`` from the kept tensors and the
        graph inputs, in graph order."""
        needed = [n for n in wanted if not self._available(n)]
        seen: set[int] = set()
        while needed:
            name = needed.pop()
            i = self.producer.get(name)
            if i is None or i in seen:
                continue
            seen.add(i)
            needed.extend(r for r in _reads(self.nodes[i]) if not self._available(r))
        return sorted(seen)

    def run(self, wanted: list[str], done: set[str],
            initializers: dict[str, onnx.TensorProto]) -> list[list[np.ndarray]]:
        """Per batch, the values of ``wanted`` (in that order), computed with
        ``initializers`` (the model's, some replaced)."""
        part = self._slice(wanted)
        final = {i for i in part if self.upstream[i] <= done}
        in_part = set(part)
        keep = []
        for i in sorted(final):
            for name in self.nodes[i].output:
                if name and name not in wanted and any(
                        r not in final for r in self.readers.get(name, ())):
                    keep.append(name)
        keep = [k for k in keep if k not in self.kept] if self.keeps() else []
        reads = set()
        for i in part:
            reads |= _reads(self.nodes[i])
        inputs = sorted(r for r in reads if self._available(r) and self.producer.get(r)
                        not in in_part)
        graph = onnx.helper.make_graph(
            [self.nodes[i] for i in part], self.model.graph.name,
            [self._value_info(name) for name in inputs],
            [onnx.ValueInfoProto(name=name) for name in wanted + keep],
            [t for name, t in initializers.items() if name in reads])
        sub = onnx.helper.make_model(graph, opset_imports=self.model.opset_import,
                                     ir_version=self.model.ir_version)
        for f in self.model.functions:
            sub.functions.append(f)
        session = _session(sub)
        names = wanted + keep
        results: list[list[np.ndarray]] = []
        new_kept: dict[str, list[np.ndarray]] = {k: [] for k in keep}
        for b, feed in enumerate(self.feeds):
            values = session.run(names, {n: self._value(n, b, feed) for n in inputs})
            results.append(values[:len(wanted)])
            for k, v in zip(keep, values[len(wanted):]):
                new_kept[k].append(v)
        self.node_runs += len(part)
        self.settled |= final
        self._keep(new_kept)
        return results

    def _value_info(self, name: str) -> onnx.ValueInfoProto:
        if name in self.graph_inputs:
            return next(i for i in self.model.graph.input if i.name == name)
        sample = self.kept[name][0]
        return onnx.helper.make_tensor_value_info(
            name, onnx.helper.np_dtype_to_tensor_dtype(sample.dtype),
            [None] * sample.ndim)

    def _value(self, name: str, batch: int, feed: dict[str, np.ndarray]) -> np.ndarray:
        return self.kept[name][batch] if name in self.kept else feed[name]

    def _keep(self, new: dict[str, list[np.ndarray]]) -> None:
        if not self.keeps():
            return
        self.kept.update(new)
        # A kept tensor is needed while some reader of it has not run final.
        for name in [k for k in self.kept
                     if all(r in self.settled for r in self.readers.get(k, ()))]:
            del self.kept[name]
        if sum(v.nbytes for values in self.kept.values() for v in values) > self.budget:
            self.kept.clear()
            self.budget = -1  # from now on, every round runs from the inputs

    def keeps(self) -> bool:
        """Whether tensors are still kept between rounds (False once the
        budget was exceeded)."""
        return self.budget >= 0
