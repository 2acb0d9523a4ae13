"""Stages 5-6, attribution: TRAK features of the training set per model checkpoint,
scores whose target is a concept probe, and the first-look report (enrichment, grids)."""
