"""What the tests and the benchmark share: a provisioned token and a running server
(harness), direct token access (tokens) and the helpers of the API tests (api_calls,
security_helpers)."""
