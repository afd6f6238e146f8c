"""Decryption of sealed weights on the accelerator (Triton kernels; ChaCha20-Poly1305).

Importing this package needs ``triton`` (``pip install 'weightvault[gpu]'``). On a
machine without a GPU the same kernels run under Triton's interpreter
(``TRITON_INTERPRET=1``) on CPU tensors, which is how CI checks them.
"""
