"""The packed (padding-free) scGPT forward pass, per cell (CPU) and layer by layer (GPU), equals the padded one."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.mark.parametrize("per_sequence", [False, True])
@pytest.mark.parametrize("pre_norm", [False, True])
def test_packed_forward_equals_padded(pre_norm, per_sequence):
    import torch

    from scfmkit.models._scgpt_model import ScGPTConfig, build_random

    cfg = ScGPTConfig(ntoken=100, d_model=64, nhead=4, d_hid=32, nlayers=3, pre_norm=pre_norm)
    model = build_random(cfg, 1).eval()
    gen = torch.Generator().manual_seed(0)
    lens = [5, 17, 1, 30, 30, 2]
    n = max(lens)
    tok = torch.zeros(len(lens), n, dtype=torch.long)
    val = torch.full((len(lens), n), -2.0)
    for i, length in enumerate(lens):
        tok[i, 1:length] = torch.randint(3, 100, (length - 1,), generator=gen)
        tok[i, 0] = 2
        val[i, 1:length] = torch.randint(1, 51, (length - 1,), generator=gen).float()
    keep = torch.arange(n)[None] < torch.tensor(lens)[:, None]
    bounds = [0, *np.cumsum(lens).tolist()]
    with torch.inference_mode():
        cls_padded = model(tok, val, torch.tensor(lens), cls_only=True)
        all_padded = model(tok, val, torch.tensor(lens), cls_only=False)
        cls_packed = model.forward_packed(tok[keep], val[keep], bounds, cls_only=True, per_sequence=per_sequence)
        all_packed = model.forward_packed(tok[keep], val[keep], bounds, cls_only=False, per_sequence=per_sequence)
    assert cls_packed.shape == (len(lens), 64)
    assert all_packed.shape == (sum(lens), 64)
    torch.testing.assert_close(cls_packed, cls_padded, rtol=0, atol=1e-5)
    torch.testing.assert_close(all_packed, all_padded[keep], rtol=0, atol=1e-5)
    torch.testing.assert_close(all_packed[bounds[:-1]], cls_packed, rtol=0, atol=1e-5)


def test_embed_cells_packed_equals_padded(shared_dir, tmp_path):
    """The model's embed path (packed batches) gives the padded module's <cls> states, one cell at a time."""
    import anndata as ad
    import torch

    from scfmkit.models.scgpt import load_scgpt, write_random_checkpoint

    sizes = {"nlayers": 2, "embsize": 32, "nhead": 4, "d_hid": 64}
    ckpt = write_random_checkpoint(tmp_path / "ckpt", shared_dir / "models" / "scgpt-human", seed=3, **sizes)
    adata = ad.read_h5ad(shared_dir / "data" / "kang2018_ifnb_counts.h5ad")[:10].copy()
    m = load_scgpt(ckpt, device="cpu")
    emb, _ = m.embed_cells(adata, batch_size=4, normalize=False, max_length=300)
    cells, _ = m.tokenize(adata, max_length=300)
    for i in range(adata.n_obs):
        t = torch.from_numpy(np.asarray(cells[i], dtype=np.int64))[None]
        v = torch.from_numpy(np.asarray(cells.values_of(i), dtype=np.float32))[None]
        with torch.inference_mode():
            ref = m.module(t, v, torch.tensor([t.shape[1]]), cls_only=True)[0].numpy()
        np.testing.assert_allclose(emb[i], ref, rtol=0, atol=1e-5)
