"""Perturbation-effect prediction: baselines, the linear model, and a benchmark loop.

Every predictor has one interface: ``fit`` on the training conditions of a pseudobulk (built by
:func:`scfmkit.pp.pseudobulk_perturbations`), then ``predict`` named conditions (mean log-normalised expression).
Predictors are looked up by name in a registry (:func:`available_predictors`, :func:`register_predictor`).

The ``geneformer`` entry is there to say clearly that Geneformer's in-silico perturbation predicts *embedding* shifts,
not expression: use :func:`scfmkit.tl.geneformer_perturb` for it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from scfmkit._utils import get_modality, logger, progress, sanitize_params

if TYPE_CHECKING:
    from anndata import AnnData
    from mudata import MuData

__all__ = [
    "PerturbationPredictor",
    "available_predictors",
    "benchmark_perturbation",
    "fit_predictor",
    "geneformer_perturb",
    "predict_perturbation",
    "register_predictor",
]


class PerturbationPredictor:
    """Base class: fit on training pseudobulks, predict mean expression of named conditions.

    Subclasses implement :meth:`_fit` and :meth:`_predict_one` (or :meth:`_predict`) and may refuse conditions in
    :meth:`why_not` (a reason string, or ``None`` when the condition can be predicted).
    """

    name = "base"
    #: whether the predictor outputs expression (False for embedding-only methods such as Geneformer)
    expression_space = True

    def __init__(self, **options: Any) -> None:
        self.options = options
        self.fitted = False

    # ---- fitting -------------------------------------------------------------------------------------------
    def fit(self, pdata: AnnData, train: Sequence[str] | None = None) -> PerturbationPredictor:
        """Fit on the conditions ``train`` of the pseudobulk ``pdata`` (default: all rows; control is always added).

        Parameters
        ----------
        pdata
            Pseudobulk from :func:`scfmkit.pp.pseudobulk_perturbations`.
        train
            Training condition names.

        Returns
        -------
        ``self``.
        """
        from scfmkit.pp._perturbation import _check_pseudobulk

        info = _check_pseudobulk(pdata)
        self.control = str(info["control"])
        self.sep = str(info["sep"])
        self.var_names = pd.Index(pdata.var_names.astype(str))
        self.ctrl = pdata.var["control_mean"].to_numpy(np.float64)
        names = pd.Index(pdata.obs_names.astype(str))
        train = list(names) if train is None else [str(t) for t in train]
        missing = [t for t in train if t not in names]
        if missing:
            msg = f"Training conditions {missing[:5]} are not rows of the pseudobulk."
            raise KeyError(msg)
        ctrl_rows = list(names[pdata.obs["is_control"].to_numpy(bool)])
        train = list(dict.fromkeys(ctrl_rows + train))
        sub = pdata[train]
        X = sub.X.toarray() if hasattr(sub.X, "toarray") else np.asarray(sub.X)
        self.train_names = list(train)
        self.train_X = np.asarray(X, dtype=np.float64)
        self.train_delta = self.train_X - self.ctrl
        self.train_genes = [self.genes_of(n) for n in train]
        self.train_is_ctrl = np.array([len(g) == 0 for g in self.train_genes])
        self._fit(pdata)
        self.fitted = True
        return self

    def _fit(self, pdata: AnnData) -> None:
        pass

    def genes_of(self, condition: str) -> tuple[str, ...]:
        """Perturbed genes of a condition label."""
        from scfmkit.pp._perturbation import parse_condition

        return parse_condition(condition, control=self.control, sep=self.sep)

    # ---- prediction ----------------------------------------------------------------------------------------
    def why_not(self, condition: str) -> str | None:
        """Reason this condition cannot be predicted, or ``None``."""
        return None

    def predict(self, conditions: Iterable[str]) -> pd.DataFrame:
        """Predicted mean expression, conditions x genes (a DataFrame); raises for conditions it cannot predict."""
        if not self.fitted:
            msg = f"The {self.name!r} predictor is not fitted; call `.fit(pdata, train)` first."
            raise RuntimeError(msg)
        conditions = [str(c) for c in conditions]
        bad = {c: r for c in conditions if (r := self.why_not(c)) is not None}
        if bad:
            shown = "; ".join(f"{c}: {r}" for c, r in list(bad.items())[:5])
            msg = f"The {self.name!r} predictor cannot predict {len(bad)} condition(s) ({shown})."
            raise ValueError(msg)
        out = self._predict(conditions) if conditions else np.zeros((0, len(self.var_names)))
        return pd.DataFrame(out, index=pd.Index(conditions, name="condition"), columns=self.var_names)

    def _predict(self, conditions: list[str]) -> np.ndarray:
        return np.vstack([self._predict_one(c) for c in conditions])

    def _predict_one(self, condition: str) -> np.ndarray:
        raise NotImplementedError


class ControlPredictor(PerturbationPredictor):
    """``control``: no change; every condition is predicted as the control mean."""

    name = "control"

    def _predict_one(self, condition: str) -> np.ndarray:
        return self.ctrl.copy()


class MeanPredictor(PerturbationPredictor):
    """``mean``: the control mean plus the average change of all training perturbations."""

    name = "mean"

    def _fit(self, pdata: AnnData) -> None:
        pert = ~self.train_is_ctrl
        if not pert.any():
            msg = "The 'mean' predictor needs at least one perturbed training condition."
            raise ValueError(msg)
        self.mean_delta = self.train_delta[pert].mean(0)

    def _predict_one(self, condition: str) -> np.ndarray:
        return self.ctrl + self.mean_delta


class AdditivePredictor(PerturbationPredictor):
    """``additive``: control plus the sum of the training single-perturbation changes of the condition's genes.

    Only conditions whose every gene was perturbed alone in training can be predicted; others are refused.
    """

    name = "additive"

    def _fit(self, pdata: AnnData) -> None:
        self.single_delta = {g[0]: d for g, d in zip(self.train_genes, self.train_delta, strict=True) if len(g) == 1}

    def why_not(self, condition: str) -> str | None:
        genes = self.genes_of(condition)
        missing = [g for g in genes if g not in self.single_delta]
        if missing:
            return f"no training single perturbation of {missing}"
        return None

    def _predict_one(self, condition: str) -> np.ndarray:
        pred = self.ctrl.copy()
        for g in self.genes_of(condition):
            pred = pred + self.single_delta[g]
        return pred


def _ridge_bilinear(Y: np.ndarray, G: np.ndarray, P: np.ndarray, ridge: float) -> tuple[np.ndarray, np.ndarray]:
    """Closed-form ridge fit of ``Y ≈ G W P^T + b``: returns ``(W, b)`` with ``b`` the row means of ``Y``.

    ``W = (G^T G + λI)^-1 G^T (Y - b) P (P^T P + λI)^-1`` (genes x conditions ``Y``; ``G`` genes x k; ``P``
    conditions x l), as in Ahlmann-Eltze et al.
    """
    b = Y.mean(1)
    Yc = Y - b[:, None]
    k, l_ = G.shape[1], P.shape[1]
    left = np.linalg.solve(G.T @ G + ridge * np.eye(k), G.T @ Yc @ P)
    W = np.linalg.solve((P.T @ P + ridge * np.eye(l_)).T, left.T).T
    return W, b


def _small_svd(X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Thin SVD of a small matrix on one BLAS thread (multi-threaded OpenBLAS is ~100x slower at this size)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn/scanpy
        return np.linalg.svd(X, full_matrices=False)
    with threadpool_limits(1, user_api="blas"):
        return np.linalg.svd(X, full_matrices=False)


class LinearPredictor(PerturbationPredictor):
    """``linear``: the model of Ahlmann-Eltze, Huber & Anders (Nat Methods 2025), ``Y = G W P^T + b``.

    ``Y`` is the training change matrix (genes x training conditions, control included with a zero change), ``b``
    its per-gene mean over the training conditions, ``W`` the closed-form ridge solution (penalty ``ridge`` on both
    sides). A prediction is ``control + G W p + b``.

    Parameters
    ----------
    gene_embedding
        ``"pca"`` (default): ``G`` are the gene scores of ONE PCA of the training pseudobulk (genes x conditions,
        each condition centred, ``n_components`` components) as in the reference. Or pretrained gene embeddings: a
        ``varm`` key of the pseudobulk, a DataFrame (genes x dims, index = gene names; may hold genes that are not
        measured, e.g. the perturbed ones), a genes x dims array in ``var`` order, or a
        :class:`~scfmkit.models.FoundationModel` (its ``embed_genes(kind="token")``; scGPT gene / Geneformer token
        embeddings). Genes without an embedding (NaN rows) are left out of the fit and predicted as control plus their
        mean training change.
    perturbation_embedding
        ``"genes"`` (default, the reference): ``p`` of a condition is the row of the gene embedding of its perturbed
        gene (zero for control). Combinations SUM their genes' rows (our choice; the reference predicts singles
        only). Conditions whose gene has no row (not measured, with ``gene_embedding="pca"``) are left out of the
        fit and refused at prediction. ``"training"``: ``p`` of a single is the score of its training condition in
        the same PCA (right singular vector times singular value), combos sum them; for data whose perturbed genes
        are not measured (CRISPRa Norman subset). Needs ``gene_embedding="pca"`` and each gene's single in training.
    n_components
        PCA components (default 10; clipped to what the training matrix supports).
    ridge
        Ridge penalty λ (default 0.1).
    """

    name = "linear"

    def __init__(
        self,
        *,
        gene_embedding: Any = "pca",
        perturbation_embedding: str = "genes",
        n_components: int = 10,
        ridge: float = 0.1,
    ) -> None:
        super().__init__(
            gene_embedding=gene_embedding,
            perturbation_embedding=perturbation_embedding,
            n_components=n_components,
            ridge=ridge,
        )
        if perturbation_embedding not in {"genes", "training"}:
            msg = f"`perturbation_embedding` must be 'genes' or 'training', got {perturbation_embedding!r}."
            raise ValueError(msg)
        if perturbation_embedding == "training" and not (isinstance(gene_embedding, str) and gene_embedding == "pca"):
            msg = "`perturbation_embedding='training'` needs `gene_embedding='pca'` (PCA scores of the conditions)."
            raise ValueError(msg)
        if ridge < 0 or n_components < 1:
            msg = f"Need `ridge >= 0` and `n_components >= 1`, got {ridge} and {n_components}."
            raise ValueError(msg)

    def _gene_table(self, pdata: AnnData) -> pd.DataFrame:
        """The gene embedding as a DataFrame (genes x dims), including unmeasured genes where available."""
        emb = self.options["gene_embedding"]
        if isinstance(emb, pd.DataFrame):
            return emb.astype(np.float64)
        if isinstance(emb, str):
            if emb not in pdata.varm:
                msg = (
                    f"`gene_embedding={emb!r}` is neither 'pca' nor a varm key of the pseudobulk "
                    f"(varm: {list(pdata.varm)}); compute it with `scfmkit.tl.embed_genes(..., kind='token')`."
                )
                raise KeyError(msg)
            return pd.DataFrame(np.asarray(pdata.varm[emb], dtype=np.float64), index=self.var_names)
        from scfmkit.models import FoundationModel

        if isinstance(emb, FoundationModel):
            import anndata as ad

            # measured genes plus every perturbed gene named in the pseudobulk (labels only, no data)
            named = (g for s in pdata.obs["genes"].astype(str) for g in s.split(self.sep) if g)
            wanted = list(dict.fromkeys([*self.var_names, *named]))
            probe = ad.AnnData(np.zeros((1, len(wanted)), dtype=np.float32))
            probe.var_names = wanted
            arr, _ = emb.embed_genes(probe, kind="token")
            return pd.DataFrame(np.asarray(arr, dtype=np.float64), index=pd.Index(wanted))
        arr = np.asarray(emb, dtype=np.float64)
        if arr.ndim != 2 or arr.shape[0] != len(self.var_names):
            msg = f"A gene-embedding array must be n_genes x dims ({len(self.var_names)} rows), got {arr.shape}."
            raise ValueError(msg)
        return pd.DataFrame(arr, index=self.var_names)

    def _fit(self, pdata: AnnData) -> None:
        opts = self.options
        ridge = float(opts["ridge"])
        emb = opts["gene_embedding"]
        self.model_ = None
        if isinstance(emb, str) and emb == "pca":
            Xt = self.train_X.T  # genes x conditions
            Xc = Xt - Xt.mean(0, keepdims=True)  # centre each condition (prcomp on genes x conditions)
            k_max = min(Xc.shape[0] - 1, Xc.shape[1])
            k = min(int(opts["n_components"]), k_max)
            if k < int(opts["n_components"]):
                logger.warning("linear: only %d PCA components possible (asked %d).", k, opts["n_components"])
            if k < 1:
                msg = "Too few training conditions/genes for the PCA of the linear model."
                raise ValueError(msg)
            U, S, Vt = _small_svd(Xc)
            G = U[:, :k] * S[:k]
            self.gene_table = pd.DataFrame(G, index=self.var_names)
            self.cond_scores = pd.DataFrame(Vt[:k].T * S[:k], index=self.train_names)
        else:
            self.gene_table = self._gene_table(pdata)
        table = self.gene_table
        if table.index.has_duplicates:
            table = table[~table.index.duplicated()]
            self.gene_table = table
        G_full = table.reindex(self.var_names).to_numpy()
        gene_ok = np.isfinite(G_full).all(1)
        if gene_ok.sum() < 2:
            msg = "Fewer than 2 measured genes have a gene embedding; check the gene names of the embedding."
            raise ValueError(msg)
        self.gene_ok = gene_ok
        self.G = G_full[gene_ok]
        if opts["perturbation_embedding"] == "genes":
            values = self.gene_table.to_numpy(dtype=np.float64)
            keys = [str(g) for g in self.gene_table.index]
        else:  # a single's vector is the PCA score of its training condition
            values = self.cond_scores.to_numpy(dtype=np.float64)
            keys = [g[0] if len(g) == 1 else None for g in self.train_genes]
        self._lookup = {k: values[i] for i, k in enumerate(keys) if k is not None and np.isfinite(values[i]).all()}
        rows, keep = [], []
        for i, name in enumerate(self.train_names):
            p = self._p(name)
            if p is not None:
                rows.append(p)
                keep.append(i)
        dropped = len(self.train_names) - len(keep)
        if dropped:
            logger.info(
                "linear: %d training condition(s) without a perturbation embedding left out of the fit.", dropped
            )
        if sum(1 for i in keep if not self.train_is_ctrl[i]) < 1:
            msg = (
                "The linear model has no training perturbation with an embedding (the perturbed genes are not "
                "measured / not in the gene embedding). Use `perturbation_embedding='training'`, or pretrained gene "
                "embeddings that cover the perturbed genes."
            )
            raise ValueError(msg)
        P = np.vstack(rows)
        Y = self.train_delta[keep][:, gene_ok].T
        self.W, self.b = _ridge_bilinear(Y, self.G, P, ridge)
        self.b_all = self.train_delta[keep].mean(0)  # fallback for genes without an embedding
        self.n_components_ = self.G.shape[1]

    def _p(self, condition: str) -> np.ndarray | None:
        genes = self.genes_of(condition)
        k = self.gene_table.shape[1]
        if not genes:
            return np.zeros(k)
        vecs = [self._lookup.get(g) for g in genes]
        if any(v is None for v in vecs):
            return None
        return np.sum(vecs, axis=0)

    def why_not(self, condition: str) -> str | None:
        if self._p(condition) is None:
            mode = self.options["perturbation_embedding"]
            if mode == "genes":
                return f"perturbed gene(s) {list(self.genes_of(condition))} have no gene-embedding row (not measured?)"
            return f"no training single perturbation for {list(self.genes_of(condition))}"
        return None

    def _predict(self, conditions: list[str]) -> np.ndarray:
        P = np.vstack([self._p(c) for c in conditions])
        out = np.tile(self.ctrl, (len(conditions), 1))
        out[:, self.gene_ok] += (self.G @ self.W @ P.T + self.b[:, None]).T
        if not self.gene_ok.all():
            out[:, ~self.gene_ok] += self.b_all[~self.gene_ok]
        return out


class GeneformerPredictor(PerturbationPredictor):
    """``geneformer``: not an expression predictor; see :func:`scfmkit.tl.geneformer_perturb`."""

    name = "geneformer"
    expression_space = False

    def _fit(self, pdata: AnnData) -> None:
        msg = (
            "Geneformer in-silico perturbation does not predict expression: it shifts cell *embeddings* "
            "(deleting or moving a gene's token). Use `scfmkit.tl.geneformer_perturb(adata, model, genes=...)` for "
            "embedding shifts, or `method='linear'` with Geneformer token embeddings "
            "(`gene_embedding=<FoundationModel>`) for expression-space predictions."
        )
        raise NotImplementedError(msg)


_PREDICTORS: dict[str, Callable[..., PerturbationPredictor]] = {
    "control": ControlPredictor,
    "mean": MeanPredictor,
    "additive": AdditivePredictor,
    "linear": LinearPredictor,
    "geneformer": GeneformerPredictor,
}


def register_predictor(name: str, factory: Callable[..., PerturbationPredictor]) -> None:
    """Register a predictor class (or factory taking keyword options) under ``name``."""
    if name in _PREDICTORS and _PREDICTORS[name] is not factory:
        msg = f"A predictor named {name!r} is already registered."
        raise ValueError(msg)
    _PREDICTORS[name] = factory


def available_predictors() -> list[str]:
    """Names of the registered perturbation predictors."""
    return sorted(_PREDICTORS)


def _make(method: str, options: Mapping[str, Any]) -> PerturbationPredictor:
    if method not in _PREDICTORS:
        msg = f"Unknown perturbation predictor {method!r}; available: {available_predictors()}."
        raise ValueError(msg)
    return _PREDICTORS[method](**dict(options))


def _train_names(pdata: AnnData, split_key: str, train: Sequence[str] | None) -> list[str]:
    if train is not None:
        return [str(t) for t in train]
    if split_key not in pdata.obs:
        msg = (
            f"No obs[{split_key!r}] with the training conditions; run `scfmkit.pp.split_perturbations(pdata)` "
            "or pass `train=`."
        )
        raise KeyError(msg)
    return list(pdata.obs_names[pdata.obs[split_key].astype(str).to_numpy() == "train"].astype(str))


def fit_predictor(
    adata: AnnData,
    method: str = "linear",
    *,
    train: Sequence[str] | None = None,
    split_key: str = "split",
    **options: Any,
) -> PerturbationPredictor:
    """Fit a perturbation predictor and return it (its ``.predict(names)`` takes any condition labels).

    Parameters
    ----------
    adata
        Pseudobulk from :func:`scfmkit.pp.pseudobulk_perturbations`.
    method
        A registered predictor (:func:`available_predictors`).
    train
        Training conditions (default: ``obs[split_key] == "train"``). Control is always included.
    split_key
        ``obs`` column of the split.
    **options
        Options of the predictor (e.g. ``n_components``, ``ridge``, ``gene_embedding`` for ``linear``).

    Returns
    -------
    The fitted predictor (a new object; ``adata`` is not modified).
    """
    from scfmkit.pp._perturbation import _check_pseudobulk

    _check_pseudobulk(adata)
    predictor = _make(method, options)
    return predictor.fit(adata, _train_names(adata, split_key, train))


def predict_perturbation(
    adata: AnnData | MuData,
    *,
    method: str = "linear",
    conditions: Sequence[str] | None = None,
    train: Sequence[str] | None = None,
    split_key: str = "split",
    mod: str | None = "rna",
    key_added: str | None = None,
    copy: bool = False,
    **options: Any,
) -> AnnData | MuData | None:
    """Fit a predictor on the training conditions of a pseudobulk and predict other conditions.

    Predictors: ``control`` (no change), ``mean`` (average training change), ``additive`` (sum of single changes;
    refuses conditions whose singles were not trained on), ``linear`` (Ahlmann-Eltze et al.; see
    :class:`LinearPredictor` for the options, including pretrained gene embeddings). ``geneformer`` raises: Geneformer
    in-silico perturbation yields embedding shifts only (:func:`geneformer_perturb`).

    Parameters
    ----------
    adata
        Pseudobulk from :func:`scfmkit.pp.pseudobulk_perturbations` (a MuData is used through ``mod``).
    method
        Registered predictor name.
    conditions
        Rows to predict (default: every row that is not in training).
    train
        Training conditions (default: ``obs[split_key] == "train"``).
    split_key
        ``obs`` column written by :func:`scfmkit.pp.split_perturbations`.
    mod
        Modality of a MuData.
    key_added
        Layer name (default ``"pred_<method>"``).
    copy
        Return a copy instead of writing into ``adata``.
    **options
        Predictor options.

    Returns
    -------
    ``None`` or a copy. Writes ``layers['<key_added>']`` (predicted mean log-normalised expression; NaN rows for
    conditions not predicted) and ``uns['<key_added>']['params']`` (method, options, train and predicted conditions).
    """
    target = get_modality(adata, mod)
    predictor = fit_predictor(target, method, train=train, split_key=split_key, **options)
    train_set = set(predictor.train_names)
    names = list(target.obs_names.astype(str))
    if conditions is None:
        conditions = [n for n in names if n not in train_set]
    conditions = [str(c) for c in conditions]
    missing = [c for c in conditions if c not in names]
    if missing:
        msg = (
            f"Conditions {missing[:5]} are not rows of the pseudobulk; use "
            "`scfmkit.tl.fit_predictor(...).predict(...)` to predict conditions that were not measured."
        )
        raise KeyError(msg)
    pred = predictor.predict(conditions)
    data = adata.copy() if copy else adata
    tgt = get_modality(data, mod)
    key = key_added or f"pred_{method}"
    layer = np.full(tgt.shape, np.nan)
    pos = pd.Index(names).get_indexer(conditions)
    layer[pos] = pred.to_numpy()
    tgt.layers[key] = layer
    opts = {k: (v if isinstance(v, str | int | float | bool) else type(v).__name__) for k, v in options.items()}
    tgt.uns[key] = {
        "params": sanitize_params(
            {"method": method, **opts, "train": list(predictor.train_names), "predicted": conditions}
        )
    }
    logger.info("Wrote layers[%r] (%d predicted conditions) and uns[%r]['params']", key, len(conditions), key)
    return data if copy else None


def _method_specs(methods) -> dict[str, tuple[str, dict[str, Any]]]:
    if isinstance(methods, str):
        methods = [methods]
    if isinstance(methods, Mapping):
        out = {}
        for label, spec in methods.items():
            spec = dict(spec)
            out[str(label)] = (str(spec.pop("method", label)), spec)
        return out
    return {str(m): (str(m), {}) for m in methods}


def benchmark_perturbation(
    adata: AnnData | MuData,
    *,
    methods: Sequence[str] | Mapping[str, Mapping[str, Any]] = ("control", "mean", "additive", "linear"),
    split: str = "random",
    seeds: Iterable[int] = range(5),
    evaluate: Sequence[str] = ("test",),
    split_options: Mapping[str, Any] | None = None,
    metrics: Sequence[str] | None = None,
    perturbation_key: str = "condition",
    control: str = "control",
    mod: str | None = "rna",
) -> pd.DataFrame:
    """Fit and score several predictors on repeated splits: a tidy table (method, seed, condition, metric, value).

    For each seed the pseudobulk is split with :func:`scfmkit.pp.split_perturbations` (``method=split``,
    ``rng=seed``), every method is fitted on the train conditions and scored with
    :func:`scfmkit.metrics.perturbation_metrics` on the ``evaluate`` conditions. Conditions that some method cannot
    predict (e.g. ``additive`` without both singles) are dropped for ALL methods of that seed, with a log line, so
    every method is scored on the same conditions.

    Parameters
    ----------
    adata
        Cells x genes (pseudobulked here with ``perturbation_key``/``control``) or a pseudobulk from
        :func:`scfmkit.pp.pseudobulk_perturbations`. Not modified.
    methods
        Predictor names, or ``{label: {"method": name, **options}}`` to compare variants
        (e.g. ``{"linear_fm": {"method": "linear", "gene_embedding": "geneformer_token"}}``).
    split
        ``"random"``, ``"simulation"`` or ``"double"``.
    seeds
        One split (and fit) per seed.
    evaluate
        Split labels scored (``"test"``; add ``"holdout"`` to score both).
    split_options
        More options of :func:`scfmkit.pp.split_perturbations` (e.g. ``test_fraction``, ``unmeasured``).
    metrics
        Subset of :data:`scfmkit.metrics.PERTURBATION_METRICS`.
    perturbation_key, control
        Used when ``adata`` holds cells.
    mod
        Modality of a MuData.

    Returns
    -------
    A new DataFrame with columns ``method``, ``seed``, ``condition``, ``metric``, ``value``; its ``attrs`` hold
    ``fit_seconds`` (method -> list of fit+predict times) and ``dropped`` (seed -> conditions left out).
    """
    from scfmkit.metrics._perturbation import perturbation_metrics
    from scfmkit.pp._perturbation import pseudobulk_perturbations, split_perturbations

    target = get_modality(adata, mod)
    if isinstance(target.uns.get("perturbation"), dict) and "is_control" in target.obs:
        pdata = target.copy()
    else:
        pdata = pseudobulk_perturbations(target, perturbation_key=perturbation_key, control=control, mod=None)
    specs = _method_specs(methods)
    for name, opts in specs.values():
        _make(name, opts)  # validate names/options before the loop
    frames, times, dropped = [], {m: [] for m in specs}, {}
    seeds = list(seeds)
    for seed in progress(seeds, desc="benchmark seeds", unit="seed"):
        split_perturbations(pdata, method=split, rng=int(seed), key_added="split", **dict(split_options or {}))
        labels = pdata.obs["split"].astype(str).to_numpy()
        train = list(pdata.obs_names[labels == "train"])
        test = [n for n, s in zip(pdata.obs_names, labels, strict=True) if s in set(evaluate)]
        fitted = {}
        for label, (name, opts) in specs.items():
            t0 = time.perf_counter()
            fitted[label] = _make(name, opts).fit(pdata, train)
            times[label].append(time.perf_counter() - t0)
        ok = [c for c in test if all(p.why_not(c) is None for p in fitted.values())]
        left = sorted(set(test) - set(ok))
        if left:
            logger.info("seed %s: %d condition(s) not predictable by every method, left out: %s", seed, len(left), left)
        dropped[int(seed)] = left
        if not ok:
            logger.warning("seed %s: no test condition can be predicted by every method.", seed)
            continue
        for label, pred in fitted.items():
            t0 = time.perf_counter()
            frame = pred.predict(ok)
            times[label][-1] += time.perf_counter() - t0
            scores = perturbation_metrics(pdata, frame, metrics=metrics, train=train)
            scores.insert(0, "seed", int(seed))
            scores.insert(0, "method", label)
            frames.append(scores)
    cols = ["method", "seed", "condition", "metric", "value"]
    out = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=cols)
    out = out[cols]
    out.attrs["fit_seconds"] = times
    out.attrs["dropped"] = dropped
    return out


def _cos_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if b.ndim == 1:
        b = np.broadcast_to(b, a.shape)
    num = (a * b).sum(1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return num / den


def _perturb_tokens(
    cell: np.ndarray, targets: Sequence[int], *, mode: str, skip: int, max_genes: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Perturb one cell's token ids as Geneformer's InSilicoPerturber does.

    Returns ``(perturbed_ids, perturbed_excluded, original_excluded)``: the new ids (special tokens kept) and, for
    the comparison of the two embeddings, the gene positions (0-based after ``<cls>``) to leave out of each mean so
    that only the genes that were not perturbed are compared: the deleted genes in the original; the moved or
    inserted genes in the perturbed cell, and in the original the moved genes plus any gene truncated off the end.
    ``None`` when ``mode="delete"`` and the cell does not express every target (or would keep no gene).
    """
    head, body, tail = cell[:skip], cell[skip : len(cell) - skip], cell[len(cell) - skip :]
    present = np.isin(body, targets)
    empty = np.zeros(0, np.int64)
    if mode == "delete":
        if not np.isin(targets, body).all() or present.all():
            return None
        return np.concatenate([head, body[~present], tail]), empty, np.flatnonzero(present)
    front = np.asarray(list(dict.fromkeys(targets)), dtype=cell.dtype)
    rest_pos = np.flatnonzero(~present)
    kept = rest_pos[: max(max_genes - len(front), 0)]
    dropped = rest_pos[len(kept) :]
    new_body = np.concatenate([front, body[kept]])
    pert_excl = np.arange(len(front))
    orig_excl = np.sort(np.concatenate([np.flatnonzero(present), dropped]))
    return np.concatenate([head, new_body, tail]), pert_excl, orig_excl


def _masked_embed(
    fm_model: Any,
    cells: Sequence[np.ndarray],
    excluded: Sequence[np.ndarray],
    *,
    emb_layer: int,
    pooling: str,
    batch_size: int,
    device: str | None,
) -> np.ndarray:
    """Cell embeddings (mean over gene tokens, leaving out ``excluded`` gene positions; or ``<cls>``)."""
    import torch

    from scfmkit._settings import settings

    if not -fm_model.n_layers <= emb_layer <= 0:
        msg = f"`emb_layer` must be between {-fm_model.n_layers} and 0, got {emb_layer}."
        raise ValueError(msg)
    special = bool(fm_model.vocab.special_tokens)
    if pooling not in {"mean", "cls"} or (pooling == "cls" and not special):
        msg = f"`pooling` must be 'mean' (or 'cls' for Geneformer V2), got {pooling!r}."
        raise ValueError(msg)
    device = settings.resolve_device(device or getattr(fm_model, "device", None))
    enc = fm_model.encoder(fm_model.n_layers + emb_layer, device)
    skip = 1 if special else 0
    pad = fm_model.vocab.pad_id
    lengths = np.array([len(c) for c in cells], dtype=np.int64)
    order = np.argsort(-lengths, kind="stable")
    out = np.empty((len(cells), fm_model.config.hidden_size), np.float32)
    with torch.inference_mode():
        for b in range(0, len(order), batch_size):
            idx = order[b : b + batch_size]
            n = int(lengths[idx].max())
            ids = np.full((len(idx), n), pad, np.int64)
            mask = np.zeros((len(idx), n), bool)
            for r, i in enumerate(idx):
                ids[r, : lengths[i]] = cells[i]
                mask[r, skip : lengths[i] - skip] = True
                mask[r, skip + np.asarray(excluded[i], dtype=np.int64)] = False
            hidden = enc(torch.from_numpy(ids).to(device), torch.from_numpy(lengths[idx]).to(device)).float()
            if pooling == "cls":
                emb = hidden[:, 0]
            else:
                m = torch.from_numpy(mask).to(device)[..., None].float()
                emb = (hidden * m).sum(1) / m.sum(1).clamp(min=1)
            out[idx] = emb.cpu().numpy()
    return out


def _null_targets(
    cell: np.ndarray, targets: Sequence[int], *, skip: int, window: int, pool: np.ndarray, gen: np.random.Generator
) -> list[int] | None:
    """Random stand-ins for ``targets`` in one cell (``None`` if none can be drawn).

    An expressed target gets a gene of the cell within ``window`` rank positions; an absent one (overexpression by
    insertion) a random gene of ``pool`` that the cell does not express.
    """
    body = cell[skip : len(cell) - skip]
    taken = set(np.flatnonzero(np.isin(body, targets)).tolist())
    out: list[int] = []
    for t in targets:
        pos = np.flatnonzero(body == t)
        if pos.size:
            p = int(pos[0])
            cand = [q for q in range(max(0, p - window), min(len(body), p + window + 1)) if q not in taken]
            if not cand:
                return None
            q = int(gen.choice(cand))
            taken.add(q)
            out.append(int(body[q]))
        else:
            absent = pool[~np.isin(pool, body) & ~np.isin(pool, out) & ~np.isin(pool, targets)]
            if absent.size == 0:
                return None
            out.append(int(gen.choice(absent)))
    return out


def geneformer_perturb(
    adata: AnnData | MuData,
    model: Any = "geneformer-v1",
    *,
    genes: str | Sequence[str],
    mode: str = "delete",
    goal_key: str | None = None,
    goal: str | None = None,
    start: str | None = None,
    n_null: int = 10,
    null_window: int = 5,
    weights: str = "pretrained",
    layer: str | None = None,
    gene_key: str | None = None,
    input: str = "counts",
    emb_layer: int = -1,
    pooling: str = "mean",
    batch_size: int | None = None,
    device: str | None = None,
    rng: int | np.random.Generator | None = 0,
    mod: str | None = "rna",
    key_added: str = "geneformer_perturb",
    copy: bool = False,
) -> AnnData | MuData | None:
    """Geneformer in-silico perturbation: how far deleting or overexpressing genes moves each cell's embedding.

    ``mode="delete"`` removes the genes' tokens from each cell's rank-value encoding (cells that express none of them
    are not perturbed); ``mode="overexpress"`` moves them to the front of the encoding (right after ``<cls>`` in
    Geneformer V2), inserting them where the cell does not express them, and truncates to the input size. The genes
    are perturbed together; deletion needs cells that express all of them (as in Geneformer's InSilicoPerturber).
    Each perturbed cell is re-embedded (same layer and pooling) and compared with its original embedding on the
    genes both keep, as the reference does: the deleted or overexpressed genes (and genes truncated off the end)
    are left out of both mean-pools. With a goal state, the shift toward the goal cells' mean embedding (all genes)
    is ``cos(perturbed, goal) - cos(original, goal)``.

    The null repeats the same perturbation ``n_null`` times with random stand-in genes of matched expression rank:
    for an expressed target, a random gene of the same cell within ``null_window`` rank positions; for an inserted
    (non-expressed) one, a random matched gene of ``adata`` that the cell does not express.

    This method gives no expression-space predictions (no predicted pseudobulk, nothing for
    :func:`scfmkit.metrics.perturbation_metrics`): it measures embedding shifts only. For expression predictions with
    Geneformer, use its token embeddings in the linear model (:func:`predict_perturbation` with ``method="linear"``
    and ``gene_embedding=<model>``).

    Parameters
    ----------
    adata
        Cells x genes, raw counts (or log1p-normalised with ``input="lognorm"``). A MuData is used through ``mod``.
    model
        Geneformer registry name, checkpoint directory or loaded :class:`~scfmkit.models.FoundationModel`.
    genes
        Gene(s) to perturb together (symbols or Ensembl ids, as the model's dictionaries know them).
    mode
        ``"delete"`` or ``"overexpress"``.
    goal_key, goal
        ``obs`` column and value of the goal state (optional).
    start
        Value of ``obs[goal_key]`` of the cells to perturb (default: every cell not in the goal state; without a
        goal, every cell).
    n_null
        Repeats of the random-gene null (0 for none).
    null_window
        Rank positions around an expressed target from which its null stand-in is drawn.
    weights, layer, gene_key, input, emb_layer, pooling, batch_size, device
        As in :func:`scfmkit.tl.embed`.
    rng
        Seed or generator of the null.
    mod
        Modality of a MuData.
    key_added
        Prefix of the keys written.
    copy
        Return a copy instead of writing into ``adata``.

    Returns
    -------
    ``None`` or a copy. Writes (NaN for cells that were not perturbed)

    - ``obs['<key_added>_cos']``: cosine similarity of each cell's original and perturbed embedding;
    - ``obs['<key_added>_shift']``: ``1 - cos``; ``obs['<key_added>_null_shift']``: its mean over the null repeats;
    - with a goal: ``obs['<key_added>_goal_shift']`` and ``obs['<key_added>_null_goal_shift']``;
    - ``obsm['X_<key_added>']``: the perturbed embeddings (float32; mean over the genes that were not perturbed);
    - ``uns['<key_added>']``: ``params`` and ``summary`` (cells perturbed, mean shifts, null means and empirical
      p-values ``(1 + #null repeats with a mean at least as large) / (1 + n_null)``).
    """
    from scfmkit import models
    from scfmkit._settings import settings
    from scfmkit._utils import write_back

    if mode not in {"delete", "overexpress"}:
        msg = f"`mode` must be 'delete' or 'overexpress', got {mode!r}."
        raise ValueError(msg)
    if n_null < 0 or null_window < 1:
        msg = f"Need `n_null >= 0` and `null_window >= 1`, got {n_null} and {null_window}."
        raise ValueError(msg)
    genes = [genes] if isinstance(genes, str) else [str(g) for g in genes]
    if not genes:
        msg = "Pass at least one gene in `genes=`."
        raise ValueError(msg)
    target = get_modality(adata, mod)
    if (goal_key is None) != (goal is None):
        msg = "Pass both `goal_key` and `goal` (or neither)."
        raise ValueError(msg)
    if goal_key is not None:
        if goal_key not in target.obs:
            msg = f"`goal_key={goal_key!r}` is not an obs column; available: {list(target.obs.columns)}."
            raise KeyError(msg)
        states = target.obs[goal_key].astype(str).to_numpy()
        is_goal = states == str(goal)
        if not is_goal.any():
            msg = f"No cell has obs[{goal_key!r}] == {goal!r}; values: {sorted(set(states))[:10]}."
            raise ValueError(msg)
        is_start = (states == str(start)) if start is not None else ~is_goal
        if not is_start.any():
            msg = f"No start cells (obs[{goal_key!r}] == {start!r})."
            raise ValueError(msg)
    else:
        if start is not None:
            msg = "`start` needs `goal_key`/`goal`."
            raise ValueError(msg)
        is_goal = np.zeros(target.n_obs, bool)
        is_start = np.ones(target.n_obs, bool)
    fm_model = models.load(model, weights=weights, device=device)
    for attr in ("tokenize", "encoder", "match_genes", "vocab", "n_layers", "config", "input_size"):
        if not hasattr(fm_model, attr):
            msg = f"In-silico perturbation needs a Geneformer model (with `{attr}`), got {type(fm_model).__name__}."
            raise TypeError(msg)
    match = fm_model.match_genes(genes)
    missing = [g for g, c in zip(genes, match.column, strict=True) if c < 0]
    if missing:
        msg = f"Genes {missing} are not in {fm_model.name}'s dictionaries; check the names (symbols or Ensembl ids)."
        raise ValueError(msg)
    target_tokens = [int(match.token_ids[c]) for c in match.column]
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)

    use = is_goal | is_start
    rows = np.flatnonzero(use)
    tokens, coverage = fm_model.tokenize(target[rows], layer=layer, gene_key=gene_key, input=input)
    skip = 1 if fm_model.vocab.special_tokens else 0
    max_genes = fm_model.input_size - 2 * skip
    start_local = np.flatnonzero(is_start[rows])

    def _run(target_ids_per_cell: Sequence[Sequence[int] | None], cells_local: np.ndarray):
        """Perturb, then embed perturbed cells and their originals on the genes both keep."""
        pert_ids, pert_ex, orig_ids, orig_ex, ok = [], [], [], [], []
        for j, (i, targets) in enumerate(zip(cells_local, target_ids_per_cell, strict=True)):
            res = (
                None
                if targets is None
                else _perturb_tokens(tokens[i], targets, mode=mode, skip=skip, max_genes=max_genes)
            )
            if res is None:
                continue
            pert_ids.append(res[0])
            pert_ex.append(res[1])
            orig_ids.append(tokens[i])
            orig_ex.append(res[2])
            ok.append(j)
        if not ok:
            return np.zeros(0, int), None, None
        kw = {"emb_layer": emb_layer, "pooling": pooling, "batch_size": bs, "device": device}
        return (
            np.asarray(ok),
            _masked_embed(fm_model, pert_ids, pert_ex, **kw),
            _masked_embed(fm_model, orig_ids, orig_ex, **kw),
        )

    bs = batch_size or settings.batch_size
    ok, pert, orig_cmp = _run([target_tokens] * len(start_local), start_local)
    if len(ok) == 0:
        msg = (
            f"None of the start cells express all of {genes}; nothing to delete "
            "(Geneformer deletes only in cells that express every gene; `mode='overexpress'` inserts)."
        )
        raise ValueError(msg)
    pert_local = start_local[ok]
    cos = _cos_rows(orig_cmp, pert)
    goal_mean = None
    if goal_key is not None:
        goal_local = np.flatnonzero(is_goal[rows])
        goal_tokens = [tokens[i] for i in goal_local]
        goal_emb = _masked_embed(
            fm_model,
            goal_tokens,
            [np.zeros(0, np.int64)] * len(goal_tokens),
            emb_layer=emb_layer,
            pooling=pooling,
            batch_size=bs,
            device=device,
        )
        goal_mean = goal_emb.mean(0)
    goal_shift = _cos_rows(pert, goal_mean) - _cos_rows(orig_cmp, goal_mean) if goal_mean is not None else None

    var_genes = target.var_names if gene_key is None else target.var[gene_key].astype(str)
    pool = np.asarray(fm_model.match_genes(var_genes).token_ids)
    null_shift = np.full((len(pert_local), n_null), np.nan)
    null_goal = np.full((len(pert_local), n_null), np.nan)
    for r in progress(range(n_null), desc="null repeats", unit="repeat"):
        stand_ins = [
            _null_targets(tokens[i], target_tokens, skip=skip, window=null_window, pool=pool, gen=gen)
            for i in pert_local
        ]
        ok_null, emb, orig_null = _run(stand_ins, pert_local)
        if len(ok_null) == 0:
            continue
        null_shift[ok_null, r] = 1 - _cos_rows(orig_null, emb)
        if goal_mean is not None:
            null_goal[ok_null, r] = _cos_rows(emb, goal_mean) - _cos_rows(orig_null, goal_mean)

    def _p(observed: np.ndarray, null: np.ndarray) -> float:
        if null.shape[1] == 0:
            return float("nan")
        means = np.nanmean(null, axis=0)
        means = means[np.isfinite(means)]
        return float((1 + (means >= np.nanmean(observed)).sum()) / (1 + len(means)))

    shift = 1 - cos
    summary: dict[str, Any] = {
        "n_cells_perturbed": len(pert_local),
        "n_start_cells": int(is_start.sum()),
        "mean_shift": float(np.mean(shift)),
        "null_mean_shift": float(np.nanmean(null_shift)) if n_null else float("nan"),
        "p_shift": _p(shift, null_shift),
    }
    if goal_shift is not None:
        summary |= {
            "mean_goal_shift": float(np.mean(goal_shift)),
            "null_mean_goal_shift": float(np.nanmean(null_goal)) if n_null else float("nan"),
            "p_goal_shift": _p(goal_shift, null_goal),
        }

    data = adata.copy() if copy else adata
    tgt = get_modality(data, mod)
    cell_rows = rows[pert_local]

    def _col(values: np.ndarray) -> np.ndarray:
        out = np.full(tgt.n_obs, np.nan)
        out[cell_rows] = values
        return out

    tgt.obs[f"{key_added}_cos"] = _col(cos)
    tgt.obs[f"{key_added}_shift"] = _col(shift)
    tgt.obs[f"{key_added}_null_shift"] = _col(np.nanmean(null_shift, axis=1) if n_null else np.full(len(cos), np.nan))
    if goal_shift is not None:
        tgt.obs[f"{key_added}_goal_shift"] = _col(goal_shift)
        tgt.obs[f"{key_added}_null_goal_shift"] = _col(
            np.nanmean(null_goal, axis=1) if n_null else np.full(len(cos), np.nan)
        )
    emb_out = np.full((tgt.n_obs, pert.shape[1]), np.nan, np.float32)
    emb_out[cell_rows] = pert
    tgt.obsm[f"X_{key_added}"] = emb_out
    params = {
        **fm_model.base_params,
        "genes": genes,
        "mode": mode,
        "goal_key": goal_key,
        "goal": goal,
        "start": start,
        "n_null": n_null,
        "null_window": null_window,
        "emb_layer": emb_layer,
        "pooling": pooling,
        "input": input,
        "rng": rng if isinstance(rng, int | None) else "Generator",
        "gene_coverage": coverage.get("frac_vars_matched"),
        "expression_predictions": False,
    }
    tgt.uns[key_added] = {"params": sanitize_params(params), "summary": sanitize_params(summary)}
    write_back(data, mod, obsm_keys=[f"X_{key_added}"])
    logger.info(
        "In-silico %s of %s in %d cells: mean shift %.4g (null %.4g, p=%.3g)",
        mode,
        genes,
        len(pert_local),
        summary["mean_shift"],
        summary["null_mean_shift"],
        summary["p_shift"],
    )
    return data if copy else None
