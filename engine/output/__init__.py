"""The one guarded output writer, the manifest and the dataset card."""
