"""fedfm: federated learning for and with foundation models."""
