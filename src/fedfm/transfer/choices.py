"""The named choices of ``[pft]`` and ``[distill]`` (no heavy import: config checks read
them before torch loads)."""

COVARIANCES = ("diag", "full")  # pft.covariance
HEADS = ("linear", "mlp")  # pft.head
DIRECTIONS = ("both", "to_client", "to_teacher")  # distill.directions
