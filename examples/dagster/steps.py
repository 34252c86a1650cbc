"""The steps of the example Dagster pipeline: plain functions that titan workers run.

They import neither Dagster nor titan: a worker needs only to import this module (run it from the
repository root, or put the root on its PYTHONPATH). ``pipeline.py`` makes Dagster ops of them.
"""

from __future__ import annotations

import os
import random
import sys
from typing import Any


def extract(rows: int = 200, seed: int = 7) -> dict[str, list[float]]:
    """Make a data set (y = 3x + 2 plus noise) and split it 80/20 into train and test rows."""
    if rows < 10:
        raise ValueError(f"extract needs at least 10 rows to split, got {rows}")
    rng = random.Random(seed)
    xs = [rng.uniform(-1.0, 1.0) for _ in range(rows)]
    ys = [3.0 * x + 2.0 + rng.gauss(0.0, 0.1) for x in xs]
    cut = rows * 4 // 5
    print(f"extracted {rows} rows: {cut} to train, {rows - cut} to test")
    return {"x_train": xs[:cut], "y_train": ys[:cut], "x_test": xs[cut:], "y_test": ys[cut:]}


def train(data: dict[str, list[float]], epochs: int = 200, lr: float = 0.1) -> dict[str, Any]:
    """Fit y = w x + b by gradient descent. Its op requires a ``gpu`` worker: a real model would
    use the device here; this one only says where it ran."""
    xs, ys = data["x_train"], data["y_train"]
    n = len(xs)
    worker = os.environ.get("TITAN_WORKER", "?")
    print(f"training on worker {worker}: {n} rows, {epochs} epochs, lr {lr}", file=sys.stderr)
    w = b = 0.0
    loss = float("inf")
    for epoch in range(1, epochs + 1):
        errors = [w * x + b - y for x, y in zip(xs, ys, strict=True)]
        loss = sum(e * e for e in errors) / n
        w -= lr * 2.0 * sum(e * x for e, x in zip(errors, xs, strict=True)) / n
        b -= lr * 2.0 * sum(errors) / n
        if epoch % max(1, epochs // 4) == 0:
            print(f"epoch {epoch}/{epochs}: loss {loss:.5f}")
    return {"w": w, "b": b, "loss": loss, "epochs": epochs, "trained_on": worker}


def evaluate(model: dict[str, Any], data: dict[str, list[float]]) -> dict[str, Any]:
    """Score the model on the test rows: mean squared error and R²."""
    xs, ys = data["x_test"], data["y_test"]
    predictions = [model["w"] * x + model["b"] for x in xs]
    mse = sum((p - y) ** 2 for p, y in zip(predictions, ys, strict=True)) / len(ys)
    mean = sum(ys) / len(ys)
    r2 = 1.0 - mse * len(ys) / sum((y - mean) ** 2 for y in ys)
    print(f"test mse {mse:.5f}, r2 {r2:.4f} (w {model['w']:.3f}, b {model['b']:.3f})")
    return {"mse": mse, "r2": r2, "rows": len(ys), "trained_on": model["trained_on"]}
