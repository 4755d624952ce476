"""Frozen pre-trained parts (semantic backbones, text encoders) and the checkpoint format."""
