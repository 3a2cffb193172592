"""The demo's generated inputs: synthetic PPM-100-shaped photos, the brief training, the checkpoint."""
