"""Ollama's own API on the hub (docs/protocol.md, Ollama-compatible): apps that speak only
Ollama's API point at the hub as if it were an Ollama.

Each request becomes the OpenAI task a publisher already knows (translate.py), goes through
the same relay as `/v1` (tether.http.relay), and its answer is written in Ollama's shapes
(answers.py, render.py): JSON, or NDJSON lines as the chunks arrive. resources.py holds the
routes, schemas.py their bodies, errors.py the error shape.
"""
