"""Runnable meshkit examples (importable so services.yaml can name their classes)."""
