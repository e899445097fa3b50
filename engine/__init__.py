"""OCR recipe engine: one YAML recipe from data to devices."""

__version__ = "0.1.0"
