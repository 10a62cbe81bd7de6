"""Stream a reply token by token, each with the temperature and top-p learned decoding chose for it.

    python examples/stream_tokens.py "Why is the sky blue?"
    python examples/stream_tokens.py "Count to five." --heads /path/to/heads --per-line

``generate()`` runs in a background thread; the main thread prints tokens as they arrive. The
processors run in the generate thread and the hidden-state tap is kept per thread, so this is the
same pattern as transformers' ``TextIteratorStreamer`` (which also works with ``session.generate``).
"""

from __future__ import annotations

import argparse
import threading

from rich.console import Console

from deco_middleware import LearnedDecoding
from deco_middleware.cli.app import heads_for_model
from deco_middleware.default_model import load_model
from deco_middleware.viz import TraceStreamer, legend_text
from deco_middleware.viz.colors import hex_color, temperature_rgb
from deco_middleware.viz.document import visible_control_characters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prompt")
    parser.add_argument("--model", default="default", help="`default` or a local model folder")
    parser.add_argument("--heads", default="default", help="`default` (shipped heads for the model), a name or a path")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--per-line", action="store_true", help="one line per token: step, T, P, nucleus, text")
    args = parser.parse_args()

    console = Console(highlight=False, markup=False)  # token text is never read as rich markup
    model, tokenizer = load_model(args.model)
    heads = heads_for_model(args.heads, model)
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": args.prompt}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with LearnedDecoding(heads, record_trace=True).attach(model) as session:
        streamer = TraceStreamer(tokenizer, session, timeout=300)
        worker = threading.Thread(
            target=session.generate, kwargs={**inputs, "max_new_tokens": args.max_new_tokens, "streamer": streamer}
        )
        worker.start()
        if args.per_line:
            console.print("step      T      P  nucleus  text")
        for token in streamer:
            text = visible_control_characters(token.text)  # model output must not drive the terminal
            if args.per_line:
                console.print(
                    f"{token.index:4d}  {token.temperature:5.3f}  {token.top_p:5.3f}  {token.nucleus_size or 0:7d}  "
                    f"{text!r}"
                )
            else:
                console.print(text, style=f"black on {hex_color(temperature_rgb(token.temperature))}", end="")
        worker.join()
    console.print()
    console.print(legend_text())


if __name__ == "__main__":
    main()
