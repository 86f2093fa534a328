"""The GGUF file format: the header reader and ggml's data types."""
