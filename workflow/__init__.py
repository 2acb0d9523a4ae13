"""concept-attribution: the Python package behind the Snakemake workflow.

Every stage of ../SPEC (data, train, activations, probes, summary, ...) lives in its
own module; rules in ``rules/*.smk`` call them through ``python -m workflow <stage>``.
"""
import os

# HDF5 file locking breaks on many network filesystems (NFS, Lustre) used by clusters.
os.environ.setdefault("HDF5_USE_FILE_LOCKING", "FALSE")

__version__ = "0.1.0"
