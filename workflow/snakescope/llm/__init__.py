"""The LLM reviewer: one small chat-client interface, one module per wire protocol behind it.

- :mod:`.settings`   config section ``review.llm`` parsed once, and the errors every backend raises
- :mod:`.client`     the interface (:class:`~.client.ChatClient`): describe the server and model, ask with images
                     and a JSON schema; retries and schema validation shared by all backends
- :mod:`.ollama_api` Ollama's native API (the ``ollama`` client), and starting ``ollama serve`` inside a job
- :mod:`.openai_api` OpenAI-compatible Chat Completions (vLLM, llama-server, SGLang, LM Studio, Ollama's ``/v1``)
- :mod:`.selftest`   the start-up probe: server, model, images seen, schema-valid JSON
- :mod:`.prompt`     what the model is sent (prompt, images) and the answer cache
- :mod:`.guardrails` the model's claims against the measurements, and the combined verdict
- :mod:`.batch`      one batch's reviews: scope and audit, requests in flight, records
- :mod:`.summary`    the run's narrative, numbers checked
"""
