"""The HTTP layer: thin aiohttp handlers that parse, validate and map errors."""
