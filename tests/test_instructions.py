"""Tests for humpback_jax.data.instructions: the "reads as an instruction" heuristic.

Cases are real: human instructions from the seed files (LIMA, Open Assistant, self-instruct),
and texts that SmolLM2-135M-Instruct wrote as backward model M_yx on the demo's web segments
(base model and fine-tuned variants; letters, summaries, page continuations, cut fragments).
"""

from __future__ import annotations

import json

import pytest

from humpback_jax import paths
from humpback_jax.data import instructions
from humpback_jax.data.instructions import instruction_kind, looks_like_instruction

DATA_ROOT = paths.default_data_root()
LIMA = DATA_ROOT / "seed/lima_train_1030.jsonl"

# (text, expected kind: "question" | "imperative" | "other", expected rejection reason).
CASES = [
    # Human seed instructions (LIMA, oasst, self-instruct).
    ("How to protect my eyes when I have to stare at my computer screen for longer than 10 hours "
     "every day?", "question", ""),
    ("What isbthe best programing language for 2023", "question", ""),
    ("Write me an outline about the metaphorical use of Time in the Great Gatsby", "imperative",
     ""),
    ("Hey! How are you doing. Can you suggest me some good horror movies? Keep in mind that I am "
     "not easily scared.", "question", ""),
    ("Hi, I recently moved to a new city where I don\u2019t know anyone. I was wondering if you "
     "had some ideas on how to meet new people?", "question", ""),
    ("explain the restrainer from the bible in context of simulation theory", "imperative", ""),
    ("I want you to act as an advertiser. You will create a campaign to promote a product or "
     "service of your choice.", "imperative", ""),
    ("This passage is from a poor quality machine extraction of text from an old book. Please "
     "extract the coherent English text and phrases from it.", "imperative", ""),
    ("As a tourist, what are the most important destinations to visit in F\u00e8s, Marocco on a "
     "day trip.", "question", ""),
    ("Given the code below, refactor it, add comments and improve it in any way you think is "
     "best.\n```\nfrom logger import get_logger\n```", "imperative", ""),
    ("Write an email to the patient to remind them to sign up MyChart, which is an online "
     "patient portal.", "imperative", ""),
    ("I'm looking for interesting places to visit within a 2 hour drive of San Diego, "
     "California.", "imperative", ""),
    ("Given a number n, print n-th Fibonacci Number", "imperative", ""),
    ("write me a story that doesn't include the word \"the\"", "imperative", ""),
    ("Can brain cells move? By movement I mean long distance migration (preferably within the "
     "brain only).", "question", ""),
    ("Try to write a story with as many of these items as possible: Valhalla, a neon suit, a "
     "chicken, a trophy room, a school bus.", "imperative", ""),
    # Instructions written by fine-tuned backward models on the demo's web segments.
    ("Is it possible to find an oxygen bar in Delhi?", "question", ""),
    ("Why is WeWork being investigated?", "question", ""),
    ("How much money is Alibaba going to raise?", "question", ""),
    ("I just signed up for the Disney+ bundle. I've already subscribed to Disney+. Is there "
     "anything I should know before I get started?", "question", ""),
    ("I need help with a college football question. I have two questions:\n1. What are some of "
     "the things I can do to improve my chances of getting drafted?", "imperative", ""),
    ("What is your favorite weekend family activity? How do you make sure that you stay "
     "hydrated?", "question", ""),
    # Backward-model outputs that are not instructions.
    ("Dear User,\n\nI hope this message finds you well. I'm here today to help you find the "
     "perfect gift for your holiday season.", "other", "letter"),
    ("P.S. Don\u2019t forget to check out the \u201cBuy Now\u201d section for an incredible "
     "selection of bikes that are made in Germany.", "other", "letter"),
    ("What is the latest feature of the e-tron e-tron car that is not available to", "other",
     "fragment"),
    ("The sentencing of Michael Webb to life in prison in Fort Worth, Texas, is a crucial aspect "
     "of the", "other", "fragment"),
    ("Prakash explained that the Punjab province west and upwind of Delhi is India\u2019s "
     "breadbasket,", "other", "fragment"),
    ("WeWork is reportedly being investigated by the New York State Attorney General.", "other",
     "no_asking_sentence"),
    ("The state of South Dakota is facing an uphill battle to address its growing "
     "methamphetamine use among its youth.", "other", "no_asking_sentence"),
    ("A perceptive and critical assessment of climate-related challenges in Delhi.", "other",
     "no_asking_sentence"),
    ("Dashlane.", "other", "too_short"),
    ("What is the most likely question to which the text below would be a great answer?",
     "other", "prompt_echo"),
    ("Alibaba is set to raise up to $12.9bn (\u00a310bn) from its record-breaking second listing "
     "in Hong Kong. The deal is a significant boost to Hong Kong\u2019s bourse, which has been "
     "hit by months of anti-government protests.", "other", "no_asking_sentence"),
    ("I was on the bus and I saw a 8-year-old girl lying on the floor of a parked car. She had "
     "been kidnapped, but when I looked at her mom she was crying.", "other",
     "no_asking_sentence"),
    ("I was walking through a mall and I saw a firecracker in the middle of the street. I "
     "stopped to help someone who was carrying it.", "other", "no_asking_sentence"),
    ("This answer is a great answer to the question. You can enjoy 4 months of Amazon Music "
     "Unlimited for just $1.", "other", "no_asking_sentence"),
    ("- NFL office pool picks for Week 12 Sportsline's computer-generated picks for the 2019 NFL "
     "playoffs.", "other", "no_asking_sentence"),
    ("A great question to answer with the text, as the answer can be a great example of the kind "
     "of question that can make a great answer.", "other", "no_asking_sentence"),
    # Constructed from the same patterns.
    ("This article explains the history of the e-tron and its charging network.", "other",
     "no_asking_sentence"),
    ("Hi there! I hope you're doing well.", "other", "no_asking_sentence"),
    ("For more information, please visit our website or contact us.", "other",
     "no_asking_sentence"),
    ("I want to share my experience of buying an electric car.", "other", "no_asking_sentence"),
    ("Thank you for reading, and see you next week.", "other", "no_asking_sentence"),
    ("Best,\nJohn\nSincerely,\n", "other", "letter"),
    ("What are the", "other", "fragment"),
    ("When I was young, I lived in Delhi and the air was clean.", "other",
     "no_asking_sentence"),
    ("How I learned to stop worrying and love the e-tron.", "other", "no_asking_sentence"),
    ("x " * 2100, "other", "too_long"),
]


@pytest.mark.parametrize("text,kind,reason", CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_cases(text, kind, reason):
  assert instruction_kind(text) == kind
  assert looks_like_instruction(text) == (kind != "other")
  assert instructions.rejection_reason(text) == reason


def test_enough_cases_both_ways():
  assert len(CASES) >= 30
  assert sum(k != "other" for _, k, _ in CASES) >= 12
  assert sum(k == "other" for _, k, _ in CASES) >= 12


def test_robust_to_markup_and_empty():
  assert looks_like_instruction("**Question:** What causes the seasons on Earth?")
  assert looks_like_instruction("1. Explain how a heat pump works.")
  assert looks_like_instruction("\u201cWhy is the sky blue?\u201d")
  for text in ("", "   ", "\n\n", "?"):
    assert not looks_like_instruction(text)
    assert instruction_kind(text) == "other"


@pytest.mark.skipif(not LIMA.exists(), reason=f"{LIMA} not available")
def test_accepts_real_human_instructions():
  """The first 500 LIMA training instructions (first user turns) are mostly accepted: measured
  97% when written; the floor leaves room for small rule changes."""
  texts = []
  with open(LIMA, encoding="utf-8") as f:
    for line in f:
      if line.strip():
        texts.append(json.loads(line)["messages"][0]["content"])
      if len(texts) == 500:
        break
  assert len(texts) == 500
  rate = sum(map(looks_like_instruction, texts)) / len(texts)
  assert rate >= 0.9, rate
