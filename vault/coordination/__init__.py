"""State that every worker process of one server must agree on."""
