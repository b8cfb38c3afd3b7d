"""The built-in tools, one module each; ``settings.CHAT_TOOLS`` lists them by default."""
