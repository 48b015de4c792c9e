"""The server side: the aiohttp app and its state, middlewares, errors, routes, the chat
completions handler and the stream relay."""
