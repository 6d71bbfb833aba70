"""The homeserver edge: the only package that imports matrix-nio.

- `gateway`: requests, room state and encrypted sends (who gets the room key);
- `session`: login, one device for life; `sync`: the sync loop and its guarantees;
- `events`: turns nio events into calls on the services; `undecryptable`: events held
  until their key arrives;
- `trust`, `crosssign`: the device policy and the bot's own cross-signing;
- `keyshare`: answering other devices' room key requests;
- `messenger`: sending as the services see it (notices, DMs, admin alerts).
"""
