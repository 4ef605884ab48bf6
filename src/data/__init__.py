"""Dataset readers (pure, one per on-disk format) and their LightningDataModules."""
