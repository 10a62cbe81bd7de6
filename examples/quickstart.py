"""Learned per-token temperature and top-p in a plain `model.generate()` call.

Run: python examples/quickstart.py  (needs the torch extra; the default model is provisioned on first use)
"""

from deco_middleware import LearnedDecoding
from deco_middleware.default_model import load_model

model, tokenizer = load_model("default")
decoding = LearnedDecoding("smollm2-135m-instruct", record_trace=True)
messages = [{"role": "user", "content": "What is 17 * 23?"}]
inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)

with decoding.attach(model) as session:
    output = model.generate(**inputs, **session.generate_kwargs, max_new_tokens=64)

new_tokens = output[0, inputs["input_ids"].shape[1] :]
print(tokenizer.decode(new_tokens, skip_special_tokens=True))
session.trace.finalize(output)  # fills the last step (model.generate does not tell the processors)
for step in session.trace.steps[:10]:
    token = tokenizer.decode(step.token_id)
    print(f"{token!r:>14}  T={step.temperature[0]:.2f}  P={step.top_p[0]:.2f}  nucleus={step.nucleus_size[0]}")
