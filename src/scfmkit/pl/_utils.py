"""What every plot does at the end (scanpy/pertpy conventions for ``show`` and ``return_fig``)."""

from __future__ import annotations


def finish(fig, show: bool | None, return_fig: bool):
    """Show the figure (default unless ``return_fig``), and return it when ``return_fig``; else close it."""
    import matplotlib.pyplot as plt

    if show is None:
        show = not return_fig
    if show:
        plt.show()
    if return_fig:
        return fig
    if not show:
        plt.close(fig)
    return None
