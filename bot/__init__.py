"""Everything that touches the outside world: config, storage, CLI, and (next) the Matrix client."""
