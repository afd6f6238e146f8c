"""HTTP adapters (Starlette): the witness, the static tiles of the audit log, and (later) the key broker."""
