"""Where user files become tensors: decoding, preparation, the split, data checks, importing data."""
