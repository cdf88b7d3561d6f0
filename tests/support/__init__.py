"""What the tests and the benchmark share: a provisioned token and a running server
(harness), direct token access (tokens), the helpers of the API tests (api_calls,
security_helpers), and in-memory fakes of the ports for the use cases' unit tests (fakes)."""
