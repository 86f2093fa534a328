"""llama.cpp command lines: export, import, shell quoting, presets."""
