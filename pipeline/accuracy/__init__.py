"""How a matte is scored: the vendor's metrics against ground truth."""
