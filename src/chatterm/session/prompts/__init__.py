"""How a conversation becomes a prompt: the built-in and Jinja chat templates, the template sandbox, fitting to the context window, token estimates."""
