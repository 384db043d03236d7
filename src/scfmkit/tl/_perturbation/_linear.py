"""The linear model of Ahlmann-Eltze et al. (2025), with optional pretrained gene embeddings."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from scfmkit._utils import logger

from ._predictor import PerturbationPredictor, register_predictor

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = ["LinearPredictor"]


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
        Where ``p`` (the perturbation's vector) comes from:

        - ``"genes"`` (default): ``p`` of a condition is the row of the *gene embedding* ``G`` of its perturbed gene
          (zero for control). With ``gene_embedding="pca"`` this is the reference model of Ahlmann-Eltze et al.
          (``run_linear_pretrained_model.R`` with ``--gene_embedding training_data --pert_embedding training_data``:
          both matrices are the training PCA's gene scores). With a *pretrained* gene embedding, P then comes from
          the pretrained rows as well: our variant, NOT what the paper ran.
        - ``"pca_genes"``: the paper's runs with pretrained gene embeddings (``--gene_embedding <file>
          --pert_embedding training_data``): ``G`` is the pretrained embedding, but ``p`` is the perturbed gene's row
          of the training-data PCA gene scores (the same PCA as ``gene_embedding="pca"``, ``n_components``
          components), so only measured perturbed genes can be predicted. Identical to ``"genes"`` when
          ``gene_embedding="pca"``.
        - ``"training"``: ``p`` of a single is the score of its training condition in the same PCA (right singular
          vector times singular value), combos sum them; for data whose perturbed genes are not measured (CRISPRa
          Norman subset). Needs ``gene_embedding="pca"`` and each gene's single in training.

        Combinations SUM their genes' rows (our choice; the reference predicts singles only). Conditions without a
        ``p`` (e.g. a perturbed gene that is not measured, for ``"genes"`` with the PCA or ``"pca_genes"``) are left
        out of the fit and refused at prediction.
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
        if perturbation_embedding not in {"genes", "pca_genes", "training"}:
            msg = (
                f"`perturbation_embedding` must be 'genes', 'pca_genes' or 'training', got {perturbation_embedding!r}."
            )
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
        mode = opts["perturbation_embedding"]
        if (isinstance(emb, str) and emb == "pca") or mode in {"pca_genes", "training"}:
            pca_genes, self.cond_scores = self._training_pca(int(opts["n_components"]))
        if isinstance(emb, str) and emb == "pca":
            self.gene_table = pca_genes
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
        if mode == "genes":
            values = self.gene_table.to_numpy(dtype=np.float64)
            keys = [str(g) for g in self.gene_table.index]
        elif mode == "pca_genes":  # the paper's pert_embedding = training_data: PCA gene scores of the perturbed gene
            values = pca_genes.to_numpy(dtype=np.float64)
            keys = [str(g) for g in pca_genes.index]
        else:  # a single's vector is the PCA score of its training condition
            values = self.cond_scores.to_numpy(dtype=np.float64)
            keys = [g[0] if len(g) == 1 else None for g in self.train_genes]
        self._p_dim = values.shape[1]
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

    def _training_pca(self, n_components: int) -> tuple[pd.DataFrame, pd.DataFrame]:
        """ONE PCA of the training pseudobulk (genes x conditions, each condition centred, as R's ``prcomp``).

        Returns the gene scores (genes x k, ``U S``) and the condition scores (conditions x k, ``V S``).
        """
        Xt = self.train_X.T  # genes x conditions
        Xc = Xt - Xt.mean(0, keepdims=True)  # centre each condition (prcomp on genes x conditions)
        k_max = min(Xc.shape[0] - 1, Xc.shape[1])
        k = min(n_components, k_max)
        if k < n_components:
            logger.warning("linear: only %d PCA components possible (asked %d).", k, n_components)
        if k < 1:
            msg = "Too few training conditions/genes for the PCA of the linear model."
            raise ValueError(msg)
        U, S, Vt = _small_svd(Xc)
        genes = pd.DataFrame(U[:, :k] * S[:k], index=self.var_names)
        return genes, pd.DataFrame(Vt[:k].T * S[:k], index=self.train_names)

    def _p(self, condition: str) -> np.ndarray | None:
        genes = self.genes_of(condition)
        if not genes:
            return np.zeros(self._p_dim)
        vecs = [self._lookup.get(g) for g in genes]
        if any(v is None for v in vecs):
            return None
        return np.sum(vecs, axis=0)

    def why_not(self, condition: str) -> str | None:
        if self._p(condition) is None:
            mode = self.options["perturbation_embedding"]
            if mode == "genes":
                return f"perturbed gene(s) {list(self.genes_of(condition))} have no gene-embedding row (not measured?)"
            if mode == "pca_genes":
                return f"perturbed gene(s) {list(self.genes_of(condition))} are not measured (no training PCA row)"
            return f"no training single perturbation for {list(self.genes_of(condition))}"
        return None

    def _predict(self, conditions: list[str]) -> np.ndarray:
        P = np.vstack([self._p(c) for c in conditions])
        out = np.tile(self.ctrl, (len(conditions), 1))
        out[:, self.gene_ok] += (self.G @ self.W @ P.T + self.b[:, None]).T
        if not self.gene_ok.all():
            out[:, ~self.gene_ok] += self.b_all[~self.gene_ok]
        return out


register_predictor("linear", LinearPredictor)
