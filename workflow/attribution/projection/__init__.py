"""Projected per-example gradients for TRAK.

``gradients.ProjectedGradients`` is the one interface the stages use: projected
per-example gradients of a batched output -> [B, k]. ``factory.make`` picks an
implementation by config name: hooks with the factored projector (``factored``), or
per-example gradients under ``torch.func.vmap`` projected by the sparse JL map
(``sparse``) or one of traker's projectors (``basic``, ``cuda``, ``noop``).
"""
