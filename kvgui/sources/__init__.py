"""Where models come from: files on disk, the Hugging Face Hub, the caches of other tools.

Qt-free (the CLI and the window both use it) and kept out of kvgui.core, which stays pure:
this package may import huggingface_hub and do I/O; it never imports PySide6, and kvgui.core
never imports it.

- modelref: the spellings of a model reference (a path, ``repo[:quant]``, ``-hf …``, URLs)
- quants: a repo's GGUF files grouped by quant the way llama.cpp's ``-hf`` groups them
- hub: listing, search and the one-line errors of the Hub (through huggingface_hub)
- remote_header / header_cache: a remote file's header by HTTP range requests, cached on disk
- download: one quant into the Hub cache, resumable and verified
- local_models: the GGUFs already on this machine
- resolve: the one place a model reference becomes an opened model
"""
