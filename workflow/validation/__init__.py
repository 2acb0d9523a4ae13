"""Stage 10, validation: the counterfactual check of the attribution (does removing the
top-attributed images change what the base probe reads, as TRAK predicts, more than
removing random or bottom-attributed images?), with intervals and power."""
