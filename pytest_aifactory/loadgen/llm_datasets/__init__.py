"""Prompt datasets of `openai` clients, one module per dataset kind.

Each kind is a function `pool(context) -> list[Prompt]` registered in `dataset_kinds.py` as
`module:function`, so the recipe's checks read the declarations without importing aiohttp;
`build.build_prompts` runs the one a client's dataset names, in the client job, before the load
starts. Every kind is seeded: the same seed gives the same prompts, lengths and order.
"""
