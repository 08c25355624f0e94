"""Reproducing the paper's CIFAR-10 experiments (section 4.2): Table 6, Figure 6, Figure 7."""
