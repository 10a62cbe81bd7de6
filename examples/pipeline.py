"""Learned decoding inside a transformers `pipeline("text-generation")`, batched.

Run: python examples/pipeline.py
"""

from transformers import pipeline

from deco_middleware import LearnedDecoding
from deco_middleware.default_model import load_model

model, tokenizer = load_model("default")
generator = pipeline("text-generation", model=model, tokenizer=tokenizer)
decoding = LearnedDecoding("smollm2-135m-instruct", temperature_scale=0.8)  # a little cooler than trained

chats = [[{"role": "user", "content": q}] for q in ("What is 6 * 7?", "Name three fruits.")]
with decoding.attach(generator) as session:
    # session.pipeline merges the processor pair and the arguments that switch off the pipeline's
    # own temperature=0.7 default, so only the learned values shape the distribution.
    results = session.pipeline(chats, max_new_tokens=48, batch_size=2)
for result in results:
    print(result[0]["generated_text"][-1]["content"])
