"""Stages 3-4, probing: pooled activations at every probed layer, linear concept probes
with their probing sparsity, the accuracy-vs-depth summary and the concept's location,
and a fitted probe as a differentiable torch function (the target TRAK differentiates)."""
