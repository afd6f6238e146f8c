"""The learned detector: IsolationForest over per-principal hourly windows.

Each principal's events in one UTC hour become one feature vector (:data:`FEATURES`,
log-scaled counts). Windows close when the stream passes the hour; a closed window is
either training data (during the first ``train_days`` of the stream, and afterwards
whenever it raised nothing) or scored by the current forest. The forest is refitted
every ``refit_days`` on at most ``max_train`` recent unalerted windows, with a fixed
seed, so a replay is deterministic. A window alerts when its anomaly score is below
the ``quantile`` of the training windows' scores minus a margin, and it is rare in
the sense that matters here: at most a fraction ``quantile`` of ordinary hours.

The family an alert suspects is that of the feature furthest above its training mean
(in training standard deviations); the evidence is the window's events.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from weightvault.sentinel.context import HOUR_MS

__all__ = ["FEATURES", "LearnedConfig", "LearnedDetector", "WindowScore"]

FEATURES: Final = (
    "releases",
    "models",
    "new_models",
    "denies",
    "attest_fail",
    "new_devices",
    "offhours",
    "rare_hour",
    "gw_requests",
    "gw_tokens",
    "exports",
    "reads",
    "auth_fail",
    "approvals",
    "fast_approvals",
)
_FAMILY_OF: Final = {
    "releases": "bulk_release",
    "models": "bulk_release",
    "new_models": "slow_drip",
    "denies": "stolen_token",
    "attest_fail": "stolen_token",
    "new_devices": "stolen_token",
    "offhours": "after_hours",
    "rare_hour": "after_hours",
    "gw_requests": "extraction",
    "gw_tokens": "extraction",
    "exports": "leaver",
    "reads": "leaver",
    "auth_fail": "stolen_token",
    "approvals": "approval_collusion",
    "fast_approvals": "approval_collusion",
}
_IDX: Final = {name: i for i, name in enumerate(FEATURES)}
_MAX_EVIDENCE: Final = 64


@dataclass(frozen=True, slots=True)
class LearnedConfig:
    train_days: int = 7
    refit_days: int = 7
    max_train: int = 20_000
    quantile: float = 0.0005
    margin: float = 0.02
    trees: int = 100
    seed: int = 0


@dataclass(frozen=True, slots=True)
class WindowScore:
    actor: str
    tenant: str
    hour: int
    score: float
    family: str
    feature: str
    evidence: tuple[int, ...]


class _Window:
    __slots__ = ("evidence", "models", "tenant", "values")

    def __init__(self, tenant: str) -> None:
        self.tenant = tenant
        self.values = [0.0] * len(FEATURES)
        self.models: set[str] = set()
        self.evidence: list[int] = []


def _path_length(n: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """Average path length of an unsuccessful search in a binary search tree of ``n`` nodes (Liu et al. 2008)."""
    n = np.asarray(n, dtype=np.float64)
    out = np.zeros_like(n)
    out[n == 2] = 1.0
    big = n > 2
    out[big] = 2.0 * (np.log(n[big] - 1.0) + np.euler_gamma) - 2.0 * (n[big] - 1.0) / n[big]
    return out


class _FastScorer:
    """IsolationForest's ``score_samples`` without joblib's per-call overhead (about 15 ms a call, which
    dominated a replay): each tree's leaf values are precomputed, a batch is one ``apply`` per tree.
    Checked against scikit-learn's own scores on the training data at every fit."""

    def __init__(self, trees: list[tuple[Any, np.ndarray[Any, Any], np.ndarray[Any, Any]]], denominator: float) -> None:
        self.trees, self.denominator = trees, denominator

    @classmethod
    def of(cls, forest: Any) -> _FastScorer | None:
        trees = []
        for est, features in zip(forest.estimators_, forest.estimators_features_, strict=True):
            tree = est.tree_
            left, right = tree.children_left, tree.children_right
            depth = np.zeros(tree.node_count)
            for node in range(tree.node_count):  # children always follow their parent in sklearn's arrays
                if left[node] >= 0:
                    depth[left[node]] = depth[right[node]] = depth[node] + 1
            values = depth + _path_length(tree.n_node_samples)
            trees.append((tree, np.asarray(features), values))
        denominator = len(trees) * float(_path_length(np.asarray([forest.max_samples_]))[0])
        return cls(trees, denominator) if denominator > 0 else None

    def score(self, matrix: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        x = np.ascontiguousarray(matrix, dtype=np.float32)
        depths = np.zeros(x.shape[0])
        for tree, features, values in self.trees:
            depths += values[tree.apply(np.ascontiguousarray(x[:, features]))]
        return np.asarray(-(2.0 ** (-depths / self.denominator)))


class LearnedDetector:
    """Windowing, training and scoring; :meth:`observe` per event, :meth:`close` per hour passed."""

    def __init__(self, config: LearnedConfig | None = None) -> None:
        self.config = config or LearnedConfig()
        self.hour: int | None = None
        self.first_hour: int | None = None
        self.windows: dict[str, _Window] = {}
        self.train: list[list[float]] = []
        self.fitted_hour: int | None = None
        self._forest: Any = None
        self._trees: _FastScorer | None = None
        self.fit_data: list[list[float]] = []
        self._threshold = 0.0
        self._mean = np.zeros(len(FEATURES))
        self._sd = np.ones(len(FEATURES))

    def observe(self, ev: Mapping[str, Any], ctx: Mapping[str, Any], t: int, index: int | None) -> list[WindowScore]:
        """Add one event to its principal's window; returns alerts of windows that just closed."""
        hour = t // HOUR_MS
        closed: list[WindowScore] = []
        if self.hour is None:
            self.hour = self.first_hour = hour
        elif hour > self.hour:
            closed = self.close(hour)
        actor = ev["actor"]
        window = self.windows.get(actor)
        if window is None:
            window = self.windows[actor] = _Window(ev["tenant"])
        v = window.values
        kind = ev["type"]
        details = ev["details"]
        if kind == "key.release.intent":
            v[0] += 1
            model = ctx.get("model")
            if isinstance(model, str):
                window.models.add(model)
        elif kind == "gateway.request":
            v[8] += 1
            tokens = details.get("tokens_out")
            if isinstance(tokens, int):
                v[9] += tokens
        elif kind == "key.export.intent":
            v[10] += 1
        elif kind == "object.read":
            v[11] += 1
        elif kind == "auth.fail":
            v[12] += 1
        elif kind == "attest.fail":
            v[4] += 1
        elif kind == "approval.submit":
            v[13] += 1
            latency = ctx.get("approval_latency_s")
            if isinstance(latency, int) and latency < 120:
                v[14] += 1
        if ev.get("decision") == "deny" or kind.endswith(".fail"):
            v[3] += 1
        if ctx.get("new_model"):
            v[2] += 1
        if ctx.get("new_device"):
            v[5] += 1
        if ctx.get("actor_hour_rare"):
            v[7] += 1
        if ctx["offhours"]:
            v[6] = 1.0
        if index is not None:
            window.evidence.append(index)
        return closed

    def _vector(self, window: _Window) -> list[float]:
        v = list(window.values)
        v[1] = len(window.models)
        return [math.log1p(x) for x in v]

    def close(self, hour: int) -> list[WindowScore]:
        """Close every window of hours before ``hour``: train on them or score them."""
        assert self.hour is not None
        assert self.first_hour is not None
        windows, closing_hour = self.windows, self.hour
        self.windows, self.hour = {}, hour
        if not windows:
            return []
        names = list(windows)
        matrix = [self._vector(windows[n]) for n in names]
        training = closing_hour < self.first_hour + self.config.train_days * 24
        out: list[WindowScore] = []
        if training or self._forest is None:
            self.train.extend(matrix)
        else:
            scores = self._score(np.asarray(matrix))
            for name, row, score in zip(names, matrix, scores, strict=True):
                if score < self._threshold:
                    z = (np.asarray(row) - self._mean) / self._sd
                    feature = FEATURES[int(np.argmax(z))]
                    w = windows[name]
                    out.append(
                        WindowScore(
                            name,
                            w.tenant,
                            closing_hour,
                            float(self._threshold - score),
                            _FAMILY_OF.get(feature, "anomaly"),
                            feature,
                            tuple(w.evidence[-_MAX_EVIDENCE:]),
                        )
                    )
                else:
                    self.train.append(row)
        if len(self.train) > self.config.max_train:
            del self.train[: len(self.train) - self.config.max_train]
        due = self.fitted_hour is None or hour >= self.fitted_hour + self.config.refit_days * 24
        if not training and due and len(self.train) >= 50:
            self._fit(hour)
        return out

    def _fit(self, hour: int) -> None:
        from sklearn.ensemble import IsolationForest

        data = np.asarray(self.train)
        forest = IsolationForest(n_estimators=self.config.trees, random_state=self.config.seed)
        forest.fit(data)
        self._trees = _FastScorer.of(forest)
        scores = self._trees.score(data) if self._trees is not None else forest.score_samples(data)
        # The fast scorer must agree with scikit-learn's, or it is not used.
        check = data[:2000]
        if self._trees is not None and not np.allclose(scores[:2000], forest.score_samples(check), atol=1e-9):
            self._trees = None
            scores = forest.score_samples(data)
        self.fit_data = self.train[:]
        self._threshold = float(np.quantile(scores, self.config.quantile)) - self.config.margin
        self._mean = data.mean(axis=0)
        self._sd = np.maximum(data.std(axis=0), 0.1)
        self._forest = forest
        self.fitted_hour = hour

    def _score(self, matrix: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        if self._trees is not None:
            return self._trees.score(matrix)
        return np.asarray(self._forest.score_samples(matrix))

    def to_state(self) -> dict[str, Any]:
        return {
            "hour": self.hour,
            "first_hour": self.first_hour,
            "fitted_hour": self.fitted_hour,
            "train": self.train,
            "fit_data": self.fit_data,
            "windows": {
                k: {"tenant": w.tenant, "values": w.values, "models": sorted(w.models), "evidence": w.evidence}
                for k, w in self.windows.items()
            },
        }

    def load(self, doc: Mapping[str, Any]) -> None:
        self.hour, self.first_hour = doc["hour"], doc["first_hour"]
        self.train = [list(map(float, r)) for r in doc["train"]]
        self.windows = {}
        for k, w in doc["windows"].items():
            window = _Window(str(w["tenant"]))
            window.values = [float(x) for x in w["values"]]
            window.models = set(w["models"])
            window.evidence = [int(i) for i in w["evidence"]]
            self.windows[str(k)] = window
        # The forest is not stored (no pickles): it is refitted, deterministically, from the stored windows.
        fitted = doc["fitted_hour"]
        fit_data = [list(map(float, r)) for r in doc["fit_data"]]
        if fitted is not None and len(fit_data) >= 50:
            train, self.train = self.train, fit_data
            self._fit(int(fitted))
            self.train = train
