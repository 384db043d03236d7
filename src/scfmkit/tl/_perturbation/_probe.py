"""``geneformer_probe`` and ``pca_probe``: a ridge readout from in-silico embedding shifts to expression change.

The probe of a frozen embedding model (as PertEval-scFM probes frozen models): control cells are perturbed in silico,
the mean shift of their embeddings is the condition's feature vector, and a ridge regression fitted on the training
conditions maps it to the pseudobulk change. ``pca_probe`` is its control without a foundation model: the same
perturbation of the control cells' expression, projected onto the PCA of the control cells.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from scfmkit._labels import obs_strings
from scfmkit._random import as_generator
from scfmkit._utils import logger

from ._predictor import PerturbationPredictor, register_predictor

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = ["GeneformerProbePredictor", "PCAProbePredictor"]

#: perturbation types (obs['perturbation_type']) read as overexpression; everything else is a loss of function
GAIN = {"crispra", "overexpression", "activation", "orf"}


def ridge_readout(S: np.ndarray, D: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Ridge regression ``D ≈ ((S - mu) / sd) W + b`` with an unpenalised intercept; returns ``(W, b, mu, sd)``.

    ``S`` conditions x features (shifts), ``D`` conditions x genes (changes). Features are standardised with the
    training mean and standard deviation (1 where constant), so ``alpha`` does not depend on the scale of the shifts.
    """
    mu = S.mean(0)
    sd = S.std(0)
    sd[sd == 0] = 1.0
    Z = (S - mu) / sd
    b = D.mean(0)
    W = np.linalg.solve(Z.T @ Z + alpha * np.eye(Z.shape[1]), Z.T @ (D - b))
    return W, b, mu, sd


def _model_name(model: Any) -> str:
    """What ``options['model']`` records: a name or folder as given, a loaded model's source."""
    if isinstance(model, (str, os.PathLike)):
        return str(model)
    return str(getattr(model, "source", type(model).__name__))


class _ProbeBase(PerturbationPredictor):
    """Shared fit/predict of the probes: subclasses compute a condition's shift vector (:meth:`_shift`)."""

    needs_cells: ClassVar[bool] = True

    def __init__(self, *, mode: str = "auto", n_cells: int = 100, ridge: float = 1.0, rng=0, **options: Any) -> None:
        super().__init__(mode=mode, n_cells=int(n_cells), ridge=float(ridge), **options)
        if mode not in {"auto", "delete", "overexpress"}:
            msg = f"`mode` must be 'auto', 'delete' or 'overexpress', got {mode!r}."
            raise ValueError(msg)
        if n_cells < 1 or ridge <= 0:
            msg = f"Need `n_cells >= 1` and `ridge > 0`, got {n_cells} and {ridge}."
            raise ValueError(msg)
        self._rng = rng

    def _mode_of(self, condition: str) -> str:
        if self.options["mode"] != "auto":
            return self.options["mode"]
        return self._modes.get(condition, self._default_mode)

    def _fit_cells(self, pdata: AnnData, cells: AnnData) -> None:
        from ._cells import cell_values, pseudobulk_params

        X, labels = cell_values(pdata, cells, var_names=self.var_names, ctrl=self.ctrl, control=self.control)
        gen = as_generator(self._rng)
        ctrl_rows = np.flatnonzero(labels == self.control)
        n = min(self.options["n_cells"], ctrl_rows.size)
        self.cell_rows = np.sort(gen.choice(ctrl_rows, n, replace=False))
        # deletion or overexpression per condition, from obs['perturbation_type'] when mode="auto"
        self._modes: dict[str, str] = {}
        types = (
            np.char.lower(obs_strings(cells.obs, "perturbation_type", what="perturbation_type", fill="").astype(str))
            if "perturbation_type" in cells.obs
            else None
        )
        if types is not None:
            for c in np.unique(labels):
                t = types[labels == c]
                self._modes[str(c)] = "overexpress" if np.mean(np.isin(t, list(GAIN))) > 0.5 else "delete"
        gain = types is not None and np.mean(np.isin(types, list(GAIN))) > 0.5
        self._default_mode = "overexpress" if gain else "delete"
        if self.options["mode"] == "auto" and types is None:
            logger.info("%s: no obs['perturbation_type']; every condition is a deletion (pass mode=).", self.name)
        self._prepare(pdata, cells, X, pseudobulk_params(pdata))
        refused = {c: r for c in self.train_names if (r := self.why_not(c)) is not None}
        if refused:
            shown = "; ".join(f"{c}: {r}" for c, r in list(refused.items())[:5])
            msg = (
                f"{self.name}: training condition(s) cannot be perturbed in silico ({shown}); drop them from training."
            )
            raise ValueError(msg)
        S = np.vstack([self._shift(c) for c in self.train_names])
        self.W, self.b, self.mu, self.sd = ridge_readout(S, self.train_delta, self.options["ridge"])
        self.train_shifts = S

    def _predict(self, conditions: list[str]) -> np.ndarray:
        S = np.vstack([self._shift(c) for c in conditions])
        return self.ctrl + ((S - self.mu) / self.sd) @ self.W + self.b

    # save / load
    def save(self, path):
        """Write the fitted probe to the folder ``path`` (``predictor.json`` + ``state.safetensors``; no pickles).

        ``geneformer_probe`` records its model's source and ``weights_id`` rather than copying the model; see
        :meth:`load`. Returns the folder.
        """
        from ._probe_io import save_probe

        return save_probe(self, path)

    @classmethod
    def load(cls, path, *, model: Any = None, device: str | None = None):
        """Read a probe written by :meth:`save`; its predictions are those of the saved probe.

        ``model``: for ``geneformer_probe``, the checkpoint folder, registry name or loaded model to use instead of
        the recorded source (refused unless its ``weights_id`` is the fitted one). ``device``: where it runs.
        """
        from ._probe_io import load_probe

        return load_probe(cls, path, model=model, device=device)

    # hooks
    def _prepare(self, pdata: AnnData, cells: AnnData, X: np.ndarray, params: dict) -> None:
        raise NotImplementedError

    def _shift(self, condition: str) -> np.ndarray:
        raise NotImplementedError


class GeneformerProbePredictor(_ProbeBase):
    """``geneformer_probe``: Geneformer in-silico perturbation of control cells -> ridge readout -> pseudobulk.

    For each condition, ``n_cells`` control cells (a seeded sample, the same for every condition) are perturbed in
    their rank-value encoding with the kernel of :func:`scfmkit.tl.geneformer_perturb`, which follows Geneformer's
    ``InSilicoPerturber`` (``"delete"``: the first occurrence of each gene's token removed, in cells that express
    them all; ``"overexpress"``: the genes moved or inserted after ``<cls>`` and the cell truncated to the input size;
    when that pushes genes off the end, the original is truncated by as many genes and re-embedded). Both cells are
    embedded (layer ``emb_layer``) and each is mean-pooled over the same compared genes (those not perturbed, taken
    position by position as the reference compares them). The condition's feature is the mean over the perturbed
    cells of ``pooled(perturbed) - pooled(original)`` (zero when no sampled cell can be perturbed, e.g. deleting a
    gene none of them expresses). This shift vector is this probe's own feature, not a number the reference reports
    (the reference reports cosines: :func:`scfmkit.tl.geneformer_perturb`). A ridge regression (standardised
    features, penalty ``ridge``) fitted on the training conditions (control included, shift 0) maps the shift to the
    expression change; a prediction is control + readout.

    ``mode="auto"`` takes deletion or overexpression from ``obs['perturbation_type']`` of the cells (CRISPRa /
    overexpression -> ``"overexpress"``, anything else, e.g. CRISPRi or knock-out -> ``"delete"``); conditions without
    cells use the type of most cells. ``weights="random"`` is the random-weight control (same readout);
    ``pca_probe`` the control without a foundation model. A fitted probe saves and loads (:meth:`save`,
    :meth:`load`: safetensors + JSON).

    Parameters
    ----------
    model
        Geneformer registry name, checkpoint folder or loaded :class:`~scfmkit.models.FoundationModel`.
    weights
        ``"pretrained"`` or ``"random"``.
    mode, n_cells, ridge
        Perturbation, control cells sampled, ridge penalty.
    emb_layer, batch_size, device, gene_key
        As in :func:`scfmkit.tl.geneformer_perturb`. The cells are tokenised from the pseudobulk's layer
        (``input="counts"`` when the pseudobulk was built from counts, else ``"lognorm"``).
    rng
        Seed of the control-cell sample.
    """

    name = "geneformer_probe"

    def __init__(
        self,
        *,
        model: Any = "geneformer-v1",
        weights: str = "pretrained",
        mode: str = "auto",
        n_cells: int = 100,
        ridge: float = 1.0,
        emb_layer: int = -1,
        batch_size: int | None = None,
        device: str | None = None,
        gene_key: str | None = None,
        rng=0,
    ) -> None:
        super().__init__(
            mode=mode,
            n_cells=n_cells,
            ridge=ridge,
            rng=rng,
            model=_model_name(model),
            weights=weights,
            emb_layer=int(emb_layer),
            batch_size=batch_size,
            device=device,
            gene_key=gene_key,
        )
        self._model_arg = model

    def _prepare(self, pdata: AnnData, cells: AnnData, X: np.ndarray, params: dict) -> None:
        from scfmkit import models

        fm_model = models.load(self._model_arg, weights=self.options["weights"], device=self.options["device"])
        fm_model.require("in_silico_perturbation", what="geneformer_probe")
        self.fm_model = fm_model
        sub = cells[self.cell_rows]
        self.tokens, _ = fm_model.tokenize(
            sub,
            layer=params["layer"],
            gene_key=self.options["gene_key"],
            input="counts" if params.get("counts") else "lognorm",
        )
        self._cache: dict[tuple[str, str], np.ndarray] = {}

    def _targets(self, condition: str) -> tuple[list[int], list[str]]:
        genes = list(self.genes_of(condition))
        if not genes:
            return [], []
        match = self.fm_model.match_genes(genes)
        bad = [g for g, c in zip(genes, match.column, strict=True) if c < 0]
        return [int(match.token_ids[c]) for c in match.column if c >= 0], bad

    def why_not(self, condition: str) -> str | None:
        bad = self._targets(condition)[1]
        return f"gene(s) {bad} are not in {self.fm_model.name}'s dictionaries" if bad else None

    def _shift(self, condition: str) -> np.ndarray:
        from ._isp_compare import compare_pairs, perturb_pair

        targets, _ = self._targets(condition)
        d = self.fm_model.hidden_size
        if not targets:
            return np.zeros(d)
        mode = self._mode_of(condition)
        key = (mode, ",".join(map(str, sorted(targets))))
        if key in self._cache:
            return self._cache[key]
        skip = 1 if self.fm_model.vocab.special_tokens else 0
        pairs = [
            p
            for cell in self.tokens
            if (p := perturb_pair(cell, targets, mode=mode, skip=skip, max_len=self.fm_model.input_size)) is not None
        ]
        if not pairs:
            logger.info(
                "geneformer_probe: %s (%s) perturbs none of the sampled control cells; shift 0.", condition, mode
            )
            out = np.zeros(d)
        else:
            from scfmkit._settings import settings

            emb_layer = self.options["emb_layer"]
            if not -self.fm_model.n_layers <= emb_layer <= 0:
                msg = f"`emb_layer` must be between {-self.fm_model.n_layers} and 0, got {emb_layer}."
                raise ValueError(msg)
            res = compare_pairs(
                self.fm_model,
                pairs,
                emb_layer=emb_layer,
                pooling="mean",
                comparison="genes",
                batch_size=self.options["batch_size"] or settings.batch_size,
                device=settings.resolve_device(self.options["device"] or getattr(self.fm_model, "device", None)),
            )
            out = (res["emb"].astype(np.float64) - res["orig_emb"].astype(np.float64)).mean(0)
        self._cache[key] = out
        return out


class PCAProbePredictor(_ProbeBase):
    """``pca_probe``: the probe's control without a foundation model (PCA of the control cells).

    The sampled control cells' log-normalised expression (the pseudobulk's genes) is perturbed directly: ``"delete"``
    sets the perturbed genes to 0, ``"overexpress"`` to their largest value among the control cells; the feature is
    the mean shift of the cells' PCA scores (``n_components`` components of the centred control cells). Perturbed
    genes that are not measured leave the cells unchanged (shift 0: the readout then predicts its intercept). Readout
    and ``mode`` as :class:`GeneformerProbePredictor`.
    """

    name = "pca_probe"

    def __init__(
        self, *, mode: str = "auto", n_cells: int = 100, ridge: float = 1.0, n_components: int = 50, rng=0
    ) -> None:
        super().__init__(mode=mode, n_cells=n_cells, ridge=ridge, rng=rng, n_components=int(n_components))

    def _prepare(self, pdata: AnnData, cells: AnnData, X: np.ndarray, params: dict) -> None:
        from ._linear import _small_svd

        Xc = X[self.cell_rows].astype(np.float64)
        self.x_ctrl = Xc
        self.x_mean = Xc.mean(0)
        k = min(self.options["n_components"], Xc.shape[0] - 1, Xc.shape[1])
        if k < 1:
            msg = "pca_probe needs at least 2 control cells."
            raise ValueError(msg)
        _, _, Vt = _small_svd(Xc - self.x_mean)
        self.V = Vt[:k].T
        self.x_max = Xc.max(0)
        self._pos = {g: i for i, g in enumerate(self.var_names)}

    def _shift(self, condition: str) -> np.ndarray:
        cols = [self._pos[g] for g in self.genes_of(condition) if g in self._pos]
        if not cols:
            return np.zeros(self.V.shape[1])
        Xp = self.x_ctrl.copy()
        Xp[:, cols] = 0.0 if self._mode_of(condition) == "delete" else self.x_max[cols]
        return (Xp.mean(0) - self.x_mean) @ self.V


register_predictor("geneformer_probe", GeneformerProbePredictor)
register_predictor("pca_probe", PCAProbePredictor)
