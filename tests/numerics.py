"""Shared numerics of the exactness tests: the float rounding bound on logits and a float64
context. Imported by test_convert.py, test_llama.py, test_tasks.py, test_sampler.py and
test_pipeline_e2e.py (pytest puts tests/ on sys.path)."""

import contextlib
import math

import jax
import jax.numpy as jnp
import numpy as np

EPS = {"float32": float(np.finfo(np.float32).eps), "float64": float(np.finfo(np.float64).eps)}
ROUNDING_C = 32.0


def logit_tol(dtype: str, num_layers: int, scale: float, runs: int = 1) -> float:
  """Largest max |logit difference| that rounding in ``dtype`` explains.

  Derivation. Each decoder block adds rounding errors of a few ``eps`` relative to the residual
  stream (norms, projections, RoPE, softmax, SwiGLU, the residual add). RMSNorm keeps the stream
  at a fixed scale, so the blocks' errors are independent and add as a random walk: the logits
  carry an error of about ``k * eps * sqrt(L)`` relative to their scale ``max |logit|``. The dot
  products do not add a ``sqrt(D)``: XLA (Eigen) and MKL/OpenBLAS sum them in blocks, so their
  length enters only logarithmically. Measured ``k`` (the max over all positions and the whole
  vocabulary, float32 and float64 alike, ours and transformers alike): 3 to 9 over random models
  with L in {1, 3, 8, 16} and D in {48, 192}, 4.8 (float32) and 3.5 (float64) for SmolLM2
  (L=30, D=576). ``ROUNDING_C = 32`` leaves a factor >= 3.5 for other BLAS libraries and CPUs.

  It stays tight enough to fail: for SmolLM2 in float32 the bound is 7.8e-4 (2.1e-5 of the
  scale 37.6) while RoPE theta off by 0.1% moves the logits by 3.6e-3, and one layer's q_proj
  scaled by 1 + 1e-4 by 1.1e-3; the float64 bound (1.5e-12) is ~5e8 times tighter still.

  Args:
    dtype: "float32" or "float64", the precision of the computation being checked.
    num_layers: decoder blocks L.
    scale: the logit scale, ``max |reference logit|``.
    runs: how many independently rounded computations are compared (2: float32 vs float32).
  Returns:
    The absolute tolerance on max |logit difference|.
  """
  return runs * ROUNDING_C * EPS[dtype] * math.sqrt(num_layers) * scale


def check_logits(got, want, tol: float, what: str) -> float:
  """Asserts max |got - want| <= tol; returns the difference (printed with -s)."""
  diff = float(np.abs(np.asarray(got, np.float64) - np.asarray(want, np.float64)).max())
  print(f"{what}: max |logit diff| {diff:.2e} = {diff / tol:.3f} x tol {tol:.2e}")
  assert diff <= tol, f"{what}: max |logit diff| {diff:.3e} > tol {tol:.3e}"
  return diff


@contextlib.contextmanager
def precision(dtype: str):
  """Context for running our model in ``dtype``: 64-bit JAX only inside it."""
  if dtype != "float64":
    yield
    return
  with jax.enable_x64(True):
    yield
  assert jnp.zeros(()).dtype == jnp.float32, "64-bit JAX leaked out of the test"
