"""``weightvault serve``: OpenAI-compatible inference for one sealed model (:mod:`.runtime`, :mod:`.app`)."""
