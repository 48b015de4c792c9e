"""The network's client side: the lean HTTP/1.1 client, the guard clients, the upstream."""
