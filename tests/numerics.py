"""Float comparisons that hold on any machine, at any thread count.

A float32 result computed in another order (another batch size, kernel, thread count, process
count or library) differs from the reference by a few units in the last place *of the magnitudes
that were summed*, not of each element. An element near zero of a unit-norm embedding, or a
logit that happens to be small, carries the absolute error of the whole dot product that made it.
So the tolerance is relative to the largest magnitude of the expected array:

    |actual - expected| <= rtol * max(|expected|)   (element-wise)

float32's machine epsilon is 1.19e-7. The constants below say what each size is for; a test picks
one and says why in a comment when it needs another.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["REORDERED", "DEEP", "CROSS_LIBRARY", "assert_close"]

#: One reduction (a loss, a gradient, a similarity matrix) summed in another order: ~80 ulps,
#: far above the 1-4 ulps seen across machines and thread counts, far below any real change.
REORDERED = 1e-5
#: A whole forward pass (several layers, softmax, layer norm) at another batch size or thread
#: count: each layer re-rounds, so allow ~800 ulps of the output's magnitude.
DEEP = 1e-4
#: Two implementations of the same network (ours against transformers) with other fusions.
CROSS_LIBRARY = 1e-4


def _array(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def assert_close(actual: Any, expected: Any, *, rtol: float = REORDERED, what: str = "") -> None:
    """Assert that every element is within ``rtol`` of the expected array's largest magnitude,
    reporting the worst element relative to that scale when it fails."""
    got, want = _array(actual), _array(expected)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    scale = max(float(np.abs(want).max()) if want.size else 0.0, np.finfo(np.float32).tiny)
    worst = float(np.abs(got - want).max()) if want.size else 0.0
    assert worst <= rtol * scale, f"{what}: max |diff| {worst:.3g} > rtol {rtol:g} x scale {scale:.3g}"
