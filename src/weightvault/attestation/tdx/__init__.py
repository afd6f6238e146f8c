"""Intel TDX: the ``tdx`` verifier (:mod:`.verifier`), DCAP quotes checked with dcap-qvl and collateral
provided offline (``pip install 'weightvault[tdx]'``)."""
