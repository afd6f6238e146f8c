"""The only package of weightvault that imports ``cryptography.hazmat``.

Everything here is a thin, typed layer over pyca/cryptography: no primitive is
implemented in Python. Keys and salts come from :func:`os.urandom` inside this
package; callers never pass nonces.
"""
