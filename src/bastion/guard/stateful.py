"""Stateful query detection per API key (Chen, Carlini & Wagner, "Stateful Detection of Black-Box Adversarial
Attacks", ACM AsiaCCS Security and Privacy on AI workshop 2020).

Query-based attacks send many queries close to earlier ones: Jacobian augmentation's synthetic points sit at
λ·sign(J) from a point queried in an earlier round (Papernot et al., AsiaCCS 2017), and black-box evasion attacks
(Square, HopSkipJump) probe around the input they perturb. Natural traffic rarely comes that close to itself. As in
the paper, each key keeps a bounded buffer of its most recent queries; a new query's score is the mean L2 distance to
its `k` nearest buffered queries; a score below the threshold — the `quantile` of the same score on natural traffic
(a stream of the reference data's held-out half, `Reference.held_out`) — is a close query, and the key is flagged
once `hits` close queries fall within its last `buffer` queries (the paper counts detections; one natural close pair
in a thousand must not flag a client). The paper compares queries in a learned similarity encoding; the guard
compares the raw inputs (no encoder is trained for an arbitrary served model), which suits small inputs such as the
demo digits. Exact repeats (distance 0) are skipped as neighbours: a repeated query tells an attacker nothing new,
and clients retry.

A per-key buffer is blind to an attacker who splits its stream over several keys (the Sybil attack the paper
discusses): children arrive on a key that never sent their parents. With `stateful_scope: tier` every query is also
scored against the tier's recent queries from all keys (`SharedQueries`), and the smaller score counts; the hits
are still counted per key, so the key that sends the close queries is the one flagged.
"""

from __future__ import annotations

import threading

import numpy as np

REPEAT = 1e-6  # a squared distance within this share of the query's squared norm is a repeat (float32 rounding)


def knn_scores(queries: np.ndarray, buffer: np.ndarray, k: int, buffer_sq: np.ndarray | None = None) -> np.ndarray:
    """Each query's mean L2 distance to its k nearest buffered queries, exact repeats excluded (inf if none).

    Queries are compared to the buffer and to the queries before them in the batch (the order they arrived in);
    `buffer_sq` (the rows' squared norms) saves recomputing them per request.
    """
    return scores_and_repeats(queries, buffer, k, buffer_sq)[0]


def scores_and_repeats(queries: np.ndarray, buffer: np.ndarray, k: int,
                       buffer_sq: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """`knn_scores` and whether each query repeats a buffered or earlier one exactly."""
    q = np.asarray(queries, dtype=np.float32).reshape(len(queries), -1)
    q_sq = (q * q).sum(1)
    old_sq = (buffer * buffer).sum(1) if buffer_sq is None else buffer_sq
    parts = [q_sq[:, None] + old_sq[None, :] - 2.0 * (q @ buffer.T)] if len(buffer) else []
    if len(q) > 1:  # the batch against itself: only earlier queries count
        inner = q_sq[:, None] + q_sq[None, :] - 2.0 * (q @ q.T)
        inner[np.triu_indices(len(q))] = np.inf
        parts.append(inner)
    if not parts:
        return np.full(len(q), np.inf), np.zeros(len(q), dtype=bool)
    d2 = np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]
    same = d2 <= REPEAT * (1.0 + q_sq[:, None])  # exact repeats (and float32 rounding around them)
    d2[same] = np.inf
    kk = min(k, d2.shape[1])
    if kk == 1:
        return np.sqrt(d2.min(1)).astype(np.float64), same.any(1)
    nearest = np.partition(d2, kk - 1, axis=1)[:, :kk] if kk < d2.shape[1] else d2
    return np.sqrt(nearest).mean(1, dtype=np.float64), same.any(1)


def calibrate(natural: np.ndarray, k: int, buffer: int, quantile: float, seed: int = 0) -> float:
    """The `quantile` of natural traffic's score: `natural` sent in a random order as one key's stream."""
    x = np.asarray(natural, dtype=np.float32).reshape(len(natural), -1)
    x = x[np.random.default_rng(seed).permutation(len(x))]
    scores = np.concatenate([knn_scores(x[i:i + 256], x[max(0, i - buffer):i], k) for i in range(0, len(x), 256)])
    scores = scores[np.isfinite(scores)][k:]  # the first queries have fewer than k neighbours
    if len(scores) == 0:
        raise ValueError("the stateful detector needs at least k + 2 natural samples to calibrate")
    return float(np.quantile(scores, quantile))


class QueryRing:
    """The most recent `size` queries (flattened float32 rows, a ring) with their squared norms."""

    def __init__(self, size: int):
        self.size = size
        self.rows: np.ndarray | None = None
        self.sq = np.zeros(size, np.float32)
        self.count = 0  # queries ever added

    def score(self, flat: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """`scores_and_repeats` of flattened queries against the ring (and the batch's earlier queries)."""
        if self.rows is None:
            self.rows = np.empty((self.size, flat.shape[1]), np.float32)
        held = min(self.count, self.size)
        return scores_and_repeats(flat, self.rows[:held], k, self.sq[:held])

    def add(self, flat: np.ndarray) -> np.ndarray:
        """Buffer flattened queries (the last `size` of them); the ring slots they took."""
        flat = flat[-self.size:]
        slots = (self.count + np.arange(len(flat))) % self.size
        self.rows[slots] = flat  # type: ignore[index]
        self.sq[slots] = (flat * flat).sum(1)
        self.count += len(flat)
        return slots


class SharedQueries(QueryRing):
    """A tier's most recent `size` queries from all its keys, scored against and added to under a lock."""

    def __init__(self, size: int):
        super().__init__(size)
        self.lock = threading.Lock()

    def score_then_add(self, flat: np.ndarray, k: int) -> np.ndarray:
        """Each query's score against the tier's earlier queries (repeats excluded), then buffer the queries."""
        with self.lock:
            scores, _ = self.score(flat, k)
            self.add(flat)
            return scores


class StatefulDetector:
    """One key's buffer of recent queries and its close-query count; `observe(x)` says whether it is flagged now.

    Exact repeats are not buffered, so an attacker cannot flush the buffer by resending one query: pushing a parent
    out takes `buffer` distinct queries that are not close to one another either.
    """

    def __init__(self, threshold: float, k: int, hits: int, buffer: int, shared: SharedQueries | None = None):
        self.threshold, self.k, self.hits, self.size, self.shared = threshold, k, hits, buffer, shared
        self.ring = QueryRing(buffer)
        self.close = np.zeros(buffer, dtype=bool)  # close flags of the last `buffer` queries (slots as the ring's)

    def observe(self, x: np.ndarray) -> bool:
        """Score a batch against the buffer, then buffer it; True when `hits` close queries are in the window."""
        flat = np.asarray(x, dtype=np.float32).reshape(len(x), -1)[-self.size:]
        scores, repeated = self.ring.score(flat, self.k)
        flat, scores = flat[~repeated], scores[~repeated]  # a repeat neither scores nor takes a buffer slot
        if self.shared is not None and len(flat):
            scores = np.minimum(scores, self.shared.score_then_add(flat, self.k))
        self.close[self.ring.add(flat)] = scores < self.threshold
        return int(self.close[:min(self.ring.count, self.size)].sum()) >= self.hits
