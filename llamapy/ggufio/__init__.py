"""GGUF I/O: the format's facts as data (`constants`), a validating reader and an atomic writer.

Named `ggufio` so that it never shadows the `gguf` package it builds on."""
