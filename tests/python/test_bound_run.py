"""BoundRunner: outputs written into reused buffers equal session.run's."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from onnxquant._bound_run import BoundRunner

NONZERO = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[N, 4] x) => (float[N, 4] y, int64[2, M] idx) {
    y = Relu (x)
    idx = NonZero (y)
}
"""


def _session(model):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def test_bound_outputs_equal_plain_runs_across_shapes(small_cnn_model):
    session = _session(small_cnn_model)
    fetch = [o.name for o in session.get_outputs()]
    name = session.get_inputs()[0].name
    runner = BoundRunner(session, fetch)
    rng = np.random.default_rng(3)
    # Full batches, a shorter one, a third shape (beyond the shapes kept), and
    # back: every result must be the plain run's, computed afresh.
    for n in (4, 4, 4, 3, 4, 2, 3, 4):
        x = rng.standard_normal((n, 3, 8, 8), dtype=np.float32)
        got = [a.copy() for a in runner.run({name: x})]
        want = session.run(fetch, {name: x})
        assert len(got) == len(want)
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b)
    runner.release()


def test_value_dependent_output_shape_falls_back_to_plain_runs(parse_model):
    session = _session(parse_model(NONZERO))
    runner = BoundRunner(session, ["y", "idx"])
    rng = np.random.default_rng(4)
    for _ in range(4):
        # Same input shape, but NonZero's output length changes with the values.
        x = rng.standard_normal((5, 4), dtype=np.float32)
        y, idx = runner.run({"x": x})
        np.testing.assert_array_equal(y, np.maximum(x, 0))
        np.testing.assert_array_equal(idx, np.array(np.nonzero(np.maximum(x, 0))))
