"""The tokeniser's threads leave torch's thread count alone.

numba's threading layer, once started (``numba.get_num_threads()`` starts it), resets the OpenMP thread count that torch
shares; the kernels ask for numba's count without starting it. A fresh process: in this one the layer may already run.
"""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import numpy as np, torch
from scipy import sparse
torch.set_num_threads(1)
assert torch.get_num_threads() == 1  # asked once before (numba's start-up then reset it to the CPU count)
from scfmkit.models._rank_tokenize import rank_value_tokenize_counts
rng = np.random.default_rng(0)
X = sparse.random(2000, 300, density=0.2, format="csr", random_state=0, dtype=np.float32) * 10
n_counts = np.asarray(X.sum(axis=1)).ravel() + 1
rank_value_tokenize_counts(X, n_counts, rng.gamma(2.0, 1.0, 300), np.arange(300) + 10, max_genes=100)
print(torch.get_num_threads())
"""


def test_tokenising_keeps_the_callers_torch_threads():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.split()[-1] == "1", out.stdout + out.stderr
