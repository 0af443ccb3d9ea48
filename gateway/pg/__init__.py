"""PostgreSQL front end: wire protocol, relay and statement inspection."""
