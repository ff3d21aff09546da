"""The integration API's domain: service keys, provisioning, publishing, webhooks."""
