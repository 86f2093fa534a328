"""What llama.cpp allocates per device: KV cache, state, weights, compute, output."""
