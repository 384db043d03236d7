"""The perturbation predictor interface and its registry."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = ["PerturbationPredictor", "available_predictors", "register_predictor"]


class PerturbationPredictor:
    """Base class: fit on training pseudobulks, predict mean expression of named conditions.

    Subclasses implement :meth:`_fit` and :meth:`_predict_one` (or :meth:`_predict`) and may refuse conditions in
    :meth:`why_not` (a reason string, or ``None`` when the condition can be predicted). A predictor that trains on
    single cells (e.g. ``scgpt``) sets ``needs_cells = True`` and implements :meth:`_fit_cells`; its :meth:`fit`
    then requires ``cells=`` (the cell-level AnnData the pseudobulk was built from).
    """

    name = "base"
    #: whether :meth:`fit` needs the cells (``cells=``) besides the pseudobulk
    needs_cells: ClassVar[bool] = False

    def __init__(self, **options: Any) -> None:
        self.options = options
        self.fitted = False

    # ---- fitting -------------------------------------------------------------------------------------------
    def fit(
        self, pdata: AnnData, train: Sequence[str] | None = None, *, cells: AnnData | None = None
    ) -> PerturbationPredictor:
        """Fit on the conditions ``train`` of the pseudobulk ``pdata`` (default: all rows; control is always added).

        Parameters
        ----------
        pdata
            Pseudobulk from :func:`scfmkit.pp.pseudobulk_perturbations`.
        train
            Training condition names.
        cells
            The cell-level AnnData ``pdata`` was built from; required when ``needs_cells`` (ignored otherwise).
            Not modified.

        Returns
        -------
        ``self``.
        """
        from scfmkit.pp._perturbation import _check_pseudobulk

        info = _check_pseudobulk(pdata)
        if self.needs_cells and cells is None:
            msg = (
                f"The {self.name!r} predictor trains on single cells: pass `cells=` (the cell-level AnnData the "
                "pseudobulk was built from; `benchmark_perturbation` does so when given cells)."
            )
            raise ValueError(msg)
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
        if self.needs_cells:
            self._fit_cells(pdata, cells)
        else:
            self._fit(pdata)
        self.fitted = True
        return self

    def _fit(self, pdata: AnnData) -> None:
        pass

    def _fit_cells(self, pdata: AnnData, cells: AnnData) -> None:
        raise NotImplementedError

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


_PREDICTORS: dict[str, Callable[..., PerturbationPredictor]] = {}


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
        msg = (
            f"Unknown perturbation predictor {method!r}; available: {available_predictors()}. (In-silico perturbation"
            " of an embedding model, which shifts embeddings rather than predicting expression, is "
            "`scfmkit.tl.geneformer_perturb`.)"
        )
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
