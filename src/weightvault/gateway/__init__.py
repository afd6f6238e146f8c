"""``weightvault gateway``: the only way in to sandboxed models. API keys, output budgets, audit, metrics.

:mod:`.budgets` and :mod:`.sketch` are pure; :mod:`.state` keeps keys and budgets in the
broker's database; :mod:`.app` is the HTTP proxy; :mod:`.main` builds one from ``broker.toml``.
"""
