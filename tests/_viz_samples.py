"""Synthetic trace documents for the viz tests: no model, tokens chosen to break naive renderers."""

from __future__ import annotations

import math

from deco_middleware.viz import TraceDocument

# Model output is untrusted: markup, script, entities, emoji, whitespace, control characters and
# the empty text of a byte-fallback token that is only part of a character.
HOSTILE_TOKENS = [
    "Hello",
    " world",
    "!",
    "\n",
    "<script>window.__pwned = 1</script>",
    ' <img src=x onerror="window.__pwned = 2">',
    "</script><script>window.__pwned = 3</script>",
    " &amp; &lt;",
    " \"quoted\" 'single'",
    " ",
    "\t",
    "",  # the first bytes of an emoji (piece <0xF0>), completed by the next token
    "\U0001f600",
    " \u4e2d\u6587",
    "\x00\x1b[31m",
    " $x^2$",
    " [bold]markup[/bold]",
    "\u2028",
    " end",
    "\n\n",
    " <!--",
    " -->",
]
HOSTILE_PIECES = [t if t else "<0xF0>" for t in HOSTILE_TOKENS]


def hostile_document(label: str = "autodeco") -> TraceDocument:
    n = len(HOSTILE_TOKENS)
    temperature = [round(max(0.0, 1.0 + 0.8 * math.sin(i / 2.5)), 4) for i in range(n)]
    temperature[2] = 0.0  # one greedy step
    top_p = [round(0.3 + 0.7 * abs(math.cos(i / 3.0)), 4) for i in range(n)]
    return TraceDocument(
        prompt='Say <b>hi</b> & "bye" </script>',
        tokens=list(HOSTILE_TOKENS),
        token_ids=list(range(100, 100 + n)),
        temperature=temperature,
        top_p=top_p,
        nucleus_size=[1 + (7 * i) % 40 for i in range(n)],
        token_prob=[round(0.05 + 0.9 * ((i * 37) % 100) / 100, 4) for i in range(n)],
        pieces=list(HOSTILE_PIECES),
        fallback=[i == 7 for i in range(n)],
        label=label,
        metadata={"model": "synthetic", "seed": 0},
    )


def static_document(n: int = 12) -> TraceDocument:
    return TraceDocument(
        prompt="p",
        tokens=[f" w{i}" for i in range(n)],
        token_ids=list(range(n)),
        temperature=[0.7] * n,
        top_p=[0.9] * n,
        label="static T=0.7, P=0.9",
    )
