"""ISIC 2018 specifics: the official data layout, dataset loaders, official metrics,
submission writers and the synthetic dataset generator."""
