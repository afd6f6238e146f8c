"""``weightvault sandbox``: run a serving command whose only ways out are the broker and its published ports.

:mod:`.policy` is pure (egress rules, the nftables ruleset, the bubblewrap command line);
:mod:`.netns` builds the network namespace; :mod:`.launcher` runs and reports.
"""
