"""The official ISIC 2018 metrics (equal to isic-challenge-scoring 5.6.0) and mask mAP."""
