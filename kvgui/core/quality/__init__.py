"""What a cheaper KV cache costs: published and measured quality figures."""
