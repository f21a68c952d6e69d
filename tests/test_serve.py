"""Tests of ``humpback-jax serve`` (serve/engine.py, serve/scoring.py, serve/app.py,
serve/schemas.py, serve/cli.py) and of the OpenAI-compatible judge client
(eval/openai_backend.py): a real uvicorn server on a free loopback port with a tiny random
model and a byte tokenizer with a ChatML template, called with the ``openai`` client;
FastAPI's TestClient for the error paths."""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import socket
import threading
import time

import httpx
import jax
import jax.numpy as jnp
import numpy as np
import openai
import pytest
import uvicorn
from fastapi.testclient import TestClient

from humpback_jax.eval.openai_backend import OpenAIBackendError, OpenAIChoiceBackend
from humpback_jax.models.config import LlamaConfig
from humpback_jax.models.llama import Llama, init_params
from humpback_jax.sample.decode import generate
from humpback_jax.sample.sampler import Sampler, record_keys
from humpback_jax.sample.sampling import Greedy, Sampling
from humpback_jax.serve import cli as serve_cli
from humpback_jax.serve.app import create_app, stream_deltas
from humpback_jax.serve.engine import Engine, GenerationRequest, budget_ladder
from humpback_jax.tokenizers import render_chat_template
from numerics import logit_tol

CFG = LlamaConfig(vocab_size=264, hidden_size=32, intermediate_size=64, num_layers=2,
                  num_heads=4, num_kv_heads=2, max_seq_len=256)
NAME = "tiny"
BATCH, BUCKET, MAX_PROMPT, CAP = 8, 64, 200, 64  # widths 64, 128, 200; budgets 16, 32, 64
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


class ChatByteTokenizer:
  """Byte tokenizer with a ChatML template: 0 pad, 1 BOS, 2 EOS, byte b -> b + 3."""

  pad_id, bos_id, eos_id = 0, 1, 2
  chat_template = CHATML
  _SPECIAL = {0: "<pad>", 1: "<s>", 2: "</s>"}

  def encode(self, text: str, add_bos: bool | None = None) -> list[int]:
    ids = [b + 3 for b in text.encode("utf-8")]
    return ids if add_bos is False else [self.bos_id] + ids

  def decode(self, ids, skip_special_tokens: bool = True) -> str:
    out, buf = [], b""
    for i in ids:
      if 3 <= i < 259:
        buf += bytes([i - 3])
      elif not skip_special_tokens and i in self._SPECIAL:
        out.append(buf.decode("utf-8", errors="replace") + self._SPECIAL[i])
        buf = b""
    return "".join(out) + buf.decode("utf-8", errors="replace")

  def apply_chat_template(self, messages, add_generation_prompt=True) -> str:
    return render_chat_template(CHATML, messages, add_generation_prompt)


TOK = ChatByteTokenizer()


@pytest.fixture(scope="module")
def params():
  return jax.jit(init_params, static_argnums=0)(CFG, jax.random.PRNGKey(0))


@pytest.fixture(scope="module")
def engine(params):
  eng = Engine(CFG, params, TOK, batch_size=BATCH, max_prompt_len=MAX_PROMPT,
               max_tokens_cap=CAP, bucket=BUCKET, batch_window_s=0.02, seed=0)
  yield eng
  eng.close()


@pytest.fixture(scope="module")
def sampler():
  return Sampler(CFG, TOK, max_prompt_len=MAX_PROMPT, batch_size=BATCH, bucket=BUCKET)


@pytest.fixture(scope="module")
def server(engine):
  """A real uvicorn server on a free loopback port, in a background thread; its base URL."""
  sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
  sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
  sock.bind(("127.0.0.1", 0))
  port = sock.getsockname()[1]
  srv = uvicorn.Server(uvicorn.Config(create_app(engine, NAME), log_level="warning"))
  thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
  thread.start()
  deadline = time.monotonic() + 30
  while not srv.started:
    assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
    time.sleep(0.02)
  yield f"http://127.0.0.1:{port}/v1"
  srv.should_exit = True
  thread.join(10)
  sock.close()


@pytest.fixture(scope="module")
def client(server):
  return openai.OpenAI(base_url=server, api_key="unused", max_retries=0, timeout=120)


def _chat_prompt(text: str) -> str:
  return TOK.apply_chat_template([{"role": "user", "content": text}])


def _ref_tokens(params, prompt: str, n: int = 16, strategy=Greedy(), seed=0, key=0):
  """Generated ids (EOS included) of one prompt alone, with the Sampler's batch shapes."""
  ids = TOK.encode(prompt)
  width = Sampler(CFG, TOK, max_prompt_len=MAX_PROMPT, batch_size=BATCH,
                  bucket=BUCKET).prompt_width(len(ids))
  tokens = np.zeros((BATCH, width), np.int32)
  tokens[0, width - len(ids):] = ids
  lengths = np.zeros((BATCH,), np.int32)
  lengths[0] = len(ids)
  keys = np.zeros((BATCH, 2), np.uint32)
  keys[0] = np.asarray(record_keys(seed, [key]))[0]
  out = generate(params, jnp.asarray(tokens), jnp.asarray(lengths), config=CFG,
                 max_new_tokens=n, eos_ids=(TOK.eos_id,), strategy=strategy,
                 rng=jnp.asarray(keys), pad_id=TOK.pad_id)
  return np.asarray(out.tokens[0, :int(out.lengths[0])]).tolist()


def _direct_logprobs(params, prompt_ids: list[int], gen: list[int]) -> np.ndarray:
  """float32 [G, V]: log_softmax of one no-cache ``Llama.apply`` over prompt + gen."""
  seq = jnp.asarray([prompt_ids + gen], jnp.int32)
  pos = jnp.arange(seq.shape[1], dtype=jnp.int32)[None]
  logits, _ = Llama(CFG).apply(params, seq, pos, jnp.ones_like(seq))
  lp = jax.nn.log_softmax(logits[0].astype(jnp.float32), axis=-1)
  return np.asarray(lp[len(prompt_ids) - 1:len(prompt_ids) - 1 + len(gen)])


# --------------------------------------------------------------------------- pure helpers


def test_budget_ladder_and_stream_deltas():
  assert budget_ladder(64) == [16, 32, 64] and budget_ladder(100) == [16, 32, 64, 100]
  assert budget_ladder(8) == [8]
  text = "héllo wörld ✓"
  ids = TOK.encode(text, add_bos=False)
  deltas = stream_deltas(TOK, ids, text)
  assert len(deltas) == len(ids) and "".join(deltas) == text
  assert all("\ufffd" not in d for d in deltas)  # multi-byte characters are held back
  cut = "héllo w"  # a stop-cut text: later tokens carry nothing
  assert "".join(stream_deltas(TOK, ids, cut)) == cut


# ------------------------------------------------------------------------- the real server


def test_models_list(client):
  models = client.models.list()
  assert [m.id for m in models.data] == [NAME]
  assert client.models.retrieve(NAME).id == NAME


def test_chat_greedy_equals_sampler_streaming_equals_whole(client, params, sampler):
  prompt = _chat_prompt("Hello")
  want = sampler.generate_texts(params, [prompt], max_new_tokens=16, strategy=Greedy(),
                                seed=0)[0]
  resp = client.chat.completions.create(
      model=NAME, messages=[{"role": "user", "content": "Hello"}], temperature=0,
      max_tokens=16)
  choice = resp.choices[0]
  assert choice.message.content == want and choice.message.role == "assistant"
  ref = _ref_tokens(params, prompt)
  assert choice.finish_reason == ("stop" if ref[-1] == TOK.eos_id else "length")
  assert resp.usage.prompt_tokens == len(TOK.encode(prompt))
  assert resp.usage.completion_tokens == len(ref)
  assert resp.object == "chat.completion" and resp.id.startswith("chatcmpl-")
  stream = client.chat.completions.create(
      model=NAME, messages=[{"role": "user", "content": "Hello"}], temperature=0,
      max_tokens=16, stream=True, stream_options={"include_usage": True})
  chunks = list(stream)
  text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
  assert text == want
  assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == choice.finish_reason
  assert chunks[-1].usage.completion_tokens == resp.usage.completion_tokens
  # A budget off the ladder (16) is the ladder run cut: the first 10 tokens.
  short = client.chat.completions.create(
      model=NAME, messages=[{"role": "user", "content": "Hello"}], temperature=0, max_tokens=10)
  assert short.choices[0].message.content == TOK.decode(ref[:10])
  assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 10


def test_completions_and_stop(client, params, sampler):
  prompt = "Once upon a time"
  want = sampler.generate_texts(params, [prompt], max_new_tokens=16, strategy=Greedy(),
                                seed=0)[0]
  resp = client.completions.create(model=NAME, prompt=prompt, temperature=0, max_tokens=16,
                                   logprobs=3)
  choice = resp.choices[0]
  assert choice.text == want and resp.object == "text_completion"
  assert len(choice.logprobs.tokens) == resp.usage.completion_tokens
  assert all(len(t) <= 3 for t in choice.logprobs.top_logprobs)
  streamed = list(client.completions.create(model=NAME, prompt=prompt, temperature=0,
                                            max_tokens=16, stream=True))
  assert "".join(c.choices[0].text for c in streamed) == want
  # A stop string taken from the greedy text cuts before its first occurrence.
  stop = next(want[i:i + 2] for i in range(2, len(want) - 1) if "\ufffd" not in want[i:i + 2])
  cut = client.completions.create(model=NAME, prompt=prompt, temperature=0, max_tokens=16,
                                  stop=[stop])
  assert cut.choices[0].text == want[:want.find(stop)]
  assert cut.choices[0].finish_reason == "stop"
  assert cut.usage.completion_tokens <= resp.usage.completion_tokens


def test_logprobs_equal_a_direct_forward(client, params):
  prompt = _chat_prompt("Tell me")
  resp = client.chat.completions.create(
      model=NAME, messages=[{"role": "user", "content": "Tell me"}], temperature=0,
      max_tokens=8, logprobs=True, top_logprobs=5)
  content = resp.choices[0].logprobs.content
  gen = _ref_tokens(params, prompt, n=16)[:8]
  assert len(content) == len(gen)
  lp = _direct_logprobs(params, TOK.encode(prompt), gen)
  tol = logit_tol("float32", CFG.num_layers, float(np.abs(lp).max()), runs=2)
  got = np.asarray([c.logprob for c in content])
  np.testing.assert_allclose(got, lp[np.arange(len(gen)), gen], rtol=0, atol=tol)
  for g, c in enumerate(content):
    assert c.token == TOK.decode([gen[g]], skip_special_tokens=False)
    assert len(c.top_logprobs) == 5
    np.testing.assert_allclose([t.logprob for t in c.top_logprobs], np.sort(lp[g])[::-1][:5],
                               rtol=0, atol=tol)
    assert abs(c.top_logprobs[0].logprob - c.logprob) <= tol  # greedy picks the top token


def test_choice_backend_equals_direct_scoring(server, params, sampler):
  users = ["Pick A or B.", "Which one is better?"]
  prompts = [_chat_prompt(u) for u in users]
  all_ids = np.arange(CFG.vocab_size)
  direct = sampler.candidate_logprobs(params, prompts, all_ids)  # f32 [2, V]
  top20 = [set(np.argsort(-row)[:20].tolist()) for row in direct]
  printable = lambda i: 33 + 3 <= i < 127 + 3  # one ASCII char, no whitespace
  present = [i for i in np.argsort(-direct[0])[:20] if printable(i)][:2]
  absent = next(i for i in range(36, 130) if all(i not in t for t in top20))
  ids = [int(i) for i in present] + [absent]
  choices = [" " + TOK.decode([i]) + "\n" for i in ids]  # surrounding whitespace is stripped
  backend = OpenAIChoiceBackend(server, NAME, concurrency=2)
  got, first = backend.choice_logprobs(users, choices)
  assert got.dtype == np.float64 and got.shape == (2, 3)
  want = np.where([[i in t for i in ids] for t in top20], direct[:, ids], -np.inf)
  assert np.array_equal(np.isinf(got), np.isinf(want)) and np.isinf(got[:, 2]).all()
  tol = logit_tol("float32", CFG.num_layers, float(np.abs(direct).max()), runs=2)
  fin = np.isfinite(want)
  np.testing.assert_allclose(got[fin], want[fin], rtol=0, atol=tol)
  assert first == [TOK.decode([int(np.argmax(r))], skip_special_tokens=False) for r in direct]
  answers = backend.generate(users[:1], max_tokens=16, temperature=0, top_p=1, seed=3)
  assert answers == sampler.generate_texts(params, prompts[:1], max_new_tokens=16,
                                           strategy=Greedy(), seed=0)
  bad = OpenAIChoiceBackend(server, "no-such-model", max_retries=0)
  with pytest.raises(OpenAIBackendError, match=r"/chat/completions answered HTTP 404"):
    bad.choice_logprobs(users[:1], ["A"])


def test_concurrent_load_is_batched(client, server, engine, params, sampler):
  before = engine.snapshot()
  texts = ["Hi", "Name a colour.", "2+2?"]
  jobs = [(texts[i % 3], 0.0 if i % 4 else 0.8) for i in range(24)]

  def call(job):
    text, temperature = job
    r = client.chat.completions.create(
        model=NAME, messages=[{"role": "user", "content": text}], temperature=temperature,
        top_p=0.9, max_tokens=16, seed=7)
    return r.choices[0].message.content

  with concurrent.futures.ThreadPoolExecutor(24) as pool:
    answers = list(pool.map(call, jobs))
  by_job: dict = {}
  for job, a in zip(jobs, answers):
    by_job.setdefault(job, set()).add(a)
  assert all(len(v) == 1 for v in by_job.values())  # same request, same answer, any batch
  for text in texts:  # seeded sampling draws what the Sampler draws for (seed 7, key 0)
    want = sampler.generate_texts(params, [_chat_prompt(text)], max_new_tokens=16,
                                  strategy=Sampling(0.8, 0.9), seed=7, keys=[0])[0]
    assert by_job[(text, 0.8)] == {want}
  after = httpx.get(f"{server}/stats").json()
  calls = after["generate_calls"] - before["generate_calls"]
  assert after["completed"] - before["completed"] == 24 and after["failed"] == 0
  assert calls < 24 and after["max_rows"] > 1, after
  print(f"24 requests in {calls} device batches; rows histogram {after['rows_histogram']}")
  assert client.models.list().data[0].id == NAME  # still up
  big = httpx.post(f"{server}/chat/completions", content=b"x" * (2 << 20))  # default 1 MiB
  assert big.status_code == 413 and big.json()["error"]["code"] == "request_too_large"


# ----------------------------------------------------------------------- errors (TestClient)


@pytest.fixture(scope="module")
def http(engine):
  with TestClient(create_app(engine, NAME, max_request_bytes=4096)) as c:
    yield c


def _error(resp, status: int) -> dict:
  assert resp.status_code == status, resp.text
  err = resp.json()["error"]
  assert set(err) == {"message", "type", "param", "code"} and err["message"]
  return err


def test_api_key(engine):
  with TestClient(create_app(engine, NAME, api_key="s3cret")) as c:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
      for method, path in (("get", "/v1/models"), ("post", "/v1/chat/completions"),
                           ("get", "/v1/stats")):
        err = _error(c.request(method, path, headers=headers, content=b"{not json"), 401)
        assert err["code"] == "invalid_api_key"
    assert c.get("/v1/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert c.get("/health").status_code == 200


def test_bad_requests_answer_4xx(http):
  msgs = [{"role": "user", "content": "hi"}]
  post = lambda body, path="/v1/chat/completions": http.post(path, json=body)
  _error(http.post("/v1/chat/completions", content=b"x" * 5000), 413)
  assert "64" in _error(post({"model": NAME, "messages": msgs, "max_tokens": 65}),
                        400)["message"]
  _error(http.post("/v1/chat/completions", content=b'{"model": "tiny", "messages": ['), 400)
  _error(http.post("/v1/chat/completions", content=b"[1, 2]"), 400)
  assert _error(post({"model": NAME}), 400)["param"] == "messages"
  assert _error(post({"model": NAME, "messages": []}), 400)["param"] == "messages"
  assert _error(post({"model": NAME, "messages": [{"role": "bot", "content": "x"}]}),
                400)["param"] == "messages.0.role"
  assert _error(post({"model": NAME, "messages": msgs, "temperature": "hot"}),
                400)["param"] == "temperature"
  assert _error(post({"model": NAME, "messages": msgs, "top_p": 0}), 400)["param"] == "top_p"
  assert _error(post({"model": "gpt-9", "messages": msgs}), 404)["code"] == "model_not_found"
  assert "n > 1" in _error(post({"model": NAME, "messages": msgs, "n": 2}), 400)["message"]
  _error(post({"model": NAME, "messages": msgs, "stop": ["a", "b", "c", "d", "e"]}), 400)
  _error(post({"model": NAME, "messages": msgs, "logprobs": True, "top_logprobs": 21}), 400)
  _error(post({"model": NAME, "messages": msgs, "top_logprobs": 2}), 400)
  long = "y" * 198  # 199 tokens with BOS: fits max_prompt_len, not the context with 64 more
  msg = _error(post({"model": NAME, "prompt": long, "max_tokens": 64}, "/v1/completions"),
               400)["message"]
  assert "199" in msg and "64" in msg and "256" in msg
  assert "200" in _error(post({"model": NAME, "prompt": "z" * 300}, "/v1/completions"),
                         400)["message"]
  _error(post({"model": NAME, "prompt": ["a", "b"]}, "/v1/completions"), 400)
  _error(post({"model": NAME, "prompt": "a", "echo": True}, "/v1/completions"), 400)
  _error(http.get("/v1/nothing"), 404)


def test_engine_check_and_cli_parser(engine):
  with pytest.raises(ValueError, match="max_tokens_cap"):
    engine.check(GenerationRequest((1, 2), max_tokens=CAP + 1))
  with pytest.raises(ValueError, match="empty"):
    engine.check(GenerationRequest((), max_tokens=1))
  parser = argparse.ArgumentParser()
  serve_cli.add_parser(parser.add_subparsers(dest="command"))
  args = parser.parse_args(["serve", "--model=x.gguf", "--port=9"])
  assert (args.host, args.port, args.max_tokens_cap, args.batch_size) == ("127.0.0.1", 9, 1024, 8)
  with pytest.raises(FileNotFoundError):
    serve_cli.run(parser.parse_args(["serve", "--model=/nonexistent/model.gguf"]))
  assert json.dumps(engine.snapshot())  # the stats are JSON
