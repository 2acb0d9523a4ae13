"""Stage 9, report: every retrained condition compared with the base ensemble, and the
HTML report."""
