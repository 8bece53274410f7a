"""Numbers that say how well particles were classified: adjusted Rand index, effective number of classes."""

from __future__ import annotations

import numpy as np


def adjusted_rand_index(labels_true: np.ndarray, labels_pred: np.ndarray) -> float:
    """Adjusted Rand index (Hubert & Arabie 1985) between two labelings of the same items: 1 = identical
    partitions (whatever the label names), ~0 = chance agreement."""
    a = np.asarray(labels_true).ravel()
    b = np.asarray(labels_pred).ravel()
    if a.shape != b.shape:
        raise ValueError(f"labelings differ in length: {a.size} vs {b.size}")
    _, ai = np.unique(a, return_inverse=True)
    _, bi = np.unique(b, return_inverse=True)
    table = np.zeros((ai.max() + 1, bi.max() + 1), dtype=np.int64)
    np.add.at(table, (ai, bi), 1)

    def pairs(x: np.ndarray) -> float:
        x = x.astype(np.float64)
        return float((x * (x - 1) / 2).sum())

    index = pairs(table)
    sa, sb = pairs(table.sum(1)), pairs(table.sum(0))
    total = a.size * (a.size - 1) / 2
    expected = sa * sb / total if total else 0.0
    top = 0.5 * (sa + sb)
    if top == expected:
        return 1.0
    return float((index - expected) / (top - expected))


def effective_classes(posteriors: np.ndarray) -> np.ndarray:
    """Per-particle effective number of classes ``1 / sum_k p_k^2`` of posteriors ``(N, K)`` (1 = certain)."""
    p = np.asarray(posteriors, dtype=np.float64)
    return 1.0 / np.maximum((p * p).sum(axis=1), 1e-300)
