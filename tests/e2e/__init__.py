"""End-to-end tests: real ``orchestra`` processes against a real PostgreSQL."""
