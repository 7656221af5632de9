"""The REST API the bot calls, under /api/v1/ (the contract: docs/API.md and openapi.json)."""
