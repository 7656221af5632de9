"""Bad input, tried on purpose: fuzzed API calls, hostile config files, forged webhooks,
and gateways that answer garbage. Each gets a clear error; nothing is lost or crashes."""
