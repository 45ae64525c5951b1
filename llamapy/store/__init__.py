"""Where models come from: the default model shipped by a package, a path, or a name in the local model store
(Modelfiles, Go templates as Ollama renders them, pulls from Hugging Face)."""
