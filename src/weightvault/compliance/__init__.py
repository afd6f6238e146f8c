"""Compliance reports from the audit log: the controls catalogue (controls.json), their assessment from
cited, proven events (:mod:`.rules`), and reports built, verified offline and compared (:mod:`.report`)."""
