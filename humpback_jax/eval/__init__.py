"""Evaluation ([HB] §3-4, [BF] §4): AlpacaEval-style answers and pairwise win rates with
standard errors, a local or OpenAI-compatible pairwise judge, and analyses of the data.

Modules: ``outputs`` (``model_outputs.json``), ``winrate`` (win rate, standard error,
length-controlled view), ``judge`` (pairwise judge, both orders), ``answers`` (answer
generation), ``openai_backend`` (an OpenAI-compatible endpoint as judge), ``analyses`` and
``verb_noun`` and ``run_analyses`` (data analyses of a run), ``plots``, ``mauve_score`` (MAUVE
on the model's hidden states), ``scaling`` (the data-scaling view), ``compare`` (judging sets of
outputs), ``stages`` (the pipeline stages), ``report`` (the report section), ``cli``.
"""
