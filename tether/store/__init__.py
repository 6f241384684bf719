"""Persistence: the Llm rows. Actors hold in-flight work; the store holds rows."""
