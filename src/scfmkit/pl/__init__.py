"""Plots (matplotlib; every function takes ``show``/``return_fig`` like scanpy and pertpy)."""
