"""Tests of document mode (``WebConfig(unit="documents")``, [BF] §2 step 1) of
humpback_jax/data/web.py and of the context-limit cut ``documents.drop_over_context``, on
hand-written pages and on small subsets of the real archives of ``<data root>/web``."""

from __future__ import annotations

import collections
import dataclasses
import gzip
import itertools
import re

import pytest
from test_sampler import ByteTokenizer

from humpback_jax import paths
from humpback_jax.data import documents, web

SCRAPINGHUB = "web/scrapinghub_aeb_181_news_html.tar"
TRAFILATURA = "web/trafilatura_tests_en_178_pages.tar.gz"

# Distinct English sentences (no two share a word trigram).
SENTENCES = [
    "The garden behind the old library was planted by volunteers in the spring of last year.",
    "Tomatoes need at least six hours of direct sunlight every day to ripen properly.",
    "Most vegetables prefer soil that drains well but still holds some moisture after rain.",
    "Adding compost improves the structure of clay soils and feeds earthworms at the same time.",
    "A simple kitchen compost bin can turn fruit peels into rich humus within a few months.",
    "Water early in the morning so that leaves dry quickly and fungal diseases are less likely.",
    "Drip irrigation delivers water directly to the roots and wastes far less than sprinklers.",
    "Mulch made from straw or shredded bark keeps the ground cool during hot summer weeks.",
    "Beans and peas fix nitrogen from the air, which helps whatever grows there next season.",
    "Rotating crops between beds reduces the build-up of pests that target one plant family.",
    "Many gardeners keep a notebook with sowing dates, varieties, and the yield of each bed.",
    "Bees visit flowering herbs such as thyme and oregano, so plant them near your squash.",
]
GERMAN = ("Der Garten hinter der alten Bibliothek wurde im Frühjahr von Freiwilligen angelegt. "
          "Tomaten brauchen jeden Tag mindestens sechs Stunden direktes Sonnenlicht, damit sie "
          "richtig reifen. Die meisten Gemüsesorten bevorzugen einen Boden, der gut abläuft und "
          "trotzdem nach dem Regen etwas Feuchtigkeit hält. Kompost verbessert die Struktur von "
          "Lehmböden und ernährt zugleich die Regenwürmer. Morgens gießen, damit die Blätter "
          "schnell trocknen und Pilzkrankheiten seltener werden. Mulch aus Stroh hält den Boden "
          "in heißen Sommerwochen kühl. Bohnen und Erbsen binden Stickstoff aus der Luft, was "
          "allem hilft, das dort in der nächsten Saison wächst. Viele Gärtner führen ein Heft "
          "mit Aussaatterminen, Sorten und dem Ertrag jedes Beetes.")


def _data_available() -> bool:
  return all(paths.resolve(p).exists() for p in (SCRAPINGHUB, TRAFILATURA))


needs_data = pytest.mark.skipif(not _data_available(), reason="real web data not found")


def _page(body: str, title: str) -> str:
  return (f"<html><head><title>{title}</title></head><body><nav><a href='/'>Home</a> "
          f"<a href='/about'>About</a></nav><article>{body}</article>"
          f"<footer>Copyright 2020</footer></body></html>")


def _alnum(text: str) -> str:
  """Letters and digits only, lower-cased: the text without any layout."""
  return re.sub(r"[\W_]+", "", text.lower())


def _trafilatura_xml(html: str):
  """The page through trafilatura with the options of ``web_extract.extract_blocks``, parsed:
  ``(title, main element)`` or ``None``; our independent reference of the main text."""
  import trafilatura
  from lxml import etree
  xml = trafilatura.extract(
      html, output_format="xml", include_formatting=True, include_comments=False,
      include_images=False, include_links=False, include_tables=True, with_metadata=True,
      favor_precision=False)
  if not xml:
    return None
  doc = etree.fromstring(xml.encode("utf-8"), etree.XMLParser(recover=True, huge_tree=True))
  return doc.get("title"), doc.find("main")


def _trafilatura_txt(html: str) -> str:
  """trafilatura's own plain-text rendering of the same extraction (front matter removed)."""
  import trafilatura
  txt = trafilatura.extract(
      html, output_format="txt", include_formatting=True, include_comments=False,
      include_images=False, include_links=False, include_tables=True, with_metadata=True,
      favor_precision=False)
  assert txt.startswith("---\n")
  return txt.split("\n---\n", 1)[1]


def _doc_text(html: str) -> str:
  """Our document text of one page (``web.document_html``)."""
  return web.document_html(html)[1]


def _word_f1(a: str, b: str) -> float:
  wa = collections.Counter(re.findall(r"[^\W_]+", a.lower()))
  wb = collections.Counter(re.findall(r"[^\W_]+", b.lower()))
  overlap = sum((wa & wb).values())
  return 2 * overlap / (sum(wa.values()) + sum(wb.values()))


# ------------------------------------------------------------------------------------------------
# Document mode on real pages
# ------------------------------------------------------------------------------------------------


@needs_data
def test_real_documents_are_trafilatura_main_text():
  """One record per kept page; its text is trafilatura's whole main text, checked against
  trafilatura called here: the same characters as the text of its XML ``<main>`` (only our
  ``"N. "`` numbers of ordered-list items added) and word F1 >= 0.95 with its own txt
  rendering; every page with content kept or charged to one document filter."""
  n = 12
  cfg = web.WebConfig(unit="documents", sources=(SCRAPINGHUB,), max_documents=n)
  docs, stats = web.build_segments(cfg)
  assert stats["unit"] == "documents" and stats["documents_read"] == n
  by_doc = {d["doc_id"]: d for d in docs}
  assert len(by_doc) == len(docs) == stats["kept"]
  pages = list(itertools.islice(web.iter_documents(paths.resolve(SCRAPINGHUB),
                                                   label=SCRAPINGHUB), n))
  seen, expected_kept, reasons = set(), [], collections.Counter()
  for doc_id, html in pages:
    ref = _trafilatura_xml(html)
    assert ref is not None, doc_id  # every one of these news pages has main content
    title, main = ref
    ref_text = "".join(main.itertext())
    reason = web.document_filter_reason(_doc_text(html), cfg)
    if reason is None and _alnum(ref_text) in seen:
      reason = "duplicate"
    seen.add(_alnum(ref_text))
    if reason is not None:
      reasons[reason] += 1
      assert doc_id not in by_doc
      continue
    expected_kept.append(doc_id)
    rec = by_doc[doc_id]
    ours = re.sub(r"(?m)^ *\d+\. ", "", rec["text"])  # our ordered-list numbers
    assert _alnum(ours) == _alnum(ref_text), doc_id
    assert _word_f1(rec["text"], _trafilatura_txt(html)) >= 0.95, doc_id
    assert rec == {"id": doc_id + "#doc", "source": SCRAPINGHUB, "doc_id": doc_id,
                   "header": " ".join(title.split()) if title else None, "level": 0,
                   "text": rec["text"], "chars": len(rec["text"])}
    assert cfg.doc_min_chars <= rec["chars"] <= cfg.doc_max_chars
  assert [d["doc_id"] for d in docs] == expected_kept  # in reading order
  assert len(expected_kept) >= n // 2
  # Stats: every page with content is one record before the filters, charged once.
  assert stats["documents_no_content"] == 0 and stats["documents_no_headers"] == 0
  assert stats["segments_before_filters"] == n == stats["kept"] + sum(stats["dropped"].values())
  assert {k: v for k, v in stats["dropped"].items() if v} == dict(reasons)
  assert all(stats["dropped"][k] == 0 for k in web.FILTERS if k not in web.DOCUMENT_FILTERS)
  assert stats["per_source"] == {SCRAPINGHUB: {"documents": n, "kept": len(docs)}}
  chars = [d["chars"] for d in docs]
  assert stats["chars_mean"] == pytest.approx(sum(chars) / len(chars))
  assert (stats["chars_min"], stats["chars_max"]) == (min(chars), max(chars))


@needs_data
def test_document_ids_distinct_from_segment_ids_and_stable():
  cfg = web.WebConfig(sources=(TRAFILATURA,), max_documents=6)
  segs, _ = web.build_segments(cfg)
  doc_cfg = dataclasses.replace(cfg, unit="documents")
  docs, stats = web.build_segments(doc_cfg)
  assert docs and segs
  assert not {d["id"] for d in docs} & {s["id"] for s in segs}
  assert all(d["id"] == d["doc_id"] + web.DOCUMENT_ID_SUFFIX for d in docs)
  assert all(re.search(r"#\d+$", s["id"]) for s in segs)
  assert set(docs[0]) == set(segs[0])  # the same record schema
  # Stable: the same ids and texts on a rebuild, and with extraction in worker processes.
  again, _ = web.build_segments(doc_cfg)
  assert again == docs
  parallel, pstats = web.build_segments(dataclasses.replace(doc_cfg, num_workers=2))
  assert parallel == docs and pstats["dropped"] == stats["dropped"]
  # max_segments counts documents in document mode: a prefix of the same output.
  first, fstats = web.build_segments(dataclasses.replace(doc_cfg, max_segments=1))
  assert first == docs[:1] and fstats["stopped_early"] and fstats["kept"] == 1


# ------------------------------------------------------------------------------------------------
# Filters on hand-made pages, mixed with real ones
# ------------------------------------------------------------------------------------------------


@needs_data
def test_document_filters_on_handmade_and_real_pages(tmp_path):
  """Hand-made pages before four real news pages: a kept English page (titled with a
  navigation phrase in upper case: the header filters do not judge documents), a German page,
  a repetitive one, a short one, and a copy of the first real page (so that real page, read
  later, is the duplicate)."""
  real = list(itertools.islice(web.iter_documents(paths.resolve(SCRAPINGHUB),
                                                  label=SCRAPINGHUB), 4))
  body = (f"<p>{' '.join(SENTENCES[:4])}</p><h2>Watering</h2>"
          f"<p>{' '.join(SENTENCES[4:8])}</p><h2>Planning</h2><p>{' '.join(SENTENCES[8:])}</p>")
  pages = tmp_path / "pages"
  pages.mkdir()
  (pages / "a_good.html").write_text(_page(body, "RELATED ARTICLES"))
  (pages / "b_german.html").write_text(
      _page(f"<h1>Gartennotizen</h1><p>{GERMAN}</p>", "Gartennotizen"))
  repeated = " ".join(SENTENCES[:6]) + " " + SENTENCES[2] + " " + " ".join(SENTENCES[6:])
  (pages / "c_repetitive.html").write_text(
      _page(f"<h1>Garden notes</h1><p>{repeated}</p>", "Garden notes again"))
  (pages / "d_short.html").write_text(_page(f"<p>{SENTENCES[0]}</p>", "Short"))
  (pages / "e_copy.html.gz").write_bytes(gzip.compress(real[0][1].encode("utf-8")))
  cfg = web.WebConfig(unit="documents", sources=(str(pages), SCRAPINGHUB), max_documents=5 + 4)
  docs, stats = web.build_segments(cfg)

  assert stats["documents_read"] == 9
  assert stats["dropped"]["non_english"] >= 1 and stats["dropped"]["repetitive"] >= 1
  assert stats["dropped"]["duplicate"] == 1 and stats["dropped"]["length"] >= 1
  assert stats["segments_before_filters"] == 9 == stats["kept"] + sum(stats["dropped"].values())
  kept_ids = [d["id"] for d in docs]
  hand = {d["doc_id"].rsplit(":", 1)[1]: d for d in docs if d["source"] == str(pages)}
  assert set(hand) == {"a_good.html", "e_copy.html.gz"}
  assert f"{real[0][0]}#doc" not in kept_ids  # the real original, read after its copy
  assert hand["e_copy.html.gz"]["text"] == _doc_text(real[0][1])
  good = hand["a_good.html"]
  assert good["header"] == "RELATED ARTICLES" and good["level"] == 0
  assert good["text"] == web.BLOCK_SEPARATOR.join([
      " ".join(SENTENCES[:4]), "Watering", " ".join(SENTENCES[4:8]),
      "Planning", " ".join(SENTENCES[8:])])  # headers kept as paragraphs, nav/footer removed
  # Each hand-made reject is charged to its own filter: exactly what the filters say of it.
  for name, reason in [("b_german.html", "non_english"), ("c_repetitive.html", "repetitive"),
                       ("d_short.html", "length")]:
    assert web.document_filter_reason(_doc_text((pages / name).read_text()), cfg) == reason
  real_reasons = collections.Counter(
      web.document_filter_reason(_doc_text(html), cfg) for _, html in real[1:])
  expected = collections.Counter({"non_english": 1, "repetitive": 1, "length": 1,
                                  "duplicate": 1})
  expected.update(k for k in real_reasons.elements() if k is not None)
  assert {k: v for k, v in stats["dropped"].items() if v} == dict(expected)
  assert stats["per_source"][str(pages)] == {"documents": 5, "kept": 2}


def test_document_filters_on_crafted_text():
  cfg = web.WebConfig(unit="documents", doc_min_chars=100, doc_max_chars=2000)
  good = " ".join(SENTENCES)
  assert web.document_filter_reason(good, cfg) is None
  assert web.document_filter_reason(good[:99], cfg) == "length"
  assert web.document_filter_reason((good + " ") * 2, cfg) == "length"  # over 2,000 chars
  assert web.document_filter_reason(GERMAN, cfg) == "non_english"
  assert web.document_filter_reason(good + " " + SENTENCES[3], cfg) == "repetitive"
  assert web.document_filter_reason(
      good, dataclasses.replace(cfg, doc_max_chars=None)) is None
  seen: set[bytes] = set()
  assert web.decide_document(good, cfg, seen) is None
  assert web.decide_document(good, cfg, seen) == "duplicate"
  assert web.decide_document(GERMAN, cfg, seen) == "non_english"
  assert web.decide_document(GERMAN, cfg, seen) == "non_english"  # rejects are not remembered


def test_document_text_joins_all_blocks():
  b = web.Block
  blocks = [b("text", 0, "Preamble."), b("head", 2, "Part one"), b("text", 0, "Alpha."),
            b("text", 0, "  "), b("head", 3, "Sub"), b("text", 0, "- item\n- item two")]
  assert web.document_text(blocks) == (
      "Preamble.\n\nPart one\n\nAlpha.\n\nSub\n\n- item\n- item two")
  assert web.document_text([]) == ""


def test_document_mode_no_content_and_error_message(tmp_path):
  (tmp_path / "empty.html").write_text("<html><head><title>x</title></head><body></body></html>")
  (tmp_path / "short.html").write_text(_page(f"<p>{SENTENCES[0]}</p>", "Short"))
  cfg = web.WebConfig(unit="documents", sources=(str(tmp_path),))
  with pytest.raises(web.WebInputError, match=r"2 documents read .* 0 documents survived the "
                     r"filters \(drops: \{'length': 1\}; documents before filters: 1") as e:
    web.build_segments(cfg)
  assert e.value.stats["documents_no_content"] == 1


def test_config_unit_validation():
  assert web.WebConfig().unit == "segments"
  with pytest.raises(ValueError, match="unit"):
    web.WebConfig(unit="document")
  with pytest.raises(ValueError, match="doc_min_chars"):
    web.WebConfig(doc_min_chars=10, doc_max_chars=5)
  with pytest.raises(ValueError, match="doc_min_chars"):
    web.WebConfig(doc_min_chars=-1)
  assert web.WebConfig(doc_max_chars=None).doc_max_chars is None


# ------------------------------------------------------------------------------------------------
# drop_over_context
# ------------------------------------------------------------------------------------------------


def _render(text: str) -> str:
  return f"[INST] {text} [/INST]"  # 15 bytes around the text


def test_drop_over_context_exact_counts():
  tok = ByteTokenizer()  # one token per UTF-8 byte, plus BOS
  texts = ["a" * 10, "b" * 20, "c" * 30, "é" * 20, "d" * 31, "e" * 100]
  records = [{"id": f"d{i}", "text": t} for i, t in enumerate(texts)]
  # Tokens: 1 (BOS) + 15 + bytes: 26, 36, 46, 56 ("é" is 2 bytes), 47, 116.
  assert [len(tok.encode(_render(t))) for t in texts] == [26, 36, 46, 56, 47, 116]
  kept, stats = documents.drop_over_context(records, tok, max_prompt_tokens=46, render=_render)
  assert kept == records[:3] and all(a is b for a, b in zip(kept, records))
  assert stats == {"documents": 6, "kept": 3, "dropped_over_context": 3, "share_dropped": 0.5,
                   "max_prompt_tokens": 46,
                   # sorted: 26 36 46 47 56 116; nearest rank: p50 the 3rd, p90 the 6th
                   "prompt_tokens": {"p50": 46, "p90": 116, "max": 116}}
  kept, stats = documents.drop_over_context(records, tok, max_prompt_tokens=56, render=_render)
  assert [r["id"] for r in kept] == ["d0", "d1", "d2", "d3", "d4"]
  assert stats["dropped_over_context"] == 1 and stats["share_dropped"] == pytest.approx(1 / 6)
  kept, stats = documents.drop_over_context(iter(records), tok, max_prompt_tokens=25,
                                            render=_render)
  assert kept == [] and stats["share_dropped"] == 1.0 and stats["documents"] == 6
  assert records[0] == {"id": "d0", "text": "a" * 10}  # not modified


def test_drop_over_context_edge_cases():
  tok = ByteTokenizer()
  kept, stats = documents.drop_over_context([], tok, max_prompt_tokens=8, render=_render)
  assert kept == [] and stats == {"documents": 0, "kept": 0, "dropped_over_context": 0,
                                  "share_dropped": 0.0, "max_prompt_tokens": 8,
                                  "prompt_tokens": {"p50": None, "p90": None, "max": None}}
  with pytest.raises(ValueError, match="max_prompt_tokens"):
    documents.drop_over_context([], tok, max_prompt_tokens=0, render=_render)
  with pytest.raises(TypeError, match="render must return a str"):
    documents.drop_over_context([{"id": "x", "text": "t"}], tok, max_prompt_tokens=8,
                                render=lambda t: [t])
  with pytest.raises(KeyError, match="document 1 .*'y'"):
    documents.drop_over_context([{"text": "t"}, {"id": "y"}], tok, max_prompt_tokens=99,
                                render=_render)


@needs_data
def test_drop_over_context_on_real_documents_with_backward_prompt():
  """Real documents through [BF]'s backward prompt (``templates.backward_prompt``, plain
  wrapper): the counts add up and the budget splits them as the token counts say."""
  from humpback_jax.data import templates
  docs, _ = web.build_segments(web.WebConfig(unit="documents", sources=(SCRAPINGHUB,),
                                             max_documents=12))
  tok = ByteTokenizer()
  render = lambda text: templates.backward_prompt(None, text)  # noqa: E731
  lengths = sorted(len(tok.encode(render(d["text"]))) for d in docs)
  budget = lengths[len(lengths) // 2]
  kept, stats = documents.drop_over_context(docs, tok, max_prompt_tokens=budget, render=render)
  assert stats["kept"] == sum(n <= budget for n in lengths) == len(kept)
  assert stats["documents"] == len(docs) == stats["kept"] + stats["dropped_over_context"]
  assert stats["prompt_tokens"]["max"] == lengths[-1]
  assert all(len(tok.encode(render(d["text"]))) <= budget for d in kept)
  assert [d["id"] for d in kept] == [d["id"] for d in docs if d in kept]  # order kept
