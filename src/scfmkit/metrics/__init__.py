"""Metrics: pure array kernels and tidy-DataFrame wrappers (perturbation, integration, label transfer)."""
