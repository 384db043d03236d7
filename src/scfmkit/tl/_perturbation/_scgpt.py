"""``scgpt``: scGPT's perturbation generator fine-tuned on the training conditions (a predictor that needs cells)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd

from scfmkit._random import as_generator
from scfmkit._utils import logger

from ._predictor import PerturbationPredictor, register_predictor

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = ["ScGPTPredictor"]

#: the tutorial's settings (tutorials/Tutorial_Perturbation.ipynb)
TUTORIAL = {"lr": 1e-4, "batch_size": 64, "epochs": 15, "gamma": 0.9, "early_stop": 10, "max_seq_len": 1536}
MIN_CONTROL_CELLS = 2


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else 0.0


class ScGPTPredictor(PerturbationPredictor):
    """``scgpt``: scGPT's ``TransformerGenerator`` fine-tuned as in the reference perturbation tutorial.

    Needs the cells (``needs_cells``): ``fit(pdata, train, cells=adata)`` with the cell-level AnnData the pseudobulk
    was built from (:func:`scfmkit.pp.pseudobulk_perturbations`); the cells' values are transformed exactly as the
    pseudobulk's (its ``layer``, and ``normalize_total`` + ``log1p`` when it was built from counts) and checked
    against its control mean.

    Training pairs (as GEARS/the tutorial): each cell of a training condition is a target, a control cell drawn at
    random (once per fit, with ``rng``) its input; control cells are their own input and target. Every measured gene
    is a token (``include_zero_gene="all"``), genes outside the vocabulary with the ``<pad>`` token (as the tutorial
    maps them). The perturbed genes are flagged 1 (others 0). A perturbed gene that is **not measured** is appended as
    one more token flagged "perturbed" with input value 0 (and no target) when the vocabulary has it; a gene neither
    measured nor in the vocabulary is refused (an error at fit for training conditions, a refusal at predict).

    A part of the perturbed training conditions (``validation_fraction``) is held out of the pairs and scored after
    each epoch (mean Pearson of predicted vs true change over all genes); the best epoch is kept and training stops
    after ``early_stop`` epochs without improvement. Prediction: ``n_pool`` control cells (a seeded sample, the
    same for every condition) through the generator with the condition's flags; their mean is the predicted
    pseudobulk (:meth:`predict`), the cells themselves are :meth:`predict_cells`.

    Parameters
    ----------
    model
        scGPT checkpoint folder (``args.json``, ``vocab.json``, ``best_model.pt``); default
        ``$SCFMKIT_MODELS_DIR/scgpt-human``. A generator checkpoint saved by the tutorial loads whole (pass it as
        ``weights_file``); with ``epochs=0`` it predicts without training.
    weights
        ``"pretrained"`` (encoder from the checkpoint, new flag embedding and decoder) or ``"random"`` (the same
        architecture with seeded random weights: the foundationless control).
    weights_file
        Weights instead of the folder's ``best_model.pt``.
    architecture
        ``args.json`` sizes to override with ``weights="random"`` (e.g. ``{"nlayers": 2, "embsize": 64, "nheads":
        4, "d_hid": 64}``, a small CPU configuration); the default is the checkpoint's (released) size.
    epochs, lr, gamma, batch_size, early_stop, max_seq_len
        The tutorial's: 15 epochs, Adam lr 1e-4, StepLR(1, gamma 0.9), batch 64, patience 10, 1536 genes.
    validation_fraction
        Share of the perturbed training conditions used for best-epoch selection (at least one when there are two or
        more; 0 disables it and keeps the last epoch).
    n_pool
        Control cells per predicted condition (default 300, the tutorial's ``pool_size``; ``None`` = all).
    device, precision
        Torch device (default: settings), ``"float32"`` or autocast ``"bfloat16"``/``"float16"`` (fp16 with a
        gradient scaler, as the tutorial's ``amp``).
    rng
        Seed of the random weights/new parts, the pairs, the shuffling, the validation split and the pool. Same data
        and ``rng`` give identical predictions on CPU.
    progress
        Progress bar over epochs (default: ``scfmkit.settings.progress``).
    """

    name = "scgpt"
    needs_cells: ClassVar[bool] = True

    def __init__(
        self,
        *,
        model: str | Path | None = None,
        weights: str = "pretrained",
        weights_file: str | Path | None = None,
        architecture: dict[str, int] | None = None,
        epochs: int = TUTORIAL["epochs"],
        lr: float = TUTORIAL["lr"],
        gamma: float = TUTORIAL["gamma"],
        batch_size: int = TUTORIAL["batch_size"],
        early_stop: int = TUTORIAL["early_stop"],
        max_seq_len: int = TUTORIAL["max_seq_len"],
        validation_fraction: float = 0.1,
        n_pool: int | None = 300,
        device: str | None = None,
        precision: str = "float32",
        rng: int | np.random.Generator | None = 0,
        progress: bool | None = None,
    ) -> None:
        super().__init__(
            model=None if model is None else str(model),
            weights=weights,
            weights_file=None if weights_file is None else str(weights_file),
            architecture=dict(architecture) if architecture else None,
            epochs=int(epochs),
            lr=float(lr),
            gamma=float(gamma),
            batch_size=int(batch_size),
            early_stop=int(early_stop),
            max_seq_len=int(max_seq_len),
            validation_fraction=float(validation_fraction),
            n_pool=None if n_pool is None else int(n_pool),
            device=device,
            precision=precision,
            progress=progress,
        )
        if weights not in {"pretrained", "random"}:
            msg = f"`weights` must be 'pretrained' or 'random', got {weights!r}."
            raise ValueError(msg)
        if epochs < 0 or batch_size < 1 or early_stop < 1 or max_seq_len < 1 or lr <= 0:
            msg = (
                "Need `epochs >= 0`, `batch_size >= 1`, `early_stop >= 1`, `max_seq_len >= 1` and `lr > 0`; got "
                f"{epochs}, {batch_size}, {early_stop}, {max_seq_len}, {lr}."
            )
            raise ValueError(msg)
        if not 0 <= validation_fraction < 1:
            msg = f"`validation_fraction` must be in [0, 1), got {validation_fraction}."
            raise ValueError(msg)
        if n_pool is not None and n_pool < 1:
            msg = f"`n_pool` must be a positive number of control cells or None, got {n_pool}."
            raise ValueError(msg)
        from scfmkit.models._base import autocast

        autocast("cpu", precision)  # a wrong precision name fails here
        self._rng = rng

    # ---------------------------------------------------------------------------------------------- cells
    def _cell_values(self, pdata: AnnData, cells: AnnData) -> tuple[np.ndarray, np.ndarray]:
        from ._cells import cell_values

        return cell_values(
            pdata, cells, var_names=self.var_names, ctrl=self.ctrl, control=self.control, min_control=MIN_CONTROL_CELLS
        )

    def _tokens_of(self, condition: str) -> tuple[Any, list[str]]:
        """The condition's :class:`ConditionTokens` and the genes neither measured nor in the vocabulary."""
        from ._scgpt_train import ConditionTokens

        flags, extra, bad = [], [], []
        for g in self.genes_of(condition):
            if g in self._var_pos:
                flags.append(self._var_pos[g])
            elif g in self.vocab and g not in {"<pad>", "<cls>", "<eoc>"}:
                extra.append(int(self.vocab[g]))
            else:
                bad.append(g)
        return ConditionTokens(tuple(flags), tuple(extra)), bad

    # ---------------------------------------------------------------------------------------------- fit
    def _fit_cells(self, pdata: AnnData, cells: AnnData) -> None:
        import torch

        from scfmkit._settings import settings
        from scfmkit.models._scgpt_generator import load_scgpt_generator

        from ._scgpt_train import train_generator

        opts = self.options
        gen = as_generator(self._rng)
        X, labels = self._cell_values(pdata, cells)
        self._var_pos = {g: i for i, g in enumerate(self.var_names)}
        path = opts["model"]
        if path is None:
            path = Path(settings.models_dir) / "scgpt-human" if getattr(settings, "models_dir", None) else None
            if path is None:
                msg = (
                    "No scGPT checkpoint folder: pass `model='/path/to/scGPT_human'` (args.json, vocab.json, weights)."
                )
                raise FileNotFoundError(msg)
        seed = int(gen.integers(2**31 - 1))
        module, vocab, args, report = load_scgpt_generator(
            path,
            weights=opts["weights"],
            weights_file=opts["weights_file"],
            seed=seed,
            overrides=opts["architecture"] if opts["weights"] == "random" else None,
        )
        if opts["architecture"] and opts["weights"] != "random":
            msg = "`architecture` overrides only apply to weights='random' (a checkpoint fixes its sizes)."
            raise ValueError(msg)
        self.vocab = vocab
        self.args = args
        self.load_report = report.as_dict()
        self.pad_id = int(vocab["<pad>"])
        self.pert_pad_id = int(module.cfg.pert_pad_id)
        self.gene_tokens = np.array([vocab.get(g, self.pad_id) for g in self.var_names], dtype=np.int64)
        n_in = int((self.gene_tokens != self.pad_id).sum())
        logger.info("scgpt: %d/%d measured genes in the vocabulary (others enter as <pad>)", n_in, len(self.var_names))
        # training conditions: cells, tokens, refusals
        by_cond = pd.Series(np.arange(labels.size)).groupby(labels).apply(lambda s: s.to_numpy()).to_dict()
        refused = {c: b for c in self.train_names if (b := self._tokens_of(c)[1])}
        if refused:
            shown = "; ".join(f"{c}: {b}" for c, b in list(refused.items())[:5])
            msg = (
                f"Perturbed genes of {len(refused)} training condition(s) are neither measured nor in the scGPT "
                f"vocabulary ({shown}); drop those conditions from training or rename the genes to HGNC symbols."
            )
            raise ValueError(msg)
        empty = [c for c in self.train_names if c not in by_cond]
        if empty:
            msg = (
                f"Training condition(s) {empty[:5]} have no cells in `cells`; pass the cell-level AnnData the "
                "pseudobulk was built from."
            )
            raise ValueError(msg)
        ctrl_rows = by_cond[self.control]
        perturbed = [c for c in self.train_names if c != self.control and self.genes_of(c)]
        n_val = int(round(self.options["validation_fraction"] * len(perturbed)))
        if self.options["validation_fraction"] > 0 and len(perturbed) >= 2:
            n_val = min(max(n_val, 1), len(perturbed) - 1)
        else:
            n_val = 0
        val = [perturbed[i] for i in sorted(gen.choice(len(perturbed), n_val, replace=False))] if n_val else []
        self.validation_conditions = val
        fit_conds = [c for c in self.train_names if c not in set(val)]
        tgt, inp, pc = [], [], []
        for c in fit_conds:
            rows = by_cond[c]
            tok = self._tokens_of(c)[0]
            tgt.append(rows)
            inp.append(rows if c == self.control else ctrl_rows[gen.integers(ctrl_rows.size, size=rows.size)])
            pc += [tok] * rows.size
        target_rows, input_rows = np.concatenate(tgt), np.concatenate(inp)
        n_pool = self.options["n_pool"]
        pool = (
            ctrl_rows
            if n_pool is None or n_pool >= ctrl_rows.size
            else np.sort(gen.choice(ctrl_rows, n_pool, replace=False))
        )
        self.pool = X[pool]
        device = settings.resolve_device(opts["device"])
        self.device_ = device
        truth = {c: np.asarray(pdata[c].X, dtype=np.float64).ravel() - self.ctrl for c in val}

        def validate(m) -> float:
            return float(np.mean([_pearson(self._mean_of(m, c, device) - self.ctrl, truth[c]) for c in val]))

        torch_threads = torch.get_num_threads()
        logger.info(
            "scgpt: fine-tuning on %d pairs (%d conditions, %d for validation), %d genes, device %s (%d threads)",
            target_rows.size,
            len(fit_conds),
            len(val),
            len(self.var_names),
            device,
            torch_threads,
        )
        self.module = module
        log = train_generator(
            module,
            X=X,
            target_rows=target_rows,
            input_rows=input_rows,
            pair_conds=pc,
            gene_tokens=self.gene_tokens,
            pad_id=self.pad_id,
            pert_pad_id=self.pert_pad_id,
            epochs=opts["epochs"],
            lr=opts["lr"],
            gamma=opts["gamma"],
            batch_size=opts["batch_size"],
            max_seq_len=opts["max_seq_len"],
            early_stop=opts["early_stop"],
            clip=1.0,
            rng=gen,
            device=device,
            precision=opts["precision"],
            validate=validate if val and opts["epochs"] > 0 else None,
            progress_bar=opts["progress"],
        )
        self.train_log = log.as_dict()
        self.n_pairs = int(target_rows.size)

    # ---------------------------------------------------------------------------------------------- predict
    def _cells_of(self, module, condition: str, device: str) -> np.ndarray:
        from ._scgpt_train import predict_cells

        return predict_cells(
            module,
            self.pool,
            self._tokens_of(condition)[0],
            self.gene_tokens,
            pad_id=self.pad_id,
            pert_pad_id=self.pert_pad_id,
            batch_size=self.options["batch_size"],
            device=device,
            precision=self.options["precision"],
        )

    def _mean_of(self, module, condition: str, device: str) -> np.ndarray:
        return self._cells_of(module, condition, device).astype(np.float64).mean(0)

    def why_not(self, condition: str) -> str | None:
        bad = self._tokens_of(condition)[1]
        if bad:
            return f"perturbed gene(s) {bad} neither measured nor in the scGPT vocabulary"
        return None

    def _predict(self, conditions: list[str]) -> np.ndarray:
        dev = self._device()
        return np.vstack([self._mean_of(self.module, c, dev) for c in conditions])

    def _device(self) -> str:
        from scfmkit._settings import settings

        dev = settings.resolve_device(self.options["device"])
        self.module.to(dev)
        return dev

    def predict_cells(self, conditions) -> AnnData:
        """Predicted cells: ``n_pool`` per condition (the pool of control cells under each condition's flags).

        Returns
        -------
        A new AnnData (cells x the pseudobulk's genes) with ``obs['condition']`` and ``obs['control_cell']`` (the
        input control cell's position in the pool).
        """
        import anndata as ad

        conditions = [str(c) for c in conditions]
        self.predict(conditions[:0])  # fitted check
        bad = {c: r for c in conditions if (r := self.why_not(c)) is not None}
        if bad:
            msg = f"The 'scgpt' predictor cannot predict {list(bad.items())[:5]}."
            raise ValueError(msg)
        dev = self._device()
        blocks = [self._cells_of(self.module, c, dev) for c in conditions]
        n = self.pool.shape[0]
        obs = pd.DataFrame(
            {
                "condition": pd.Categorical(np.repeat(conditions, n), categories=list(dict.fromkeys(conditions))),
                "control_cell": np.tile(np.arange(n), len(conditions)),
            }
        )
        obs.index = [f"{c}-{i}" for c in conditions for i in range(n)]
        out = ad.AnnData(np.vstack(blocks) if blocks else np.zeros((0, len(self.var_names)), np.float32), obs=obs)
        out.var_names = self.var_names
        return out

    # ---------------------------------------------------------------------------------------------- save / load
    def save(self, path: str | Path) -> Path:
        """Write the fitted predictor to the folder ``path`` (safetensors and JSON).

        Files: ``model.safetensors`` (generator), ``state.safetensors`` (control mean, prediction pool, gene tokens),
        ``predictor.json`` (options, conditions, training log) and ``vocab.json``.
        """
        from safetensors.numpy import save_file as save_np
        from safetensors.torch import save_file

        if not self.fitted:
            msg = "Fit the 'scgpt' predictor before saving it."
            raise RuntimeError(msg)
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in self.module.state_dict().items()}, path / "model.safetensors"
        )
        save_np(
            {"ctrl": self.ctrl, "pool": np.ascontiguousarray(self.pool), "gene_tokens": self.gene_tokens},
            path / "state.safetensors",
        )
        meta = {
            "format": "scfmkit.scgpt_predictor/1",
            "options": self.options,
            "args": self.args,
            "pert_pad_id": self.pert_pad_id,
            "control": self.control,
            "sep": self.sep,
            "var_names": list(self.var_names),
            "train_names": list(self.train_names),
            "validation_conditions": list(self.validation_conditions),
            "train_log": self.train_log,
            "load_report": {k: v for k, v in self.load_report.items() if k.startswith(("kind", "n_"))},
        }
        (path / "predictor.json").write_text(json.dumps(meta, indent=1))
        (path / "vocab.json").write_text(json.dumps(self.vocab))
        return path

    @classmethod
    def load(cls, path: str | Path) -> ScGPTPredictor:
        """Read a predictor written by :meth:`save` (safetensors and JSON only; no pickles)."""
        from safetensors.numpy import load_file as load_np
        from safetensors.torch import load_file

        from scfmkit.models._scgpt_generator import GeneratorConfig, ScGPTGenerator
        from scfmkit.models._scgpt_model import ScGPTConfig

        path = Path(path)
        meta = json.loads((path / "predictor.json").read_text())
        if meta.get("format") != "scfmkit.scgpt_predictor/1":
            msg = f"{str(path)!r} does not hold an scfmkit scGPT predictor (predictor.json format)."
            raise ValueError(msg)
        opts = dict(meta["options"])
        self = cls(**opts)
        self.vocab = json.loads((path / "vocab.json").read_text())
        self.args = meta["args"]
        self.pad_id = int(self.vocab["<pad>"])
        enc = ScGPTConfig.from_args(self.args, ntoken=len(self.vocab), pad_id=self.pad_id)
        self.module = ScGPTGenerator(GeneratorConfig(enc, pert_pad_id=int(meta["pert_pad_id"])))
        self.module.load_state_dict(load_file(str(path / "model.safetensors")), strict=True)
        self.module.eval()
        state = load_np(str(path / "state.safetensors"))
        self.ctrl, self.pool, self.gene_tokens = state["ctrl"], state["pool"], state["gene_tokens"]
        self.pert_pad_id = int(meta["pert_pad_id"])
        self.control, self.sep = meta["control"], meta["sep"]
        self.var_names = pd.Index(meta["var_names"])
        self._var_pos = {g: i for i, g in enumerate(self.var_names)}
        self.train_names = meta["train_names"]
        self.validation_conditions = meta["validation_conditions"]
        self.train_log = meta["train_log"]
        self.load_report = meta["load_report"]
        self.fitted = True
        return self


register_predictor("scgpt", ScGPTPredictor)
