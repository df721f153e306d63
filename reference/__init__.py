"""qtrain.reference: the bit-exact NumPy + ml_dtypes implementation of spec/ (written for clarity, not speed)."""
