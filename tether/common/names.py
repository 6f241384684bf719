"""The shapes of names both sides of the wire check: Llm names and provider session ids.

Shared by the hub (its config and request schemas) and the publisher (its config), so it
sits below both and imports nothing of either.
"""

from __future__ import annotations

LLM_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
SESSION_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
