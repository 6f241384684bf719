"""Tether: one OpenAI-compatible endpoint for the LLMs people run on their own machines."""

__version__ = "0.1.0"
