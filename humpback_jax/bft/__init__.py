"""Instruction back-and-forth translation ([BF], Nguyen et al. 2024, arXiv 2408.04614).

Backtranslate web documents into instructions ([HB]'s backward model, [BF]'s prompt), filter the
pairs with [HB]'s rating prompt, then have an aligned chat model rewrite each web response for
its instruction (``templates.REWRITE_PROMPT``) and keep the text between ``[RES]`` and
``[/RES]`` (``rewrite_parse``). ``method.md`` §2.
"""
