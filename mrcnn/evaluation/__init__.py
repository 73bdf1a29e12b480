"""Detection metrics on NumPy arrays (Matterport's mask-IoU matching and VOC-style AP)."""
