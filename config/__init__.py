"""Command-line options (DINet's flag names and defaults) and the lab presets."""
