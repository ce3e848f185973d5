"""Data: sources (one per dataset family), preprocessing, splits and the LightningDataModule."""
