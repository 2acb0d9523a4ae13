"""Stage 7, ablation: the training sets with the top-attributed images (or a control
set) removed, as index lists over the base train split."""
