"""Stage 1, data: the base train/test sets and one probe set per concept
(synthetic, CIFAR-10 or any ImageFolder tree)."""
