"""The LLM side: API keys (`keys`), the shared per-key limiter (`limiter`), the key router (`router`), putting
assessment jobs on Celery (`dispatch`), one chat-completions call (`client`) and the reply schema with the
prompt that asks for it and the parser that validates it (`schema`)."""
