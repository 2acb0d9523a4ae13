"""Dataset builders. Each returns plain numpy arrays; ``workflow.data`` writes them to HDF5."""
