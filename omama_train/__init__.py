"""omama training side (PyTorch): data preparation, models, feature cache, training."""
