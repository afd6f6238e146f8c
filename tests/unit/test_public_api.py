"""The curated public API: __all__ lists exactly the public names, and they import."""

from __future__ import annotations

import weightvault
from weightvault import errors


def test_all_is_complete() -> None:
    """Every name in weightvault.__all__ exists, and every public attribute is listed."""
    for name in weightvault.__all__:
        assert hasattr(weightvault, name)
    module_type = type(weightvault)
    public = {
        n
        for n, v in vars(weightvault).items()
        if not n.startswith("_") and not isinstance(v, module_type) and n != "annotations"
    }
    assert public == set(weightvault.__all__) - {"__version__"}


def test_error_tree() -> None:
    """Every exported error derives from WeightVaultError and ends in 'Error'."""
    for name in errors.__all__:
        cls = getattr(errors, name)
        assert issubclass(cls, errors.WeightVaultError)
        assert name.endswith("Error")
