"""Reading the official ISIC 2018 release: images, masks, CSV files and the Dataset subclasses."""
