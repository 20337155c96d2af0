"""rmlab: a config-driven lab for studying training objectives (losses and rewards)."""

__version__ = "0.1.0"
