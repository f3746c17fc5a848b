"""Configuration files that sit next to the mappings: sources and destinations."""
