"""Thin resources: validate, message the actor system, render."""
