"""The official `openai` Python client against bkg's /v1 (run by tests/it/llm.rs).

OPENAI_BASE_URL (http://127.0.0.1:PORT/v1) and OPENAI_API_KEY (a bkg token with llm:use) come
from the environment, exactly as a user would configure the client.
"""

import sys

import openai

client = openai.OpenAI(max_retries=0, timeout=120)

models = client.models.list()
model = models.data[0].id
assert model == "smollm2-135m-instruct", model

question = [{"role": "user", "content": "What is the capital of France?"}]

reply = client.chat.completions.create(model=model, messages=question, temperature=0, max_tokens=32)
text = reply.choices[0].message.content
assert "Paris" in text, text
assert reply.choices[0].finish_reason == "stop", reply
assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens, reply.usage
print("non-stream ok:", repr(text))

stream = client.chat.completions.create(
    model=model,
    messages=question,
    temperature=0,
    max_tokens=32,
    stream=True,
    stream_options={"include_usage": True},
)
parts, finish, usage = [], None, None
for chunk in stream:
    if chunk.usage is not None:
        usage = chunk.usage
    for choice in chunk.choices:
        if choice.delta.content:
            parts.append(choice.delta.content)
        if choice.finish_reason:
            finish = choice.finish_reason
streamed = "".join(parts)
assert streamed == text, (streamed, text)
assert finish == "stop", finish
assert usage is not None and usage.completion_tokens == reply.usage.completion_tokens, usage
print("stream ok:", repr(streamed), "in", len(parts), "chunks")

try:
    client.chat.completions.create(model=model, messages=question, temperature=5)
except openai.BadRequestError as e:
    print("bad request ok:", e.status_code)
else:
    sys.exit("temperature 5 was accepted")
