"""concept-attribution: which training images taught a network a concept at a layer?

The Python package behind the Snakemake workflow. Stages are grouped by family:
``data`` (stage 1), ``model`` (2, 8), ``probing`` (3-4), ``attribution`` (5-6),
``ablation`` (7), ``report`` (9); ``artifacts`` owns every file format and ``cli`` runs
a stage for a rule (see ``stages.STAGES``). docs/method.md describes the method.
"""
__version__ = "0.2.0"
