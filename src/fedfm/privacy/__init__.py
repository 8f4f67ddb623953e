"""Privacy: clipping, the Gaussian mechanism, accountants, DP-SGD and secure aggregation."""
