"""Chat: templates (the GGUF's Jinja template, sandboxed, and the reference's built-in formats by name) and the
interactive terminal session (llama-cli's `-i`, `-r`, `-ins`, `-cnv`)."""
