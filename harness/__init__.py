"""Real processes for tests and the benchmark: redis-server, PostgreSQL-backed app servers under
uvicorn or daphne, nginx, the Firestore emulator. Each listens on a free loopback port and is
stopped, frozen or killed with a real signal."""
