"""The service: app factory and lifespan, routes, middleware, uploads, admission, serving (decode pool,
micro-batcher, render), the model registry, OpenAPI, metrics, and spa-serve (cli)."""
