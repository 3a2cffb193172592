"""PPM-100-shaped folders, image lists, decoding and the config's preprocessing."""
