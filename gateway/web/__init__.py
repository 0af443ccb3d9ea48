"""The web console: server-rendered pages on the API's aiohttp app, the same control actions and rules."""
