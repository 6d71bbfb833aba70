"""One module per concern; each takes the narrow ports it uses in its constructor and
never imports `bot.app` or the homeserver client (`bot.matrix` does that)."""
