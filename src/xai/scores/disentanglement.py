"""Disentanglement metrics on given codes and known discrete factors: MIG, SAP, DCI; and, from a
ground-truth function of the factors, the beta-VAE and FactorVAE scores.

Pure functions of `codes` [N, D] (float; numpy array or torch tensor) and `factors` [N, F] (integer
ground-truth factor values). The definitions follow disentanglement_lib ([Locatello2019],
"Challenging Common Assumptions in the Unsupervised Learning of Disentangled Representations"):

- `mig` -- Mutual Information Gap [Chen2018]. Every code dimension is discretised into `bins`
  equal-width bins (disentanglement_lib's `histogram_discretize`), m[d, f] = I(z_d; v_f) by
  `sklearn.metrics.mutual_info_score`, H(v_f) likewise. For each factor, the gap between the most and
  the second most informative code dimension, normalised by the factor's entropy; MIG is the mean over
  factors. 1: each factor is captured by one dimension alone; ~0: by none or by several equally.
- `sap` -- Separated Attribute Predictability [Kumar2018], classification variant: s[d, f] is the
  test accuracy of a classifier predicting factor f from code dimension d alone; SAP is the mean over
  factors of the gap between the two best dimensions. High when each factor is predictable from one
  dimension only.
- `dci` -- Disentanglement, Completeness, Informativeness [Eastwood2018]. A gradient-boosted
  tree classifier per factor (sklearn `GradientBoostingClassifier`, as disentanglement_lib) gives the
  importance matrix R [D, F]. Disentanglement = sum_d rho_d (1 - H_F(R[d])) with rho_d the share of
  total importance of dimension d (each dimension captures at most one factor); completeness =
  sum_f rho_f (1 - H_D(R[:, f])) (each factor captured by one dimension; the importances of a factor
  sum to 1, so rho_f = 1/F and this is the mean over factors); informativeness = mean test accuracy.

Deviations from disentanglement_lib (which samples fresh train / test sets from a ground-truth
simulator; here the codes are given):

- train / test data are one random split of the given samples (`train_fraction`, `seed`).
- SAP: disentanglement_lib fits `LinearSVC(C=0.01, class_weight="balanced")` per (d, f). Here each
  1-D classifier is a nearest-class-mean rule fitted on the train split (predict the class whose train
  mean of z_d is nearest): closed-form, deterministic, and, like a one-vs-rest linear classifier in one
  dimension, it gives every class one interval of z_d. Accuracy is measured on the test split.
- DCI: `GradientBoostingClassifier(n_estimators=n_estimators)` with n_estimators = 20 by default
  (disentanglement_lib: sklearn's default 100) for speed; `random_state=seed` for determinism.
- A factor with a single value (zero entropy) has no MIG (NaN entry, left out of the mean).
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.metrics import mutual_info_score

from src.base.maps import attention_overlap

__all__ = [
    "METRICS",
    "attention_overlap_matrix",
    "beta_vae_score",
    "dci",
    "score_disentanglement",
    "factor_vae_score",
    "histogram_discretize",
    "mig",
    "sap",
]

_EPS = 1e-11  # disentanglement_lib's offset inside the DCI entropies


def _as_arrays(codes, factors) -> tuple[np.ndarray, np.ndarray]:
    """codes [N, D] float64, factors [N, F] int64; torch tensors are detached to numpy."""
    if hasattr(codes, "detach"):
        codes = codes.detach().cpu().numpy()
    if hasattr(factors, "detach"):
        factors = factors.detach().cpu().numpy()
    codes = np.asarray(codes, dtype=np.float64)
    factors = np.asarray(factors)
    if codes.ndim == 1:
        codes = codes[:, None]
    if factors.ndim == 1:
        factors = factors[:, None]
    if codes.ndim != 2 or factors.ndim != 2 or codes.shape[0] != factors.shape[0]:
        raise ValueError(f"expected codes [N, D] and factors [N, F], got {codes.shape} and {factors.shape}")
    if not np.issubdtype(factors.dtype, np.integer):
        if not np.all(np.equal(np.mod(factors, 1), 0)):
            raise ValueError("factors must be discrete (integer-valued)")
        factors = factors.astype(np.int64)
    return codes, factors


def histogram_discretize(codes, bins: int = 20) -> np.ndarray:
    """Each column of `codes` [N, D] into `bins` equal-width bins over its range (labels 1..bins)."""
    codes = np.asarray(codes, dtype=np.float64)
    out = np.zeros(codes.shape, dtype=np.int64)
    for d in range(codes.shape[1]):
        edges = np.histogram(codes[:, d], bins)[1][:-1]
        out[:, d] = np.digitize(codes[:, d], edges)
    return out


def _split(n: int, train_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
    perm = np.random.default_rng(seed).permutation(n)
    n_train = int(round(train_fraction * n))
    if n_train < 1 or n_train >= n:
        raise ValueError(f"too few samples ({n}) for a train / test split at {train_fraction}")
    return perm[:n_train], perm[n_train:]


def mig(codes, factors, bins: int = 20) -> dict:
    """Mutual Information Gap. Returns {"mig", "per_factor" (gap / H(f) per factor), "mutual_info" [D, F],
    "entropy" [F]}."""
    codes, factors = _as_arrays(codes, factors)
    z = histogram_discretize(codes, bins)
    n_dims, n_factors = z.shape[1], factors.shape[1]
    m = np.zeros((n_dims, n_factors))
    for d in range(n_dims):
        for f in range(n_factors):
            m[d, f] = mutual_info_score(factors[:, f], z[:, d])
    h = np.array([mutual_info_score(factors[:, f], factors[:, f]) for f in range(n_factors)])
    top = np.sort(m, axis=0)[::-1]
    second = top[1] if n_dims > 1 else np.zeros(n_factors)
    with np.errstate(divide="ignore", invalid="ignore"):
        per_factor = np.where(h > 0, (top[0] - second) / np.where(h > 0, h, 1.0), np.nan)
    valid = ~np.isnan(per_factor)
    score = float(per_factor[valid].mean()) if valid.any() else float("nan")
    return {"mig": score, "per_factor": per_factor.tolist(), "mutual_info": m, "entropy": h}


def _nearest_mean_accuracy(z_train, y_train, z_test, y_test) -> float:
    """Accuracy on the test split of the 1-D nearest-class-mean classifier fitted on the train split."""
    classes = np.unique(y_train)
    means = np.array([z_train[y_train == c].mean() for c in classes])
    pred = classes[np.argmin(np.abs(z_test[:, None] - means[None, :]), axis=1)]  # ties -> lowest class
    return float(np.mean(pred == y_test))


def sap(codes, factors, train_fraction: float = 0.8, seed: int = 0) -> dict:
    """SAP score (classification variant). Returns {"sap", "per_factor" (top-two gaps), "scores" [D, F]}."""
    codes, factors = _as_arrays(codes, factors)
    train, test = _split(codes.shape[0], train_fraction, seed)
    n_dims, n_factors = codes.shape[1], factors.shape[1]
    s = np.zeros((n_dims, n_factors))
    for d in range(n_dims):
        for f in range(n_factors):
            s[d, f] = _nearest_mean_accuracy(codes[train, d], factors[train, f], codes[test, d], factors[test, f])
    top = np.sort(s, axis=0)[::-1]
    gaps = top[0] - (top[1] if n_dims > 1 else 0.0)
    return {"sap": float(gaps.mean()), "per_factor": gaps.tolist(), "scores": s}


def _entropy(p: np.ndarray, base: int, axis: int) -> np.ndarray:
    """Shannon entropy of the (renormalised) non-negative weights along `axis`, log base `base`."""
    p = p / p.sum(axis=axis, keepdims=True)
    return -(p * np.log(p)).sum(axis=axis) / np.log(base)


def dci(codes, factors, train_fraction: float = 0.8, seed: int = 0, n_estimators: int = 20) -> dict:
    """DCI with gradient-boosted-tree importances. Returns {"disentanglement", "completeness",
    "informativeness" (mean test accuracy), "informativeness_train", "per_factor_accuracy",
    "importance" [D, F]}."""
    codes, factors = _as_arrays(codes, factors)
    train, test = _split(codes.shape[0], train_fraction, seed)
    n_dims, n_factors = codes.shape[1], factors.shape[1]
    r = np.zeros((n_dims, n_factors))
    acc_train, acc_test = [], []
    for f in range(n_factors):
        y = factors[:, f]
        if np.unique(y[train]).size < 2:  # a constant factor: nothing to learn, always right
            acc_train.append(1.0)
            acc_test.append(float(np.mean(y[test] == y[train][0])))
            continue
        model = GradientBoostingClassifier(n_estimators=n_estimators, random_state=seed)
        model.fit(codes[train], y[train])
        r[:, f] = np.abs(model.feature_importances_)
        acc_train.append(float(np.mean(model.predict(codes[train]) == y[train])))
        acc_test.append(float(np.mean(model.predict(codes[test]) == y[test])))
    total = r.sum()
    if total == 0.0:
        dis = comp = 0.0
    else:
        dis_per_code = 1.0 - _entropy(r.T + _EPS, max(n_factors, 2), axis=0) if n_factors > 1 else np.ones(n_dims)
        comp_per_factor = 1.0 - _entropy(r + _EPS, max(n_dims, 2), axis=0) if n_dims > 1 else np.ones(n_factors)
        dis = float(np.sum(dis_per_code * r.sum(axis=1) / total))
        comp = float(np.sum(comp_per_factor * r.sum(axis=0) / total))
    return {
        "disentanglement": dis,
        "completeness": comp,
        "informativeness": float(np.mean(acc_test)),
        "informativeness_train": float(np.mean(acc_train)),
        "per_factor_accuracy": acc_test,
        "importance": r,
    }


# -- scores that intervene on the factors: beta-VAE and FactorVAE --------------------------------------
#
# These need observations drawn with one factor held fixed, so they take the ground truth as a
# function: `represent(factors [n, F] int) -> codes [n, D]` (render the observations of those factor
# values and encode them) and `factor_sizes` (how many values each factor takes), as
# disentanglement_lib's ground-truth data set plus representation function.


def _draw(factor_sizes, n: int, rng: np.random.Generator) -> np.ndarray:
    return np.stack([rng.integers(0, k, n) for k in factor_sizes], axis=1)


def factor_vae_score(
    represent,
    factor_sizes,
    *,
    batch_size: int = 64,
    num_train: int = 500,
    num_eval: int = 300,
    num_variance: int = 2000,
    seed: int = 0,
) -> dict:
    """FactorVAE score [Kim2018], as disentanglement_lib's `compute_factor_vae`: codes are
    divided by their global standard deviation (over `num_variance` random observations; dimensions
    with zero variance are dropped); each vote fixes one random factor k, draws `batch_size`
    observations sharing its value and votes (the dimension of least normalised variance, k); a
    majority-vote classifier maps each dimension to its most voted factor. Returns the classifier's
    accuracy on the training votes and on `num_eval` fresh votes (the score), and the active
    dimension count. 1: fixing any factor freezes one dimension of its own."""
    rng = np.random.default_rng(seed)
    factor_sizes = [int(k) for k in factor_sizes]
    variances = np.var(np.asarray(represent(_draw(factor_sizes, num_variance, rng)), dtype=np.float64), axis=0, ddof=1)
    active = variances > 0
    if not active.any():
        return {"train_accuracy": float("nan"), "eval_accuracy": float("nan"), "num_active_dims": 0}

    def votes(count: int) -> np.ndarray:
        table = np.zeros((len(variances), len(factor_sizes)), dtype=np.int64)
        for _ in range(count):
            k = int(rng.integers(0, len(factor_sizes)))
            f = _draw(factor_sizes, batch_size, rng)
            f[:, k] = f[0, k]
            local = np.var(np.asarray(represent(f), dtype=np.float64), axis=0, ddof=1)
            ratio = np.where(active, local / np.where(active, variances, 1.0), np.inf)
            table[int(np.argmin(ratio)), k] += 1
        return table

    train, evaluation = votes(num_train), votes(num_eval)
    classes = train.argmax(1)  # each dimension's most voted factor
    train_acc = float(train.max(1).sum() / train.sum())
    eval_acc = float(evaluation[np.arange(len(classes)), classes].sum() / evaluation.sum())
    return {"train_accuracy": train_acc, "eval_accuracy": eval_acc, "num_active_dims": int(active.sum())}


def beta_vae_score(
    represent, factor_sizes, *, batch_size: int = 64, num_train: int = 500, num_eval: int = 300, seed: int = 0
) -> dict:
    """beta-VAE score [Higgins2017], as disentanglement_lib's `compute_beta_vae_sklearn`: each
    point fixes one random factor k; `batch_size` pairs of observations share k's value (a value per
    pair, all other factors drawn independently); the feature is the mean |z1 - z2| over the pairs and
    the label k; a logistic regression is fitted on `num_train` points and scored on `num_eval` others.
    Returns train and eval accuracy (the score). 1: the fixed factor is always readable from which
    dimension stops varying."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(seed)
    factor_sizes = [int(k) for k in factor_sizes]

    def points(count: int) -> tuple[np.ndarray, np.ndarray]:
        features, labels = [], []
        for _ in range(count):
            k = int(rng.integers(0, len(factor_sizes)))
            f1, f2 = _draw(factor_sizes, batch_size, rng), _draw(factor_sizes, batch_size, rng)
            f2[:, k] = f1[:, k]
            z1, z2 = (np.asarray(represent(f), dtype=np.float64) for f in (f1, f2))
            features.append(np.abs(z1 - z2).mean(0))
            labels.append(k)
        return np.stack(features), np.asarray(labels)

    x_train, y_train = points(num_train)
    x_eval, y_eval = points(num_eval)
    model = LogisticRegression(max_iter=2000).fit(x_train, y_train)
    return {"train_accuracy": float(model.score(x_train, y_train)), "eval_accuracy": float(model.score(x_eval, y_eval))}


# -- all scores at once, and how much the per-dimension attention maps overlap ------------------------------

METRICS = ("mig", "sap", "dci", "factor_vae", "beta_vae")


def score_disentanglement(
    codes,
    factors,
    *,
    represent=None,
    factor_sizes=None,
    metrics=METRICS,
    seed: int = 0,
    votes: int = 300,
    batch_size: int = 64,
    n_estimators: int = 20,
) -> dict[str, float]:
    """The metrics in `metrics` as one flat dict of numbers: mig, sap, dci_disentanglement,
    dci_completeness, dci_informativeness from `codes` [N, D] and `factors` [N, F]; factor_vae and
    beta_vae (their eval accuracies) from `represent(factor indices) -> codes` and `factor_sizes`
    (each trained on `votes` points and scored on `votes` more). A factor with a single value in
    `factors` (a fixed factor of a subset) is left out of mig, sap and dci."""
    unknown = sorted(set(metrics) - set(METRICS))
    if unknown:
        raise ValueError(f"unknown disentanglement metric(s) {unknown}; choose from {list(METRICS)}")
    codes, factors = _as_arrays(codes, factors)
    varying = [f for f in range(factors.shape[1]) if len(np.unique(factors[:, f])) > 1]
    factors = factors[:, varying]
    out: dict[str, float] = {}
    if "mig" in metrics:
        out["mig"] = float(mig(codes, factors)["mig"])
    if "sap" in metrics:
        out["sap"] = float(sap(codes, factors, seed=seed)["sap"])
    if "dci" in metrics:
        d = dci(codes, factors, seed=seed, n_estimators=n_estimators)
        out.update({f"dci_{k}": float(d[k]) for k in ("disentanglement", "completeness", "informativeness")})
    for name, score in (("factor_vae", factor_vae_score), ("beta_vae", beta_vae_score)):
        if name in metrics:
            if represent is None or factor_sizes is None:
                raise ValueError(f"{name} needs represent(factor indices) -> codes and factor_sizes")
            result = score(represent, factor_sizes, batch_size=batch_size, num_train=votes, num_eval=votes, seed=seed)
            out[name] = float(result["eval_accuracy"])
    return out


def attention_overlap_matrix(maps: torch.Tensor) -> np.ndarray:
    """[K, K] [Liu2020]'s attention overlap 2 sum min(M_i, M_j) / sum (M_i + M_j) between the
    non-negative maps [B, K, H, W] of K latent dimensions, each sum over the batch and the pixels
    (`src.base.maps.attention_overlap`, the AD loss's term): 1 on the diagonal (for a map with any mass),
    0 for dimensions that attend to disjoint pixels. The mean off-diagonal entry is the AD loss."""
    m = torch.as_tensor(maps).detach().double().clamp_min(0)
    k = m.shape[1]
    a, b = m[:, :, None].expand(-1, k, k, -1, -1), m[:, None, :].expand(-1, k, k, -1, -1)
    return attention_overlap(a, b, dims=(0, 3, 4)).cpu().numpy()
