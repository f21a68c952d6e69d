"""humpback-jax: instruction backtranslation (Humpback) in JAX.

Importing the package first runs ``humpback_jax.platform.configure_platform()``: on a machine
without GPU/TPU it selects JAX's CPU platform explicitly (``JAX_PLATFORMS=cpu``, unless you set
``JAX_PLATFORMS`` yourself) and keeps TensorFlow's CUDA probe out of stderr, so that no entry
point prints device-probing errors. ``humpback_jax.platform.DECISION`` says what it did.
"""

from humpback_jax import platform as _platform

_platform.configure_platform()
